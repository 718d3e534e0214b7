//! Broadcast: one [`PreparedMessage`] written to many connections, compressed once, queued with
//! `feed_prepared` and written out with one `flush`; every receiver gets every message, in
//! order, whole. Against tether's own client with and without permessage-deflate.

use std::time::Duration;

use tether::{ClientBuilder, Config, Message, PreparedMessage, Server, ServerConfig};
use tokio::sync::broadcast;
use tokio::time::timeout;

/// Bounds every wait, so that a bug fails the test instead of hanging it.
const GUARD: Duration = Duration::from_secs(20);
const RECEIVERS: usize = 8;
const MESSAGES: usize = 200;

fn payload(i: usize) -> String {
    // Compressible, of varying sizes, some above the 8 KiB mark where payloads stay shared.
    let n = if i % 10 == 0 { 600 } else { 3 };
    format!("{i:05}:") + &"{\"price\":101.25,\"side\":\"buy\"}".repeat(n)
}

/// A server that sends every prepared message from `hub` to each connection (batched), and
/// reports how many compressed forms each message ended up with.
async fn broadcast_server(
    compression: bool,
) -> (
    std::net::SocketAddr,
    broadcast::Sender<PreparedMessage>,
    tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    let config = if compression {
        Config::default()
    } else {
        Config::default().compression(None)
    };
    let server = Server::bind("127.0.0.1:0", ServerConfig::default().config(config))
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let (hub, _) = broadcast::channel::<PreparedMessage>(MESSAGES * 2);
    let (ready_tx, ready) = tokio::sync::mpsc::unbounded_channel();
    // A receiver to subscribe from, so that the server holds no sender: dropping the test's
    // sender ends every connection's loop.
    let template = hub.subscribe();
    tokio::spawn(server.serve(move |mut ws, _| {
        let mut inbox = template.resubscribe();
        let ready_tx = ready_tx.clone();
        async move {
            let _ = ready_tx.send(());
            while let Ok(first) = inbox.recv().await {
                ws.feed_prepared(&first).await.unwrap();
                while let Ok(more) = inbox.try_recv() {
                    ws.feed_prepared(&more).await.unwrap();
                }
                ws.flush().await.unwrap();
            }
            ws.close(1000, "done").await.unwrap();
        }
    }));
    (addr, hub, ready)
}

async fn run(compression: bool) {
    let (addr, hub, mut ready) = broadcast_server(compression).await;
    let mut clients = Vec::new();
    for _ in 0..RECEIVERS {
        let builder = ClientBuilder::new(format!("ws://{addr}/"));
        let builder = if compression {
            builder
        } else {
            builder.config(Config::default().compression(None))
        };
        let ws = timeout(GUARD, builder.connect()).await.unwrap().unwrap();
        assert_eq!(ws.extensions().is_some(), compression);
        clients.push(ws);
    }
    for _ in 0..RECEIVERS {
        timeout(GUARD, ready.recv()).await.unwrap();
    }
    let mut sent = Vec::new();
    for i in 0..MESSAGES {
        let message = if i % 3 == 0 {
            PreparedMessage::binary(payload(i).into_bytes())
        } else {
            PreparedMessage::text(payload(i))
        };
        sent.push(message.clone());
        hub.send(message).unwrap();
    }
    drop(hub);
    for mut ws in clients {
        let mut got = Vec::new();
        while let Some(msg) = timeout(GUARD, ws.recv()).await.unwrap() {
            got.push(msg.unwrap());
        }
        assert_eq!(ws.close_code(), 1000);
        assert_eq!(got.len(), MESSAGES);
        for (i, msg) in got.iter().enumerate() {
            let want = payload(i);
            assert_eq!(msg.as_bytes(), want.as_bytes(), "message {i}");
            assert_eq!(msg.is_text(), i % 3 != 0, "message {i}'s kind");
        }
    }
    // Every receiver agreed on the same parameters: one compressed form per message.
    let forms = usize::from(compression);
    for (i, m) in sent.iter().enumerate() {
        assert_eq!(m.compressed_forms(), forms, "message {i}");
    }
}

#[tokio::test]
async fn broadcast_reaches_every_receiver_in_order_compressed_once() {
    run(true).await;
}

#[tokio::test]
async fn broadcast_reaches_every_receiver_in_order_without_compression() {
    run(false).await;
}

#[tokio::test]
async fn a_received_message_is_sent_on_without_copying_its_payload() {
    // The echo's reply shares the received buffer: cloning a Message copies no payload.
    let received = Message::binary(vec![5u8; 100_000]);
    let copy = received.clone();
    assert_eq!(received.as_bytes().as_ptr(), copy.as_bytes().as_ptr());
    let prepared = PreparedMessage::from(copy);
    assert_eq!(prepared.payload().as_ptr(), received.as_bytes().as_ptr());
}
