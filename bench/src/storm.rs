//! Reconnect storms: N reconnecting tether clients (one process) against a tether server
//! (another process) that either closes every connection with 1012 and keeps listening, or
//! is killed (SIGKILL) and started again on the same port one second later. The server
//! records the arrival time of every TCP connection (its `on_accept` hook) and of every
//! completed upgrade; the report gives the arrivals per 100 ms after the event, their peak
//! against their mean over the spread, and the time until every client was back.
//!
//! `cargo run --release -p bench --bin bench -- storm --clients 1000,10000` runs it; see
//! `docs/benchmarks.md` ("Reconnect storms") and `bench --help`.

use std::fmt::Write as _;
use std::io::{self, BufRead as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tether::reconnect::{Jitter, ReconnectEvent};
use tether::{Backoff, ClientBuilder, ErrorKind, Policy, ServerConfig};
use tokio::sync::broadcast;

use crate::args::Args;
use crate::load::run_local;
use crate::proc::Child;

/// Width of one bucket of the arrival histogram.
const BUCKET: Duration = Duration::from_millis(100);
/// How long the clients stay connected before the event: past the policy's minimum uptime
/// (5 s), so that the drop is a drop and not a short-lived connection.
const SETTLE: Duration = Duration::from_secs(6);
/// How long the killed server stays down, unless `--down` says otherwise.
const DOWN: Duration = Duration::from_secs(1);
/// The longest a run may take to get every client back.
const RECOVERY_LIMIT: Duration = Duration::from_secs(300);
/// The handshake limit of the `limit` variant unless `--max-handshakes` says otherwise.
const DEFAULT_LIMIT: usize = 64;

fn now_micros() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
}

fn join(values: &[u64]) -> String {
    let mut out = String::with_capacity(values.len() * 17);
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{v}");
    }
    out
}

fn split_numbers(list: &str) -> io::Result<Vec<u64>> {
    list.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| io::Error::other(format!("not a number: {s:?}")))
        })
        .collect()
}

// ----- the server process -----

/// What the server records, in µs since the Unix epoch (the orchestrator, another process,
/// compares them with its own clock).
#[derive(Default)]
struct Record {
    /// Every accepted TCP connection (refused ones included).
    arrivals: Mutex<Vec<u64>>,
    /// Every completed upgrade.
    upgrades: Mutex<Vec<u64>>,
}

/// Records the time `wait` from now.
fn schedule(times: &Mutex<Vec<u64>>, wait: Duration) {
    let at = now_micros().saturating_add(u64::try_from(wait.as_micros()).unwrap_or(u64::MAX));
    times.lock().unwrap_or_else(|e| e.into_inner()).push(at);
}

fn push(times: &Mutex<Vec<u64>>) {
    times
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(now_micros());
}

fn since(times: &Mutex<Vec<u64>>, t0: u64) -> Vec<u64> {
    let times = times.lock().unwrap_or_else(|e| e.into_inner());
    times.iter().copied().filter(|&t| t >= t0).collect()
}

/// `bench storm-server --addr A [--max-handshakes K] [--cpu C]`: a tether server that holds
/// every connection and records arrivals. Commands on standard input: `restart` (close every
/// open connection with 1012; answers `RESTARTED <t0 µs>`), `count SINCE` (`COUNT <upgrades
/// since SINCE>`), `report SINCE` (`ARRIVALS <µs,...>` then `UPGRADES <µs,...>`). Exits when
/// standard input closes.
pub(crate) fn server(args: &Args) -> io::Result<()> {
    args.only(&["addr", "max-handshakes", "cpu"])?;
    let addr: std::net::SocketAddr = args.parse_or("addr", ([127, 0, 0, 1], 0).into())?;
    let limit: Option<usize> = args.parse("max-handshakes")?;
    let record = Arc::new(Record::default());
    let (restart, _) = broadcast::channel::<()>(1);
    run_local(args, async move {
        // As `Server::bind` does (backlog 1024), with SO_REUSEADDR set explicitly: the
        // killed server's successor binds the same port at once.
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(1024)?;
        let config = ServerConfig::default().max_handshakes(limit).on_accept({
            let record = record.clone();
            move |_| {
                push(&record.arrivals);
                true
            }
        });
        let server = tether::Server::from_listener(listener, config);
        println!("LISTENING {}", server.local_addr()?);
        spawn_commands(record.clone(), restart.clone());
        server
            .serve(move |mut ws, _request| {
                push(&record.upgrades);
                let mut restarted = restart.subscribe();
                async move {
                    tokio::select! {
                        () = async { while let Some(Ok(_)) = ws.recv().await {} } => return,
                        _ = restarted.recv() => {}
                    }
                    let _ = ws.close(1012, "service restart").await;
                }
            })
            .await
    })
}

/// The server's command thread (see [`server`]).
fn spawn_commands(record: Arc<Record>, restart: broadcast::Sender<()>) {
    std::thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            let mut words = line.split_whitespace();
            let command = words.next().unwrap_or("");
            let t0: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
            match command {
                "restart" => {
                    let t0 = now_micros();
                    let _ = restart.send(());
                    println!("RESTARTED {t0}");
                }
                "count" => println!("COUNT {}", since(&record.upgrades, t0).len()),
                "report" => {
                    println!("ARRIVALS {}", join(&since(&record.arrivals, t0)));
                    println!("UPGRADES {}", join(&since(&record.upgrades, t0)));
                }
                other => eprintln!("storm-server: unknown command {other:?}"),
            }
        }
        std::process::exit(0);
    });
}

// ----- the clients process -----

/// What the clients count, over all of them.
#[derive(Default)]
struct Counts {
    /// Clients connected at least once.
    first: AtomicU64,
    /// Connections opened (first ones included).
    opened: AtomicU64,
    /// Attempts started.
    attempts: AtomicU64,
    /// Failed attempts, by what failed them.
    timeouts: AtomicU64,
    io: AtomicU64,
    busy: AtomicU64,
    other: AtomicU64,
    /// Clients whose loop ended with a fatal error.
    fatal: AtomicU64,
    /// When each attempt after a drop or a failure was scheduled to start (the event's time
    /// plus the wait the policy chose), in µs since the Unix epoch: the spread the policy
    /// asks for, whether or not this process keeps up with it.
    scheduled: Mutex<Vec<u64>>,
}

impl Counts {
    fn line(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "STATS first={} opened={} attempts={} timeouts={} io={} busy={} other={} fatal={}",
            get(&self.first),
            get(&self.opened),
            get(&self.attempts),
            get(&self.timeouts),
            get(&self.io),
            get(&self.busy),
            get(&self.other),
            get(&self.fatal),
        )
    }

    fn failed(&self, kind: ErrorKind, status: Option<u16>) {
        let counter = match (kind, status) {
            (ErrorKind::Timeout, _) => &self.timeouts,
            (ErrorKind::Io | ErrorKind::Eof, _) => &self.io,
            (_, Some(503)) => &self.busy,
            _ => &self.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The clients' policy: the default, or the default with full jitter on the backoff.
fn policy(jitter: &str) -> io::Result<Policy> {
    match jitter {
        "default" => Ok(Policy::default()),
        "full" => Ok(Policy::default().backoff(Backoff {
            jitter: Jitter::Full,
            ..Backoff::default()
        })),
        other => Err(io::Error::other(format!(
            "--jitter: {other:?} (default or full)"
        ))),
    }
}

/// `bench storm-clients --url U --clients N [--jitter default|full] [--cpu C]`: N
/// reconnecting tether clients that hold their connections and reconnect when they end.
/// Prints `CONNECTED N` once every client connected; `stats` on standard input answers a
/// `STATS ...` line. Exits when standard input closes.
pub(crate) fn clients(args: &Args) -> io::Result<()> {
    args.only(&["url", "clients", "jitter", "cpu"])?;
    let url = args
        .get("url")
        .ok_or_else(|| io::Error::other("--url"))?
        .to_owned();
    let n: u64 = args.parse_or("clients", 1000)?;
    let policy = policy(args.get("jitter").unwrap_or("default"))?;
    let counts = Arc::new(Counts::default());
    let stats = counts.clone();
    std::thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            match line.as_deref() {
                Ok("stats") => println!("{}", stats.line()),
                Ok(l) if l.starts_with("scheduled ") => {
                    let t0 = l["scheduled ".len()..].trim().parse().unwrap_or(0);
                    println!("SCHEDULED {}", join(&since(&stats.scheduled, t0)));
                }
                Ok(other) => eprintln!("storm-clients: unknown command {other:?}"),
                Err(_) => break,
            }
        }
        std::process::exit(0);
    });
    run_local(args, async move {
        for i in 0..n {
            let counts = counts.clone();
            let events = counts.clone();
            let mut connections = ClientBuilder::new(url.as_str())
                .reconnecting()
                .policy(policy.clone())
                .on_event(move |event| match event {
                    ReconnectEvent::Connecting { .. } => {
                        events.attempts.fetch_add(1, Ordering::Relaxed);
                    }
                    ReconnectEvent::Retry { error, delay, .. } => {
                        events.failed(error.kind(), error.status());
                        schedule(&events.scheduled, *delay);
                    }
                    ReconnectEvent::Closed { delay, .. }
                    | ReconnectEvent::ShortLived { delay, .. } => {
                        schedule(&events.scheduled, *delay);
                    }
                    _ => {}
                })
                .stream();
            tokio::spawn(async move {
                let mut first = true;
                while let Some(next) = connections.next().await {
                    let Ok(mut ws) = next else {
                        counts.fatal.fetch_add(1, Ordering::Relaxed);
                        break;
                    };
                    counts.opened.fetch_add(1, Ordering::Relaxed);
                    if std::mem::take(&mut first) {
                        counts.first.fetch_add(1, Ordering::Relaxed);
                    }
                    while let Some(Ok(_)) = ws.recv().await {}
                }
            });
            // Connect at about 10,000 per second, not all in one instant: the storm being
            // measured is the one after the event, not the one that set it up.
            if i % 100 == 99 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        while counts.first.load(Ordering::Relaxed) < n {
            if counts.fatal.load(Ordering::Relaxed) > 0 {
                return Err(io::Error::other(format!(
                    "a client stopped: {}",
                    counts.line()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!("CONNECTED {n}");
        std::future::pending::<io::Result<()>>().await
    })
}

// ----- the orchestrator -----

/// How the server goes away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    /// Closes every connection with 1012 and keeps listening.
    Restart,
    /// Killed, and started again on the same port after this long.
    Kill(Duration),
}

impl Case {
    fn name(self) -> String {
        match self {
            Self::Restart => "1012, server keeps listening".to_owned(),
            Self::Kill(down) => format!("server killed, back after {} s", down.as_secs_f64()),
        }
    }
}

/// The client and server settings of one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    /// Default policy (1 s reconnect spread; Python websockets' backoff), no server limit.
    Defaults,
    /// The default policy with full jitter on every backoff wait.
    FullJitter,
    /// The defaults, and the server limits handshakes in progress.
    Limit(usize),
}

impl Variant {
    fn name(self) -> String {
        match self {
            Self::Defaults => "defaults".to_owned(),
            Self::FullJitter => "full jitter".to_owned(),
            Self::Limit(k) => format!("defaults, max_handshakes {k}"),
        }
    }

    fn jitter(self) -> &'static str {
        match self {
            Self::FullJitter => "full",
            _ => "default",
        }
    }
}

/// One storm, measured.
struct Run {
    clients: usize,
    case: Case,
    variant: Variant,
    /// Arrivals (TCP connections) after the event, in µs after it.
    arrivals: Vec<u64>,
    /// Upgrades after the event, in µs after it.
    upgrades: Vec<u64>,
    /// The clients' scheduled attempts after the event (their own clock), in µs after it.
    scheduled: Vec<u64>,
    /// The clients' counters that changed from the event to the end (opened, attempts, and
    /// failed attempts by kind).
    stats: String,
}

impl Run {
    /// When the last client was back (its upgrade), after the event.
    fn recovered(&self) -> Option<Duration> {
        if self.upgrades.len() < self.clients {
            return None;
        }
        let mut upgrades = self.upgrades.clone();
        upgrades.sort_unstable();
        Some(Duration::from_micros(upgrades[self.clients - 1]))
    }
}

/// (peak, mean over the spread) of `times` per bucket: the mean is over the buckets from
/// the first one's to the last one's.
fn peak_and_mean(times: &[u64]) -> (usize, f64) {
    let peak = buckets(times).iter().copied().max().unwrap_or(0);
    (
        peak,
        times.len() as f64 / spread_buckets(times).max(1) as f64,
    )
}

/// The peak ÷ mean that chance alone gives: `n` arrivals, each in one of `spread` buckets
/// at random (uniformly and independently, as a perfectly flat schedule would place them),
/// median over 201 draws with a fixed seed. What a measured ratio is to be read against:
/// with few arrivals per bucket the busiest bucket is well above the mean however flat the
/// schedule.
fn chance_floor(n: usize, spread: usize) -> f64 {
    if n == 0 || spread == 0 {
        return 1.0;
    }
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut ratios: Vec<f64> = (0..201)
        .map(|_| {
            let mut counts = vec![0usize; spread];
            for _ in 0..n {
                // xorshift64*
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                let r = state.wrapping_mul(0x2545_f491_4f6c_dd1d);
                counts[(r % spread as u64) as usize] += 1;
            }
            let peak = counts.iter().copied().max().unwrap_or(0);
            peak as f64 * spread as f64 / n as f64
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios[ratios.len() / 2]
}

/// The number of buckets from the first arrival's to the last one's.
fn spread_buckets(times: &[u64]) -> usize {
    let buckets = buckets(times);
    let first = buckets.iter().position(|&b| b > 0).unwrap_or(0);
    buckets.len() - first
}

/// Counts per bucket of `times` (µs after the event), from the event to the last one.
fn buckets(times: &[u64]) -> Vec<usize> {
    let width = BUCKET.as_micros() as u64;
    let last = times.iter().max().copied().unwrap_or(0) / width;
    let mut buckets = vec![0; usize::try_from(last).unwrap_or(0) + 1];
    for &t in times {
        buckets[usize::try_from(t / width).unwrap_or(0)] += 1;
    }
    buckets
}

/// One character per bucket of `times`, eight heights scaled to the peak; 5 s per line.
fn chart(times: &[u64]) -> String {
    const BARS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let buckets = buckets(times);
    let peak = buckets.iter().copied().max().unwrap_or(0).max(1);
    let mut out = String::new();
    for (line, chunk) in buckets.chunks(50).enumerate() {
        let _ = write!(out, "{:>5.1} s │", line as f64 * 5.0);
        for &b in chunk {
            let height = if b == 0 { 0 } else { (b * 8).div_ceil(peak) };
            out.push(BARS[height.min(8)]);
        }
        out.push('\n');
    }
    out
}

fn one_run(clients: usize, case: Case, variant: Variant) -> io::Result<Run> {
    let mut server_args: Vec<String> = ["storm-server", "--addr", "127.0.0.1:0", "--cpu", "0"]
        .map(str::to_owned)
        .to_vec();
    if let Variant::Limit(k) = variant {
        server_args.extend(["--max-handshakes".to_owned(), k.to_string()]);
    }
    let mut server = Child::spawn(&server_args)?;
    let line = server.wait_line("LISTENING ", Duration::from_secs(20))?;
    let addr = line["LISTENING ".len()..].trim().to_owned();
    let mut crowd = Child::spawn(&[
        "storm-clients".to_owned(),
        "--url".to_owned(),
        format!("ws://{addr}/"),
        "--clients".to_owned(),
        clients.to_string(),
        "--jitter".to_owned(),
        variant.jitter().to_owned(),
        "--cpu".to_owned(),
        "1".to_owned(),
    ])?;
    crowd.wait_line("CONNECTED ", Duration::from_secs(120))?;
    std::thread::sleep(SETTLE);
    crowd.send_line("stats")?;
    let before = crowd.wait_line("STATS ", Duration::from_secs(20))?;
    let t0 = match case {
        Case::Restart => {
            server.send_line("restart")?;
            let line = server.wait_line("RESTARTED ", Duration::from_secs(20))?;
            line["RESTARTED ".len()..]
                .trim()
                .parse()
                .map_err(io::Error::other)?
        }
        Case::Kill(down) => {
            let t0 = now_micros();
            server.kill();
            std::thread::sleep(down);
            let idx = server_args
                .iter()
                .position(|a| a == "127.0.0.1:0")
                .unwrap_or(2);
            server_args[idx] = addr.clone();
            server = Child::spawn(&server_args)?;
            server.wait_line("LISTENING ", Duration::from_secs(20))?;
            t0
        }
    };
    let deadline = Instant::now() + RECOVERY_LIMIT;
    loop {
        server.send_line(&format!("count {t0}"))?;
        let line = server.wait_line("COUNT ", Duration::from_secs(20))?;
        let back: usize = line["COUNT ".len()..]
            .trim()
            .parse()
            .map_err(io::Error::other)?;
        if back >= clients || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Arrivals may go on after the last client is back (none should): wait a bucket's worth.
    std::thread::sleep(Duration::from_secs(1));
    server.send_line(&format!("report {t0}"))?;
    let arrivals = server.wait_line("ARRIVALS ", Duration::from_secs(20))?;
    let upgrades = server.wait_line("UPGRADES ", Duration::from_secs(20))?;
    crowd.send_line("stats")?;
    let stats = crowd.wait_line("STATS ", Duration::from_secs(20))?;
    crowd.send_line(&format!("scheduled {t0}"))?;
    let scheduled = crowd.wait_line("SCHEDULED ", Duration::from_secs(20))?;
    crowd.finish(Duration::from_secs(5));
    server.finish(Duration::from_secs(5));
    let relative = |list: &str| -> io::Result<Vec<u64>> {
        Ok(split_numbers(list.trim())?
            .into_iter()
            .map(|t| t.saturating_sub(t0))
            .collect())
    };
    Ok(Run {
        clients,
        case,
        variant,
        arrivals: relative(&arrivals["ARRIVALS ".len()..])?,
        upgrades: relative(&upgrades["UPGRADES ".len()..])?,
        scheduled: relative(&scheduled["SCHEDULED ".len()..])?,
        stats: stats_delta(&before, &stats)?,
    })
}

/// The clients' counters that changed between two `STATS` lines, as `name=delta` pairs.
fn stats_delta(before: &str, after: &str) -> io::Result<String> {
    let pairs = |line: &str| -> io::Result<Vec<(String, u64)>> {
        line.split_whitespace()
            .skip(1)
            .map(|pair| {
                let (name, value) = pair
                    .split_once('=')
                    .ok_or_else(|| io::Error::other(format!("not name=value: {pair:?}")))?;
                Ok((name.to_owned(), value.parse().map_err(io::Error::other)?))
            })
            .collect()
    };
    let before = pairs(before)?;
    let mut out = Vec::new();
    for (name, value) in pairs(after)? {
        let was = before
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, v)| *v);
        if value != was && name != "first" {
            out.push(format!("{name} {}", value - was));
        }
    }
    Ok(out.join(", "))
}

/// `bench storm [--clients 1000,10000] [--cases restart,kill] [--down S]
/// [--max-handshakes K] [--out FILE]`: every case with every variant (defaults, full jitter, defaults with a
/// server limit), as a Markdown report on standard output (and in FILE).
pub(crate) fn main(args: &Args) -> io::Result<()> {
    args.only(&["clients", "cases", "down", "max-handshakes", "out"])?;
    let down = Duration::from_secs_f64(args.parse_or("down", DOWN.as_secs_f64())?);
    let counts = split_numbers(args.get("clients").unwrap_or("1000"))?;
    let cases = args
        .get("cases")
        .unwrap_or("restart,kill")
        .split(',')
        .map(|c| match c {
            "restart" => Ok(Case::Restart),
            "kill" => Ok(Case::Kill(down)),
            other => Err(io::Error::other(format!("--cases: {other:?}"))),
        })
        .collect::<io::Result<Vec<_>>>()?;
    let limit = args.parse_or("max-handshakes", DEFAULT_LIMIT)?;
    crate::proc::prepare_children()?;
    let mut runs = Vec::new();
    let result = (|| {
        for &n in &counts {
            for &case in &cases {
                for variant in [
                    Variant::Defaults,
                    Variant::FullJitter,
                    Variant::Limit(limit),
                ] {
                    eprintln!("storm: {n} clients, {}, {}", case.name(), variant.name());
                    let n = usize::try_from(n).map_err(io::Error::other)?;
                    runs.push(one_run(n, case, variant)?);
                }
            }
        }
        io::Result::Ok(())
    })();
    crate::proc::cleanup_children();
    result?;
    let report = report(&runs);
    print!("{report}");
    if let Some(path) = args.get("out") {
        std::fs::write(path, &report)?;
    }
    Ok(())
}

fn report(runs: &[Run]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| clients | server | settings | arrivals | peak / 100 ms | mean / 100 ms | peak ÷ mean | chance alone | scheduled: peak ÷ mean | all back after | client counts after the event |"
    );
    let _ = writeln!(out, "|---|---|---|--:|--:|--:|--:|--:|--:|--:|---|");
    for run in runs {
        let (peak, mean) = peak_and_mean(&run.arrivals);
        let (sched_peak, sched_mean) = peak_and_mean(&run.scheduled);
        let back = run.recovered().map_or_else(
            || format!("not all ({})", run.upgrades.len()),
            |d| format!("{:.1} s", d.as_secs_f64()),
        );
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {peak} | {mean:.1} | {:.2} | {:.2} | {:.2} | {back} | {} |",
            run.clients,
            run.case.name(),
            run.variant.name(),
            run.arrivals.len(),
            peak as f64 / mean.max(f64::MIN_POSITIVE),
            chance_floor(run.arrivals.len(), spread_buckets(&run.arrivals)),
            sched_peak as f64 / sched_mean.max(f64::MIN_POSITIVE),
            run.stats,
        );
    }
    for run in runs {
        let _ = writeln!(
            out,
            "\n{} clients, {}, {}: per 100 ms after the event, the server's arrivals \
             (peak {}), then the attempts the clients' policy scheduled (peak {}):\n\n\
             ```text\n{}\n{}```",
            run.clients,
            run.case.name(),
            run.variant.name(),
            buckets(&run.arrivals).iter().max().unwrap_or(&0),
            buckets(&run.scheduled).iter().max().unwrap_or(&0),
            chart(&run.arrivals),
            chart(&run.scheduled),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chance_alone_lifts_the_peak_of_sparse_buckets_only() {
        // 25 arrivals per bucket on average: the busiest of 40 is well above it.
        let sparse = chance_floor(1_000, 40);
        assert!(sparse > 1.25 && sparse < 1.8, "{sparse}");
        // 10,000 per bucket: within a few percent.
        let dense = chance_floor(100_000, 10);
        assert!(dense > 1.0 && dense < 1.03, "{dense}");
        assert_eq!(chance_floor(0, 10), 1.0);
    }

    #[test]
    fn the_spread_runs_from_the_first_arrivals_bucket() {
        assert_eq!(spread_buckets(&[250_000, 310_000, 990_000]), 8);
        assert_eq!(peak_and_mean(&[250_000, 210_000, 990_000]), (2, 3.0 / 8.0));
    }
}
