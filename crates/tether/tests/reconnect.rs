//! The reconnect loop under tokio's paused clock, against in-process servers that misbehave
//! on a script. Delays are asserted in virtual time, so nothing here waits for real.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tether::reconnect::{AttemptContext, Backoff, Decision, Policy, ReconnectEvent};
use tether::{ClientBuilder, Config, Error, ErrorKind, Message, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// What the scripted server does with one connection.
#[derive(Clone, Debug)]
enum Act {
    /// Answer the upgrade with this status and headers.
    Status(u16, Vec<(&'static str, String)>),
    /// Read the request, then close without answering.
    CloseBeforeAnswer,
    /// Read the request and never answer.
    NeverAnswer,
    /// Answer something that is not HTTP.
    Garbage,
    /// Accept the upgrade, then do this.
    Accept(After),
}

#[derive(Clone, Copy, Debug)]
enum After {
    /// Drop the TCP connection at once.
    Drop,
    /// Close with this code.
    Close(u16),
    /// Hold the connection and never read or write again.
    Silent,
    /// Echo until the client closes.
    Echo,
}

/// One accepted connection: when, and the request's headers (lower-cased names).
#[derive(Clone, Debug)]
struct Seen {
    at: Instant,
    headers: Vec<(String, String)>,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// Starts a server that handles its n-th connection with `acts[n]` (the last act repeats).
async fn scripted(acts: Vec<Act>) -> (SocketAddr, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log: Log = Arc::default();
    let seen = log.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        for n in 0.. {
            let (tcp, _) = listener.accept().await.unwrap();
            let act = acts.get(n).unwrap_or_else(|| acts.last().unwrap()).clone();
            if let Some(s) = handle(tcp, act, &seen).await {
                held.push(s);
            }
        }
    });
    (addr, log)
}

async fn read_head(tcp: &mut TcpStream) -> Vec<(String, String)> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut b).await.unwrap_or(0) == 0 {
            break;
        }
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect()
}

/// Handles one connection; returns it when it must be kept open (never answered, silent).
async fn handle(mut tcp: TcpStream, act: Act, log: &Log) -> Option<Box<dyn Send>> {
    let at = Instant::now();
    if let Act::Accept(after) = act {
        let (ws, request) = tether::accept(tcp, &ServerConfig::default())
            .await
            .unwrap()
            .unwrap();
        let headers = request
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(&h.value).into_owned(),
                )
            })
            .collect();
        log.lock().unwrap().push(Seen { at, headers });
        let mut ws = ws;
        match after {
            After::Drop => drop(ws),
            After::Silent => return Some(Box::new(ws)),
            After::Close(code) => {
                tokio::spawn(async move { ws.close(code, "").await });
            }
            After::Echo => {
                tokio::spawn(async move {
                    while let Some(Ok(m)) = ws.recv().await {
                        if ws.send(m).await.is_err() {
                            break;
                        }
                    }
                });
            }
        }
        return None;
    }
    let headers = read_head(&mut tcp).await;
    log.lock().unwrap().push(Seen { at, headers });
    match act {
        Act::Status(code, headers) => {
            let mut out = format!(
                "HTTP/1.1 {code} {}\r\n",
                tether::proto::handshake::reason_phrase(code)
            );
            for (n, v) in headers {
                out.push_str(&format!("{n}: {v}\r\n"));
            }
            out.push_str("Content-Length: 6\r\n\r\nnope!\n");
            tcp.write_all(out.as_bytes()).await.unwrap();
            None
        }
        Act::CloseBeforeAnswer => None,
        Act::NeverAnswer => Some(Box::new(tcp)),
        Act::Garbage => {
            tcp.write_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n").await.unwrap();
            None
        }
        Act::Accept(_) => unreachable!(),
    }
}

/// A recorded loop event.
#[derive(Clone, Debug, PartialEq)]
enum Ev {
    Connecting(u32),
    Open(u32),
    Retry(u32, Duration, ErrorKind, Option<u16>),
    ShortLived(Duration),
    /// After an open connection ended: the peer's close code and the wait.
    Closed(Option<u16>, Duration),
    Fatal(u32, ErrorKind, Option<u16>),
}

/// A reconnecting client of `addr` with `policy`, and the events it reports.
fn recorded(addr: SocketAddr, policy: Policy) -> (tether::Reconnecting, Arc<Mutex<Vec<Ev>>>) {
    let (events, cb) = recorder();
    let conns = ClientBuilder::new(url(addr))
        .reconnecting()
        .policy(policy)
        .on_event(cb)
        .stream();
    (conns, events)
}

fn recorder() -> (
    Arc<Mutex<Vec<Ev>>>,
    impl Fn(&ReconnectEvent<'_>) + Send + Sync,
) {
    let events: Arc<Mutex<Vec<Ev>>> = Arc::default();
    let sink = events.clone();
    let cb = move |e: &ReconnectEvent<'_>| {
        let ev = match e {
            ReconnectEvent::Connecting { attempt, .. } => Ev::Connecting(*attempt),
            ReconnectEvent::Open { attempt, .. } => Ev::Open(*attempt),
            ReconnectEvent::Retry {
                attempt,
                delay,
                error,
            } => Ev::Retry(*attempt, *delay, error.kind(), error.status()),
            ReconnectEvent::ShortLived { delay, .. } => Ev::ShortLived(*delay),
            ReconnectEvent::Closed { code, delay, .. } => Ev::Closed(*code, *delay),
            ReconnectEvent::Fatal { attempt, error } => {
                Ev::Fatal(*attempt, error.kind(), error.status())
            }
            _ => return,
        };
        sink.lock().unwrap().push(ev);
    };
    (events, cb)
}

fn url(addr: SocketAddr) -> String {
    format!("ws://{addr}/")
}

/// A schedule without randomness in its first wait, so delays can be asserted exactly.
fn fixed_backoff() -> Backoff {
    Backoff {
        initial: Duration::ZERO,
        ..Backoff::default()
    }
}

fn retries(events: &[Ev]) -> Vec<Duration> {
    events
        .iter()
        .filter_map(|e| match e {
            Ev::Retry(_, d, ..) | Ev::ShortLived(d) => Some(*d),
            _ => None,
        })
        .collect()
}

fn gaps(log: &Log) -> Vec<Duration> {
    let log = log.lock().unwrap();
    log.windows(2).map(|w| w[1].at - w[0].at).collect()
}

fn close_to(a: Duration, b: Duration) -> bool {
    a.abs_diff(b) < Duration::from_millis(50)
}

/// Takes three connections that the server ends (each with close code `code`), then a
/// fourth that echoes.
async fn three_ends_then_echo(conns: &mut tether::Reconnecting, code: u16) {
    for _ in 0..3 {
        let mut ws = conns.next().await.unwrap().unwrap();
        while let Some(Ok(_)) = ws.recv().await {}
        assert_eq!(ws.close_code(), code);
    }
    let mut ws = conns.next().await.unwrap().unwrap();
    ws.send("steady").await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("steady"));
}

/// Three waits of the fixed schedule (0 s, 3.1 s, 5.0 s), each reported and each the gap
/// the server saw between attempts.
fn assert_backoff_waits(got: &[Duration], log: &Log) {
    let want = [0.0, 3.1, 3.1 * 1.618].map(Duration::from_secs_f64);
    assert_eq!(got.len(), 3, "{got:?}");
    for ((g, w), gap) in got.iter().zip(want).zip(gaps(log)) {
        assert!(close_to(*g, w) && close_to(gap, w), "{g:?} {gap:?} {w:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn fatal_statuses_stop_after_one_attempt() {
    for code in [401u16, 403, 404, 429] {
        let (addr, log) = scripted(vec![Act::Status(
            code,
            vec![("WWW-Authenticate", "Bearer realm=\"feed\"".into())],
        )])
        .await;
        let (events, cb) = recorder();
        let mut conns = ClientBuilder::new(url(addr))
            .reconnecting()
            .on_event(cb)
            .stream();
        let err = conns.next().await.unwrap().unwrap_err();
        assert!(
            conns.next().await.is_none(),
            "the stream ends after the fatal error"
        );
        assert_eq!(err.status(), Some(code));
        let response = err.response().unwrap();
        assert_eq!(
            response.headers.get_str("www-authenticate"),
            Some("Bearer realm=\"feed\"")
        );
        assert_eq!(response.body, b"nope!\n");
        assert_eq!(
            log.lock().unwrap().len(),
            1,
            "HTTP {code} must not be retried"
        );
        assert_eq!(
            *events.lock().unwrap(),
            vec![
                Ev::Connecting(1),
                Ev::Fatal(1, ErrorKind::Status, Some(code))
            ]
        );
        if code == 401 {
            assert_eq!(
                err.to_string(),
                "server rejected WebSocket connection: HTTP 401 Unauthorized"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn transient_statuses_back_off_then_messages_flow() {
    let (addr, log) = scripted(vec![
        Act::Status(500, vec![]),
        Act::Status(502, vec![]),
        Act::Status(503, vec![]),
        Act::Status(504, vec![]),
        Act::Accept(After::Echo),
    ])
    .await;
    let (mut conns, events) = recorded(addr, Policy::default().backoff(fixed_backoff()));
    let mut ws = conns.next().await.unwrap().unwrap();
    ws.send("after the storm").await.unwrap();
    assert_eq!(
        ws.recv().await.unwrap().unwrap(),
        Message::text("after the storm")
    );
    let want = [0.0, 3.1, 3.1 * 1.618, 3.1 * 1.618 * 1.618].map(Duration::from_secs_f64);
    let delays = retries(&events.lock().unwrap());
    assert_eq!(delays.len(), 4);
    for (got, want) in delays.iter().zip(want) {
        assert!(close_to(*got, want), "{got:?} vs {want:?}");
    }
    // The waits really happened between the attempts.
    for (gap, want) in gaps(&log).iter().zip(want) {
        assert!(close_to(*gap, want), "{gap:?} vs {want:?}");
    }
    let events = events.lock().unwrap();
    assert_eq!(events.last(), Some(&Ev::Open(5)));
    assert!(events.contains(&Ev::Retry(3, want[2], ErrorKind::Status, Some(503))));
}

#[tokio::test(start_paused = true)]
async fn first_wait_is_random_within_initial() {
    let (addr, _log) = scripted(vec![Act::Status(503, vec![]), Act::Accept(After::Echo)]).await;
    let (events, cb) = recorder();
    let mut conns = ClientBuilder::new(url(addr))
        .reconnecting()
        .on_event(cb)
        .stream();
    conns.next().await.unwrap().unwrap();
    let delays = retries(&events.lock().unwrap());
    assert_eq!(delays.len(), 1);
    assert!(delays[0] <= Duration::from_secs(5), "{delays:?}");
}

#[tokio::test(start_paused = true)]
async fn retry_after_raises_the_wait() {
    let (addr, log) = scripted(vec![
        Act::Status(503, vec![("Retry-After", "30".into())]),
        Act::Accept(After::Echo),
    ])
    .await;
    let (mut conns, events) = recorded(addr, Policy::default().backoff(fixed_backoff()));
    conns.next().await.unwrap().unwrap();
    assert_eq!(
        retries(&events.lock().unwrap()),
        vec![Duration::from_secs(30)]
    );
    assert!(close_to(gaps(&log)[0], Duration::from_secs(30)));
}

#[tokio::test(start_paused = true)]
async fn eof_and_silence_are_retried_garbage_is_fatal() {
    let (addr, log) = scripted(vec![Act::CloseBeforeAnswer, Act::NeverAnswer, Act::Garbage]).await;
    let (events, cb) = recorder();
    let mut conns = ClientBuilder::new(url(addr))
        .open_timeout(Duration::from_secs(2))
        .reconnecting()
        .policy(Policy::default().backoff(fixed_backoff()))
        .on_event(cb)
        .stream();
    let err = conns.next().await.unwrap().unwrap_err();
    assert!(matches!(err, Error::InvalidResponse { .. }), "{err:?}");
    assert!(conns.next().await.is_none());
    assert_eq!(log.lock().unwrap().len(), 3);
    let events = events.lock().unwrap();
    assert!(events.contains(&Ev::Retry(1, Duration::ZERO, ErrorKind::Eof, None)));
    assert!(events.contains(&Ev::Retry(
        2,
        Duration::from_millis(3100),
        ErrorKind::Timeout,
        None
    )));
    assert_eq!(
        events.last(),
        Some(&Ev::Fatal(3, ErrorKind::InvalidResponse, None))
    );
    // The silent attempt took the whole open timeout.
    assert!(close_to(
        gaps(&log)[1],
        Duration::from_secs(2) + Duration::from_millis(3100)
    ));
}

#[tokio::test(start_paused = true)]
async fn redirects_are_followed_and_loops_are_fatal() {
    let (target, _) = scripted(vec![Act::Accept(After::Echo)]).await;
    let (addr, _) = scripted(vec![Act::Status(
        302,
        vec![("Location", format!("ws://{target}/moved"))],
    )])
    .await;
    let mut conns = ClientBuilder::new(url(addr)).reconnecting().stream();
    let mut ws = conns.next().await.unwrap().unwrap();
    ws.send("hi").await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("hi"));

    let (a, _) = scripted(vec![Act::Status(307, vec![("Location", "/again".into())])]).await;
    let mut conns = ClientBuilder::new(format!("ws://{a}/again"))
        .reconnecting()
        .stream();
    let err = conns.next().await.unwrap().unwrap_err();
    assert!(
        matches!(err, Error::Redirect(tether::RedirectError::Loop(_))),
        "{err:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn accept_then_drop_backs_off_instead_of_hot_looping() {
    let (addr, log) = scripted(vec![
        Act::Accept(After::Drop),
        Act::Accept(After::Drop),
        Act::Accept(After::Drop),
        Act::Accept(After::Echo),
    ])
    .await;
    let (mut conns, events) = recorded(addr, Policy::default().backoff(fixed_backoff()));
    // The server hangs up: each connection ends without a closing handshake.
    three_ends_then_echo(&mut conns, 1006).await;
    assert_backoff_waits(&retries(&events.lock().unwrap()), &log);
}

#[tokio::test(start_paused = true)]
async fn zero_min_uptime_reconnects_at_once_like_python() {
    let (addr, log) = scripted(vec![
        Act::Accept(After::Close(1001)),
        Act::Accept(After::Echo),
    ])
    .await;
    let (mut conns, events) = recorded(
        addr,
        Policy::default()
            .min_uptime(Duration::ZERO)
            .reconnect_delay(Duration::ZERO),
    );
    let mut ws = conns.next().await.unwrap().unwrap();
    assert!(ws.recv().await.is_none());
    assert_eq!(ws.close_code(), 1001);
    drop(ws);
    let _ws = conns.next().await.unwrap().unwrap();
    let events = events.lock().unwrap();
    assert!(retries(&events).is_empty());
    assert!(
        !events.iter().any(|e| matches!(e, Ev::Closed(..))),
        "{events:?}"
    );
    assert!(gaps(&log)[0] < Duration::from_millis(50));
}

/// The SRE's storm: a server that closes every connection with 1012 (a restart) gets its
/// clients back spread over [0, reconnect delay] instead of all at once. Each reconnect of
/// one client waits a fresh random time within the default 1 s, reported as it is waited.
#[tokio::test(start_paused = true)]
async fn a_dropped_connection_reconnects_after_a_random_spread() {
    const ROUNDS: usize = 20;
    let (addr, log) = scripted(vec![Act::Accept(After::Close(1012))]).await;
    let (events, cb) = recorder();
    let mut conns = ClientBuilder::new(url(addr))
        .reconnecting()
        // No minimum uptime: these connections are short, and the spread is what is shown.
        .policy(Policy::default().min_uptime(Duration::ZERO))
        .on_event(cb)
        .stream();
    for _ in 0..=ROUNDS {
        let mut ws = conns.next().await.unwrap().unwrap();
        while let Some(Ok(_)) = ws.recv().await {}
        assert_eq!(ws.close_code(), 1012);
    }
    let events = events.lock().unwrap();
    let waits: Vec<Duration> = events
        .iter()
        .filter_map(|e| match e {
            Ev::Closed(code, d) => {
                assert_eq!(*code, Some(1012));
                Some(*d)
            }
            _ => None,
        })
        .collect();
    assert_eq!(waits.len(), ROUNDS, "{events:?}");
    assert!(
        waits.iter().all(|d| *d <= Duration::from_secs(1)),
        "{waits:?}"
    );
    // Random, not one fixed wait (twenty equal draws would be a broken generator).
    assert!(waits.iter().any(|d| *d != waits[0]), "{waits:?}");
    for (wait, gap) in waits.iter().zip(gaps(&log)) {
        assert!(
            close_to(*wait, gap),
            "waited {wait:?}, next attempt after {gap:?}"
        );
    }
    assert!(retries(&events).is_empty(), "no failures: {events:?}");
}

/// Clients dropped together retry in windows that follow each other: the spread's [0, 1 s]
/// after the drop, then the first retry's [1 s, 4.1 s], then the second retry a fixed 3.1 s
/// later. A refused attempt moves to the next window instead of landing in the middle of the
/// one the rest of the crowd is still arriving in.
#[tokio::test(start_paused = true)]
async fn a_refused_attempt_after_a_spread_retries_in_the_window_after_it() {
    const CLIENTS: usize = 12;
    let mut from_drop = Vec::new();
    for _ in 0..CLIENTS {
        let (addr, log) = scripted(vec![
            Act::Accept(After::Close(1012)),
            Act::Status(503, vec![]),
            Act::Status(503, vec![]),
            Act::Accept(After::Echo),
        ])
        .await;
        let (mut conns, events) = recorded(addr, Policy::default().min_uptime(Duration::ZERO));
        let mut ws = conns.next().await.unwrap().unwrap();
        while let Some(Ok(_)) = ws.recv().await {}
        assert_eq!(ws.close_code(), 1012);
        drop(ws);
        let dropped = Instant::now();
        let mut ws = conns.next().await.unwrap().unwrap();
        ws.send("back").await.unwrap();
        assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("back"));
        let events = events.lock().unwrap();
        let spread = events
            .iter()
            .find_map(|e| match e {
                Ev::Closed(Some(1012), d) => Some(*d),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{events:?}"));
        let waits = retries(&events);
        assert_eq!(waits.len(), 2, "{events:?}");
        let secs = Duration::from_secs_f64;
        assert!(spread <= secs(1.0), "{spread:?}");
        // The first retry waits out the spread's window, then part of the next 3.1 s.
        assert!(waits[0] >= secs(1.0) - spread, "{spread:?} {waits:?}");
        assert!(waits[0] <= secs(4.1) - spread, "{spread:?} {waits:?}");
        assert_eq!(waits[1], secs(3.1));
        // The server saw the attempts after exactly those waits.
        let gaps = gaps(&log);
        for (wait, gap) in [spread, waits[0], waits[1]].iter().zip(&gaps) {
            assert!(
                close_to(*wait, *gap),
                "waited {wait:?}, next attempt after {gap:?}"
            );
        }
        from_drop.push(spread + waits[0]);
        assert!(close_to(
            Instant::now() - dropped,
            spread + waits[0] + waits[1]
        ));
    }
    // Random within the window, not one fixed time.
    assert!(
        from_drop.iter().any(|d| *d != from_drop[0]),
        "{from_drop:?}"
    );
}

/// A close with 1013 (try again later) is a failure: the waits follow the backoff
/// (0 s, 3.1 s, 5.0 s with the first wait fixed), and a good connection afterwards is
/// reached as usual.
#[tokio::test(start_paused = true)]
async fn a_close_with_1013_takes_the_backoffs_next_wait() {
    let (addr, log) = scripted(vec![
        Act::Accept(After::Close(1013)),
        Act::Accept(After::Close(1013)),
        Act::Accept(After::Close(1013)),
        Act::Accept(After::Echo),
    ])
    .await;
    let (mut conns, events) = recorded(
        addr,
        Policy::default()
            .backoff(fixed_backoff())
            .min_uptime(Duration::ZERO),
    );
    three_ends_then_echo(&mut conns, 1013).await;
    let events = events.lock().unwrap();
    let got: Vec<Duration> = events
        .iter()
        .filter_map(|e| match e {
            Ev::Closed(Some(1013), d) => Some(*d),
            _ => None,
        })
        .collect();
    assert_backoff_waits(&got, &log);
}

#[tokio::test(start_paused = true)]
async fn long_enough_uptime_restarts_the_schedule() {
    let (addr, log) = scripted(vec![
        Act::Status(503, vec![]),
        Act::Status(503, vec![]),
        Act::Accept(After::Echo),
        Act::Status(503, vec![]),
        Act::Accept(After::Echo),
    ])
    .await;
    let (mut conns, events) = recorded(addr, Policy::default().backoff(fixed_backoff()));
    let mut ws = conns.next().await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await; // longer than the 5 s minimum uptime
    ws.close(1000, "").await.unwrap();
    drop(ws);
    conns.next().await.unwrap().unwrap();
    let delays = retries(&events.lock().unwrap());
    // 0 s, 3.1 s, then after a good connection the schedule starts over at 0 s.
    assert_eq!(delays.len(), 3, "{delays:?}");
    assert!(close_to(delays[2], Duration::ZERO), "{delays:?}");
    assert_eq!(log.lock().unwrap().len(), 5);
}

#[tokio::test(start_paused = true)]
async fn silent_server_is_noticed_by_keepalive_and_replaced() {
    let (addr, _log) = scripted(vec![Act::Accept(After::Silent), Act::Accept(After::Echo)]).await;
    let config = Config::default()
        .ping_interval(Some(Duration::from_secs(5)))
        .ping_timeout(Some(Duration::from_secs(5)));
    let mut conns = ClientBuilder::new(url(addr))
        .config(config)
        .reconnecting()
        .stream();
    let mut ws = conns.next().await.unwrap().unwrap();
    let started = Instant::now();
    let err = ws.recv().await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Protocol(tether::ProtocolError::KeepaliveTimeout)
        ),
        "{err:?}"
    );
    assert!(close_to(started.elapsed(), Duration::from_secs(10)));
    while ws.recv().await.is_some() {}
    drop(ws);
    let mut ws = conns.next().await.unwrap().unwrap();
    ws.send("alive").await.unwrap();
    assert_eq!(ws.recv().await.unwrap().unwrap(), Message::text("alive"));
}

#[tokio::test(start_paused = true)]
async fn max_attempts_gives_up_with_the_count_and_last_error() {
    // A port with nothing listening: connection refused, which is retryable.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (events, cb) = recorder();
    let mut conns = ClientBuilder::new(format!("ws://127.0.0.1:{port}/"))
        .reconnecting()
        .policy(Policy::default().max_attempts(Some(3)))
        .on_event(cb)
        .stream();
    let err = conns.next().await.unwrap().unwrap_err();
    match &err {
        Error::AttemptsExhausted { attempts, last } => {
            assert_eq!(*attempts, 3);
            assert!(matches!(**last, Error::Io(_)), "{last:?}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.kind(), ErrorKind::Io);
    let connecting = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, Ev::Connecting(_)))
        .count();
    assert_eq!(connecting, 3);
}

/// The documented recipe: on 401, refresh the token once, then give up.
fn refresh_once_policy() -> Policy {
    Policy::default().on_error(|error: &Error, ctx: &AttemptContext| {
        if error.status() == Some(401) && ctx.attempt == 1 {
            Decision::RetryAfter(Duration::ZERO)
        } else {
            Decision::Default
        }
    })
}

#[tokio::test(start_paused = true)]
async fn token_is_refreshed_once_on_401() {
    let (addr, log) = scripted(vec![Act::Status(401, vec![]), Act::Accept(After::Echo)]).await;
    let mut conns = ClientBuilder::new(url(addr))
        .header("Authorization", "Bearer stale")
        .reconnecting()
        .policy(refresh_once_policy())
        .before_attempt(|mut req| async move {
            if req.previous_status == Some(401) {
                req.set_header("Authorization", "Bearer fresh");
            }
            Ok(req)
        })
        .stream();
    conns.next().await.unwrap().unwrap();
    let log = log.lock().unwrap();
    let auth: Vec<&str> = log
        .iter()
        .map(|s| {
            s.headers
                .iter()
                .find(|(n, _)| n == "authorization")
                .map(|(_, v)| v.as_str())
                .unwrap_or("")
        })
        .collect();
    assert_eq!(auth, ["Bearer stale", "Bearer fresh"]);
}

#[tokio::test(start_paused = true)]
async fn rejected_refreshed_token_is_fatal() {
    let (addr, log) = scripted(vec![Act::Status(
        401,
        vec![("WWW-Authenticate", "Bearer error=\"invalid_token\"".into())],
    )])
    .await;
    let mut conns = ClientBuilder::new(url(addr))
        .reconnecting()
        .policy(refresh_once_policy())
        .stream();
    let err = conns.next().await.unwrap().unwrap_err();
    assert_eq!(err.status(), Some(401));
    assert!(conns.next().await.is_none());
    assert_eq!(log.lock().unwrap().len(), 2, "one refresh, then stop");
}

#[tokio::test(start_paused = true)]
async fn retry_on_status_makes_429_transient() {
    let (addr, log) = scripted(vec![
        Act::Status(429, vec![("Retry-After", "7".into())]),
        Act::Accept(After::Echo),
    ])
    .await;
    let mut conns = ClientBuilder::new(url(addr))
        .reconnecting()
        .policy(
            Policy::default()
                .backoff(fixed_backoff())
                .retry_on_status(429),
        )
        .stream();
    conns.next().await.unwrap().unwrap();
    assert!(close_to(gaps(&log)[0], Duration::from_secs(7)));
}

#[tokio::test(start_paused = true)]
async fn invalid_uri_is_fatal_without_an_attempt() {
    let (events, cb) = recorder();
    let mut conns = ClientBuilder::new("http://example.com/")
        .reconnecting()
        .on_event(cb)
        .stream();
    let err = conns.next().await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidUri);
    assert!(conns.next().await.is_none());
    assert!(!events
        .lock()
        .unwrap()
        .iter()
        .any(|e| matches!(e, Ev::Retry(..))));
}
