//! permessage-deflate (RFC 7692) at the frame level, against hand-written peers: a raw client
//! over a `TcpStream` for tether's server, and a raw server for tether's client. The raw peers
//! write the upgrade by hand and build or read frames byte by byte, so that RSV1 and masking
//! are visible. Compressed payloads come from tether's own core (a `tether::proto::Connection`
//! with [`Connection::enable_deflate`]), and so does the decoding of compressed replies.
//!
//! * A compression bomb (10 MiB of zeros, deflated to about 10 KB) against a 1 MiB message
//!   limit: closed with 1009, the peak heap growth while it is handled stays far below the
//!   bomb's size, and the server keeps serving. Against the server (in one frame, in eight,
//!   or all in the continuation after a two-byte first fragment) and the client. In a
//!   control frame it is refused before inflating (RSV1 on a control frame is 1002, below).
//! * Compressed and uncompressed messages interleaved on one connection, fragmented ones and a
//!   Ping between fragments included.
//! * Empty messages after other ones with context takeover (a regression): each is a
//!   non-empty compressed payload, and the stream stays in step.
//! * `send_uncompressed` writes RSV1=0 frames, `send` RSV1=1 frames (both roles).
//! * RSV1 without negotiated compression, on a continuation frame, or on a control frame:
//!   closed with 1002.
//!
//! A counting global allocator (`heap/mod.rs`) measures the heap; the tests take turns (one
//! lock) so that they do not disturb each other's measurements.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tether::proto::deflate::DeflateParams;
use tether::proto::handshake::{self, accept_key, generate_key, HeadLimits, ServerHandshake};
use tether::proto::{Connection, Event, Role};
use tether::{
    ClientBuilder, Config, DeflateConfig, Error, Message, ProtocolError, Server, ServerConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::task::JoinHandle;

mod heap;
use heap::{peak_since, start_peak, SERIAL};

/// Bounds every wait on a socket, so that a bug fails the test instead of hanging it.
const GUARD: Duration = Duration::from_secs(20);

/// The message limit of the peers under attack.
const LIMIT: usize = 1 << 20;

/// The bomb: this many zero bytes, compressed.
const BOMB: usize = 10 << 20;

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONTINUATION: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// The mask the raw client puts on its frames.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

// ---------------------------------------------------------------------------------------------
// Frames, by hand
// ---------------------------------------------------------------------------------------------

/// One frame as read off the wire; `payload` is unmasked, `raw` is the frame as it was sent.
#[derive(Clone, Debug)]
struct Frame {
    fin: bool,
    rsv1: bool,
    opcode: u8,
    masked: bool,
    payload: Vec<u8>,
    raw: Vec<u8>,
}

/// Parses the first frame of `buf`, if it is complete.
fn parse_frame(buf: &[u8]) -> Option<Frame> {
    if buf.len() < 2 {
        return None;
    }
    let (b0, b1) = (buf[0], buf[1]);
    let masked = b1 & 0x80 != 0;
    let (len, mut at) = match b1 & 0x7F {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (usize::from(n), 2),
    };
    let mask: Option<[u8; 4]> = if masked {
        let key = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(key)
    } else {
        None
    };
    let mut payload = buf.get(at..at + len)?.to_vec();
    if let Some(key) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    Some(Frame {
        fin: b0 & 0x80 != 0,
        rsv1: b0 & 0x40 != 0,
        opcode: b0 & 0x0F,
        masked,
        payload,
        raw: buf[..at + len].to_vec(),
    })
}

/// Encodes one frame; masked with [`MASK`] when `masked`.
fn encode(fin: bool, rsv1: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | (u8::from(rsv1) << 6) | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A tether core connection in `role` with permessage-deflate on: it compresses payloads for
/// the raw peers and decodes what tether sends them.
fn core(role: Role, params: DeflateParams) -> Connection {
    let config = tether::proto::Config::default()
        .max_message_size(64 << 20)
        .ping_interval(None);
    let mut conn = Connection::new(role, config, Instant::now());
    conn.enable_deflate(params, &DeflateConfig::default());
    conn
}

/// The complete frame tether's core writes for `data` as one compressed message.
fn compressed_frame(role: Role, params: DeflateParams, opcode: u8, data: &[u8]) -> Vec<u8> {
    let mut conn = core(role, params);
    let result = match opcode {
        TEXT => conn.send_text(std::str::from_utf8(data).expect("text is UTF-8")),
        _ => conn.send_binary(data),
    };
    result.expect("the core queues the message");
    let frame = conn.take_transmit();
    let parsed = parse_frame(&frame).expect("one complete frame");
    assert!(parsed.rsv1, "the core compressed the message");
    assert_eq!(parsed.raw.len(), frame.len(), "one frame");
    frame
}

/// The compressed payload (unmasked) of `data`, for building frames by hand.
fn compressed_payload(params: DeflateParams, data: &[u8]) -> Vec<u8> {
    parse_frame(&compressed_frame(Role::Client, params, BINARY, data))
        .expect("one complete frame")
        .payload
}

/// Feeds one frame to a decoding core and returns the event it gives.
fn decode(decoder: &mut Connection, frame: &Frame) -> Option<Event> {
    decoder.receive(&frame.raw, Instant::now());
    decoder.poll_event()
}

/// The parameters tether's defaults agree on with each other.
fn default_params() -> DeflateParams {
    let config = DeflateConfig::default();
    config
        .server_accept(&config.client_offer())
        .expect("defaults agree")
        .1
}

// ---------------------------------------------------------------------------------------------
// Message contents
// ---------------------------------------------------------------------------------------------

/// xorshift32 bytes: incompressible.
fn random_bytes(size: usize, seed: u32) -> Vec<u8> {
    let mut x = seed;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// JSON-like lines cut to `size` bytes: compressible.
fn json_text(size: usize) -> String {
    let mut s = String::new();
    let mut i = 0u64;
    while s.len() < size {
        s.push_str(&format!(
            "{{\"seq\":{i},\"symbol\":\"TETH-USD\",\"price\":{}}}\n",
            (i * 7919) % 100_003
        ));
        i += 1;
    }
    s.truncate(size);
    s
}

// ---------------------------------------------------------------------------------------------
// The raw peer's socket
// ---------------------------------------------------------------------------------------------

/// A TCP connection read frame by frame.
struct Raw {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn send(&mut self, bytes: &[u8]) {
        tokio::time::timeout(GUARD, self.tcp.write_all(bytes))
            .await
            .expect("write within the guard time")
            .expect("write");
    }

    /// Reads until `buf` ends an HTTP head; returns the head, keeps what follows.
    async fn read_head(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(self.buf[..end + 4].to_vec()).expect("ASCII head");
                self.buf.drain(..end + 4);
                return head;
            }
            assert!(self.fill().await, "connection closed inside the HTTP head");
        }
    }

    /// Reads more bytes; false at the end of the stream (or a reset).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 << 10];
        match tokio::time::timeout(GUARD, self.tcp.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(_) => panic!("nothing to read within {GUARD:?}"),
        }
    }

    /// The next frame; `None` if the connection ends first.
    async fn frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = parse_frame(&self.buf) {
                self.buf.drain(..frame.raw.len());
                return Some(frame);
            }
            if !self.fill().await {
                assert!(self.buf.is_empty(), "connection ended inside a frame");
                return None;
            }
        }
    }

    /// The next frame, which must be a Close: returns its status code (1005 for none).
    async fn close_code(&mut self) -> u16 {
        let frame = self.frame().await.expect("a Close frame before the end");
        assert_eq!(
            frame.opcode,
            CLOSE,
            "expected a Close frame, got {:?}",
            Frame {
                payload: frame.payload[..frame.payload.len().min(32)].to_vec(),
                raw: Vec::new(),
                ..frame
            }
        );
        match frame.payload.get(..2) {
            Some(code) => u16::from_be_bytes([code[0], code[1]]),
            None => 1005,
        }
    }
}

/// The raw client: an upgrade written by hand, offering `offer` (no extension header when
/// `None`). Returns the socket and the server's `Sec-WebSocket-Extensions`, if any.
async fn raw_client(addr: SocketAddr, offer: Option<&str>) -> (Raw, Option<String>) {
    let tcp = tokio::time::timeout(GUARD, TcpStream::connect(addr))
        .await
        .expect("connect within the guard time")
        .expect("connect");
    let mut raw = Raw {
        tcp,
        buf: Vec::new(),
    };
    let key = generate_key();
    let mut request = format!(
        "GET /raw HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(offer) = offer {
        request.push_str(&format!("Sec-WebSocket-Extensions: {offer}\r\n"));
    }
    request.push_str("\r\n");
    raw.send(request.as_bytes()).await;
    let head = raw.read_head().await;
    assert!(
        head.starts_with("HTTP/1.1 101 "),
        "expected 101, got {head:?}"
    );
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    assert_eq!(
        header("Sec-WebSocket-Accept").as_deref(),
        Some(accept_key(&key).as_str())
    );
    let extensions = header("Sec-WebSocket-Extensions");
    (raw, extensions)
}

/// The agreed parameters from a server's answer to tether's default offer.
fn client_params(extensions: Option<&str>) -> DeflateParams {
    let answer = extensions.expect("the server accepted permessage-deflate");
    DeflateConfig::default()
        .client_accept(answer)
        .expect("a valid answer")
}

// ---------------------------------------------------------------------------------------------
// tether's server under test
// ---------------------------------------------------------------------------------------------

/// How a connection ended, as the server's handler saw it.
#[derive(Debug)]
struct Report {
    negotiated: Option<String>,
    /// The protocol error `recv` returned, if any.
    protocol: Option<ProtocolError>,
    /// Any other error.
    other: Option<String>,
}

struct TestServer {
    addr: SocketAddr,
    reports: UnboundedReceiver<Report>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    /// Echoes every message, except the text `cmd:uncompressed`, which it answers with 4 KiB
    /// of JSON-like text as a binary message twice: with `send_uncompressed`, then with `send`.
    async fn start(config: Config) -> Self {
        let server = Server::bind("127.0.0.1:0", ServerConfig::default().config(config))
            .await
            .expect("bind");
        let addr = server.local_addr().expect("local_addr");
        let (tx, reports) = unbounded_channel();
        let task = tokio::spawn(server.serve(move |mut ws, _request| {
            let tx = tx.clone();
            async move {
                let mut report = Report {
                    negotiated: ws.extensions().map(str::to_owned),
                    protocol: None,
                    other: None,
                };
                while let Some(msg) = ws.recv().await {
                    let sent = match msg {
                        Ok(Message::Text(t)) if t == "cmd:uncompressed" => {
                            let payload = json_text(4096).into_bytes();
                            match ws.send_uncompressed(Message::binary(payload.clone())).await {
                                Ok(()) => ws.send(Message::binary(payload)).await,
                                Err(e) => Err(e),
                            }
                        }
                        Ok(msg) => ws.send(msg).await,
                        Err(Error::Protocol(e)) => {
                            report.protocol = Some(e);
                            break;
                        }
                        Err(e) => {
                            report.other = Some(format!("recv: {e}"));
                            break;
                        }
                    };
                    if let Err(e) = sent {
                        report.other = Some(format!("send: {e}"));
                        break;
                    }
                }
                while ws.recv().await.is_some() {}
                let _ = tx.send(report);
            }
        }));
        Self {
            addr,
            reports,
            task,
        }
    }

    async fn report(&mut self) -> Report {
        tokio::time::timeout(GUARD, self.reports.recv())
            .await
            .expect("the handler reports within the guard time")
            .expect("the handler reported")
    }

    /// A tether client still gets its echo: the server survived.
    async fn assert_serving(&mut self) {
        let url = format!("ws://{}/", self.addr);
        let mut ws = tokio::time::timeout(GUARD, ClientBuilder::new(&url).connect())
            .await
            .expect("connect within the guard time")
            .expect("the server still accepts connections");
        let msg = Message::text(json_text(10_000));
        ws.send(msg.clone()).await.expect("send");
        let echo = tokio::time::timeout(GUARD, ws.recv()).await.expect("echo");
        assert_eq!(echo.map(|r| r.ok()), Some(Some(msg)), "the echo");
        ws.close(1000, "").await.expect("close");
        let report = self.report().await;
        assert_eq!(report.protocol, None);
        assert_eq!(report.other, None);
    }
}

fn limited() -> Config {
    Config::default().max_message_size(LIMIT)
}

// ---------------------------------------------------------------------------------------------
// A raw server for tether's client
// ---------------------------------------------------------------------------------------------

/// Accepts one connection and completes the upgrade, accepting permessage-deflate with
/// tether's defaults when `accept_deflate` and the client offered it. Returns the socket and
/// the agreed parameters.
async fn raw_server_accept(
    listener: &TcpListener,
    accept_deflate: bool,
) -> (Raw, Option<DeflateParams>) {
    let (tcp, _) = tokio::time::timeout(GUARD, listener.accept())
        .await
        .expect("a client within the guard time")
        .expect("accept");
    let mut raw = Raw {
        tcp,
        buf: Vec::new(),
    };
    let head = raw.read_head().await;
    let mut parser = ServerHandshake::new(HeadLimits::default());
    let request = parser
        .receive(head.as_bytes())
        .expect("a valid upgrade request")
        .expect("a complete request");
    let agreed = match (&request.extensions, accept_deflate) {
        (Some(offer), true) => DeflateConfig::default().server_accept(offer),
        _ => None,
    };
    let response = handshake::accept_response(
        &request,
        None,
        agreed.as_ref().map(|(answer, _)| answer.as_str()),
        &[],
    );
    raw.send(&response).await;
    (raw, agreed.map(|(_, params)| params))
}

// ---------------------------------------------------------------------------------------------
// Compression bombs
// ---------------------------------------------------------------------------------------------

/// The bomb as one compressed binary frame, masked when `role` is the client's.
fn bomb_frame(role: Role, params: DeflateParams) -> Vec<u8> {
    let zeros = vec![0u8; BOMB];
    let frame = compressed_frame(role, params, BINARY, &zeros);
    assert!(
        frame.len() < 64 << 10,
        "the bomb is small on the wire: {} bytes",
        frame.len()
    );
    frame
}

/// How the bomb's compressed payload is cut into frames.
#[derive(Clone, Copy)]
enum Split {
    /// One frame.
    Whole,
    /// This many frames of about the same size.
    Even(usize),
    /// A first frame of this many bytes (too few to inflate to anything much), and the rest
    /// of the bomb in one continuation frame.
    Tail(usize),
}

/// Sends the bomb to tether's server (cut into frames as `split` says) and checks the
/// outcome: Close 1009, a heap that never grew by the bomb's size, a server still serving.
async fn server_defuses_bomb(split: Split) {
    let _turn = SERIAL.lock().await;
    let mut server = TestServer::start(limited()).await;
    let offer = DeflateConfig::default().client_offer();
    let (mut raw, extensions) = raw_client(server.addr, Some(&offer)).await;
    let params = client_params(extensions.as_deref());
    let frame = bomb_frame(Role::Client, params);
    let payload = parse_frame(&frame).expect("the bomb frame").payload;
    let chunks: Vec<&[u8]> = match split {
        Split::Whole => vec![&payload[..]],
        Split::Even(n) => payload.chunks(payload.len().div_ceil(n)).collect(),
        Split::Tail(first) => vec![&payload[..first], &payload[first..]],
    };
    let mut bytes = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let opcode = if i == 0 { BINARY } else { CONTINUATION };
        bytes.extend(encode(i + 1 == chunks.len(), i == 0, opcode, chunk, true));
    }

    let base = start_peak();
    raw.send(&bytes).await;
    let code = raw.close_code().await;
    let report = server.report().await;
    let peak = peak_since(base);

    assert_eq!(code, 1009, "the server closes with 1009 (message too big)");
    assert_eq!(
        report.protocol,
        Some(ProtocolError::MessageTooLarge { max: LIMIT })
    );
    assert_eq!(
        report.negotiated.as_deref(),
        extensions.as_deref(),
        "the handler's extensions() is the header the client got"
    );
    eprintln!("peak heap growth while the {BOMB}-byte bomb was handled: {peak} bytes");
    // Inflating stops at the limit: about 1 MiB, plus one inflate chunk and the usual
    // buffers. The bomb itself would be 10 MiB.
    assert!(
        peak < 3 * LIMIT,
        "the heap grew by {peak} bytes while a {BOMB}-byte bomb met a {LIMIT}-byte limit"
    );
    // The connection is over.
    assert!(raw.frame().await.is_none(), "nothing after the Close");
    server.assert_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_closes_compression_bomb_with_1009_without_inflating_it() {
    server_defuses_bomb(Split::Whole).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_closes_fragmented_compression_bomb_with_1009() {
    server_defuses_bomb(Split::Even(8)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_closes_compression_bomb_in_a_continuation_frame_with_1009() {
    server_defuses_bomb(Split::Tail(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_closes_compression_bomb_with_1009_without_inflating_it() {
    let _turn = SERIAL.lock().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/", listener.local_addr().expect("local_addr"));
    let client = tokio::spawn(async move {
        let mut ws = ClientBuilder::new(&url)
            .config(limited())
            .connect()
            .await
            .expect("connect");
        let first = tokio::time::timeout(GUARD, ws.recv()).await.expect("recv");
        let first = match first {
            Some(Err(Error::Protocol(e))) => Some(e),
            other => panic!("expected a protocol error, got {other:?}"),
        };
        while tokio::time::timeout(GUARD, ws.recv())
            .await
            .expect("recv")
            .is_some()
        {}
        first
    });
    let (mut raw, params) = raw_server_accept(&listener, true).await;
    let params = params.expect("tether's client offers permessage-deflate");
    let frame = bomb_frame(Role::Server, params);

    let base = start_peak();
    raw.send(&frame).await;
    let code = raw.close_code().await;
    let error = tokio::time::timeout(GUARD, client)
        .await
        .expect("the client ends")
        .expect("the client task");
    let peak = peak_since(base);

    assert_eq!(code, 1009);
    assert_eq!(error, Some(ProtocolError::MessageTooLarge { max: LIMIT }));
    eprintln!("peak heap growth while the {BOMB}-byte bomb was handled: {peak} bytes");
    assert!(peak < 3 * LIMIT, "the heap grew by {peak} bytes");
}

// ---------------------------------------------------------------------------------------------
// Mixing compressed and uncompressed messages
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_and_uncompressed_messages_interleave_on_one_connection() {
    let _turn = SERIAL.lock().await;
    let mut server = TestServer::start(Config::default()).await;
    let offer = DeflateConfig::default().client_offer();
    let (mut raw, extensions) = raw_client(server.addr, Some(&offer)).await;
    let params = client_params(extensions.as_deref());
    let mut decoder = core(Role::Client, params);

    // (what the server must echo, the frames that send it)
    let mut steps: Vec<(Message, Vec<u8>)> = Vec::new();
    let json = json_text(20_000);
    let random = random_bytes(5000, 7);
    // Compressed text, uncompressed binary, compressed binary, uncompressed text.
    steps.push((
        Message::text(json.clone()),
        compressed_frame(Role::Client, params, TEXT, json.as_bytes()),
    ));
    steps.push((
        Message::binary(random.clone()),
        encode(true, false, BINARY, &random, true),
    ));
    steps.push((
        Message::binary(random.clone()),
        compressed_frame(Role::Client, params, BINARY, &random),
    ));
    steps.push((
        Message::text("plain, not compressed"),
        encode(true, false, TEXT, b"plain, not compressed", true),
    ));
    // (Empty messages: see empty_message_after_another_round_trips_with_context_takeover.)
    // A compressed text in three frames (RSV1 on the first only), a Ping between them.
    let payload = compressed_payload(params, json.as_bytes());
    let third = payload.len() / 3;
    let mut fragmented = encode(false, true, TEXT, &payload[..third], true);
    fragmented.extend(encode(
        false,
        false,
        CONTINUATION,
        &payload[third..2 * third],
        true,
    ));
    fragmented.extend(encode(true, false, PING, b"between", true));
    fragmented.extend(encode(
        true,
        false,
        CONTINUATION,
        &payload[2 * third..],
        true,
    ));
    steps.push((Message::text(json.clone()), fragmented));
    // An uncompressed binary in two frames.
    let mut plain = encode(false, false, BINARY, &random[..100], true);
    plain.extend(encode(true, false, CONTINUATION, &random[100..], true));
    steps.push((Message::binary(random.clone()), plain));
    // The same compressed message again: no context is kept for client messages, each one
    // inflates on its own.
    steps.push((
        Message::text(json.clone()),
        compressed_frame(Role::Client, params, TEXT, json.as_bytes()),
    ));

    for (i, (want, bytes)) in steps.into_iter().enumerate() {
        raw.send(&bytes).await;
        let mut frame = raw.frame().await.expect("a reply");
        if frame.opcode == PONG {
            assert_eq!(frame.payload, b"between", "step {i}: the Pong");
            frame = raw.frame().await.expect("the echo after the Pong");
        }
        assert!(!frame.masked, "step {i}: a server does not mask");
        assert!(frame.fin, "step {i}: tether sends one frame per message");
        assert!(frame.rsv1, "step {i}: tether compresses what it sends");
        let got = match decode(&mut decoder, &frame) {
            Some(Event::Text(t)) => Message::Text(t),
            Some(Event::Binary(b)) => Message::Binary(b),
            other => panic!("step {i}: expected a message, got {other:?}"),
        };
        assert!(got == want, "step {i}: the echo differs");
    }

    raw.send(&encode(true, false, CLOSE, &1000u16.to_be_bytes(), true))
        .await;
    assert_eq!(raw.close_code().await, 1000);
    let report = server.report().await;
    assert_eq!(report.protocol, None);
    assert_eq!(report.other, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_send_uncompressed_writes_frames_without_rsv1() {
    let _turn = SERIAL.lock().await;
    let mut server = TestServer::start(Config::default()).await;
    let offer = DeflateConfig::default().client_offer();
    let (mut raw, extensions) = raw_client(server.addr, Some(&offer)).await;
    let params = client_params(extensions.as_deref());
    let mut decoder = core(Role::Client, params);
    raw.send(&encode(true, false, TEXT, b"cmd:uncompressed", true))
        .await;
    let plain = json_text(4096).into_bytes();

    let first = raw.frame().await.expect("the send_uncompressed message");
    assert_eq!(
        (first.fin, first.rsv1, first.opcode),
        (true, false, BINARY),
        "send_uncompressed: one binary frame, RSV1 clear"
    );
    assert!(first.payload == plain, "its payload is the message itself");
    assert!(matches!(decode(&mut decoder, &first), Some(Event::Binary(b)) if b == plain));

    let second = raw.frame().await.expect("the send message");
    assert_eq!(
        (second.fin, second.rsv1, second.opcode),
        (true, true, BINARY),
        "send: one binary frame, RSV1 set"
    );
    assert!(
        second.payload.len() < plain.len() / 2,
        "compressed: {} bytes for {}",
        second.payload.len(),
        plain.len()
    );
    assert!(matches!(decode(&mut decoder, &second), Some(Event::Binary(b)) if b == plain));

    raw.send(&encode(true, false, CLOSE, &1000u16.to_be_bytes(), true))
        .await;
    assert_eq!(raw.close_code().await, 1000);
    assert_eq!(server.report().await.protocol, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_send_uncompressed_writes_masked_frames_without_rsv1() {
    let _turn = SERIAL.lock().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/", listener.local_addr().expect("local_addr"));
    let text = json_text(4096);
    let sent = text.clone();
    let client = tokio::spawn(async move {
        let mut ws = ClientBuilder::new(&url).connect().await.expect("connect");
        let negotiated = ws.extensions().map(str::to_owned);
        ws.send_uncompressed(Message::text(sent.clone()))
            .await
            .expect("send_uncompressed");
        ws.send(Message::text(sent)).await.expect("send");
        // Wait for the server's Close and answer it.
        while tokio::time::timeout(GUARD, ws.recv())
            .await
            .expect("recv")
            .is_some()
        {}
        negotiated
    });
    let (mut raw, params) = raw_server_accept(&listener, true).await;
    let params = params.expect("tether's client offers permessage-deflate");
    let mut decoder = core(Role::Server, params);

    let first = raw.frame().await.expect("the send_uncompressed message");
    assert!(first.masked, "a client masks");
    assert_eq!((first.fin, first.rsv1, first.opcode), (true, false, TEXT));
    assert!(first.payload == text.as_bytes(), "uncompressed payload");
    assert!(matches!(decode(&mut decoder, &first), Some(Event::Text(t)) if t == text));

    let second = raw.frame().await.expect("the send message");
    assert!(second.masked, "a client masks");
    assert_eq!((second.fin, second.rsv1, second.opcode), (true, true, TEXT));
    assert!(second.payload.len() < text.len() / 2);
    assert!(matches!(decode(&mut decoder, &second), Some(Event::Text(t)) if t == text));

    raw.send(&encode(true, false, CLOSE, &1000u16.to_be_bytes(), false))
        .await;
    assert_eq!(raw.close_code().await, 1000);
    // A server closes the TCP connection first.
    drop(raw);
    let negotiated = tokio::time::timeout(GUARD, client)
        .await
        .expect("the client ends")
        .expect("the client task");
    assert!(
        negotiated.is_some_and(|e| e.starts_with("permessage-deflate")),
        "the client's extensions()"
    );
}

/// Echoes `messages` through tether's server configured with `deflate` (both sides), from a
/// tether client configured the same, and returns what came back.
async fn tether_echoes(deflate: DeflateConfig, messages: &[Message]) -> Vec<Message> {
    let config = Config::default().compression(Some(deflate));
    let mut server = TestServer::start(config.clone()).await;
    let url = format!("ws://{}/", server.addr);
    let mut ws = tokio::time::timeout(GUARD, ClientBuilder::new(&url).config(config).connect())
        .await
        .expect("connect within the guard time")
        .expect("connect");
    let mut echoes = Vec::new();
    for msg in messages {
        ws.send(msg.clone()).await.expect("send");
        match tokio::time::timeout(GUARD, ws.recv()).await.expect("recv") {
            Some(Ok(echo)) => echoes.push(echo),
            other => panic!("after {} echoes: {other:?}", echoes.len()),
        }
    }
    ws.close(1000, "").await.expect("close");
    let report = server.report().await;
    assert_eq!((report.protocol, report.other), (None, None));
    echoes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_message_after_another_round_trips_with_context_takeover() {
    let _turn = SERIAL.lock().await;
    // Regression: with context takeover, an empty message that followed another one was sent
    // as an empty compressed payload (zlib emits nothing for a second sync flush in a row);
    // the peer's inflater then read the appended tail as a stored block's header and later
    // messages arrived corrupted (the empty binary as [0, 255, 255]).
    //
    // RFC 7692 section 7.2.1: the compressed data ends with an empty stored block, of which
    // only the last four bytes (LEN, NLEN) are removed, so a compressed payload is never
    // empty; an empty message is the single byte 0x00 (section 7.2.3.6).
    let keep = DeflateConfig::best_compression();
    let mut server = TestServer::start(Config::default().compression(Some(keep.clone()))).await;
    let offer = keep.client_offer();
    let (mut raw, extensions) = raw_client(server.addr, Some(&offer)).await;
    let params = keep
        .client_accept(extensions.as_deref().expect("permessage-deflate accepted"))
        .expect("a valid answer");
    assert!(
        !params.server_no_context_takeover,
        "best_compression keeps the server's context"
    );
    let mut decoder = core(Role::Client, params);
    let messages = [
        Message::text("first"),
        Message::text(""),
        Message::text(""),
        Message::binary(vec![]),
        Message::text("last"),
    ];
    for (i, msg) in messages.iter().enumerate() {
        let opcode = if msg.as_text().is_some() {
            TEXT
        } else {
            BINARY
        };
        raw.send(&encode(true, false, opcode, msg.as_bytes(), true))
            .await;
        let frame = raw.frame().await.expect("the echo");
        assert!(frame.rsv1, "message {i}: compressed");
        assert!(
            !frame.payload.is_empty(),
            "message {i}: a compressed payload ends with the first byte of an empty stored \
             block, it is never empty"
        );
        let got = match decode(&mut decoder, &frame) {
            Some(Event::Text(t)) => Message::Text(t),
            Some(Event::Binary(b)) => Message::Binary(b),
            other => panic!("message {i}: expected a message, got {other:?}"),
        };
        assert_eq!(&got, msg, "message {i}");
    }
    raw.send(&encode(true, false, CLOSE, &1000u16.to_be_bytes(), true))
        .await;
    assert_eq!(raw.close_code().await, 1000);
    let _ = server.report().await;

    // The same between tether's own client and server: no context (defaults), and both
    // contexts (best_compression).
    for deflate in [DeflateConfig::default(), DeflateConfig::best_compression()] {
        let echoes = tether_echoes(deflate.clone(), &messages).await;
        assert_eq!(echoes, messages, "{deflate:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// RSV1 where it does not belong: 1002
// ---------------------------------------------------------------------------------------------

/// Sends `bytes` on a fresh raw connection (offering `offer`) and expects Close 1002 with
/// `ReservedBits` on the server's side. Returns the server's `Sec-WebSocket-Extensions`
/// answer and what its handler saw as [`tether::WebSocket::extensions`].
async fn assert_server_rejects(
    server: &mut TestServer,
    offer: Option<&str>,
    bytes: &[u8],
    what: &str,
) -> (Option<String>, Option<String>) {
    let (mut raw, extensions) = raw_client(server.addr, offer).await;
    raw.send(bytes).await;
    assert_eq!(raw.close_code().await, 1002, "{what}: the close code");
    let report = server.report().await;
    assert_eq!(
        report.protocol,
        Some(ProtocolError::ReservedBits),
        "{what}: the server's error"
    );
    (extensions, report.negotiated)
}

/// Opens a raw connection offering permessage-deflate to a server that has compression off,
/// and checks that an echo comes back uncompressed.
async fn assert_uncompressed_echo(server: &mut TestServer) {
    let offer = DeflateConfig::default().client_offer();
    let (mut raw, extensions) = raw_client(server.addr, Some(&offer)).await;
    assert_eq!(extensions, None);
    raw.send(&encode(true, false, TEXT, b"hello", true)).await;
    let echo = raw.frame().await.expect("the echo");
    assert_eq!(
        (echo.rsv1, echo.opcode),
        (false, TEXT),
        "an uncompressed echo"
    );
    assert_eq!(echo.payload, b"hello");
    raw.send(&encode(true, false, CLOSE, &1000u16.to_be_bytes(), true))
        .await;
    assert_eq!(raw.close_code().await, 1000);
    let report = server.report().await;
    assert_eq!((report.negotiated, report.protocol), (None, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_frame_without_negotiation_is_closed_with_1002() {
    let _turn = SERIAL.lock().await;
    let frame = compressed_frame(
        Role::Client,
        default_params(),
        TEXT,
        json_text(1000).as_bytes(),
    );

    // The client offered nothing (the server would have accepted).
    let mut server = TestServer::start(Config::default()).await;
    let seen = assert_server_rejects(&mut server, None, &frame, "no offer").await;
    assert_eq!(seen, (None, None), "nothing offered, nothing accepted");

    // The client offered, but the server has compression off and declined.
    let mut off = TestServer::start(Config::default().compression(None)).await;
    let offer = DeflateConfig::default().client_offer();
    let seen = assert_server_rejects(&mut off, Some(&offer), &frame, "declined offer").await;
    assert_eq!(seen, (None, None), "compression off: the offer is declined");
    assert_uncompressed_echo(&mut off).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_rejects_compressed_frame_without_negotiation_with_1002() {
    let _turn = SERIAL.lock().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/", listener.local_addr().expect("local_addr"));
    let client = tokio::spawn(async move {
        let mut ws = ClientBuilder::new(&url).connect().await.expect("connect");
        let negotiated = ws.extensions().map(str::to_owned);
        let first = match tokio::time::timeout(GUARD, ws.recv()).await.expect("recv") {
            Some(Err(Error::Protocol(e))) => Some(e),
            other => panic!("expected a protocol error, got {other:?}"),
        };
        while tokio::time::timeout(GUARD, ws.recv())
            .await
            .expect("recv")
            .is_some()
        {}
        (negotiated, first)
    });
    // The raw server declines the offer, then sends a compressed frame anyway.
    let (mut raw, params) = raw_server_accept(&listener, false).await;
    assert_eq!(params, None);
    let frame = compressed_frame(Role::Server, default_params(), TEXT, b"compressed anyway");
    raw.send(&frame).await;
    assert_eq!(raw.close_code().await, 1002);
    let (negotiated, error) = tokio::time::timeout(GUARD, client)
        .await
        .expect("the client ends")
        .expect("the client task");
    assert_eq!(negotiated, None);
    assert_eq!(error, Some(ProtocolError::ReservedBits));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsv1_on_continuation_or_control_frame_is_closed_with_1002() {
    let _turn = SERIAL.lock().await;
    let mut server = TestServer::start(Config::default()).await;
    let offer = DeflateConfig::default().client_offer();
    let params = default_params();
    let payload = compressed_payload(params, json_text(3000).as_bytes());
    let half = payload.len() / 2;

    // A compressed message whose continuation has RSV1 too.
    let mut bytes = encode(false, true, TEXT, &payload[..half], true);
    bytes.extend(encode(true, true, CONTINUATION, &payload[half..], true));
    assert_server_rejects(
        &mut server,
        Some(&offer),
        &bytes,
        "RSV1 on a compressed message's continuation",
    )
    .await;

    // An uncompressed message whose continuation has RSV1.
    let text = json_text(3000);
    let mut bytes = encode(false, false, TEXT, &text.as_bytes()[..1000], true);
    bytes.extend(encode(
        true,
        true,
        CONTINUATION,
        &text.as_bytes()[1000..],
        true,
    ));
    assert_server_rejects(
        &mut server,
        Some(&offer),
        &bytes,
        "RSV1 on an uncompressed message's continuation",
    )
    .await;

    // RSV1 on a Ping.
    let bytes = encode(true, true, PING, b"compressed?", true);
    assert_server_rejects(&mut server, Some(&offer), &bytes, "RSV1 on a Ping").await;

    // The server still serves.
    server.assert_serving().await;
}
