//! Integration tests of opening client connections against small servers written here with
//! raw sockets: rejected handshakes, bad answers, timeouts, redirects, invalid URLs, refused
//! connections and HTTP CONNECT proxies.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tether::{ClientBuilder, Error, Message, Phase, RedirectError, Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Instant};

/// Bounds waits on real sockets so that a bug fails the test instead of hanging it.
const GUARD: Duration = Duration::from_secs(10);

/// What a scripted server does with one request.
enum Reply {
    /// Write these bytes and close.
    Bytes(Vec<u8>),
    /// Close without answering.
    Close,
    /// Keep the connection open and never answer.
    Silent,
    /// Answer with a valid 101 and keep the connection open.
    Accept,
}

/// A server on loopback that answers each request head as its script says and records the
/// heads it received.
struct Scripted {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl Scripted {
    async fn start(script: impl Fn(&str) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(script);
        let recorded = heads.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let script = script.clone();
                let recorded = recorded.clone();
                tokio::spawn(async move { serve_one(tcp, &*script, &recorded).await });
            }
        });
        Self { addr, heads }
    }

    fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

async fn read_head(tcp: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tcp.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Some(String::from_utf8(head).unwrap())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn request_path(head: &str) -> &str {
    head.split(' ').nth(1).unwrap()
}

async fn serve_one(
    mut tcp: TcpStream,
    script: &(dyn Fn(&str) -> Reply + Send + Sync),
    heads: &Mutex<Vec<String>>,
) {
    let Some(head) = read_head(&mut tcp).await else {
        return;
    };
    heads.lock().unwrap().push(head.clone());
    match script(&head) {
        Reply::Bytes(bytes) => {
            let _ = tcp.write_all(&bytes).await;
            let _ = tcp.shutdown().await;
        }
        Reply::Close => {}
        Reply::Silent => drain(tcp).await,
        Reply::Accept => {
            let key = header(&head, "sec-websocket-key").unwrap();
            let answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                tether::proto::handshake::accept_key(key)
            );
            tcp.write_all(answer.as_bytes()).await.unwrap();
            drain(tcp).await;
        }
    }
}

/// Reads until the client goes away.
async fn drain(mut tcp: TcpStream) {
    let mut buf = [0u8; 1024];
    while tcp.read(&mut buf).await.is_ok_and(|n| n > 0) {}
}

fn redirect(status: u16, location: &str) -> Reply {
    Reply::Bytes(
        format!("HTTP/1.1 {status} Moved\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n")
            .into_bytes(),
    )
}

/// A tether echo server.
async fn echo_server() -> SocketAddr {
    let server = Server::bind("127.0.0.1:0", ServerConfig::default())
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.serve(|mut ws, _request| async move {
        while let Some(Ok(msg)) = ws.recv().await {
            if ws.send(msg).await.is_err() {
                break;
            }
        }
    }));
    addr
}

async fn assert_echo(ws: &mut tether::WebSocket) {
    ws.send("are you there?").await.unwrap();
    match timeout(GUARD, ws.recv()).await.unwrap() {
        Some(Ok(msg)) => assert_eq!(msg, Message::text("are you there?")),
        other => panic!("expected the echo, got {other:?}"),
    }
}

// ----- rejected and broken handshakes -----

#[tokio::test]
async fn non_101_answer_keeps_status_headers_and_body() {
    let srv = Scripted::start(|_| {
        Reply::Bytes(
            b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"x\"\r\n\
              X-Request-Id: 42\r\nContent-Length: 12\r\n\r\nlogin first!"
                .to_vec(),
        )
    })
    .await;
    let err = tether::connect(&srv.url("/")).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "server rejected WebSocket connection: HTTP 401 Unauthorized"
    );
    assert_eq!(err.status(), Some(401));
    let Error::Status(response) = &err else {
        panic!("expected Error::Status, got {err:?}");
    };
    assert_eq!(response.status, 401);
    assert_eq!(response.reason, "Unauthorized");
    assert_eq!(
        response.headers.get_str("www-authenticate"),
        Some("Basic realm=\"x\"")
    );
    assert_eq!(response.headers.get_str("x-request-id"), Some("42"));
    assert_eq!(response.body, b"login first!");
    assert!(!response.body_truncated);
}

#[tokio::test]
async fn non_101_answer_with_body_until_eof_is_kept_whole() {
    let srv = Scripted::start(|_| {
        Reply::Bytes(
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\n\r\ncome back later".to_vec(),
        )
    })
    .await;
    let err = tether::connect(&srv.url("/")).await.unwrap_err();
    let response = err.response().expect("the response is kept");
    assert_eq!(response.status, 503);
    assert_eq!(response.headers.get_str("retry-after"), Some("7"));
    assert_eq!(response.body, b"come back later");
}

#[tokio::test]
async fn garbage_answer_is_invalid_response() {
    let srv = Scripted::start(|_| Reply::Bytes(b"SSH-2.0-OpenSSH_9.0\r\n\r\n".to_vec())).await;
    let err = tether::connect(&srv.url("/")).await.unwrap_err();
    assert!(matches!(err, Error::InvalidResponse { .. }), "got {err:?}");
}

#[tokio::test]
async fn wrong_accept_key_is_invalid_response_with_the_response() {
    let srv = Scripted::start(|_| {
        Reply::Bytes(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n"
                .to_vec(),
        )
    })
    .await;
    let err = tether::connect(&srv.url("/")).await.unwrap_err();
    let Error::InvalidResponse { response, .. } = &err else {
        panic!("expected InvalidResponse, got {err:?}");
    };
    assert_eq!(response.as_ref().map(|r| r.status), Some(101));
}

#[tokio::test]
async fn close_before_answering_is_eof() {
    let srv = Scripted::start(|_| Reply::Close).await;
    let err = tether::connect(&srv.url("/")).await.unwrap_err();
    assert!(matches!(err, Error::Eof), "got {err:?}");
    assert_eq!(srv.heads().len(), 1, "the request was sent");
}

#[tokio::test(start_paused = true)]
async fn never_answering_times_out_in_the_handshake_phase() {
    let srv = Scripted::start(|_| Reply::Silent).await;
    let start = Instant::now();
    let builder = ClientBuilder::new(srv.url("/")).open_timeout(Duration::from_secs(5));
    // Virtual time: costs nothing, and turns a missing timeout into a failure.
    let err = timeout(Duration::from_secs(600), builder.connect())
        .await
        .expect("the open timeout did not fire")
        .unwrap_err();
    assert!(
        matches!(err, Error::Timeout(Phase::Handshake)),
        "got {err:?}"
    );
    assert!(start.elapsed() >= Duration::from_secs(5));
}

#[tokio::test]
async fn accepted_connection_exposes_the_101_response() {
    let srv = Scripted::start(|_| Reply::Accept).await;
    let ws = ClientBuilder::new(srv.url("/room?id=7"))
        .header("X-Custom", "value")
        .origin("https://example.org")
        .connect()
        .await
        .unwrap();
    assert_eq!(ws.response().map(|r| r.status), Some(101));
    let head = &srv.heads()[0];
    assert!(head.starts_with("GET /room?id=7 HTTP/1.1\r\n"), "{head}");
    assert_eq!(header(head, "x-custom"), Some("value"));
    assert_eq!(header(head, "origin"), Some("https://example.org"));
    assert_eq!(
        header(head, "host"),
        Some(format!("127.0.0.1:{}", srv.addr.port()).as_str())
    );
    assert_eq!(header(head, "user-agent"), Some(tether::USER_AGENT));
}

// ----- redirects -----

#[tokio::test]
async fn redirect_to_a_second_server_connects_there() {
    let second = Scripted::start(|_| Reply::Accept).await;
    let target = second.url("/landed");
    let first = Scripted::start(move |_| redirect(302, &target)).await;
    let ws = tether::connect(&first.url("/start")).await.unwrap();
    assert_eq!(ws.response().map(|r| r.status), Some(101));
    assert_eq!(first.heads().len(), 1);
    let heads = second.heads();
    assert_eq!(heads.len(), 1);
    assert_eq!(request_path(&heads[0]), "/landed");
}

#[tokio::test]
async fn relative_and_http_redirects_are_followed() {
    let second = Scripted::start(|_| Reply::Accept).await;
    // http:// maps to ws://.
    let http_target = format!("http://{}/via-http", second.addr);
    let first = Scripted::start(move |head| match request_path(head) {
        "/old" => redirect(301, "/new"),
        "/new" => redirect(307, &http_target),
        other => panic!("unexpected request for {other}"),
    })
    .await;
    tether::connect(&first.url("/old")).await.unwrap();
    let paths: Vec<String> = first
        .heads()
        .iter()
        .map(|h| request_path(h).to_owned())
        .collect();
    assert_eq!(paths, ["/old", "/new"]);
    assert_eq!(request_path(&second.heads()[0]), "/via-http");
}

#[tokio::test]
async fn redirect_loop_is_detected() {
    let srv = Scripted::start(|head| match request_path(head) {
        "/a" => redirect(302, "/b"),
        _ => redirect(302, "/a"),
    })
    .await;
    let err = tether::connect(&srv.url("/a")).await.unwrap_err();
    match &err {
        Error::Redirect(RedirectError::Loop(url)) => assert!(url.ends_with("/a"), "{url}"),
        other => panic!("expected a redirect loop, got {other:?}"),
    }
    assert_eq!(srv.heads().len(), 2, "stopped at the first repeated URL");
}

#[tokio::test]
async fn more_than_ten_redirects_are_too_many() {
    let srv = Scripted::start(|head| {
        let n: u32 = request_path(head)[1..].parse().unwrap();
        redirect(302, &format!("/{}", n + 1))
    })
    .await;
    let err = tether::connect(&srv.url("/0")).await.unwrap_err();
    assert!(
        matches!(err, Error::Redirect(RedirectError::TooMany { max: 10 })),
        "got {err:?}"
    );
    // The first request and ten redirects followed.
    assert_eq!(srv.heads().len(), 11);

    let err = ClientBuilder::new(srv.url("/100"))
        .max_redirects(2)
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Redirect(RedirectError::TooMany { max: 2 })),
        "got {err:?}"
    );
    assert_eq!(srv.heads().len(), 11 + 3);
}

#[tokio::test]
async fn redirect_without_location_is_an_error() {
    let srv = Scripted::start(|_| {
        Reply::Bytes(b"HTTP/1.1 302 Found\r\nContent-Length: 0\r\n\r\n".to_vec())
    })
    .await;
    let err = tether::connect(&srv.url("/")).await.unwrap_err();
    assert!(
        matches!(err, Error::Redirect(RedirectError::MissingLocation)),
        "got {err:?}"
    );
}

#[tokio::test]
async fn redirect_from_wss_to_ws_is_forbidden() {
    let plain = Scripted::start(|_| Reply::Accept).await;
    let target = plain.url("/");
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let tls = tether::tls::server_config_from_pem(
        certified.cert.pem().as_bytes(),
        certified.signing_key.serialize_pem().as_bytes(),
    )
    .unwrap();
    let config = ServerConfig::default().tls(tls).process_request(move |_| {
        Some(tether::HttpResponse::text(302, "").header("Location", target.clone()))
    });
    let server = Server::bind("127.0.0.1:0", config).await.unwrap();
    let port = server.local_addr().unwrap().port();
    tokio::spawn(server.serve(|_ws, _request| async {}));

    let err = ClientBuilder::new(format!("wss://localhost:{port}/"))
        .tls(tether::TlsConfig::default().danger_accept_invalid_certs())
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Redirect(RedirectError::Forbidden(_))),
        "got {err:?}"
    );
    assert!(plain.heads().is_empty(), "the plain server was contacted");
}

#[tokio::test]
async fn cross_origin_redirect_drops_credentials() {
    let second = Scripted::start(|_| Reply::Accept).await;
    let target = second.url("/elsewhere");
    let first = Scripted::start(move |head| match request_path(head) {
        // Same origin: credentials stay.
        "/start" => redirect(302, "/same"),
        _ => redirect(302, &target),
    })
    .await;
    tether::ClientBuilder::new(first.url("/start"))
        .header("Authorization", "Bearer secret")
        .header("Cookie", "session=1")
        .header("X-Keep", "yes")
        .connect()
        .await
        .unwrap();
    let firsts = first.heads();
    assert_eq!(firsts.len(), 2);
    for head in &firsts {
        assert_eq!(header(head, "authorization"), Some("Bearer secret"));
        assert_eq!(header(head, "cookie"), Some("session=1"));
    }
    let head = &second.heads()[0];
    assert_eq!(header(head, "authorization"), None, "{head}");
    assert_eq!(header(head, "cookie"), None, "{head}");
    assert_eq!(header(head, "x-keep"), Some("yes"));

    // Credentials from the URL are dropped the same way.
    let url = format!("ws://user:pass@{}/start", first.addr);
    tether::connect(&url).await.unwrap();
    let firsts = first.heads();
    assert_eq!(
        header(&firsts[2], "authorization"),
        Some("Basic dXNlcjpwYXNz")
    );
    let head = &second.heads()[1];
    assert_eq!(header(head, "authorization"), None, "{head}");
}

// ----- URLs and TCP -----

#[tokio::test]
async fn invalid_urls_are_refused_before_connecting() {
    for url in [
        "http://x",
        "ws://",
        "ws://h/#frag",
        "not a url",
        "ftp://example.com/",
    ] {
        let err = tether::connect(url).await.unwrap_err();
        assert!(matches!(err, Error::InvalidUri(_)), "{url}: got {err:?}");
    }
}

#[tokio::test]
async fn refused_port_is_an_io_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = tether::connect(&format!("ws://{addr}/")).await.unwrap_err();
    match &err {
        Error::Io(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused),
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

// ----- HTTP CONNECT proxy -----

/// A CONNECT proxy that records request heads. With `require_auth`, requests without
/// `Proxy-Authorization` get 407.
async fn connect_proxy(require_auth: bool) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let recorded = heads.clone();
    tokio::spawn(async move {
        loop {
            let (mut client, _) = listener.accept().await.unwrap();
            let recorded = recorded.clone();
            tokio::spawn(async move {
                let Some(head) = read_head(&mut client).await else {
                    return;
                };
                recorded.lock().unwrap().push(head.clone());
                if require_auth && header(&head, "proxy-authorization").is_none() {
                    let _ = client
                        .write_all(
                            b"HTTP/1.1 407 Proxy Authentication Required\r\n\
                              Proxy-Authenticate: Basic realm=\"proxy\"\r\n\
                              Content-Length: 0\r\n\r\n",
                        )
                        .await;
                    return;
                }
                let authority = request_path(&head).to_owned();
                let mut upstream = TcpStream::connect(authority).await.unwrap();
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (addr, heads)
}

#[tokio::test]
async fn connects_through_an_http_connect_proxy() {
    let target = echo_server().await;
    let (proxy, heads) = connect_proxy(false).await;
    let mut ws = ClientBuilder::new(format!("ws://{target}/"))
        .proxy(format!("http://{proxy}"))
        .connect()
        .await
        .unwrap();
    assert_echo(&mut ws).await;
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 1);
    assert!(
        heads[0].starts_with(&format!("CONNECT 127.0.0.1:{} HTTP/1.1\r\n", target.port())),
        "{}",
        heads[0]
    );
}

#[tokio::test]
async fn proxy_credentials_from_the_proxy_url_are_sent() {
    let target = echo_server().await;
    let (proxy, heads) = connect_proxy(true).await;
    let mut ws = ClientBuilder::new(format!("ws://{target}/"))
        .proxy(format!("http://pu:pp@{proxy}"))
        .connect()
        .await
        .unwrap();
    assert_echo(&mut ws).await;
    let head = heads.lock().unwrap()[0].clone();
    assert_eq!(header(&head, "proxy-authorization"), Some("Basic cHU6cHA="));
}

#[tokio::test]
async fn proxy_answering_407_is_a_proxy_error() {
    let target = echo_server().await;
    let (proxy, heads) = connect_proxy(true).await;
    let err = ClientBuilder::new(format!("ws://{target}/"))
        .proxy(format!("http://{proxy}"))
        .connect()
        .await
        .unwrap_err();
    let Error::Proxy(p) = &err else {
        panic!("expected a proxy error, got {err:?}");
    };
    assert_eq!(p.status, Some(407));
    // The challenge reaches the error (and so the policy hook).
    assert_eq!(p.authenticate, vec!["Basic realm=\"proxy\"".to_owned()]);
    assert!(err.to_string().contains("407"), "{err}");
    assert!(matches!(
        tether::reconnect::default_decision(&err),
        tether::Decision::Fatal
    ));
    assert_eq!(heads.lock().unwrap().len(), 1);
}
