//! An echo server on axum: `/` upgrades to a tether WebSocket that sends every message back
//! unchanged (tether's defaults, permessage-deflate on, without keepalive pings), `GET /healthz` answers `ok` over
//! plain HTTP. Used for the Autobahn test suite's server role on the axum path
//! (`scripts/test.sh`).
//!
//! ```text
//! cargo run --release -p tether --features axum --example axum_echo -- 127.0.0.1:9001
//! ```

use axum::routing::get;
use axum::serve::ListenerExt as _;
use axum::Router;
use tether::axum::WebSocketUpgrade;
use tether::upgrade::UpgradedWebSocket;
use tether::{Config, ServerConfig};

async fn echo(ws: WebSocketUpgrade) -> axum::response::Response {
    // tether's defaults without keepalive pings: an Autobahn case that lasts longer than the
    // 20 s ping interval would see an unsolicited Ping, which kosoku counts against the case.
    // The 9.* cases echo messages of up to 16 MiB, past the 1 MiB default limit.
    let config = ServerConfig::default().config(
        Config::default()
            .ping_interval(None)
            .max_message_size(16 << 20),
    );
    ws.config(config)
        .on_upgrade(|mut ws: UpgradedWebSocket| async move {
            while let Some(Ok(msg)) = ws.recv().await {
                if ws.send(msg).await.is_err() {
                    break;
                }
            }
            // Finish the closing handshake (or the failure) that ended the loop.
            while ws.recv().await.is_some() {}
        })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".to_owned());
    let app = Router::new()
        .route("/", get(echo))
        .route("/healthz", get(|| async { "ok\n" }));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("axum echo server listening on {}", listener.local_addr()?);
    // TCP_NODELAY on every accepted socket, as tether's own server does.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await
}
