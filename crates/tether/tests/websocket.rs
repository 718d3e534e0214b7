//! Integration tests of an open connection: message round trips, split halves, cancel-safe
//! receiving, backpressure, keepalive, the closing handshake, protocol errors, ping and write
//! coalescing. Most run over in-memory `tokio::io::duplex` pairs; a few over loopback TCP.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tether::proto::Role;
use tether::{
    ClientBuilder, CloseFrame, Config, Error, Message, PeerClose, ProtocolError, Server,
    ServerConfig, WebSocket,
};
use tokio::io::{
    duplex, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf,
};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Bounds a whole scenario so that a deadlock fails the test instead of hanging it.
const DEADLOCK_GUARD: Duration = Duration::from_secs(30);
/// The same under the paused clock, where it costs no real time: a timer that never fires
/// fails the test instead of parking the runtime forever.
const VIRTUAL_GUARD: Duration = Duration::from_secs(600);

// ----- helpers -----

/// Default settings without keepalive, so that idle waits under the paused clock send nothing.
fn quiet() -> Config {
    Config::default().ping_interval(None)
}

fn client<S: AsyncRead + AsyncWrite + Unpin>(io: S, config: &Config) -> WebSocket<S> {
    WebSocket::from_raw(io, Role::Client, config, &[])
}

fn server<S: AsyncRead + AsyncWrite + Unpin>(io: S, config: &Config) -> WebSocket<S> {
    WebSocket::from_raw(io, Role::Server, config, &[])
}

/// A client and a server connected by an in-memory pipe of `buffer` bytes each way.
fn ws_pair(config: &Config, buffer: usize) -> (WebSocket<DuplexStream>, WebSocket<DuplexStream>) {
    let (a, b) = duplex(buffer);
    (client(a, config), server(b, config))
}

/// Echoes every message until the connection ends; returns the connection.
fn spawn_echo<S>(mut ws: WebSocket<S>) -> JoinHandle<WebSocket<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        while let Some(Ok(msg)) = ws.recv().await {
            if ws.send(msg).await.is_err() {
                break;
            }
        }
        ws
    })
}

/// Messages of the large-message tests: past the 1 MiB default limit, which they raise.
const LARGE_LIMIT: usize = 4 << 20;

/// A loopback tether server echoing every message, up to [`LARGE_LIMIT`] bytes.
async fn tcp_echo_server() -> SocketAddr {
    let config = ServerConfig::default().config(Config::default().max_message_size(LARGE_LIMIT));
    let srv = Server::bind("127.0.0.1:0", config).await.unwrap();
    let addr = srv.local_addr().unwrap();
    tokio::spawn(srv.serve(|mut ws, _request| async move {
        while let Some(Ok(msg)) = ws.recv().await {
            if ws.send(msg).await.is_err() {
                break;
            }
        }
    }));
    addr
}

async fn recv_msg<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocket<S>) -> Message {
    match ws.recv().await {
        Some(Ok(msg)) => msg,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Encodes one frame by hand, with any opcode (reserved ones included).
fn encode(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// An unmasked frame as a server sends it.
fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    encode(true, opcode, payload, None)
}

#[derive(Debug)]
struct Frame {
    fin: bool,
    opcode: u8,
    masked: bool,
    payload: Vec<u8>,
}

impl Frame {
    fn close_code(&self) -> Option<u16> {
        (self.opcode == CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    fn close_reason(&self) -> &str {
        std::str::from_utf8(self.payload.get(2..).unwrap_or_default()).unwrap()
    }
}

/// Reads one frame (unmasking it); `None` at end of input.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Option<Frame> {
    let mut head = [0u8; 2];
    if r.read_exact(&mut head).await.is_err() {
        return None;
    }
    let masked = head[1] & 0x80 != 0;
    let len = match head[1] & 0x7F {
        126 => u64::from(r.read_u16().await.unwrap()),
        127 => r.read_u64().await.unwrap(),
        n => u64::from(n),
    };
    let mut key = [0u8; 4];
    if masked {
        r.read_exact(&mut key).await.unwrap();
    }
    let mut payload = vec![0u8; usize::try_from(len).unwrap()];
    r.read_exact(&mut payload).await.unwrap();
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    Some(Frame {
        fin: head[0] & 0x80 != 0,
        opcode: head[0] & 0x0F,
        masked,
        payload,
    })
}

async fn read_all_frames<R: AsyncRead + Unpin>(r: &mut R) -> Vec<Frame> {
    let mut frames = Vec::new();
    while let Some(f) = read_frame(r).await {
        frames.push(f);
    }
    frames
}

/// Frames in captured bytes.
async fn parse_frames(bytes: &[u8]) -> Vec<Frame> {
    let mut rest = bytes;
    read_all_frames(&mut rest).await
}

/// What a [`Tap`] saw.
#[derive(Clone, Default)]
struct Log {
    read: Arc<Mutex<Vec<u8>>>,
    written: Arc<Mutex<Vec<u8>>>,
    writes: Arc<AtomicUsize>,
}

impl Log {
    fn read(&self) -> Vec<u8> {
        self.read.lock().unwrap().clone()
    }
    fn written(&self) -> Vec<u8> {
        self.written.lock().unwrap().clone()
    }
    fn writes(&self) -> usize {
        self.writes.load(Ordering::SeqCst)
    }
}

/// A transport wrapper that records every byte read and written, and counts the writes.
struct Tap<S> {
    io: S,
    log: Log,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tap<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            let new = &buf.filled()[before..];
            this.log.read.lock().unwrap().extend_from_slice(new);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tap<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            if n > 0 {
                this.log.writes.fetch_add(1, Ordering::SeqCst);
                this.log
                    .written
                    .lock()
                    .unwrap()
                    .extend_from_slice(&buf[..n]);
            }
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Text of a given length in bytes that is not all ASCII: multi-byte characters must survive
/// being cut across reads.
fn big_text(len: usize) -> String {
    let mut s = String::with_capacity(len + 4);
    let alphabet = ['a', 'é', '€', '𝄞', 'z'];
    let mut i = 0;
    while s.len() < len {
        s.push(alphabet[i % alphabet.len()]);
        i += 1;
    }
    s
}

fn big_binary(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

// ----- round trips -----

#[tokio::test]
async fn duplex_text_and_binary_round_trip() {
    let (mut c, s) = ws_pair(&quiet(), 64 << 10);
    let echo = spawn_echo(s);
    let messages = [
        Message::text("hello"),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::text(""),
        Message::binary(Vec::new()),
        Message::text("ünïcødé ✓"),
    ];
    for msg in &messages {
        c.send(msg.clone()).await.unwrap();
        assert_eq!(&recv_msg(&mut c).await, msg);
    }
    c.close(1000, "").await.unwrap();
    let s = echo.await.unwrap();
    assert!(s.is_closed());
}

#[tokio::test]
async fn duplex_large_messages_round_trip() {
    let (mut c, s) = ws_pair(&quiet().max_message_size(LARGE_LIMIT), 64 << 10);
    spawn_echo(s);
    let binary = Message::binary(big_binary((1 << 20) + 3));
    let text = Message::text(big_text(2 << 20));
    for msg in [binary, text] {
        c.send(msg.clone()).await.unwrap();
        let back = recv_msg(&mut c).await;
        assert_eq!(back.len(), msg.len());
        assert!(back == msg, "a large message came back changed");
    }
}

#[tokio::test]
async fn duplex_many_small_messages_keep_their_order() {
    const N: usize = 1000;
    // The pipe holds all echoes, so the client may send everything before reading.
    let (mut c, s) = ws_pair(&quiet(), 1 << 20);
    spawn_echo(s);
    for i in 0..N {
        if i % 2 == 0 {
            c.send(format!("text {i}")).await.unwrap();
        } else {
            c.send(i.to_be_bytes().to_vec()).await.unwrap();
        }
    }
    for i in 0..N {
        let expected = if i % 2 == 0 {
            Message::text(format!("text {i}"))
        } else {
            Message::binary(i.to_be_bytes().to_vec())
        };
        assert_eq!(recv_msg(&mut c).await, expected, "message {i}");
    }
}

#[tokio::test]
async fn tcp_round_trips_through_server_and_connect() {
    let addr = tcp_echo_server().await;
    let mut ws = ClientBuilder::new(format!("ws://{addr}/"))
        .config(Config::default().max_message_size(LARGE_LIMIT))
        .connect()
        .await
        .unwrap();
    for msg in [
        Message::text("over tcp"),
        Message::binary(vec![9u8; 10]),
        Message::binary(big_binary((1 << 20) + 17)),
        Message::text(big_text(1 << 20)),
    ] {
        ws.send(msg.clone()).await.unwrap();
        assert!(recv_msg(&mut ws).await == msg);
    }
    for i in 0..500u32 {
        ws.send(format!("n{i}")).await.unwrap();
    }
    for i in 0..500u32 {
        assert_eq!(recv_msg(&mut ws).await, Message::text(format!("n{i}")));
    }
    ws.close(1000, "done").await.unwrap();
    assert_eq!(ws.close_code(), 1000);
}

// ----- split -----

fn numbered(i: usize) -> Message {
    // Sizes vary from tiny to larger than the small pipe used below.
    let mut data = i.to_be_bytes().to_vec();
    data.resize(8 + (i * 37) % 9000, (i % 256) as u8);
    Message::binary(data)
}

/// Sends `n` numbered messages from one task while another receives their echoes.
async fn send_and_receive_from_two_tasks<S>(ws: WebSocket<S>, n: usize)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut tx, mut rx) = ws.split();
    let sender = tokio::spawn(async move {
        for i in 0..n {
            tx.send(numbered(i)).await.unwrap();
        }
        tx
    });
    let receiver = tokio::spawn(async move {
        for i in 0..n {
            match rx.recv().await {
                Some(Ok(msg)) => assert!(msg == numbered(i), "echo {i} differs"),
                other => panic!("echo {i}: {other:?}"),
            }
        }
        rx
    });
    let (tx, rx) = timeout(DEADLOCK_GUARD, async {
        (sender.await.unwrap(), receiver.await.unwrap())
    })
    .await
    .expect("the two halves deadlocked");
    // Closing from the sending half completes through the receiving half.
    let (mut tx, mut rx) = (tx, rx);
    tx.close(1000, "done").await.unwrap();
    let end = timeout(DEADLOCK_GUARD, rx.recv()).await.unwrap();
    assert!(
        end.is_none(),
        "expected the end of the connection, got {end:?}"
    );
    assert_eq!(rx.close_code(), 1000);
    assert!(tx.send("late").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_halves_work_from_two_tasks_over_duplex() {
    // A small pipe makes both directions fill up and wait for each other.
    let (c, s) = ws_pair(&quiet(), 4096);
    spawn_echo(s);
    send_and_receive_from_two_tasks(c, 2000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_halves_work_from_two_tasks_over_tcp() {
    let addr = tcp_echo_server().await;
    let ws = tether::connect(&format!("ws://{addr}/")).await.unwrap();
    assert!(ws.response().is_some_and(|r| r.status == 101));
    send_and_receive_from_two_tasks(ws, 2000).await;
}

// ----- cancel safety -----

/// Writes `messages` as server frames, a few bytes at a time, yielding between writes so
/// that the receiver sees partial frames.
fn spawn_trickle(mut peer: DuplexStream, messages: Vec<String>, chunk: usize, pause: Duration) {
    tokio::spawn(async move {
        let mut bytes = Vec::new();
        for m in &messages {
            bytes.extend(server_frame(TEXT, m.as_bytes()));
        }
        for piece in bytes.chunks(chunk) {
            peer.write_all(piece).await.unwrap();
            if pause.is_zero() {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(pause).await;
            }
        }
        // Keep the pipe open until the receiver is done with it.
        let mut sink = [0u8; 64];
        while peer.read(&mut sink).await.is_ok_and(|n| n > 0) {}
    });
}

#[tokio::test]
async fn recv_cancelled_by_select_loses_and_duplicates_nothing() {
    const N: usize = 300;
    let (a, peer) = duplex(1 << 16);
    let mut ws = client(a, &quiet());
    let expected: Vec<String> = (0..N).map(|i| format!("message number {i}")).collect();
    spawn_trickle(peer, expected.clone(), 7, Duration::ZERO);
    let mut got = Vec::new();
    let mut cancelled = 0usize;
    while got.len() < N {
        tokio::select! {
            biased;
            // Ready on its second poll: every recv that is pending once is cancelled.
            _ = tokio::task::yield_now() => {
                cancelled += 1;
                assert!(cancelled < 1_000_000, "messages stopped arriving");
            }
            msg = ws.recv() => match msg {
                Some(Ok(Message::Text(t))) => got.push(t),
                other => panic!("unexpected {other:?}"),
            },
        }
    }
    assert_eq!(got, expected);
    assert!(cancelled > N, "recv was cancelled only {cancelled} times");
}

/// Trickles `expected` to a client in `chunk`-byte writes a millisecond apart while `recv` is
/// cancelled by a 1.5 ms timeout again and again; every message must arrive once, in order.
async fn recv_under_timeouts_gets_every_message(expected: Vec<String>, chunk: usize) {
    let (a, peer) = duplex(1 << 16);
    let mut ws = client(a, &quiet());
    spawn_trickle(peer, expected.clone(), chunk, Duration::from_millis(1));
    let mut got = Vec::new();
    let mut cancelled = 0usize;
    while got.len() < expected.len() {
        match timeout(Duration::from_micros(1500), ws.recv()).await {
            Ok(Some(Ok(Message::Text(t)))) => got.push(t),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => cancelled += 1,
        }
        assert!(cancelled < 100_000, "messages stopped arriving");
    }
    assert!(
        got == expected,
        "messages were lost, duplicated or reordered"
    );
    assert!(
        cancelled >= expected.len(),
        "recv was cancelled only {cancelled} times"
    );
}

#[tokio::test(start_paused = true)]
async fn recv_cancelled_by_timeout_loses_and_duplicates_nothing() {
    let expected = (0..40).map(|i| big_text(3000 + i)).collect();
    recv_under_timeouts_gets_every_message(expected, 1000).await;
}

// ----- backpressure -----

#[tokio::test(start_paused = true)]
async fn send_waits_at_the_high_water_mark_when_the_peer_does_not_read() {
    const HIGH: usize = 16 << 10;
    const LOW: usize = 4 << 10;
    const SIZE: usize = 1000;
    // Header of a masked 1000-byte frame: 2 + 2 (length) + 4 (mask).
    const FRAME: usize = SIZE + 8;
    const FINAL: u32 = 999_999;
    let payload = |i: u32| {
        let mut v = i.to_be_bytes().to_vec();
        v.resize(SIZE, 0xAB);
        v
    };
    let (a, mut peer) = duplex(4096);
    let mut ws = client(a, &quiet().write_buffer(HIGH, LOW));

    let mut completed = 0usize;
    let mut pending = 0usize;
    for i in 0..200u32 {
        match timeout(Duration::from_millis(10), ws.send(payload(i))).await {
            Ok(result) => {
                result.unwrap();
                completed += 1;
            }
            Err(_) => pending += 1,
        }
        assert!(
            ws.buffered_amount() <= HIGH + FRAME,
            "{} bytes buffered after {} sends",
            ws.buffered_amount(),
            i + 1
        );
    }
    assert!(pending >= 150, "only {pending} of 200 sends stayed pending");
    assert!(
        completed < 50,
        "{completed} sends completed into a full pipe"
    );
    assert!(
        ws.buffered_amount() > HIGH,
        "sends stopped before reaching the high-water mark ({} bytes)",
        ws.buffered_amount()
    );

    // Once the peer reads, a send goes through again and everything queued arrives in order.
    let reader = tokio::spawn(async move { read_all_frames(&mut peer).await });
    timeout(Duration::from_secs(5), ws.send(payload(FINAL)))
        .await
        .expect("send still pending while the peer reads")
        .unwrap();
    ws.flush().await.unwrap();
    drop(ws);
    let frames = reader.await.unwrap();
    let ids: Vec<u32> = frames
        .iter()
        .map(|f| {
            assert_eq!((f.opcode, f.payload.len()), (BINARY, SIZE));
            u32::from_be_bytes(f.payload[..4].try_into().unwrap())
        })
        .collect();
    let (last, queued) = ids.split_last().unwrap();
    assert_eq!(*last, FINAL);
    assert!(queued.len() >= completed);
    assert!(
        queued.iter().copied().eq(0..queued.len() as u32),
        "queued messages arrived out of order or with gaps: {queued:?}"
    );
}

// ----- keepalive -----

#[tokio::test(start_paused = true)]
async fn keepalive_without_pong_fails_with_1011_after_ping_timeout() {
    let config = Config::default()
        .ping_interval(Some(Duration::from_secs(20)))
        .ping_timeout(Some(Duration::from_secs(20)));
    let (a, mut peer) = duplex(1 << 16);
    let mut ws = client(a, &config);
    // The peer reads everything but never answers.
    let reader = tokio::spawn(async move { read_all_frames(&mut peer).await });

    let start = Instant::now();
    match timeout(VIRTUAL_GUARD, ws.recv()).await {
        Ok(Some(Err(Error::Protocol(ProtocolError::KeepaliveTimeout)))) => {}
        other => panic!("expected a keepalive timeout, got {other:?}"),
    }
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(40) && waited < Duration::from_secs(41),
        "keepalive failed after {waited:?} of virtual time"
    );
    assert!(ws.recv().await.is_none());
    assert_eq!(ws.close_code(), 1006);

    let frames = reader.await.unwrap();
    let opcodes: Vec<u8> = frames.iter().map(|f| f.opcode).collect();
    assert_eq!(opcodes, [PING, CLOSE], "frames: {frames:?}");
    assert!(frames[0].masked, "client frames must be masked");
    assert_eq!(frames[1].close_code(), Some(1011));
}

#[tokio::test(start_paused = true)]
async fn keepalive_with_answering_peer_stays_open() {
    let config = Config::default()
        .ping_interval(Some(Duration::from_secs(20)))
        .ping_timeout(Some(Duration::from_secs(20)));
    let (a, b) = duplex(1 << 16);
    let log = Log::default();
    let mut c = client(
        Tap {
            io: a,
            log: log.clone(),
        },
        &config,
    );
    spawn_echo(server(b, &config));

    // Nothing arrives for 130 s of virtual time, and nothing fails.
    let idle = timeout(Duration::from_secs(130), c.recv()).await;
    assert!(idle.is_err(), "expected silence, got {idle:?}");
    c.send("still there?").await.unwrap();
    assert_eq!(recv_msg(&mut c).await, Message::text("still there?"));

    let sent = parse_frames(&log.written()).await;
    let received = parse_frames(&log.read()).await;
    let count = |frames: &[Frame], op: u8| frames.iter().filter(|f| f.opcode == op).count();
    // Both ends ping every 20 s and answer each other.
    assert!(count(&sent, PING) >= 6, "client sent {sent:?}");
    assert!(count(&received, PONG) >= 6, "client received {received:?}");
    assert!(count(&received, PING) >= 6, "client received {received:?}");
    assert!(count(&sent, PONG) >= 6, "client sent {sent:?}");
    assert_eq!(count(&sent, CLOSE) + count(&received, CLOSE), 0);
}

// ----- closing handshake -----

#[tokio::test]
async fn close_handshake_reports_code_and_reason_to_the_peer() {
    let (mut c, mut s) = ws_pair(&quiet(), 64 << 10);
    let peer = tokio::spawn(async move {
        let end = s.recv().await;
        let frame = s.peer_close().clone();
        (end.is_none(), s.close_code(), frame, s.is_closed())
    });
    c.close(1000, "bye").await.unwrap();
    assert!(c.is_closed());
    assert_eq!(c.close_code(), 1000, "the server echoes the code");
    let (ended, code, frame, closed) = peer.await.unwrap();
    assert!(ended, "the peer's recv should return None");
    assert_eq!(code, 1000);
    assert_eq!(
        frame,
        PeerClose::Frame(CloseFrame {
            code: 1000,
            reason: "bye".into()
        })
    );
    assert!(closed);
    assert!(matches!(c.send("late").await, Err(Error::ConnectionClosed)));
}

#[tokio::test(start_paused = true)]
async fn close_returns_after_close_timeout_when_peer_never_answers() {
    let config = quiet().close_timeout(Duration::from_secs(10));
    let (a, mut peer) = duplex(1 << 16);
    let mut ws = client(a, &config);
    let reader = tokio::spawn(async move { read_all_frames(&mut peer).await });

    let start = Instant::now();
    timeout(VIRTUAL_GUARD, ws.close(1000, "bye"))
        .await
        .expect("close did not give up waiting")
        .unwrap();
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(10) && waited < Duration::from_secs(11),
        "close returned after {waited:?} of virtual time"
    );
    assert!(ws.is_closed());
    assert_eq!(ws.close_code(), 1006, "no Close frame came back");
    assert_eq!(ws.peer_close(), &PeerClose::NotReceived);

    let frames = reader.await.unwrap();
    assert_eq!(frames.len(), 1, "frames: {frames:?}");
    assert_eq!(frames[0].close_code(), Some(1000));
    assert_eq!(frames[0].close_reason(), "bye");
}

#[tokio::test]
async fn eof_without_close_frame_is_abnormal_closure_1006() {
    let (a, mut peer) = duplex(1 << 16);
    let mut ws = client(a, &quiet());
    peer.write_all(&server_frame(TEXT, b"last words"))
        .await
        .unwrap();
    drop(peer);
    assert_eq!(recv_msg(&mut ws).await, Message::text("last words"));
    assert!(ws.recv().await.is_none());
    assert_eq!(ws.close_code(), 1006);
    assert_eq!(ws.peer_close(), &PeerClose::NotReceived);
    assert!(ws.is_closed());
}

// ----- protocol errors -----

/// Feeds `bytes` from a raw server to a client connection and checks the error `recv` reports
/// and the Close frame the raw server receives.
async fn expect_failure(config: Config, bytes: &[u8], expected: ProtocolError, code: u16) {
    let (a, mut peer) = duplex(1 << 16);
    let mut ws = client(a, &config);
    peer.write_all(bytes).await.unwrap();
    match ws.recv().await {
        Some(Err(Error::Protocol(e))) => {
            assert_eq!(e, expected);
            assert_eq!(e.close_code(), code);
        }
        other => panic!("expected {expected:?}, got {other:?}"),
    }
    // The Close frame is already written, even if the caller never polls again.
    let close = timeout(VIRTUAL_GUARD, read_frame(&mut peer))
        .await
        .expect("no Close frame was written")
        .unwrap();
    assert_eq!((close.opcode, close.fin), (CLOSE, true));
    assert_eq!(close.close_code(), Some(code));
    assert_eq!(close.close_reason(), expected.close_reason());
    // The next recv ends the connection and closes the transport.
    assert!(ws.recv().await.is_none(), "the connection should be closed");
    let rest = read_all_frames(&mut peer).await;
    assert!(rest.is_empty(), "frames after the Close: {rest:?}");
}

// Paused: the guard in `expect_failure` then costs no real time.
#[tokio::test(start_paused = true)]
async fn reserved_opcode_fails_with_1002() {
    expect_failure(
        quiet(),
        &server_frame(0x3, b"?"),
        ProtocolError::UnknownOpcode(3),
        1002,
    )
    .await;
}

// Paused: the guard in `expect_failure` then costs no real time.
#[tokio::test(start_paused = true)]
async fn invalid_utf8_text_fails_with_1007() {
    expect_failure(
        quiet(),
        &server_frame(TEXT, &[b'o', b'k', 0xFF, 0xFE]),
        ProtocolError::InvalidUtf8,
        1007,
    )
    .await;
}

// Paused: the guard in `expect_failure` then costs no real time.
#[tokio::test(start_paused = true)]
async fn message_over_max_message_size_fails_with_1009() {
    let config = quiet().max_message_size(1024);
    expect_failure(
        config.clone(),
        &server_frame(BINARY, &[7u8; 2000]),
        ProtocolError::MessageTooLarge { max: 1024 },
        1009,
    )
    .await;
    // The same limit holds for a message split into frames that are each small enough.
    let mut fragmented = encode(false, BINARY, &[1u8; 600], None);
    fragmented.extend(encode(true, CONTINUATION, &[2u8; 600], None));
    expect_failure(
        config,
        &fragmented,
        ProtocolError::MessageTooLarge { max: 1024 },
        1009,
    )
    .await;
}

#[tokio::test]
async fn messages_before_a_protocol_error_are_still_delivered() {
    let (a, mut peer) = duplex(1 << 16);
    let mut ws = client(a, &quiet());
    let mut bytes = server_frame(TEXT, b"first");
    bytes.extend(server_frame(0xB, b""));
    peer.write_all(&bytes).await.unwrap();
    assert_eq!(recv_msg(&mut ws).await, Message::text("first"));
    assert!(matches!(
        ws.recv().await,
        Some(Err(Error::Protocol(ProtocolError::UnknownOpcode(0xB))))
    ));
}

// ----- ping -----

#[tokio::test(start_paused = true)]
async fn ping_returns_round_trip_time_and_keeps_messages_that_arrived_meanwhile() {
    let (a, mut peer) = duplex(1 << 16);
    let mut ws = client(a, &quiet());
    let peer_task = tokio::spawn(async move {
        let ping = read_frame(&mut peer).await.unwrap();
        assert_eq!(ping.opcode, PING);
        tokio::time::sleep(Duration::from_secs(3)).await;
        peer.write_all(&server_frame(TEXT, b"during ping"))
            .await
            .unwrap();
        // A Pong with another payload does not answer this ping.
        peer.write_all(&server_frame(PONG, b"unrelated"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        peer.write_all(&server_frame(BINARY, &[1, 2, 3]))
            .await
            .unwrap();
        peer.write_all(&server_frame(PONG, &ping.payload))
            .await
            .unwrap();
        peer
    });
    let rtt = timeout(VIRTUAL_GUARD, ws.ping()).await.unwrap().unwrap();
    assert!(
        rtt >= Duration::from_secs(5) && rtt < Duration::from_secs(6),
        "rtt {rtt:?}"
    );
    assert_eq!(recv_msg(&mut ws).await, Message::text("during ping"));
    assert_eq!(recv_msg(&mut ws).await, Message::binary(vec![1u8, 2, 3]));
    drop(peer_task.await.unwrap());
    assert!(ws.recv().await.is_none());
}

#[tokio::test]
async fn ping_against_a_tether_peer() {
    let (mut c, s) = ws_pair(&quiet(), 64 << 10);
    spawn_echo(s);
    for _ in 0..3 {
        c.ping().await.unwrap();
    }
    c.send("after pings").await.unwrap();
    assert_eq!(recv_msg(&mut c).await, Message::text("after pings"));
}

// ----- write coalescing -----

#[tokio::test]
async fn echo_loop_answers_sixteen_pipelined_frames() {
    let (a, mut peer) = duplex(1 << 20);
    let log = Log::default();
    let mut ws = server(
        Tap {
            io: a,
            log: log.clone(),
        },
        &quiet(),
    );
    let mut batch = Vec::new();
    for i in 0..16u8 {
        batch.extend(encode(
            true,
            TEXT,
            format!("pipelined {i}").as_bytes(),
            Some([i, 0x5A, 0xC3, 0x11]),
        ));
    }
    peer.write_all(&batch).await.unwrap();

    for _ in 0..16 {
        let msg = recv_msg(&mut ws).await;
        ws.send(msg).await.unwrap();
    }
    for i in 0..16 {
        let f = read_frame(&mut peer).await.unwrap();
        assert_eq!((f.opcode, f.fin, f.masked), (TEXT, true, false));
        assert_eq!(f.payload, format!("pipelined {i}").into_bytes());
    }
    assert_eq!(ws.buffered_amount(), 0);
    assert!(
        log.writes() < 16,
        "16 echoes took {} writes: replies were not coalesced",
        log.writes()
    );
}

// ----- payloads sent by value and read in place -----

/// A transport that writes vectored, but accepts at most `max` bytes per write, so that
/// writes end in the middle of a frame header or payload. Counts the writes that gathered
/// more than one part.
struct Choppy<S> {
    io: S,
    max: usize,
    gathered: Arc<AtomicUsize>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Choppy<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Choppy<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = buf.len().min(this.max);
        Pin::new(&mut this.io).poll_write(cx, &buf[..n])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut gathered = Vec::new();
        let mut parts = 0;
        for b in bufs {
            if gathered.len() == this.max {
                break;
            }
            let take = b.len().min(this.max - gathered.len());
            gathered.extend_from_slice(&b[..take]);
            parts += usize::from(take > 0);
        }
        let result = Pin::new(&mut this.io).poll_write(cx, &gathered);
        if let Poll::Ready(Ok(n)) = result {
            if parts > 1 && n > 0 {
                this.gathered.fetch_add(1, Ordering::SeqCst);
            }
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn large_messages_survive_vectored_writes_cut_anywhere() {
    let gathered = Arc::new(AtomicUsize::new(0));
    let (a, b) = duplex(100_000);
    let chop = |io, max| Choppy {
        io,
        max,
        gathered: gathered.clone(),
    };
    let c = client(chop(a, 7_777), &quiet());
    spawn_echo(server(chop(b, 50_001), &quiet()));
    // Around the 8 KiB thresholds for sending by value and reading in place, and larger.
    let sizes = [0, 5, 8191, 8192, 8193, 16_384, 70_000, 300_000, 1 << 20];
    let mut messages = Vec::new();
    for &n in &sizes {
        messages.push(Message::binary(big_binary(n)));
        messages.push(Message::text(big_text(n)));
    }
    // All sent before any is read back: sends queue behind each other.
    let sent = messages.clone();
    let (mut tx, mut rx) = c.split();
    let writer = tokio::spawn(async move {
        for m in sent {
            tx.send(m).await.unwrap();
        }
        tx
    });
    for (i, m) in messages.iter().enumerate() {
        let back = timeout(DEADLOCK_GUARD, rx.recv())
            .await
            .expect("echo in time")
            .expect("connection open")
            .expect("no error");
        assert!(
            &back == m,
            "message {i} ({} bytes) came back changed",
            m.len()
        );
    }
    writer.await.unwrap();
    assert!(
        gathered.load(Ordering::SeqCst) > 0,
        "no write gathered a header and a payload sent by value"
    );
}

#[tokio::test(start_paused = true)]
async fn recv_cancelled_while_reading_large_frames_in_place_loses_nothing() {
    // Frames well over 8 KiB, trickled: most of each is read straight into the message.
    let expected = (0..12).map(|i| big_text(20_000 + 4_999 * i)).collect();
    recv_under_timeouts_gets_every_message(expected, 3_000).await;
}
