//! RFC 8441 in a real browser: headless Chromium loads a page from hyper over HTTP/2 (TLS,
//! ALPN `h2`, extended CONNECT enabled) and opens a WebSocket to the same origin; tether's
//! hyper upgrade answers it. The test passes only if the WebSocket went over the page's
//! HTTP/2 connection: the upgrade request arrived as HTTP/2, and the browser opened one TLS
//! connection in all (no HTTP/1.1 connection for the WebSocket). Needs Chromium, node and
//! playwright-core, like `browser.rs` (scripts/test.sh installs them).
#![cfg(feature = "http2")]

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::browser::{require_chromium, run_driver};
use tether::upgrade;
use tether::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8">
<title>tether over HTTP/2</title>
<script>
window.result = new Promise((resolve) => {
  const nav = performance.getEntriesByType("navigation")[0];
  const out = { page: nav ? nav.nextHopProtocol : null, messages: [] };
  const ws = new WebSocket(`wss://${location.host}/ws`);
  ws.onopen = () => ws.send("hello over h2");
  ws.onmessage = (e) => {
    out.messages.push(e.data);
    if (out.messages.length === 2) ws.close(1000, "done");
  };
  ws.onerror = () => { out.error = "error event"; };
  ws.onclose = (e) => { out.close = e.code; resolve(out); };
  setTimeout(() => resolve({ ...out, timeout: true }), 20000);
});
</script>
"#;

const BROWSER_LIMIT: Duration = Duration::from_secs(120);

/// A self-signed certificate for 127.0.0.1, as a rustls server config offering h2 first.
fn tls_config() -> Arc<rustls::ServerConfig> {
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let base =
        tether::tls::server_config_from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes())
            .unwrap();
    let mut config = (*base).clone();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// What the server saw of the WebSocket request.
#[derive(Debug)]
struct Seen {
    version: hyper::Version,
    echoed: usize,
}

async fn handle(
    mut req: hyper::Request<Incoming>,
    config: Arc<ServerConfig>,
    seen: UnboundedSender<Seen>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != "/ws" {
        let mut page = hyper::Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
        page.headers_mut().insert(
            "content-type",
            hyper::header::HeaderValue::from_static("text/html; charset=utf-8"),
        );
        return Ok(page);
    }
    let version = req.version();
    match upgrade::upgrade(&mut req, &config) {
        Ok((response, pending)) => {
            tokio::spawn(async move {
                let Ok(mut ws) = pending.await else { return };
                let _ = ws.send(format!("via {version:?}")).await;
                let mut echoed = 0;
                while let Some(Ok(msg)) = ws.recv().await {
                    if ws.send(msg).await.is_err() {
                        break;
                    }
                    echoed += 1;
                }
                let _ = seen.send(Seen { version, echoed });
            });
            Ok(response)
        }
        Err(refusal) => Ok(refusal),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_opens_a_websocket_over_http2_extended_connect() {
    require_chromium();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls_config());
    let config = Arc::new(ServerConfig::default());
    let connections = Arc::new(AtomicUsize::new(0));
    let (alpn_tx, mut alpns) = unbounded_channel::<Option<Vec<u8>>>();
    let (tx, mut seen) = unbounded_channel();
    let counted = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::Relaxed);
            let (acceptor, config, tx, alpn_tx) = (
                acceptor.clone(),
                config.clone(),
                tx.clone(),
                alpn_tx.clone(),
            );
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                let _ = alpn_tx.send(alpn.clone());
                let service = service_fn(move |req| handle(req, config.clone(), tx.clone()));
                let io = TokioIo::new(tls);
                if alpn.as_deref() == Some(b"h2") {
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .enable_connect_protocol()
                    .serve_connection(io, service)
                    .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .with_upgrades()
                        .await;
                }
            });
        }
    });

    let out = run_driver(
        "h2.mjs",
        &[format!("https://127.0.0.1:{port}/")],
        BROWSER_LIMIT,
    )
    .await;
    let (result, stderr) = (out.result, out.stderr);
    println!("{}: {result}", out.browser);
    let seen = tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .unwrap_or_else(|_| panic!("the server saw no WebSocket; page said {result}; {stderr}"))
        .unwrap();
    let mut alpn_seen = Vec::new();
    while let Ok(a) = alpns.try_recv() {
        alpn_seen.push(a.map(|a| String::from_utf8_lossy(&a).into_owned()));
    }
    assert_eq!(
        result, r#"{"page":"h2","messages":["via HTTP/2.0","hello over h2"],"close":1000}"#,
        "{stderr}"
    );
    assert_eq!(seen.version, hyper::Version::HTTP_2, "an extended CONNECT");
    assert_eq!(seen.echoed, 1);
    assert_eq!(
        connections.load(Ordering::Relaxed),
        1,
        "page and WebSocket shared one HTTP/2 connection (ALPN: {alpn_seen:?})"
    );
    assert_eq!(alpn_seen, [Some("h2".to_owned())]);
}
