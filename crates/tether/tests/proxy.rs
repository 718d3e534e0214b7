//! Through real proxies from Debian: tinyproxy (HTTP CONNECT, with and without Basic auth),
//! tinyproxy behind a TLS terminator of the test's own (an `https://` proxy), and microsocks
//! (SOCKS5, `socks5://` and `socks5h://`, with and without a user name and password). For
//! each, `ws://` and `wss://` with compression on, with and without credentials; missing or
//! wrong credentials are fatal at the first attempt, with the proxy's challenge in the
//! error; a SOCKS5 refusal to reach the server is transient, and a proxy that restarts is
//! retried while a resumable session carries on with nothing lost or repeated.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use support::pki::{make_pki, Pki};
use support::proxies::ProxyProcess;
use tether::reconnect::{default_decision, ReconnectEvent};
use tether::session::{SessionServer, SessionServerConfig};
use tether::{
    Backoff, ClientBuilder, Decision, Error, ErrorKind, Message, Policy, Server, ServerConfig,
    TlsConfig,
};
use tokio::time::timeout;

const GUARD: Duration = Duration::from_secs(20);

/// A tether echo server on 127.0.0.1, with TLS when `pki` is given.
async fn echo_server(pki: Option<&Pki>) -> SocketAddr {
    echo_server_on(IpAddr::from([127, 0, 0, 1]), pki).await
}

/// The address `localhost` resolves to first here. A SOCKS5 connection by name goes to
/// that one alone (`socks5://` sends the first address tether resolves, `socks5h://` lets the
/// proxy resolve and it connects to its first), so a server reached as `localhost` through
/// SOCKS must listen there: 127.0.0.1, or ::1 where the hosts file lists it first.
async fn localhost() -> IpAddr {
    tokio::net::lookup_host("localhost:0")
        .await
        .expect("localhost resolves")
        .next()
        .expect("localhost has an address")
        .ip()
}

/// A tether echo server on `ip`, with TLS when `pki` is given.
async fn echo_server_on(ip: IpAddr, pki: Option<&Pki>) -> SocketAddr {
    let mut config = ServerConfig::default();
    if let Some(pki) = pki {
        config = config.tls(
            tether::tls::server_config_from_pem(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes())
                .unwrap(),
        );
    }
    let server = Server::bind(SocketAddr::new(ip, 0), config).await.unwrap();
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

/// A TLS terminator on 127.0.0.1: accepts TLS with `server` (a certificate for `localhost`)
/// and forwards the plain bytes to `backend`. Runs until the test's runtime ends. Returns its
/// address.
async fn tls_terminator(server: Arc<rustls::ServerConfig>, backend: SocketAddr) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

fn trusting(pki: &Pki) -> TlsConfig {
    TlsConfig::default()
        .only_added_cas()
        .add_ca_pem(pki.ca_pem.as_bytes())
        .unwrap()
}

/// Echo round trips of text and binary messages, compression negotiated.
async fn assert_echoes(mut ws: tether::WebSocket, label: &str) {
    assert!(
        ws.extensions()
            .is_some_and(|e| e.contains("permessage-deflate")),
        "{label}: compression negotiated, got {:?}",
        ws.extensions()
    );
    for msg in [
        Message::text("through the proxy"),
        Message::binary((0..70_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>()),
        Message::text("é".repeat(5000)),
    ] {
        ws.send(msg.clone()).await.unwrap();
        let echo = timeout(GUARD, ws.recv()).await.expect("echo in time");
        assert!(
            matches!(&echo, Some(Ok(m)) if *m == msg),
            "{label}: the echo"
        );
    }
    ws.close(1000, "").await.unwrap();
    assert_eq!(ws.close_code(), 1000, "{label}");
}

/// Connects to the echo server at `server` (as `host`, with TLS when `pki` is given) through
/// `proxy`, and checks the round trips.
async fn through(proxy: &str, host: &str, server: SocketAddr, pki: Option<&Pki>) {
    let scheme = if pki.is_some() { "wss" } else { "ws" };
    let url = format!("{scheme}://{host}:{}/", server.port());
    let mut builder = ClientBuilder::new(&url).proxy(proxy);
    if let Some(pki) = pki {
        builder = builder.tls(trusting(pki));
    }
    let ws = timeout(GUARD, builder.connect())
        .await
        .expect("connect in time")
        .unwrap_or_else(|e| panic!("{url} through {proxy}: {e}"));
    assert_echoes(ws, &format!("{url} through {proxy}")).await;
}

#[tokio::test]
async fn ws_and_wss_through_tinyproxy() {
    let pki = make_pki(&["localhost"]);
    let plain = echo_server(None).await;
    let secure = echo_server_on(localhost().await, Some(&pki)).await;
    let proxy = ProxyProcess::tinyproxy(None);
    let url = format!("http://127.0.0.1:{}", proxy.port());
    through(&url, "127.0.0.1", plain, None).await;
    through(&url, "localhost", secure, Some(&pki)).await;
    // Without a scheme, http:// is meant.
    through(
        &format!("127.0.0.1:{}", proxy.port()),
        "127.0.0.1",
        plain,
        None,
    )
    .await;
}

#[tokio::test]
async fn tinyproxy_with_basic_auth_takes_the_right_credentials_only() {
    let pki = make_pki(&["localhost"]);
    let plain = echo_server(None).await;
    let secure = echo_server_on(localhost().await, Some(&pki)).await;
    let proxy = ProxyProcess::tinyproxy(Some(("tether", "s3cret")));
    let good = format!("http://tether:s3cret@127.0.0.1:{}", proxy.port());
    through(&good, "127.0.0.1", plain, None).await;
    through(&good, "localhost", secure, Some(&pki)).await;

    // No credentials: tinyproxy answers 407 with its Proxy-Authenticate challenge. Wrong
    // ones: 401 with the same challenge in WWW-Authenticate. Either is fatal at the first
    // attempt, and the policy's hook sees the status and the challenge.
    for (bad, status) in [
        (format!("http://127.0.0.1:{}", proxy.port()), 407),
        (
            format!("http://tether:wrong@127.0.0.1:{}", proxy.port()),
            401,
        ),
    ] {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let hook_saw = Arc::clone(&seen);
        let policy = quick_policy().on_error(move |error, _| {
            if let Error::Proxy(p) = error {
                hook_saw
                    .lock()
                    .unwrap()
                    .push((p.status, p.authenticate.clone()));
            }
            Decision::Default
        });
        let (error, attempts) = fatal_attempts(
            ClientBuilder::new(format!("ws://{plain}/")).proxy(&bad),
            policy,
        )
        .await;
        let Error::Proxy(p) = &error else {
            panic!("{bad}: expected a proxy error, got {error:?}");
        };
        let challenge = vec![r#"Basic realm="Tinyproxy""#.to_owned()];
        assert_eq!(p.status, Some(status), "{bad}");
        assert_eq!(p.authenticate, challenge, "{bad}");
        assert_eq!(attempts, 1, "{bad}: fatal at the first attempt");
        assert_eq!(
            *seen.lock().unwrap(),
            vec![(Some(status), challenge)],
            "{bad}: the hook decided once, with the status and challenge in hand"
        );
    }
}

/// Runs a reconnecting client with `policy` until it fails for good; returns the error and
/// the attempts.
async fn fatal_attempts(builder: ClientBuilder, policy: Policy) -> (Error, u32) {
    let attempts = Arc::new(Mutex::new(0u32));
    let counted = Arc::clone(&attempts);
    let mut conns = builder
        .open_timeout(Duration::from_secs(5))
        .reconnecting()
        .policy(policy)
        .on_event(move |e| {
            if let ReconnectEvent::Connecting { .. } = e {
                *counted.lock().unwrap() += 1;
            }
        })
        .stream();
    let error = match timeout(GUARD, conns.next()).await.expect("in time") {
        Some(Err(e)) => e,
        Some(Ok(_)) => panic!("connected"),
        None => panic!("ended without an error"),
    };
    let n = *attempts.lock().unwrap();
    (error, n)
}

fn quick_policy() -> Policy {
    Policy::default()
        .backoff(Backoff {
            initial: Duration::from_millis(20),
            min: Duration::from_millis(20),
            factor: 1.5,
            max: Duration::from_millis(200),
            ..Backoff::default()
        })
        .reconnect_delay(Duration::from_millis(20))
        .min_uptime(Duration::ZERO)
}

#[tokio::test]
async fn an_https_proxy_carries_ws_and_wss() {
    // tinyproxy behind a TLS terminator: TLS to the proxy, CONNECT inside it, and for wss://
    // the server's TLS inside that.
    let pki = make_pki(&["localhost"]);
    let plain = echo_server(None).await;
    let secure = echo_server_on(localhost().await, Some(&pki)).await;
    let tinyproxy = ProxyProcess::tinyproxy(None);
    let tls = tether::tls::server_config_from_pem(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes())
        .unwrap();
    let front = tls_terminator(tls, ([127, 0, 0, 1], tinyproxy.port()).into()).await;
    let proxy = format!("https://localhost:{}", front.port());
    // The proxy's certificate is checked with the builder's roots.
    let ws = ClientBuilder::new(format!("ws://{plain}/"))
        .proxy(&proxy)
        .tls(trusting(&pki))
        .connect()
        .await
        .expect("ws:// through an https:// proxy");
    assert_echoes(ws, "ws:// through https://").await;
    through(&proxy, "localhost", secure, Some(&pki)).await;
    // A proxy whose certificate is not trusted is a proxy error, fatal.
    let untrusted = ClientBuilder::new(format!("ws://{plain}/"))
        .proxy(&proxy)
        .connect()
        .await
        .expect_err("an untrusted proxy certificate");
    assert_eq!(untrusted.kind(), ErrorKind::Proxy, "{untrusted:?}");
    assert!(matches!(default_decision(&untrusted), Decision::Fatal));
}

#[tokio::test]
async fn ws_and_wss_through_microsocks() {
    let pki = make_pki(&["localhost"]);
    let plain = echo_server(None).await;
    let secure = echo_server_on(localhost().await, Some(&pki)).await;
    let proxy = ProxyProcess::microsocks(None);
    for scheme in ["socks5", "socks5h"] {
        let url = format!("{scheme}://127.0.0.1:{}", proxy.port());
        through(&url, "127.0.0.1", plain, None).await;
        // By name: resolved here (socks5) or by the proxy (socks5h).
        through(&url, "localhost", secure, Some(&pki)).await;
    }
}

#[tokio::test]
async fn microsocks_with_a_password_takes_the_right_one_only() {
    let pki = make_pki(&["localhost"]);
    let plain = echo_server(None).await;
    let named = echo_server_on(localhost().await, None).await;
    let secure = echo_server_on(localhost().await, Some(&pki)).await;
    let proxy = ProxyProcess::microsocks(Some(("tether", "s3cret")));
    for scheme in ["socks5", "socks5h"] {
        let good = format!("{scheme}://tether:s3cret@127.0.0.1:{}", proxy.port());
        through(&good, "localhost", named, None).await;
        through(&good, "localhost", secure, Some(&pki)).await;
    }
    for bad in [
        format!("socks5h://tether:wrong@127.0.0.1:{}", proxy.port()),
        format!("socks5://127.0.0.1:{}", proxy.port()),
    ] {
        let (error, attempts) = fatal_attempts(
            ClientBuilder::new(format!("ws://{plain}/")).proxy(&bad),
            quick_policy(),
        )
        .await;
        assert_eq!(error.kind(), ErrorKind::Proxy, "{bad}: {error:?}");
        assert_eq!(attempts, 1, "{bad}: fatal at the first attempt: {error}");
    }
}

#[tokio::test]
async fn a_server_the_socks_proxy_cannot_reach_is_a_transient_error() {
    let proxy = ProxyProcess::microsocks(None);
    // A port with nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let error = ClientBuilder::new(format!("ws://{closed}/"))
        .proxy(format!("socks5://127.0.0.1:{}", proxy.port()))
        .connect()
        .await
        .expect_err("nothing listens there");
    let Error::Proxy(p) = &error else {
        panic!("expected a proxy error, got {error:?}");
    };
    assert_eq!(p.socks_reply, Some(5), "connection refused: {error}");
    assert!(error.to_string().contains("connection refused"), "{error}");
    assert!(matches!(default_decision(&error), Decision::Retry));
}

#[tokio::test]
async fn a_proxy_that_is_not_there_is_retried() {
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let error = ClientBuilder::new("ws://127.0.0.1:9/")
        .proxy(format!("socks5://{free}"))
        .connect()
        .await
        .expect_err("no proxy there");
    let Error::Proxy(p) = &error else {
        panic!("expected a proxy error, got {error:?}");
    };
    assert!(p.io.is_some(), "{error}");
    assert!(error.to_string().contains("cannot reach proxy"), "{error}");
    assert!(matches!(default_decision(&error), Decision::Retry));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_carries_on_through_a_proxy_that_restarts() {
    const N: u64 = 200;
    let sessions = SessionServer::new(SessionServerConfig::default(), |session| async move {
        while let Some(Ok(msg)) = session.recv().await {
            if session.send(msg).await.is_err() {
                break;
            }
        }
    });
    let server = Server::bind(
        "127.0.0.1:0",
        sessions.server_config(ServerConfig::default()),
    )
    .await
    .unwrap();
    let addr = server.local_addr().unwrap();
    let serving = sessions.clone();
    tokio::spawn(server.serve(move |ws, _| serving.serve(ws)));
    let mut proxy = ProxyProcess::microsocks(None);
    let resumed = Arc::new(Mutex::new(0u32));
    let counted = Arc::clone(&resumed);
    let session = ClientBuilder::new(format!("ws://{addr}/"))
        .proxy(format!("socks5://127.0.0.1:{}", proxy.port()))
        .open_timeout(Duration::from_secs(2))
        .reconnecting()
        .policy(quick_policy())
        .session()
        .on_event(move |e| {
            if let tether::session::SessionEvent::Resumed { .. } = e {
                *counted.lock().unwrap() += 1;
            }
        })
        .start();
    let mut got = Vec::new();
    for i in 1..=N {
        session.send(Message::text(i.to_string())).await.unwrap();
        if i == N / 2 {
            // Wait for an echo so that the first connection is surely up, then kill the
            // proxy (its tunnels die with it) and bring it back.
            let first = timeout(GUARD, session.recv())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            got.push(first);
            proxy.kill();
            tokio::time::sleep(Duration::from_millis(300)).await;
            proxy.restart();
        }
    }
    while (got.len() as u64) < N {
        let msg = timeout(GUARD, session.recv())
            .await
            .expect("every echo in time")
            .expect("the session goes on")
            .expect("a message");
        got.push(msg);
    }
    let numbers: Vec<u64> = got
        .iter()
        .map(|m| match m {
            Message::Text(t) => t.as_str().parse().unwrap(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        numbers,
        (1..=N).collect::<Vec<_>>(),
        "every echo once, in order"
    );
    assert!(*resumed.lock().unwrap() >= 1, "the session resumed");
    session.close().await.unwrap();
}
