//! The proxy environment variables, end to end, against a real SOCKS5 proxy (microsocks):
//! honoured by default, read again for every attempt (so that a changed environment applies
//! to the next reconnect), bypassed by `no_proxy`, overridden by the builder's `proxy` and
//! ignored after `no_proxy()`. One test only, so that nothing else in this process reads the
//! environment while it changes.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::proxies::ProxyProcess;
use tether::reconnect::ReconnectEvent;
use tether::{Backoff, ClientBuilder, Error, Message, Policy, Server, ServerConfig};
use tokio::time::timeout;

const GUARD: Duration = Duration::from_secs(20);

const VARS: [&str; 12] = [
    "ws_proxy",
    "WS_PROXY",
    "wss_proxy",
    "WSS_PROXY",
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
];

async fn assert_echo(ws: &mut tether::WebSocket) {
    ws.send("hello").await.unwrap();
    let echo = timeout(GUARD, ws.recv()).await.unwrap();
    assert!(matches!(echo, Some(Ok(m)) if m == Message::text("hello")));
}

#[tokio::test]
async fn the_environment_is_read_for_every_attempt() {
    for var in VARS {
        std::env::remove_var(var);
    }
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
    // A proxy that wants a password: only a client that goes through it with the
    // environment's credentials gets in.
    let socks = ProxyProcess::microsocks(Some(("env", "pw")));
    let nothing_there = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("ws://{addr}/");

    // 1. The first attempt uses a proxy that is not there (retried); the hook then points
    //    the environment at the real one, and the next attempt goes through it.
    std::env::set_var("ws_proxy", format!("socks5://{nothing_there}"));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&errors);
    let good = format!("socks5h://env:pw@127.0.0.1:{}", socks.port());
    let mut conns = ClientBuilder::new(&url)
        .reconnecting()
        .policy(
            Policy::default()
                .backoff(Backoff {
                    initial: Duration::from_millis(20),
                    min: Duration::from_millis(20),
                    ..Backoff::default()
                })
                .min_uptime(Duration::ZERO),
        )
        .on_event(move |e| {
            if let ReconnectEvent::Retry { error, .. } = e {
                seen.lock().unwrap().push(error.to_string());
                std::env::set_var("ws_proxy", &good);
            }
        })
        .stream();
    let mut ws = timeout(GUARD, conns.next())
        .await
        .unwrap()
        .unwrap()
        .expect("the second attempt goes through the proxy the environment names now");
    assert_echo(&mut ws).await;
    let errors = errors.lock().unwrap().clone();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("cannot reach proxy"),
        "the first attempt went to the environment's first proxy: {errors:?}"
    );
    drop((ws, conns));

    // 2. Upper case is read when lower case is unset; all_proxy when nothing more specific
    //    is set. The wrong password proves the proxy was used.
    std::env::remove_var("ws_proxy");
    std::env::set_var(
        "ALL_PROXY",
        format!("socks5://env:wrong@127.0.0.1:{}", socks.port()),
    );
    let refused = ClientBuilder::new(&url)
        .connect()
        .await
        .expect_err("wrong password");
    assert!(
        matches!(&refused, Error::Proxy(p) if p.message.contains("user name and password")),
        "{refused:?}"
    );

    // 3. no_proxy bypasses it (by address and port), the builder's no_proxy() ignores it,
    //    and the builder's proxy wins over it.
    std::env::set_var(
        "no_proxy",
        format!("example.com, 127.0.0.1:{}", addr.port()),
    );
    let mut ws = ClientBuilder::new(&url)
        .connect()
        .await
        .expect("no_proxy: direct");
    assert_echo(&mut ws).await;
    std::env::set_var("no_proxy", "127.0.0.1:1");
    assert!(
        ClientBuilder::new(&url).connect().await.is_err(),
        "another port: proxied"
    );
    let mut ws = ClientBuilder::new(&url)
        .no_proxy()
        .connect()
        .await
        .expect("no_proxy(): direct");
    assert_echo(&mut ws).await;
    let mut ws = ClientBuilder::new(&url)
        .proxy(format!("socks5://env:pw@127.0.0.1:{}", socks.port()))
        .connect()
        .await
        .expect("the builder's proxy wins");
    assert_echo(&mut ws).await;
    for var in VARS {
        std::env::remove_var(var);
    }
}
