//! Graceful shutdown under load: many clients mid-traffic when the server's
//! `ShutdownHandle` fires (`shutdown`, 1001, or `restart`, 1012; the two tests take turns).
//! Every client must get the server's close code, every message the
//! server's `send` accepted must arrive before that close, and `serve` must return within
//! the close timeout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tether::{Config, Message, Server, ServerConfig};
use tokio::sync::Notify;
use tokio::time::timeout;

/// Clients connected when the shutdown starts.
const CLIENTS: usize = 1000;
/// Messages every client must have received before the shutdown starts: traffic is flowing.
const WARM: usize = 3;
/// The server's close timeout.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// The tests take turns: each holds 2,000 sockets.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// Bounds each wait on real sockets.
const GUARD: Duration = Duration::from_secs(60);

/// The server side: each connection gets an id (its first message), then a numbered message
/// every 50 ms while it also reads; `sent` records, per id, how many `send`s
/// returned `Ok`.
async fn start(
    sent: Arc<Mutex<HashMap<usize, usize>>>,
) -> (
    std::net::SocketAddr,
    tether::ShutdownHandle,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let config = ServerConfig::default().config(Config::default().close_timeout(CLOSE_TIMEOUT));
    let server = Server::bind("127.0.0.1:0", config).await.unwrap();
    let addr = server.local_addr().unwrap();
    let handle = server.shutdown_handle();
    let ids = Arc::new(AtomicUsize::new(0));
    let serve = tokio::spawn(server.serve(move |mut ws, _request| {
        let id = ids.fetch_add(1, Ordering::SeqCst);
        let sent = sent.clone();
        async move {
            if ws.send(format!("id {id}")).await.is_err() {
                return;
            }
            let mut n = 0usize;
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tokio::select! {
                    msg = ws.recv() => match msg {
                        Some(Ok(_)) => {}
                        _ => break,
                    },
                    _ = tick.tick() => {
                        if ws.send(n.to_string()).await.is_err() {
                            break;
                        }
                        n += 1;
                        sent.lock().unwrap().insert(id, n);
                    }
                }
            }
        }
    }));
    (addr, handle, serve)
}

/// What one client saw: its id, the numbers it received (in order), and the close code.
struct Seen {
    id: usize,
    numbers: Vec<usize>,
    code: u16,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_under_load_closes_every_client_with_1001_and_loses_nothing() {
    under_load(tether::ShutdownHandle::shutdown, 1001).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_under_load_closes_every_client_with_1012_and_loses_nothing() {
    under_load(tether::ShutdownHandle::restart, 1012).await;
}

/// Connects [`CLIENTS`] clients, lets traffic flow, stops the server with `stop`, and checks
/// that every client got `code` after every message the server's `send` accepted.
async fn under_load(stop: fn(&tether::ShutdownHandle), code: u16) {
    let _turn = TURN.lock().await;
    let sent = Arc::new(Mutex::new(HashMap::new()));
    let (addr, handle, serve) = start(sent.clone()).await;
    let url = format!("ws://{addr}/");
    let warm = Arc::new(AtomicUsize::new(0));
    let all_warm = Arc::new(Notify::new());
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let mut ws = timeout(GUARD, tether::connect(&url))
            .await
            .unwrap()
            .unwrap();
        let (warm, all_warm) = (warm.clone(), all_warm.clone());
        clients.push(tokio::spawn(async move {
            let id = match ws.recv().await {
                Some(Ok(Message::Text(t))) => t.as_str()["id ".len()..].parse().unwrap(),
                other => panic!("expected the id, got {other:?}"),
            };
            let mut numbers = Vec::new();
            while let Some(msg) = ws.recv().await {
                match msg {
                    Ok(Message::Text(t)) => numbers.push(t.as_str().parse::<usize>().unwrap()),
                    Ok(other) => panic!("unexpected {other:?}"),
                    Err(e) => panic!("client {id}: error before the close: {e}"),
                }
                if numbers.len() == WARM && warm.fetch_add(1, Ordering::SeqCst) + 1 == CLIENTS {
                    all_warm.notify_one();
                }
            }
            Seen {
                id,
                numbers,
                code: ws.close_code(),
            }
        }));
    }
    timeout(GUARD, all_warm.notified()).await.unwrap();
    stop(&handle);
    let served = timeout(CLOSE_TIMEOUT + Duration::from_secs(3), serve)
        .await
        .expect("serve returns within the close timeout");
    served.unwrap().unwrap();
    let sent = sent.lock().unwrap().clone();
    let mut ids = Vec::new();
    for client in clients {
        let seen = timeout(GUARD, client).await.unwrap().unwrap();
        assert_eq!(seen.code, code, "client {}: close code", seen.id);
        let want: Vec<usize> = (0..sent.get(&seen.id).copied().unwrap_or(0)).collect();
        assert_eq!(
            seen.numbers, want,
            "client {}: every message the server's send accepted, in order",
            seen.id
        );
        ids.push(seen.id);
    }
    ids.sort_unstable();
    assert_eq!(ids, (0..CLIENTS).collect::<Vec<_>>());
}
