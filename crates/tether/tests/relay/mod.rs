//! A TCP relay on 127.0.0.1 that counts the bytes it forwards each way: put between a peer and
//! tether, it shows what permessage-deflate saved on the wire. Shared by the browser and
//! Python interop tests (`mod relay;`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Forwards every connection made to [`port`](Self::port) to the target. Dropping it stops
/// accepting (connections already relayed run until either side closes).
pub(crate) struct Relay {
    /// The port to connect to instead of the target's.
    pub(crate) port: u16,
    to_target: Arc<AtomicU64>,
    from_target: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Relay {
    /// Starts relaying to `target`.
    pub(crate) async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the relay");
        let port = listener.local_addr().expect("relay address").port();
        let to_target = Arc::new(AtomicU64::new(0));
        let from_target = Arc::new(AtomicU64::new(0));
        let (up, down) = (to_target.clone(), from_target.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pump(client_read, server_write, up.clone()));
                tokio::spawn(pump(server_read, client_write, down.clone()));
            }
        });
        Self {
            port,
            to_target,
            from_target,
            task,
        }
    }

    /// Bytes forwarded so far from the connecting peer to the target (handshake included).
    pub(crate) fn upstream_bytes(&self) -> u64 {
        self.to_target.load(Ordering::SeqCst)
    }

    /// Bytes forwarded so far from the target back to the connecting peer.
    pub(crate) fn downstream_bytes(&self) -> u64 {
        self.from_target.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies until end of input or an error, then shuts the other side's write half.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, count: Arc<AtomicU64>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        count.fetch_add(n as u64, Ordering::SeqCst);
    }
    let _ = to.shutdown().await;
}
