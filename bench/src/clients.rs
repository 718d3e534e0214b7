//! Client-side comparison: `bench client --impl tether|tokio-tungstenite ...` drives the
//! same echo server with a client library. Each connection keeps `--inflight` messages out;
//! every echo that comes back is sent again as it is (no copy, for either library).

use std::collections::VecDeque;
use std::io;
use std::rc::Rc;
use std::time::Instant;

use futures_util::{stream, SinkExt, StreamExt};

use crate::args::Args;
use crate::load::{run_local, secs};
use crate::servers::Impl;
use crate::stats::Shared;

/// The client libraries compared.
pub(crate) const CLIENTS: [Impl; 2] = [Impl::Tether, Impl::Tungstenite];

pub(crate) fn main(args: &Args) -> io::Result<()> {
    args.only(&[
        "impl", "addr", "conns", "size", "inflight", "warmup", "duration", "cpu",
    ])?;
    let kind = args
        .get("impl")
        .and_then(Impl::parse)
        .filter(|k| CLIENTS.contains(k) || *k == Impl::TetherSessions)
        .ok_or_else(|| io::Error::other("--impl: tether, tether-sessions or tokio-tungstenite"))?;
    let addr = args.get("addr").ok_or_else(|| io::Error::other("--addr"))?;
    let url = format!("ws://{addr}/");
    let conns: usize = args.parse_or("conns", 10)?;
    let size: usize = args.parse_or("size", 20)?;
    let inflight: usize = args.parse_or::<usize>("inflight", 1)?.max(1);
    let warmup = secs(args, "warmup", 1.0)?;
    let duration = secs(args, "duration", 3.0)?;
    let payload = vec![b'x'; size];
    let line = run_local(args, async move {
        let shared = Rc::new(Shared::default());
        match kind {
            Impl::Tether => {
                let builder = tether::ClientBuilder::new(url)
                    .config(tether::Config::default().compression(None));
                let opened: Vec<_> = stream::iter(0..conns)
                    .map(|_| builder.connect())
                    .buffered(64)
                    .collect()
                    .await;
                for ws in opened {
                    let ws = ws.map_err(io::Error::other)?;
                    let task = tether_client(ws, payload.clone(), inflight, shared.clone());
                    tokio::task::spawn_local(task);
                }
            }
            Impl::TetherSessions => {
                // Sessions are opened one after the other, each up before the next, as the
                // connections above are.
                for _ in 0..conns {
                    let session = tether::ClientBuilder::new(url.clone())
                        .config(tether::Config::default().compression(None))
                        .session()
                        .start();
                    let task = session_client(session, payload.clone(), inflight, shared.clone());
                    tokio::task::spawn_local(task);
                }
            }
            _ => {
                let opened: Vec<_> = stream::iter(0..conns)
                    .map(|_| tokio_tungstenite::connect_async_with_config(&url, None, true))
                    .buffered(64)
                    .collect()
                    .await;
                for ws in opened {
                    let (ws, _response) = ws.map_err(io::Error::other)?;
                    let task = tungstenite_client(ws, payload.clone(), inflight, shared.clone());
                    tokio::task::spawn_local(task);
                }
            }
        }
        Ok(shared.measure(warmup, duration).await)
    })?;
    println!("{line}");
    Ok(())
}

/// What the echo loop needs of a tether connection, plain or resumable.
trait EchoConn {
    async fn send_msg(&mut self, msg: tether::Message) -> tether::Result<()>;
    async fn recv_msg(&mut self) -> Option<tether::Result<tether::Message>>;
}

impl EchoConn for tether::WebSocket {
    async fn send_msg(&mut self, msg: tether::Message) -> tether::Result<()> {
        self.send(msg).await
    }
    async fn recv_msg(&mut self) -> Option<tether::Result<tether::Message>> {
        self.recv().await
    }
}

/// Over a resumable session, both ends number, keep and acknowledge every message.
impl EchoConn for tether::session::SessionHandle {
    async fn send_msg(&mut self, msg: tether::Message) -> tether::Result<()> {
        self.send(msg).await
    }
    async fn recv_msg(&mut self) -> Option<tether::Result<tether::Message>> {
        self.recv().await
    }
}

async fn tether_client(
    ws: tether::WebSocket,
    payload: Vec<u8>,
    inflight: usize,
    shared: Rc<Shared>,
) {
    echo_loop(ws, payload, inflight, shared).await
}

async fn session_client(
    session: tether::session::SessionHandle,
    payload: Vec<u8>,
    inflight: usize,
    shared: Rc<Shared>,
) {
    echo_loop(session, payload, inflight, shared).await
}

/// Keeps `inflight` messages out and sends every echo back as it is.
async fn echo_loop(mut conn: impl EchoConn, payload: Vec<u8>, inflight: usize, shared: Rc<Shared>) {
    let mut sent = VecDeque::with_capacity(inflight);
    for _ in 0..inflight {
        sent.push_back(Instant::now());
        if let Err(e) = conn
            .send_msg(tether::Message::binary(payload.clone()))
            .await
        {
            return shared.error(e);
        }
    }
    loop {
        let msg = match conn.recv_msg().await {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => return shared.error(e),
            None => return shared.error("closed"),
        };
        let now = Instant::now();
        if let Some(start) = sent.pop_front() {
            shared.complete(start, now);
        }
        if shared.stopped() {
            return;
        }
        sent.push_back(now);
        if let Err(e) = conn.send_msg(msg).await {
            return shared.error(e);
        }
    }
}

type TungsteniteStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn tungstenite_client(
    mut ws: TungsteniteStream,
    payload: Vec<u8>,
    inflight: usize,
    shared: Rc<Shared>,
) {
    use tokio_tungstenite::tungstenite::Message;
    let mut sent = VecDeque::with_capacity(inflight);
    for _ in 0..inflight {
        sent.push_back(Instant::now());
        if let Err(e) = ws.send(Message::binary(payload.clone())).await {
            return shared.error(e);
        }
    }
    loop {
        let msg = match ws.next().await {
            Some(Ok(msg)) if msg.is_binary() || msg.is_text() => msg,
            Some(Ok(_)) => continue,
            Some(Err(e)) => return shared.error(e),
            None => return shared.error("closed"),
        };
        let now = Instant::now();
        if let Some(start) = sent.pop_front() {
            shared.complete(start, now);
        }
        if shared.stopped() {
            return;
        }
        sent.push_back(now);
        if let Err(e) = ws.send(msg).await {
            return shared.error(e);
        }
    }
}
