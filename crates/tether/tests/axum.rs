//! `tether::axum::WebSocketUpgrade` in a real axum app (feature `axum`), served by
//! `axum::serve` on 127.0.0.1 with shared `State` and plain HTTP routes beside the WebSocket
//! ones:
//!
//! * tether's client, compression on: permessage-deflate agreed and reported the same on both
//!   sides, the server's preferred subprotocol selected (and announced by
//!   `selected_protocol` before the upgrade), text and binary echoes up to 1 MiB, close code
//!   1000 seen by the handler;
//! * the plain route answers 200 over plain HTTP and sees the state the WebSocket route
//!   changes;
//! * refusals: a plain GET on the WebSocket route gets 426 with `Sec-WebSocket-Version: 13`, a
//!   POST 405 with `Allow: GET`, a bad key 400, a second extractor on one request 500;
//! * a message over the route's `max_message_size` closes the connection with 1009;
//! * Python `websockets` (its asyncio client, `tests/python/client.py compress deflate`): it
//!   negotiates permessage-deflate with the app and gets every echo back;
//! * headless Chromium (`tests/browser/run.mjs` and `page.html`, served by the app itself): the
//!   page sees permessage-deflate in `ws.extensions`, the app's first messages and every echo;
//! * with the `http2` feature, an HTTP/2 extended CONNECT (RFC 8441) from hyper's h2c client
//!   reaches the same route and carries a compressed WebSocket.
//!
//! Python comes from `TETHER_PYTHON`, else `<workspace>/.venv-test/bin/python`; Chromium from
//! `TETHER_CHROMIUM`, else `/usr/bin/chromium`, with playwright-core in
//! `tests/browser/node_modules`. `scripts/test.sh` installs them all; without them those tests
//! fail (they never skip).

#![cfg(feature = "axum")]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use tether::axum::WebSocketUpgrade;
use tether::upgrade::UpgradedWebSocket;
use tether::{ClientBuilder, Message, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// Longest wait for any one step.
const STEP: Duration = Duration::from_secs(30);

/// Longest the whole browser run may take (starting Chromium included).
const BROWSER_LIMIT: Duration = Duration::from_secs(180);

/// The key of RFC 6455 section 1.3.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// The message limit of the `/small` route.
const SMALL_LIMIT: usize = 1024;

async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(STEP, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {STEP:?}: {what}"))
}

// ---------------------------------------------------------------------------------------------
// The app
// ---------------------------------------------------------------------------------------------

/// What a WebSocket handler saw of its connection.
#[derive(Debug)]
struct Seen {
    route: &'static str,
    path: String,
    /// `selected_protocol()` before the upgrade.
    selected: Option<String>,
    subprotocol: Option<String>,
    extensions: Option<String>,
    echoed: usize,
    error: Option<String>,
    /// The close code of the protocol error `recv` returned, if any.
    error_code: Option<u16>,
    close_code: u16,
}

#[derive(Clone)]
struct AppState {
    config: Arc<ServerConfig>,
    seen: UnboundedSender<Seen>,
    upgrades: Arc<AtomicUsize>,
}

struct App {
    addr: SocketAddr,
    seen: UnboundedReceiver<Seen>,
}

impl App {
    async fn start() -> Self {
        let (tx, seen) = unbounded_channel();
        let state = AppState {
            config: Arc::new(
                ServerConfig::default()
                    .subprotocol("tether.v2")
                    .subprotocol("tether.v1"),
            ),
            seen: tx,
            upgrades: Arc::default(),
        };
        let app = Router::new()
            // `any`: the extractor, not the router, answers other methods.
            .route("/ws", any(ws_echo))
            .route("/small", get(ws_small))
            .route("/twice", get(ws_twice))
            .route("/browser", get(ws_browser))
            .route("/healthz", get(healthz))
            .route("/page", get(page))
            .with_state(state);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local_addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    async fn seen(&mut self) -> Seen {
        within("a handler's report", self.seen.recv())
            .await
            .expect("the handler reports")
    }
}

/// Echoes every message until the connection ends, then reports.
async fn echo(mut ws: UpgradedWebSocket, mut seen: Seen, tx: UnboundedSender<Seen>) {
    seen.subprotocol = ws.subprotocol().map(str::to_owned);
    seen.extensions = ws.extensions().map(str::to_owned);
    while let Some(msg) = ws.recv().await {
        match msg {
            Ok(msg) => {
                if let Err(e) = ws.send(msg).await {
                    seen.error.get_or_insert(format!("send: {e}"));
                    break;
                }
                seen.echoed += 1;
            }
            Err(e) => {
                if let tether::Error::Protocol(p) = &e {
                    seen.error_code = Some(p.close_code());
                }
                seen.error.get_or_insert(format!("recv: {e}"));
                break;
            }
        }
    }
    while ws.recv().await.is_some() {}
    seen.close_code = ws.close_code();
    let _ = tx.send(seen);
}

fn report(route: &'static str, ws: &WebSocketUpgrade) -> Seen {
    Seen {
        route,
        path: ws.request().path.clone(),
        selected: ws.selected_protocol(),
        subprotocol: None,
        extensions: None,
        echoed: 0,
        error: None,
        error_code: None,
        close_code: 0,
    }
}

async fn ws_echo(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    state.upgrades.fetch_add(1, Ordering::SeqCst);
    let ws = ws.config(state.config.clone());
    let seen = report("ws", &ws);
    ws.on_upgrade(move |socket| echo(socket, seen, state.seen))
}

async fn ws_small(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    let ws = ws.max_message_size(SMALL_LIMIT);
    let seen = report("small", &ws);
    ws.on_upgrade(move |socket| echo(socket, seen, state.seen))
}

/// Two extractors on one request: the second finds no connection left to upgrade.
async fn ws_twice(first: WebSocketUpgrade, second: WebSocketUpgrade) -> Response {
    drop((first, second));
    "unreachable".into_response()
}

async fn ws_browser(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    let seen = report("browser", &ws);
    ws.on_upgrade(move |mut socket| async move {
        // The app sends first, as the page expects: random bytes, then JSON-like text.
        let first = [
            Message::binary(random_bytes(BROWSER_FIRST, 1)),
            Message::text(json_text(BROWSER_FIRST)),
        ];
        for msg in first {
            if socket.send(msg).await.is_err() {
                break;
            }
        }
        echo(socket, seen, state.seen).await
    })
}

async fn healthz(State(state): State<AppState>) -> String {
    format!("ok upgrades={}\n", state.upgrades.load(Ordering::SeqCst))
}

async fn page() -> Response {
    let html = std::fs::read(assets().join("page.html")).expect("read tests/browser/page.html");
    ([("content-type", "text/html; charset=utf-8")], html).into_response()
}

// ---------------------------------------------------------------------------------------------
// Messages and raw HTTP
// ---------------------------------------------------------------------------------------------

/// xorshift32 bytes (the rule of `randomBytes` in page.html): incompressible.
fn random_bytes(size: usize, seed: u32) -> Vec<u8> {
    let mut x = seed;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// JSON-like lines cut to `size` bytes (the rule of `jsonText` in page.html): compressible.
fn json_text(size: usize) -> String {
    let mut s = String::with_capacity(size + 100);
    let mut i = 0u64;
    while s.len() < size {
        let side = if i % 3 == 0 { "sell" } else { "buy" };
        let price = (i * 7919) % 100_003;
        s += &format!(
            "{{\"seq\":{i},\"symbol\":\"TETH-USD\",\"price\":{price},\"side\":\"{side}\"}}\n"
        );
        i += 1;
    }
    s.truncate(size);
    s
}

/// What the app sends the browser first, of each kind (page.html expects 1 MiB).
const BROWSER_FIRST: usize = 1 << 20;

/// A parsed HTTP response: status, headers (names lower-cased), body.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `request` over a fresh TCP connection and reads one response (head, then
/// `Content-Length` bytes of body).
async fn raw(addr: SocketAddr, request: &str) -> RawResponse {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let mut lines = head.split("\r\n");
            let status_line = lines.next().expect("a status line");
            let status = status_line
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            let length: usize = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .map_or(0, |(_, v)| v.parse().expect("content-length"));
            if buf.len() >= end + 4 + length {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).into_owned();
                return RawResponse {
                    status,
                    headers,
                    body,
                };
            }
        }
        let n = within("the response", tcp.read(&mut chunk))
            .await
            .expect("read");
        assert!(n > 0, "connection closed mid-response: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn upgrade_request(method: &str, path: &str, key: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

// ---------------------------------------------------------------------------------------------
// tether's client
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn tether_client_echoes_through_axum_with_deflate_and_subprotocol() {
    let mut app = App::start().await;
    let mut ws = ClientBuilder::new(app.url("/ws?room=1"))
        .subprotocol("tether.v1")
        .subprotocol("tether.v2")
        .connect()
        .await
        .expect("connect to the axum app");
    let extensions = ws.extensions().map(str::to_owned);
    assert!(
        extensions
            .as_deref()
            .is_some_and(|e| e.starts_with("permessage-deflate")),
        "the client negotiated {extensions:?}"
    );
    assert_eq!(
        ws.subprotocol(),
        Some("tether.v2"),
        "the server's preference"
    );

    let mut sent = 0;
    for size in [0, 1, 125, 126, 65535, 65536, 100_000, 1 << 20] {
        for msg in [
            Message::text(json_text(size)),
            Message::binary(random_bytes(size, size as u32 + 1)),
        ] {
            ws.send(msg.clone()).await.expect("send");
            let echo = within("an echo", ws.recv())
                .await
                .expect("an echo, not the end")
                .expect("an echo, not an error");
            assert_eq!(echo, msg, "the echo of {size} bytes");
            sent += 1;
        }
    }
    ws.close(1000, "done").await.expect("close");
    assert_eq!(ws.close_code(), 1000);

    let seen = app.seen().await;
    assert_eq!(seen.route, "ws");
    assert_eq!(seen.path, "/ws?room=1");
    assert_eq!(seen.selected.as_deref(), Some("tether.v2"));
    assert_eq!(seen.subprotocol.as_deref(), Some("tether.v2"));
    assert_eq!(
        seen.extensions, extensions,
        "both sides report the same extension"
    );
    assert_eq!(seen.error, None);
    assert_eq!(seen.echoed, sent);
    assert_eq!(seen.close_code, 1000, "the handler saw the client's 1000");
}

#[tokio::test]
async fn plain_http_route_answers_beside_the_websocket_route_and_shares_state() {
    let mut app = App::start().await;
    let health = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let before = raw(app.addr, health).await;
    assert_eq!(before.status, 200);
    assert_eq!(before.body, "ok upgrades=0\n");

    let mut ws = ClientBuilder::new(app.url("/ws"))
        .connect()
        .await
        .expect("connect");
    ws.close(1000, "").await.expect("close");
    assert_eq!(app.seen().await.close_code, 1000);

    let after = raw(app.addr, health).await;
    assert_eq!(after.status, 200);
    assert_eq!(after.body, "ok upgrades=1\n", "the routes share the state");
}

#[tokio::test]
async fn refused_requests_get_tethers_answers() {
    let app = App::start().await;

    let plain = raw(app.addr, "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await;
    assert_eq!(plain.status, 426, "{plain:?}");
    assert_eq!(plain.header("sec-websocket-version"), Some("13"));
    assert_eq!(plain.header("upgrade"), Some("websocket"));
    assert_eq!(
        plain.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(plain.body, "WebSocket upgrade required\n");

    let post = raw(app.addr, &upgrade_request("POST", "/ws", KEY)).await;
    assert_eq!(post.status, 405, "{post:?}");
    assert_eq!(post.header("allow"), Some("GET"));
    assert_eq!(post.body, "only GET can open a WebSocket\n");

    let bad_key = raw(app.addr, &upgrade_request("GET", "/ws", "c2hvcnQ=")).await;
    assert_eq!(bad_key.status, 400, "{bad_key:?}");
    assert_eq!(bad_key.body, "invalid Sec-WebSocket-Key\n");

    let twice = raw(app.addr, &upgrade_request("GET", "/twice", KEY)).await;
    assert_eq!(twice.status, 500, "{twice:?}");
    assert_eq!(twice.body, "this connection cannot be upgraded\n");
}

#[tokio::test]
async fn message_over_max_message_size_closes_with_1009() {
    let mut app = App::start().await;
    let mut ws = ClientBuilder::new(app.url("/small"))
        .connect()
        .await
        .expect("connect");
    ws.send(Message::binary(vec![7u8; SMALL_LIMIT]))
        .await
        .expect("send");
    let echo = within("the echo", ws.recv())
        .await
        .expect("echo")
        .expect("echo");
    assert_eq!(echo.len(), SMALL_LIMIT, "a message at the limit passes");

    ws.send(Message::binary(vec![7u8; SMALL_LIMIT + 1]))
        .await
        .expect("send");
    // The server's Close ends the stream (or an error reports it, once).
    while let Some(msg) = within("the close", ws.recv()).await {
        assert!(msg.is_err(), "no echo of a message over the limit");
    }
    assert_eq!(ws.close_code(), 1009);

    let seen = app.seen().await;
    assert_eq!(seen.route, "small");
    assert_eq!(seen.echoed, 1);
    assert_eq!(seen.error_code, Some(1009), "{:?}", seen.error);
}

// ---------------------------------------------------------------------------------------------
// Python websockets
// ---------------------------------------------------------------------------------------------

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The Python interpreter with `websockets`: `TETHER_PYTHON`, else the workspace's
/// `.venv-test`; panics (fails the test) naming what was tried when neither works.
fn python() -> PathBuf {
    let mut tried = Vec::new();
    let mut candidates = Vec::new();
    match std::env::var_os("TETHER_PYTHON") {
        Some(p) if !p.is_empty() => candidates.push(PathBuf::from(p)),
        _ => tried.push("TETHER_PYTHON is not set".to_owned()),
    }
    candidates.push(manifest_dir().join("../../.venv-test/bin/python"));
    for candidate in candidates {
        let check = std::process::Command::new(&candidate)
            .args(["-c", "import websockets.asyncio.client"])
            .stdin(Stdio::null())
            .output();
        match check {
            Ok(out) if out.status.success() => return candidate,
            Ok(out) => tried.push(format!(
                "{}: {}",
                candidate.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => tried.push(format!("{}: {e}", candidate.display())),
        }
    }
    panic!(
        "no Python with the `websockets` package; run `scripts/test.sh` (it creates \
         .venv-test) or set TETHER_PYTHON.\n  {}",
        tried.join("\n  ")
    );
}

#[tokio::test]
async fn python_websockets_negotiates_deflate_with_axum_and_gets_every_echo() {
    let mut app = App::start().await;
    let mut command = tokio::process::Command::new(python());
    command
        .arg("-u")
        .arg(manifest_dir().join("tests/python/client.py"))
        .args([&app.url("/ws"), "compress", "deflate"])
        .env("PYTHONIOENCODING", "utf-8")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = within("client.py", command.output())
        .await
        .expect("run client.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "client.py failed ({}):\n{stdout}\n{stderr}",
        out.status
    );

    let seen = app.seen().await;
    let answer = seen
        .extensions
        .clone()
        .expect("the app agreed on compression");
    assert!(answer.starts_with("permessage-deflate"), "{answer}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some(format!("extensions {answer}").as_str())
    );
    assert!(
        lines
            .get(1)
            .is_some_and(|l| l.starts_with("negotiated permessage-deflate")),
        "{stdout}"
    );
    let echoed = lines.iter().filter(|l| l.starts_with("echoed ")).count();
    // 8 sizes of 3 kinds, then 5 non-ASCII texts (tests/python/common.py).
    assert_eq!(echoed, 8 * 3 + 5, "{stdout}");
    assert_eq!(lines.last().copied(), Some("done"));
    assert_eq!(seen.echoed, echoed);
    assert_eq!(seen.error, None);
    assert_eq!(seen.close_code, 1000);
}

// ---------------------------------------------------------------------------------------------
// Headless Chromium
// ---------------------------------------------------------------------------------------------

fn assets() -> PathBuf {
    manifest_dir().join("tests/browser")
}

/// Fails the test, naming what is missing, unless Chromium, node and playwright-core are there.
fn check_browser_prerequisites() {
    let mut missing = Vec::new();
    let chromium = std::env::var_os("TETHER_CHROMIUM")
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    if !chromium.is_file() {
        missing.push(format!("Chromium at {}", chromium.display()));
    }
    let node = std::process::Command::new("node")
        .arg("--version")
        .stdin(Stdio::null())
        .output();
    if !node.is_ok_and(|out| out.status.success()) {
        missing.push("a working `node` on PATH".to_owned());
    }
    if !assets()
        .join("node_modules/playwright-core/package.json")
        .is_file()
    {
        missing.push("playwright-core in tests/browser/node_modules".to_owned());
    }
    assert!(
        missing.is_empty(),
        "the browser test cannot run: missing {}. Run `bash scripts/test.sh`, which installs \
         them.",
        missing.join("; ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_negotiates_deflate_with_axum_and_gets_every_echo() {
    check_browser_prerequisites();
    let mut app = App::start().await;
    let page_url = format!("http://{}/page", app.addr);
    let mut node = tokio::process::Command::new("node");
    node.arg(assets().join("run.mjs"))
        .arg(&page_url)
        .arg(app.url("/browser"))
        .current_dir(assets())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(BROWSER_LIMIT, node.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("cannot run node: {e}"),
        Err(_) => panic!("node run.mjs did not finish within {BROWSER_LIMIT:?}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let Some(result) = stdout.lines().find_map(|l| l.strip_prefix("RESULT ")) else {
        panic!("run.mjs printed no RESULT line.\nstdout:\n{stdout}\nstderr:\n{stderr}");
    };
    assert!(out.status.success(), "run.mjs failed: {result}\n{stderr}");

    let seen = app.seen().await;
    assert_eq!(seen.route, "browser");
    let answer = seen
        .extensions
        .clone()
        .expect("the app agreed on compression");
    assert!(answer.starts_with("permessage-deflate"), "{answer}");
    assert!(
        result.starts_with(&format!("{{\"extensions\":\"{answer}\",")),
        "ws.extensions in the browser: {result}"
    );
    // The app's two first messages, then 4 sizes of text and binary and one non-ASCII text.
    let echoes = 4 * 2 + 1;
    assert_eq!(
        result.matches("\"matches\":true").count(),
        2 + echoes,
        "{result}"
    );
    assert!(!result.contains("\"matches\":false"), "{result}");
    assert!(
        result.ends_with(r#""close":{"code":1000,"reason":"","wasClean":true}}"#),
        "{result}"
    );
    assert!(
        !stderr.contains("blocked a request off the machine"),
        "the page tried to reach another host:\n{stderr}"
    );
    assert_eq!(seen.error, None);
    assert_eq!(seen.echoed, echoes);
    assert_eq!(seen.close_code, 1000);
}

// ---------------------------------------------------------------------------------------------
// WebSocket over HTTP/2 (RFC 8441)
// ---------------------------------------------------------------------------------------------

/// `axum::serve` enables HTTP/2's extended CONNECT: with the `http2` feature, the extractor
/// accepts a `:protocol websocket` CONNECT on an h2c connection (the route takes any method)
/// and the stream carries a compressed WebSocket.
#[cfg(feature = "http2")]
#[tokio::test]
async fn extended_connect_over_h2c_reaches_the_axum_route() {
    use http_body_util::Empty;
    use hyper::body::Bytes;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tether::proto::Role;
    use tether::{Config, DeflateConfig, WebSocket};

    let mut app = App::start().await;
    let tcp = TcpStream::connect(app.addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
        .await
        .expect("h2c handshake");
    tokio::spawn(conn);
    let request = || {
        hyper::Request::builder()
            .method(hyper::Method::CONNECT)
            .uri(format!("http://{}/ws?over=h2", app.addr))
            .version(hyper::Version::HTTP_2)
            .header("sec-websocket-version", "13")
            .header("sec-websocket-protocol", "tether.v1")
            .header(
                "sec-websocket-extensions",
                DeflateConfig::default().client_offer(),
            )
            .extension(hyper::ext::Protocol::from_static("websocket"))
            .body(Empty::<Bytes>::new())
            .expect("request")
    };
    // The server's SETTINGS (ENABLE_CONNECT_PROTOCOL) may not have arrived yet: retry.
    let mut response = None;
    for _ in 0..50 {
        sender.ready().await.expect("ready");
        match sender.send_request(request()).await {
            Ok(r) => {
                response = Some(r);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let mut response = response.expect("the server to enable extended CONNECT");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["sec-websocket-protocol"], "tether.v1");
    let answer = response.headers()["sec-websocket-extensions"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let params = DeflateConfig::default()
        .client_accept(&answer)
        .expect("a permessage-deflate answer");
    let stream = within("the stream", hyper::upgrade::on(&mut response))
        .await
        .expect("the HTTP/2 stream");
    let mut ws = WebSocket::with_deflate(
        TokioIo::new(stream),
        Role::Client,
        &Config::default(),
        Some(params),
        &[],
    );
    for msg in [
        Message::text(json_text(100_000)),
        Message::binary(random_bytes(100_000, 9)),
    ] {
        ws.send(msg.clone()).await.expect("send");
        let echo = within("an echo", ws.recv())
            .await
            .expect("echo")
            .expect("echo");
        assert_eq!(echo, msg);
    }
    drop(ws);

    let seen = app.seen().await;
    assert_eq!(seen.path, "/ws?over=h2");
    assert_eq!(seen.subprotocol.as_deref(), Some("tether.v1"));
    assert_eq!(seen.extensions.as_deref(), Some(answer.as_str()));
    assert_eq!(seen.echoed, 2);
}

/// A graceful shutdown reaches the app's WebSockets too: each handler watches its connection
/// with one `ShutdownHandle`; `restart()` closes every one with 1012 and each handler's
/// `recv` loop ends by itself, and a connection upgraded afterwards is closed at once.
#[tokio::test]
async fn a_shutdown_handle_closes_the_apps_websockets_with_its_code() {
    let shutdown = tether::ShutdownHandle::new();
    let (ended_tx, mut ended) = unbounded_channel();
    let watching = shutdown.clone();
    let app = Router::new().route(
        "/ws",
        get(move |ws: WebSocketUpgrade| {
            let shutdown = watching.clone();
            let ended = ended_tx.clone();
            async move {
                ws.on_upgrade(move |mut ws: UpgradedWebSocket| async move {
                    shutdown.watch(&mut ws);
                    while let Some(Ok(msg)) = ws.recv().await {
                        if ws.send(msg).await.is_err() {
                            break;
                        }
                    }
                    let _ = ended.send(ws.close_code());
                })
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local_addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    let url = format!("ws://{addr}/ws");

    let mut clients = Vec::new();
    for i in 0..3 {
        let mut ws = within("connect", ClientBuilder::new(&url).connect())
            .await
            .expect("connect");
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let echo = within("the echo", ws.recv()).await;
        assert!(matches!(echo, Some(Ok(m)) if m == Message::text(format!("hello {i}"))));
        clients.push(ws);
    }
    assert!(!shutdown.is_shutting_down());
    shutdown.restart();
    for ws in &mut clients {
        while let Some(msg) = within("the close", ws.recv()).await {
            assert!(msg.is_ok(), "{msg:?}");
        }
        assert_eq!(ws.close_code(), 1012, "closed for a restart");
    }
    for _ in 0..3 {
        let code = within("a handler ends", ended.recv()).await;
        assert_eq!(code, Some(1012), "the handler's loop ended with the close");
    }
    assert!(shutdown.is_shutting_down());
    // Upgraded after the restart began: closed at once, with the same code.
    let mut late = within("connect", ClientBuilder::new(&url).connect())
        .await
        .expect("connect");
    while let Some(msg) = within("the close", late.recv()).await {
        assert!(msg.is_ok(), "{msg:?}");
    }
    assert_eq!(late.close_code(), 1012);
    assert_eq!(within("a handler ends", ended.recv()).await, Some(1012));
}
