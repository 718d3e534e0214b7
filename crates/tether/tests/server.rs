//! Integration tests of the server: HTTP refusals, the request hook, Basic authentication,
//! subprotocol selection, the open timeout and graceful shutdown. Clients are tether clients
//! or raw TCP sockets writing HTTP by hand.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tether::{ClientBuilder, Error, HttpResponse, Message, Server, ServerConfig, ShutdownHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

/// Bounds waits on real sockets so that a bug fails the test instead of hanging it.
const GUARD: Duration = Duration::from_secs(10);

/// A running server whose handler first sends a greeting naming the request path and the
/// selected subprotocol, then echoes every message.
struct Running {
    addr: SocketAddr,
    handle: ShutdownHandle,
    serve: JoinHandle<io::Result<()>>,
}

async fn start(config: ServerConfig) -> Running {
    let server = Server::bind("127.0.0.1:0", config).await.unwrap();
    let addr = server.local_addr().unwrap();
    let handle = server.shutdown_handle();
    let serve = tokio::spawn(server.serve(|mut ws, request| async move {
        let greeting = format!("path={} subprotocol={:?}", request.path, ws.subprotocol());
        if ws.send(greeting).await.is_err() {
            return;
        }
        while let Some(Ok(msg)) = ws.recv().await {
            if ws.send(msg).await.is_err() {
                break;
            }
        }
    }));
    Running {
        addr,
        handle,
        serve,
    }
}

/// A refusal by admission control: 503 with a `Retry-After` of whole seconds in [1, 10] (the
/// default `busy_retry_after`); returns them.
fn busy_retry_after(err: &Error) -> u64 {
    assert_eq!(err.status(), Some(503), "{err}");
    let retry_after = err
        .response()
        .and_then(|r| r.headers.get_str("retry-after"))
        .expect("a Retry-After header");
    let secs: u64 = retry_after.parse().expect("whole seconds");
    assert!((1..=10).contains(&secs), "Retry-After: {secs}");
    secs
}

async fn greeting(ws: &mut tether::WebSocket) -> String {
    match timeout(GUARD, ws.recv()).await.unwrap() {
        Some(Ok(Message::Text(t))) => t.to_string(),
        other => panic!("expected the greeting, got {other:?}"),
    }
}

async fn echo_once(ws: &mut tether::WebSocket) {
    ws.send("ping?").await.unwrap();
    match timeout(GUARD, ws.recv()).await.unwrap() {
        Some(Ok(msg)) => assert_eq!(msg, Message::text("ping?")),
        other => panic!("expected the echo, got {other:?}"),
    }
}

/// An HTTP response read off a raw socket.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn parse(bytes: &[u8]) -> Self {
        let split = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no complete head in {:?}", String::from_utf8_lossy(bytes)));
        let head = std::str::from_utf8(&bytes[..split]).unwrap();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let mut parts = status_line.splitn(3, ' ');
        assert_eq!(
            parts.next(),
            Some("HTTP/1.1"),
            "status line {status_line:?}"
        );
        let status = parts.next().unwrap().parse().unwrap();
        let headers = lines
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.trim().to_owned(), v.trim().to_owned())
            })
            .collect();
        Self {
            status,
            headers,
            body: bytes[split + 4..].to_vec(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Checks that the body is exactly as long as Content-Length says.
    fn assert_complete(&self) {
        let len: usize = self.header("content-length").unwrap().parse().unwrap();
        assert_eq!(self.body.len(), len, "body {:?}", self.body);
    }
}

/// Writes `request` on a fresh connection and reads everything until the server closes.
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut bytes = Vec::new();
    timeout(GUARD, tcp.read_to_end(&mut bytes))
        .await
        .expect("the server did not close the connection")
        .unwrap();
    RawResponse::parse(&bytes)
}

// ----- refusals -----

#[tokio::test]
async fn plain_get_without_upgrade_is_answered_426() {
    let srv = start(ServerConfig::default()).await;
    let r = raw_exchange(srv.addr, b"GET / HTTP/1.1\r\nHost: example\r\n\r\n").await;
    assert_eq!(r.status, 426);
    assert_eq!(r.header("Sec-WebSocket-Version"), Some("13"));
    assert_eq!(r.header("Upgrade"), Some("websocket"));
    r.assert_complete();
}

#[tokio::test]
async fn post_is_answered_405() {
    let srv = start(ServerConfig::default()).await;
    let r = raw_exchange(
        srv.addr,
        b"POST / HTTP/1.1\r\nHost: example\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("Allow"), Some("GET"));
    r.assert_complete();
}

#[tokio::test]
async fn header_line_over_8_kib_is_answered_431() {
    let srv = start(ServerConfig::default()).await;
    let mut request = b"GET / HTTP/1.1\r\nHost: example\r\nX-Big: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 9000));
    request.extend_from_slice(b"\r\n\r\n");
    let r = raw_exchange(srv.addr, &request).await;
    assert_eq!(r.status, 431);
    r.assert_complete();
}

#[tokio::test]
async fn malformed_requests_are_answered_400() {
    let srv = start(ServerConfig::default()).await;
    for request in [
        &b"\x01\x02 not http\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost example\r\n\r\n",
        // A valid upgrade except for its key.
        b"GET / HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n",
    ] {
        let r = raw_exchange(srv.addr, request).await;
        assert_eq!(r.status, 400, "for {:?}", String::from_utf8_lossy(request));
        r.assert_complete();
    }
    // The server still upgrades well-formed requests afterwards.
    let mut ws = tether::connect(&format!("ws://{}/", srv.addr))
        .await
        .unwrap();
    greeting(&mut ws).await;
    echo_once(&mut ws).await;
}

// ----- request hook -----

#[tokio::test]
async fn process_request_answers_healthz_and_other_paths_upgrade() {
    let config = ServerConfig::default()
        .process_request(|req| (req.path == "/healthz").then(|| HttpResponse::text(200, "ok")));
    let srv = start(config).await;

    let r = raw_exchange(srv.addr, b"GET /healthz HTTP/1.1\r\nHost: example\r\n\r\n").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"ok");
    r.assert_complete();

    // Other paths are refused as before (no hook answer) or upgraded.
    let r = raw_exchange(srv.addr, b"GET /other HTTP/1.1\r\nHost: example\r\n\r\n").await;
    assert_eq!(r.status, 426);
    let mut ws = tether::connect(&format!("ws://{}/chat?room=1", srv.addr))
        .await
        .unwrap();
    assert_eq!(
        greeting(&mut ws).await,
        "path=/chat?room=1 subprotocol=None"
    );
    echo_once(&mut ws).await;

    // The hook also sees upgrade requests: a WebSocket client asking for /healthz gets 200.
    let err = tether::connect(&format!("ws://{}/healthz", srv.addr))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(200));
    assert_eq!(err.response().unwrap().body, b"ok");
}

// ----- Basic authentication -----

fn assert_unauthorized(err: &Error) {
    assert!(matches!(err, Error::Status(_)), "expected 401, got {err:?}");
    assert_eq!(err.status(), Some(401));
    let challenge = err
        .response()
        .unwrap()
        .headers
        .get_str("www-authenticate")
        .unwrap();
    assert!(
        challenge.contains("Basic realm=\"realm\""),
        "challenge {challenge:?}"
    );
}

#[tokio::test]
async fn basic_auth_refuses_missing_and_wrong_credentials() {
    let srv = start(ServerConfig::default().basic_auth_user("realm", "user", "pass")).await;
    let port = srv.addr.port();

    let err = tether::connect(&format!("ws://127.0.0.1:{port}/"))
        .await
        .unwrap_err();
    assert_unauthorized(&err);
    for url in [
        format!("ws://user:wrong@127.0.0.1:{port}/"),
        format!("ws://other:pass@127.0.0.1:{port}/"),
        format!("ws://user@127.0.0.1:{port}/"),
    ] {
        let err = tether::connect(&url).await.unwrap_err();
        assert_unauthorized(&err);
    }
    // Plain HTTP requests are refused with the same challenge.
    let r = raw_exchange(srv.addr, b"GET / HTTP/1.1\r\nHost: example\r\n\r\n").await;
    assert_eq!(r.status, 401);
    assert!(r.header("WWW-Authenticate").unwrap().starts_with("Basic "));
}

#[tokio::test]
async fn basic_auth_accepts_credentials_from_the_url() {
    let srv = start(ServerConfig::default().basic_auth_user("realm", "user", "pass")).await;
    let mut ws = tether::connect(&format!("ws://user:pass@127.0.0.1:{}/", srv.addr.port()))
        .await
        .unwrap();
    greeting(&mut ws).await;
    echo_once(&mut ws).await;

    // The same credentials as an explicit header.
    let mut ws = ClientBuilder::new(format!("ws://127.0.0.1:{}/", srv.addr.port()))
        .header("Authorization", "Basic dXNlcjpwYXNz")
        .connect()
        .await
        .unwrap();
    greeting(&mut ws).await;
}

#[tokio::test]
async fn basic_auth_accepts_percent_encoded_userinfo() {
    let srv = start(ServerConfig::default().basic_auth_user("realm", "us er", "p@ss:word")).await;
    let port = srv.addr.port();
    let mut ws = tether::connect(&format!("ws://us%20er:p%40ss%3Aword@127.0.0.1:{port}/"))
        .await
        .unwrap();
    greeting(&mut ws).await;
    echo_once(&mut ws).await;
    // Without decoding, the password would be compared encoded and refused.
    let err = tether::connect(&format!("ws://us%20er:p%2540ss@127.0.0.1:{port}/"))
        .await
        .unwrap_err();
    assert_unauthorized(&err);
}

// ----- subprotocols -----

#[tokio::test]
async fn subprotocol_is_the_servers_first_choice_among_those_offered() {
    let srv = start(ServerConfig::default().subprotocol("b").subprotocol("a")).await;
    let url = format!("ws://{}/", srv.addr);

    let mut ws = ClientBuilder::new(&url)
        .subprotocol("a")
        .subprotocol("b")
        .connect()
        .await
        .unwrap();
    assert_eq!(ws.subprotocol(), Some("b"));
    assert_eq!(greeting(&mut ws).await, "path=/ subprotocol=Some(\"b\")");

    let mut ws = ClientBuilder::new(&url)
        .subprotocol("c")
        .subprotocol("a")
        .connect()
        .await
        .unwrap();
    assert_eq!(ws.subprotocol(), Some("a"));
    assert_eq!(greeting(&mut ws).await, "path=/ subprotocol=Some(\"a\")");

    let mut ws = ClientBuilder::new(&url)
        .subprotocol("c")
        .connect()
        .await
        .unwrap();
    assert_eq!(ws.subprotocol(), None);
    assert_eq!(greeting(&mut ws).await, "path=/ subprotocol=None");

    let mut ws = ClientBuilder::new(&url).connect().await.unwrap();
    assert_eq!(ws.subprotocol(), None);
    assert_eq!(greeting(&mut ws).await, "path=/ subprotocol=None");
}

// ----- open timeout -----

#[tokio::test(start_paused = true)]
async fn silent_and_slow_clients_are_dropped_after_open_timeout() {
    const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
    let srv = start(ServerConfig::default().open_timeout(OPEN_TIMEOUT)).await;
    for first_bytes in [&b""[..], b"GET / HTTP/1.1\r\nHost: exa"] {
        let start = Instant::now();
        let mut tcp = TcpStream::connect(srv.addr).await.unwrap();
        tcp.write_all(first_bytes).await.unwrap();
        let mut buf = [0u8; 64];
        // Still open shortly before the timeout (virtual time)…
        let early = timeout(OPEN_TIMEOUT - Duration::from_secs(1), tcp.read(&mut buf)).await;
        assert!(early.is_err(), "closed early: {early:?}");
        // …and closed without an answer once it passed.
        let n = timeout(Duration::from_secs(60), tcp.read(&mut buf))
            .await
            .expect("the server kept a silent client")
            .unwrap();
        assert_eq!(n, 0, "got {:?}", String::from_utf8_lossy(&buf[..n]));
        assert!(start.elapsed() >= OPEN_TIMEOUT);
    }
    // A prompt client still gets in.
    let mut ws = tether::connect(&format!("ws://{}/", srv.addr))
        .await
        .unwrap();
    greeting(&mut ws).await;
}

// ----- graceful shutdown -----

#[tokio::test]
async fn shutdown_closes_connections_with_1001_and_refuses_handshakes_in_progress() {
    let srv = start(ServerConfig::default()).await;

    // A handshake in progress: half of a request.
    let mut half = TcpStream::connect(srv.addr).await.unwrap();
    half.write_all(b"GET / HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\n")
        .await
        .unwrap();
    // An open connection. The server accepts in order, so the half-open one was accepted
    // before this one completed its handshake.
    let mut ws = tether::connect(&format!("ws://{}/", srv.addr))
        .await
        .unwrap();
    greeting(&mut ws).await;
    echo_once(&mut ws).await;

    srv.handle.shutdown();

    let end = timeout(GUARD, ws.recv()).await.unwrap();
    assert!(
        end.is_none(),
        "expected the end of the connection, got {end:?}"
    );
    assert_eq!(ws.close_code(), 1001);

    let mut bytes = Vec::new();
    timeout(GUARD, half.read_to_end(&mut bytes))
        .await
        .unwrap()
        .unwrap();
    let r = RawResponse::parse(&bytes);
    assert_eq!(r.status, 503);
    assert!(r.header("Retry-After").is_some());
    r.assert_complete();

    timeout(GUARD, srv.serve)
        .await
        .expect("serve did not return after shutdown")
        .unwrap()
        .unwrap();
    // Nothing listens any more.
    let err = tether::connect(&format!("ws://{}/", srv.addr))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Io(_)), "got {err:?}");
}

#[tokio::test]
async fn shutdown_without_connections_returns_from_serve() {
    let srv = start(ServerConfig::default()).await;
    srv.handle.shutdown();
    srv.handle.shutdown();
    timeout(GUARD, srv.serve)
        .await
        .expect("serve did not return after shutdown")
        .unwrap()
        .unwrap();
}

/// The accept hook sees every TCP connection, with its peer address, before a byte is read;
/// a `false` closes it at once (the client reads end of stream, not a response), and the
/// server goes on serving the connections the hook lets through.
#[tokio::test]
async fn the_accept_hook_sees_every_connection_and_can_refuse_it() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let refuse = Arc::new(AtomicBool::new(false));
    let config = {
        let (seen, refuse) = (seen.clone(), refuse.clone());
        ServerConfig::default().on_accept(move |peer| {
            seen.lock().unwrap().push(peer);
            !refuse.load(Ordering::SeqCst)
        })
    };
    let srv = start(config).await;
    let url = format!("ws://{}/", srv.addr);
    let mut ws = timeout(GUARD, tether::connect(&url))
        .await
        .unwrap()
        .unwrap();
    greeting(&mut ws).await;
    refuse.store(true, Ordering::SeqCst);
    let mut raw = TcpStream::connect(srv.addr).await.unwrap();
    let raw_port = raw.local_addr().unwrap().port();
    // Refused before the request is read: the server closes without answering.
    let _ = raw
        .write_all(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let _ = timeout(GUARD, raw.read_to_end(&mut answer)).await.unwrap();
    assert!(
        answer.is_empty(),
        "an answer: {:?}",
        String::from_utf8_lossy(&answer)
    );
    // The connection let through before is still served.
    echo_once(&mut ws).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.iter().all(|p| p.ip().is_loopback()), "{seen:?}");
    assert_eq!(seen[1].port(), raw_port);
    srv.handle.shutdown();
    assert!(timeout(GUARD, ws.recv()).await.unwrap().is_none());
    timeout(GUARD, srv.serve).await.unwrap().unwrap().unwrap();
}

/// Admission control: with `max_handshakes(2)` and two handshakes held open by clients that
/// never finish, every further connection is answered at once with 503 and a `Retry-After`
/// drawn from [1, 10] s (not one value for all: the answer must not synchronise the crowd).
/// Once the held handshakes end, clients are upgraded again.
/// Above `max_handshake_rate`, handshakes are refused at once with 503 and a spread
/// `Retry-After`; the bucket holds one second's worth and refills at the rate.
#[tokio::test]
async fn handshakes_above_the_rate_get_503_until_the_bucket_refills() {
    let config = ServerConfig::default().max_handshake_rate(Some(1));
    let srv = start(config).await;
    let url = format!("ws://{}/", srv.addr);
    let started = Instant::now();
    let (mut admitted, mut waits) = (Vec::new(), Vec::new());
    for _ in 0..12 {
        match timeout(GUARD, tether::connect(&url)).await.unwrap() {
            Ok(ws) => admitted.push(ws),
            Err(err) => waits.push(busy_retry_after(&err)),
        }
    }
    // A full bucket lets one in; one more token comes each second.
    let allowed = 1 + started.elapsed().as_secs() as usize;
    assert!(
        !admitted.is_empty() && admitted.len() <= allowed,
        "{} admitted, {allowed} allowed",
        admitted.len()
    );
    assert_eq!(admitted.len() + waits.len(), 12);
    assert!(
        waits.iter().any(|&w| w != waits[0]),
        "one Retry-After for all: {waits:?}"
    );
    for ws in &mut admitted {
        greeting(ws).await;
        echo_once(ws).await;
    }
    // A second later the bucket has a token again: one more gets in, the next does not.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut late = timeout(GUARD, tether::connect(&url))
        .await
        .unwrap()
        .expect("admitted once the bucket refilled");
    greeting(&mut late).await;
    echo_once(&mut late).await;
    let err = timeout(GUARD, tether::connect(&url))
        .await
        .unwrap()
        .expect_err("the bucket is empty again");
    assert_eq!(err.status(), Some(503), "{err}");
    // The admitted connections are closed by the shutdown like any other.
    srv.handle.shutdown();
    admitted.push(late);
    for ws in &mut admitted {
        assert!(timeout(GUARD, ws.recv()).await.unwrap().is_none());
        assert_eq!(ws.close_code(), 1001);
    }
    timeout(GUARD, srv.serve).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn handshakes_above_the_limit_get_503_with_a_spread_retry_after() {
    let config = ServerConfig::default()
        .max_handshakes(Some(2))
        .busy_retry_after(Duration::from_secs(10));
    let srv = start(config).await;
    let url = format!("ws://{}/", srv.addr);
    // Two handshakes in progress: half of a request each. The server accepts in order, so
    // both are counted before any later connection is accepted.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut half = TcpStream::connect(srv.addr).await.unwrap();
        half.write_all(b"GET / HTTP/1.1\r\nHost: example\r\n")
            .await
            .unwrap();
        held.push(half);
    }
    let mut waits = Vec::new();
    for _ in 0..20 {
        let err = timeout(GUARD, tether::connect(&url))
            .await
            .unwrap()
            .expect_err("refused while two handshakes are in progress");
        waits.push(busy_retry_after(&err));
    }
    assert!(
        waits.iter().any(|&w| w != waits[0]),
        "one Retry-After for all: {waits:?}"
    );
    // The held handshakes end: their places are given back, and clients get in again.
    drop(held);
    let deadline = Instant::now() + GUARD;
    let mut ws = loop {
        match tether::connect(&url).await {
            Ok(ws) => break ws,
            Err(e) if e.status() == Some(503) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("not admitted again: {e}"),
        }
    };
    greeting(&mut ws).await;
    echo_once(&mut ws).await;
    srv.handle.shutdown();
    assert!(timeout(GUARD, ws.recv()).await.unwrap().is_none());
    assert_eq!(ws.close_code(), 1001);
    timeout(GUARD, srv.serve).await.unwrap().unwrap().unwrap();
}
