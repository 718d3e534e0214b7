//! Happy Eyeballs (RFC 8305): connect to a name that resolves to several addresses.
//!
//! [`Dialer::connect`] resolves the name, [`interleave`] orders the addresses (RFC 8305 §4) and
//! [`connect_addrs`] races them (§5): the first attempt starts at once, each further one
//! starts when the delay has passed since the previous start or as soon as an attempt fails,
//! whichever comes first, and the first attempt to connect wins; the others are dropped,
//! which closes their sockets. An unroutable first address therefore costs one delay, not
//! the whole open timeout.
//!
//! Nothing here has a deadline of its own: the caller wraps the call in its open timeout
//! (`tokio::time::timeout_at`), which then covers resolution and every attempt, and dropping
//! the future on timeout drops every pending attempt.

use std::collections::HashSet;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The default "Connection Attempt Delay" between the starts of two attempts: 250 ms, the
/// value RFC 8305 §5 recommends.
///
/// The RFC bounds the delay to 10 ms at the least (100 ms recommended) and 2 s at the
/// most; [`connect_addrs`] honours whatever it is given, so a configured value should be
/// checked where it is set. Two values have a meaning of their own there:
/// `Duration::ZERO` starts every attempt at once, and `Duration::MAX` tries the addresses
/// one after another, the next only when the previous has failed (the behaviour before
/// Happy Eyeballs).
pub(crate) const DEFAULT_DELAY: Duration = Duration::from_millis(250);

/// How a client reaches a host by TCP: the addresses to try (the system's resolver, or
/// those [`ClientBuilder::resolve`](crate::ClientBuilder::resolve) gave the name) and the
/// delay between the starts of two attempts.
#[derive(Clone, Debug)]
pub(crate) struct Dialer {
    pub(crate) delay: Duration,
    /// Names whose addresses are given, not looked up (compared without case; one entry
    /// a name).
    pub(crate) fixed: Vec<(String, Vec<IpAddr>)>,
}

impl Default for Dialer {
    fn default() -> Self {
        Self {
            delay: DEFAULT_DELAY,
            fixed: Vec::new(),
        }
    }
}

impl Dialer {
    /// The addresses of `host` with `port`, in the resolver's order.
    ///
    /// An IP literal (`127.0.0.1`, `::1`, `[::1]`) is used as it is, and a name given
    /// addresses in [`fixed`](Self::fixed) takes those, both without a lookup; any other
    /// name goes through `tokio::net::lookup_host` (the system's RFC 6724 sorting).
    ///
    /// Errors: a failed lookup keeps its kind and names the host; a name with no address is
    /// `NotFound`.
    pub(crate) async fn lookup(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
        let fixed = self
            .fixed
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(host));
        let addrs = match (literal.unwrap_or(host).parse::<IpAddr>(), fixed) {
            (Ok(ip), _) => vec![SocketAddr::new(ip, port)],
            (Err(_), Some((_, ips))) => ips.iter().map(|&ip| SocketAddr::new(ip, port)).collect(),
            (Err(_), None) => match tokio::net::lookup_host((host, port)).await {
                Ok(addrs) => addrs.collect(),
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        ResolveError {
                            host: host.to_owned(),
                            source: e,
                        },
                    ))
                }
            },
        };
        if addrs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{host} resolved to no addresses"),
            ));
        }
        Ok(addrs)
    }

    /// Resolves `host` ([`lookup`](Self::lookup)) and races its addresses, IPv6 and IPv4
    /// alternating ([`interleave`]), with [`connect_addrs`]. The caller applies the open
    /// timeout around this call.
    pub(crate) async fn connect(&self, host: &str, port: u16) -> io::Result<TcpStream> {
        let addrs = self.lookup(host, port).await?;
        connect_addrs(interleave(addrs), self.delay).await
    }
}

/// Races TCP connections to `addrs`, in the order given, and returns the first to connect.
///
/// The first attempt starts at once; the next one starts `delay` after the previous start,
/// or at once when an attempt fails, whichever is sooner (RFC 8305 §5). The first attempt
/// to succeed wins, even if it started later than others still pending; those are dropped,
/// which closes their sockets. `Duration::ZERO` starts every attempt together and
/// `Duration::MAX` makes the attempts strictly sequential. Pass the addresses through
/// [`interleave`] first unless their order is already the one to try.
///
/// When every attempt fails, the error names every address with its error, in the order
/// given ("connect to [2001:db8::1]:80: Network is unreachable (os error 101);
/// 192.0.2.1:80: Connection refused (os error 111)"). Its [`io::ErrorKind`], and its
/// `source()`, are those of the first error in that order that is not a routing failure
/// (network or host unreachable, address not available), or of the first error when all
/// are. The order given is the preference order, so the choice does not depend on which
/// attempt happened to fail last, and an IPv6 family without a route does not hide that
/// the server refused over IPv4. An empty `addrs` is an `InvalidInput` error.
pub(crate) async fn connect_addrs(
    addrs: Vec<SocketAddr>,
    delay: Duration,
) -> io::Result<TcpStream> {
    race(addrs, delay, TcpStream::connect).await
}

/// Orders addresses for Happy Eyeballs (RFC 8305 §4, "First Address Family Count" 1).
///
/// Duplicates are removed (the first occurrence stays); then the families alternate,
/// starting with the family of the first address, each family keeping its own order; when
/// one family runs out, the rest of the other follows. An IPv4-mapped IPv6 address counts as
/// IPv6, as it is connected to with an IPv6 socket.
pub(crate) fn interleave(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let mut seen = HashSet::with_capacity(addrs.len());
    let mut unique = addrs;
    unique.retain(|a| seen.insert(*a));
    let Some(first) = unique.first() else {
        return unique;
    };
    let first_is_v6 = first.is_ipv6();
    let (preferred, other): (Vec<_>, Vec<_>) =
        unique.into_iter().partition(|a| a.is_ipv6() == first_is_v6);
    let mut out = Vec::with_capacity(preferred.len() + other.len());
    let mut preferred = preferred.into_iter();
    let mut other = other.into_iter();
    loop {
        match (preferred.next(), other.next()) {
            (None, None) => return out,
            (a, b) => out.extend(a.into_iter().chain(b)),
        }
    }
}

/// The race of [`connect_addrs`], over any attempt function (the tests use scripted ones).
async fn race<T, F, Fut>(addrs: Vec<SocketAddr>, delay: Duration, mut attempt: F) -> io::Result<T>
where
    F: FnMut(SocketAddr) -> Fut,
    Fut: Future<Output = io::Result<T>>,
{
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no addresses to connect to",
        ));
    }
    // Lazy: an attempt begins (and its socket exists) only when it is taken from here.
    let mut upcoming = addrs.into_iter().enumerate().map(|(index, addr)| {
        tracing::debug!(%addr, "connecting");
        let connecting = attempt(addr);
        async move { (index, addr, connecting.await) }
    });
    let mut pending = FuturesUnordered::new();
    let mut failures = Vec::new();
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    let mut timer_armed = false;
    let mut start_next = true;
    loop {
        if start_next {
            start_next = false;
            pending.extend(upcoming.next());
            if delay.is_zero() {
                pending.extend(upcoming.by_ref());
            }
            // No timer once the last attempt has started, nor for a delay too long to
            // represent: the next attempt, if any, then waits for a failure.
            timer_armed = match Instant::now().checked_add(delay) {
                Some(at) if upcoming.len() > 0 => {
                    timer.as_mut().reset(at);
                    true
                }
                _ => false,
            };
        }
        // At least one attempt is pending here: the first starts before the loop, and after
        // a failure either another starts or, with none left to start and none pending, the
        // loop ends.
        tokio::select! {
            biased;
            Some((index, addr, result)) = pending.next() => match result {
                Ok(stream) => return Ok(stream),
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "connection attempt failed");
                    failures.push((index, addr, e));
                    if upcoming.len() > 0 {
                        start_next = true;
                    } else if pending.is_empty() {
                        break;
                    }
                }
            },
            () = &mut timer, if timer_armed => start_next = true,
            // Unreachable by the invariant above; ending the race beats a panic.
            else => break,
        }
    }
    failures.sort_by_key(|(index, _, _)| *index);
    let failures = failures.into_iter().map(|(_, addr, e)| (addr, e)).collect();
    Err(AllFailed::new(failures).into_io())
}

/// Every attempt failed: the addresses with their errors, in the order they were given.
#[derive(Debug)]
struct AllFailed {
    failures: Vec<(SocketAddr, io::Error)>,
    /// The index in `failures` of the error whose kind the returned error takes.
    chosen: usize,
}

impl AllFailed {
    fn new(failures: Vec<(SocketAddr, io::Error)>) -> Self {
        let chosen = failures
            .iter()
            .position(|(_, e)| !is_local_unreachable(e.kind()))
            .unwrap_or(0);
        Self { failures, chosen }
    }

    fn into_io(self) -> io::Error {
        let kind = match self.failures.get(self.chosen) {
            Some((_, e)) => e.kind(),
            None => io::ErrorKind::Other,
        };
        io::Error::new(kind, self)
    }
}

/// Errors that say the address could not be reached, rather than anything about the server:
/// the least useful to report when another attempt got further.
fn is_local_unreachable(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::AddrNotAvailable
    )
}

impl fmt::Display for AllFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connect to ")?;
        for (i, (addr, e)) in self.failures.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{addr}: {e}")?;
        }
        Ok(())
    }
}

impl StdError for AllFailed {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.failures
            .get(self.chosen)
            .map(|(_, e)| e as &(dyn StdError + 'static))
    }
}

/// The lookup of a name failed.
#[derive(Debug)]
struct ResolveError {
    host: String,
    source: io::Error,
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "resolve {}: {}", self.host, self.source)
    }
}

impl StdError for ResolveError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpSocket};
    use tokio::time::timeout;

    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn sas(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|s| sa(s)).collect()
    }

    // ----- interleave -----

    #[test]
    fn interleave_table() {
        let cases: &[(&str, &[&str], &[&str])] = &[
            ("empty", &[], &[]),
            ("single v4", &["192.0.2.1:80"], &["192.0.2.1:80"]),
            (
                "v4 only keeps order",
                &["192.0.2.3:80", "192.0.2.1:80", "192.0.2.2:80"],
                &["192.0.2.3:80", "192.0.2.1:80", "192.0.2.2:80"],
            ),
            (
                "v6 only keeps order",
                &["[2001:db8::2]:80", "[2001:db8::1]:80"],
                &["[2001:db8::2]:80", "[2001:db8::1]:80"],
            ),
            (
                "v6 first, grouped",
                &[
                    "[2001:db8::1]:80",
                    "[2001:db8::2]:80",
                    "192.0.2.1:80",
                    "192.0.2.2:80",
                ],
                &[
                    "[2001:db8::1]:80",
                    "192.0.2.1:80",
                    "[2001:db8::2]:80",
                    "192.0.2.2:80",
                ],
            ),
            (
                "v4 first: the resolver's first family leads",
                &["192.0.2.1:80", "[2001:db8::1]:80", "[2001:db8::2]:80"],
                &["192.0.2.1:80", "[2001:db8::1]:80", "[2001:db8::2]:80"],
            ),
            (
                "longer family's tail follows",
                &[
                    "[2001:db8::1]:80",
                    "192.0.2.1:80",
                    "192.0.2.2:80",
                    "192.0.2.3:80",
                ],
                &[
                    "[2001:db8::1]:80",
                    "192.0.2.1:80",
                    "192.0.2.2:80",
                    "192.0.2.3:80",
                ],
            ),
            (
                "already interleaved stays",
                &[
                    "[2001:db8::1]:80",
                    "192.0.2.1:80",
                    "[2001:db8::2]:80",
                    "192.0.2.2:80",
                ],
                &[
                    "[2001:db8::1]:80",
                    "192.0.2.1:80",
                    "[2001:db8::2]:80",
                    "192.0.2.2:80",
                ],
            ),
            (
                "duplicates dropped, first occurrence kept",
                &[
                    "192.0.2.1:80",
                    "192.0.2.1:80",
                    "[2001:db8::1]:80",
                    "192.0.2.2:80",
                    "[2001:db8::1]:80",
                ],
                &["192.0.2.1:80", "[2001:db8::1]:80", "192.0.2.2:80"],
            ),
            (
                "same IP, other port is not a duplicate",
                &["192.0.2.1:80", "192.0.2.1:81"],
                &["192.0.2.1:80", "192.0.2.1:81"],
            ),
            (
                "v4-mapped v6 counts as v6",
                &["[::ffff:192.0.2.1]:80", "[2001:db8::1]:80", "192.0.2.2:80"],
                &["[::ffff:192.0.2.1]:80", "192.0.2.2:80", "[2001:db8::1]:80"],
            ),
        ];
        for (name, input, want) in cases {
            assert_eq!(interleave(sas(input)), sas(want), "{name}");
        }
    }

    // ----- the race, with scripted attempts under the paused clock -----

    #[derive(Clone, Copy)]
    enum Step {
        Connect(u64),
        Fail(u64, io::ErrorKind),
        Hang,
    }

    /// Scripted attempts: what each address does and when, the start times, and how many
    /// attempts were dropped before they finished.
    struct Script {
        steps: HashMap<SocketAddr, Step>,
        t0: Instant,
        starts: Arc<Mutex<Vec<(SocketAddr, u128)>>>,
        cancelled: Arc<AtomicUsize>,
    }

    struct Unfinished(Arc<AtomicUsize>, bool);

    impl Unfinished {
        fn finish(&mut self) {
            self.1 = true;
        }
    }

    impl Drop for Unfinished {
        fn drop(&mut self) {
            if !self.1 {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    impl Script {
        fn new(steps: &[(&str, Step)]) -> (Vec<SocketAddr>, Self) {
            let addrs = steps.iter().map(|(a, _)| sa(a)).collect();
            let script = Self {
                steps: steps.iter().map(|(a, s)| (sa(a), *s)).collect(),
                t0: Instant::now(),
                starts: Arc::default(),
                cancelled: Arc::default(),
            };
            (addrs, script)
        }

        fn attempt(&self, addr: SocketAddr) -> impl Future<Output = io::Result<SocketAddr>> {
            let ms = self.t0.elapsed().as_millis();
            self.starts.lock().unwrap().push((addr, ms));
            let step = self.steps[&addr];
            let mut guard = Unfinished(self.cancelled.clone(), false);
            async move {
                let result = match step {
                    Step::Connect(ms) => {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        Ok(addr)
                    }
                    Step::Fail(ms, kind) => {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        Err(kind.into())
                    }
                    Step::Hang => std::future::pending().await,
                };
                guard.finish();
                result
            }
        }

        fn starts(&self) -> Vec<(SocketAddr, u128)> {
            self.starts.lock().unwrap().clone()
        }

        fn ms(&self) -> u128 {
            self.t0.elapsed().as_millis()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_start_one_delay_apart() {
        let (addrs, s) = Script::new(&[
            ("[2001:db8::1]:80", Step::Hang),
            ("192.0.2.1:80", Step::Hang),
            ("[2001:db8::2]:80", Step::Hang),
        ]);
        let raced = race(addrs.clone(), DEFAULT_DELAY, |a| s.attempt(a));
        assert!(timeout(Duration::from_secs(10), raced).await.is_err());
        let want: Vec<_> = addrs.into_iter().zip([0, 250, 500]).collect();
        assert_eq!(s.starts(), want);
        assert_eq!(
            s.cancelled.load(Ordering::SeqCst),
            3,
            "the timeout drops all"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_starts_the_next_attempt_at_once() {
        let (addrs, s) = Script::new(&[
            (
                "[2001:db8::1]:80",
                Step::Fail(30, io::ErrorKind::NetworkUnreachable),
            ),
            ("192.0.2.1:80", Step::Hang),
            ("192.0.2.2:80", Step::Hang),
        ]);
        let raced = race(addrs.clone(), DEFAULT_DELAY, |a| s.attempt(a));
        assert!(timeout(Duration::from_secs(10), raced).await.is_err());
        // The delay restarts from the attempt that replaced the failed one.
        let want: Vec<_> = addrs.into_iter().zip([0, 30, 280]).collect();
        assert_eq!(s.starts(), want);
    }

    #[tokio::test(start_paused = true)]
    async fn first_to_connect_wins_even_if_started_later() {
        let (addrs, s) = Script::new(&[
            ("[2001:db8::1]:80", Step::Connect(1000)),
            ("192.0.2.1:80", Step::Connect(50)),
            ("[2001:db8::2]:80", Step::Connect(0)),
        ]);
        let won = race(addrs.clone(), DEFAULT_DELAY, |a| s.attempt(a)).await;
        assert_eq!(won.unwrap(), addrs[1]);
        assert_eq!(s.ms(), 300);
        // The third was never started; the first, still pending, was dropped.
        assert_eq!(s.starts(), vec![(addrs[0], 0), (addrs[1], 250)]);
        assert_eq!(s.cancelled.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_delay_starts_every_attempt_at_once() {
        let (addrs, s) = Script::new(&[
            ("[2001:db8::1]:80", Step::Hang),
            ("192.0.2.1:80", Step::Connect(20)),
            ("192.0.2.2:80", Step::Connect(10)),
        ]);
        let won = race(addrs.clone(), Duration::ZERO, |a| s.attempt(a)).await;
        assert_eq!(won.unwrap(), addrs[2]);
        assert_eq!(s.ms(), 10);
        let want: Vec<_> = addrs.into_iter().zip([0, 0, 0]).collect();
        assert_eq!(s.starts(), want);
        assert_eq!(s.cancelled.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn max_delay_tries_addresses_one_after_another() {
        let (addrs, s) = Script::new(&[
            ("[2001:db8::1]:80", Step::Fail(100, io::ErrorKind::TimedOut)),
            (
                "192.0.2.1:80",
                Step::Fail(100, io::ErrorKind::ConnectionRefused),
            ),
            ("192.0.2.2:80", Step::Connect(10)),
        ]);
        let won = race(addrs.clone(), Duration::MAX, |a| s.attempt(a)).await;
        assert_eq!(won.unwrap(), addrs[2]);
        assert_eq!(s.ms(), 210);
        let want: Vec<_> = addrs.into_iter().zip([0, 100, 200]).collect();
        assert_eq!(s.starts(), want);
        assert_eq!(s.cancelled.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn all_failed_names_every_address_in_order() {
        // Failures arrive in another order than the list's (the second fails first).
        let (addrs, s) = Script::new(&[
            (
                "[2001:db8::1]:80",
                Step::Fail(5, io::ErrorKind::NetworkUnreachable),
            ),
            (
                "192.0.2.1:80",
                Step::Fail(300, io::ErrorKind::ConnectionRefused),
            ),
            ("192.0.2.2:80", Step::Fail(1, io::ErrorKind::TimedOut)),
        ]);
        let e = race(addrs, DEFAULT_DELAY, |a| s.attempt(a))
            .await
            .unwrap_err();
        let message = e.to_string();
        assert_eq!(
            message,
            format!(
                "connect to [2001:db8::1]:80: {}; 192.0.2.1:80: {}; 192.0.2.2:80: {}",
                io::Error::from(io::ErrorKind::NetworkUnreachable),
                io::Error::from(io::ErrorKind::ConnectionRefused),
                io::Error::from(io::ErrorKind::TimedOut),
            )
        );
        // The first address that got past local routing: refused, not "unreachable" (the
        // first in the list) nor "timed out" (the last to fail).
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        let source = e.source().unwrap().downcast_ref::<io::Error>().unwrap();
        assert_eq!(source.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[tokio::test(start_paused = true)]
    async fn all_unroutable_reports_the_first() {
        let (addrs, s) = Script::new(&[
            (
                "[2001:db8::1]:80",
                Step::Fail(5, io::ErrorKind::HostUnreachable),
            ),
            (
                "192.0.2.1:80",
                Step::Fail(1, io::ErrorKind::NetworkUnreachable),
            ),
        ]);
        let e = race(addrs, DEFAULT_DELAY, |a| s.attempt(a))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::HostUnreachable);
    }

    #[tokio::test]
    async fn no_addresses_is_invalid_input() {
        let e = connect_addrs(Vec::new(), DEFAULT_DELAY).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn connect_is_send() {
        fn send<T: Send>(_: T) {}
        send(Dialer::default().connect("localhost", 80));
        send(connect_addrs(Vec::new(), DEFAULT_DELAY));
    }

    // ----- the race on real loopback sockets -----

    /// A listener whose accept queue is full, so that the kernel drops new SYNs and a connect
    /// to it hangs (Linux, without `tcp_abort_on_overflow`): an unroutable address on
    /// loopback, without root. Proven before use: a connect must fail to finish in time.
    struct Blackhole {
        addr: SocketAddr,
        _listener: TcpListener,
        _queued: Vec<TcpStream>,
    }

    async fn blackhole(ip: &str) -> io::Result<Blackhole> {
        let addr = SocketAddr::new(ip.parse().unwrap(), 0);
        let socket = if addr.is_ipv6() {
            TcpSocket::new_v6()?
        } else {
            TcpSocket::new_v4()?
        };
        socket.bind(addr)?;
        let listener = socket.listen(1)?;
        let addr = listener.local_addr()?;
        let mut queued = Vec::new();
        for _ in 0..16 {
            match timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
                Ok(stream) => queued.push(stream?),
                Err(_) => {
                    return Ok(Blackhole {
                        addr,
                        _listener: listener,
                        _queued: queued,
                    })
                }
            }
        }
        panic!("{addr}: 16 connects to a listen(1) socket all completed: no blackhole here");
    }

    async fn closed_port(ip: &str) -> SocketAddr {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        listener.local_addr().unwrap()
    }

    async fn ipv6_loopback() -> bool {
        TcpListener::bind("[::1]:0").await.is_ok()
    }

    /// The open timeout the client would wrap around the race.
    const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

    /// Whether `took`, measured by [`on_paused_clock`], is the time of timers set `at`
    /// after the start: the timer wheel counts whole milliseconds from when the clock
    /// started, so a deadline that falls between two ticks fires on the later one.
    fn fired_at(took: Duration, at: Duration) -> bool {
        took >= at && took <= at + Duration::from_millis(1)
    }

    /// Runs `race` on the paused clock and returns it with the time that passed on that
    /// clock. Only for races with no timer but their own (no timeout around them): the
    /// clock then jumps from one stagger deadline to the next while attempts hang, and once
    /// the last attempt has started it waits for real I/O, so the time taken is exactly
    /// the delays the race waited for, however slow the machine. A real-time watchdog ends
    /// the process if the race never finishes.
    async fn on_paused_clock<T>(race: impl Future<Output = T>) -> (T, Duration) {
        let done = Arc::new(AtomicBool::new(false));
        let watched = Arc::clone(&done);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(60));
            if !watched.load(Ordering::SeqCst) {
                eprintln!("the race did not finish within 60 s of real time");
                std::process::exit(1);
            }
        });
        tokio::time::pause();
        let t0 = Instant::now();
        let out = race.await;
        let took = t0.elapsed();
        tokio::time::resume();
        done.store(true, Ordering::SeqCst);
        (out, took)
    }

    /// Races a blackholed address on `hole_ip` and a working one on 127.0.0.1, in
    /// Happy Eyeballs' order: the working one connects exactly one delay after the start.
    async fn races_past_a_blackhole(hole_ip: &str) {
        let hole = blackhole(hole_ip).await.unwrap();
        let good = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let delay = Duration::from_millis(200);
        let addrs = interleave(vec![hole.addr, good.local_addr().unwrap()]);
        let (stream, took) = on_paused_clock(connect_addrs(addrs, delay)).await;
        assert_eq!(
            stream.unwrap().peer_addr().unwrap(),
            good.local_addr().unwrap()
        );
        assert!(
            fired_at(took, delay),
            "connected one delay after the start: {took:?}"
        );
    }

    #[tokio::test]
    async fn blackholed_first_address_costs_one_delay_not_the_open_timeout() {
        races_past_a_blackhole("127.0.0.1").await;
    }

    #[tokio::test]
    async fn blackholed_ipv6_falls_back_to_ipv4() {
        if !ipv6_loopback().await {
            // Not a skip that hides anything: the IPv4 blackhole test above covers the race,
            // this one only the address families' order.
            eprintln!("no IPv6 loopback on this machine: nothing to race");
            return;
        }
        races_past_a_blackhole("::1").await;
    }

    #[tokio::test]
    async fn refused_first_address_starts_the_next_at_once() {
        let closed = closed_port("127.0.0.1").await;
        let good = TcpListener::bind("127.0.0.1:0").await.unwrap();
        // No timer at all: only the refusal can start the second attempt.
        let delay = Duration::MAX;
        let addrs = vec![closed, good.local_addr().unwrap()];
        let (stream, took) = on_paused_clock(connect_addrs(addrs, delay)).await;
        assert_eq!(
            stream.unwrap().peer_addr().unwrap(),
            good.local_addr().unwrap()
        );
        assert_eq!(took, Duration::ZERO, "connected at once");
    }

    #[tokio::test]
    async fn all_refused_names_every_address() {
        let mut addrs = vec![closed_port("127.0.0.1").await];
        if ipv6_loopback().await {
            addrs.push(closed_port("::1").await);
        }
        addrs.push(closed_port("127.0.0.1").await);
        let e = tokio::time::timeout(OPEN_TIMEOUT, connect_addrs(addrs.clone(), DEFAULT_DELAY))
            .await
            .expect("failed before the open timeout")
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        let message = e.to_string();
        assert!(message.starts_with("connect to "), "{message}");
        for addr in &addrs {
            assert!(
                message.contains(&format!("{addr}: ")),
                "{addr} in {message}"
            );
        }
        assert_eq!(message.matches("; ").count(), addrs.len() - 1, "{message}");
        eprintln!("all refused: {message}");
    }

    #[tokio::test]
    async fn open_timeout_covers_every_attempt() {
        let (a, b) = (
            blackhole("127.0.0.1").await.unwrap(),
            blackhole("127.0.0.1").await.unwrap(),
        );
        let open_timeout = Duration::from_millis(500);
        let raced = connect_addrs(vec![a.addr, b.addr], Duration::from_millis(100));
        // Both attempts hang, so the clock runs on to the timeout and no further.
        let (result, took) = on_paused_clock(tokio::time::timeout(open_timeout, raced)).await;
        assert!(result.is_err(), "timed out");
        assert!(fired_at(took, open_timeout), "{took:?}");
    }

    #[tokio::test]
    async fn a_fixed_name_is_not_looked_up_and_a_literal_wins() {
        let dialer = Dialer {
            fixed: vec![(
                "Echo.Test".to_owned(),
                vec!["::1".parse().unwrap(), "127.0.0.3".parse().unwrap()],
            )],
            ..Dialer::default()
        };
        // Names compare without case; the port is the caller's.
        assert_eq!(
            dialer.lookup("ECHO.test", 81).await.unwrap(),
            sas(&["[::1]:81", "127.0.0.3:81"])
        );
        assert_eq!(
            dialer.lookup("127.0.0.9", 82).await.unwrap(),
            sas(&["127.0.0.9:82"])
        );
        let none = Dialer {
            fixed: vec![("void.test".to_owned(), Vec::new())],
            ..Dialer::default()
        };
        let e = none.lookup("void.test", 80).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
    }

    #[tokio::test]
    async fn first_to_connect_wins_and_the_losers_are_closed() {
        let hole = blackhole("127.0.0.1").await.unwrap();
        let one = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let two = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (one_addr, two_addr) = (one.local_addr().unwrap(), two.local_addr().unwrap());
        // No staggering: all three start together, and the blackhole, listed first, loses.
        let addrs = vec![hole.addr, one_addr, two_addr];
        let mut stream = tokio::time::timeout(OPEN_TIMEOUT, connect_addrs(addrs, Duration::ZERO))
            .await
            .expect("connected before the open timeout")
            .unwrap();
        let winner = stream.peer_addr().unwrap();
        let (won, lost) = if winner == one_addr {
            (one, two)
        } else {
            assert_eq!(winner, two_addr);
            (two, one)
        };
        // The winner's listener has exactly this connection, and it is alive.
        let (mut served, _) = timeout(OPEN_TIMEOUT, won.accept()).await.unwrap().unwrap();
        stream.write_all(b"x").await.unwrap();
        let mut byte = [0; 1];
        served.read_exact(&mut byte).await.unwrap();
        assert_eq!(&byte, b"x");
        assert!(
            timeout(Duration::from_millis(100), won.accept())
                .await
                .is_err(),
            "a second connection to the winner"
        );
        // The loser may have finished its handshake in the kernel before the race ended;
        // if so it was closed when its attempt was dropped: its peer reads end of stream.
        match timeout(Duration::from_millis(500), lost.accept()).await {
            Ok(accepted) => {
                let (mut leaked, _) = accepted.unwrap();
                let n = timeout(Duration::from_secs(5), leaked.read(&mut byte))
                    .await
                    .expect("the losing connection was left open")
                    .unwrap();
                assert_eq!(n, 0, "the losing connection was used");
                eprintln!(
                    "loser {}: connected, then closed",
                    leaked.local_addr().unwrap()
                );
            }
            Err(_) => eprintln!("loser: never connected"),
        }
    }

    #[tokio::test]
    async fn ip_literals_connect_without_a_lookup() {
        let v4 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = v4.local_addr().unwrap().port();
        let stream = Dialer::default().connect("127.0.0.1", port).await.unwrap();
        assert_eq!(stream.peer_addr().unwrap(), v4.local_addr().unwrap());
        if ipv6_loopback().await {
            let v6 = TcpListener::bind("[::1]:0").await.unwrap();
            let port = v6.local_addr().unwrap().port();
            for host in ["::1", "[::1]"] {
                let stream = Dialer::default().connect(host, port).await.unwrap();
                assert_eq!(
                    stream.peer_addr().unwrap(),
                    v6.local_addr().unwrap(),
                    "{host}"
                );
            }
        }
    }

    #[tokio::test]
    async fn names_are_resolved() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // localhost may also resolve to ::1, where nothing listens: refused, then 127.0.0.1.
        let stream = timeout(OPEN_TIMEOUT, Dialer::default().connect("localhost", port))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stream.peer_addr().unwrap(), listener.local_addr().unwrap());
    }
}
