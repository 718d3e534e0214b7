//! An open WebSocket connection driven by tokio.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures_core::Stream;
use futures_sink::Sink;
use tether_proto::{
    close_code, Bytes, Connection, DeflateParams, Event, OpCode, PeerClose, PreparedMessage,
    ProtocolError, Role, State, Utf8Bytes,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Sleep;
use tokio_util::io::poll_read_buf;

use crate::config::Config;
use crate::error::{Error, Response, Result};
use crate::stream::MaybeTlsStream;

/// A complete message received or to send.
///
/// Payloads are shared byte buffers, and cloning a message (to send it to many connections,
/// say) copies no payload. Text is [`Utf8Bytes`], validated once, so
/// [`as_text`](Self::as_text) costs nothing. To send one message to many connections, see
/// [`PreparedMessage`], which also compresses it once.
///
/// A received message that arrived in one frame within one read is a slice of the read
/// buffer (blocks of 64 KiB, shared with the messages read together with it; no copy); other
/// messages have a buffer of their own. Holding many small received messages for a long time
/// (a chat history, say) keeps their blocks alive: store a copy
/// (`Bytes::copy_from_slice(msg.as_bytes())`) instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A UTF-8 text message.
    Text(Utf8Bytes),
    /// A binary message.
    Binary(Bytes),
}

impl Message {
    /// A text message (from a `String` or `&'static str`-built [`Utf8Bytes`] without a copy).
    pub fn text(text: impl Into<Utf8Bytes>) -> Self {
        Self::Text(text.into())
    }

    /// A binary message (from a `Vec<u8>` or `Bytes` without a copy).
    pub fn binary(data: impl Into<Bytes>) -> Self {
        Self::Binary(data.into())
    }

    /// The text, if this is a text message.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Self::Text(t) => Some(t.as_str()),
            Self::Binary(_) => None,
        }
    }

    /// The text, if this is a text message, without copying it.
    pub fn into_text(self) -> Option<Utf8Bytes> {
        match self {
            Self::Text(t) => Some(t),
            Self::Binary(_) => None,
        }
    }

    /// The payload bytes, whatever the kind.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Text(t) => t.as_bytes(),
            Self::Binary(b) => b,
        }
    }

    /// The payload, whatever the kind, without copying it.
    pub fn into_bytes(self) -> Bytes {
        match self {
            Self::Text(t) => t.into_bytes(),
            Self::Binary(b) => b,
        }
    }

    /// True for a text message.
    pub fn is_text(&self) -> bool {
        matches!(self, Self::Text(_))
    }

    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// True for an empty payload.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Utf8Bytes> for Message {
    fn from(t: Utf8Bytes) -> Self {
        Self::Text(t)
    }
}

impl From<String> for Message {
    fn from(t: String) -> Self {
        Self::Text(t.into())
    }
}

impl From<&str> for Message {
    fn from(t: &str) -> Self {
        Self::Text(t.into())
    }
}

impl From<Bytes> for Message {
    fn from(b: Bytes) -> Self {
        Self::Binary(b)
    }
}

impl From<Vec<u8>> for Message {
    fn from(b: Vec<u8>) -> Self {
        Self::Binary(b.into())
    }
}

impl From<&[u8]> for Message {
    fn from(b: &[u8]) -> Self {
        Self::Binary(Bytes::copy_from_slice(b))
    }
}

impl From<Message> for PreparedMessage {
    /// Prepares a message for many connections (no copy of the payload).
    fn from(msg: Message) -> Self {
        match msg {
            Message::Text(t) => Self::text(t),
            Message::Binary(b) => Self::binary(b),
        }
    }
}

/// How many reads one poll may make before it yields to other tasks.
const MAX_READS_PER_POLL: usize = 16;
/// Parts handed to one vectored write: the transmit buffer and the payloads queued by value
/// come in alternation, and a few suffice to keep the socket's buffer full.
const MAX_WRITE_PARTS: usize = 8;
/// Size of the per-thread read buffer. Connections hold no read buffer of their own: bytes
/// are read here, messages that arrive whole are handed out as slices of it, and the
/// protocol core copies only what belongs to unfinished frames.
const SCRATCH_SIZE: usize = 64 << 10;
/// Least room a read is given in the per-thread buffer before a fresh block is reserved.
const SCRATCH_MIN_READ: usize = 8 << 10;

thread_local! {
    static SCRATCH: RefCell<BytesMut> = RefCell::new(BytesMut::new());
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// A connection's link to the outside: a request to close it (a server's graceful
/// shutdown) goes in, and the peer's close code comes out once the connection is dropped (a
/// reconnect loop reads it: 1013 asks to try again later).
#[derive(Debug, Default)]
pub(crate) struct CloseSignal {
    /// The close code asked for (1001 or 1012); 0 until asked.
    requested: std::sync::atomic::AtomicU16,
    waker: futures_util::task::AtomicWaker,
    /// The code of the peer's Close frame (1005 without one), 0 until the connection was
    /// dropped, or when no Close frame arrived.
    peer_code: std::sync::atomic::AtomicU16,
}

impl CloseSignal {
    /// Asks the connection to close with `code`: 1001 (going away) or 1012 (service
    /// restart).
    pub(crate) fn request(&self, code: u16) {
        self.requested
            .store(code, std::sync::atomic::Ordering::Release);
        self.waker.wake();
    }

    /// The close code asked for, if any.
    fn requested(&self) -> Option<u16> {
        match self.requested.load(std::sync::atomic::Ordering::Acquire) {
            0 => None,
            code => Some(code),
        }
    }

    /// The peer's close code, once the connection was dropped after its Close arrived.
    pub(crate) fn peer_code(&self) -> Option<u16> {
        match self.peer_code.load(std::sync::atomic::Ordering::Acquire) {
            0 => None,
            code => Some(code),
        }
    }
}

impl<S> Drop for Inner<S> {
    fn drop(&mut self) {
        if let Some(signal) = &self.close_signal {
            let code = match self.proto.peer_close() {
                PeerClose::NotReceived => 0,
                PeerClose::NoStatus => close_code::NO_STATUS,
                PeerClose::Frame(frame) => frame.code,
            };
            signal
                .peer_code
                .store(code, std::sync::atomic::Ordering::Release);
        }
    }
}

/// A budget for the bytes of incoming messages being assembled, shared by the connections of
/// one server: a connection whose next read would take the total past the limit fails with
/// 1013 ("try again later") instead of growing the server without bound. Each connection's
/// first [`BUDGET_ALLOWANCE`] bytes are its own and not charged, so that the small messages
/// of well-behaved clients (compressed ones are assembled too) pass while large ones are
/// refused.
#[derive(Debug)]
pub(crate) struct MessageBudget {
    limit: usize,
    used: AtomicUsize,
}

impl MessageBudget {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }
}

/// What a connection may hold of a message being assembled before it charges the shared
/// budget: 64 KiB.
const BUDGET_ALLOWANCE: usize = 64 << 10;

/// What one connection has charged to a [`MessageBudget`]; given back when dropped.
struct Charge {
    budget: Arc<MessageBudget>,
    charged: usize,
}

impl Charge {
    /// Charges or gives back the difference to `held`; `false` if the budget is now over
    /// its limit because of this connection's growth.
    fn settle(&mut self, held: usize) -> bool {
        if held > self.charged {
            let grow = held - self.charged;
            let before = self.budget.used.fetch_add(grow, Ordering::Relaxed);
            self.charged = held;
            return before.saturating_add(grow) <= self.budget.limit;
        }
        if held < self.charged {
            self.budget
                .used
                .fetch_sub(self.charged - held, Ordering::Relaxed);
            self.charged = held;
        }
        true
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.settle(0);
    }
}

/// Everything a connection owns; shared by the two halves after [`WebSocket::split`].
struct Inner<S> {
    io: S,
    proto: Connection,
    timer: Option<Pin<Box<Sleep>>>,
    armed: Option<std::time::Instant>,
    /// The waker the timer last registered, to skip re-polling it for the same task.
    timer_waker: Option<Waker>,
    eof: bool,
    done: bool,
    split: bool,
    write_waiter: Option<Waker>,
    high_water: usize,
    low_water: usize,
    ping_counter: u64,
    close_signal: Option<Arc<CloseSignal>>,
    budget: Option<Charge>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Inner<S> {
    /// Writes out the transmit buffer. Errors once our Close went out (closing or closed)
    /// are not reported: the peer may have answered and gone already (an HTTP/2 stream is
    /// reset as soon as the server is done), and its Close may still be read.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = self.write_out(cx);
        if let Some(w) = self.write_waiter.take() {
            // Our poll_write replaced the other half's write waker: let it poll again.
            w.wake();
        }
        match result {
            Poll::Ready(Err(_)) if self.proto.state() != State::Open => {
                let n = self.proto.buffered_amount();
                self.proto.advance_transmit(n);
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }

    fn write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let vectored = self.io.is_write_vectored();
        while self.proto.buffered_amount() > 0 {
            let io = Pin::new(&mut self.io);
            // Payloads queued by value are parts of their own: one vectored write takes them
            // with the frame headers around them.
            let n = if vectored {
                let mut parts = [IoSlice::new(&[]); MAX_WRITE_PARTS];
                let filled = self.proto.transmit_vectored(&mut parts);
                ready!(io.poll_write_vectored(cx, &parts[..filled]))?
            } else {
                ready!(io.poll_write(cx, self.proto.transmit()))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.proto.advance_transmit(n);
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Arms the timer at the core's next deadline and polls it.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(at) = self.proto.poll_timeout() else {
            return Poll::Pending;
        };
        let deadline = tokio::time::Instant::from_std(at);
        let t = match &mut self.timer {
            Some(t) if self.armed == Some(at) => {
                // Armed at this deadline and registered with this task already: nothing to
                // do (the deadline rarely moves, and this runs on every poll).
                let registered = self
                    .timer_waker
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()));
                if registered && !t.is_elapsed() {
                    return Poll::Pending;
                }
                t
            }
            Some(t) => {
                t.as_mut().reset(deadline);
                t
            }
            None => self
                .timer
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        self.armed = Some(at);
        let polled = t.as_mut().poll(cx);
        self.timer_waker = polled.is_pending().then(|| cx.waker().clone());
        polled
    }

    /// Makes progress on the connection without taking events: runs due timers, writes what
    /// is queued, closes the transport when the core asks, and reads once. Ready(Ok) means
    /// something may have changed; Pending means a waker is registered.
    fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        // One clock read serves the whole poll.
        let now = now();
        if let Some(signal) = &self.close_signal {
            if let Some(code) = signal
                .requested()
                .filter(|_| self.proto.state() == State::Open)
            {
                let reason = if code == close_code::SERVICE_RESTART {
                    "server restarting"
                } else {
                    "server shutting down"
                };
                let _ = self.proto.close(code, reason, now);
                return Poll::Ready(Ok(()));
            }
            signal.waker.register(cx.waker());
        }
        if self.proto.poll_timeout().is_some_and(|at| at <= now) {
            self.proto.handle_timeout(now);
            return Poll::Ready(Ok(()));
        }
        let write = self.poll_write_out(cx);
        if let Poll::Ready(Err(e)) = write {
            self.done = true;
            return Poll::Ready(Err(Error::Io(e)));
        }
        if self.proto.wants_close_transport() && self.proto.buffered_amount() == 0 {
            // Best effort: the peer may already be gone.
            let _ = ready!(Pin::new(&mut self.io).poll_shutdown(cx));
            self.done = true;
            return Poll::Ready(Ok(()));
        }
        if !self.eof {
            match self.poll_read_once(cx, now) {
                Poll::Ready(Ok(())) => {
                    self.settle_budget(now);
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Err(e)) => {
                    self.eof = true;
                    self.proto.receive_eof(now);
                    if !self.proto.peer_close().is_received() {
                        return Poll::Ready(Err(Error::Io(e)));
                    }
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending => {}
            }
        }
        match self.poll_timer(cx) {
            Poll::Ready(()) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Brings this connection's charge on the shared budget up to date after a read, and
    /// fails the connection (1013) if it took the budget past its limit.
    fn settle_budget(&mut self, now: std::time::Instant) {
        let Some(charge) = &mut self.budget else {
            return;
        };
        let held = self
            .proto
            .incoming_buffered()
            .saturating_sub(BUDGET_ALLOWANCE);
        if !charge.settle(held) {
            tracing::debug!(
                limit = charge.budget.limit(),
                "incoming message budget used up: failing the connection with 1013"
            );
            self.proto.fail_with(ProtocolError::Overloaded, now);
            charge.settle(
                self.proto
                    .incoming_buffered()
                    .saturating_sub(BUDGET_ALLOWANCE),
            );
        }
    }

    fn poll_read_once(
        &mut self,
        cx: &mut Context<'_>,
        now: std::time::Instant,
    ) -> Poll<io::Result<()>> {
        // The rest of a large frame goes straight into the message buffer.
        let Self { io, proto, .. } = &mut *self;
        let direct = proto.read_payload_with(now, |payload, max| {
            let mut limited = BufMut::limit(payload, max);
            poll_read_buf(Pin::new(&mut *io), cx, &mut limited)
        });
        if let Some(read) = direct {
            if ready!(read)? == 0 {
                self.eof = true;
                self.proto.receive_eof(now);
            }
            return Poll::Ready(Ok(()));
        }
        SCRATCH.with(|cell| {
            let mut fallback;
            let mut guard = cell.try_borrow_mut();
            let buf: &mut BytesMut = match &mut guard {
                Ok(b) => b,
                Err(_) => {
                    // Re-entered from inside another connection's read: use a buffer of our own.
                    fallback = BytesMut::new();
                    &mut fallback
                }
            };
            // Reuses the block when every message sliced from it is gone; otherwise the
            // messages keep the old block and reads go to a new one.
            if buf.capacity() - buf.len() < SCRATCH_MIN_READ {
                buf.reserve(SCRATCH_SIZE);
            }
            let n = ready!(poll_read_buf(Pin::new(&mut self.io), cx, &mut *buf))?;
            if n == 0 {
                self.eof = true;
                self.proto.receive_eof(now);
            } else {
                self.proto.receive_shared(buf.split(), now);
            }
            Poll::Ready(Ok(()))
        })
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message>>> {
        for _ in 0..MAX_READS_PER_POLL {
            while let Some(ev) = self.proto.poll_event() {
                match ev {
                    Event::Text(t) => return Poll::Ready(Some(Ok(Message::Text(t)))),
                    Event::Binary(b) => return Poll::Ready(Some(Ok(Message::Binary(b)))),
                    Event::Error(e) => {
                        // Send the Close frame now even if the caller stops polling.
                        let _ = self.poll_write_out(cx);
                        return Poll::Ready(Some(Err(Error::Protocol(e))));
                    }
                    Event::Ping(_) | Event::Pong { .. } | Event::Close(_) => {}
                }
            }
            if self.done {
                return Poll::Ready(None);
            }
            if let Err(e) = ready!(self.poll_drive(cx)) {
                return Poll::Ready(Some(Err(e)));
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        if self.proto.state() != State::Open {
            return Poll::Ready(Err(Error::ConnectionClosed));
        }
        if self.proto.buffered_amount() > self.high_water {
            while self.proto.buffered_amount() > self.low_water {
                if let Err(e) = ready!(self.poll_flush(cx)) {
                    return Poll::Ready(Err(e));
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Queues `msg`, compressed if permessage-deflate is in use and `compress` is set.
    fn start_send(&mut self, msg: Message, compress: bool) -> Result<()> {
        let (opcode, bytes) = match msg {
            Message::Text(t) => (OpCode::Text, t.into_bytes()),
            Message::Binary(b) => (OpCode::Binary, b),
        };
        self.proto
            .send_message(opcode, bytes, compress)
            .map_err(|_| Error::ConnectionClosed)
    }

    /// Queues a prepared message (shared payload, compressed once per parameter set).
    fn start_send_prepared(&mut self, msg: &PreparedMessage) -> Result<()> {
        self.proto
            .send_prepared(msg, true)
            .map_err(|_| Error::ConnectionClosed)
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        match self.write_out(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(Error::Io(e))),
            Poll::Pending => {
                if self.split {
                    self.write_waiter = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }

    /// True when a send may leave its bytes buffered: more decoded messages wait, so the
    /// caller is in a receive loop whose next `recv` (or send) will flush them together.
    fn may_coalesce(&self) -> bool {
        !self.split
            && self.proto.buffered_amount() <= self.high_water
            && self.proto.has_pending_messages()
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        loop {
            while self.proto.poll_event().is_some() {}
            if self.done {
                return Poll::Ready(Ok(()));
            }
            ready!(self.poll_drive(cx))?;
        }
    }

    fn start_close(&mut self, code: u16, reason: &str) -> Result<()> {
        match self.proto.close(code, reason, now()) {
            Ok(()) => Ok(()),
            // Already closing or closed: wait for that to finish.
            Err(tether_proto::SendError::Closed) => Ok(()),
            Err(e) => Err(Error::Other(Box::new(e))),
        }
    }
}

/// An open WebSocket connection.
///
/// Receive with [`recv`](Self::recv) (or as a [`Stream`]), send with [`send`](Self::send)
/// (or as a [`Sink`]). Pings from the peer are answered, keepalive pings are sent and their
/// timeout enforced, and the closing handshake is completed, all while `recv` (or `close`) is
/// being polled: keep a task receiving, as you would to read messages anyway.
///
/// **Write coalescing.** `send` writes to the socket before it returns, except while more
/// already-received messages wait to be taken by `recv`: then the bytes stay queued and leave
/// together, in one write, with the reply to the last of them (or at the next `recv` that has
/// to wait for the network, or [`flush`](Self::flush)). An echo or request/response loop thus
/// makes one system call per batch instead of one per message.
pub struct WebSocket<S = MaybeTlsStream> {
    inner: Inner<S>,
    subprotocol: Option<String>,
    extensions: Option<String>,
    response: Option<Box<Response>>,
}

impl<S> std::fmt::Debug for WebSocket<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocket")
            .field("role", &self.inner.proto.role())
            .field("state", &self.inner.proto.state())
            .field("subprotocol", &self.subprotocol)
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocket<S> {
    /// Wraps a transport whose opening handshake is already done. `leftover` holds bytes read
    /// past the handshake (the first frames), if any.
    pub fn from_raw(io: S, role: Role, config: &Config, leftover: &[u8]) -> Self {
        Self::with_deflate(io, role, config, None, leftover)
    }

    /// As [`from_raw`](Self::from_raw), with permessage-deflate on when the handshake agreed
    /// on `deflate` (its settings come from `config.compression`).
    pub fn with_deflate(
        io: S,
        role: Role,
        config: &Config,
        deflate: Option<DeflateParams>,
        leftover: &[u8],
    ) -> Self {
        let mut proto = Connection::new(role, config.core.clone(), now());
        if let Some(params) = deflate {
            let settings = config.compression.clone().unwrap_or_default();
            proto.enable_deflate(params, &settings);
        }
        if !leftover.is_empty() {
            proto.receive(leftover, now());
        }
        Self {
            inner: Inner {
                io,
                proto,
                timer: None,
                armed: None,
                timer_waker: None,
                eof: false,
                done: false,
                split: false,
                write_waiter: None,
                high_water: config.write_buffer_high,
                low_water: config.write_buffer_low,
                ping_counter: 0,
                close_signal: None,
                budget: None,
            },
            subprotocol: None,
            extensions: None,
            response: None,
        }
    }

    pub(crate) fn with_response(mut self, response: Response) -> Self {
        self.response = Some(Box::new(response));
        self
    }

    /// Counts this connection's incoming message bytes against `budget`.
    pub(crate) fn with_budget(mut self, budget: Option<Arc<MessageBudget>>) -> Self {
        self.inner.budget = budget.map(|budget| Charge { budget, charged: 0 });
        self.inner.settle_budget(now());
        self
    }

    pub(crate) fn set_close_signal(&mut self, signal: Arc<CloseSignal>) {
        self.inner.close_signal = Some(signal);
    }

    /// The server's handshake response (status 101 and its headers), for client connections.
    pub fn response(&self) -> Option<&Response> {
        self.response.as_deref()
    }

    pub(crate) fn with_negotiated(
        mut self,
        subprotocol: Option<String>,
        extensions: Option<String>,
    ) -> Self {
        self.subprotocol = subprotocol;
        self.extensions = extensions;
        self
    }

    /// The next message; `None` once the connection is closed (see
    /// [`close_code`](Self::close_code) for how). An error (protocol violation, keepalive
    /// timeout, I/O failure) is returned once; the connection is then closing and the next
    /// calls return `None`.
    ///
    /// **Cancel safety:** cancel-safe. Dropping the future loses no message: a message is
    /// only taken from the connection when it is returned.
    pub async fn recv(&mut self) -> Option<Result<Message>> {
        poll_fn(|cx| self.inner.poll_recv(cx)).await
    }

    /// Sends a message, waiting first while the write buffer is above its high-water mark.
    /// See the type's documentation for write coalescing.
    ///
    /// **Cancel safety:** if cancelled before it completes, the message may or may not have
    /// been queued.
    pub async fn send(&mut self, msg: impl Into<Message>) -> Result<()> {
        let msg = msg.into();
        poll_fn(|cx| self.inner.poll_ready(cx)).await?;
        self.inner.start_send(msg, true)?;
        if self.inner.may_coalesce() {
            return Ok(());
        }
        poll_fn(|cx| self.inner.poll_flush(cx)).await
    }

    /// Sends a message prepared once for many connections: its payload is not copied, and
    /// with permessage-deflate (without context takeover, tether's default) it is compressed
    /// once for all connections that agreed on the same parameters. Coalesces writes like
    /// [`send`](Self::send).
    pub async fn send_prepared(&mut self, msg: &PreparedMessage) -> Result<()> {
        self.feed_prepared(msg).await?;
        if self.inner.may_coalesce() {
            return Ok(());
        }
        poll_fn(|cx| self.inner.poll_flush(cx)).await
    }

    /// Queues a message without writing it (waiting first while the write buffer is above its
    /// high-water mark); [`flush`](Self::flush) writes everything queued at once. A server
    /// that fans messages out queues what is waiting for each connection, then flushes once:
    /// one system call for many messages.
    pub async fn feed(&mut self, msg: impl Into<Message>) -> Result<()> {
        let msg = msg.into();
        poll_fn(|cx| self.inner.poll_ready(cx)).await?;
        self.inner.start_send(msg, true)
    }

    /// As [`feed`](Self::feed), for a [`PreparedMessage`].
    pub async fn feed_prepared(&mut self, msg: &PreparedMessage) -> Result<()> {
        poll_fn(|cx| self.inner.poll_ready(cx)).await?;
        self.inner.start_send_prepared(msg)
    }

    /// Sends a message without compressing it, even when permessage-deflate is in use: for
    /// data that does not compress (images, already compressed archives).
    pub async fn send_uncompressed(&mut self, msg: impl Into<Message>) -> Result<()> {
        let msg = msg.into();
        poll_fn(|cx| self.inner.poll_ready(cx)).await?;
        self.inner.start_send(msg, false)?;
        poll_fn(|cx| self.inner.poll_flush(cx)).await
    }

    /// Writes out everything queued.
    pub async fn flush(&mut self) -> Result<()> {
        poll_fn(|cx| self.inner.poll_flush(cx)).await
    }

    /// Sends a Ping and waits for its Pong; returns the round-trip time. Messages that arrive
    /// meanwhile are kept for [`recv`](Self::recv).
    pub async fn ping(&mut self) -> Result<Duration> {
        self.inner.ping_counter += 1;
        let payload = self.inner.ping_counter.to_be_bytes();
        self.inner
            .proto
            .ping(&payload, now())
            .map_err(|_| Error::ConnectionClosed)?;
        poll_fn(|cx| loop {
            if let Some(rtt) = self.inner.proto.take_rtt(&payload) {
                return Poll::Ready(Ok(rtt));
            }
            if self.inner.done || self.inner.proto.state() == State::Closed {
                return Poll::Ready(Err(Error::ConnectionClosed));
            }
            ready!(self.inner.poll_drive(cx))?;
        })
        .await
    }

    /// Performs the closing handshake with `code` (1000 for a normal closure) and `reason`,
    /// then closes the transport. Messages still arriving are discarded. Returns once closed,
    /// after at most the close timeout.
    pub async fn close(&mut self, code: u16, reason: &str) -> Result<()> {
        self.inner.start_close(code, reason)?;
        poll_fn(|cx| self.inner.poll_close(cx)).await
    }

    /// The close code of a closed connection: the peer's code, 1005 if its Close frame had
    /// none, 1006 if the connection ended without a closing handshake.
    pub fn close_code(&self) -> u16 {
        self.inner.proto.close_code()
    }

    /// What the peer's Close frame said, once it arrived ([`PeerClose::NotReceived`] while
    /// open, or when the connection ended without it).
    pub fn peer_close(&self) -> &PeerClose {
        self.inner.proto.peer_close()
    }

    /// True once the connection is fully closed.
    pub fn is_closed(&self) -> bool {
        self.inner.done
    }

    /// The subprotocol the server selected, if any.
    pub fn subprotocol(&self) -> Option<&str> {
        self.subprotocol.as_deref()
    }

    /// The negotiated `Sec-WebSocket-Extensions` value, if any.
    pub fn extensions(&self) -> Option<&str> {
        self.extensions.as_deref()
    }

    /// Bytes queued for writing.
    pub fn buffered_amount(&self) -> usize {
        self.inner.proto.buffered_amount()
    }

    /// The underlying transport.
    pub fn get_ref(&self) -> &S {
        &self.inner.io
    }

    /// Splits the connection into a sending and a receiving half that can be used from two
    /// tasks. Keep the receiving half polled: it answers pings, runs keepalive and completes
    /// the closing handshake. Sends from the sending half are always written right away.
    pub fn split(self) -> (WsSender<S>, WsReceiver<S>) {
        let mut inner = self.inner;
        inner.split = true;
        let shared = Arc::new(Shared {
            inner: Mutex::new(inner),
            subprotocol: self.subprotocol,
        });
        (
            WsSender {
                shared: shared.clone(),
            },
            WsReceiver { shared },
        )
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for WebSocket<S> {
    type Item = Result<Message>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().inner.poll_recv(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Message> for WebSocket<S> {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.get_mut().inner.poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<()> {
        self.get_mut().inner.start_send(item, true)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.get_mut().inner.poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let inner = &mut self.get_mut().inner;
        if inner.proto.state() == State::Open {
            inner.start_close(close_code::NORMAL, "")?;
        }
        inner.poll_close(cx)
    }
}

struct Shared<S> {
    inner: Mutex<Inner<S>>,
    subprotocol: Option<String>,
}

impl<S> Shared<S> {
    fn lock(&self) -> MutexGuard<'_, Inner<S>> {
        // A panic while holding the lock leaves the connection in a consistent state (every
        // method keeps the core's invariants), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The sending half of a split [`WebSocket`].
pub struct WsSender<S = MaybeTlsStream> {
    shared: Arc<Shared<S>>,
}

/// The receiving half of a split [`WebSocket`].
pub struct WsReceiver<S = MaybeTlsStream> {
    shared: Arc<Shared<S>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsSender<S> {
    /// Sends a message and writes it out (waiting while the write buffer is full).
    pub async fn send(&mut self, msg: impl Into<Message>) -> Result<()> {
        let msg = msg.into();
        poll_fn(|cx| self.shared.lock().poll_ready(cx)).await?;
        self.shared.lock().start_send(msg, true)?;
        self.flush().await
    }

    /// Sends a [`PreparedMessage`] and writes it out, as [`WebSocket::send_prepared`].
    pub async fn send_prepared(&mut self, msg: &PreparedMessage) -> Result<()> {
        self.feed_prepared(msg).await?;
        self.flush().await
    }

    /// Queues a message without writing it, as [`WebSocket::feed`].
    pub async fn feed(&mut self, msg: impl Into<Message>) -> Result<()> {
        let msg = msg.into();
        poll_fn(|cx| self.shared.lock().poll_ready(cx)).await?;
        self.shared.lock().start_send(msg, true)
    }

    /// Queues a message whose payload is `prefix` then `payload`, without joining them (the
    /// resume protocol's binary messages: a marker byte, then the application's bytes).
    pub(crate) async fn feed_parts(
        &mut self,
        opcode: OpCode,
        prefix: &[u8],
        payload: Bytes,
    ) -> Result<()> {
        poll_fn(|cx| self.shared.lock().poll_ready(cx)).await?;
        self.shared
            .lock()
            .proto
            .send_message_prefixed(opcode, prefix, payload, true)
            .map_err(|_| Error::ConnectionClosed)
    }

    /// Queues a [`PreparedMessage`] without writing it, as [`WebSocket::feed_prepared`].
    pub async fn feed_prepared(&mut self, msg: &PreparedMessage) -> Result<()> {
        poll_fn(|cx| self.shared.lock().poll_ready(cx)).await?;
        self.shared.lock().start_send_prepared(msg)
    }

    /// Writes out everything queued.
    pub async fn flush(&mut self) -> Result<()> {
        poll_fn(|cx| self.shared.lock().poll_flush(cx)).await
    }

    /// Starts the closing handshake and writes the Close frame. The receiving half completes
    /// the handshake and then returns `None`.
    pub async fn close(&mut self, code: u16, reason: &str) -> Result<()> {
        self.shared.lock().start_close(code, reason)?;
        poll_fn(|cx| self.shared.lock().poll_flush(cx)).await
    }

    /// The subprotocol the server selected, if any.
    pub fn subprotocol(&self) -> Option<&str> {
        self.shared.subprotocol.as_deref()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsReceiver<S> {
    /// The next message, as [`WebSocket::recv`]. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Result<Message>> {
        poll_fn(|cx| self.shared.lock().poll_recv(cx)).await
    }

    /// The close code once closed, as [`WebSocket::close_code`].
    pub fn close_code(&self) -> u16 {
        self.shared.lock().proto.close_code()
    }

    /// What the peer's Close frame said, as [`WebSocket::peer_close`].
    pub fn peer_close(&self) -> PeerClose {
        self.shared.lock().proto.peer_close().clone()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for WsReceiver<S> {
    type Item = Result<Message>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.shared.lock().poll_recv(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Message> for WsSender<S> {
    type Error = Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.shared.lock().poll_ready(cx)
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<()> {
        self.shared.lock().start_send(item, true)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.shared.lock().poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let mut inner = self.shared.lock();
        if inner.proto.state() == State::Open {
            inner.start_close(close_code::NORMAL, "")?;
        }
        inner.poll_flush(cx)
    }
}
