//! The WebSocket connection state machine, after the opening handshake.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::time::{Duration, Instant};

use bytes::{Buf as _, Bytes, BytesMut};

use crate::deflate::{Codec, DeflateConfig, DeflateParams};
use crate::error::{ProtocolError, SendError};
use crate::frame::{
    close_code, encode_frame, encode_header, is_valid_close_code, OpCode, MAX_HEADER_LEN,
};
use crate::mask::apply_mask;
use crate::utf8::Utf8Bytes;

/// Which end of the connection this is. Clients mask what they send; servers require it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The end that opened the connection.
    Client,
    /// The end that accepted it.
    Server,
}

/// Limits and timers of one connection. Every field has a documented default.
#[derive(Clone, Debug)]
pub struct Config {
    /// Largest message accepted, in bytes, after reassembly (and decompression). Larger
    /// messages fail the connection with 1009. Default: 1 MiB (as Python `websockets`), so
    /// that a server's worst case is bounded: 1,000 peers each sending a message just under the
    /// limit hold about 1 GiB, not the 64 GiB of a 64 MiB default. Raise it for a peer you trust
    /// to send more.
    pub max_message_size: usize,
    /// Largest single frame accepted, in bytes. Default: 16 MiB (a frame is also bounded by
    /// [`max_message_size`](Self::max_message_size)).
    pub max_frame_size: usize,
    /// Most frames one message may be split into; more fail the connection with 1009.
    /// Default: 65,536 (the Autobahn suite's most, 4 MiB in 64-byte fragments; 100,000
    /// one-byte fragments are refused).
    pub max_fragments: usize,
    /// Send a keepalive Ping this often; `None` disables keepalive. Default: 20 s.
    pub ping_interval: Option<Duration>,
    /// A keepalive Ping unanswered this long fails the connection with 1011; `None` never
    /// times out. Default: 20 s.
    pub ping_timeout: Option<Duration>,
    /// How long to wait for the peer during the closing handshake, and (as a client) for the
    /// server to close the transport afterwards. Default: 10 s.
    pub close_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_message_size: 1 << 20,
            max_frame_size: 16 << 20,
            max_fragments: 1 << 16,
            ping_interval: Some(Duration::from_secs(20)),
            ping_timeout: Some(Duration::from_secs(20)),
            close_timeout: Duration::from_secs(10),
        }
    }
}

impl Config {
    /// Sets [`Config::max_message_size`].
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }
    /// Sets [`Config::max_frame_size`].
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame_size = bytes;
        self
    }
    /// Sets [`Config::max_fragments`].
    pub fn max_fragments(mut self, count: usize) -> Self {
        self.max_fragments = count;
        self
    }
    /// Sets [`Config::ping_interval`].
    pub fn ping_interval(mut self, interval: Option<Duration>) -> Self {
        self.ping_interval = interval;
        self
    }
    /// Sets [`Config::ping_timeout`].
    pub fn ping_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.ping_timeout = timeout;
        self
    }
    /// Sets [`Config::close_timeout`].
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }
}

/// A Close frame's status code and reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseFrame {
    /// The status code (see [`close_code`](crate::close_code)).
    pub code: u16,
    /// The reason, at most 123 bytes of UTF-8.
    pub reason: String,
}

/// What the peer said of the closing handshake: see [`Connection::peer_close`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PeerClose {
    /// No Close frame arrived: the connection is open, or it ended without the peer's Close
    /// (reported as 1006 by [`Connection::close_code`]).
    #[default]
    NotReceived,
    /// A Close frame without a status code (reported as 1005).
    NoStatus,
    /// A Close frame with a status code and reason.
    Frame(CloseFrame),
}

impl PeerClose {
    /// True once the peer's Close frame arrived (with or without a status code).
    pub fn is_received(&self) -> bool {
        !matches!(self, Self::NotReceived)
    }

    /// The peer's Close frame, when it had a status code.
    pub fn frame(&self) -> Option<&CloseFrame> {
        match self {
            Self::Frame(f) => Some(f),
            _ => None,
        }
    }

    /// The status code the peer sent, if it sent one.
    pub fn code(&self) -> Option<u16> {
        self.frame().map(|f| f.code)
    }

    /// The reason the peer gave; empty when it gave none or sent no Close.
    pub fn reason(&self) -> &str {
        self.frame().map_or("", |f| f.reason.as_str())
    }
}

/// Something that happened on the connection, taken with [`Connection::poll_event`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A complete text message. Its bytes are the buffer the message was assembled in,
    /// handed over without a copy.
    Text(Utf8Bytes),
    /// A complete binary message, handed over without a copy.
    Binary(Bytes),
    /// The peer sent a Ping; the Pong was already queued, or, when the last Pong was more
    /// than 16 KiB from being written, is queued once that one is out, answering only the
    /// latest Ping that came meanwhile (RFC 6455 5.5.3): a Ping flood cannot grow the
    /// transmit queue.
    Ping(Vec<u8>),
    /// The peer sent a Pong. `rtt` is set when it answers a [`Connection::ping`].
    Pong {
        /// The Pong's payload.
        payload: Vec<u8>,
        /// Time since the matching ping was sent, if it answers one of ours.
        rtt: Option<Duration>,
    },
    /// The peer sent a Close frame (`None`: no status code). Nothing more is read. When this
    /// event is taken, the reply is queued (unless our own Close went out already) and the
    /// connection becomes [`State::Closed`]; events before it may still be answered.
    Close(Option<CloseFrame>),
    /// The connection failed. When this event is taken, a Close frame with the error's code
    /// is queued and the connection becomes [`State::Closed`]; the driver should flush and
    /// close the transport. Events before it are still valid and may be answered.
    Error(ProtocolError),
}

/// Where the closing handshake stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Messages flow both ways.
    Open,
    /// We sent a Close frame and wait for the peer's (messages still arrive).
    Closing,
    /// Both Close frames were exchanged, the connection failed, or a timeout gave up.
    Closed,
}

/// Bytes kept in the transmit buffer's allocation once it drains; larger buffers are freed
/// so that an idle connection holds no large allocation.
const OUT_KEEP: usize = 64 << 10;
/// Most payload room reserved when a data frame's header arrives, before its bytes do: a
/// frame up to this size is received into one allocation of its exact size, while a header
/// that announces a larger frame reserves no more than this until its bytes arrive (the
/// buffer then doubles, capped at the frame's end).
const RESERVE_AHEAD: usize = 1 << 20;
/// Payloads at least this large ([`Connection::send_message`], [`Connection::send_prepared`])
/// are written from their own (shared) allocation instead of being copied into the transmit
/// buffer.
const OWNED_MIN: usize = 8 << 10;
/// A frame with at least this many payload bytes still to come may be read straight into the
/// message buffer ([`Connection::read_payload_with`]).
const DIRECT_MIN: usize = 8 << 10;
/// How many unanswered user pings are remembered for round-trip times.
const MAX_USER_PINGS: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReadPhase {
    Header,
    Payload,
    /// Nothing more is read: the peer's Close arrived or the connection failed.
    Done,
}

#[derive(Clone, Copy, Debug)]
struct FrameInfo {
    fin: bool,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    len: u64,
    got: u64,
}

#[derive(Debug)]
struct OwnedPayload {
    /// Position in the transmit buffer this payload follows (its frame header ends there).
    at: usize,
    data: Bytes,
    pos: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MessageKind {
    Text,
    Binary,
}

/// How far (in queued bytes) the last Pong may be from being written before a new Ping is
/// no longer answered at once but only the latest one after that Pong: peers that ping
/// normally get every Pong (Autobahn 2.10 checks that ten Pings get ten), a flood from a
/// peer that never reads leaves at most this much queued for it.
const PONG_BACKLOG: usize = 16 * 1024;

/// One WebSocket connection after the opening handshake, free of I/O.
///
/// # Call grammar
///
/// A driver repeats, in any order that fits its I/O:
///
/// 1. **Inputs:** [`receive`](Self::receive) with bytes read from the transport (any chunking
///    gives the same events), [`receive_eof`](Self::receive_eof) when the transport reached
///    end of input, and [`handle_timeout`](Self::handle_timeout) once the instant from
///    [`poll_timeout`](Self::poll_timeout) has passed.
/// 2. **Commands:** [`send_text`](Self::send_text), [`send_binary`](Self::send_binary),
///    [`ping`](Self::ping), [`close`](Self::close).
/// 3. **Outputs:** write [`transmit`](Self::transmit) to the transport and report what was
///    written with [`advance_transmit`](Self::advance_transmit); take
///    [`poll_event`](Self::poll_event) until `None`; re-arm one timer at
///    [`poll_timeout`](Self::poll_timeout); close the transport once
///    [`wants_close_transport`](Self::wants_close_transport) is true and the transmit buffer
///    is empty.
///
/// Time is always passed in as `now`; the core never reads a clock.
#[derive(Debug)]
pub struct Connection {
    role: Role,
    config: Config,
    state: State,

    phase: ReadPhase,
    head: [u8; MAX_HEADER_LEN],
    head_len: u8,
    frame: FrameInfo,
    message: Option<MessageKind>,
    compressed: bool,
    fragments: usize,
    buf: Vec<u8>,
    utf8_valid: usize,
    control: [u8; 125],

    events: VecDeque<Event>,
    out: Vec<u8>,
    out_pos: usize,
    /// Large payloads queued by value, each to be written after `out[..at]`.
    owned: VecDeque<OwnedPayload>,
    /// Queued bytes still to be written before the last queued Pong is out (0: none waits).
    pong_unwritten: usize,
    /// The payload of the latest Ping that arrived while the last Pong was more than
    /// [`PONG_BACKLOG`] bytes from being written: answered once that Pong is out (RFC 6455
    /// 5.5.3 lets an endpoint answer only the latest Ping), so that a peer that floods Pings
    /// and never reads cannot grow the queue.
    pong_pending: Option<Box<[u8]>>,

    close_sent: bool,
    peer_close: PeerClose,
    peer_close_at: Option<Instant>,
    close_deadline: Option<Instant>,
    transport_deadline: Option<Instant>,
    close_transport: bool,

    next_ping: Option<Instant>,
    pong_deadline: Option<Instant>,
    keepalive_count: u32,
    user_pings: VecDeque<(Vec<u8>, Instant)>,
    answered: VecDeque<(Vec<u8>, Duration)>,

    deflate: Option<Codec>,
    /// Unmasked compressed input, and compressed output, on their way through the codec.
    scratch: Vec<u8>,
}

impl Connection {
    /// A connection that has just completed its opening handshake at `now`.
    pub fn new(role: Role, config: Config, now: Instant) -> Self {
        let next_ping = config.ping_interval.map(|i| now + i);
        Self {
            role,
            config,
            state: State::Open,
            phase: ReadPhase::Header,
            head: [0; MAX_HEADER_LEN],
            head_len: 0,
            frame: FrameInfo {
                fin: true,
                opcode: OpCode::Binary,
                mask: None,
                len: 0,
                got: 0,
            },
            message: None,
            compressed: false,
            fragments: 0,
            buf: Vec::new(),
            utf8_valid: 0,
            control: [0; 125],
            events: VecDeque::new(),
            out: Vec::new(),
            out_pos: 0,
            owned: VecDeque::new(),
            pong_unwritten: 0,
            pong_pending: None,
            close_sent: false,
            peer_close: PeerClose::NotReceived,
            peer_close_at: None,
            close_deadline: None,
            transport_deadline: None,
            close_transport: false,
            next_ping,
            pong_deadline: None,
            keepalive_count: 0,
            user_pings: VecDeque::new(),
            answered: VecDeque::new(),
            deflate: None,
            scratch: Vec::new(),
        }
    }

    /// Turns on permessage-deflate with the parameters the opening handshake agreed on
    /// (see [`DeflateConfig::client_accept`] and [`DeflateConfig::server_accept`]); `config`
    /// gives the compression level, memory level and minimum size.
    pub fn enable_deflate(&mut self, params: DeflateParams, config: &DeflateConfig) {
        self.deflate = Some(Codec::new(self.role, params, config));
    }

    /// True when permessage-deflate is in use.
    pub fn deflate_enabled(&self) -> bool {
        self.deflate.is_some()
    }

    /// This end's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Where the closing handshake stands.
    pub fn state(&self) -> State {
        self.state
    }

    /// What the peer's Close frame said, once it arrived.
    pub fn peer_close(&self) -> &PeerClose {
        &self.peer_close
    }

    /// The close code to report for this connection once it is closed: the peer's code, 1005
    /// if its Close had none, or 1006 if no Close frame was received.
    pub fn close_code(&self) -> u16 {
        match &self.peer_close {
            PeerClose::Frame(f) => f.code,
            PeerClose::NoStatus => close_code::NO_STATUS,
            PeerClose::NotReceived => close_code::ABNORMAL,
        }
    }

    // ----- inputs -----

    /// Feeds bytes read from the transport. Complete messages and control frames become
    /// events; replies (Pong, Close) are queued for transmission. Bytes after the peer's
    /// Close frame, or after a failure, are ignored.
    pub fn receive(&mut self, mut data: &[u8], now: Instant) {
        while !data.is_empty() {
            match self.phase {
                ReadPhase::Done => return,
                ReadPhase::Header => {
                    // Fast path: a whole header at hand is parsed where it lies.
                    if self.head_len == 0 && data.len() >= 2 {
                        let len = header_len(data[0], data[1]);
                        if data.len() >= len {
                            let (head, rest) = data.split_at(len);
                            data = rest;
                            if let Err(e) = self.begin_frame(head, now, true) {
                                self.fail(e, now);
                                return;
                            }
                            continue;
                        }
                    }
                    let have = usize::from(self.head_len);
                    let need = if have < 2 {
                        2
                    } else {
                        header_len(self.head[0], self.head[1])
                    };
                    let take = (need - have).min(data.len());
                    self.head[have..have + take].copy_from_slice(&data[..take]);
                    self.head_len += take as u8;
                    data = &data[take..];
                    let have = usize::from(self.head_len);
                    if have >= 2 && have == header_len(self.head[0], self.head[1]) {
                        self.head_len = 0;
                        let head = self.head;
                        if let Err(e) = self.begin_frame(&head[..have], now, true) {
                            self.fail(e, now);
                            return;
                        }
                    }
                }
                ReadPhase::Payload => {
                    let remaining = self.frame.len - self.frame.got;
                    let n = usize::try_from(remaining).map_or(data.len(), |r| r.min(data.len()));
                    let (chunk, rest) = data.split_at(n);
                    data = rest;
                    let offset = self.frame.got as usize;
                    if self.frame.opcode.is_control() {
                        // `got + n <= len <= 125`, checked in begin_frame.
                        let dst = &mut self.control[offset..offset + n];
                        dst.copy_from_slice(chunk);
                        if let Some(key) = self.frame.mask {
                            apply_mask(dst, key, offset);
                        }
                    } else if self.compressed {
                        if let Err(e) = self.inflate_chunk(chunk, offset) {
                            self.fail(e, now);
                            return;
                        }
                    } else {
                        self.grow_payload(n);
                        let start = self.buf.len();
                        self.buf.extend_from_slice(chunk);
                        self.unmask_from(start);
                    }
                    self.advance_frame(n, now);
                    // Per piece of payload, before any later frame is looked at, so that
                    // the first error in the stream is the one reported, however it was cut.
                    self.check_partial_text(now);
                }
            }
        }
    }

    /// Feeds bytes read from the transport that the connection may keep, with the same events
    /// as [`receive`](Self::receive) for any chunking, without its copy: a message that
    /// arrives whole in one frame inside `data` is unmasked in place and handed out as a
    /// slice of `data` (no allocation, no copy). Everything else (fragments, compressed
    /// messages, frames that continue past `data`) is taken as `receive` takes it.
    ///
    /// A driver that reads into a `BytesMut` and splits off what it read passes it here. The
    /// messages handed out keep `data`'s allocation alive until they are dropped.
    pub fn receive_shared(&mut self, mut data: BytesMut, now: Instant) {
        while self.phase == ReadPhase::Header && self.head_len == 0 && data.len() >= 2 {
            let head_len = header_len(data[0], data[1]);
            if data.len() < head_len {
                break;
            }
            let len = announced_len(&data[..head_len]);
            let at_hand = (data.len() - head_len) as u64;
            if at_hand < len {
                break;
            }
            // `len <= at_hand`, so it fits in usize.
            let len = len as usize;
            let b0 = data[0];
            let whole_message = b0 & 0x80 != 0
                && b0 & 0x40 == 0
                && matches!(b0 & 0x0F, 0x1 | 0x2)
                && self.message.is_none();
            if !whole_message {
                // A control frame, a fragment or a compressed message: the copying path.
                self.receive(&data[..head_len + len], now);
                data.advance(head_len + len);
                continue;
            }
            let mut head = [0u8; MAX_HEADER_LEN];
            head[..head_len].copy_from_slice(&data[..head_len]);
            data.advance(head_len);
            if let Err(e) = self.begin_frame(&head[..head_len], now, false) {
                self.fail(e, now);
                return;
            }
            if self.phase == ReadPhase::Payload {
                self.take_whole_message(data.split_to(len), now);
            }
        }
        if !data.is_empty() {
            self.receive(&data, now);
        }
    }

    /// Ends the current frame, a whole unfragmented uncompressed message, with its payload
    /// taken from the read buffer.
    fn take_whole_message(&mut self, mut payload: BytesMut, now: Instant) {
        if let Some(key) = self.frame.mask {
            apply_mask(&mut payload, key, 0);
        }
        self.frame.got = self.frame.len;
        self.phase = ReadPhase::Header;
        self.fragments = 0;
        self.utf8_valid = 0;
        let payload = payload.freeze();
        match self.message.take() {
            Some(MessageKind::Text) => match Utf8Bytes::try_from(payload) {
                Ok(text) => self.events.push_back(Event::Text(text)),
                Err(_) => self.fail(ProtocolError::InvalidUtf8, now),
            },
            Some(MessageKind::Binary) => self.events.push_back(Event::Binary(payload)),
            None => {}
        }
    }

    /// Lets the driver read the rest of a large data frame straight into the message buffer,
    /// saving the copy that [`receive`](Self::receive) makes.
    ///
    /// When the connection is inside an uncompressed data frame with at least 8 KiB still to
    /// come, calls `read(buf, max)`: `read` must only append to `buf`, at most `max` bytes
    /// (bytes beyond `max` are discarded), and has room for them already reserved. The
    /// appended bytes are then taken exactly as `receive` would take them, and `Some` with
    /// `read`'s result is returned. Otherwise returns `None` without calling `read`: read into
    /// a buffer of your own and call `receive`.
    #[inline]
    pub fn read_payload_with<R>(
        &mut self,
        now: Instant,
        read: impl FnOnce(&mut Vec<u8>, usize) -> R,
    ) -> Option<R> {
        let remaining = self.frame.len - self.frame.got;
        if self.phase != ReadPhase::Payload
            || remaining < DIRECT_MIN as u64
            || self.frame.opcode.is_control()
            || self.compressed
        {
            return None;
        }
        let remaining = usize::try_from(remaining).unwrap_or(usize::MAX);
        // Room for what may come next, capped at the frame's end; `read` fills what it can.
        self.grow_payload(remaining.min(self.buf.len().max(DIRECT_MIN)));
        let start = self.buf.len();
        let max = remaining.min(self.buf.capacity() - start);
        let result = read(&mut self.buf, max);
        if self.buf.len() < start {
            // `read` broke its contract by removing bytes: the message is lost.
            self.fail(ProtocolError::Internal, now);
            return Some(result);
        }
        self.buf.truncate(start + max);
        let n = self.buf.len() - start;
        if n > 0 {
            self.unmask_from(start);
            self.advance_frame(n, now);
            self.check_partial_text(now);
        }
        Some(result)
    }

    /// The transport reached end of input. If the closing handshake was not complete, the
    /// connection is closed abnormally (code 1006).
    pub fn receive_eof(&mut self, _now: Instant) {
        self.phase = ReadPhase::Done;
        self.state = State::Closed;
        self.close_transport = true;
        self.close_deadline = None;
        self.transport_deadline = None;
    }

    /// Runs the timers that are due at `now`: keepalive pings and their timeout, the closing
    /// handshake timeout, and the wait for the server to close the transport.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.close_deadline.is_some_and(|d| now >= d) {
            self.close_deadline = None;
            self.phase = ReadPhase::Done;
            self.state = State::Closed;
            self.close_transport = true;
        }
        if self.transport_deadline.is_some_and(|d| now >= d) {
            self.transport_deadline = None;
            self.close_transport = true;
        }
        if self.state != State::Open || self.phase == ReadPhase::Done {
            return;
        }
        if self.pong_deadline.is_some_and(|d| now >= d) {
            self.fail(ProtocolError::KeepaliveTimeout, now);
            return;
        }
        if let (Some(at), Some(interval)) = (self.next_ping, self.config.ping_interval) {
            if now >= at {
                self.keepalive_count = self.keepalive_count.wrapping_add(1);
                let payload = self.keepalive_count.to_be_bytes();
                self.write_frame(OpCode::Ping, &payload);
                self.next_ping = Some(now + interval);
                if self.pong_deadline.is_none() {
                    self.pong_deadline = self.config.ping_timeout.map(|t| now + t);
                }
            }
        }
    }

    // ----- commands -----

    /// Queues a text message (compressed when permessage-deflate is in use), copying it.
    pub fn send_text(&mut self, text: &str) -> Result<(), SendError> {
        self.send_borrowed(OpCode::Text, text.as_bytes())
    }

    /// Queues a binary message (compressed when permessage-deflate is in use), copying it.
    pub fn send_binary(&mut self, data: &[u8]) -> Result<(), SendError> {
        self.send_borrowed(OpCode::Binary, data)
    }

    fn send_borrowed(&mut self, opcode: OpCode, payload: &[u8]) -> Result<(), SendError> {
        self.check_message(opcode)?;
        if !self.send_compressed(opcode, payload) {
            self.write_frame(opcode, payload);
        }
        Ok(())
    }

    /// Queues a message of kind `opcode` ([`OpCode::Text`] or [`OpCode::Binary`]; `payload`
    /// must be UTF-8 for text). With `compress` false the message is sent uncompressed even
    /// when permessage-deflate is in use: for data that does not compress, such as images.
    ///
    /// A payload of 8 KiB or more that goes out uncompressed is not copied: it is written
    /// from its own allocation after its frame header ([`transmit_vectored`] hands out both
    /// parts for one vectored write) and released once written. As a client, the payload is
    /// masked in place when this is its only reference, and copied otherwise.
    ///
    /// [`transmit_vectored`]: Self::transmit_vectored
    pub fn send_message(
        &mut self,
        opcode: OpCode,
        payload: Bytes,
        compress: bool,
    ) -> Result<(), SendError> {
        self.check_message(opcode)?;
        if compress && self.send_compressed(opcode, &payload) {
            return Ok(());
        }
        self.write_frame_shared(opcode, payload, false);
        Ok(())
    }

    /// As [`send_message`](Self::send_message), for a payload in two parts: `prefix`
    /// (a few bytes, such as a protocol's marker) then `payload`, sent as one message
    /// without joining them first (when compressed, they are joined for the compressor).
    pub fn send_message_prefixed(
        &mut self,
        opcode: OpCode,
        prefix: &[u8],
        payload: Bytes,
        compress: bool,
    ) -> Result<(), SendError> {
        if prefix.is_empty() {
            return self.send_message(opcode, payload, compress);
        }
        self.check_message(opcode)?;
        let len = prefix.len() + payload.len();
        if compress
            && self
                .deflate
                .as_ref()
                .is_some_and(|codec| len >= codec.min_size)
        {
            let mut joined = Vec::with_capacity(len);
            joined.extend_from_slice(prefix);
            joined.extend_from_slice(&payload);
            return self.send_message(opcode, Bytes::from(joined), true);
        }
        self.compact_out();
        let mask = self.new_mask();
        let mut head = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&mut head, true, false, opcode, mask, len as u64);
        self.out.extend_from_slice(&head[..n]);
        let start = self.out.len();
        self.out.extend_from_slice(prefix);
        if payload.len() < OWNED_MIN {
            self.out.extend_from_slice(&payload);
            if let Some(key) = mask {
                apply_mask(&mut self.out[start..], key, 0);
            }
            return Ok(());
        }
        let data = match mask {
            None => payload,
            Some(key) => {
                apply_mask(&mut self.out[start..], key, 0);
                let mut data = payload
                    .try_into_mut()
                    .unwrap_or_else(|shared| bytes::BytesMut::from(&shared[..]));
                apply_mask(&mut data, key, prefix.len());
                data.freeze()
            }
        };
        self.owned.push_back(OwnedPayload {
            at: self.out.len(),
            data,
            pos: 0,
        });
        Ok(())
    }

    /// Queues a message prepared once for many connections (see [`PreparedMessage`]): the
    /// payload is shared, not copied, and when permessage-deflate is in use without context
    /// takeover in this direction, it is compressed once for every connection that agreed on
    /// the same parameters (the first connection to send it compresses it). With `compress`
    /// false, it goes out uncompressed.
    pub fn send_prepared(
        &mut self,
        message: &PreparedMessage,
        compress: bool,
    ) -> Result<(), SendError> {
        self.check_message(message.opcode)?;
        if compress {
            if let Some(codec) = self.deflate.as_mut() {
                if message.payload.len() >= codec.min_size {
                    match codec.shared_key() {
                        Some(key) => {
                            let compressed = message
                                .compressed(key, |out| codec.compress(&message.payload, out));
                            if let Some(c) = compressed {
                                self.write_frame_shared(message.opcode, c, true);
                                return Ok(());
                            }
                        }
                        // With context takeover every connection's output differs.
                        None => {
                            if self.send_compressed(message.opcode, &message.payload) {
                                return Ok(());
                            }
                        }
                    }
                }
            }
        }
        self.write_frame_shared(message.opcode, message.payload.clone(), false);
        Ok(())
    }

    /// Refuses a message of a kind that is not data, or after our Close went out.
    fn check_message(&self, opcode: OpCode) -> Result<(), SendError> {
        if !matches!(opcode, OpCode::Text | OpCode::Binary) {
            return Err(SendError::NotData);
        }
        if self.close_sent {
            return Err(SendError::Closed);
        }
        Ok(())
    }

    /// Compresses and queues `payload` if permessage-deflate is in use, the payload is large
    /// enough and compression gains something; false if nothing was queued.
    fn send_compressed(&mut self, opcode: OpCode, payload: &[u8]) -> bool {
        let Some(codec) = self.deflate.as_mut() else {
            return false;
        };
        if payload.len() < codec.min_size {
            return false;
        }
        self.scratch.clear();
        if !codec.compress(payload, &mut self.scratch) {
            return false;
        }
        let compressed = std::mem::take(&mut self.scratch);
        if compressed.len() >= OWNED_MIN {
            self.write_frame_shared(opcode, Bytes::from(compressed), true);
        } else {
            self.write_frame_rsv1(opcode, &compressed, true);
            self.scratch = compressed;
            if self.scratch.capacity() > OUT_KEEP {
                self.scratch = Vec::new();
            }
        }
        true
    }

    /// Queues a Ping. When its Pong arrives, [`Event::Pong`] carries the round-trip time
    /// (the last 16 unanswered pings are remembered).
    pub fn ping(&mut self, payload: &[u8], now: Instant) -> Result<(), SendError> {
        if self.close_sent {
            return Err(SendError::Closed);
        }
        if payload.len() > 125 {
            return Err(SendError::ControlTooLong);
        }
        self.write_frame(OpCode::Ping, payload);
        if self.user_pings.len() == MAX_USER_PINGS {
            self.user_pings.pop_front();
        }
        self.user_pings.push_back((payload.to_vec(), now));
        Ok(())
    }

    /// Queues an unsolicited Pong (a one-way heartbeat).
    pub fn pong(&mut self, payload: &[u8]) -> Result<(), SendError> {
        if self.close_sent {
            return Err(SendError::Closed);
        }
        if payload.len() > 125 {
            return Err(SendError::ControlTooLong);
        }
        self.write_frame(OpCode::Pong, payload);
        Ok(())
    }

    /// Starts the closing handshake with `code` and `reason` (at most 123 bytes). Messages may
    /// still arrive until the peer's Close; after `close_timeout` without it the connection is
    /// closed anyway.
    pub fn close(&mut self, code: u16, reason: &str, now: Instant) -> Result<(), SendError> {
        if self.close_sent {
            return Err(SendError::Closed);
        }
        if !is_valid_close_code(code) {
            return Err(SendError::InvalidCloseCode(code));
        }
        if reason.len() > 123 {
            return Err(SendError::ReasonTooLong);
        }
        self.write_close(Some(code), reason);
        if self.state == State::Open {
            self.state = State::Closing;
            self.close_deadline = Some(now + self.config.close_timeout);
        }
        Ok(())
    }

    // ----- outputs -----

    /// The next bytes to write to the transport, in order: the start of what is queued (a
    /// payload queued by value is a part of its own). Empty when nothing is queued.
    pub fn transmit(&self) -> &[u8] {
        match self.owned.front() {
            Some(o) if self.out_pos == o.at => &o.data[o.pos..],
            Some(o) => &self.out[self.out_pos..o.at],
            None => &self.out[self.out_pos..],
        }
    }

    /// Fills `dst` with the queued bytes in order, as many parts as fit, for one vectored
    /// write; returns how many parts were filled (0 when nothing is queued). Report what was
    /// written with [`advance_transmit`](Self::advance_transmit), which may span parts.
    pub fn transmit_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut filled = 0;
        let mut push = |part: &'a [u8]| {
            if part.is_empty() || filled == dst.len() {
                return;
            }
            dst[filled] = IoSlice::new(part);
            filled += 1;
        };
        let mut pos = self.out_pos;
        for o in &self.owned {
            push(&self.out[pos..o.at]);
            push(&o.data[o.pos..]);
            pos = o.at;
        }
        push(&self.out[pos..]);
        filled
    }

    /// Reports that the first `n` bytes of what is queued were written (they may span the
    /// parts of [`transmit_vectored`](Self::transmit_vectored)).
    pub fn advance_transmit(&mut self, mut n: usize) {
        // The last Pong is written out by this advance: answer the latest Ping after it.
        let pong_out = self.pong_unwritten > 0 && n >= self.pong_unwritten;
        self.pong_unwritten = self.pong_unwritten.saturating_sub(n);
        while n > 0 {
            let (at, left) = match self.owned.front() {
                Some(o) => (o.at, o.data.len() - o.pos),
                None => (self.out.len(), 0),
            };
            if self.out_pos < at {
                let k = n.min(at - self.out_pos);
                self.out_pos += k;
                n -= k;
            } else if left > 0 {
                let k = n.min(left);
                if let Some(o) = self.owned.front_mut() {
                    o.pos += k;
                }
                n -= k;
                if k == left {
                    self.owned.pop_front();
                }
            } else {
                break;
            }
        }
        if self.owned.is_empty() && self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
            if self.out.capacity() > OUT_KEEP {
                self.out = Vec::new();
            }
        }
        if pong_out {
            if let Some(payload) = self.pong_pending.take() {
                if !self.close_sent {
                    self.write_pong(&payload);
                }
            }
        }
    }

    /// Takes everything queued for the transport as one buffer, as if it had been written:
    /// for tests and for drivers that want a single copy rather than
    /// [`transmit`](Self::transmit)'s parts.
    pub fn take_transmit(&mut self) -> Vec<u8> {
        let mut all = Vec::with_capacity(self.buffered_amount());
        while self.buffered_amount() > 0 {
            let part = self.transmit();
            all.extend_from_slice(part);
            let n = part.len();
            self.advance_transmit(n);
        }
        all
    }

    /// Bytes of memory held for the incoming message being assembled (its capacity, which
    /// may run ahead of what arrived): what a driver counts against a budget shared by many
    /// connections. 0 between messages, and for a message taken whole from a
    /// [`receive_shared`](Self::receive_shared) buffer.
    pub fn incoming_buffered(&self) -> usize {
        self.buf.capacity()
    }

    /// Fails the connection for a reason the driver found (for example
    /// [`ProtocolError::Overloaded`]), exactly as if the core had detected `error` in the
    /// input: the message being assembled is dropped, the error is reported once as
    /// [`Event::Error`] and a Close frame with its [close code](ProtocolError::close_code)
    /// is queued. Does nothing once reading ended (an earlier failure, the peer's Close, end
    /// of input or the close timeout).
    pub fn fail_with(&mut self, error: ProtocolError, now: Instant) {
        self.fail(error, now);
    }

    /// How many bytes are queued for the transport.
    pub fn buffered_amount(&self) -> usize {
        let owned: usize = self.owned.iter().map(|o| o.data.len() - o.pos).sum();
        self.out.len() - self.out_pos + owned
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        let event = self.events.pop_front();
        match &event {
            Some(Event::Error(e)) => self.apply_failure(e),
            Some(Event::Close(_)) => self.apply_peer_close(),
            _ => {}
        }
        event
    }

    /// True if [`poll_event`](Self::poll_event) would return an event.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// True if a complete text or binary message waits in the event queue. Drivers use it to
    /// coalesce writes: replies to messages that are already decoded can wait for the last of
    /// them and leave in one write.
    pub fn has_pending_messages(&self) -> bool {
        self.events
            .iter()
            .any(|e| matches!(e, Event::Text(_) | Event::Binary(_)))
    }

    /// The round-trip time of the [`ping`](Self::ping) with this payload, once its Pong
    /// arrived (each answer is taken once; the last 16 are kept).
    pub fn take_rtt(&mut self, payload: &[u8]) -> Option<Duration> {
        let i = self.answered.iter().position(|(p, _)| p == payload)?;
        self.answered.remove(i).map(|(_, rtt)| rtt)
    }

    /// The earliest instant at which [`handle_timeout`](Self::handle_timeout) has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = earliest(self.close_deadline, self.transport_deadline);
        if self.state == State::Open {
            t = earliest(t, self.pong_deadline);
            t = earliest(t, self.next_ping);
        }
        t
    }

    /// True once the driver should close the transport (after writing what is buffered).
    ///
    /// A server closes right after the closing handshake; a client waits for the server to
    /// close first, for at most `close_timeout`.
    pub fn wants_close_transport(&self) -> bool {
        self.close_transport
    }

    // ----- internals -----

    /// Starts a frame from its complete header (`head.len() == header_len(head[0], head[1])`).
    ///
    /// With `reserve` false the message buffer is not grown for the payload: the caller takes
    /// a whole message's payload from elsewhere ([`receive_shared`](Self::receive_shared)).
    fn begin_frame(
        &mut self,
        head: &[u8],
        now: Instant,
        reserve: bool,
    ) -> Result<(), ProtocolError> {
        let b0 = head[0];
        let b1 = head[1];
        let fin = b0 & 0x80 != 0;
        let rsv1 = b0 & 0x40 != 0;
        if b0 & 0x30 != 0 {
            return Err(ProtocolError::ReservedBits);
        }
        let opcode = OpCode::from_u8(b0 & 0x0F).ok_or(ProtocolError::UnknownOpcode(b0 & 0x0F))?;
        let masked = b1 & 0x80 != 0;
        let (len, mut at) = match b1 & 0x7F {
            126 => {
                let len = u64::from(u16::from_be_bytes([head[2], head[3]]));
                if len < 126 {
                    return Err(ProtocolError::NonMinimalLength);
                }
                (len, 4)
            }
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&head[2..10]);
                let len = u64::from_be_bytes(b);
                if len >> 63 != 0 {
                    return Err(ProtocolError::LengthOverflow);
                }
                if len <= u64::from(u16::MAX) {
                    return Err(ProtocolError::NonMinimalLength);
                }
                (len, 10)
            }
            n => (u64::from(n), 2),
        };
        let mask = if masked {
            let mut key = [0u8; 4];
            key.copy_from_slice(&head[at..at + 4]);
            at += 4;
            Some(key)
        } else {
            None
        };
        debug_assert_eq!(at, header_len(b0, b1));
        match (self.role, masked) {
            (Role::Server, false) => return Err(ProtocolError::UnmaskedFrame),
            (Role::Client, true) => return Err(ProtocolError::MaskedFrame),
            _ => {}
        }
        if opcode.is_control() {
            if !fin {
                return Err(ProtocolError::FragmentedControl);
            }
            if len > 125 {
                return Err(ProtocolError::ControlTooLong);
            }
            if rsv1 {
                return Err(ProtocolError::ReservedBits);
            }
        } else {
            // RSV1 marks a compressed message, on its first frame only.
            let starts = matches!(opcode, OpCode::Text | OpCode::Binary);
            if rsv1 && (!starts || self.deflate.is_none()) {
                return Err(ProtocolError::ReservedBits);
            }
            match (opcode, self.message) {
                (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
                (OpCode::Text | OpCode::Binary, Some(_)) => {
                    return Err(ProtocolError::ExpectedContinuation)
                }
                (OpCode::Text, None) => self.start_message(MessageKind::Text, rsv1),
                (OpCode::Binary, None) => self.start_message(MessageKind::Binary, rsv1),
                _ => {}
            }
            self.fragments += 1;
            if self.fragments > self.config.max_fragments {
                return Err(ProtocolError::TooManyFragments {
                    max: self.config.max_fragments,
                });
            }
            if len > self.config.max_frame_size as u64 {
                return Err(ProtocolError::FrameTooLarge {
                    max: self.config.max_frame_size,
                });
            }
            // A compressed message's size is checked while it is inflated.
            if !self.compressed {
                if self.buf.len() as u64 + len > self.config.max_message_size as u64 {
                    return Err(ProtocolError::MessageTooLarge {
                        max: self.config.max_message_size,
                    });
                }
                // Bounded by max_frame_size above, so the cast cannot truncate on 64-bit
                // targets; the reservation is capped anyway. `reserve` (not exact) keeps
                // growth amortised over the frames of a fragmented message.
                if reserve {
                    self.buf.reserve((len as usize).min(RESERVE_AHEAD));
                }
            }
        }
        self.frame = FrameInfo {
            fin,
            opcode,
            mask,
            len,
            got: 0,
        };
        self.phase = ReadPhase::Payload;
        if len == 0 {
            self.end_frame(now);
        }
        Ok(())
    }

    /// Makes room for `n` more payload bytes of the current data frame: the buffer doubles
    /// (never growing by less than `n`), but within a message's final frame it stops at the
    /// frame's end, so a message arrives in an allocation of its size.
    fn grow_payload(&mut self, n: usize) {
        let spare = self.buf.capacity() - self.buf.len();
        if spare >= n {
            return;
        }
        let mut extra = n.max(self.buf.len());
        if self.frame.fin {
            let remaining = usize::try_from(self.frame.len - self.frame.got).unwrap_or(usize::MAX);
            extra = extra.min(remaining).max(n);
        }
        self.buf.reserve_exact(extra);
    }

    /// Unmasks the payload bytes of the current frame appended to the message buffer from
    /// `start` on (before `advance_frame` counts them).
    fn unmask_from(&mut self, start: usize) {
        if let Some(key) = self.frame.mask {
            apply_mask(&mut self.buf[start..], key, self.frame.got as usize);
        }
    }

    /// Counts `n` more payload bytes of the current frame, ending it when complete.
    fn advance_frame(&mut self, n: usize, now: Instant) {
        self.frame.got += n as u64;
        if self.frame.got == self.frame.len {
            self.end_frame(now);
        }
    }

    /// Fails fast on invalid UTF-8 inside a text message still in progress.
    fn check_partial_text(&mut self, now: Instant) {
        if self.message == Some(MessageKind::Text) && self.buf.len() > self.utf8_valid {
            match crate::utf8::valid_prefix(&self.buf[self.utf8_valid..]) {
                Some(valid) => self.utf8_valid += valid,
                None => self.fail(ProtocolError::InvalidUtf8, now),
            }
        }
    }

    fn start_message(&mut self, kind: MessageKind, compressed: bool) {
        self.message = Some(kind);
        self.compressed = compressed;
        self.fragments = 0;
        self.utf8_valid = 0;
    }

    fn end_frame(&mut self, now: Instant) {
        self.phase = ReadPhase::Header;
        let len = self.frame.len as usize;
        match self.frame.opcode {
            OpCode::Ping => {
                let payload = self.control[..len].to_vec();
                if !self.close_sent {
                    if self.pong_unwritten > PONG_BACKLOG {
                        self.pong_pending = Some(payload.as_slice().into());
                    } else {
                        // Answering this Ping answers every older one still pending.
                        self.pong_pending = None;
                        self.write_pong(&payload);
                    }
                }
                self.events.push_back(Event::Ping(payload));
            }
            OpCode::Pong => {
                let payload = self.control[..len].to_vec();
                // Any Pong proves the peer alive (RFC 6455 allows unsolicited Pongs as
                // heartbeats), so it clears the keepalive deadline.
                self.pong_deadline = None;
                let rtt = self
                    .user_pings
                    .iter()
                    .position(|(p, _)| *p == payload)
                    .map(|i| {
                        let sent = self.user_pings[i].1;
                        self.user_pings.drain(..=i);
                        now.saturating_duration_since(sent)
                    });
                if let Some(rtt) = rtt {
                    if self.answered.len() == MAX_USER_PINGS {
                        self.answered.pop_front();
                    }
                    self.answered.push_back((payload.clone(), rtt));
                }
                self.events.push_back(Event::Pong { payload, rtt });
            }
            OpCode::Close => self.on_close(len, now),
            OpCode::Continuation | OpCode::Text | OpCode::Binary => {
                if self.frame.fin {
                    self.end_message(now);
                }
            }
        }
    }

    /// Unmasks (into the scratch buffer) and inflates one piece of a compressed message.
    fn inflate_chunk(&mut self, chunk: &[u8], offset: usize) -> Result<(), ProtocolError> {
        let Some(codec) = self.deflate.as_mut() else {
            return Err(ProtocolError::ReservedBits);
        };
        let input = match self.frame.mask {
            Some(key) => {
                self.scratch.clear();
                self.scratch.extend_from_slice(chunk);
                apply_mask(&mut self.scratch, key, offset);
                &self.scratch[..]
            }
            None => chunk,
        };
        codec.decompress(input, &mut self.buf, self.config.max_message_size)
    }

    fn end_message(&mut self, now: Instant) {
        if self.compressed {
            self.compressed = false;
            if self.scratch.capacity() > OUT_KEEP {
                self.scratch = Vec::new();
            }
            if let Some(codec) = self.deflate.as_mut() {
                if let Err(e) = codec.finish_message(&mut self.buf, self.config.max_message_size) {
                    return self.fail(e, now);
                }
            }
        }
        let kind = self.message.take();
        let data = std::mem::take(&mut self.buf);
        let checked = std::mem::take(&mut self.utf8_valid);
        self.fragments = 0;
        match kind {
            Some(MessageKind::Text) => match crate::utf8::into_text(data, checked) {
                Ok(text) => self.events.push_back(Event::Text(text)),
                Err(_) => self.fail(ProtocolError::InvalidUtf8, now),
            },
            Some(MessageKind::Binary) => self.events.push_back(Event::Binary(Bytes::from(data))),
            None => {}
        }
    }

    fn on_close(&mut self, len: usize, now: Instant) {
        let frame = match len {
            0 => None,
            1 => return self.fail(ProtocolError::InvalidClosePayload, now),
            _ => {
                let code = u16::from_be_bytes([self.control[0], self.control[1]]);
                if !is_valid_close_code(code) {
                    return self.fail(ProtocolError::InvalidCloseCode(code), now);
                }
                let Ok(reason) = std::str::from_utf8(&self.control[2..len]) else {
                    return self.fail(ProtocolError::InvalidUtf8, now);
                };
                Some(CloseFrame {
                    code,
                    reason: reason.to_owned(),
                })
            }
        };
        // The reply waits until this event is taken (see `apply_peer_close`), so that
        // messages that arrived before the Close can still be answered.
        self.peer_close = match &frame {
            Some(f) => PeerClose::Frame(f.clone()),
            None => PeerClose::NoStatus,
        };
        self.peer_close_at = Some(now);
        self.events.push_back(Event::Close(frame));
        self.phase = ReadPhase::Done;
        self.message = None;
        self.compressed = false;
        self.buf = Vec::new();
    }

    /// Completes the closing handshake once the peer's Close was taken from the queue:
    /// echoes its status code (RFC 6455 section 5.5.1) unless our Close went out already.
    fn apply_peer_close(&mut self) {
        if !self.close_sent {
            let code = self.peer_close.code();
            self.write_close(code, "");
        }
        self.state = State::Closed;
        self.close_deadline = None;
        match self.role {
            Role::Server => self.close_transport = true,
            // The server closes the transport first; wait for it, for a while.
            Role::Client => match self.peer_close_at {
                Some(at) => self.transport_deadline = Some(at + self.config.close_timeout),
                None => self.close_transport = true,
            },
        }
    }

    /// Fails the connection. Reading stops at once, but the Close frame is written only when
    /// the error is taken from the event queue: messages decoded before the bad frame are
    /// still delivered first, and replies to them still go out before the Close.
    fn fail(&mut self, error: ProtocolError, _now: Instant) {
        if self.phase == ReadPhase::Done {
            return;
        }
        self.phase = ReadPhase::Done;
        self.message = None;
        self.compressed = false;
        self.buf = Vec::new();
        self.next_ping = None;
        self.pong_deadline = None;
        self.events.push_back(Event::Error(error));
    }

    fn apply_failure(&mut self, error: &ProtocolError) {
        if !self.close_sent {
            self.write_close(Some(error.close_code()), error.close_reason());
        }
        self.state = State::Closed;
        self.close_deadline = None;
        self.transport_deadline = None;
        self.close_transport = true;
    }

    fn write_close(&mut self, code: Option<u16>, reason: &str) {
        let mut payload = [0u8; 125];
        let n = match code {
            Some(code) => {
                payload[..2].copy_from_slice(&code.to_be_bytes());
                let r = &reason.as_bytes()[..reason.len().min(123)];
                payload[2..2 + r.len()].copy_from_slice(r);
                2 + r.len()
            }
            None => 0,
        };
        self.write_frame(OpCode::Close, &payload[..n]);
        self.close_sent = true;
    }

    /// Queues a Pong answering a Ping, and remembers how much must be written before it is
    /// out (see `pong_pending`).
    fn write_pong(&mut self, payload: &[u8]) {
        self.write_frame(OpCode::Pong, payload);
        self.pong_unwritten = self.buffered_amount();
    }

    fn write_frame(&mut self, opcode: OpCode, payload: &[u8]) {
        self.write_frame_rsv1(opcode, payload, false);
    }

    fn write_frame_rsv1(&mut self, opcode: OpCode, payload: &[u8], rsv1: bool) {
        self.compact_out();
        let mask = self.new_mask();
        encode_frame(&mut self.out, true, rsv1, opcode, mask, payload);
    }

    /// Queues a frame whose payload stays in its own allocation (see `OwnedPayload`), or, when
    /// it is small, copies it into the transmit buffer.
    fn write_frame_shared(&mut self, opcode: OpCode, payload: Bytes, rsv1: bool) {
        if payload.len() < OWNED_MIN {
            return self.write_frame_rsv1(opcode, &payload, rsv1);
        }
        self.compact_out();
        let mask = self.new_mask();
        let mut head = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&mut head, true, rsv1, opcode, mask, payload.len() as u64);
        self.out.extend_from_slice(&head[..n]);
        let data = match mask {
            None => payload,
            Some(key) => {
                // Mask in place when nobody else holds the payload; copy otherwise.
                let mut data = payload
                    .try_into_mut()
                    .unwrap_or_else(|shared| bytes::BytesMut::from(&shared[..]));
                apply_mask(&mut data, key, 0);
                data.freeze()
            }
        };
        self.owned.push_back(OwnedPayload {
            at: self.out.len(),
            data,
            pos: 0,
        });
    }

    /// Drops the written front of a transmit buffer that is mostly written already.
    fn compact_out(&mut self) {
        if self.out_pos > OUT_KEEP && self.out_pos * 2 > self.out.len() {
            let written = self.out_pos;
            self.out.drain(..written);
            self.out_pos = 0;
            for o in &mut self.owned {
                o.at -= written;
            }
        }
    }

    fn new_mask(&self) -> Option<[u8; 4]> {
        match self.role {
            Role::Client => Some(rand::random::<[u8; 4]>()),
            Role::Server => None,
        }
    }
}

/// A message prepared once and sent to many connections with
/// [`Connection::send_prepared`]: its payload is shared by every connection that sends it, and
/// its compressed form is made once per set of deflate parameters (connections that agreed on
/// the same window and level, without context takeover, share it).
///
/// Cheap to share between threads (`Arc<PreparedMessage>`) or to clone (the payload and the
/// compressed forms are reference-counted).
#[derive(Clone, Debug)]
pub struct PreparedMessage {
    opcode: OpCode,
    payload: Bytes,
    forms: std::sync::Arc<CompressedForms>,
}

/// A compressed payload and the parameters it was made for (`None`: compression failed, and
/// the message goes out uncompressed).
type CompressedForm = (CompressKey, Option<Bytes>);

/// The compressed forms of one prepared message: the first parameters seen (almost always
/// the only ones, read without a lock), and any others.
#[derive(Debug, Default)]
struct CompressedForms {
    first: std::sync::OnceLock<CompressedForm>,
    others: std::sync::Mutex<Vec<CompressedForm>>,
}

/// What makes two compressed forms of a message identical: window bits, level, memory level.
pub(crate) type CompressKey = (u8, u8, u8);

impl PreparedMessage {
    /// A text message.
    pub fn text(text: impl Into<Utf8Bytes>) -> Self {
        Self::new(OpCode::Text, text.into().into_bytes())
    }

    /// A binary message.
    pub fn binary(data: impl Into<Bytes>) -> Self {
        Self::new(OpCode::Binary, data.into())
    }

    fn new(opcode: OpCode, payload: Bytes) -> Self {
        Self {
            opcode,
            payload,
            forms: Default::default(),
        }
    }

    /// [`OpCode::Text`] or [`OpCode::Binary`].
    pub fn opcode(&self) -> OpCode {
        self.opcode
    }

    /// The uncompressed payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// How many compressed forms were made so far (one per set of parameters in use).
    pub fn compressed_forms(&self) -> usize {
        let others = self.forms.others.lock();
        usize::from(self.forms.first.get().is_some())
            + others.unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The compressed payload for `key`, made with `compress` the first time it is asked for.
    fn compressed(
        &self,
        key: CompressKey,
        compress: impl FnOnce(&mut Vec<u8>) -> bool,
    ) -> Option<Bytes> {
        let mut compress = Some(compress);
        // Runs `compress` at most once, whichever branch needs it.
        let mut make = || {
            let compress = compress.take()?;
            let mut out = Vec::new();
            compress(&mut out).then(|| Bytes::from(out))
        };
        let (k, c) = self.forms.first.get_or_init(|| (key, make()));
        if *k == key {
            return c.clone();
        }
        // A poisoned lock still holds complete entries (each is pushed whole).
        let mut others = self.forms.others.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, c)) = others.iter().find(|(k, _)| *k == key) {
            return c.clone();
        }
        let c = make();
        others.push((key, c.clone()));
        c
    }
}

/// The payload length a complete frame header announces (unchecked: `begin_frame` refuses
/// non-minimal and oversized lengths).
fn announced_len(head: &[u8]) -> u64 {
    match head[1] & 0x7F {
        126 => u64::from(u16::from_be_bytes([head[2], head[3]])),
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&head[2..10]);
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    }
}

/// The header length announced by a frame's first two bytes.
fn header_len(_b0: u8, b1: u8) -> usize {
    let ext = match b1 & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}
