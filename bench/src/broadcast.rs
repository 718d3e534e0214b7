//! The broadcast section: one sender connection, many receiver connections, and a server
//! per library that relays every data message to every connected connection, the sender
//! included.
//!
//! Servers (`bench server --impl NAME --broadcast`), each on the same current-thread runtime
//! and accept loop as the echo servers, fanning out through one `tokio::sync::broadcast`
//! channel of [`CAPACITY`] messages:
//!
//! - tether: the logic of `crates/tether/examples/broadcast_server.rs` — each message becomes
//!   one [`tether::PreparedMessage`] (framed once), each connection queues what waits for it
//!   with `feed_prepared` (up to [`BATCH`]) and writes it out with one `flush`;
//! - tokio-tungstenite: the way axum users write it — a `Message` cloned per receiver,
//!   `split()` into a sink and a stream, one task forwarding the channel to the sink with
//!   `send` (one write per message), one task publishing what the stream yields;
//! - fastwebsockets: `split(tokio::io::split)` as in its `echo_server_split` example, a
//!   writer task doing one `write_frame` per message and receiver;
//! - tokio-websockets: one task selecting between `next()` and the channel, one `send` per
//!   message and receiver.
//!
//! A receiver that falls more than [`CAPACITY`] messages behind skips ahead (the channel's
//! `Lagged`); the servers carry on, and the load generator counts what was skipped.
//!
//! The load generator (`bench broadcast --addr A --receivers N ...`) opens the receivers, then
//! the sender, which keeps `--outstanding` messages on their way: a message counts as
//! delivered to the sender when its own copy comes back, and each copy back lets one more
//! go. Every payload starts with a sequence number and the send time (nanoseconds since the
//! load process started), so each receiver measures the delivery lag of every message and
//! counts the sequence numbers it never saw.

use std::cell::Cell;
use std::fmt::Write as _;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};

use crate::args::Args;
use crate::load::{open_many, read_shared, run_local, secs};
use crate::servers::Impl;
use crate::stats::{Phase, Shared};
use crate::wire;

/// Messages a slow receiver may fall behind by before it skips ahead (the example's).
pub(crate) const CAPACITY: usize = 4096;
/// Most messages tether queues for one connection before writing them out (the example's).
const BATCH: usize = 64;
/// Bytes at the start of every payload: sequence number and send time, little-endian.
const STAMP: usize = 16;
const MASK_KEY: [u8; 4] = [0x5c, 0x11, 0xe7, 0x3a];
/// The sender gives up waiting for its own copy after this long, counts an error and refills
/// its window. Its own connection is never more than the window behind, so it never skips
/// a copy: only a server that stopped relaying gets here.
const STALL: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Servers

/// Accepts connections on `addr` and relays every data message to all of them.
///
/// With `redis` (tether only), the hub is fed by a topic in that Redis (`RedisTopic`), and
/// what a connection sends is published there: every server on the same Redis relays to its
/// own connections what any of them received (a message is prepared once per server).
pub(crate) async fn serve(kind: Impl, addr: &str, redis: Option<&str>) -> io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    let tether_config =
        tether::ServerConfig::default().config(tether::Config::default().compression(None));
    let (tether_hub, _) = broadcast::channel::<tether::PreparedMessage>(CAPACITY);
    let topic = match redis {
        None => None,
        Some(url) => {
            let topic = tether::redis::RedisTopic::open(url, "bench").map_err(io::Error::other)?;
            topic.position().await.map_err(io::Error::other)?;
            let mut subscription = topic.subscribe();
            let hub = tether_hub.clone();
            tokio::spawn(async move {
                while let Ok(entry) = subscription.next().await {
                    let _ = hub.send(entry.prepared);
                }
            });
            Some(topic)
        }
    };
    println!("LISTENING {}", listener.local_addr()?);
    let (tungstenite_hub, _) =
        broadcast::channel::<tokio_tungstenite::tungstenite::Message>(CAPACITY);
    let (fastwebsockets_hub, _) = broadcast::channel::<tether::Bytes>(CAPACITY);
    let (tokio_websockets_hub, _) = broadcast::channel::<tokio_websockets::Message>(CAPACITY);
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(_) => {
                // Out of descriptors, most likely: let connections end.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        match kind {
            Impl::Tether => tokio::spawn(tether_relay(
                tcp,
                tether_config.clone(),
                tether_hub.clone(),
                topic.clone(),
            )),
            Impl::Tungstenite => tokio::spawn(tungstenite_relay(tcp, tungstenite_hub.clone())),
            Impl::FastWebSockets => {
                tokio::spawn(fastwebsockets_connection(tcp, fastwebsockets_hub.clone()))
            }
            Impl::TokioWebsockets => {
                tokio::spawn(tokio_websockets_relay(tcp, tokio_websockets_hub.clone()))
            }
            other => {
                return Err(io::Error::other(format!(
                    "no broadcast server for {}",
                    other.name()
                )))
            }
        };
    }
}

/// tether: the connection loop of `examples/broadcast_server.rs` (stderr logging of lagged
/// receivers left out: the load generator counts what they skip).
async fn tether_relay(
    tcp: TcpStream,
    config: tether::ServerConfig,
    hub: broadcast::Sender<tether::PreparedMessage>,
    topic: Option<tether::redis::RedisTopic>,
) {
    let Ok(Some((mut ws, _))) = tether::accept(tcp, &config).await else {
        return;
    };
    let mut inbox = hub.subscribe();
    loop {
        tokio::select! {
            received = ws.recv() => match received {
                Some(Ok(msg)) => match &topic {
                    None => {
                        let _ = hub.send(tether::PreparedMessage::from(msg));
                    }
                    Some(topic) => {
                        // What else has arrived already is published with it, in one round
                        // trip, so that it reaches every receiver together.
                        let mut msgs = vec![msg];
                        while msgs.len() < BATCH {
                            match futures_util::FutureExt::now_or_never(ws.recv()) {
                                Some(Some(Ok(more))) => msgs.push(more),
                                _ => break,
                            }
                        }
                        if topic.publish_batch(&msgs).await.is_err() {
                            break;
                        }
                    }
                },
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
                            Err(TryRecvError::Lagged(_)) => {}
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
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => break,
            },
        }
    }
    while ws.recv().await.is_some() {}
}

/// tokio-tungstenite as axum's chat example has it: split, a send task draining the channel
/// into the sink, a receive task publishing, and whichever ends first ends the other.
async fn tungstenite_relay(
    tcp: TcpStream,
    hub: broadcast::Sender<tokio_tungstenite::tungstenite::Message>,
) {
    let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let mut inbox = hub.subscribe();
    let mut send_task = tokio::spawn(async move {
        loop {
            match inbox.recv().await {
                Ok(msg) => {
                    if sink.send(msg).await.is_err() {
                        break;
                    }
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => break,
            }
        }
    });
    let mut recv_task = tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            if msg.is_binary() || msg.is_text() {
                let _ = hub.send(msg);
            }
        }
    });
    tokio::select! {
        _ = &mut send_task => recv_task.abort(),
        _ = &mut recv_task => send_task.abort(),
    }
}

/// fastwebsockets: hyper serves the upgrade request as for the echo server.
async fn fastwebsockets_connection(tcp: TcpStream, hub: broadcast::Sender<tether::Bytes>) {
    let io = hyper_util::rt::TokioIo::new(tcp);
    let service =
        hyper::service::service_fn(move |request| fastwebsockets_upgrade(request, hub.clone()));
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .with_upgrades()
        .await;
}

async fn fastwebsockets_upgrade(
    mut request: hyper::Request<hyper::body::Incoming>,
    hub: broadcast::Sender<tether::Bytes>,
) -> Result<
    hyper::Response<http_body_util::Empty<hyper::body::Bytes>>,
    fastwebsockets::WebSocketError,
> {
    let (response, upgrade) = fastwebsockets::upgrade::upgrade(&mut request)?;
    tokio::spawn(async move {
        let _ = fastwebsockets_relay(upgrade, hub).await;
    });
    Ok(response)
}

/// Split as in fastwebsockets' `echo_server_split` example: the read half publishes, a
/// writer task writes each message of the channel with one `write_frame`.
async fn fastwebsockets_relay(
    upgrade: fastwebsockets::upgrade::UpgradeFut,
    hub: broadcast::Sender<tether::Bytes>,
) -> Result<(), fastwebsockets::WebSocketError> {
    use fastwebsockets::{Frame, OpCode, Payload};
    let ws = upgrade.await?;
    let (read, mut write) = ws.split(tokio::io::split);
    let mut read = fastwebsockets::FragmentCollectorRead::new(read);
    let mut inbox = hub.subscribe();
    let writer = tokio::spawn(async move {
        loop {
            match inbox.recv().await {
                Ok(payload) => {
                    let frame = Frame::binary(Payload::Borrowed(&payload));
                    if write.write_frame(frame).await.is_err() {
                        break;
                    }
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => break,
            }
        }
    });
    loop {
        // Obligated writes (Pong, the Close reply) are dropped: the load generator sends
        // neither Ping nor Close.
        let frame = read
            .read_frame::<_, fastwebsockets::WebSocketError>(&mut |_| async { Ok(()) })
            .await;
        match frame {
            Ok(frame) => match frame.opcode {
                OpCode::Close => break,
                OpCode::Text | OpCode::Binary => {
                    let _ = hub.send(tether::Bytes::from(Vec::from(frame.payload)));
                }
                _ => {}
            },
            Err(_) => break,
        }
    }
    writer.abort();
    Ok(())
}

/// tokio-websockets: one task selecting between the connection and the channel.
async fn tokio_websockets_relay(tcp: TcpStream, hub: broadcast::Sender<tokio_websockets::Message>) {
    let Ok((_, mut ws)) = tokio_websockets::ServerBuilder::new().accept(tcp).await else {
        return;
    };
    let mut inbox = hub.subscribe();
    loop {
        tokio::select! {
            received = ws.next() => match received {
                Some(Ok(msg)) => {
                    if msg.is_binary() || msg.is_text() {
                        let _ = hub.send(msg);
                    }
                }
                _ => break,
            },
            next = inbox.recv() => match next {
                Ok(msg) => {
                    if ws.send(msg).await.is_err() {
                        break;
                    }
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => break,
            },
        }
    }
}

// ---------------------------------------------------------------------------------------
// Load generator

/// What the receivers and the sender count besides [`Shared`]'s deliveries and lags.
#[derive(Default)]
struct Tally {
    /// Sequence numbers the receivers skipped while measuring.
    lost: Cell<u64>,
    /// Messages the sender sent while measuring.
    sent: Cell<u64>,
}

/// `bench broadcast --addr A [--also B] --receivers N --size B --outstanding K --warmup S
/// --duration S`: with `--also`, half the receivers connect to B (another server of the same
/// broadcast); the sender connects to A.
pub(crate) fn load(args: &Args) -> io::Result<()> {
    args.only(&[
        "addr",
        "also",
        "receivers",
        "size",
        "outstanding",
        "warmup",
        "duration",
        "cpu",
    ])?;
    let addr = args
        .get("addr")
        .ok_or_else(|| io::Error::other("--addr"))?
        .to_owned();
    let also = args.get("also").map(str::to_owned);
    let receivers: usize = args.parse_or("receivers", 1000)?;
    let size: usize = args.parse_or("size", 1024)?;
    if size < STAMP {
        return Err(io::Error::other(format!("--size: at least {STAMP} bytes")));
    }
    let outstanding: u64 = args.parse_or::<u64>("outstanding", 8)?.max(1);
    let warmup = secs(args, "warmup", 1.0)?;
    let duration = secs(args, "duration", 3.0)?;
    let line = run_local(args, async move {
        let epoch = Instant::now();
        let shared = Rc::new(Shared::default());
        let tally = Rc::new(Tally::default());
        let mut open = 0;
        let (here, there) = match &also {
            Some(_) => (receivers - receivers / 2, receivers / 2),
            None => (receivers, 0),
        };
        let mut opened_all = open_many(&addr, here, false).await;
        if let Some(also) = &also {
            opened_all.extend(open_many(also, there, false).await);
        }
        for opened in opened_all {
            match opened {
                Ok((tcp, extra)) => {
                    open += 1;
                    let task = receive(tcp, extra, epoch, shared.clone(), tally.clone());
                    tokio::task::spawn_local(task);
                }
                Err(e) => shared.error(format!("receiver connection: {e}")),
            }
        }
        if open == 0 {
            return Err(io::Error::other("no receiver could connect"));
        }
        // Let the server subscribe the last receivers before anything is sent.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (tcp, extra) = wire::open(&addr, false).await?;
        let sender = send(
            tcp,
            extra,
            size,
            outstanding,
            epoch,
            shared.clone(),
            tally.clone(),
        );
        tokio::task::spawn_local(sender);
        let mut line = shared.measure(warmup, duration).await;
        let _ = write!(
            line,
            " lost={} sent={} receivers={open}",
            tally.lost.get(),
            tally.sent.get()
        );
        Ok(line)
    })?;
    println!("{line}");
    Ok(())
}

/// One receiver: records the lag of every message and the sequence numbers it skipped.
async fn receive(
    mut tcp: TcpStream,
    extra: Vec<u8>,
    epoch: Instant,
    shared: Rc<Shared>,
    tally: Rc<Tally>,
) {
    let mut reader = StampReader::default();
    let mut next: Option<u64> = None;
    let mut on_data = |data: &[u8], now: Instant| {
        reader.feed(data, |seq, sent_ns| {
            shared.complete(epoch + Duration::from_nanos(sent_ns), now);
            if let Some(expected) = next {
                if seq > expected && shared.phase.get() == Phase::Measure {
                    tally.lost.set(tally.lost.get() + (seq - expected));
                }
            }
            next = Some(next.map_or(seq + 1, |n| n.max(seq + 1)));
        });
    };
    on_data(&extra, Instant::now());
    loop {
        match read_shared(&mut tcp, |data| on_data(data, Instant::now())).await {
            Ok(true) => {}
            Ok(false) => return shared.error("receiver: server closed the connection"),
            Err(e) => return shared.error(format!("receiver: {e}")),
        }
        if shared.stopped() {
            return;
        }
    }
}

/// The sender: keeps `outstanding` messages between its write and its own copy's return.
async fn send(
    tcp: TcpStream,
    extra: Vec<u8>,
    size: usize,
    outstanding: u64,
    epoch: Instant,
    shared: Rc<Shared>,
    tally: Rc<Tally>,
) {
    if let Err(e) = send_inner(tcp, extra, size, outstanding, epoch, &shared, &tally).await {
        shared.error(format!("sender: {e}"));
    }
}

async fn send_inner(
    mut tcp: TcpStream,
    extra: Vec<u8>,
    size: usize,
    outstanding: u64,
    epoch: Instant,
    shared: &Shared,
    tally: &Tally,
) -> io::Result<()> {
    let (template, frame_len) = wire::masked_frames(size, 1, MASK_KEY);
    let stamp_at = frame_len - size;
    let mut reader = StampReader::default();
    // One past the highest sequence number whose copy came back.
    let mut acked = 0u64;
    let mut next_seq = 0u64;
    let mut out: Vec<u8> = Vec::with_capacity(frame_len * outstanding as usize);
    reader.feed(&extra, |seq, _| acked = acked.max(seq + 1));
    loop {
        out.clear();
        let sent_ns = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        while next_seq.saturating_sub(acked) < outstanding {
            let start = out.len();
            out.extend_from_slice(&template);
            let mut stamp = [0u8; STAMP];
            stamp[..8].copy_from_slice(&next_seq.to_le_bytes());
            stamp[8..].copy_from_slice(&sent_ns.to_le_bytes());
            for (i, b) in stamp.iter().enumerate() {
                out[start + stamp_at + i] = b ^ MASK_KEY[i % 4];
            }
            next_seq += 1;
            if shared.phase.get() == Phase::Measure {
                tally.sent.set(tally.sent.get() + 1);
            }
        }
        if !out.is_empty() {
            tcp.write_all(&out).await?;
        }
        let read = tokio::time::timeout(
            STALL,
            read_shared(&mut tcp, |data| {
                reader.feed(data, |seq, _| acked = acked.max(seq + 1));
            }),
        )
        .await;
        match read {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return Err(io::Error::other("server closed the connection")),
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                shared.error(format!(
                    "sender: no copy back in {STALL:?}, {} outstanding",
                    next_seq - acked
                ));
                acked = next_seq;
            }
        }
        if reader.closed {
            return Err(io::Error::other("server sent Close"));
        }
        if shared.stopped() {
            return Ok(());
        }
    }
}

/// Parses the server's (unmasked) frames and reports each complete data message's sequence
/// number and send time from the first [`STAMP`] bytes of its payload; skips everything else.
#[derive(Debug, Default)]
struct StampReader {
    head: [u8; 14],
    head_len: usize,
    in_payload: bool,
    remaining: u64,
    data_frame: bool,
    fin: bool,
    stamp: [u8; STAMP],
    stamp_len: usize,
    /// A Close frame was seen.
    closed: bool,
}

impl StampReader {
    fn feed(&mut self, mut data: &[u8], mut on_message: impl FnMut(u64, u64)) {
        while !data.is_empty() {
            if self.in_payload {
                let n = usize::try_from(self.remaining).map_or(data.len(), |r| r.min(data.len()));
                if self.data_frame && self.stamp_len < STAMP {
                    let take = (STAMP - self.stamp_len).min(n);
                    self.stamp[self.stamp_len..self.stamp_len + take]
                        .copy_from_slice(&data[..take]);
                    self.stamp_len += take;
                }
                data = &data[n..];
                self.remaining -= n as u64;
                if self.remaining == 0 {
                    self.end_frame(&mut on_message);
                }
                continue;
            }
            let need = if self.head_len < 2 {
                2
            } else {
                wire::header_len(self.head[1])
            };
            let take = (need - self.head_len).min(data.len());
            self.head[self.head_len..self.head_len + take].copy_from_slice(&data[..take]);
            self.head_len += take;
            data = &data[take..];
            if self.head_len >= 2 && self.head_len == wire::header_len(self.head[1]) {
                self.begin_frame();
                if self.remaining == 0 {
                    self.end_frame(&mut on_message);
                }
            }
        }
    }

    fn begin_frame(&mut self) {
        let head = &self.head[..self.head_len];
        self.fin = head[0] & 0x80 != 0;
        let opcode = head[0] & 0x0f;
        self.data_frame = opcode <= 0x2;
        self.closed |= opcode == 0x8;
        self.remaining = match head[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([head[2], head[3]])),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&head[2..10]);
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        self.head_len = 0;
        self.in_payload = true;
    }

    fn end_frame(&mut self, on_message: &mut impl FnMut(u64, u64)) {
        self.in_payload = false;
        if !(self.data_frame && self.fin) {
            return;
        }
        if self.stamp_len == STAMP {
            let mut seq = [0u8; 8];
            let mut sent = [0u8; 8];
            seq.copy_from_slice(&self.stamp[..8]);
            sent.copy_from_slice(&self.stamp[8..]);
            on_message(u64::from_le_bytes(seq), u64::from_le_bytes(sent));
        }
        self.stamp_len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![opcode | if fin { 0x80 } else { 0 }];
        if payload.len() < 126 {
            v.push(payload.len() as u8);
        } else {
            v.push(126);
            v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        v.extend_from_slice(payload);
        v
    }

    fn stamped(seq: u64, sent: u64, size: usize) -> Vec<u8> {
        let mut p = vec![b'x'; size];
        p[..8].copy_from_slice(&seq.to_le_bytes());
        p[8..16].copy_from_slice(&sent.to_le_bytes());
        p
    }

    #[test]
    fn reads_stamps_whatever_the_chunking() {
        let mut stream = Vec::new();
        stream.extend(frame(0x2, true, &stamped(7, 1_000, 1024)));
        stream.extend(frame(0x9, true, b"ping")); // control frames are skipped
        let second = stamped(8, 2_000, 300);
        stream.extend(frame(0x2, false, &second[..10])); // the stamp split over fragments
        stream.extend(frame(0x0, true, &second[10..]));
        stream.extend(frame(0x2, true, &stamped(9, 3_000, 16)));
        for chunk in [1, 2, 3, 5, 17, 1000, stream.len()] {
            let mut r = StampReader::default();
            let mut seen = Vec::new();
            for part in stream.chunks(chunk) {
                r.feed(part, |seq, sent| seen.push((seq, sent)));
            }
            assert_eq!(seen, [(7, 1_000), (8, 2_000), (9, 3_000)], "chunk {chunk}");
            assert!(!r.closed);
        }
        let mut r = StampReader::default();
        r.feed(&frame(0x8, true, &[0x03, 0xe8]), |_, _| {
            panic!("not a message")
        });
        assert!(r.closed);
    }

    #[test]
    fn the_sender_frame_unmasks_to_its_stamp() {
        let size = 1024;
        let (template, frame_len) = wire::masked_frames(size, 1, MASK_KEY);
        let stamp_at = frame_len - size;
        let mut out = template.clone();
        let want = stamped(42, 99, STAMP);
        for (i, b) in want.iter().enumerate() {
            out[stamp_at + i] = b ^ MASK_KEY[i % 4];
        }
        let key = &out[stamp_at - 4..stamp_at];
        let got: Vec<u8> = out[stamp_at..stamp_at + STAMP]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        assert_eq!(got, want);
    }
}
