//! `tether::upgrade` behind a plain hyper 1 server (feature `hyper`):
//!
//! * an HTTP/1.1 server served `with_upgrades()`, upgrading with [`upgrade::upgrade`]: tether's
//!   client echoes text and binary messages of several sizes with permessage-deflate and a
//!   subprotocol agreed, seen the same way on both sides, and closes with 1000;
//! * a plain request on the same server gets the service's own answer;
//! * refused requests (no upgrade, POST, a bad key, a wrong version) get exactly what tether's
//!   own [`Server`] answers to the same bytes: status, the headers that matter and the body;
//! * hooks (`ServerConfig::basic_auth_user`) answer on this path too;
//! * keepalive: the server pings a silent raw client at the configured interval;
//! * with the `http2` feature, WebSocket over HTTP/2 (RFC 8441): hyper's HTTP/2 client opens an
//!   extended CONNECT on an h2c connection and runs a tether WebSocket on the stream, which
//!   the client closes with 1000 (the server, once done, drops the stream and hyper resets it
//!   with RST_STREAM NO_ERROR: the client still reads the server's Close).

#![cfg(feature = "hyper")]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tether::upgrade::{self, UpgradedWebSocket};
use tether::{ClientBuilder, Config, Message, Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// Longest wait for any one step.
const STEP: Duration = Duration::from_secs(20);

/// The key of RFC 6455 section 1.3.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// What the server's connection handler saw.
#[derive(Debug)]
struct Seen {
    path: String,
    subprotocol: Option<String>,
    extensions: Option<String>,
    echoed: usize,
    close_code: u16,
}

async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(STEP, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {STEP:?}: {what}"))
}

/// Echoes until closed, then reports.
async fn echo(mut ws: UpgradedWebSocket, path: String, seen: UnboundedSender<Seen>) {
    let mut echoed = 0;
    while let Some(Ok(msg)) = ws.recv().await {
        if msg.as_text() == Some("close me") {
            // The server starts the closing handshake.
            let _ = ws.close(1000, "as asked").await;
            break;
        }
        if ws.send(msg).await.is_err() {
            break;
        }
        echoed += 1;
    }
    while ws.recv().await.is_some() {}
    let _ = seen.send(Seen {
        path,
        subprotocol: ws.subprotocol().map(str::to_owned),
        extensions: ws.extensions().map(str::to_owned),
        echoed,
        close_code: ws.close_code(),
    });
}

/// The service: `/plain` is plain HTTP; everything else is upgraded with `config`.
async fn handle(
    mut req: hyper::Request<Incoming>,
    config: Arc<ServerConfig>,
    seen: UnboundedSender<Seen>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/plain" {
        return Ok(hyper::Response::new(Full::new(Bytes::from_static(
            b"plain hyper\n",
        ))));
    }
    match upgrade::upgrade(&mut req, &config) {
        Ok((response, pending)) => {
            let path = pending.request().path.clone();
            tokio::spawn(async move {
                match pending.await {
                    Ok(ws) => echo(ws, path, seen).await,
                    Err(e) => panic!("upgrade failed: {e}"),
                }
            });
            Ok(response)
        }
        Err(refusal) => Ok(refusal),
    }
}

/// A hyper HTTP/1.1 server (HTTP/2 too, with `h2`) on 127.0.0.1 upgrading with `config`.
async fn start(config: ServerConfig, h2: bool) -> (SocketAddr, UnboundedReceiver<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local_addr");
    let config = Arc::new(config);
    let (tx, rx) = unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            let (config, tx) = (config.clone(), tx.clone());
            let service = service_fn(move |req| handle(req, config.clone(), tx.clone()));
            tokio::spawn(async move {
                let io = TokioIo::new(tcp);
                if h2 {
                    serve_h2(io, service).await;
                } else {
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .with_upgrades();
                    let _ = conn.await;
                }
            });
        }
    });
    (addr, rx)
}

#[cfg(feature = "http2")]
async fn serve_h2<S>(io: TokioIo<TcpStream>, service: S)
where
    S: hyper::service::Service<
            hyper::Request<Incoming>,
            Response = hyper::Response<Full<Bytes>>,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .enable_connect_protocol()
        .serve_connection(io, service)
        .await;
}

#[cfg(not(feature = "http2"))]
async fn serve_h2<S>(_: TokioIo<TcpStream>, _: S) {
    unreachable!("HTTP/2 needs the http2 feature")
}

/// Binary bytes i = (31 i + 7) mod 256.
fn binary_payload(size: usize) -> Vec<u8> {
    (0..size).map(|i| (31 * i + 7) as u8).collect()
}

/// JSON-like text: compresses well.
fn json_text(size: usize) -> String {
    let mut s = String::new();
    let mut i = 0;
    while s.len() < size {
        s += &format!("{{\"seq\":{i},\"price\":{}}}\n", (i * 7919) % 100_003);
        i += 1;
    }
    s.truncate(size);
    s
}

const SIZES: [usize; 7] = [0, 1, 125, 126, 65535, 65536 + 1, 1 << 20];

/// Sends text and binary messages of every size in [`SIZES`] and checks the echoes.
async fn exchange<S>(ws: &mut tether::WebSocket<S>) -> usize
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut sent = 0;
    for size in SIZES {
        for msg in [
            Message::text(json_text(size)),
            Message::binary(binary_payload(size)),
        ] {
            ws.send(msg.clone()).await.expect("send");
            let echo = within("an echo", ws.recv())
                .await
                .expect("an echo, not the end")
                .expect("an echo, not an error");
            assert_eq!(echo, msg, "echo of {size} bytes");
            sent += 1;
        }
    }
    sent
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP, to compare answers byte-level with tether's own server
// ---------------------------------------------------------------------------------------------

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

/// Sends `request` as is and reads one response (its head, then `Content-Length` bytes).
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

fn upgrade_request(method: &str, extra: &str, key: &str, version: &str) -> String {
    format!(
        "{method} /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n{extra}\r\n"
    )
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn tether_client_echoes_through_hyper_with_compression_and_subprotocol() {
    let config = ServerConfig::default()
        .subprotocol("tether.v2")
        .subprotocol("tether.v1");
    let (addr, mut seen) = start(config, false).await;
    let mut ws = ClientBuilder::new(format!("ws://{addr}/echo?room=7"))
        .subprotocol("tether.v1")
        .subprotocol("tether.v2")
        .connect()
        .await
        .expect("connect through hyper");
    let extensions = ws.extensions().map(str::to_owned);
    assert!(
        extensions
            .as_deref()
            .is_some_and(|e| e.starts_with("permessage-deflate")),
        "client negotiated {extensions:?}"
    );
    assert_eq!(
        ws.subprotocol(),
        Some("tether.v2"),
        "the server's preference"
    );
    let sent = exchange(&mut ws).await;
    ws.close(1000, "done").await.expect("close");
    assert_eq!(ws.close_code(), 1000);

    let seen = within("the handler's report", seen.recv())
        .await
        .expect("a report");
    assert_eq!(seen.path, "/echo?room=7");
    assert_eq!(seen.subprotocol.as_deref(), Some("tether.v2"));
    assert_eq!(seen.extensions, extensions, "both sides agree");
    assert_eq!(seen.echoed, sent);
    assert_eq!(seen.close_code, 1000);
}

#[tokio::test]
async fn plain_request_beside_upgrades_gets_the_service_answer() {
    let (addr, _seen) = start(ServerConfig::default(), false).await;
    let response = raw(
        addr,
        "GET /plain HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(response.status, 200);
    assert_eq!(response.body, "plain hyper\n");
}

#[tokio::test]
async fn refusals_match_tethers_own_server() {
    let (hyper_addr, _seen) = start(ServerConfig::default(), false).await;
    let server = Server::bind("127.0.0.1:0", ServerConfig::default())
        .await
        .expect("bind");
    let tether_addr = server.local_addr().expect("local_addr");
    tokio::spawn(server.serve(|_ws, _req| async {}));

    let cases = [
        (
            "no upgrade",
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_owned(),
            426,
        ),
        ("POST", upgrade_request("POST", "", KEY, "13"), 405),
        ("bad key", upgrade_request("GET", "", "c2hvcnQ=", "13"), 400),
        ("version 8", upgrade_request("GET", "", KEY, "8"), 426),
    ];
    for (what, request, status) in cases {
        let ours = raw(hyper_addr, &request).await;
        let theirs = raw(tether_addr, &request).await;
        assert_eq!(ours.status, status, "{what}: {ours:?}");
        assert_eq!(theirs.status, status, "{what}: {theirs:?}");
        assert_eq!(ours.body, theirs.body, "{what}");
        for name in ["allow", "upgrade", "sec-websocket-version", "content-type"] {
            assert_eq!(ours.header(name), theirs.header(name), "{what}: {name}");
        }
    }
    let refused = raw(hyper_addr, "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await;
    assert_eq!(refused.header("sec-websocket-version"), Some("13"));
    assert_eq!(refused.header("upgrade"), Some("websocket"));
}

#[tokio::test]
async fn basic_auth_hook_answers_on_the_hyper_path() {
    let config = ServerConfig::default().basic_auth_user("tether", "ada", "s3cret");
    let (addr, _seen) = start(config, false).await;
    let url = format!("ws://{addr}/private");
    let refused = ClientBuilder::new(url.as_str())
        .connect()
        .await
        .expect_err("no credentials");
    assert_eq!(refused.status(), Some(401));
    let www = refused
        .response()
        .and_then(|r| r.headers.get_str("www-authenticate"))
        .map(str::to_owned);
    assert!(
        www.as_deref()
            .is_some_and(|v| v.starts_with("Basic realm=\"tether\"")),
        "{www:?}"
    );
    let mut ws = ClientBuilder::new(url.as_str())
        .header("Authorization", "Basic YWRhOnMzY3JldA==")
        .connect()
        .await
        .expect("credentials accepted");
    ws.send("hello").await.expect("send");
    let echo = within("echo", ws.recv())
        .await
        .expect("echo")
        .expect("echo");
    assert_eq!(echo.as_text(), Some("hello"));
    ws.close(1000, "").await.expect("close");
}

#[tokio::test]
async fn server_keepalive_pings_a_silent_client_on_the_hyper_path() {
    let config = ServerConfig::default().config(
        Config::default()
            .ping_interval(Some(Duration::from_millis(50)))
            .compression(None),
    );
    let (addr, _seen) = start(config, false).await;
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(upgrade_request("GET", "", KEY, "13").as_bytes())
        .await
        .expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    // The 101 answer, then a Ping frame (0x89) from the server's keepalive.
    let ping = within("a keepalive ping", async {
        loop {
            let n = tcp.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed before a ping: {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                assert!(buf.starts_with(b"HTTP/1.1 101 "), "{buf:?}");
                if let Some(&first) = buf.get(end + 4) {
                    return first;
                }
            }
        }
    })
    .await;
    assert_eq!(ping, 0x89, "a final Ping frame");
}

#[cfg(feature = "http2")]
#[tokio::test]
async fn websocket_over_h2c_extended_connect_rfc8441() {
    use http_body_util::Empty;
    use hyper::ext::Protocol;
    use tether::proto::Role;
    use tether::{DeflateConfig, WebSocket};

    let config = ServerConfig::default().subprotocol("tether.v1");
    let (addr, mut seen) = start(config, true).await;
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);

    let connect = |version: Option<&str>| {
        let mut builder = hyper::Request::builder()
            .method(hyper::Method::CONNECT)
            .uri(format!("http://{addr}/h2?room=1"))
            .version(hyper::Version::HTTP_2)
            .header("sec-websocket-protocol", "tether.v1")
            .header(
                "sec-websocket-extensions",
                DeflateConfig::default().client_offer(),
            )
            .extension(Protocol::from_static("websocket"));
        if let Some(version) = version {
            builder = builder.header("sec-websocket-version", version);
        }
        builder.body(Empty::<Bytes>::new()).expect("request")
    };

    // The server's SETTINGS (with ENABLE_CONNECT_PROTOCOL) may not have arrived yet when the
    // first request is ready: try again a few times.
    let mut refused = None;
    for _ in 0..50 {
        sender.ready().await.expect("ready");
        match sender.send_request(connect(None)).await {
            Ok(response) => {
                refused = Some(response);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let refused = refused.expect("the server to enable extended CONNECT");
    assert_eq!(
        refused.status(),
        426,
        "Sec-WebSocket-Version is still required"
    );
    assert_eq!(refused.headers()["sec-websocket-version"], "13");

    let mut response = within("the 200 answer", sender.send_request(connect(Some("13"))))
        .await
        .expect("extended CONNECT");
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert!(
        headers.get("sec-websocket-accept").is_none(),
        "no accept over h2"
    );
    assert!(headers.get("upgrade").is_none());
    assert_eq!(headers["sec-websocket-protocol"], "tether.v1");
    let answer = headers["sec-websocket-extensions"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let params = DeflateConfig::default()
        .client_accept(&answer)
        .expect("a valid permessage-deflate answer");
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
    let sent = exchange(&mut ws).await;
    // The client closes. Regression: hyper resets the stream once the server is done, and
    // the driver used to report that reset from its flush instead of reading the server's
    // Close.
    within("the close", ws.close(1000, "done"))
        .await
        .expect("a clean close over HTTP/2");
    assert_eq!(ws.close_code(), 1000);

    let seen = within("the handler's report", seen.recv())
        .await
        .expect("a report");
    assert_eq!(seen.path, "/h2?room=1");
    assert_eq!(seen.subprotocol.as_deref(), Some("tether.v1"));
    assert_eq!(seen.extensions.as_deref(), Some(answer.as_str()));
    assert_eq!(seen.echoed, sent);
    assert_eq!(seen.close_code, 1000);
}
