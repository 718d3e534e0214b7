//! An echo server: every message comes back unchanged. Used for the Autobahn test suite
//! (`kosoku -m fuzzingclient`) and the benchmarks.
//!
//! ```text
//! cargo run --release -p tether --example echo_server -- 127.0.0.1:9001
//! ```

use tether::{Config, Server, ServerConfig};

/// tether's defaults without keepalive pings: an Autobahn case that lasts longer than the
/// 20 s ping interval (12.2.15 to 12.2.18 come close on a slow machine) would see an
/// unsolicited Ping, which kosoku counts against the case. The 9.* cases echo messages of up
/// to 16 MiB, past the 1 MiB default limit.
fn conformance_config() -> ServerConfig {
    ServerConfig::default().config(
        Config::default()
            .ping_interval(None)
            .max_message_size(16 << 20),
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".to_owned());
    let server = Server::bind(&addr, conformance_config()).await?;
    eprintln!("echo server listening on {}", server.local_addr()?);
    server
        .serve(|mut ws, _request| async move {
            while let Some(Ok(msg)) = ws.recv().await {
                if ws.send(msg).await.is_err() {
                    break;
                }
            }
            // Finish the closing handshake (or the failure) that ended the loop.
            while ws.recv().await.is_some() {}
        })
        .await
}
