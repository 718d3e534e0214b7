//! Unix domain sockets in both roles: tether's client (`ws+unix://` URLs, and
//! `ClientBuilder::unix_socket` with a `ws://` or `wss://` URL) against tether's server
//! (`Server::bind_unix`), with permessage-deflate negotiated and checked on the wire, TLS,
//! hooks and limits, redirects, the graceful shutdown, the socket file's life, a reconnecting
//! client across a server restart, and a resumable session.
#![cfg(unix)]

mod support;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::pki::make_pki;
use tether::reconnect::Backoff;
use tether::session::{SessionEvent, SessionHandle, SessionServer, SessionServerConfig};
use tether::{
    ClientBuilder, Config, Error, ErrorKind, HttpResponse, MaybeTlsStream, Message, PeerAddr,
    Policy, RedirectError, Server, ServerConfig, ShutdownHandle, TlsConfig, WebSocket,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Bounds every wait, so that a bug fails the test instead of hanging it.
const GUARD: Duration = Duration::from_secs(10);

/// A directory of the test's own, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tether-unix-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the echo server's handler saw of one connection.
#[derive(Debug)]
struct Seen {
    path: String,
    host: Option<String>,
    extensions: Option<String>,
    peer: Option<PeerAddr>,
    tls: bool,
    close_code: u16,
}

/// A running echo server: its shutdown handle, its `serve` task and what its handler saw.
struct Echo {
    handle: ShutdownHandle,
    serving: JoinHandle<io::Result<()>>,
    seen: mpsc::UnboundedReceiver<Seen>,
}

impl Echo {
    /// What the handler saw of the next connection that ended.
    async fn next(&mut self) -> Seen {
        timeout(GUARD, self.seen.recv())
            .await
            .expect("a connection ended")
            .expect("the server runs")
    }
}

/// An echo server on the Unix socket `path`: it sends `greeting` first (if any), echoes
/// every message, closes with 4000 "asked" when it receives the text `close me`, and reports
/// what it saw when the connection ends.
async fn echo_server(path: &Path, config: ServerConfig, greeting: Option<&'static str>) -> Echo {
    let server = Server::bind_unix(path, config).await.unwrap();
    assert_eq!(server.unix_path(), Some(path));
    let handle = server.shutdown_handle();
    let (tx, seen) = mpsc::unbounded_channel();
    let serving = tokio::spawn(server.serve(move |mut ws, request| {
        let tx = tx.clone();
        async move {
            if let Some(greeting) = greeting {
                if ws.send(greeting).await.is_err() {
                    return;
                }
            }
            while let Some(Ok(msg)) = ws.recv().await {
                if msg.as_text() == Some("close me") {
                    let _ = ws.close(4000, "asked").await;
                    break;
                }
                if ws.send(msg).await.is_err() {
                    break;
                }
            }
            // Finish the closing handshake whoever started it.
            while ws.recv().await.is_some() {}
            let _ = tx.send(Seen {
                path: request.path.clone(),
                host: request.headers.get_str("host").map(str::to_owned),
                extensions: ws.extensions().map(str::to_owned),
                peer: ws.get_ref().peer_addr().ok(),
                tls: matches!(ws.get_ref(), MaybeTlsStream::ServerUnixTls(_)),
                close_code: ws.close_code(),
            });
        }
    }));
    Echo {
        handle,
        serving,
        seen,
    }
}

/// `len` bytes of text that compresses well.
fn text_of(len: usize) -> String {
    "tether over a unix socket. "
        .chars()
        .cycle()
        .take(len)
        .collect()
}

/// `len` bytes that do not compress (a xorshift sequence).
fn noise_of(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ len as u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sizes across the frame length encodings (7-bit, 16-bit, 64-bit) and past a deflate
/// window.
const SIZES: [usize; 7] = [0, 1, 125, 126, 65_535, 65_536, 300_000];

/// Text and binary messages of every size in [`SIZES`] come back unchanged and of the same
/// kind.
async fn round_trip(ws: &mut WebSocket) {
    for len in SIZES {
        for msg in [Message::text(text_of(len)), Message::binary(noise_of(len))] {
            ws.send(msg.clone()).await.unwrap();
            match timeout(GUARD, ws.recv()).await.expect("the echo came") {
                Some(Ok(back)) => {
                    assert_eq!(
                        back.is_text(),
                        msg.is_text(),
                        "{len} bytes: the kind is kept"
                    );
                    assert!(back == msg, "{len} bytes: the echo differs");
                }
                other => panic!("{len} bytes: expected the echo, got {other:?}"),
            }
        }
    }
}

fn deflate(extensions: Option<&str>) -> bool {
    extensions.is_some_and(|e| e.starts_with("permessage-deflate"))
}

#[tokio::test]
async fn a_ws_unix_url_round_trips_with_compression_and_both_close_codes() {
    let dir = TempDir::new("url");
    let path = dir.join("echo.sock");
    let mut server = echo_server(&path, ServerConfig::default(), None).await;
    let url = format!("ws+unix://{}:/echo?room=1", path.display());

    let mut ws = tether::connect(&url).await.unwrap();
    assert!(deflate(ws.extensions()), "{:?}", ws.extensions());
    assert!(matches!(ws.get_ref(), MaybeTlsStream::Unix(_)));
    assert!(ws.get_ref().tcp().is_none());
    assert_eq!(
        ws.get_ref().peer_addr().unwrap(),
        PeerAddr::Unix(Some(path.clone())),
        "a client's peer is the server's socket path"
    );
    round_trip(&mut ws).await;
    ws.close(1000, "bye").await.unwrap();
    assert_eq!(ws.close_code(), 1000);
    let seen = server.next().await;
    assert_eq!(seen.path, "/echo?room=1");
    assert_eq!(seen.host.as_deref(), Some("localhost"));
    assert!(deflate(seen.extensions.as_deref()), "{seen:?}");
    assert_eq!(
        seen.peer,
        Some(PeerAddr::Unix(None)),
        "clients bind no path"
    );
    assert_eq!(seen.peer.unwrap().to_string(), "unix:");
    assert!(!seen.tls);
    assert_eq!(seen.close_code, 1000);

    // The server closing: its code reaches the client.
    let mut ws = tether::connect(&url).await.unwrap();
    ws.send("close me").await.unwrap();
    assert!(timeout(GUARD, ws.recv()).await.unwrap().is_none());
    assert_eq!(ws.close_code(), 4000);
    assert_eq!(ws.peer_close().reason(), "asked");
    assert_eq!(server.next().await.close_code, 4000);
}

#[tokio::test]
async fn unix_socket_with_a_ws_url_sends_the_urls_host_and_resource() {
    let dir = TempDir::new("builder");
    let path = dir.join("echo.sock");
    let mut server = echo_server(&path, ServerConfig::default(), None).await;
    let mut ws = ClientBuilder::new("ws://app.internal:8080/feed?x=1")
        .unix_socket(&path)
        .connect()
        .await
        .unwrap();
    assert!(deflate(ws.extensions()), "{:?}", ws.extensions());
    round_trip(&mut ws).await;
    ws.close(1000, "").await.unwrap();
    let seen = server.next().await;
    assert_eq!(seen.path, "/feed?x=1");
    assert_eq!(seen.host.as_deref(), Some("app.internal:8080"));
    assert!(deflate(seen.extensions.as_deref()), "{seen:?}");
    assert_eq!(seen.close_code, 1000);

    // The builder's socket replaces a ws+unix URL's.
    let url = format!("ws+unix://{}:/other", dir.join("absent.sock").display());
    let mut ws = ClientBuilder::new(url)
        .unix_socket(&path)
        .connect()
        .await
        .unwrap();
    ws.close(1000, "").await.unwrap();
    assert_eq!(server.next().await.path, "/other");
}

#[tokio::test]
async fn a_socket_path_in_a_url_is_percent_decoded_and_the_resource_is_sent_as_written() {
    let dir = TempDir::new("encoded");
    let path = dir.join("my app.sock");
    let mut server = echo_server(&path, ServerConfig::default(), None).await;
    let encoded = format!("{}/my%20app.sock", dir.0.display());
    for (url, resource) in [
        (format!("ws+unix://{encoded}:/a%20b:c"), "/a%20b:c"),
        (format!("ws+unix://{encoded}"), "/"),
        (format!("ws+unix://{encoded}:"), "/"),
    ] {
        let mut ws = tether::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        ws.close(1000, "").await.unwrap();
        assert_eq!(server.next().await.path, resource, "{url}");
    }
}

#[tokio::test]
async fn malformed_unix_urls_are_invalid_before_any_attempt() {
    for url in [
        "ws+unix://somehost/tmp/x.sock:/",
        "ws+unix:///tmp/x.sock:no-slash",
        "ws+unix::/resource",
        "ws+unix:///tmp/x.sock:/#fragment",
    ] {
        let e = tether::connect(url).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidUri, "{url}: {e:?}");
    }
    // A well-formed URL whose socket is missing is an I/O error, which reconnects retry.
    let e = tether::connect("ws+unix:///nonexistent/tether.sock:/")
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Io(io) if io.kind() == io::ErrorKind::NotFound),
        "{e:?}"
    );
}

/// Forwards one connection from `front` to `back`, counting the bytes each way; returns
/// (client to server, server to client) once both directions ended.
fn counting_relay(front: &Path, back: PathBuf) -> JoinHandle<(u64, u64)> {
    let listener = UnixListener::bind(front).unwrap();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = UnixStream::connect(&back).await.unwrap();
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        let up = Arc::new(AtomicU64::new(0));
        let down = Arc::new(AtomicU64::new(0));
        tokio::join!(
            pump(client_read, server_write, &up),
            pump(server_read, client_write, &down)
        );
        (up.load(Ordering::SeqCst), down.load(Ordering::SeqCst))
    })
}

async fn pump(
    mut from: tokio::net::unix::OwnedReadHalf,
    mut to: tokio::net::unix::OwnedWriteHalf,
    count: &AtomicU64,
) {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                count.fetch_add(n as u64, Ordering::SeqCst);
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

#[tokio::test]
async fn compression_shrinks_what_crosses_the_socket() {
    const LEN: usize = 256 << 10;
    let dir = TempDir::new("deflate");
    let path = dir.join("echo.sock");
    let mut server = echo_server(&path, ServerConfig::default(), None).await;
    for compress in [true, false] {
        let relay_path = dir.join(&format!("relay-{compress}.sock"));
        let relay = counting_relay(&relay_path, path.clone());
        let mut config = Config::default();
        if !compress {
            config = config.compression(None);
        }
        let mut ws = ClientBuilder::new("ws://localhost/")
            .unix_socket(&relay_path)
            .config(config)
            .connect()
            .await
            .unwrap();
        assert_eq!(deflate(ws.extensions()), compress);
        let msg = Message::text(text_of(LEN));
        ws.send(msg.clone()).await.unwrap();
        assert!(timeout(GUARD, ws.recv()).await.unwrap().unwrap().unwrap() == msg);
        ws.close(1000, "").await.unwrap();
        drop(ws);
        let (up, down) = timeout(GUARD, relay).await.unwrap().unwrap();
        assert_eq!(deflate(server.next().await.extensions.as_deref()), compress);
        if compress {
            assert!(up < 8 << 10, "client to server: {up} bytes for {LEN}");
            assert!(down < 8 << 10, "server to client: {down} bytes for {LEN}");
        } else {
            assert!(up > LEN as u64, "client to server: {up} bytes for {LEN}");
            assert!(
                down > LEN as u64,
                "server to client: {down} bytes for {LEN}"
            );
        }
    }
}

#[tokio::test]
async fn tls_over_a_unix_socket_verifies_the_urls_host() {
    let dir = TempDir::new("tls");
    let path = dir.join("tls.sock");
    let pki = make_pki(&["localhost", "app.internal"]);
    let (ca, cert, key) = (pki.ca_pem, pki.cert_pem, pki.key_pem);
    let tls = tether::tls::server_config_from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
    let mut server = echo_server(&path, ServerConfig::default().tls(tls), None).await;
    let trusting = || {
        TlsConfig::default()
            .only_added_cas()
            .add_ca_pem(ca.as_bytes())
            .unwrap()
    };

    let url = format!("wss+unix://{}:/secure", path.display());
    let mut ws = ClientBuilder::new(&url)
        .tls(trusting())
        .connect()
        .await
        .unwrap();
    assert!(matches!(ws.get_ref(), MaybeTlsStream::ClientUnixTls(_)));
    assert!(ws.get_ref().unix().is_some() && ws.get_ref().tcp().is_none());
    assert!(deflate(ws.extensions()));
    round_trip(&mut ws).await;
    ws.close(1000, "").await.unwrap();
    let seen = server.next().await;
    assert!(seen.tls, "the server side ran TLS over the socket");
    assert_eq!((seen.path.as_str(), seen.close_code), ("/secure", 1000));
    assert_eq!(seen.host.as_deref(), Some("localhost"));

    let mut ws = ClientBuilder::new("wss://app.internal/feed")
        .unix_socket(&path)
        .tls(trusting())
        .connect()
        .await
        .unwrap();
    ws.close(1000, "").await.unwrap();
    assert_eq!(server.next().await.host.as_deref(), Some("app.internal"));

    // The certificate must name the URL's host, socket or not.
    let e = ClientBuilder::new("wss://other.example/")
        .unix_socket(&path)
        .tls(trusting())
        .connect()
        .await
        .unwrap_err();
    assert!(e.is_certificate_error(), "{e:?}");
    // And the default roots do not trust the private CA.
    let e = tether::connect(&url).await.unwrap_err();
    assert!(e.is_certificate_error(), "{e:?}");
}

#[tokio::test]
async fn hooks_and_the_open_timeout_apply_on_a_unix_socket_but_on_accept_is_not_called() {
    let dir = TempDir::new("hooks");
    let path = dir.join("hooks.sock");
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&asked);
    let config = ServerConfig::default()
        .open_timeout(Duration::from_millis(300))
        // Called, it would refuse everything: it must not be.
        .on_accept(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
            false
        })
        .process_request(|req| {
            (req.path == "/private").then(|| HttpResponse::text(401, "who are you?\n"))
        });
    let mut server = echo_server(&path, config, None).await;
    let url = |resource: &str| format!("ws+unix://{}:{resource}", path.display());

    let e = tether::connect(url("/private")).await.unwrap_err();
    assert_eq!(e.status(), Some(401), "{e:?}");
    let mut ws = tether::connect(url("/")).await.unwrap();
    ws.close(1000, "").await.unwrap();
    assert_eq!(server.next().await.close_code, 1000);
    assert_eq!(
        asked.load(Ordering::SeqCst),
        0,
        "on_accept is for TCP peers"
    );

    // A client that never sends a byte is dropped at the open timeout.
    let mut idle = UnixStream::connect(&path).await.unwrap();
    let mut byte = [0u8; 1];
    let n = timeout(GUARD, idle.read(&mut byte)).await.unwrap().unwrap();
    assert_eq!(n, 0, "the server closed the idle connection");
}

#[tokio::test]
async fn the_connection_limit_refuses_with_503_on_a_unix_socket() {
    let dir = TempDir::new("limit");
    let path = dir.join("limit.sock");
    let config = ServerConfig::default()
        .max_connections(Some(1))
        .busy_retry_after(Duration::from_secs(3));
    let _server = echo_server(&path, config, None).await;
    let url = format!("ws+unix://{}:/", path.display());
    let mut held = tether::connect(&url).await.unwrap();
    let e = tether::connect(&url).await.unwrap_err();
    assert_eq!(e.status(), Some(503), "{e:?}");
    let retry_after: u64 = e
        .response()
        .and_then(|r| r.headers.get_str("retry-after"))
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After");
    assert!((1..=3).contains(&retry_after), "{retry_after}");
    // The one admitted connection works throughout.
    held.send("still here").await.unwrap();
    assert_eq!(
        timeout(GUARD, held.recv()).await.unwrap().unwrap().unwrap(),
        Message::text("still here")
    );
}

#[tokio::test]
async fn redirects_over_a_unix_socket_stay_on_the_socket_and_the_origin() {
    let dir = TempDir::new("redirect");
    let path = dir.join("redirect.sock");
    let config = ServerConfig::default().process_request(|req| {
        let location = match req.path {
            "/old" => "/new",
            "/http" => "http://localhost/new",
            "/elsewhere" => "ws://elsewhere.example/new",
            "/port" => "ws://localhost:8080/new",
            "/secure" => "wss://localhost/new",
            "/unix" => "ws+unix:///tmp/other.sock:/new",
            _ => return None,
        };
        Some(HttpResponse::text(302, "moved\n").header("Location", location))
    });
    let mut server = echo_server(&path, config, None).await;
    let url = |resource: &str| format!("ws+unix://{}:{resource}", path.display());

    // Same origin, relative or absolute (http:// maps to ws://): followed over the socket.
    for from in ["/old", "/http"] {
        let mut ws = tether::connect(url(from)).await.unwrap();
        ws.close(1000, "").await.unwrap();
        let seen = server.next().await;
        assert_eq!(seen.path, "/new", "{from}");
        assert_eq!(seen.host.as_deref(), Some("localhost"));
    }
    // Through the builder, the origin is the URL's.
    let mut ws = ClientBuilder::new("ws://app.internal/old")
        .unix_socket(&path)
        .connect()
        .await
        .unwrap();
    ws.close(1000, "").await.unwrap();
    let seen = server.next().await;
    assert_eq!(
        (seen.path.as_str(), seen.host.as_deref()),
        ("/new", Some("app.internal"))
    );
    // Another host, port or scheme, or another socket: refused.
    for from in ["/elsewhere", "/port", "/secure", "/unix"] {
        let e = tether::connect(url(from)).await.unwrap_err();
        assert!(
            matches!(&e, Error::Redirect(RedirectError::Forbidden(_))),
            "{from}: {e:?}"
        );
    }
}

#[tokio::test]
async fn graceful_shutdown_over_a_unix_socket_closes_with_1001_and_removes_the_file() {
    let dir = TempDir::new("shutdown");
    let path = dir.join("shutdown.sock");
    let server = echo_server(&path, ServerConfig::default(), None).await;
    let url = format!("ws+unix://{}:/", path.display());
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(tether::connect(&url).await.unwrap());
    }
    server.handle.shutdown();
    for ws in &mut clients {
        assert!(timeout(GUARD, ws.recv()).await.unwrap().is_none());
        assert_eq!(ws.close_code(), 1001);
    }
    timeout(GUARD, server.serving)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!path.exists(), "the socket file is removed");
    // The path is free for the next server.
    let _again = echo_server(&path, ServerConfig::default(), None).await;
    let mut ws = tether::connect(&url).await.unwrap();
    ws.close(1000, "").await.unwrap();
}

#[tokio::test]
async fn bind_unix_replaces_a_stale_socket_but_not_a_live_one_nor_another_file() {
    let dir = TempDir::new("bind");
    let path = dir.join("bind.sock");
    // What a crashed server leaves: a socket file nobody listens on.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let server = echo_server(&path, ServerConfig::default(), None).await;
    let url = format!("ws+unix://{}:/", path.display());

    let e = Server::bind_unix(&path, ServerConfig::default())
        .await
        .err()
        .expect("the path is in use");
    assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
    // The failed bind took nothing from the live server.
    let mut ws = tether::connect(&url).await.unwrap();
    ws.close(1000, "").await.unwrap();

    let file = dir.join("precious.txt");
    std::fs::write(&file, "keep me").unwrap();
    let e = Server::bind_unix(&file, ServerConfig::default())
        .await
        .err()
        .expect("not a socket");
    assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");

    // A Unix server has no TCP address.
    let unix = Server::bind_unix(dir.join("other.sock"), ServerConfig::default())
        .await
        .unwrap();
    assert_eq!(
        unix.local_addr().unwrap_err().kind(),
        io::ErrorKind::Unsupported
    );
    drop(unix);
    assert!(!dir.join("other.sock").exists(), "dropped, the file goes");
    server.handle.shutdown();
}

/// Quick retries: the server is down on purpose.
fn fast_policy() -> Policy {
    Policy::default()
        .backoff(Backoff {
            initial: Duration::from_millis(10),
            min: Duration::from_millis(10),
            factor: 1.5,
            max: Duration::from_millis(50),
            ..Backoff::default()
        })
        .reconnect_delay(Duration::ZERO)
        .min_uptime(Duration::ZERO)
}

async fn recv_session(session: &SessionHandle) -> String {
    match timeout(GUARD, session.recv())
        .await
        .expect("a message came")
    {
        Some(Ok(Message::Text(t))) => t.to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

async fn recv_text(ws: &mut WebSocket) -> String {
    match timeout(GUARD, ws.recv()).await.expect("a message came") {
        Some(Ok(Message::Text(t))) => t.to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

#[tokio::test]
async fn a_reconnecting_client_comes_back_after_the_server_restarts_on_the_same_path() {
    let dir = TempDir::new("reconnect");
    let path = dir.join("restart.sock");
    let first = echo_server(&path, ServerConfig::default(), Some("first")).await;
    let mut connections = ClientBuilder::new(format!("ws+unix://{}:/", path.display()))
        .reconnecting()
        .policy(fast_policy())
        .stream();
    let mut ws = timeout(GUARD, connections.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(recv_text(&mut ws).await, "first");
    ws.send("one").await.unwrap();
    assert_eq!(recv_text(&mut ws).await, "one");

    first.handle.shutdown();
    assert!(timeout(GUARD, ws.recv()).await.unwrap().is_none());
    assert_eq!(ws.close_code(), 1001);
    timeout(GUARD, first.serving)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!path.exists());
    // The client retries (the socket is missing) until the next server is there.
    let _second = echo_server(&path, ServerConfig::default(), Some("second")).await;
    let mut ws = timeout(GUARD, connections.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(recv_text(&mut ws).await, "second");
    ws.send("two").await.unwrap();
    assert_eq!(recv_text(&mut ws).await, "two");
    assert!(deflate(ws.extensions()));
    ws.close(1000, "").await.unwrap();
}

#[tokio::test]
async fn a_session_resumes_over_a_unix_socket_after_a_server_restart() {
    let dir = TempDir::new("session");
    let path = dir.join("session.sock");
    let sessions = SessionServer::new(
        SessionServerConfig::default(),
        |session: SessionHandle| async move {
            while let Some(Ok(msg)) = session.recv().await {
                if session.send(msg).await.is_err() {
                    break;
                }
            }
        },
    );
    let start = |sessions: SessionServer| {
        let path = path.clone();
        async move {
            let config = sessions.server_config(ServerConfig::default());
            let server = Server::bind_unix(&path, config).await.unwrap();
            let handle = server.shutdown_handle();
            let serving = tokio::spawn(server.serve(move |ws, _| sessions.serve(ws)));
            (handle, serving)
        }
    };
    let (handle, serving) = start(sessions.clone()).await;

    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let events = Arc::clone(&log);
    let session = ClientBuilder::new(format!("ws+unix://{}:/", path.display()))
        .reconnecting()
        .policy(fast_policy())
        .session()
        .on_event(move |e| {
            let entry = match e {
                SessionEvent::Connected { .. } => "connected",
                SessionEvent::Resumed { .. } => "resumed",
                SessionEvent::Disconnected { .. } => "disconnected",
                _ => "other",
            };
            events.lock().unwrap().push(entry.to_owned());
        })
        .start();
    for i in 0..5 {
        session.send(format!("m{i}")).await.unwrap();
    }
    for i in 0..5 {
        assert_eq!(recv_session(&session).await, format!("m{i}"));
    }

    // A restart (1012): the session waits, then resumes on the next server at the same path.
    handle.restart();
    timeout(GUARD, serving).await.unwrap().unwrap().unwrap();
    let (_handle, _serving) = start(sessions.clone()).await;
    for i in 5..10 {
        session.send(format!("m{i}")).await.unwrap();
    }
    for i in 5..10 {
        assert_eq!(recv_session(&session).await, format!("m{i}"));
    }
    timeout(GUARD, session.close()).await.unwrap().unwrap();
    let log = log.lock().unwrap().clone();
    assert_eq!(
        log.first().map(String::as_str),
        Some("connected"),
        "{log:?}"
    );
    assert!(log.iter().any(|e| e == "resumed"), "{log:?}");
    assert!(!log.iter().skip(1).any(|e| e == "connected"), "{log:?}");
}
