//! A client and a server `Connection` talking to each other over an honest wire (nothing is
//! corrupted, dropped or reordered), driven by an interleaving of operations decoded from the
//! input: messages of every kind and size through every send method, fragmented messages
//! written straight to the wire, pings, pongs, closes with legal and illegal codes, bytes
//! taken from one side and delivered to the other in chunks of any size and through every
//! receive method, the clock moved on by any amount and the timers run; optionally with
//! permessage-deflate negotiated between the two configurations.
//!
//! What must hold, besides never panicking:
//! * each side receives the other's messages whole, in order and byte for byte, and after
//!   everything was delivered it has all of them, unless its reading stopped: the peer's
//!   Close (which follows every message sent before it), an error that the run explains
//!   (a limit the message broke, or a keepalive timeout the clock allows), or its own close
//!   timeout (likewise);
//! * the Close each side receives is exactly the one the other sent, with a legal code;
//! * every frame on the wire is well formed (masking by role, RSV bits, control frame rules,
//!   fragmentation) and nothing follows a Close;
//! * commands succeed or fail as documented, the transmit buffer never loses a byte,
//!   messages stay within the configured size, and the timers leave nothing overdue.
#![no_main]

use std::io::IoSlice;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;

mod input;
use input::Input;
use tether_proto::bytes::{Bytes, BytesMut};
use tether_proto::frame::{encode_header, is_valid_close_code, MAX_HEADER_LEN};
use tether_proto::mask::apply_mask;
use tether_proto::{
    CloseFrame, Config, Connection, DeflateConfig, DeflateParams, Event, OpCode, PeerClose,
    PreparedMessage, ProtocolError, Role, SendError, State,
};

/// Most operations decoded from one input.
const MAX_OPS: usize = 300;
/// Largest message generated (above 8 KiB, where payloads are sent from their own
/// allocation and large frames may be read in place).
const MAX_MESSAGE: usize = 12 << 10;
/// Payload bytes one input may send in all; later messages are kept small.
const BUDGET: usize = 192 << 10;
/// Largest frame both sides accept: above anything generated, so never the reason a
/// message is refused.
const MAX_FRAME: usize = 1 << 20;

/// The largest control frame: a 14-byte header (with a mask) and 125 bytes of payload.
const MAX_CONTROL_FRAME: usize = MAX_HEADER_LEN + 125;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Text,
    Binary,
}

impl Kind {
    /// Text for a set flag, binary otherwise.
    fn from_flag(text: bool) -> Self {
        if text {
            Self::Text
        } else {
            Self::Binary
        }
    }

    fn opcode(self) -> OpCode {
        match self {
            Self::Text => OpCode::Text,
            Self::Binary => OpCode::Binary,
        }
    }
}

/// A message one side sent, as the other must receive it.
struct Sent {
    kind: Kind,
    data: Vec<u8>,
    /// Frames it was sent in.
    fragments: usize,
}

/// Checks the frames one side puts on the wire, independently of the receiving side.
struct Scanner {
    /// Offset in the side's `wire` of the next frame to check.
    pos: usize,
    /// Frames must be masked (a client's).
    masked: bool,
    deflate: bool,
    in_message: bool,
    closed: bool,
}

impl Scanner {
    fn scan(&mut self, wire: &[u8], name: &str) {
        loop {
            let w = &wire[self.pos..];
            if w.len() < 2 {
                return;
            }
            let (b0, b1) = (w[0], w[1]);
            let ext = match b1 & 0x7F {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            let masked = b1 & 0x80 != 0;
            let head = 2 + ext + if masked { 4 } else { 0 };
            if w.len() < head {
                return;
            }
            let len = match ext {
                2 => {
                    let len = u64::from(u16::from_be_bytes([w[2], w[3]]));
                    assert!(len >= 126, "{name}: non-minimal length {len}");
                    len
                }
                8 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&w[2..10]);
                    let len = u64::from_be_bytes(b);
                    assert!(len > 0xFFFF && len >> 63 == 0, "{name}: bad length {len}");
                    len
                }
                _ => u64::from(b1 & 0x7F),
            } as usize;
            if w.len() < head + len {
                return;
            }
            let mut payload = w[head..head + len].to_vec();
            if masked {
                let key = [w[head - 4], w[head - 3], w[head - 2], w[head - 1]];
                apply_mask(&mut payload, key, 0);
            }
            assert!(!self.closed, "{name} wrote a frame after its Close");
            assert_eq!(masked, self.masked, "{name}: wrong masking");
            assert_eq!(b0 & 0x30, 0, "{name}: RSV2/RSV3 set");
            let (fin, rsv1) = (b0 & 0x80 != 0, b0 & 0x40 != 0);
            match b0 & 0x0F {
                0x8..=0xA => {
                    assert!(fin && !rsv1 && len <= 125, "{name}: bad control frame");
                    if b0 & 0x0F == 0x8 {
                        self.closed = true;
                        assert_ne!(len, 1, "{name}: one-byte Close");
                        if len >= 2 {
                            let code = u16::from_be_bytes([payload[0], payload[1]]);
                            assert!(is_valid_close_code(code), "{name}: Close {code}");
                            assert!(std::str::from_utf8(&payload[2..]).is_ok());
                        }
                    }
                }
                0x1 | 0x2 => {
                    assert!(!self.in_message, "{name}: new message inside another");
                    assert!(!rsv1 || self.deflate, "{name}: RSV1 without deflate");
                    self.in_message = !fin;
                }
                0x0 => {
                    assert!(self.in_message, "{name}: stray continuation");
                    assert!(!rsv1, "{name}: RSV1 on a continuation");
                    self.in_message = !fin;
                }
                op => panic!("{name}: reserved opcode {op:#x}"),
            }
            self.pos += head + len;
        }
    }
}

/// One end: its connection, what it sent, and what it received from the other end.
struct Side {
    name: &'static str,
    conn: Connection,
    deflate: Option<(DeflateParams, DeflateConfig)>,
    /// Bytes taken from `conn` for the other side; `wire[delivered..]` is still on its way.
    wire: Vec<u8>,
    delivered: usize,
    scanner: Scanner,

    sent: Vec<Sent>,
    /// Payloads of the pings sent (user and written to the wire), in order.
    pings: Vec<Vec<u8>>,
    /// The Close frame this side sent (`Some(None)`: one without a status code).
    close_sent: Option<Option<CloseFrame>>,
    closed_at: Option<Instant>,

    /// Messages and pings received from the other side so far.
    rx: usize,
    ping_rx: usize,
    got_close: Option<Option<CloseFrame>>,
    error: Option<ProtocolError>,
    /// The close timeout ended the closing handshake.
    timed_out: bool,
}

impl Side {
    fn new(name: &'static str, role: Role, config: Config, now: Instant) -> Self {
        Self {
            name,
            conn: Connection::new(role, config, now),
            deflate: None,
            wire: Vec::new(),
            delivered: 0,
            scanner: Scanner {
                pos: 0,
                masked: role == Role::Client,
                deflate: false,
                in_message: false,
                closed: false,
            },
            sent: Vec::new(),
            pings: Vec::new(),
            close_sent: None,
            closed_at: None,
            rx: 0,
            ping_rx: 0,
            got_close: None,
            error: None,
            timed_out: false,
        }
    }

    /// Whether a command that needs the connection open must succeed; panics on a result
    /// that disagrees with what was sent so far.
    fn expect(&self, what: &str, result: Result<(), SendError>) -> bool {
        match (&self.close_sent, result) {
            (None, Ok(())) => true,
            (Some(_), Err(SendError::Closed)) => false,
            (close, r) => panic!("{}: {what} gave {r:?}; own Close: {close:?}", self.name),
        }
    }

    fn record(&mut self, kind: Kind, data: Vec<u8>, fragments: usize) {
        self.sent.push(Sent {
            kind,
            data,
            fragments,
        });
    }

    /// Consistency checks that hold between any two operations.
    fn check(&self) {
        assert_eq!(
            self.conn.state() == State::Open,
            self.close_sent.is_none(),
            "{}: state {:?} with own Close {:?}",
            self.name,
            self.conn.state(),
            self.close_sent
        );
        let buffered = self.conn.buffered_amount();
        assert_eq!(
            self.conn.transmit().is_empty(),
            buffered == 0,
            "{}",
            self.name
        );
        let mut parts = [IoSlice::new(&[]); 64];
        let filled = self.conn.transmit_vectored(&mut parts);
        if filled < parts.len() {
            let total: usize = parts[..filled].iter().map(|p| p.len()).sum();
            assert_eq!(total, buffered, "{}: transmit_vectored", self.name);
        }
        if let Some(first) = parts[..filled].first() {
            assert_eq!(&first[..], self.conn.transmit(), "{}", self.name);
        }
    }

    /// Moves up to `n` bytes from the connection to the wire.
    fn pull(&mut self, n: usize, mode: u8) -> usize {
        let before = self.conn.buffered_amount();
        let moved = match mode % 3 {
            0 => {
                let part = self.conn.transmit();
                let k = n.min(part.len());
                self.wire.extend_from_slice(&part[..k]);
                self.conn.advance_transmit(k);
                k
            }
            1 => {
                let mut parts = [IoSlice::new(&[]); 4];
                let filled = self.conn.transmit_vectored(&mut parts);
                let mut k = 0;
                for part in &parts[..filled] {
                    let take = (n - k).min(part.len());
                    self.wire.extend_from_slice(&part[..take]);
                    k += take;
                }
                self.conn.advance_transmit(k);
                k
            }
            _ => {
                let all = self.conn.take_transmit();
                assert_eq!(
                    self.conn.buffered_amount(),
                    0,
                    "{}: take_transmit",
                    self.name
                );
                self.wire.extend_from_slice(&all);
                all.len()
            }
        };
        // Writing never loses a byte. It may queue one more control frame: a Pong answering
        // a Ping that arrived while an earlier Pong was still waiting to be written.
        let after = self.conn.buffered_amount();
        let left = before.saturating_sub(moved);
        assert!(
            moved <= before + MAX_CONTROL_FRAME
                && after >= left
                && after + moved <= before + MAX_CONTROL_FRAME,
            "{}: {before} bytes queued, {moved} written, {after} left",
            self.name
        );
        self.scanner.scan(&self.wire, self.name);
        moved
    }

    fn pull_all(&mut self) -> usize {
        self.pull(usize::MAX, 2)
    }

    /// Forgets wire bytes that were delivered and checked.
    fn compact(&mut self) {
        let done = self.delivered.min(self.scanner.pos);
        if done > 0 && (done == self.wire.len() || done > 32 << 10) {
            self.wire.drain(..done);
            self.delivered -= done;
            self.scanner.pos -= done;
        }
    }
}

/// Side `i` and the other one.
fn pair(sides: &mut [Side; 2], i: usize) -> (&mut Side, &mut Side) {
    let (a, b) = sides.split_at_mut(1);
    if i == 0 {
        (&mut a[0], &mut b[0])
    } else {
        (&mut b[0], &mut a[0])
    }
}

/// Everything about one run that is not a side.
struct World {
    start: Instant,
    now: Instant,
    budget: usize,
    /// A message prepared for sending by either side, and its payload.
    prepared: Option<(Kind, PreparedMessage, Vec<u8>)>,
}

impl World {
    /// A message length: mostly around the 125/126 header boundary, sometimes medium, rarely
    /// above 8 KiB; small once the budget is spent.
    fn len(&mut self, input: &mut Input<'_>) -> usize {
        let b = input.byte();
        let len = match b {
            0..=127 => usize::from(b % 127),
            128..=223 => 100 + usize::from(input.u16()) % 2000,
            _ => usize::from(input.u16()) % (MAX_MESSAGE + 1),
        };
        let len = if len > self.budget { len % 126 } else { len };
        self.budget = self.budget.saturating_sub(len);
        len
    }
}

/// A binary payload of `len` bytes: the input's bytes, repeated when the input runs short.
fn binary(input: &mut Input<'_>, len: usize) -> Vec<u8> {
    let seed = input.bytes(len.min(64));
    if seed.is_empty() {
        return (0..len).map(|i| i as u8).collect();
    }
    seed.iter().copied().cycle().take(len).collect()
}

/// Text of about `len` bytes, with characters of every width decoded from the input (so that
/// fragment and chunk boundaries fall inside characters), repeated when the input runs short.
fn text(input: &mut Input<'_>, len: usize) -> String {
    let mut unit = String::new();
    while unit.len() < len.min(64) && !input.is_empty() {
        let b = input.byte();
        let c = match b {
            0x00..=0x7F => Some(char::from(b)),
            0x80..=0xBF => {
                char::from_u32(0x80 + ((u32::from(b & 0x3F) << 5) | u32::from(input.byte() & 0x1F)))
            }
            0xC0..=0xEF => char::from_u32(
                0x800 + ((u32::from(b & 0x2F) << 10) | (u32::from(input.byte()) << 2)) % 0xF800,
            ),
            _ => char::from_u32(0x10000 + ((u32::from(b & 0x0F) << 16) | u32::from(input.u16()))),
        };
        unit.push(c.unwrap_or('\u{FFFD}'));
    }
    if unit.is_empty() {
        unit.push_str("a\u{e9}\u{2603}\u{1D11E}");
    }
    let mut s = String::with_capacity(len + 4);
    while s.len() < len {
        s.push_str(&unit);
    }
    let mut cut = len.min(s.len());
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s.truncate(cut);
    s
}

fn payload(input: &mut Input<'_>, world: &mut World, kind: Kind) -> Vec<u8> {
    let len = world.len(input);
    match kind {
        Kind::Text => text(input, len).into_bytes(),
        Kind::Binary => binary(input, len),
    }
}

/// A close code: mostly legal ones from every range, sometimes one that must be refused.
fn close_code(input: &mut Input<'_>) -> u16 {
    const LEGAL: [u16; 14] = [
        1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999,
    ];
    const ILLEGAL: [u16; 9] = [0, 999, 1004, 1005, 1006, 1015, 2999, 5000, 65535];
    match input.byte() {
        b @ 0..=159 => LEGAL[usize::from(b) % LEGAL.len()],
        b @ 160..=223 => 3000 + u16::from(b) * 31 % 2000,
        b @ 224..=247 => ILLEGAL[usize::from(b) % ILLEGAL.len()],
        _ => input.u16(),
    }
}

fn duration(input: &mut Input<'_>) -> Duration {
    Duration::from_millis(match input.byte() {
        b @ 0..=127 => u64::from(b),
        b @ 128..=223 => u64::from(b - 128) * 250,
        b => u64::from(b - 223) * 5_000,
    })
}

fn config(input: &mut Input<'_>) -> Config {
    let flags = input.byte();
    let ms = |input: &mut Input<'_>| Duration::from_millis(1 + u64::from(input.u16() % 30_000));
    let ping_interval = (flags & 3 != 0).then(|| ms(input));
    let ping_timeout = (flags & 4 == 0).then(|| ms(input));
    let close_timeout = ms(input);
    let max_message_size = if flags & 0x18 == 0x18 {
        usize::from(input.u16()) % (MAX_MESSAGE + 1024)
    } else {
        1 << 20
    };
    let max_fragments = if flags & 0x60 == 0x60 {
        1 + usize::from(input.byte() % 8)
    } else {
        1 << 17
    };
    Config::default()
        .ping_interval(ping_interval)
        .ping_timeout(ping_timeout)
        .close_timeout(close_timeout)
        .max_message_size(max_message_size)
        .max_fragments(max_fragments)
        .max_frame_size(MAX_FRAME)
}

fn deflate_config(input: &mut Input<'_>) -> DeflateConfig {
    let flags = input.byte();
    let bits = input.byte();
    DeflateConfig {
        server_no_context_takeover: flags & 1 != 0,
        client_no_context_takeover: flags & 2 != 0,
        server_max_window_bits: 8 + (bits & 7),
        client_max_window_bits: 8 + (bits >> 3 & 7),
        level: (flags >> 2) % 10,
        mem_level: 1 + bits % 9,
        min_size: match flags >> 6 {
            0 | 1 => 0,
            2 => usize::from(input.byte()),
            _ => usize::MAX,
        },
    }
}

/// Negotiates permessage-deflate between the two configurations, as the opening handshake
/// does, and turns it on at both ends.
fn negotiate(sides: &mut [Side; 2], client: DeflateConfig, server: DeflateConfig) {
    let offer = client.client_offer();
    let (response, server_params) = server
        .server_accept(&offer)
        .unwrap_or_else(|| panic!("server refused the offer {offer:?}"));
    let client_params = client
        .client_accept(&response)
        .unwrap_or_else(|e| panic!("client refused {response:?} to {offer:?}: {e}"));
    assert_eq!(client_params, server_params, "{offer:?} -> {response:?}");
    for (side, config) in sides.iter_mut().zip([client, server]) {
        side.conn.enable_deflate(client_params, &config);
        assert!(side.conn.deflate_enabled());
        side.deflate = Some((client_params, config));
        side.scanner.deflate = true;
    }
}

/// What this side compresses with: its own direction's window, and whether it keeps no
/// context between messages.
fn own_direction(role: Role, params: &DeflateParams) -> (u8, bool) {
    match role {
        Role::Client => (
            params.client_max_window_bits,
            params.client_no_context_takeover,
        ),
        Role::Server => (
            params.server_max_window_bits,
            params.server_no_context_takeover,
        ),
    }
}

/// `data` as a compressed message payload made for side `me`'s direction (by a throwaway
/// server-role connection, whose frames are unmasked), or `None` if it went out
/// uncompressed (below `min_size`, or compression did not help).
fn compress_for(me: &Side, kind: Kind, data: &[u8], now: Instant) -> Option<Vec<u8>> {
    let (params, config) = me.deflate.as_ref()?;
    let (window, no_context) = own_direction(me.conn.role(), params);
    // With context takeover the peer's window holds this side's earlier messages, which a
    // fresh compressor knows nothing of: a message compressed here would not be honest.
    if !no_context {
        return None;
    }
    let mut helper = Connection::new(Role::Server, Config::default(), now);
    helper.enable_deflate(
        DeflateParams {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_max_window_bits: window,
            client_max_window_bits: 15,
        },
        config,
    );
    helper
        .send_message(kind.opcode(), Bytes::copy_from_slice(data), true)
        .unwrap();
    let frame = helper.take_transmit();
    if frame[0] & 0x40 == 0 {
        return None;
    }
    let head = match frame[1] & 0x7F {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    Some(frame[head..].to_vec())
}

/// Appends one frame to side `me`'s wire, masked when `me` is a client.
fn write_frame(me: &mut Side, b0: u8, payload: &[u8], key: [u8; 4]) {
    let mask = (me.conn.role() == Role::Client).then_some(key);
    let mut head = [0u8; MAX_HEADER_LEN];
    // Encoded as a continuation, then given the real first byte (FIN, RSV1, opcode).
    let n = encode_header(
        &mut head,
        false,
        false,
        OpCode::Continuation,
        mask,
        payload.len() as u64,
    );
    head[0] = b0;
    me.wire.extend_from_slice(&head[..n]);
    let start = me.wire.len();
    me.wire.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut me.wire[start..], key, 0);
    }
}

/// Writes a message of one or more frames straight to side `me`'s wire, as a peer that
/// fragments would (the connection API sends each message in one frame), with pings and
/// pongs between the fragments.
fn inject(me: &mut Side, input: &mut Input<'_>, world: &mut World) {
    if me.close_sent.is_some() {
        return;
    }
    // Whatever the connection queued goes first, in one piece of the stream.
    me.pull_all();
    let kind = Kind::from_flag(input.flag());
    let data = payload(input, world, kind);
    let compressed = if input.flag() {
        compress_for(me, kind, &data, world.now)
    } else {
        None
    };
    let body = compressed.as_deref().unwrap_or(&data);
    let fragments = 1 + usize::from(input.byte() % 12);
    let key = [input.byte(), input.byte(), input.byte(), input.byte()];
    let mut at = 0;
    for i in 0..fragments {
        let last = i + 1 == fragments;
        let size = if last {
            body.len() - at
        } else {
            match input.byte() {
                b @ 0..=127 => usize::from(b % 8),
                _ => usize::from(input.u16()),
            }
            .min(body.len() - at)
        };
        let mut b0 = if i == 0 { kind.opcode().as_u8() } else { 0 };
        if i == 0 && compressed.is_some() {
            b0 |= 0x40;
        }
        if last {
            b0 |= 0x80;
        }
        let key = key.map(|k| k.wrapping_add(i as u8));
        write_frame(me, b0, &body[at..at + size], key);
        at += size;
        if !last {
            match input.byte() % 8 {
                0 => {
                    let len = usize::from(input.byte() % 16);
                    let ping = input.bytes(len).to_vec();
                    write_frame(me, 0x89, &ping, key);
                    me.pings.push(ping);
                }
                1 => write_frame(me, 0x8A, b"unsolicited", key),
                _ => {}
            }
        }
    }
    me.record(kind, data, fragments);
    me.scanner.scan(&me.wire, me.name);
}

/// Moves up to `n` bytes of side `from`'s wire into the other side, through one of the
/// receive methods.
fn deliver(sides: &mut [Side; 2], from: usize, n: usize, mode: u8, now: Instant) -> usize {
    let (me, peer) = pair(sides, from);
    let k = n.min(me.wire.len() - me.delivered);
    if k == 0 {
        return 0;
    }
    let chunk = &me.wire[me.delivered..me.delivered + k];
    match mode % 3 {
        0 => peer.conn.receive(chunk, now),
        1 => peer.conn.receive_shared(BytesMut::from(chunk), now),
        _ => {
            let mut rest = chunk;
            while !rest.is_empty() {
                let read = peer.conn.read_payload_with(now, |buf, max| {
                    let take = max.min(rest.len());
                    buf.extend_from_slice(&rest[..take]);
                    take
                });
                match read {
                    Some(take) => rest = &rest[take..],
                    None => {
                        peer.conn.receive(rest, now);
                        rest = &[];
                    }
                }
            }
        }
    }
    me.delivered += k;
    me.compact();
    k
}

/// Takes up to `limit` events of side `i` and checks each against what the other side did.
fn poll(sides: &mut [Side; 2], i: usize, limit: usize, world: &World) -> bool {
    let mut any = false;
    let mut message = false;
    let pending = sides[i].conn.has_pending_messages();
    for _ in 0..limit {
        let (me, peer) = pair(sides, i);
        let has = me.conn.has_events();
        let Some(event) = me.conn.poll_event() else {
            assert!(!has, "{}: has_events() but no event", me.name);
            // Every queued event was taken: was a message among them?
            assert_eq!(pending, message, "{}: has_pending_messages()", me.name);
            break;
        };
        assert!(has, "{}: an event after has_events() said none", me.name);
        any = true;
        message |= matches!(event, Event::Text(_) | Event::Binary(_));
        on_event(me, peer, event, world);
    }
    any
}

fn on_event(me: &mut Side, peer: &mut Side, event: Event, world: &World) {
    let name = me.name;
    assert!(
        me.got_close.is_none() && me.error.is_none(),
        "{name}: {event:?} after the end of the stream"
    );
    match event {
        Event::Text(t) => on_message(me, peer, Kind::Text, t.as_bytes()),
        Event::Binary(b) => on_message(me, peer, Kind::Binary, &b),
        Event::Ping(p) => {
            if peer.pings.get(me.ping_rx) == Some(&p) {
                me.ping_rx += 1;
            } else {
                // Otherwise it must be a keepalive ping: a four-byte counter.
                assert!(
                    p.len() == 4 && peer.conn.config().ping_interval.is_some(),
                    "{name}: unexpected ping {p:?}, expected {:?}",
                    peer.pings.get(me.ping_rx)
                );
            }
        }
        Event::Pong { payload, rtt } => {
            assert!(payload.len() <= 125);
            if let Some(rtt) = rtt {
                assert!(me.pings.contains(&payload), "{name}: rtt for {payload:?}");
                assert!(rtt <= world.now - world.start, "{name}: rtt {rtt:?}");
                // Each answer is taken once; only the last 16 are kept, so one may be gone
                // if many arrived before this event was taken.
                if let Some(kept) = me.conn.take_rtt(&payload) {
                    assert!(kept <= world.now - world.start, "{name}: take_rtt {kept:?}");
                }
            }
        }
        Event::Close(frame) => {
            if let Some(f) = &frame {
                assert!(is_valid_close_code(f.code), "{name}: Close {}", f.code);
            }
            assert_eq!(
                peer.close_sent.as_ref(),
                Some(&frame),
                "{name} received a Close the other side did not send"
            );
            // The Close follows every message and ping sent before it, and nothing can be
            // sent after it: all of them were taken before this event.
            assert_eq!(
                me.rx,
                peer.sent.len(),
                "{name}: Close before the last message"
            );
            assert_eq!(
                me.ping_rx,
                peer.pings.len(),
                "{name}: Close before the last ping"
            );
            match &frame {
                Some(f) => {
                    assert_eq!(me.conn.peer_close(), &PeerClose::Frame(f.clone()));
                    assert_eq!(me.conn.close_code(), f.code);
                }
                None => {
                    assert_eq!(me.conn.peer_close(), &PeerClose::NoStatus);
                    assert_eq!(me.conn.close_code(), 1005);
                }
            }
            if me.close_sent.is_none() {
                // The reply echoes the status code, without a reason.
                me.close_sent = Some(frame.as_ref().map(|f| CloseFrame {
                    code: f.code,
                    reason: String::new(),
                }));
            }
            me.got_close = Some(frame);
            assert_eq!(me.conn.state(), State::Closed, "{name}");
            if me.conn.role() == Role::Server {
                assert!(me.conn.wants_close_transport(), "{name}");
            }
        }
        Event::Error(e) => {
            explain(me, peer, &e, world);
            if me.close_sent.is_none() {
                me.close_sent = Some(Some(CloseFrame {
                    code: e.close_code(),
                    reason: e.close_reason().to_owned(),
                }));
            }
            me.error = Some(e);
            assert_eq!(me.conn.state(), State::Closed, "{name}");
            assert!(me.conn.wants_close_transport(), "{name}");
        }
    }
}

fn on_message(me: &mut Side, peer: &Side, kind: Kind, data: &[u8]) {
    let name = me.name;
    let Some(expected) = peer.sent.get(me.rx) else {
        panic!("{name} received message {} that was never sent", me.rx);
    };
    assert_eq!(kind, expected.kind, "{name}: kind of message {}", me.rx);
    assert!(
        data == expected.data,
        "{name}: message {} differs: {} bytes received, {} sent",
        me.rx,
        data.len(),
        expected.data.len()
    );
    assert!(data.len() <= me.conn.config().max_message_size, "{name}");
    me.rx += 1;
}

/// An error on an honest stream must be one the run explains.
fn explain(me: &Side, peer: &Side, error: &ProtocolError, world: &World) {
    let name = me.name;
    let config = me.conn.config();
    let next = peer.sent.get(me.rx);
    match error {
        ProtocolError::KeepaliveTimeout => {
            let (Some(interval), Some(timeout)) = (config.ping_interval, config.ping_timeout)
            else {
                panic!("{name}: keepalive timeout without keepalive");
            };
            assert!(
                world.now - world.start >= interval + timeout,
                "{name}: keepalive timeout before a ping could time out"
            );
        }
        ProtocolError::MessageTooLarge { max } => {
            assert_eq!(*max, config.max_message_size);
            let len = next.map(|m| m.data.len());
            assert!(
                len.is_some_and(|len| len > *max),
                "{name}: message {} of {len:?} bytes refused as over {max}",
                me.rx
            );
        }
        ProtocolError::TooManyFragments { max } => {
            assert_eq!(*max, config.max_fragments);
            let frames = next.map(|m| m.fragments);
            assert!(
                frames.is_some_and(|n| n > *max),
                "{name}: message {} in {frames:?} frames refused as over {max}",
                me.rx
            );
        }
        other => panic!("{name} failed on an honest stream: {other:?} ({other})"),
    }
}

/// Runs side `i`'s timers at the current time: when due, or (`spurious`) anyway.
fn timers(me: &mut Side, now: Instant, spurious: bool) {
    let due = me.conn.poll_timeout().is_some_and(|t| t <= now);
    if !(due || spurious) {
        return;
    }
    let before = me.conn.state();
    me.conn.handle_timeout(now);
    if before == State::Closing && me.conn.state() == State::Closed {
        me.timed_out = true;
        let closed_at = me.closed_at.expect("closing without close()");
        assert!(
            now >= closed_at + me.conn.config().close_timeout,
            "{}: closing handshake timed out early",
            me.name
        );
        assert!(me.conn.wants_close_transport());
    }
    if !me.conn.has_events() {
        let next = me.conn.poll_timeout();
        assert!(
            next.is_none_or(|t| t > now),
            "{}: timer still due after handle_timeout: {next:?} <= {now:?}",
            me.name
        );
    }
}

fn op(sides: &mut [Side; 2], input: &mut Input<'_>, world: &mut World) {
    let code = input.byte();
    let i = usize::from(code & 1);
    let now = world.now;
    match code >> 1 {
        // Sends, through each method.
        0..=9 => {
            let me = &mut sides[i];
            let kind = Kind::from_flag(input.flag());
            let data = payload(input, world, kind);
            let result = match kind {
                Kind::Text => me.conn.send_text(std::str::from_utf8(&data).unwrap()),
                Kind::Binary => me.conn.send_binary(&data),
            };
            if me.expect("send", result) {
                me.record(kind, data, 1);
            }
        }
        10..=17 => {
            let me = &mut sides[i];
            let kind = Kind::from_flag(input.flag());
            let data = payload(input, world, kind);
            let flags = input.byte();
            let compress = flags & 1 != 0;
            let bytes = Bytes::from(data.clone());
            // A payload someone else still holds must not be masked in place.
            let held = (flags & 2 != 0).then(|| bytes.clone());
            let result = if flags & 4 != 0 {
                // Any split, even inside a character: only the whole must be text. Unless
                // held, the tail is the only reference to its bytes once `bytes` is gone.
                let cut = usize::from(input.byte()).min(data.len());
                let tail = bytes.slice(cut..);
                drop(bytes);
                me.conn
                    .send_message_prefixed(kind.opcode(), &data[..cut], tail, compress)
            } else {
                me.conn.send_message(kind.opcode(), bytes, compress)
            };
            if let Some(held) = held {
                assert_eq!(held, data, "{}: a shared payload changed", me.name);
            }
            if me.expect("send_message", result) {
                me.record(kind, data, 1);
            }
        }
        18..=20 => {
            let kind = Kind::from_flag(input.flag());
            let data = payload(input, world, kind);
            let message = match kind {
                Kind::Text => PreparedMessage::text(String::from_utf8(data.clone()).unwrap()),
                Kind::Binary => PreparedMessage::binary(data.clone()),
            };
            world.prepared = Some((kind, message, data));
        }
        21..=25 => {
            let Some((kind, message, data)) = &world.prepared else {
                return;
            };
            let me = &mut sides[i];
            let result = me.conn.send_prepared(message, input.flag());
            // One compressed form per set of parameters: at most the client's and the
            // server's. The payload is shared by every send and never masked in place.
            assert!(message.compressed_forms() <= 2);
            assert_eq!(
                message.payload(),
                data,
                "{}: prepared payload changed",
                me.name
            );
            if me.expect("send_prepared", result) {
                me.record(*kind, data.clone(), 1);
            }
        }
        26..=31 => inject(&mut sides[i], input, world),
        32..=35 => {
            let me = &mut sides[i];
            let len = usize::from(input.byte() % 140);
            let data = binary(input, len);
            let is_ping = input.flag();
            let result = if is_ping {
                me.conn.ping(&data, now)
            } else {
                me.conn.pong(&data)
            };
            if len > 125 && me.close_sent.is_none() {
                assert_eq!(result, Err(SendError::ControlTooLong), "{}", me.name);
            } else if me.expect("ping/pong", result) && is_ping {
                me.pings.push(data);
            }
        }
        36..=38 => {
            let me = &mut sides[i];
            let code = close_code(input);
            let len = usize::from(input.byte() % 130);
            let reason = text(input, len);
            let result = me.conn.close(code, &reason, now);
            let expected = if me.close_sent.is_some() {
                Err(SendError::Closed)
            } else if !is_valid_close_code(code) {
                Err(SendError::InvalidCloseCode(code))
            } else if reason.len() > 123 {
                Err(SendError::ReasonTooLong)
            } else {
                Ok(())
            };
            assert_eq!(result, expected, "{}: close({code}, {len} bytes)", me.name);
            if result.is_ok() {
                me.close_sent = Some(Some(CloseFrame { code, reason }));
                me.closed_at = Some(now);
                assert_eq!(me.conn.state(), State::Closing);
            }
        }
        // Bytes from a connection to its wire, and from the wire to the other side.
        39..=54 => {
            let n = match input.byte() {
                b @ 0..=191 => usize::from(b) + 1,
                _ => usize::MAX,
            };
            sides[i].pull(n, input.byte());
        }
        55..=82 => {
            let n = match input.byte() {
                b @ 0..=63 => usize::from(b) + 1,
                b @ 64..=191 => usize::from(b) * 64,
                _ => usize::MAX,
            };
            let mode = input.byte();
            deliver(sides, i, n, mode, now);
        }
        83..=94 => {
            poll(sides, i, usize::from(input.byte() % 8) + 1, world);
        }
        // Time.
        95..=104 => {
            world.now += duration(input);
            if code & 2 != 0 {
                let now = world.now;
                for side in sides.iter_mut() {
                    timers(side, now, false);
                }
            }
        }
        105..=114 => timers(&mut sides[i], now, input.flag()),
        // A driver that keeps up: everything written, delivered and answered.
        _ => {
            drain(sides, world);
        }
    }
}

/// Writes, delivers and takes events on both sides until nothing moves, without moving the
/// clock.
fn drain(sides: &mut [Side; 2], world: &World) {
    for _ in 0..64 {
        let mut moved = false;
        for i in 0..2 {
            moved |= poll(sides, i, usize::MAX, world);
            moved |= sides[i].pull_all() > 0;
        }
        for i in 0..2 {
            moved |= deliver(sides, i, usize::MAX, 0, world.now) > 0;
        }
        if !moved {
            return;
        }
    }
    panic!("the two sides never went quiet");
}

fn run(data: &[u8]) {
    let mut input = Input { data };
    let start = Instant::now();
    let flags = input.byte();
    let client_config = config(&mut input);
    let server_config = config(&mut input);
    let mut sides = [
        Side::new("client", Role::Client, client_config, start),
        Side::new("server", Role::Server, server_config, start),
    ];
    if flags & 1 != 0 {
        let client = deflate_config(&mut input);
        let server = deflate_config(&mut input);
        negotiate(&mut sides, client, server);
    }
    let mut world = World {
        start,
        now: start,
        budget: BUDGET,
        prepared: None,
    };

    for _ in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        op(&mut sides, &mut input, &mut world);
        for side in &sides {
            side.check();
        }
    }

    // Everything still queued or on its way is delivered.
    drain(&mut sides, &world);
    for i in 0..2 {
        let (me, peer) = pair(&mut sides, i);
        me.check();
        assert_eq!(me.conn.buffered_amount(), 0);
        assert_eq!(me.delivered, me.wire.len());
        assert!(!me.conn.has_events());
        // Did `peer` stop reading what `me` sends?
        let stopped = peer.got_close.is_some() || peer.error.is_some() || peer.timed_out;
        if peer.got_close.is_some() || !stopped {
            assert_eq!(
                peer.rx,
                me.sent.len(),
                "{} received {} of the {} messages {} sent",
                peer.name,
                peer.rx,
                me.sent.len(),
                me.name
            );
            assert_eq!(peer.ping_rx, me.pings.len(), "{}: pings", peer.name);
        }
        if me.close_sent.is_some() {
            assert!(stopped, "{}'s Close never reached {}", me.name, peer.name);
        }
        let code = match &me.got_close {
            Some(Some(f)) => f.code,
            Some(None) => 1005,
            None => 1006,
        };
        assert_eq!(me.conn.close_code(), code, "{}", me.name);
    }

    // Long after: every closing handshake begun is over, and the transports close.
    let later = world.now + Duration::from_secs(3600);
    for side in sides.iter_mut() {
        side.conn.handle_timeout(later);
        if side.close_sent.is_some() {
            assert_eq!(side.conn.state(), State::Closed, "{}", side.name);
            assert!(side.conn.wants_close_transport(), "{}", side.name);
        }
    }
    for i in 0..2 {
        let (me, peer) = pair(&mut sides, i);
        if me.conn.wants_close_transport() {
            peer.conn.receive_eof(later);
            assert_eq!(peer.conn.state(), State::Closed);
            assert!(peer.conn.wants_close_transport());
        }
    }
}

fuzz_target!(|data: &[u8]| run(data));
