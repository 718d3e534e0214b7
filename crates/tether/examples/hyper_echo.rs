//! An echo server on a plain hyper 1 HTTP/1.1 server: WebSocket upgrade requests (on any path)
//! become tether WebSockets that send every message back unchanged (tether's defaults:
//! permessage-deflate on); other requests get a plain-text answer.
//!
//! ```text
//! cargo run --release -p tether --features hyper --example hyper_echo -- 127.0.0.1:9001
//! ```

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tether::{upgrade, ServerConfig};

async fn handle(
    mut req: Request<Incoming>,
    config: Arc<ServerConfig>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if !upgrade::is_upgrade_request(&req) {
        let body = Bytes::from_static(b"a WebSocket echo server: connect with ws://\n");
        return Ok(Response::new(Full::new(body)));
    }
    let (response, pending) = match upgrade::upgrade(&mut req, &config) {
        Ok(accepted) => accepted,
        Err(refusal) => return Ok(refusal),
    };
    tokio::spawn(async move {
        let mut ws = match pending.await {
            Ok(ws) => ws,
            Err(e) => return eprintln!("upgrade failed: {e}"),
        };
        while let Some(Ok(msg)) = ws.recv().await {
            if ws.send(msg).await.is_err() {
                break;
            }
        }
        // Finish the closing handshake (or the failure) that ended the loop.
        while ws.recv().await.is_some() {}
    });
    Ok(response)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".to_owned());
    // Messages of up to 16 MiB (Autobahn's 9.* cases), past the 1 MiB default limit.
    let config = Arc::new(
        ServerConfig::default().config(tether::Config::default().max_message_size(16 << 20)),
    );
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("hyper echo server listening on {}", listener.local_addr()?);
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let config = config.clone();
        let service = service_fn(move |req| handle(req, config.clone()));
        tokio::spawn(async move {
            // with_upgrades: hyper hands the connection over after the 101 answer.
            let conn = http1::Builder::new().serve_connection(TokioIo::new(tcp), service);
            if let Err(e) = conn.with_upgrades().await {
                eprintln!("connection failed: {e}");
            }
        });
    }
}
