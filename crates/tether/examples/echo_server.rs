//! An echo server: every message comes back unchanged. Used for the Autobahn test suite
//! (`kosoku -m fuzzingclient`) and the benchmarks.
//!
//! ```text
//! cargo run --release -p tether --example echo_server -- 127.0.0.1:9001
//! ```

use tether::{Server, ServerConfig};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".to_owned());
    let server = Server::bind(&addr, ServerConfig::default()).await?;
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
