//! Resumable sessions through tether's client and server: the lifecycle, the cases where a
//! session cannot be resumed (unknown, expired, overflow, superseded, a server without
//! sessions), backpressure, and a session moving to another server through a shared store.
//! The chaos test (random cuts of every kind) is `session_chaos.rs`.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::chaos_proxy::{ChaosProxy, Fault};
use tether::proto::session::Control;
use tether::reconnect::Backoff;
use tether::session::{
    EndReason, LostReason, MemoryStore, OnLost, Overflow, SessionEvent, SessionHandle,
    SessionServer, SessionServerConfig, SessionStore, SUBPROTOCOL,
};
use tether::{
    ClientBuilder, Config, Error, Message, Policy, Server, ServerConfig, ShutdownHandle, WebSocket,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::TcpListener;
use tokio::time::timeout;

/// Bounds every wait, so that a bug fails the test instead of hanging it.
const GUARD: Duration = Duration::from_secs(20);

/// Quick retries: these tests break connections on purpose.
fn fast_policy() -> Policy {
    Policy::default()
        .backoff(Backoff {
            initial: Duration::from_millis(10),
            min: Duration::from_millis(10),
            factor: 1.5,
            max: Duration::from_millis(100),
            ..Backoff::default()
        })
        .reconnect_delay(Duration::from_millis(10))
        .min_uptime(Duration::ZERO)
}

/// Lifecycle events as short strings, in order.
type Log = Arc<Mutex<Vec<String>>>;

fn describe(event: &SessionEvent<'_>) -> String {
    match event {
        SessionEvent::Connected { replayed, .. } => format!("connected {replayed}"),
        SessionEvent::Resumed { replayed, .. } => format!("resumed {replayed}"),
        SessionEvent::Disconnected { .. } => "disconnected".to_owned(),
        SessionEvent::Lost(lost) => format!("lost {}", lost.reason),
        SessionEvent::Ended { reason, .. } => format!("ended {reason:?}"),
        _ => "other".to_owned(),
    }
}

/// A session server whose handler echoes every message, and reports each handler's end.
struct EchoServer {
    addr: std::net::SocketAddr,
    shutdown: ShutdownHandle,
    sessions: SessionServer,
    log: Log,
}

async fn echo_server(
    config: SessionServerConfig,
    store: Option<Arc<dyn SessionStore>>,
) -> EchoServer {
    let handler = |session: SessionHandle| async move {
        while let Some(Ok(msg)) = session.recv().await {
            if session.send(msg).await.is_err() {
                break;
            }
        }
    };
    let sessions = match store {
        Some(store) => SessionServer::with_store(config, store, handler),
        None => SessionServer::new(config, handler),
    };
    start(sessions).await
}

/// Serves `sessions` with tether's server on a free port, logging their events.
async fn start(sessions: SessionServer) -> EchoServer {
    let log: Log = Arc::default();
    let events = Arc::clone(&log);
    let sessions = sessions.on_event(move |e| events.lock().unwrap().push(describe(e)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Server::from_listener(listener, sessions.server_config(ServerConfig::default()));
    let addr = server.local_addr().unwrap();
    let shutdown = server.shutdown_handle();
    let serving = sessions.clone();
    tokio::spawn(server.serve(move |ws, _| serving.serve(ws)));
    EchoServer {
        addr,
        shutdown,
        sessions,
        log,
    }
}

fn client(addr: std::net::SocketAddr) -> (tether::session::SessionBuilder, Log) {
    let log: Log = Arc::default();
    let events = Arc::clone(&log);
    let builder = ClientBuilder::new(format!("ws://{addr}/"))
        .reconnecting()
        .policy(fast_policy())
        .session()
        .on_event(move |e| events.lock().unwrap().push(describe(e)));
    (builder, log)
}

async fn recv_text(session: &SessionHandle) -> String {
    match timeout(GUARD, session.recv())
        .await
        .expect("recv timed out")
    {
        Some(Ok(Message::Text(t))) => t.to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

#[tokio::test]
async fn a_session_echoes_in_order_and_a_graceful_close_ends_it_on_both_ends() {
    let server = echo_server(SessionServerConfig::default(), None).await;
    let (builder, log) = client(server.addr);
    let session = builder.start();
    for i in 0..100 {
        session.send(format!("m{i}")).await.unwrap();
    }
    session
        .send(Message::binary(vec![0u8, 1, 2]))
        .await
        .unwrap();
    for i in 0..100 {
        assert_eq!(recv_text(&session).await, format!("m{i}"));
    }
    match timeout(GUARD, session.recv()).await.unwrap() {
        Some(Ok(Message::Binary(b))) => assert_eq!(&b[..], [0, 1, 2], "binary kept its bytes"),
        other => panic!("expected the binary echo, got {other:?}"),
    }
    assert!(session.is_resumable());
    timeout(GUARD, session.close()).await.unwrap().unwrap();
    assert_eq!(session.end_reason(), Some(EndReason::Closed));
    assert!(timeout(GUARD, session.recv()).await.unwrap().is_none());
    // The server forgot the session: its handler saw the end.
    timeout(GUARD, async {
        while !server.sessions.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(*log.lock().unwrap(), ["connected 101", "ended Closed"]);
    assert_eq!(
        *server.log.lock().unwrap(),
        ["connected 0", "ended ClosedByPeer"]
    );
}

/// Waits (bounded) until the log holds `entry`.
async fn logged(log: &Log, entry: &str) {
    timeout(GUARD, async {
        while !log.lock().unwrap().iter().any(|e| e == entry) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{entry:?} never logged: {:?}", log.lock().unwrap()));
}

/// A server whose handler holds its session and never takes a message: nothing it is sent
/// is ever acknowledged.
async fn sink_server() -> EchoServer {
    let sessions = SessionServer::new(SessionServerConfig::default(), |session| async move {
        std::future::pending::<()>().await;
        drop(session);
    });
    start(sessions).await
}

#[tokio::test]
async fn an_unknown_session_is_lost_with_the_messages_never_acknowledged() {
    // The first server never takes anything; then the client lands on a server that never
    // heard of its session (a restart without a shared store).
    let first = sink_server().await;
    let second = echo_server(SessionServerConfig::default(), None).await;
    let proxy = ChaosProxy::start(first.addr).await;
    let (builder, log) = client(proxy.addr());
    let session = builder.start();
    for i in 0..3 {
        session.send(format!("unacked {i}")).await.unwrap();
    }
    logged(&log, "connected 3").await;
    proxy.retarget(second.addr);
    proxy.fault(Fault::Rst);
    match timeout(GUARD, session.recv()).await.unwrap() {
        Some(Err(Error::SessionLost(lost))) => {
            assert_eq!(lost.reason, LostReason::Unknown);
            let texts: Vec<_> = lost
                .unacknowledged
                .iter()
                .map(|m| m.as_text().unwrap().to_owned())
                .collect();
            assert_eq!(texts, ["unacked 0", "unacked 1", "unacked 2"]);
        }
        other => panic!("expected SessionLost, got {other:?}"),
    }
    assert!(timeout(GUARD, session.recv()).await.unwrap().is_none());
    assert_eq!(
        session.end_reason(),
        Some(EndReason::Lost(LostReason::Unknown))
    );
    assert!(
        session.send("late").await.is_err(),
        "a lost session sends nothing"
    );
    assert_eq!(
        *log.lock().unwrap(),
        [
            "connected 3",
            "disconnected",
            "lost unknown",
            "ended Lost(Unknown)"
        ]
    );
}

#[tokio::test]
async fn configured_to_go_on_a_client_starts_a_new_session_after_a_loss() {
    let first = sink_server().await;
    let second = echo_server(SessionServerConfig::default(), None).await;
    let proxy = ChaosProxy::start(first.addr).await;
    let (builder, log) = client(proxy.addr());
    let session = builder.on_lost(OnLost::NewSession).start();
    session.send("to the first server").await.unwrap();
    logged(&log, "connected 1").await;
    let old_id = session.id();
    proxy.retarget(second.addr);
    proxy.fault(Fault::Rst);
    match timeout(GUARD, session.recv()).await.unwrap() {
        Some(Err(Error::SessionLost(lost))) => {
            assert_eq!(lost.id, old_id);
            assert_eq!(lost.unacknowledged.len(), 1);
        }
        other => panic!("expected SessionLost, got {other:?}"),
    }
    session.send("in the new session").await.unwrap();
    assert_eq!(recv_text(&session).await, "in the new session");
    assert_ne!(session.id(), old_id, "the server named a new session");
    assert_eq!(
        *log.lock().unwrap(),
        ["connected 1", "disconnected", "lost unknown", "connected 0"]
    );
}

#[tokio::test]
async fn a_session_kept_in_a_shared_store_resumes_on_another_server() {
    // Two servers share one store; the first goes away (shutdown: 1001), and the client's
    // reconnect lands on the second, which resumes the session from what was stored.
    let store: Arc<dyn SessionStore> = Arc::new(MemoryStore::new());
    let first = echo_server(SessionServerConfig::default(), Some(Arc::clone(&store))).await;
    let second = echo_server(SessionServerConfig::default(), Some(store)).await;
    let proxy = ChaosProxy::start(first.addr).await;
    let (builder, log) = client(proxy.addr());
    let session = builder.start();
    for i in 0..10 {
        session.send(format!("a{i}")).await.unwrap();
    }
    for i in 0..10 {
        assert_eq!(recv_text(&session).await, format!("a{i}"));
    }
    proxy.retarget(second.addr);
    first.shutdown.shutdown();
    logged(&log, "disconnected").await;
    for i in 0..10 {
        session.send(format!("b{i}")).await.unwrap();
    }
    for i in 0..10 {
        assert_eq!(recv_text(&session).await, format!("b{i}"));
    }
    let events = log.lock().unwrap().clone();
    assert_eq!(events[0], "connected 10");
    assert!(
        events.iter().any(|e| e.starts_with("resumed")),
        "resumed on the second server: {events:?}"
    );
    assert!(!events.iter().any(|e| e.starts_with("lost")), "{events:?}");
    assert_eq!(second.sessions.len(), 1, "the second server holds it now");
    timeout(GUARD, session.close()).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_client_whose_server_does_not_offer_sessions_fails_clearly_or_falls_back() {
    // A plain tether echo server: no resume subprotocol.
    let server = Server::bind("127.0.0.1:0", ServerConfig::default())
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.serve(|mut ws, _| async move {
        while let Some(Ok(msg)) = ws.recv().await {
            if ws.send(msg).await.is_err() {
                break;
            }
        }
    }));
    let (builder, _) = client(addr);
    let session = builder.start();
    match timeout(GUARD, session.recv()).await.unwrap() {
        Some(Err(Error::SessionsNotOffered)) => {}
        other => panic!("expected SessionsNotOffered, got {other:?}"),
    }
    assert!(timeout(GUARD, session.recv()).await.unwrap().is_none());

    let (builder, _) = client(addr);
    let session = builder.fallback_to_plain(true).start();
    session.send("plain").await.unwrap();
    assert_eq!(recv_text(&session).await, "plain");
    assert!(!session.is_resumable());
}

#[tokio::test]
async fn a_plain_client_of_a_session_server_gets_the_same_handler() {
    let server = echo_server(SessionServerConfig::default(), None).await;
    let mut ws = tether::connect(format!("ws://{}/", server.addr))
        .await
        .unwrap();
    assert_eq!(ws.subprotocol(), None);
    ws.send("hello").await.unwrap();
    match timeout(GUARD, ws.recv()).await.unwrap() {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "hello"),
        other => panic!("expected the echo, got {other:?}"),
    }
    ws.close(1000, "").await.unwrap();
    logged(&server.log, "ended ClosedByPeer").await;
}

// ----- under the paused clock, with a hand-driven client over an in-memory stream -----

/// A server connection over an in-memory stream, and the raw client end of it (the
/// opening handshake done by hand, the resume subprotocol offered).
async fn raw_connection(sessions: &SessionServer) -> WebSocket<DuplexStream> {
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let config = sessions.server_config(ServerConfig::default());
    let sessions = sessions.clone();
    tokio::spawn(async move {
        let (ws, _) = tether::accept(server, &config).await.unwrap().unwrap();
        sessions.serve(ws).await;
    });
    let request = format!(
        "GET / HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n"
    );
    client.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(client.read_u8().await.unwrap());
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains(SUBPROTOCOL), "{head}");
    WebSocket::from_raw(
        client,
        tether::proto::Role::Client,
        &Config::default().compression(None),
        &[],
    )
}

async fn hello(ws: &mut WebSocket<DuplexStream>, hello: Control) -> Control {
    ws.send(Message::Binary(hello.encode())).await.unwrap();
    match ws.recv().await {
        Some(Ok(Message::Binary(b))) => Control::decode(&b).unwrap(),
        other => panic!("expected WELCOME, got {other:?}"),
    }
}

/// HELLO for session `id` (a new one with `None`) having taken nothing; the WELCOME's
/// fields.
async fn greet(
    ws: &mut WebSocket<DuplexStream>,
    id: Option<tether::session::SessionId>,
) -> (tether::session::SessionId, bool, u64, String) {
    welcome_of(hello(ws, Control::Hello { id, delivered: 0 }).await)
}

fn welcome_of(control: Control) -> (tether::session::SessionId, bool, u64, String) {
    match control {
        Control::Welcome {
            id,
            resumed,
            delivered,
            reason,
        } => (id, resumed, delivered, reason),
        other => panic!("expected WELCOME, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn requests_are_acknowledged_only_once_answered_without_a_store() {
    // The handler takes a batch of requests and answers it only when told to.
    let answer = Arc::new(tokio::sync::Notify::new());
    let go = Arc::clone(&answer);
    let sessions = SessionServer::new(SessionServerConfig::default(), move |session| {
        let go = Arc::clone(&go);
        async move {
            while let Some(Ok(requests)) = session.recv_requests(64).await {
                go.notified().await;
                let replies = requests
                    .iter()
                    .map(|r| Message::text(format!("re {}", r.as_text().unwrap_or(""))))
                    .collect();
                if session.reply(replies).await.is_err() {
                    break;
                }
            }
        }
    });
    let mut ws = raw_connection(&sessions).await;
    greet(&mut ws, None).await;
    for r in ["r1", "r2", "r3"] {
        ws.send(Message::text(r)).await.unwrap();
    }
    // Taken but not answered: no acknowledgement, whatever the count and the timer say.
    assert!(
        timeout(Duration::from_secs(10), ws.recv()).await.is_err(),
        "nothing comes back before the answers"
    );
    answer.notify_one();
    // The answers, then the acknowledgement of all three.
    let mut got = Vec::new();
    while got.len() < 4 {
        match timeout(GUARD, ws.recv()).await.unwrap() {
            Some(Ok(Message::Text(t))) => got.push(t.as_str().to_owned()),
            Some(Ok(Message::Binary(b))) => got.push(format!("{:?}", Control::decode(&b).unwrap())),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        got,
        [
            "re r1".to_owned(),
            "re r2".to_owned(),
            "re r3".to_owned(),
            format!("{:?}", Control::Ack { delivered: 3 }),
        ]
    );
}

/// A server whose handler sends `count` messages as soon as the session starts and
/// reports how far it got.
fn sending_server(
    config: SessionServerConfig,
    count: usize,
) -> (SessionServer, tokio::sync::watch::Receiver<usize>, Log) {
    let (sent_tx, sent_rx) = tokio::sync::watch::channel(0usize);
    let sent_tx = Arc::new(sent_tx);
    let sessions = SessionServer::new(config, move |session| {
        let sent_tx = Arc::clone(&sent_tx);
        async move {
            for i in 0..count {
                if session.send(format!("s{i}")).await.is_err() {
                    break;
                }
                sent_tx.send_replace(i + 1);
            }
            while let Some(Ok(_)) = session.recv().await {}
        }
    });
    let log: Log = Arc::default();
    let events = Arc::clone(&log);
    let sessions = sessions.on_event(move |e| events.lock().unwrap().push(describe(e)));
    (sessions, sent_rx, log)
}

#[tokio::test(start_paused = true)]
async fn a_session_whose_client_stays_away_past_its_ttl_expires() {
    let (sessions, _, log) = sending_server(SessionServerConfig::default(), 0);
    let mut ws = raw_connection(&sessions).await;
    let (id, resumed, _, _) = greet(&mut ws, None).await;
    assert!(!resumed);
    drop(ws);
    logged(&log, "disconnected").await;
    // Just before the default two minutes, the session is still there and resumes.
    tokio::time::sleep(Duration::from_secs(119)).await;
    let mut ws = raw_connection(&sessions).await;
    let (same, resumed, _, _) = greet(&mut ws, Some(id)).await;
    assert!(resumed && same == id);
    drop(ws);
    // Away again, now past the time to live: it expires, and a later resume is refused
    // with the reason.
    tokio::time::sleep(Duration::from_secs(121)).await;
    logged(&log, "ended Expired").await;
    assert!(sessions.is_empty());
    let mut ws = raw_connection(&sessions).await;
    let (new_id, resumed, delivered, reason) = greet(&mut ws, Some(id)).await;
    assert!(!resumed);
    assert_ne!(new_id, id);
    assert_eq!(delivered, 0);
    assert_eq!(reason, "expired");
}

#[tokio::test(start_paused = true)]
async fn sends_to_an_away_client_wait_when_the_buffer_is_full_and_flow_on_resume() {
    let mut config = SessionServerConfig::default();
    config.session.max_buffered_messages = 8;
    let (sessions, mut sent, log) = sending_server(config, 20);
    let mut ws = raw_connection(&sessions).await;
    let (id, _, _, _) = greet(&mut ws, None).await;
    // The client reads nothing and goes away: eight messages fill the buffer, the ninth
    // send waits, however long.
    drop(ws);
    logged(&log, "disconnected").await;
    timeout(Duration::from_secs(60), sent.wait_for(|n| *n == 8))
        .await
        .unwrap()
        .unwrap();
    assert!(
        timeout(Duration::from_secs(60), sent.wait_for(|n| *n > 8))
            .await
            .is_err(),
        "a full buffer makes send wait, it drops nothing"
    );
    // The client comes back having taken none: all eight are replayed, then the rest flow
    // as the client acknowledges.
    let mut ws = raw_connection(&sessions).await;
    let (_, resumed, _, _) = greet(&mut ws, Some(id)).await;
    assert!(resumed);
    for i in 0..20u64 {
        match timeout(GUARD, ws.recv()).await.unwrap() {
            Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), format!("s{i}")),
            other => panic!("expected s{i}, got {other:?}"),
        }
        let ack = Control::Ack { delivered: i + 1 };
        ws.send(Message::Binary(ack.encode())).await.unwrap();
    }
    assert_eq!(*sent.borrow(), 20);
    assert!(log.lock().unwrap().contains(&"resumed 8".to_owned()));
}

#[tokio::test(start_paused = true)]
async fn a_server_configured_to_end_overflowing_sessions_says_so_on_resume() {
    let mut config = SessionServerConfig::default();
    config.session.max_buffered_messages = 4;
    config.overflow = Overflow::End;
    let (sessions, mut sent, log) = sending_server(config, 10);
    let mut ws = raw_connection(&sessions).await;
    // Take the WELCOME by hand, then go away before anything is acknowledged.
    let (id, _, _, _) = greet(&mut ws, None).await;
    drop(ws);
    logged(&log, "ended Overflow").await;
    let stopped = *sent.borrow_and_update();
    assert!(
        stopped <= 4,
        "at most the buffer's worth was accepted: {stopped}"
    );
    let mut ws = raw_connection(&sessions).await;
    let (_, resumed, _, reason) = greet(&mut ws, Some(id)).await;
    assert!(!resumed);
    assert_eq!(reason, "overflow");
}

#[tokio::test]
async fn a_second_connection_taking_the_session_over_supersedes_the_first() {
    let server = echo_server(SessionServerConfig::default(), None).await;
    let (builder, log) = client(server.addr);
    let session = builder.start();
    session.send("one").await.unwrap();
    assert_eq!(recv_text(&session).await, "one");
    let id = session.id();
    // Someone else resumes the same session.
    let mut other = tether::ClientBuilder::new(format!("ws://{}/", server.addr))
        .subprotocol(SUBPROTOCOL)
        .connect()
        .await
        .unwrap();
    other
        .send(Message::Binary(
            Control::Hello {
                id: Some(id),
                delivered: 1,
            }
            .encode(),
        ))
        .await
        .unwrap();
    match timeout(GUARD, other.recv()).await.unwrap() {
        Some(Ok(Message::Binary(b))) => {
            let (same, resumed, _, _) = welcome_of(Control::decode(&b).unwrap());
            assert!(resumed && same == id);
        }
        other => panic!("expected WELCOME, got {other:?}"),
    }
    match timeout(GUARD, session.recv()).await.unwrap() {
        Some(Err(Error::SessionLost(lost))) => assert_eq!(lost.reason, LostReason::Superseded),
        other => panic!("expected SessionLost, got {other:?}"),
    }
    assert!(log.lock().unwrap().contains(&"lost superseded".to_owned()));
}

#[tokio::test]
async fn batches_in_and_out_keep_order_and_take_what_is_waiting() {
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&sizes);
    let sessions = SessionServer::new(SessionServerConfig::default(), move |session| {
        let seen = Arc::clone(&seen);
        async move {
            while let Some(Ok(batch)) = session.recv_batch(16).await {
                seen.lock().unwrap().push(batch.len());
                if session.send_batch(batch, None).await.is_err() {
                    break;
                }
            }
        }
    });
    let server = start(sessions).await;
    let (builder, _log) = client(server.addr);
    let session = builder.start();
    // Sent in one go: batches on the server find several waiting, never more than 16.
    session
        .send_batch(
            (0..500).map(|i| Message::text(format!("m{i}"))).collect(),
            None,
        )
        .await
        .unwrap();
    for i in 0..500 {
        assert_eq!(recv_text(&session).await, format!("m{i}"));
    }
    timeout(GUARD, session.close()).await.unwrap().unwrap();
    let sizes = sizes.lock().unwrap().clone();
    assert_eq!(sizes.iter().sum::<usize>(), 500);
    assert!(sizes.iter().all(|&n| (1..=16).contains(&n)), "{sizes:?}");
    assert!(
        sizes.iter().any(|&n| n > 1),
        "some batch took several: {sizes:?}"
    );
}
