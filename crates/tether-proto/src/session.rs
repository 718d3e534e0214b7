//! Resumable sessions: the resume protocol (`docs/resume-protocol.md`) as a state machine.
//!
//! A [`Session`] is one end of a conversation that outlives its connections. Each data
//! message either end sends is numbered implicitly (1, 2, 3, … in the order sent: WebSocket
//! over TCP keeps order within a connection), kept until the peer acknowledges it, and sent
//! again after a reconnect if it was not. Each end tells the other how many of its messages
//! the application has *taken* (not merely received), so a message is acknowledged only
//! once it was delivered, and a resume restarts each direction exactly after the last
//! delivered message: nothing is lost, repeated or reordered.
//!
//! Sans-I/O like the rest of the crate: the driver moves WebSocket messages between a
//! [`Connection`](crate::Connection) and the session, and passes the time in.
//!
//! # Call grammar
//!
//! 1. **Connecting.** The client sends [`Control::Hello`] as the first message of every
//!    connection (with the session's id and [`delivered`](Session::delivered) count once it has
//!    a session); the server answers [`Control::Welcome`] before anything else. Both ends then
//!    call [`link_up`](Session::link_up) with the peer's delivered count: what the peer has not
//!    taken is queued again.
//! 2. **Open.** Feed every data message received to [`receive`](Session::receive); take
//!    messages for the application with [`poll_message`](Session::poll_message); queue the
//!    application's messages with [`send`](Session::send) (refused while the replay buffer is
//!    full: wait for acknowledgements, which is backpressure, never a drop); write
//!    [`poll_transmit`](Session::poll_transmit) to the connection; run
//!    [`handle_timeout`](Session::handle_timeout) at [`poll_timeout`](Session::poll_timeout)
//!    (the acknowledgement timer).
//! 3. **Disconnected.** Call [`link_down`](Session::link_down). Sends still work (they wait in
//!    the replay buffer); messages received but not yet taken are dropped, to be sent again
//!    by the peer after the resume.
//!
//! A server whose sessions live in a store shared by several processes calls
//! [`hold_acks`](Session::hold_acks) once: acknowledgements then wait for
//! [`confirm_delivered`](Session::confirm_delivered), so that the peer never drops a message
//! whose delivery the store has not recorded.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use bytes::{BufMut as _, Bytes, BytesMut};

use crate::frame::OpCode;

/// The subprotocol a client offers, and a server selects, to speak the resume protocol.
pub const SUBPROTOCOL: &str = "tether.resume.1";

/// First byte of a binary frame: an application binary message follows.
const DATA: u8 = 0x00;
/// First byte of a binary frame: an acknowledgement.
const ACK: u8 = 0x01;
/// First byte of a binary frame: the client's opening message.
const HELLO: u8 = 0x02;
/// First byte of a binary frame: the server's answer to [`HELLO`].
const WELCOME: u8 = 0x03;
/// The protocol version in [`HELLO`] and [`WELCOME`].
const VERSION: u8 = 1;
/// `Session::confirmed` when acknowledgements are not held (a count no session reaches).
const NOT_HELD: u64 = u64::MAX;
/// Length of a session id.
pub const ID_LEN: usize = 16;

/// Limits and timers of a session. Every field has a documented default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// Most messages sent and not yet acknowledged; [`Session::send`] refuses more until
    /// acknowledgements arrive. Default: 4,096.
    pub max_buffered_messages: usize,
    /// Most payload bytes sent and not yet acknowledged (a single larger message is still
    /// accepted into an empty buffer). Default: 1 MiB.
    pub max_buffered_bytes: usize,
    /// Acknowledge at the latest after this many delivered messages. Default: 32.
    pub ack_every: u64,
    /// Acknowledge at the latest this long after the first unacknowledged delivery. Default:
    /// 100 ms.
    pub ack_delay: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            max_buffered_messages: 4096,
            max_buffered_bytes: 1 << 20,
            ack_every: 32,
            ack_delay: Duration::from_millis(100),
        }
    }
}

/// A session's identity: 16 random bytes, shown as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId([u8; ID_LEN]);

impl SessionId {
    /// A fresh random id (from `rand`'s thread-local generator, seeded from the OS).
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// The id with these bytes.
    pub const fn from_bytes(bytes: [u8; ID_LEN]) -> Self {
        Self(bytes)
    }

    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8; ID_LEN] {
        &self.0
    }

    /// Parses 32 hex digits (either case).
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.as_bytes();
        if text.len() != 2 * ID_LEN {
            return None;
        }
        let mut id = [0u8; ID_LEN];
        for (i, pair) in text.chunks(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            id[i] = (hi * 16 + lo) as u8;
        }
        Some(Self(id))
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

/// The kind of an application message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// UTF-8 text (a text frame on the wire).
    Text,
    /// Bytes (a binary frame starting with the data marker).
    Binary,
}

/// A message of the protocol itself (a binary frame whose first byte is not the data
/// marker).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// Client → server, the first message of every connection: the session to resume
    /// (`None`: start a new one) and how many of the server's messages the client took.
    Hello {
        /// The session to resume.
        id: Option<SessionId>,
        /// Server messages the client's application took in that session.
        delivered: u64,
    },
    /// Server → client, the answer to [`Control::Hello`], before anything else.
    Welcome {
        /// The session now in use: the one asked for when `resumed`, else a new one.
        id: SessionId,
        /// True when the session asked for was resumed.
        resumed: bool,
        /// Client messages the server's application took in this session (0 for a new one).
        delivered: u64,
        /// Why the session asked for could not be resumed (empty otherwise): `expired`,
        /// `unknown`, … (see `docs/resume-protocol.md`).
        reason: String,
    },
    /// Either way: the sender's application took this many of the receiver's messages.
    Ack {
        /// Messages taken, counted from the start of the session.
        delivered: u64,
    },
}

impl Control {
    /// The message's payload, to send as a binary WebSocket message.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(32);
        match self {
            Self::Hello { id, delivered } => {
                out.put_u8(HELLO);
                out.put_u8(VERSION);
                match id {
                    Some(id) => {
                        out.put_u8(ID_LEN as u8);
                        out.put_slice(id.as_bytes());
                    }
                    None => out.put_u8(0),
                }
                out.put_u64(*delivered);
            }
            Self::Welcome {
                id,
                resumed,
                delivered,
                reason,
            } => {
                out.put_u8(WELCOME);
                out.put_u8(VERSION);
                out.put_slice(id.as_bytes());
                out.put_u8(u8::from(*resumed));
                out.put_u64(*delivered);
                // At most 255 bytes of reason, cut on a character boundary.
                let mut end = reason.len().min(255);
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                out.put_u8(end as u8);
                out.put_slice(&reason.as_bytes()[..end]);
            }
            Self::Ack { delivered } => {
                out.put_u8(ACK);
                out.put_u64(*delivered);
            }
        }
        out.freeze()
    }

    /// Parses a control message's payload (a binary message whose first byte is not the
    /// data marker).
    pub fn decode(payload: &[u8]) -> Result<Self, SessionError> {
        let bad = |what: &'static str| SessionError::Malformed(what);
        let (&kind, mut rest) = payload.split_first().ok_or(bad("empty binary message"))?;
        let mut take = |n: usize, what: &'static str| {
            if rest.len() < n {
                return Err(bad(what));
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        let control = match kind {
            ACK => {
                let delivered = u64_of(take(8, "short ack")?);
                Self::Ack { delivered }
            }
            HELLO | WELCOME => {
                let version = take(1, "short handshake")?[0];
                if version != VERSION {
                    return Err(SessionError::Version(version));
                }
                if kind == HELLO {
                    let id = match take(1, "short hello")?[0] {
                        0 => None,
                        n if usize::from(n) == ID_LEN => Some(id_of(take(ID_LEN, "short id")?)),
                        _ => return Err(bad("session id of the wrong length")),
                    };
                    let delivered = u64_of(take(8, "short hello")?);
                    Self::Hello { id, delivered }
                } else {
                    let id = id_of(take(ID_LEN, "short welcome")?);
                    let resumed = match take(1, "short welcome")?[0] {
                        0 => false,
                        1 => true,
                        _ => return Err(bad("resumed flag not 0 or 1")),
                    };
                    let delivered = u64_of(take(8, "short welcome")?);
                    let n = usize::from(take(1, "short welcome")?[0]);
                    let reason = std::str::from_utf8(take(n, "short reason")?)
                        .map_err(|_| bad("reason not UTF-8"))?
                        .to_owned();
                    Self::Welcome {
                        id,
                        resumed,
                        delivered,
                        reason,
                    }
                }
            }
            DATA => return Err(bad("a data message is not a control message")),
            _ => return Err(bad("unknown message type")),
        };
        if !rest.is_empty() {
            return Err(bad("trailing bytes after a control message"));
        }
        Ok(control)
    }
}

fn u64_of(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(bytes);
    u64::from_be_bytes(b)
}

fn id_of(bytes: &[u8]) -> SessionId {
    let mut b = [0u8; ID_LEN];
    b.copy_from_slice(bytes);
    SessionId(b)
}

/// Why the resume protocol cannot go on. Each closes the connection with 1002 (a peer that
/// breaks the protocol) except where said.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionError {
    /// A control message that does not parse.
    Malformed(&'static str),
    /// A handshake of another protocol version.
    Version(u8),
    /// A [`Control::Hello`] or [`Control::Welcome`] outside the opening of a connection.
    UnexpectedHandshake,
    /// The peer acknowledged more messages than were sent.
    AckBeyondSent {
        /// The peer's count.
        acked: u64,
        /// Messages sent in this session.
        sent: u64,
    },
    /// The peer's delivered count went back: it lost state it had confirmed.
    AckWentBack {
        /// The count confirmed before.
        before: u64,
        /// The count now.
        now: u64,
    },
}

impl SessionError {
    /// The WebSocket close code to close with.
    pub fn close_code(&self) -> u16 {
        crate::close_code::PROTOCOL_ERROR
    }
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(what) => write!(f, "malformed resume protocol message: {what}"),
            Self::Version(v) => write!(f, "resume protocol version {v} (1 expected)"),
            Self::UnexpectedHandshake => {
                f.write_str("resume handshake after the connection opened")
            }
            Self::AckBeyondSent { acked, sent } => {
                write!(f, "peer acknowledged {acked} messages of {sent} sent")
            }
            Self::AckWentBack { before, now } => {
                write!(f, "peer's delivered count went back from {before} to {now}")
            }
        }
    }
}

impl std::error::Error for SessionError {}

/// [`Session::send`] refused a message: the replay buffer is full. Wait for
/// acknowledgements (they arrive as the peer takes messages) and send again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferFull;

impl fmt::Display for BufferFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the session's replay buffer is full")
    }
}

impl std::error::Error for BufferFull {}

/// A session's state as a store keeps it: see [`Session::snapshot`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Messages this end sent in the session.
    pub sent: u64,
    /// Peer messages this end's application took.
    pub delivered: u64,
    /// Messages of this end the peer confirmed it took.
    pub peer_delivered: u64,
    /// Messages `peer_delivered + 1 ..= sent`, oldest first.
    pub unacknowledged: Vec<(Kind, Bytes)>,
    /// The application's mark (see [`Session::set_mark`]).
    pub mark: Option<Bytes>,
}

/// One end of a resumable session. See the [module documentation](self) for the call order.
#[derive(Debug)]
pub struct Session {
    id: SessionId,
    config: SessionConfig,
    /// Messages the application sent (the last one's number).
    sent: u64,
    /// Messages sent and not acknowledged: numbers `peer_delivered + 1 ..= sent`.
    unacked: VecDeque<(Kind, Bytes)>,
    unacked_bytes: usize,
    /// How many of our messages the peer's application took.
    peer_delivered: u64,
    /// Messages taken by our application.
    delivered: u64,
    /// Received and waiting for the application: numbers `delivered + 1 ..`.
    inbox: VecDeque<(Kind, Bytes)>,
    /// A few bytes of the application's, kept with the session (see `set_mark`); boxed, as
    /// most sessions have none and every session pays for the field.
    mark: Option<Box<Bytes>>,
    /// The delivered count the peer was last told.
    ack_told: u64,
    /// With [`hold_acks`](Session::hold_acks): the most deliveries the driver confirmed as
    /// recorded, which no acknowledgement may exceed; [`NOT_HELD`] without.
    confirmed: u64,
    ack_deadline: Option<Instant>,
    up: bool,
    /// Messages for the connection: opcode, whether the data marker goes first, payload.
    transmit: VecDeque<(OpCode, bool, Bytes)>,
}

impl Session {
    /// A new session with this id (a server makes a fresh one with [`SessionId::random`]; a
    /// client takes the id from the server's [`Control::Welcome`]).
    pub fn new(id: SessionId, config: SessionConfig) -> Self {
        Self {
            id,
            config,
            sent: 0,
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            peer_delivered: 0,
            delivered: 0,
            inbox: VecDeque::new(),
            mark: None,
            ack_told: 0,
            confirmed: NOT_HELD,
            ack_deadline: None,
            up: false,
            transmit: VecDeque::new(),
        }
    }

    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Gives the session its id. A client starts a session before the server named it (its
    /// application may send before the first connection) and takes the id from the first
    /// [`Control::Welcome`].
    pub fn set_id(&mut self, id: SessionId) {
        self.id = id;
    }

    /// What must be kept for the session to be resumed elsewhere (by another process, from
    /// a store): its counts and the messages not yet acknowledged. Messages received and not
    /// yet taken are left out: the peer sends them again. With
    /// [`hold_acks`](Self::hold_acks), only confirmed deliveries count as taken.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            sent: self.sent,
            delivered: self.ackable(),
            peer_delivered: self.peer_delivered,
            unacknowledged: self.unacked.iter().cloned().collect(),
            mark: self.mark.as_deref().cloned(),
        }
    }

    /// Keeps a few bytes of the application's with the session, in its snapshot: for
    /// example how far the session got in a feed it relays, so that whoever resumes the
    /// session elsewhere goes on from there.
    pub fn set_mark(&mut self, mark: Bytes) {
        match &mut self.mark {
            Some(kept) => **kept = mark,
            None => self.mark = Some(Box::new(mark)),
        }
    }

    /// The application's mark, as last set (or restored).
    pub fn mark(&self) -> Option<&Bytes> {
        self.mark.as_deref()
    }

    /// A session, disconnected, in the state a [`snapshot`](Self::snapshot) recorded. Fails
    /// when the snapshot does not add up (more messages kept than sent).
    pub fn restore(
        id: SessionId,
        config: SessionConfig,
        snapshot: Snapshot,
    ) -> Result<Self, SessionError> {
        let kept = snapshot.unacknowledged.len() as u64;
        if snapshot.peer_delivered.checked_add(kept) != Some(snapshot.sent) {
            return Err(SessionError::Malformed(
                "snapshot: unacknowledged messages do not match the counts",
            ));
        }
        let mut session = Self::new(id, config);
        session.sent = snapshot.sent;
        session.delivered = snapshot.delivered;
        session.ack_told = snapshot.delivered;
        session.peer_delivered = snapshot.peer_delivered;
        session.unacked_bytes = snapshot.unacknowledged.iter().map(|(_, p)| p.len()).sum();
        session.unacked = snapshot.unacknowledged.into();
        session.mark = snapshot.mark.map(Box::new);
        Ok(session)
    }

    /// The configuration in force.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Messages the application sent in this session.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Messages the application took in this session: what a [`Control::Hello`] or
    /// [`Control::Welcome`] reports.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// How many of our messages the peer confirmed it took.
    pub fn peer_delivered(&self) -> u64 {
        self.peer_delivered
    }

    /// Messages sent and not yet acknowledged, and their payload bytes.
    pub fn buffered(&self) -> (usize, usize) {
        (self.unacked.len(), self.unacked_bytes)
    }

    /// True while a connection carries the session (between [`link_up`](Self::link_up) and
    /// [`link_down`](Self::link_down)).
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// True when [`send`](Self::send) would refuse a message of `len` bytes.
    pub fn is_full(&self, len: usize) -> bool {
        let (count, bytes) = self.buffered();
        count > 0
            && (count >= self.config.max_buffered_messages
                || bytes.saturating_add(len) > self.config.max_buffered_bytes)
    }

    /// Sends an application message: it is numbered, kept until acknowledged, and queued for
    /// the connection if one is up. Refused ([`BufferFull`]) while the replay buffer is full.
    pub fn send(&mut self, kind: Kind, payload: Bytes) -> Result<u64, BufferFull> {
        if self.is_full(payload.len()) {
            return Err(BufferFull);
        }
        self.sent += 1;
        self.unacked_bytes += payload.len();
        if self.up {
            self.transmit.push_back(wire(kind, payload.clone()));
        }
        self.unacked.push_back((kind, payload));
        Ok(self.sent)
    }

    /// A connection now carries the session, and the peer's application took
    /// `peer_delivered` of our messages: those are released, the rest are queued again, in
    /// order. Returns how many were queued again (the replay).
    pub fn link_up(&mut self, peer_delivered: u64) -> Result<u64, SessionError> {
        self.acknowledge(peer_delivered)?;
        self.up = true;
        self.transmit.clear();
        for (kind, payload) in &self.unacked {
            self.transmit.push_back(wire(*kind, payload.clone()));
        }
        // The handshake told the peer our delivered count.
        self.ack_told = self.delivered;
        self.ack_deadline = None;
        Ok(self.unacked.len() as u64)
    }

    /// The connection is gone. Sends keep waiting in the replay buffer; messages received
    /// and not yet taken are dropped (the peer sends them again after the resume, since they
    /// were never acknowledged).
    pub fn link_down(&mut self) {
        self.link_closed();
        self.inbox.clear();
    }

    /// The connection ended with the session itself (a closing handshake with 1000): as
    /// [`link_down`](Self::link_down), except that what arrived stays for
    /// [`poll_message`](Self::poll_message), since no later connection will bring it again.
    pub fn link_closed(&mut self) {
        self.up = false;
        self.transmit.clear();
        self.ack_deadline = None;
    }

    /// Feeds a data message received on the connection (text, or binary with its first byte).
    pub fn receive(&mut self, opcode: OpCode, payload: Bytes) -> Result<(), SessionError> {
        match opcode {
            OpCode::Text => self.inbox.push_back((Kind::Text, payload)),
            OpCode::Binary => match payload.first() {
                Some(&DATA) => self.inbox.push_back((Kind::Binary, payload.slice(1..))),
                _ => match Control::decode(&payload)? {
                    Control::Ack { delivered } => self.acknowledge(delivered)?,
                    Control::Hello { .. } | Control::Welcome { .. } => {
                        return Err(SessionError::UnexpectedHandshake)
                    }
                },
            },
            _ => return Err(SessionError::Malformed("not a data message")),
        }
        Ok(())
    }

    /// The next message for the application, in order, each exactly once. Taking it counts
    /// it as delivered, to be acknowledged within [`SessionConfig::ack_every`] messages or
    /// [`SessionConfig::ack_delay`].
    pub fn poll_message(&mut self, now: Instant) -> Option<(Kind, Bytes)> {
        let message = self.inbox.pop_front()?;
        self.delivered += 1;
        self.schedule_ack(now);
        Some(message)
    }

    /// From now on, acknowledge only deliveries confirmed with
    /// [`confirm_delivered`](Self::confirm_delivered) (those before the call count as
    /// confirmed). For a driver that records each delivery in a store before the peer may
    /// forget the message. The handshake tells the peer [`delivered`](Self::delivered) as it
    /// is: record it before sending [`Control::Hello`] or [`Control::Welcome`].
    pub fn hold_acks(&mut self) {
        self.confirmed = self.delivered;
    }

    /// Holds back the acknowledgement of deliveries made from now on, until
    /// [`release_acks`](Self::release_acks): for a driver whose application answers
    /// requests, so that a request is acknowledged only once its answer is queued. A hold
    /// already in place (this one's, or [`hold_acks`](Self::hold_acks)'s) is kept as it is.
    pub fn hold_new_acks(&mut self) {
        if self.confirmed == NOT_HELD {
            self.confirmed = self.delivered;
        }
    }

    /// Ends a hold of [`hold_new_acks`](Self::hold_new_acks): every delivery may be
    /// acknowledged again (within the usual count and timer). Not for a driver that uses
    /// [`hold_acks`](Self::hold_acks), whose hold is for good.
    pub fn release_acks(&mut self, now: Instant) {
        if self.confirmed != NOT_HELD {
            self.confirmed = NOT_HELD;
            self.schedule_ack(now);
        }
    }

    /// True while acknowledgements are held back ([`hold_acks`](Self::hold_acks),
    /// [`hold_new_acks`](Self::hold_new_acks)).
    pub fn acks_held(&self) -> bool {
        self.confirmed != NOT_HELD
    }

    /// The first `delivered` deliveries are recorded: they may be acknowledged (within the
    /// usual count and timer). Without [`hold_acks`](Self::hold_acks), does nothing.
    pub fn confirm_delivered(&mut self, delivered: u64, now: Instant) {
        if self.confirmed != NOT_HELD {
            self.confirmed = self.confirmed.max(delivered.min(self.delivered));
            self.schedule_ack(now);
        }
    }

    /// Deliveries that may be acknowledged: all of them, or with
    /// [`hold_acks`](Self::hold_acks) the confirmed ones.
    pub fn ackable(&self) -> u64 {
        if self.confirmed == NOT_HELD {
            self.delivered
        } else {
            self.confirmed.min(self.delivered)
        }
    }

    /// True when [`poll_message`](Self::poll_message) has a message.
    pub fn has_message(&self) -> bool {
        !self.inbox.is_empty()
    }

    /// True when [`poll_transmit`](Self::poll_transmit) has a message.
    pub fn has_transmit(&self) -> bool {
        !self.transmit.is_empty()
    }

    /// The next WebSocket message to write to the connection.
    /// (A binary message is copied once to put the data marker in front of it; a driver
    /// that can write a frame from two parts uses
    /// [`poll_transmit_parts`](Self::poll_transmit_parts) instead.)
    pub fn poll_transmit(&mut self) -> Option<(OpCode, Bytes)> {
        let (opcode, prefix, payload) = self.poll_transmit_parts()?;
        if prefix.is_empty() {
            return Some((opcode, payload));
        }
        let mut framed = BytesMut::with_capacity(prefix.len() + payload.len());
        framed.put_slice(prefix);
        framed.put_slice(&payload);
        Some((opcode, framed.freeze()))
    }

    /// The next WebSocket message to write, as its opcode and two parts of its payload: a
    /// prefix (the data marker of a binary message, or nothing) and the payload itself,
    /// shared with the application's message, not copied.
    pub fn poll_transmit_parts(&mut self) -> Option<(OpCode, &'static [u8], Bytes)> {
        let (opcode, marker, payload) = self.transmit.pop_front()?;
        let prefix: &'static [u8] = if marker { &[DATA] } else { &[] };
        Some((opcode, prefix, payload))
    }

    /// Sends the acknowledgement now if other messages are about to be written anyway and
    /// some deliveries are not yet acknowledged: on a busy connection the ACK then rides in
    /// a write that happens anyway, and the timer is not needed. Call before draining
    /// [`poll_transmit`](Self::poll_transmit).
    pub fn piggyback_ack(&mut self) {
        if !self.transmit.is_empty() && self.ack_told != self.ackable() {
            self.queue_ack();
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) has work (the acknowledgement timer).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.ack_deadline
    }

    /// Runs the acknowledgement timer.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.ack_deadline.is_some_and(|d| now >= d) {
            self.queue_ack();
        }
    }

    /// The messages sent and never acknowledged, oldest first, numbered: what a session that
    /// cannot be resumed leaves undelivered for sure, for the application to decide on.
    pub fn unacknowledged(&self) -> impl Iterator<Item = (u64, Kind, &Bytes)> + '_ {
        let first = self.peer_delivered + 1;
        self.unacked
            .iter()
            .enumerate()
            .map(move |(i, (kind, payload))| (first + i as u64, *kind, payload))
    }

    /// Queues the acknowledgement once enough deliveries wait for it, or starts its timer.
    fn schedule_ack(&mut self, now: Instant) {
        let waiting = self.ackable().saturating_sub(self.ack_told);
        if !self.up || waiting == 0 {
            return;
        }
        if waiting >= self.config.ack_every {
            self.queue_ack();
        } else if self.ack_deadline.is_none() {
            self.ack_deadline = Some(now + self.config.ack_delay);
        }
    }

    fn queue_ack(&mut self) {
        self.ack_deadline = None;
        let ackable = self.ackable();
        if self.up && self.ack_told < ackable {
            self.ack_told = ackable;
            let ack = Control::Ack { delivered: ackable };
            self.transmit
                .push_back((OpCode::Binary, false, ack.encode()));
        }
    }

    /// Releases the messages the peer's application took.
    fn acknowledge(&mut self, peer_delivered: u64) -> Result<(), SessionError> {
        if peer_delivered > self.sent {
            return Err(SessionError::AckBeyondSent {
                acked: peer_delivered,
                sent: self.sent,
            });
        }
        if peer_delivered < self.peer_delivered {
            return Err(SessionError::AckWentBack {
                before: self.peer_delivered,
                now: peer_delivered,
            });
        }
        for _ in self.peer_delivered..peer_delivered {
            if let Some((_, payload)) = self.unacked.pop_front() {
                self.unacked_bytes -= payload.len();
            }
        }
        self.peer_delivered = peer_delivered;
        Ok(())
    }
}

/// An application message as it goes on the wire: text as is, binary behind the data marker.
fn wire(kind: Kind, payload: Bytes) -> (OpCode, bool, Bytes) {
    match kind {
        Kind::Text => (OpCode::Text, false, payload),
        Kind::Binary => (OpCode::Binary, true, payload),
    }
}
