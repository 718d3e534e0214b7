//! A broadcast server: every data message a client sends goes to every connected client, the
//! sender included. Used by the benchmarks' broadcast workload.
//!
//! Each message is prepared once ([`tether::PreparedMessage`]: framed once, compressed once
//! per set of deflate parameters) and handed to every connection through a
//! `tokio::sync::broadcast` channel; each connection queues what waits for it and writes it
//! out in one go.
//!
//! ```text
//! cargo run --release -p tether --example broadcast_server -- 127.0.0.1:9002
//! ```

use tether::{PreparedMessage, Server, ServerConfig};
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};

/// Messages a slow receiver may fall behind by before it skips ahead.
const CAPACITY: usize = 4096;
/// Most messages queued for one connection before they are written out.
const BATCH: usize = 64;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9002".to_owned());
    let server = Server::bind(&addr, ServerConfig::default()).await?;
    eprintln!("broadcast server listening on {}", server.local_addr()?);
    let (hub, _) = broadcast::channel::<PreparedMessage>(CAPACITY);
    server
        .serve(move |mut ws, _request| {
            let hub = hub.clone();
            let mut inbox = hub.subscribe();
            async move {
                loop {
                    tokio::select! {
                        received = ws.recv() => match received {
                            Some(Ok(msg)) => {
                                // No receivers is fine: the sender itself subscribed.
                                let _ = hub.send(PreparedMessage::from(msg));
                            }
                            _ => break,
                        },
                        next = inbox.recv() => match next {
                            Ok(first) => {
                                if ws.feed_prepared(&first).await.is_err() {
                                    break;
                                }
                                let mut failed = false;
                                for _ in 1..BATCH {
                                    match inbox.try_recv() {
                                        Ok(msg) => failed = ws.feed_prepared(&msg).await.is_err(),
                                        Err(TryRecvError::Lagged(n)) => eprintln!("a receiver skipped {n} messages"),
                                        Err(_) => break,
                                    }
                                    if failed {
                                        break;
                                    }
                                }
                                if failed || ws.flush().await.is_err() {
                                    break;
                                }
                            }
                            Err(RecvError::Lagged(n)) => eprintln!("a receiver skipped {n} messages"),
                            Err(RecvError::Closed) => break,
                        },
                    }
                }
                // Finish the closing handshake (or the failure) that ended the loop.
                while ws.recv().await.is_some() {}
            }
        })
        .await
}
