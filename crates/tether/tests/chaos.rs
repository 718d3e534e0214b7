//! Faults on the network path, injected by the test's proxy between a tether client and a
//! tether server: a TCP reset, an orderly end of stream (FIN) without a Close frame, a cut in
//! the middle of a frame (either way), a cut in the middle of the opening handshake (either
//! way), a blackhole, a delay (below and above the ping timeout) and a half-open connection
//! (either way). For each, both ends — the client, and the server's handler for that
//! connection — must see the documented outcome within the configured bound, nothing may
//! leak, and the reconnecting client must come back as its policy says.
//!
//! The documented outcomes asserted (`WebSocket::recv`, `WebSocket::close_code`,
//! `ProtocolError::close_code`, `ReconnectEvent`, docs/reconnecting.md, docs/cli.md):
//!
//! * a reset: `recv` returns `Error::Io` (kind `io`, `ConnectionReset`) once, then `None`;
//!   close code 1006 (no closing handshake), `PeerClose::NotReceived`;
//! * an end of stream without a Close frame: `None` at once, close code 1006;
//! * a peer gone silent: `Error::Protocol(ProtocolError::KeepaliveTimeout)` (whose close code
//!   is 1011) once the ping interval and the ping timeout have passed, then `None`, close
//!   code 1006; a peer that still hears that side receives its Close: 1011 "keepalive ping
//!   timeout";
//! * a closing handshake into silence: `close` gives up after the close timeout, close
//!   code 1006;
//! * a cut opening handshake: `Error::Io` (reset) from `connect`, or `Error::Eof` when the
//!   cut is a FIN; both retried by the default policy, with its backoff;
//! * an open connection that ended: the loop reports `ReconnectEvent::Closed` with no peer
//!   code and a wait within `Policy::reconnect_delay`, then opens the next connection.
//!
//! Bounds are configured short (ping interval 200 ms, ping timeout 300 ms, close timeout
//! 500 ms, open timeout 1 s) and every outcome must come before its bound plus [`SLACK`].
//! Where only keepalive can tell, the side meant to notice first has the short ping timeout
//! and its peer a long one, so that which side notices first is not a race.
//!
//! Leaks: each case starts on an empty runtime and asserts that once its connections are
//! over only the server's and the proxy's accept loops are left (2 tasks, and 2 descriptors
//! more than before the case: the listening sockets), and that after the server's shutdown
//! and the proxy's stop nothing is (0 tasks, as many descriptors as before). Tasks are the
//! runtime's alive tasks, descriptors the entries of `/proc/self/fd`. Those are counted for
//! the whole process, so the cases run one at a time, each on a runtime of its own (see
//! [`alone`]): a few seconds in all.
//!
//! The proxy's resets are pure RSTs; one test turns that off (`ChaosProxy::hard_resets`) to
//! get a FIN followed by an RST, which the receiver reads as an orderly end of stream.

mod support;

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::chaos_proxy::{ChaosProxy, Fault, HandshakeCut};
use support::numbered::{message, number};
use tether::reconnect::{Backoff, Jitter, ReconnectEvent};
use tether::{
    ClientBuilder, CloseFrame, Config, Error, ErrorKind, Message, PeerClose, Policy, ProtocolError,
    Server, ServerConfig, ShutdownHandle, WebSocket,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

const PING_INTERVAL: Duration = Duration::from_millis(200);
const PING_TIMEOUT: Duration = Duration::from_millis(300);
/// The ping timeout of the side that must not be the first to notice a silent peer.
const LONG_PING_TIMEOUT: Duration = Duration::from_millis(1500);
const CLOSE_TIMEOUT: Duration = Duration::from_millis(500);
const OPEN_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest a silent peer can go unnoticed: the next keepalive Ping, then its timeout.
const KEEPALIVE_BOUND: Duration = PING_INTERVAL.saturating_add(PING_TIMEOUT);
/// What an outcome may take beyond its bound (scheduling on a busy machine).
const SLACK: Duration = Duration::from_secs(2);
/// How much earlier than its deadline a timer may be seen to fire (clock reads around it).
const EARLY: Duration = Duration::from_millis(25);
/// Messages each side sends before the fault.
const K: u64 = 5;
/// The reconnecting client's policy: the wait after an open connection ended, and the
/// backoff's second wait (its first is zero).
const RECONNECT_DELAY: Duration = Duration::from_millis(100);
const RETRY_MIN: Duration = Duration::from_millis(100);

fn config(ping_timeout: Duration) -> Config {
    Config::default()
        .ping_interval(Some(PING_INTERVAL))
        .ping_timeout(Some(ping_timeout))
        .close_timeout(CLOSE_TIMEOUT)
}

// ----- the server's handler -----

/// What the test asks a server handler to do.
enum Cmd {
    /// Send these messages; report [`Report::Sent`].
    Send(Vec<Message>),
    /// Close with this code and reason (`WebSocket::close`), then report the end.
    Close(u16, &'static str),
}

/// What a server handler reports, tagged with its connection's id (1, 2, … in the order the
/// handlers started).
enum Report {
    Open {
        id: u64,
        cmds: mpsc::UnboundedSender<Cmd>,
    },
    Msg {
        id: u64,
        msg: Message,
        at: Instant,
    },
    Sent {
        id: u64,
    },
    End {
        id: u64,
        ending: Ending,
    },
}

impl Report {
    fn id(&self) -> u64 {
        match self {
            Self::Open { id, .. } | Self::Msg { id, .. } | Self::Sent { id } => *id,
            Self::End { id, .. } => *id,
        }
    }
}

/// How one end saw its connection end.
#[derive(Debug)]
struct Ending {
    /// Messages that arrived after the fault (there must be none).
    late: Vec<Message>,
    /// Errors `recv` (or a send) returned: the documentation says at most one.
    errors: Vec<Error>,
    /// When the first error, or else the end, was seen.
    at: Instant,
    code: u16,
    peer: PeerClose,
}

#[derive(Default)]
struct Recorder {
    late: Vec<Message>,
    errors: Vec<Error>,
    first: Option<Instant>,
}

impl Recorder {
    fn error(&mut self, e: Error) {
        self.first.get_or_insert_with(Instant::now);
        self.errors.push(e);
    }

    fn finish<S: AsyncRead + AsyncWrite + Unpin>(self, ws: &WebSocket<S>) -> Ending {
        Ending {
            late: self.late,
            errors: self.errors,
            at: self.first.unwrap_or_else(Instant::now),
            code: ws.close_code(),
            peer: ws.peer_close().clone(),
        }
    }
}

/// Reports every message received, sends what it is told to, and reports how the
/// connection ended.
async fn handler(mut ws: WebSocket, reports: mpsc::UnboundedSender<Report>, id: u64) {
    let (cmds, mut commands) = mpsc::unbounded_channel();
    let _ = reports.send(Report::Open { id, cmds });
    let mut ending = Recorder::default();
    loop {
        tokio::select! {
            item = ws.recv() => match item {
                Some(Ok(msg)) => {
                    let _ = reports.send(Report::Msg { id, msg, at: Instant::now() });
                }
                Some(Err(e)) => ending.error(e),
                None => break,
            },
            Some(cmd) = commands.recv() => match cmd {
                Cmd::Send(batch) => {
                    for msg in batch {
                        if let Err(e) = ws.send(msg).await {
                            ending.error(e);
                            break;
                        }
                    }
                    let _ = reports.send(Report::Sent { id });
                }
                Cmd::Close(code, reason) => {
                    if let Err(e) = ws.close(code, reason).await {
                        ending.error(e);
                    }
                    break;
                }
            },
        }
    }
    let _ = reports.send(Report::End {
        id,
        ending: ending.finish(&ws),
    });
}

/// Takes everything until the connection ends.
async fn drain<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocket<S>) -> Ending {
    let mut ending = Recorder::default();
    while let Some(item) = ws.recv().await {
        match item {
            Ok(msg) => ending.late.push(msg),
            Err(e) => ending.error(e),
        }
    }
    ending.finish(ws)
}

// ----- leaks -----

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// The open file descriptors of this process, as (descriptor, what it is).
fn open_fds() -> Vec<(String, String)> {
    let mut fds: Vec<_> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            // Gone meanwhile: the descriptor of the directory being read.
            let target = std::fs::read_link(entry.path()).ok()?;
            let fd = entry.file_name().to_string_lossy().into_owned();
            Some((fd, target.to_string_lossy().into_owned()))
        })
        .collect();
    fds.sort();
    fds
}

/// Waits (at most [`SLACK`]) until exactly `tasks` tasks are alive and `fds` descriptors
/// are open; fails with the counts and the descriptors otherwise.
async fn settle(what: &str, tasks: usize, fds: usize) {
    let deadline = Instant::now() + SLACK;
    loop {
        let open = open_fds();
        if (alive_tasks(), open.len()) == (tasks, fds) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} tasks alive and {} descriptors open, expected {tasks} and {fds}: {open:?}",
            alive_tasks(),
            open.len(),
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs a case on a runtime of its own, alone: descriptors are counted for the whole
/// process, so no other case of this file may run meanwhile (not even build or drop its
/// runtime). A failed case does not hold the others up.
fn alone(case: impl std::future::Future<Output = ()>) {
    static ALONE: Mutex<()> = Mutex::new(());
    let _alone = ALONE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(case);
}

// ----- one case: a server, a proxy in front of it -----

/// The server's side of one connection.
struct ServerSide {
    id: u64,
    cmds: mpsc::UnboundedSender<Cmd>,
}

struct Case {
    proxy: ChaosProxy,
    shutdown: ShutdownHandle,
    serving: JoinHandle<io::Result<()>>,
    reports: mpsc::UnboundedReceiver<Report>,
    /// Reports taken from the channel while waiting for another.
    pending: VecDeque<Report>,
    /// One item per TCP connection the server accepted.
    accepted: mpsc::UnboundedReceiver<()>,
    /// Descriptors open before the case started.
    fds: usize,
}

impl Case {
    /// Starts a server with connection settings `server`, and the proxy in front of it, on
    /// an empty runtime.
    async fn start(server: Config) -> Self {
        assert_eq!(alive_tasks(), 0, "each case starts on an empty runtime");
        let fds = open_fds().len();
        let (report, reports) = mpsc::unbounded_channel();
        let (accept, accepted) = mpsc::unbounded_channel();
        let settings = ServerConfig::default()
            .config(server)
            .open_timeout(OPEN_TIMEOUT)
            .on_accept(move |_| {
                let _ = accept.send(());
                true
            });
        let server = Server::bind("127.0.0.1:0", settings).await.unwrap();
        let addr = server.local_addr().unwrap();
        let shutdown = server.shutdown_handle();
        let ids = AtomicU64::new(1);
        let serving =
            tokio::spawn(server.serve(move |ws, _| {
                handler(ws, report.clone(), ids.fetch_add(1, Ordering::Relaxed))
            }));
        let proxy = ChaosProxy::start(addr).await;
        let case = Self {
            fds,
            proxy,
            shutdown,
            serving,
            reports,
            pending: VecDeque::new(),
            accepted,
        };
        case.settle("baseline: the server and the proxy listen", 2, 2)
            .await;
        case
    }

    /// [`settle`] on `tasks` tasks and `sockets` descriptors more than before the case.
    async fn settle(&self, what: &str, tasks: usize, sockets: usize) {
        settle(what, tasks, self.fds + sockets).await;
    }

    /// A client of the server through the proxy.
    fn client(&self, config: Config) -> ClientBuilder {
        ClientBuilder::new(format!("ws://{}/", self.proxy.addr()))
            .config(config)
            .open_timeout(OPEN_TIMEOUT)
    }

    /// The first report that `pick` accepts, within `within`; others are kept.
    async fn report(
        &mut self,
        what: &str,
        within: Duration,
        mut pick: impl FnMut(&Report) -> bool,
    ) -> Report {
        if let Some(i) = self.pending.iter().position(&mut pick) {
            return self.pending.remove(i).unwrap();
        }
        let deadline = Instant::now() + within;
        loop {
            let report = tokio::time::timeout_at(deadline, self.reports.recv())
                .await
                .unwrap_or_else(|_| panic!("{what}: not reported within {within:?}"))
                .expect("the server is running");
            if pick(&report) {
                return report;
            }
            self.pending.push_back(report);
        }
    }

    /// The next connection the server's handler took.
    async fn server_open(&mut self) -> ServerSide {
        match self
            .report("a handler starts", SLACK, |r| {
                matches!(r, Report::Open { .. })
            })
            .await
        {
            Report::Open { id, cmds } => ServerSide { id, cmds },
            _ => unreachable!(),
        }
    }

    /// Opens a connection through the proxy: the client, the server's side, and when the
    /// client saw it open.
    async fn open(&mut self, client: Config) -> (WebSocket, ServerSide, Instant) {
        let ws = timeout(OPEN_TIMEOUT + SLACK, self.client(client).connect())
            .await
            .expect("connect in time")
            .expect("connect");
        let opened = Instant::now();
        (ws, self.server_open().await, opened)
    }

    /// The server sends `s{from}..=s{to}` and the client takes exactly those, in order; the
    /// client sends `c{from}..=c{to}` and the server takes exactly those, in order. Returns
    /// when the server got them, each with the time it sent it (`sent`, per message) and
    /// the time it arrived.
    async fn exchange(
        &mut self,
        ws: &mut WebSocket,
        server: &ServerSide,
        from: u64,
        to: u64,
    ) -> Vec<(Instant, Instant)> {
        let batch = (from..=to).map(|n| message('s', n)).collect();
        server.cmds.send(Cmd::Send(batch)).unwrap();
        for n in from..=to {
            let got = timeout(SLACK, ws.recv())
                .await
                .unwrap_or_else(|_| panic!("s{n} did not arrive in time"))
                .expect("open")
                .expect("no error");
            assert_eq!(
                number('s', &got),
                n,
                "the client takes s{from}..=s{to} in order"
            );
        }
        let id = server.id;
        self.report(
            "the server sent its batch",
            SLACK,
            |r| matches!(r, Report::Sent { id: i } if *i == id),
        )
        .await;
        let mut sent = Vec::new();
        for n in from..=to {
            sent.push(Instant::now());
            ws.send(message('c', n)).await.unwrap();
        }
        let mut times = Vec::new();
        for (n, sent) in (from..=to).zip(sent) {
            let what = format!("the server takes c{n}");
            let report = self
                .report(&what, SLACK, |r| {
                    matches!(r, Report::Msg { id: i, .. } | Report::End { id: i, .. } if *i == id)
                })
                .await;
            let Report::Msg { msg, at, .. } = report else {
                panic!("{what}: the server's connection ended");
            };
            assert_eq!(
                number('c', &msg),
                n,
                "the server takes c{from}..=c{to} in order"
            );
            times.push((sent, at));
        }
        times
    }

    /// How the server's side of connection `id` ended, within `within`; messages that
    /// arrived meanwhile are in its `late`.
    async fn server_end(&mut self, id: u64, within: Duration) -> Ending {
        let mut late = Vec::new();
        loop {
            let report = self
                .report("the server's connection ends", within, |r| r.id() == id)
                .await;
            match report {
                Report::Msg { msg, .. } => late.push(msg),
                Report::End { mut ending, .. } => {
                    // The handler reports its messages one by one, never in its ending.
                    ending.late = late;
                    return ending;
                }
                Report::Open { .. } | Report::Sent { .. } => {
                    panic!("unexpected report from connection {id}")
                }
            }
        }
    }

    /// Checks that everything is over and nothing is left; shuts the server down and stops
    /// the proxy, then checks that nothing at all is left.
    async fn finish(mut self) {
        self.settle("every connection is over", 2, 2).await;
        let left: Vec<u64> = self.pending.iter().map(Report::id).collect();
        assert!(
            left.is_empty(),
            "reports of connections {left:?} not looked at"
        );
        assert!(self.reports.try_recv().is_err(), "a report not looked at");
        self.shutdown.shutdown();
        timeout(SLACK, &mut self.serving)
            .await
            .expect("the server shuts down in time")
            .unwrap()
            .unwrap();
        self.proxy.stop();
        self.settle("the server shut down and the proxy stopped", 0, 0)
            .await;
    }
}

// ----- expected outcomes -----

fn io_kind(e: &Error) -> Option<io::ErrorKind> {
    match e {
        Error::Io(e) => Some(e.kind()),
        _ => None,
    }
}

fn assert_io_reset(side: &str, e: &Error) {
    assert_eq!(e.kind(), ErrorKind::Io, "{side}: {e:?}");
    assert_eq!(
        io_kind(e),
        Some(io::ErrorKind::ConnectionReset),
        "{side}: {e:?}"
    );
}

/// Nothing arrived after the fault, and no closing handshake happened: 1006.
fn assert_abnormal(side: &str, e: &Ending) {
    assert!(e.late.is_empty(), "{side}: messages after the fault: {e:?}");
    assert_eq!(e.code, 1006, "{side}: {e:?}");
    assert_eq!(e.peer, PeerClose::NotReceived, "{side}: {e:?}");
}

/// A reset: one `Error::Io` (ConnectionReset), then `None`; 1006.
fn assert_reset(side: &str, e: &Ending) {
    assert_eq!(e.errors.len(), 1, "{side}: one error, then None: {e:?}");
    assert_io_reset(side, &e.errors[0]);
    assert_abnormal(side, e);
}

/// An end of stream without a Close frame: `None` without an error; 1006.
fn assert_eof(side: &str, e: &Ending) {
    assert!(e.errors.is_empty(), "{side}: no error, only None: {e:?}");
    assert_abnormal(side, e);
}

/// Keepalive noticed the silence: one `KeepaliveTimeout` (close code 1011), then `None`;
/// no Close arrived, so 1006.
fn assert_keepalive_timeout(side: &str, e: &Ending) {
    assert_eq!(e.errors.len(), 1, "{side}: one error, then None: {e:?}");
    let err = &e.errors[0];
    assert_eq!(err.kind(), ErrorKind::Protocol, "{side}: {err:?}");
    let Error::Protocol(protocol) = err else {
        unreachable!()
    };
    assert_eq!(
        *protocol,
        ProtocolError::KeepaliveTimeout,
        "{side}: {err:?}"
    );
    assert_eq!(protocol.close_code(), 1011, "{side}: {err:?}");
    assert_abnormal(side, e);
}

/// The peer's keepalive noticed the silence and its Close arrived: 1011.
fn assert_peer_keepalive_close(side: &str, e: &Ending) {
    assert!(e.errors.is_empty(), "{side}: no error, only None: {e:?}");
    assert!(e.late.is_empty(), "{side}: messages after the fault: {e:?}");
    assert_eq!(e.code, 1011, "{side}: {e:?}");
    let close = CloseFrame {
        code: 1011,
        reason: "keepalive ping timeout".into(),
    };
    assert_eq!(e.peer, PeerClose::Frame(close), "{side}: {e:?}");
}

/// `at` is no later than `bound` (plus [`SLACK`]) after `from`; prints the time.
fn assert_within(case: &str, side: &str, from: Instant, at: Instant, bound: Duration) {
    let took = at.saturating_duration_since(from);
    println!("{case}: {side} saw it {took:?} after the fault (bound {bound:?})");
    assert!(
        took <= bound + SLACK,
        "{case}: {side} took {took:?}, bound {bound:?}"
    );
}

/// Keepalive fired no earlier than its first possible deadline after `opened`.
fn assert_not_before_keepalive(case: &str, side: &str, opened: Instant, at: Instant) {
    let since_open = at.saturating_duration_since(opened);
    assert!(
        since_open + EARLY >= KEEPALIVE_BOUND,
        "{case}: {side} gave up {since_open:?} after opening, before ping interval + timeout"
    );
}

/// An incompressible payload of `len` bytes.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

// ----- resets, FINs and cuts -----

#[test]
fn reset_fails_both_ends_with_an_io_reset_then_1006() {
    alone(async {
        let mut case = Case::start(config(PING_TIMEOUT)).await;
        let (mut ws, server, _) = case.open(config(PING_TIMEOUT)).await;
        case.exchange(&mut ws, &server, 1, K).await;

        let fault = Instant::now();
        case.proxy.fault(Fault::Rst);
        let client = timeout(SLACK, drain(&mut ws)).await.expect("client ends");
        let server = case.server_end(server.id, SLACK).await;
        assert_reset("client", &client);
        assert_reset("server", &server);
        assert_within("reset", "client", fault, client.at, Duration::ZERO);
        assert_within("reset", "server", fault, server.at, Duration::ZERO);

        drop(ws);
        case.finish().await;
    });
}

#[test]
fn fin_without_close_ends_both_ends_with_none_and_1006() {
    alone(async {
        let mut case = Case::start(config(PING_TIMEOUT)).await;
        let (mut ws, server, _) = case.open(config(PING_TIMEOUT)).await;
        case.exchange(&mut ws, &server, 1, K).await;

        let fault = Instant::now();
        case.proxy.fault(Fault::Fin);
        let client = timeout(SLACK, drain(&mut ws)).await.expect("client ends");
        let server = case.server_end(server.id, SLACK).await;
        assert_eof("client", &client);
        assert_eof("server", &server);
        assert_within("fin", "client", fault, client.at, Duration::ZERO);
        assert_within("fin", "server", fault, server.at, Duration::ZERO);

        drop(ws);
        case.finish().await;
    });
}

#[test]
fn cut_in_a_client_frame_resets_both_ends_and_delivers_nothing_of_it() {
    alone(async {
        let mut case = Case::start(config(PING_TIMEOUT)).await;
        let (mut ws, server, _) = case.open(config(PING_TIMEOUT)).await;
        case.exchange(&mut ws, &server, 1, K).await;

        let fault = Instant::now();
        case.proxy.fault(Fault::MidFrame);
        // Written whole into the socket; the proxy forwards half of it, then resets both ends.
        ws.send(Message::binary(noise(4000))).await.unwrap();
        let client = timeout(SLACK, drain(&mut ws)).await.expect("client ends");
        let server = case.server_end(server.id, SLACK).await;
        assert_reset("client", &client);
        assert_reset("server (half a frame in hand)", &server);
        assert_within("mid-frame c->s", "client", fault, client.at, Duration::ZERO);
        assert_within("mid-frame c->s", "server", fault, server.at, Duration::ZERO);

        drop(ws);
        case.finish().await;
    });
}

#[test]
fn cut_in_a_server_frame_resets_both_ends_and_delivers_nothing_of_it() {
    alone(async {
        let mut case = Case::start(config(PING_TIMEOUT)).await;
        let (mut ws, server, _) = case.open(config(PING_TIMEOUT)).await;
        case.exchange(&mut ws, &server, 1, K).await;

        let fault = Instant::now();
        case.proxy.fault(Fault::MidFrame);
        let big = vec![Message::binary(noise(4000))];
        server.cmds.send(Cmd::Send(big)).unwrap();
        let client = timeout(SLACK, drain(&mut ws)).await.expect("client ends");
        case.report(
            "the server sent the frame",
            SLACK,
            |r| matches!(r, Report::Sent { id } if *id == server.id),
        )
        .await;
        let server = case.server_end(server.id, SLACK).await;
        assert_reset("client (half a frame in hand)", &client);
        assert_reset("server", &server);
        assert_within("mid-frame s->c", "client", fault, client.at, Duration::ZERO);
        assert_within("mid-frame s->c", "server", fault, server.at, Duration::ZERO);

        drop(ws);
        case.finish().await;
    });
}

#[test]
fn cut_in_the_upgrade_request_fails_connect_with_an_io_reset_and_no_handler_runs() {
    alone(async {
        let mut case = Case::start(config(PING_TIMEOUT)).await;
        case.proxy.cut_next_handshake(HandshakeCut {
            from_client: true,
            bytes: 10,
        });
        let started = Instant::now();
        let err = timeout(
            OPEN_TIMEOUT + SLACK,
            case.client(config(PING_TIMEOUT)).connect(),
        )
        .await
        .expect("connect returns in time")
        .expect_err("the handshake was cut");
        assert_io_reset("client", &err);
        let took = started.elapsed();
        println!(
            "handshake cut c->s: client failed after {took:?} (open timeout {OPEN_TIMEOUT:?})"
        );
        assert!(
            took < OPEN_TIMEOUT,
            "a reset, not the open timeout: {took:?}"
        );

        // The server took the connection, read part of the request and the reset; its task
        // for it ended without running the handler.
        timeout(SLACK, case.accepted.recv())
            .await
            .expect("the server accepted the connection")
            .unwrap();
        case.settle("the cut connection's task ended", 2, 2).await;
        assert!(case.pending.is_empty() && case.reports.try_recv().is_err());

        // The server goes on: the next connection through the same proxy works.
        let (mut ws, server, _) = case.open(config(PING_TIMEOUT)).await;
        case.exchange(&mut ws, &server, 1, K).await;
        ws.close(1000, "done").await.unwrap();
        let end = case.server_end(server.id, SLACK).await;
        assert!(end.errors.is_empty() && end.late.is_empty(), "{end:?}");
        assert_eq!(end.code, 1000);

        drop(ws);
        case.finish().await;
    });
}

#[test]
fn cut_in_the_upgrade_response_fails_connect_and_the_handler_with_an_io_reset() {
    alone(async {
        let mut case = Case::start(config(PING_TIMEOUT)).await;
        case.proxy.cut_next_handshake(HandshakeCut {
            from_client: false,
            bytes: 20,
        });
        let started = Instant::now();
        let err = timeout(
            OPEN_TIMEOUT + SLACK,
            case.client(config(PING_TIMEOUT)).connect(),
        )
        .await
        .expect("connect returns in time")
        .expect_err("the handshake was cut");
        assert_io_reset("client", &err);
        let took = started.elapsed();
        println!(
            "handshake cut s->c: client failed after {took:?} (open timeout {OPEN_TIMEOUT:?})"
        );
        assert!(
            took < OPEN_TIMEOUT,
            "a reset, not the open timeout: {took:?}"
        );

        // The server wrote its whole 101 and handed the connection to the handler, which gets
        // the reset.
        let server = case.server_open().await;
        let end = case.server_end(server.id, SLACK).await;
        assert_reset("server", &end);
        assert_within(
            "handshake cut s->c",
            "server",
            started,
            end.at,
            Duration::ZERO,
        );

        case.finish().await;
    });
}

/// The server's side of a cut handshake, seen through `tether::accept` (Server::serve only
/// logs a failed handshake): an I/O reset, either way.
#[test]
fn tether_accept_sees_a_cut_handshake_as_an_io_reset() {
    alone(async {
        for (from_client, bytes) in [(true, 10), (false, 20)] {
            assert_eq!(alive_tasks(), 0);
            let fds = open_fds().len();
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let proxy = ChaosProxy::start(listener.local_addr().unwrap()).await;
            settle("baseline: a listener, the proxy", 1, fds + 2).await;

            proxy.cut_next_handshake(HandshakeCut { from_client, bytes });
            let builder = ClientBuilder::new(format!("ws://{}/", proxy.addr()))
                .config(config(PING_TIMEOUT))
                .open_timeout(OPEN_TIMEOUT);
            let client = tokio::spawn(async move { builder.connect().await.map(drop) });
            let (tcp, _) = timeout(SLACK, listener.accept()).await.unwrap().unwrap();
            let settings = ServerConfig::default()
                .config(config(PING_TIMEOUT))
                .open_timeout(OPEN_TIMEOUT);
            let accepted = timeout(OPEN_TIMEOUT + SLACK, tether::accept(tcp, &settings))
                .await
                .expect("accept returns in time");
            let side = format!("tether::accept, cut from_client={from_client}");
            if from_client {
                match accepted {
                    Err(e) => assert_io_reset(&side, &e),
                    Ok(_) => panic!("{side}: the request was cut, yet accepted"),
                }
            } else {
                // The whole response went out: the connection opens, and then is reset.
                let (mut ws, _) = accepted.unwrap().expect("upgraded");
                let end = timeout(SLACK, drain(&mut ws)).await.expect("ends");
                assert_reset(&side, &end);
            }
            let err = client.await.unwrap().expect_err("the handshake was cut");
            assert_io_reset("client", &err);

            drop(listener);
            proxy.stop();
            settle("listener dropped, proxy stopped", 0, fds).await;
        }
    });
}

// ----- silence: blackhole and half-open -----

#[test]
fn blackhole_is_noticed_by_the_clients_keepalive() {
    alone(async {
        let mut case = Case::start(config(LONG_PING_TIMEOUT)).await;
        let (mut ws, server, opened) = case.open(config(PING_TIMEOUT)).await;
        case.exchange(&mut ws, &server, 1, K).await;

        let fault = Instant::now();
        case.proxy.fault(Fault::Blackhole);
        let client = timeout(KEEPALIVE_BOUND + SLACK, drain(&mut ws))
            .await
            .expect("client ends");
        assert_keepalive_timeout("client", &client);
        assert_within("blackhole", "client", fault, client.at, KEEPALIVE_BOUND);
        assert_not_before_keepalive("blackhole", "client", opened, client.at);
        // The client's Close (1011) is lost, but the end of its stream passes the proxy: the
        // server sees an end without a Close, long before its own (long) ping timeout.
        let server = case.server_end(server.id, SLACK).await;
        assert_eof("server", &server);
        assert!(server.at >= client.at);
        assert_within(
            "blackhole",
            "server (client's FIN)",
            fault,
            server.at,
            KEEPALIVE_BOUND,
        );

        drop(ws);
        case.finish().await;
    });
}

#[test]
fn blackhole_is_noticed_by_the_servers_keepalive() {
    alone(async {
        let mut case = Case::start(config(PING_TIMEOUT)).await;
        let (mut ws, server, opened) = case.open(config(LONG_PING_TIMEOUT)).await;
        case.exchange(&mut ws, &server, 1, K).await;

        let fault = Instant::now();
        case.proxy.fault(Fault::Blackhole);
        let end = case.server_end(server.id, KEEPALIVE_BOUND + SLACK).await;
        assert_keepalive_timeout("server", &end);
        assert_within("blackhole", "server", fault, end.at, KEEPALIVE_BOUND);
        assert_not_before_keepalive("blackhole", "server", opened, end.at);
        // The server's end of stream passes the proxy: the client sees an end without a Close.
        let client = timeout(SLACK, drain(&mut ws)).await.expect("client ends");
        assert_eof("client", &client);
        assert!(client.at >= end.at);
        assert_within(
            "blackhole",
            "client (server's FIN)",
            fault,
            client.at,
            KEEPALIVE_BOUND,
        );

        drop(ws);
        case.finish().await;
    });
}

#[test]
fn half_open_without_the_servers_bytes_is_noticed_by_the_client_whose_close_reaches_the_server() {
    alone(async {
        let mut case = Case::start(config(LONG_PING_TIMEOUT)).await;
        let (mut ws, server, opened) = case.open(config(PING_TIMEOUT)).await;
        case.exchange(&mut ws, &server, 1, K).await;

        let fault = Instant::now();
        case.proxy.fault(Fault::HalfOpen {
            client_to_server: true,
        });
        let client = timeout(KEEPALIVE_BOUND + SLACK, drain(&mut ws))
            .await
            .expect("client ends");
        assert_keepalive_timeout("client", &client);
        assert_within(
            "half-open c->s",
            "client",
            fault,
            client.at,
            KEEPALIVE_BOUND,
        );
        assert_not_before_keepalive("half-open c->s", "client", opened, client.at);
        let server = case.server_end(server.id, SLACK).await;
        assert_peer_keepalive_close("server", &server);
        assert_within(
            "half-open c->s",
            "server",
            fault,
            server.at,
            KEEPALIVE_BOUND,
        );

        drop(ws);
        case.finish().await;
    });
}

#[test]
fn half_open_without_the_clients_bytes_is_noticed_by_the_server_whose_close_reaches_the_client() {
    alone(async {
        let mut case = Case::start(config(PING_TIMEOUT)).await;
        let (mut ws, server, opened) = case.open(config(LONG_PING_TIMEOUT)).await;
        case.exchange(&mut ws, &server, 1, K).await;

        let fault = Instant::now();
        case.proxy.fault(Fault::HalfOpen {
            client_to_server: false,
        });
        let client = timeout(KEEPALIVE_BOUND + SLACK, drain(&mut ws))
            .await
            .expect("client ends");
        let end = case.server_end(server.id, SLACK).await;
        assert_keepalive_timeout("server", &end);
        assert_within("half-open s->c", "server", fault, end.at, KEEPALIVE_BOUND);
        assert_not_before_keepalive("half-open s->c", "server", opened, end.at);
        assert_peer_keepalive_close("client", &client);
        assert_within(
            "half-open s->c",
            "client",
            fault,
            client.at,
            KEEPALIVE_BOUND,
        );

        drop(ws);
        case.finish().await;
    });
}

#[test]
fn client_closing_into_a_blackhole_gives_up_after_the_close_timeout() {
    alone(async {
        let mut case = Case::start(config(LONG_PING_TIMEOUT)).await;
        let (mut ws, server, _) = case.open(config(LONG_PING_TIMEOUT)).await;
        case.exchange(&mut ws, &server, 1, K).await;

        case.proxy.fault(Fault::Blackhole);
        let asked = Instant::now();
        timeout(CLOSE_TIMEOUT + SLACK, ws.close(1000, "bye"))
            .await
            .expect("close returns in time")
            .expect("close gives up without an error");
        let took = asked.elapsed();
        println!("close into a blackhole: the client gave up after {took:?} (close timeout {CLOSE_TIMEOUT:?})");
        assert!(took + EARLY >= CLOSE_TIMEOUT, "gave up early: {took:?}");
        assert_eq!(ws.close_code(), 1006, "no Close came back");
        assert_eq!(*ws.peer_close(), PeerClose::NotReceived);
        // Its end of stream passes the proxy, before the server's own keepalive would fire.
        let end = case.server_end(server.id, CLOSE_TIMEOUT + SLACK).await;
        assert_eof("server", &end);
        assert_within(
            "close into a blackhole",
            "server",
            asked,
            end.at,
            CLOSE_TIMEOUT,
        );

        drop(ws);
        case.finish().await;
    });
}

#[test]
fn server_closing_into_a_blackhole_gives_up_after_the_close_timeout() {
    alone(async {
        let mut case = Case::start(config(LONG_PING_TIMEOUT)).await;
        let (mut ws, server, _) = case.open(config(LONG_PING_TIMEOUT)).await;
        case.exchange(&mut ws, &server, 1, K).await;

        case.proxy.fault(Fault::Blackhole);
        let asked = Instant::now();
        server.cmds.send(Cmd::Close(1001, "bye")).unwrap();
        let end = case.server_end(server.id, CLOSE_TIMEOUT + SLACK).await;
        let took = end.at - asked;
        println!("close into a blackhole: the server gave up after {took:?} (close timeout {CLOSE_TIMEOUT:?})");
        assert!(took + EARLY >= CLOSE_TIMEOUT, "gave up early: {took:?}");
        assert_within(
            "close into a blackhole",
            "server",
            asked,
            end.at,
            CLOSE_TIMEOUT,
        );
        assert_eof("server (no Close came back)", &end);
        let client = timeout(SLACK, drain(&mut ws)).await.expect("client ends");
        assert_eof("client", &client);
        assert!(client.at >= end.at);

        drop(ws);
        case.finish().await;
    });
}

// ----- delay -----

#[test]
fn delay_below_the_ping_timeout_delivers_everything_in_order_later_and_fails_nothing() {
    alone(async {
        const DELAY: Duration = Duration::from_millis(80);
        let mut case = Case::start(config(PING_TIMEOUT)).await;
        let (mut ws, server, _) = case.open(config(PING_TIMEOUT)).await;
        case.exchange(&mut ws, &server, 1, K).await;

        case.proxy.fault(Fault::Delay(DELAY));
        // A round trip takes two delays, still below the ping timeout.
        let rtt = timeout(SLACK, ws.ping()).await.unwrap().unwrap();
        println!("delay {DELAY:?}: ping round trip {rtt:?} (ping timeout {PING_TIMEOUT:?})");
        assert!(rtt >= 2 * DELAY && rtt < PING_TIMEOUT, "{rtt:?}");
        // Both ways, in order, each message at least one delay late.
        let asked = Instant::now();
        let times = case.exchange(&mut ws, &server, K + 1, 2 * K).await;
        assert!(asked.elapsed() >= 2 * DELAY);
        for (n, (sent, arrived)) in (K + 1..).zip(times) {
            let took = arrived - sent;
            assert!(took >= DELAY, "c{n} took {took:?}");
        }
        // Two keepalive cycles on each side: no message, no error, nothing closes.
        let quiet = timeout(2 * KEEPALIVE_BOUND, ws.recv()).await;
        assert!(quiet.is_err(), "the client's connection failed: {quiet:?}");
        assert!(
            case.pending.is_empty() && case.reports.try_recv().is_err(),
            "the server reported something meanwhile (its connection failed?)"
        );
        case.exchange(&mut ws, &server, 2 * K + 1, 3 * K).await;
        // And it closes normally.
        timeout(CLOSE_TIMEOUT + SLACK, ws.close(1000, "done"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ws.close_code(), 1000);
        let end = case.server_end(server.id, SLACK).await;
        assert!(end.errors.is_empty() && end.late.is_empty(), "{end:?}");
        let close = CloseFrame {
            code: 1000,
            reason: "done".into(),
        };
        assert_eq!(end.peer, PeerClose::Frame(close));

        drop(ws);
        case.finish().await;
    });
}

#[test]
fn delay_above_the_ping_timeout_fails_both_ends_with_a_keepalive_timeout() {
    alone(async {
        const DELAY: Duration = Duration::from_millis(400);
        let mut case = Case::start(config(PING_TIMEOUT)).await;
        let (mut ws, server, opened) = case.open(config(PING_TIMEOUT)).await;
        case.exchange(&mut ws, &server, 1, K).await;

        let fault = Instant::now();
        case.proxy.fault(Fault::Delay(DELAY));
        let client = timeout(KEEPALIVE_BOUND + SLACK, drain(&mut ws))
            .await
            .expect("client ends");
        let end = case.server_end(server.id, SLACK).await;
        // Each gives up before the other's Close, one delay behind, could arrive.
        assert_keepalive_timeout("client", &client);
        assert_keepalive_timeout("server", &end);
        assert_within("delay 400 ms", "client", fault, client.at, KEEPALIVE_BOUND);
        assert_within("delay 400 ms", "server", fault, end.at, KEEPALIVE_BOUND);
        assert_not_before_keepalive("delay 400 ms", "client", opened, client.at);

        drop(ws);
        case.finish().await;
    });
}

// ----- the reconnecting client -----

/// A reconnect loop event, as recorded.
#[derive(Clone, Debug, PartialEq)]
enum Ev {
    Connecting(u32),
    Open(u32),
    Retry {
        attempt: u32,
        delay: Duration,
        kind: ErrorKind,
        io: Option<io::ErrorKind>,
    },
    ShortLived(Duration),
    Closed {
        code: Option<u16>,
        delay: Duration,
    },
    Fatal(u32, ErrorKind),
}

type Events = Arc<Mutex<Vec<(Instant, Ev)>>>;

fn record(events: &Events, e: &ReconnectEvent<'_>) {
    let ev = match e {
        ReconnectEvent::Connecting { attempt, .. } => Ev::Connecting(*attempt),
        ReconnectEvent::Open { attempt, .. } => Ev::Open(*attempt),
        ReconnectEvent::Retry {
            attempt,
            delay,
            error,
        } => Ev::Retry {
            attempt: *attempt,
            delay: *delay,
            kind: error.kind(),
            io: io_kind(error),
        },
        ReconnectEvent::ShortLived { delay, .. } => Ev::ShortLived(*delay),
        ReconnectEvent::Closed { code, delay, .. } => Ev::Closed {
            code: *code,
            delay: *delay,
        },
        ReconnectEvent::Fatal { attempt, error } => Ev::Fatal(*attempt, error.kind()),
        _ => return,
    };
    events.lock().unwrap().push((Instant::now(), ev));
}

fn events_of(events: &Events) -> Vec<Ev> {
    events
        .lock()
        .unwrap()
        .iter()
        .map(|(_, e)| e.clone())
        .collect()
}

/// A short policy: a failed attempt is retried at once, then after 100 ms, 200 ms, …; an
/// open connection that ended is replaced after a random wait of at most 100 ms; five
/// failures in a row are fatal.
fn policy() -> Policy {
    Policy::default()
        .backoff(Backoff {
            initial: Duration::ZERO,
            min: RETRY_MIN,
            factor: 2.0,
            max: Duration::from_secs(1),
            jitter: Jitter::None,
        })
        .min_uptime(Duration::ZERO)
        .reconnect_delay(RECONNECT_DELAY)
        .max_attempts(Some(5))
}

/// Opens a reconnecting client, breaks its connection with `fault`, checks how each end saw
/// it (`client_sees`, `server_sees`, within `bound`), and that the loop reports the end and
/// opens the next connection, over which messages flow.
async fn reconnects_after(
    name: &str,
    fault: Fault,
    clients: Config,
    servers: Config,
    bound: Duration,
    client_sees: fn(&str, &Ending),
    server_sees: fn(&str, &Ending),
) {
    let mut case = Case::start(servers).await;
    let events = Events::default();
    let recorded = Arc::clone(&events);
    let mut conns = case
        .client(clients)
        .reconnecting()
        .policy(policy())
        .on_event(move |e| record(&recorded, e))
        .stream();
    let mut ws = timeout(OPEN_TIMEOUT + SLACK, conns.next())
        .await
        .expect("opens in time")
        .unwrap()
        .expect("opens");
    let server = case.server_open().await;
    case.exchange(&mut ws, &server, 1, K).await;

    let fault_at = Instant::now();
    case.proxy.fault(fault);
    let client = timeout(bound + SLACK, drain(&mut ws))
        .await
        .expect("client ends");
    let end = case.server_end(server.id, bound + SLACK).await;
    client_sees("client", &client);
    server_sees("server", &end);
    assert_within(name, "client", fault_at, client.at, bound);
    drop(ws);

    let ended = Instant::now();
    let mut ws = timeout(RECONNECT_DELAY + OPEN_TIMEOUT + SLACK, conns.next())
        .await
        .expect("reconnects in time")
        .unwrap()
        .expect("reconnects: transient");
    println!(
        "{name}: reconnected {:?} after the end (reconnect delay {RECONNECT_DELAY:?})",
        ended.elapsed()
    );
    let got = events_of(&events);
    match got.as_slice() {
        [Ev::Connecting(1), Ev::Open(1), Ev::Closed { code: None, delay }, Ev::Connecting(1), Ev::Open(1)]
            if *delay <= RECONNECT_DELAY => {}
        _ => panic!("{name}: events {got:?}"),
    }
    let server = case.server_open().await;
    case.exchange(&mut ws, &server, 1, K).await;
    ws.close(1000, "done").await.unwrap();
    let end = case.server_end(server.id, SLACK).await;
    assert!(end.errors.is_empty() && end.late.is_empty(), "{end:?}");
    assert_eq!(end.code, 1000);

    drop(ws);
    drop(conns);
    case.finish().await;
}

#[test]
fn reconnecting_client_comes_back_after_a_reset() {
    alone(async {
        reconnects_after(
            "reconnect after reset",
            Fault::Rst,
            config(PING_TIMEOUT),
            config(PING_TIMEOUT),
            Duration::ZERO,
            assert_reset,
            assert_reset,
        )
        .await;
    });
}

#[test]
fn reconnecting_client_comes_back_after_a_fin() {
    alone(async {
        reconnects_after(
            "reconnect after FIN",
            Fault::Fin,
            config(PING_TIMEOUT),
            config(PING_TIMEOUT),
            Duration::ZERO,
            assert_eof,
            assert_eof,
        )
        .await;
    });
}

#[test]
fn reconnecting_client_comes_back_after_a_blackhole() {
    alone(async {
        reconnects_after(
            "reconnect after blackhole",
            Fault::Blackhole,
            config(PING_TIMEOUT),
            config(LONG_PING_TIMEOUT),
            KEEPALIVE_BOUND,
            assert_keepalive_timeout,
            assert_eof,
        )
        .await;
    });
}

#[test]
fn reconnecting_client_retries_cut_handshakes_per_the_policy() {
    alone(async {
        let mut case = Case::start(config(PING_TIMEOUT)).await;
        // Attempt 1: the request is cut by a FIN (then an RST): the client reads an end of
        // stream, `Error::Eof`. Attempt 2: the response is cut by an RST alone: `Error::Io`.
        // Both are retried by the default table; attempt 3 opens.
        case.proxy.hard_resets(false);
        case.proxy.cut_next_handshake(HandshakeCut {
            from_client: true,
            bytes: 10,
        });
        let events = Events::default();
        let recorded = Arc::clone(&events);
        let proxy = case.proxy.clone();
        let mut conns = case
            .client(config(PING_TIMEOUT))
            .reconnecting()
            .policy(policy())
            .on_event(move |e| {
                if let ReconnectEvent::Retry { attempt: 1, .. } = e {
                    proxy.hard_resets(true);
                    proxy.cut_next_handshake(HandshakeCut {
                        from_client: false,
                        bytes: 20,
                    });
                }
                record(&recorded, e);
            })
            .stream();
        let started = Instant::now();
        let mut ws = timeout(3 * OPEN_TIMEOUT + RETRY_MIN + SLACK, conns.next())
            .await
            .expect("opens in time")
            .unwrap()
            .expect("cut handshakes are transient");
        println!(
            "handshake cuts: open at attempt 3 after {:?}",
            started.elapsed()
        );
        let reset = |attempt, delay| Ev::Retry {
            attempt,
            delay,
            kind: ErrorKind::Io,
            io: Some(io::ErrorKind::ConnectionReset),
        };
        let eof = Ev::Retry {
            attempt: 1,
            delay: Duration::ZERO,
            kind: ErrorKind::Eof,
            io: None,
        };
        assert_eq!(
            events_of(&events),
            [
                Ev::Connecting(1),
                eof,
                Ev::Connecting(2),
                reset(2, RETRY_MIN),
                Ev::Connecting(3),
                Ev::Open(3),
            ]
        );
        {
            // The second wait was really waited.
            let log = events.lock().unwrap();
            let waited = log[4].0 - log[3].0;
            assert!(waited >= RETRY_MIN, "waited {waited:?}");
        }
        // Attempt 2's connection reached the handler (the whole 101 went out), then was reset.
        let cut = case.server_open().await;
        let end = case.server_end(cut.id, SLACK).await;
        assert_reset("server, response cut", &end);
        // Attempt 3's is good.
        let server = case.server_open().await;
        case.exchange(&mut ws, &server, 1, K).await;
        ws.close(1000, "done").await.unwrap();
        let end = case.server_end(server.id, SLACK).await;
        assert!(end.errors.is_empty() && end.late.is_empty(), "{end:?}");
        assert_eq!(end.code, 1000);

        drop(ws);
        drop(conns);
        case.finish().await;
    });
}
