//! Resumable sessions: conversations that outlive their connections.
//!
//! A [`SessionHandle`] sends and receives like a WebSocket, but across any number of
//! reconnects nothing is lost, repeated or reordered, in either direction: every message is
//! kept until the peer's application took it and sent again after a resume if it was not
//! (the resume protocol, `docs/resume-protocol.md`, implemented by
//! [`tether_proto::session`]).
//!
//! * **Client:** [`ClientBuilder::session`](crate::ClientBuilder::session) (or
//!   [`Reconnect::session`](crate::Reconnect::session) for a custom reconnect policy) makes a
//!   [`SessionBuilder`]; [`start`](SessionBuilder::start) returns the handle at once and
//!   connects in the background. The reconnect policy decides when and whether to reconnect;
//!   a fatal error ends the session with that error.
//! * **Server:** a [`SessionServer`] runs a handler once per session (not per connection),
//!   with the same kind of handle, which stays alive while its client is away (default
//!   2 minutes). Hand it each accepted connection with [`SessionServer::serve`].
//!
//! Both ends report their lifecycle as [`SessionEvent`]s (and to `tracing`): connected,
//! resumed (with how many messages this end sent again), disconnected, lost, ended. When a
//! session cannot be resumed (unknown, expired, overflowed, superseded), the client is told
//! with [`Error::SessionLost`], together with the messages it sent that were never
//! acknowledged, and never goes on as if nothing was missed.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tether_proto::close_code;
use tether_proto::session::{Control, Session, SessionError};
pub use tether_proto::session::{Kind, SessionConfig, SessionId, Snapshot, SUBPROTOCOL};
use tether_proto::OpCode;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;

use crate::error::{Error, Result};
use crate::reconnect::{Reconnect, Reconnecting};
use crate::websocket::{Message, WebSocket, WsReceiver, WsSender};
use crate::ClientBuilder;

/// The close code a server uses on a connection whose session another connection took over.
/// A client that receives it reports the session lost ([`LostReason::Superseded`]).
pub const SUPERSEDED: u16 = 4000;

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
type OnEvent = dyn Fn(&SessionEvent<'_>) + Send + Sync;

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

// ----- what the application sees -----

/// Why a session could not be resumed (the `reason` of the resume protocol's WELCOME).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LostReason {
    /// The server has no such session: it never existed, ended, or the server lost it (a
    /// restart without a shared store).
    Unknown,
    /// The client was away longer than the server keeps sessions.
    Expired,
    /// The server's buffer for the away client was full.
    Overflow,
    /// Another connection took the session over.
    Superseded,
    /// A reason this version does not know, as the server gave it.
    Other(String),
}

impl LostReason {
    /// The reason as it goes on the wire and in the CLI's `session_lost` event.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Unknown => "unknown",
            Self::Expired => "expired",
            Self::Overflow => "overflow",
            Self::Superseded => "superseded",
            Self::Other(s) => s,
        }
    }

    pub(crate) fn parse(s: &str) -> Self {
        match s {
            "unknown" | "" => Self::Unknown,
            "expired" => Self::Expired,
            "overflow" => Self::Overflow,
            "superseded" => Self::Superseded,
            other => Self::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A session that could not be resumed: why, and what this end sent that the peer never
/// confirmed it took (it may or may not have arrived: the application decides whether to
/// send it again).
#[derive(Clone, Debug)]
pub struct SessionLost {
    /// Why the server could not resume the session.
    pub reason: LostReason,
    /// The session that was lost.
    pub id: SessionId,
    /// Messages sent and never acknowledged, oldest first.
    pub unacknowledged: Vec<Message>,
}

impl fmt::Display for SessionLost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "session {} lost ({}); {} messages sent were not acknowledged",
            self.id,
            self.reason,
            self.unacknowledged.len()
        )
    }
}

impl std::error::Error for SessionLost {}

/// How a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndReason {
    /// This end closed it ([`SessionHandle::close`], or the handle was dropped).
    Closed,
    /// The peer closed it with 1000 (normal closure).
    ClosedByPeer,
    /// The client stayed away longer than the session's time to live (server).
    Expired,
    /// A send to an away client found the buffer full, and the server was configured to end
    /// such sessions ([`Overflow::End`]).
    Overflow,
    /// The server could not resume it (client): see [`Error::SessionLost`].
    Lost(LostReason),
    /// Its client resumed it on another server sharing the store (server): the session
    /// goes on there, with a handler of its own; this handler should return.
    Moved,
    /// An error: a fatal connection error, a peer that broke the protocol, a server without
    /// sessions.
    Failed(String),
}

/// The lifecycle of a session, for an `on_event` callback. Every event also goes to
/// `tracing` (connected and resumed at INFO, disconnected and lost at WARN).
#[derive(Debug)]
#[non_exhaustive]
pub enum SessionEvent<'a> {
    /// A new session is carried by its first connection.
    Connected {
        /// The session.
        id: SessionId,
        /// Messages the application sent before this first connection, now sent.
        replayed: u64,
    },
    /// A connection resumed the session.
    Resumed {
        /// The session.
        id: SessionId,
        /// Messages this end sent again (not acknowledged before the break).
        replayed: u64,
    },
    /// The connection carrying the session broke; the session stays resumable.
    Disconnected {
        /// The session.
        id: SessionId,
        /// The connection's close code: the peer's, or 1006 when it ended without a
        /// closing handshake.
        code: u16,
        /// What happened to the connection.
        reason: &'a str,
    },
    /// The server could not resume the session (client only).
    Lost(&'a SessionLost),
    /// The session is over; nothing more is sent or received.
    Ended {
        /// The session.
        id: SessionId,
        /// Why.
        reason: &'a EndReason,
    },
}

/// What a client does when the server cannot resume its session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnLost {
    /// End the session: `recv` returns [`Error::SessionLost`], then `None`. The default.
    #[default]
    Fail,
    /// Report [`Error::SessionLost`] from `recv` once, then go on in the new session the
    /// server started (both directions numbered from the start again).
    NewSession,
}

/// What a server does when its handler sends to a session whose client is away and whose
/// replay buffer is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Overflow {
    /// `send` waits until the client is back and acknowledges (backpressure). The default.
    #[default]
    Wait,
    /// End the session (the client is told `overflow` when it comes back) and fail the send.
    /// For servers that must not wait for one client, such as a broadcast.
    End,
}

// ----- shared state of one session -----

/// Which end of the session this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

struct State {
    /// False for a plain WebSocket peer (no resume protocol): messages go as they are and
    /// the session ends with its one connection (server), or the guarantees are off
    /// (client, when configured to fall back).
    resume: bool,
    session: Session,
    plain_in: VecDeque<Message>,
    plain_out: VecDeque<Message>,
    /// The generation of the connection carrying the session (0: none).
    link: u64,
    links: u64,
    /// Set when a link goes down, to tell a later expiry timer whether it is still current.
    away_epoch: u64,
    /// The application asked to close with this code and reason.
    closing: Option<(u16, String)>,
    ended: Option<EndReason>,
    /// Errors for `recv`, before further messages (a lost session, the final error).
    errors: VecDeque<Error>,
    /// A server session taken over from the store (started elsewhere, or before a restart).
    restored: bool,
}

struct Shared {
    side: Side,
    state: Mutex<State>,
    /// Something to write, a close was asked for, or the link was superseded.
    to_link: Notify,
    /// A message arrived for the application, or the session ended.
    to_recv: Notify,
    /// The replay buffer made room, everything was acknowledged, or the session ended.
    to_send: Notify,
    on_event: Option<Arc<OnEvent>>,
    /// The server's registry, to forget the session when it ends.
    registry: Option<Weak<Registry>>,
    overflow: Overflow,
    /// A server session whose store is shared by several servers: every change is recorded
    /// there as it happens.
    durable: Option<Box<Durable>>,
}

/// What a server session in a shared store needs to record its changes in order.
struct Durable {
    store: Arc<dyn SessionStore>,
    /// This copy of the session, as the store knows it.
    holder: Holder,
    ttl: Duration,
    /// One send at a time records its message, so that numbers reach the store in order.
    send_turn: tokio::sync::Mutex<()>,
    /// One `recv` at a time records its delivery; a message whose recording a cancelled
    /// `recv` left unfinished waits here for the next one.
    recv_turn: tokio::sync::Mutex<RecvTurn>,
}

impl Shared {
    fn new(
        side: Side,
        resume: bool,
        session: Session,
        on_event: Option<Arc<OnEvent>>,
        registry: Option<Weak<Registry>>,
        overflow: Overflow,
        durable: Option<Box<Durable>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            side,
            state: Mutex::new(State {
                resume,
                session,
                plain_in: VecDeque::new(),
                plain_out: VecDeque::new(),
                link: 0,
                links: 0,
                away_epoch: 0,
                closing: None,
                ended: None,
                errors: VecDeque::new(),
                restored: false,
            }),
            to_link: Notify::new(),
            to_recv: Notify::new(),
            to_send: Notify::new(),
            on_event,
            registry,
            overflow,
            durable,
        })
    }

    /// Which copy of the session this is, for the store (0 for a session in a snapshot
    /// store, which does not care).
    fn holder(&self) -> Holder {
        self.durable.as_ref().map_or(Holder(0), |d| d.holder)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves counts that still add up (every update is a
        // single step), so the state stays usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn emit(&self, event: &SessionEvent<'_>) {
        let side = match self.side {
            Side::Client => "client",
            Side::Server => "server",
        };
        match event {
            SessionEvent::Connected { id, replayed } => {
                tracing::info!(side, %id, replayed, "session connected")
            }
            SessionEvent::Resumed { id, replayed } => {
                tracing::info!(side, %id, replayed, "session resumed")
            }
            SessionEvent::Disconnected { id, code, reason } => {
                tracing::warn!(side, %id, code, reason, "session disconnected; resumable")
            }
            SessionEvent::Lost(lost) => {
                tracing::warn!(side, id = %lost.id, reason = %lost.reason,
                    unacknowledged = lost.unacknowledged.len(), "session lost")
            }
            SessionEvent::Ended { id, reason } => {
                tracing::info!(side, %id, reason = ?reason, "session ended")
            }
        }
        if let Some(cb) = &self.on_event {
            cb(event);
        }
    }

    /// Ends the session (once): wakes everyone waiting and tells the registry.
    fn end(&self, st: &mut State, reason: EndReason, error: Option<Error>) {
        if st.ended.is_some() {
            return;
        }
        if let Some(e) = error {
            st.errors.push_back(e);
        }
        let id = st.session.id();
        if self.durable.is_none() && matches!(reason, EndReason::Closed | EndReason::ClosedByPeer) {
            // What arrived before the closing handshake is still the application's to take
            // (`recv` returns it, then `None`).
            st.session.link_closed();
        } else {
            st.session.link_down();
        }
        st.link = 0;
        st.ended = Some(reason.clone());
        self.to_link.notify_waiters();
        self.to_recv.notify_waiters();
        self.to_send.notify_waiters();
        self.emit(&SessionEvent::Ended {
            id,
            reason: &reason,
        });
        // A plain client's handle was never registered or stored.
        if st.resume {
            if let Some(registry) = self.registry.as_ref().and_then(Weak::upgrade) {
                registry.forget(id, &reason, self);
            }
        }
    }
}

/// One end of a resumable session: send and receive across reconnects. Made by
/// [`SessionBuilder::start`] (client) or handed to a [`SessionServer`]'s handler.
///
/// Dropping the handle closes the session (as [`close`](Self::close) without waiting for
/// acknowledgements).
pub struct SessionHandle {
    shared: Arc<Shared>,
}

/// A sending half of a [`SessionHandle`], for another task; cheap to clone.
#[derive(Clone)]
pub struct SessionSender {
    shared: Arc<Shared>,
}

impl fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionHandle")
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for SessionSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionSender").finish_non_exhaustive()
    }
}

enum SendStep {
    Sent,
    /// Sent to an away client: keep the session's state where the session is kept.
    Away(Arc<Registry>, SessionId, Snapshot),
    Full,
    Closed,
}

fn message_parts(msg: &Message) -> (Kind, tether_proto::Bytes) {
    match msg {
        Message::Text(t) => (Kind::Text, t.clone().into_bytes()),
        Message::Binary(b) => (Kind::Binary, b.clone()),
    }
}

/// (`mark` is boxed: it is rare, and a handler's future holds this one's size for its life.)
async fn send_on(
    shared: &Shared,
    msg: Message,
    mark: Option<Box<tether_proto::Bytes>>,
) -> Result<()> {
    if let Some(durable) = &shared.durable {
        // Boxed: the shared store's path is larger, and an idle session's future (a handler
        // waiting in `send` or `recv`) should not carry its size.
        return Box::pin(send_durable(shared, durable, msg, mark.map(|m| *m))).await;
    }
    let (kind, payload) = message_parts(&msg);
    let mut msg = Some(msg);
    // The first try registers no waiter: most sends find room.
    let mut first = true;
    loop {
        let notified = shared.to_send.notified();
        tokio::pin!(notified);
        if !first {
            notified.as_mut().enable();
        }
        let step = {
            let mut st = shared.lock();
            try_send(shared, &mut st, kind, &payload, &mut msg, &mark)
        };
        if std::mem::take(&mut first) && matches!(step, SendStep::Full) {
            // Register, then look again: room made meanwhile is not missed.
            continue;
        }
        match step {
            SendStep::Sent => return Ok(()),
            SendStep::Away(registry, id, snapshot) => {
                let ttl = registry.config.ttl;
                if let Err(e) = registry
                    .store
                    .save(id, shared.holder(), snapshot, ttl)
                    .await
                {
                    tracing::warn!(%id, error = %e, "session store: saving failed");
                }
                return Ok(());
            }
            SendStep::Closed => return Err(Error::ConnectionClosed),
            SendStep::Full => notified.await,
        }
    }
}

fn try_send(
    shared: &Shared,
    st: &mut State,
    kind: Kind,
    payload: &tether_proto::Bytes,
    msg: &mut Option<Message>,
    mark: &Option<Box<tether_proto::Bytes>>,
) -> SendStep {
    if st.ended.is_some() || st.closing.is_some() {
        return SendStep::Closed;
    }
    if !st.resume {
        if st.plain_out.len() >= st.session.config().max_buffered_messages {
            return SendStep::Full;
        }
        st.plain_out.extend(msg.take());
        shared.to_link.notify_waiters();
        return SendStep::Sent;
    }
    let away = !st.session.is_up();
    let sent = st.session.send(kind, payload.clone());
    if let (Ok(_), Some(mark)) = (&sent, mark) {
        st.session.set_mark((**mark).clone());
    }
    match sent {
        Ok(_) if !away => {
            shared.to_link.notify_waiters();
            SendStep::Sent
        }
        Ok(_) => match shared.registry.as_ref().and_then(Weak::upgrade) {
            Some(registry) => SendStep::Away(registry, st.session.id(), st.session.snapshot()),
            None => SendStep::Sent,
        },
        Err(_full) if away && shared.overflow == Overflow::End => {
            shared.end(st, EndReason::Overflow, None);
            SendStep::Closed
        }
        Err(_full) => SendStep::Full,
    }
}

/// A send of a server session in a shared store: the message is recorded there before it
/// is queued for the client, so that whichever server resumes the session has it.
async fn send_durable(
    shared: &Shared,
    durable: &Durable,
    msg: Message,
    mark: Option<tether_proto::Bytes>,
) -> Result<()> {
    send_durable_batch(shared, durable, vec![msg], mark, false).await
}

/// Most messages recorded in one store request (a script's arguments are bounded).
const RECORD_BATCH: usize = 1000;

/// How many of `batch` the replay buffer takes now (at most [`RECORD_BATCH`]).
fn room_for(st: &State, batch: &[(Kind, tether_proto::Bytes)]) -> usize {
    let config = st.session.config();
    let (mut count, mut bytes) = st.session.buffered();
    let mut fits = 0;
    for (_, payload) in batch.iter().take(RECORD_BATCH) {
        let full = count > 0
            && (count >= config.max_buffered_messages
                || bytes.saturating_add(payload.len()) > config.max_buffered_bytes);
        if full {
            break;
        }
        count += 1;
        bytes += payload.len();
        fits += 1;
    }
    fits
}

/// Sends of a server session in a shared store: the messages are recorded there (as many
/// as the buffer takes at a time, in one request) before they are queued for the client,
/// so that whichever server resumes the session has them. The mark goes with the last.
/// `answering` (replies): every message the application took so far is recorded delivered
/// in the same request (in the first, when the buffer splits the replies).
async fn send_durable_batch(
    shared: &Shared,
    durable: &Durable,
    msgs: Vec<Message>,
    mark: Option<tether_proto::Bytes>,
    answering: bool,
) -> Result<()> {
    let mut rest: VecDeque<(Kind, tether_proto::Bytes)> = msgs.iter().map(message_parts).collect();
    let _turn = durable.send_turn.lock().await;
    if answering && rest.is_empty() {
        // No reply: the deliveries alone.
        let (id, progress) = {
            let st = shared.lock();
            if st.ended.is_some() {
                return Err(Error::ConnectionClosed);
            }
            (st.session.id(), taken_progress(&st))
        };
        record(shared, durable, id, Change::Progress(progress)).await?;
        confirm(shared, &mut shared.lock(), progress.delivered);
        return Ok(());
    }
    let mut commit = answering;
    while !rest.is_empty() {
        let (id, first_seq, progress, take) = loop {
            let notified = shared.to_send.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = shared.lock();
                if st.ended.is_some() || st.closing.is_some() {
                    return Err(Error::ConnectionClosed);
                }
                let take = room_for(&st, rest.make_contiguous());
                if take > 0 {
                    let id = st.session.id();
                    let progress = if commit {
                        taken_progress(&st)
                    } else {
                        progress_of(&st)
                    };
                    break (id, st.session.sent() + 1, progress, take);
                }
                if !st.session.is_up() && shared.overflow == Overflow::End {
                    shared.end(&mut st, EndReason::Overflow, None);
                    return Err(Error::ConnectionClosed);
                }
            }
            notified.await;
        };
        let chunk: Vec<_> = rest.drain(..take).collect();
        let chunk_mark = if rest.is_empty() { mark.clone() } else { None };
        let change = Change::Sent {
            first_seq,
            messages: chunk.clone(),
            mark: chunk_mark.clone(),
            progress,
        };
        record(shared, durable, id, change).await?;
        let mut st = shared.lock();
        if st.ended.is_some() {
            return Err(Error::ConnectionClosed);
        }
        for (kind, payload) in chunk {
            // Room was checked with the turn held, and only sends take room.
            if st.session.send(kind, payload).is_err() {
                return Err(Error::ConnectionClosed);
            }
        }
        if let Some(mark) = chunk_mark {
            st.session.set_mark(mark);
        }
        if commit {
            confirm(shared, &mut st, progress.delivered);
            commit = false;
        }
        if st.session.is_up() {
            shared.to_link.notify_waiters();
        }
    }
    Ok(())
}

/// The counts to record with replies: every delivery the application took, recorded or not.
fn taken_progress(st: &State) -> Progress {
    Progress {
        delivered: st.session.delivered(),
        acknowledged: st.session.peer_delivered(),
    }
}

/// The store recorded the first `delivered` deliveries: they may be acknowledged.
fn confirm(shared: &Shared, st: &mut State, delivered: u64) {
    let timer_before = st.session.poll_timeout();
    st.session.confirm_delivered(delivered, now());
    if st.session.has_transmit() || (timer_before.is_none() && st.session.poll_timeout().is_some())
    {
        shared.to_link.notify_waiters();
    }
}

/// The counts a shared store keeps for a session: confirmed deliveries, and the peer's.
fn progress_of(st: &State) -> Progress {
    Progress {
        delivered: st.session.ackable(),
        acknowledged: st.session.peer_delivered(),
    }
}

/// Records a change of a durable session; retries while the store is unavailable (with a
/// pause growing to 2 s), writes the session whole again if the store lost it, and ends
/// the session here if another server took it. Fails only once the session ended.
async fn record(shared: &Shared, durable: &Durable, id: SessionId, change: Change) -> Result<()> {
    let mut pause = Duration::from_millis(50);
    loop {
        match durable
            .store
            .record(id, durable.holder, change.clone(), durable.ttl)
            .await
        {
            Ok(Recorded::Done) => return Ok(()),
            Ok(Recorded::Moved) => {
                let mut st = shared.lock();
                shared.end(&mut st, EndReason::Moved, None);
                return Err(Error::ConnectionClosed);
            }
            Ok(Recorded::Missing) => {
                // The store lost it (a restart without persistence): this server's memory
                // is the session, so write it whole again, then the change.
                let snapshot = shared.lock().session.snapshot();
                match durable
                    .store
                    .save(id, durable.holder, snapshot, durable.ttl)
                    .await
                {
                    Ok(()) => {
                        tracing::warn!(%id, "session store had lost the session; written again");
                        continue;
                    }
                    Err(e) => tracing::warn!(%id, error = %e, "session store: writing failed"),
                }
            }
            Err(e) => tracing::warn!(%id, error = %e, "session store: recording failed; retrying"),
        }
        if shared.lock().ended.is_some() {
            return Err(Error::ConnectionClosed);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// `recv` of a server session in a shared store: deliveries are recorded there (up to
/// `max` messages waiting, in one request) before the messages are returned, so that no
/// server delivers them again.
async fn recv_durable(
    shared: &Shared,
    durable: &Durable,
    max: usize,
) -> Option<Result<Vec<Message>>> {
    let mut turn = durable.recv_turn.lock().await;
    if turn.is_none() {
        if let Err(ready) = take_waiting(shared, &mut turn, max).await {
            return ready;
        }
    }
    let n = turn.as_ref().map_or(0, |(n, _)| *n);
    let (id, mut progress) = {
        let st = shared.lock();
        (st.session.id(), progress_of(&st))
    };
    progress.delivered = n;
    if record(shared, durable, id, Change::Progress(progress))
        .await
        .is_err()
    {
        // The session ended (here, or it moved): these messages were not taken here; the
        // server that goes on with the session delivers them.
        turn.take();
        let mut st = shared.lock();
        return st.errors.pop_front().map(Err);
    }
    confirm(shared, &mut shared.lock(), n);
    turn.take().map(|(_, msgs)| Ok(msgs))
}

/// Messages taken from a durable session and not yet recorded delivered: the count of
/// deliveries through the last of them, and the messages.
type RecvTurn = Option<(u64, Vec<Message>)>;

/// Waits for messages and takes those waiting, up to `max` (at least one), into `turn`;
/// `Err` with what to return instead (an error, or `None` once the session ended).
async fn take_waiting(
    shared: &Shared,
    turn: &mut RecvTurn,
    max: usize,
) -> std::result::Result<(), Option<Result<Vec<Message>>>> {
    loop {
        let notified = shared.to_recv.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let mut st = shared.lock();
            if let Some(e) = st.errors.pop_front() {
                return Err(Some(Err(e)));
            }
            let mut taken = Vec::new();
            while taken.len() < max.max(1) {
                let Some((kind, payload)) = st.session.poll_message(now()) else {
                    break;
                };
                taken.push(to_message(kind, payload));
            }
            if !taken.is_empty() {
                *turn = Some((st.session.delivered(), taken));
                return Ok(());
            }
            if st.ended.is_some() {
                return Err(None);
            }
        }
        notified.await;
    }
}

/// `recv_batch` of a session outside a shared store: waits for one message, then takes what
/// else is waiting, up to `max`.
async fn recv_batch_on(handle: &SessionHandle, max: usize) -> Option<Result<Vec<Message>>> {
    let first = match recv_waiting(&handle.shared).await? {
        Ok(msg) => msg,
        Err(e) => return Some(Err(e)),
    };
    let mut msgs = vec![first];
    let shared = &*handle.shared;
    let mut st = shared.lock();
    while msgs.len() < max && st.errors.is_empty() {
        match try_recv(shared, &mut st) {
            Some(Some(Ok(msg))) => msgs.push(msg),
            _ => break,
        }
    }
    Some(Ok(msgs))
}

impl SessionSender {
    /// As [`SessionHandle::is_connected`]: true while a connection carries the session (a
    /// producer can tell whether what it sends goes out now or waits for a resume).
    pub fn is_connected(&self) -> bool {
        self.shared.lock().link != 0
    }

    /// As [`SessionHandle::send`].
    pub async fn send(&self, msg: impl Into<Message>) -> Result<()> {
        send_on(&self.shared, msg.into(), None).await
    }

    /// As [`SessionHandle::send_marked`].
    pub async fn send_marked(
        &self,
        msg: impl Into<Message>,
        mark: impl Into<tether_proto::Bytes>,
    ) -> Result<()> {
        send_on(&self.shared, msg.into(), Some(Box::new(mark.into()))).await
    }
}

/// Sets a session's mark without a message.
async fn set_mark_on(shared: &Shared, mark: tether_proto::Bytes) -> Result<()> {
    let Some(durable) = &shared.durable else {
        let mut st = shared.lock();
        if st.ended.is_some() {
            return Err(Error::ConnectionClosed);
        }
        st.session.set_mark(mark);
        return Ok(());
    };
    let _turn = durable.send_turn.lock().await;
    let (id, progress) = {
        let st = shared.lock();
        if st.ended.is_some() {
            return Err(Error::ConnectionClosed);
        }
        (st.session.id(), progress_of(&st))
    };
    let change = Change::Marked {
        mark: mark.clone(),
        progress,
    };
    record(shared, durable, id, change).await?;
    shared.lock().session.set_mark(mark);
    Ok(())
}

impl SessionHandle {
    /// The session's id (on a client, all zeros until the server named it).
    pub fn id(&self) -> SessionId {
        self.shared.lock().session.id()
    }

    /// False for a plain WebSocket peer (a server's handler serving a client without the
    /// resume protocol, or a client that fell back to plain reconnects).
    pub fn is_resumable(&self) -> bool {
        self.shared.lock().resume
    }

    /// True for a server's handler of a session that started on another server sharing the
    /// store (or on this one before a restart), restored from the store: what the previous
    /// handler took and sent is done, and this handler goes on from there.
    pub fn is_restored(&self) -> bool {
        self.shared.lock().restored
    }

    /// Messages this end's application sent in the session (on a restored handler, those of
    /// its predecessors included): a handler that numbers its messages goes on from here.
    pub fn sent(&self) -> u64 {
        self.shared.lock().session.sent()
    }

    /// Messages of the peer this end's application took in the session (predecessors'
    /// included).
    pub fn delivered(&self) -> u64 {
        self.shared.lock().session.delivered()
    }

    /// True while a connection carries the session.
    pub fn is_connected(&self) -> bool {
        self.shared.lock().link != 0
    }

    /// Messages sent and not yet acknowledged by the peer's application, and their bytes.
    pub fn unacknowledged(&self) -> (usize, usize) {
        let st = self.shared.lock();
        if st.resume {
            st.session.buffered()
        } else {
            (
                st.plain_out.len(),
                st.plain_out.iter().map(Message::len).sum(),
            )
        }
    }

    /// A sending half for another task.
    pub fn sender(&self) -> SessionSender {
        SessionSender {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Sends a message. It is numbered and kept until the peer's application takes it; while
    /// disconnected it waits in the replay buffer. When the buffer is full, waits for
    /// acknowledgements (backpressure; nothing is dropped). Fails once the session ended.
    ///
    /// **Cancel safety:** a send cancelled while waiting for room sent nothing.
    pub async fn send(&self, msg: impl Into<Message>) -> Result<()> {
        send_on(&self.shared, msg.into(), None).await
    }

    /// Sends a message, as [`send`](Self::send), and sets the session's *mark* with it: a few
    /// bytes of the application's, kept with the session and restored with it wherever it
    /// resumes ([`mark`](Self::mark)). A handler that relays a feed marks each message with
    /// its position in the feed, so that a handler restored on another server goes on right
    /// after the last message the session got. In a shared store, message and mark are
    /// recorded together (atomically).
    pub async fn send_marked(
        &self,
        msg: impl Into<Message>,
        mark: impl Into<tether_proto::Bytes>,
    ) -> Result<()> {
        send_on(&self.shared, msg.into(), Some(Box::new(mark.into()))).await
    }

    /// Sends several messages, in order, as [`send`](Self::send) would one after the other
    /// (the mark, if any, goes with the last). With a shared store they are recorded in one
    /// request (as many as the buffer takes at a time) instead of one each: a handler that
    /// answers batches of messages costs the store one round trip per batch.
    pub async fn send_batch(
        &self,
        msgs: Vec<Message>,
        mark: Option<tether_proto::Bytes>,
    ) -> Result<()> {
        let shared = &*self.shared;
        if let Some(durable) = &shared.durable {
            return send_durable_batch(shared, durable, msgs, mark, false).await;
        }
        let last = msgs.len().saturating_sub(1);
        for (i, msg) in msgs.into_iter().enumerate() {
            let mark = if i == last { mark.clone() } else { None };
            send_on(shared, msg, mark.map(Box::new)).await?;
        }
        Ok(())
    }

    /// As [`recv`](Self::recv), taking every message already waiting, up to `max` (at least
    /// one): with a shared store, their deliveries are recorded in one request.
    ///
    /// **Cancel safety:** cancel-safe.
    pub async fn recv_batch(&self, max: usize) -> Option<Result<Vec<Message>>> {
        let shared = &*self.shared;
        if let Some(durable) = &shared.durable {
            return recv_durable(shared, durable, max).await;
        }
        release_acks(shared, &mut shared.lock());
        recv_batch_on(self, max.max(1)).await
    }

    /// Takes requests: every message already waiting, up to `max` (at least one), as
    /// [`recv_batch`](Self::recv_batch) does, except that with a shared store their
    /// deliveries are recorded only with the answer, [`reply`](Self::reply). If the session
    /// moves to another server (or this one dies) before the answer was recorded, the
    /// answer is not sent from here, and the requests are delivered again to the handler
    /// there: every request is answered exactly once. (Effects of the first handling other
    /// than the answer may happen twice: make them idempotent, or keyed by
    /// `(session.id(), request number)`.) Without a shared store, the requests are taken as
    /// by `recv_batch`.
    ///
    /// With either store, the requests are not acknowledged to the client until `reply` (or
    /// [`recv`](Self::recv) / `recv_batch`, which acknowledge every delivery taken before
    /// theirs), so the answers reach the client before the acknowledgement does: a client
    /// that closes once everything it sent is acknowledged has had every answer. Reply to
    /// each batch, with no messages if there is nothing to answer.
    ///
    /// **Cancel safety:** cancel-safe.
    pub async fn recv_requests(&self, max: usize) -> Option<Result<Vec<Message>>> {
        let shared = &*self.shared;
        let Some(durable) = &shared.durable else {
            // Acknowledged once answered, as with a shared store: what this batch takes is
            // not acknowledged until `reply` has queued the answers (which then go out
            // before, or with, the acknowledgement).
            {
                let mut st = shared.lock();
                if st.resume {
                    st.session.hold_new_acks();
                }
            }
            return recv_batch_on(self, max.max(1)).await;
        };
        let mut turn = durable.recv_turn.lock().await;
        if turn.is_none() {
            if let Err(ready) = take_waiting(shared, &mut turn, max).await {
                return ready;
            }
        }
        turn.take().map(|(_, msgs)| Ok(msgs))
    }

    /// Answers the requests taken with [`recv_requests`](Self::recv_requests): sends
    /// `replies` as [`send_batch`](Self::send_batch) does, and with a shared store records
    /// them and the deliveries of every message taken so far in the same request (atomically),
    /// so that a request is either answered and done, or neither. `replies` may be empty.
    /// Fails once the session ended (moved, here, to another server: the requests are then
    /// answered there).
    pub async fn reply(&self, replies: Vec<Message>) -> Result<()> {
        let shared = &*self.shared;
        if let Some(durable) = &shared.durable {
            return send_durable_batch(shared, durable, replies, None, true).await;
        }
        if shared.lock().ended.is_some() {
            return Err(Error::ConnectionClosed);
        }
        let sent = self.send_batch(replies, None).await;
        release_acks(shared, &mut shared.lock());
        sent
    }

    /// Sets the session's mark without sending (for example a feed's position when the
    /// session starts following it). Fails once the session ended.
    pub async fn set_mark(&self, mark: impl Into<tether_proto::Bytes>) -> Result<()> {
        set_mark_on(&self.shared, mark.into()).await
    }

    /// The session's mark, as last set here or by a predecessor of a restored handler.
    pub fn mark(&self) -> Option<tether_proto::Bytes> {
        self.shared.lock().session.mark().cloned()
    }

    /// The next message of the peer, in order and exactly once across reconnects. `None`
    /// once the session ended; before that, errors: [`Error::SessionLost`] (after which,
    /// with [`OnLost::NewSession`], messages of the new session follow), or the error that
    /// ended the session. Taking a message acknowledges it (coalesced).
    ///
    /// **Cancel safety:** cancel-safe.
    pub async fn recv(&self) -> Option<Result<Message>> {
        let shared = &*self.shared;
        if let Some(durable) = &shared.durable {
            // Boxed, as in `send_on`.
            return Box::pin(recv_durable(shared, durable, 1))
                .await
                .map(|r| r.map(|mut msgs| msgs.remove(0)));
        }
        {
            let mut st = shared.lock();
            release_acks(shared, &mut st);
            // Fast path: a message is waiting (no waiter registered).
            if let Some(ready) = try_recv(shared, &mut st) {
                return ready;
            }
        }
        recv_waiting(shared).await
    }

    /// Ends the session gracefully: waits until the peer acknowledged every message sent
    /// (across reconnects, if need be), then closes the connection with 1000, which ends the
    /// session on both ends. Bound the wait with `tokio::time::timeout` if the peer may
    /// never come back.
    pub async fn close(&self) -> Result<()> {
        let shared = &*self.shared;
        loop {
            let notified = shared.to_send.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = shared.lock();
                if st.ended.is_some() {
                    return Ok(());
                }
                let pending = if st.resume {
                    st.session.buffered().0
                } else {
                    st.plain_out.len()
                };
                if pending == 0 {
                    request_close(shared, &mut st);
                    break;
                }
            }
            notified.await;
        }
        // Wait for the close to finish.
        loop {
            let notified = shared.to_send.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if shared.lock().ended.is_some() {
                return Ok(());
            }
            notified.await;
        }
    }

    /// How the session ended, once it did.
    pub fn end_reason(&self) -> Option<EndReason> {
        self.shared.lock().ended.clone()
    }
}

/// `recv` of a session without a shared store: the next message, waiting for it if need
/// be. (`recv_batch_on` starts with it, as it must not end a hold of `recv_requests`.)
async fn recv_waiting(shared: &Shared) -> Option<Result<Message>> {
    // Fast path: a message is waiting (no waiter registered).
    if let Some(ready) = try_recv(shared, &mut shared.lock()) {
        return ready;
    }
    loop {
        let notified = shared.to_recv.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(ready) = try_recv(shared, &mut shared.lock()) {
            return ready;
        }
        notified.await;
    }
}

/// Ends a hold of `recv_requests` (a session without a shared store): what was taken since
/// may be acknowledged, and the link is woken if that gives it something to do.
fn release_acks(shared: &Shared, st: &mut State) {
    if !st.resume || !st.session.acks_held() {
        return;
    }
    let timer_before = st.session.poll_timeout();
    st.session.release_acks(now());
    if st.session.has_transmit() || (timer_before.is_none() && st.session.poll_timeout().is_some())
    {
        shared.to_link.notify_waiters();
    }
}

/// What `recv` returns now, if anything (`None`: wait).
fn try_recv(shared: &Shared, st: &mut State) -> Option<Option<Result<Message>>> {
    if let Some(e) = st.errors.pop_front() {
        return Some(Some(Err(e)));
    }
    if st.resume {
        let timer_before = st.session.poll_timeout();
        if let Some((kind, payload)) = st.session.poll_message(now()) {
            if st.session.has_transmit()
                || (timer_before.is_none() && st.session.poll_timeout().is_some())
            {
                shared.to_link.notify_waiters();
            }
            return Some(Some(Ok(to_message(kind, payload))));
        }
    } else if let Some(msg) = st.plain_in.pop_front() {
        return Some(Some(Ok(msg)));
    }
    st.ended.is_some().then_some(None)
}

/// Asks the link to close with 1000; with no link up, ends the session here.
fn request_close(shared: &Shared, st: &mut State) {
    if st.closing.is_none() {
        st.closing = Some((close_code::NORMAL, String::new()));
    }
    if st.link == 0 {
        shared.end(st, EndReason::Closed, None);
    } else {
        shared.to_link.notify_waiters();
    }
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if st.ended.is_none() {
            request_close(&self.shared, &mut st);
        }
    }
}

fn to_message(kind: Kind, payload: tether_proto::Bytes) -> Message {
    match kind {
        Kind::Binary => Message::Binary(payload),
        // The session only holds text that arrived in text frames, which the connection
        // validated, or that the application sent as text.
        Kind::Text => match tether_proto::Utf8Bytes::try_from(payload) {
            Ok(t) => Message::Text(t),
            Err(_) => unreachable!("text validated on arrival"),
        },
    }
}

// ----- one connection carrying the session -----

/// How a link ended.
enum LinkEnd {
    /// The connection closed: the peer's close code (1006 without a closing handshake) and
    /// whether this end had asked to close.
    Closed { code: u16, asked: bool },
    /// A transport error, a keepalive timeout, a protocol violation.
    Failed(Error),
    /// The peer broke the resume protocol: closed with 1002.
    Protocol(SessionError),
    /// Another connection took the session over.
    Superseded,
}

impl LinkEnd {
    fn describe(&self) -> String {
        match self {
            Self::Closed { code, .. } => format!("closed with {code}"),
            Self::Failed(e) => e.to_string(),
            Self::Protocol(e) => e.to_string(),
            Self::Superseded => "superseded by another connection".to_owned(),
        }
    }
}

/// Carries the session over one connection until it ends: writes what the session queues,
/// feeds it what arrives, runs its acknowledgement timer.
fn run_link<S>(shared: &Shared, ws: WebSocket<S>, gen: u64) -> impl Future<Output = LinkEnd> + '_
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    // Split before the future is made: it then holds the two halves, not the connection
    // (which would stay part of its size for the connection's life).
    let (tx, rx) = ws.split();
    link(shared, tx, rx, gen)
}

async fn link<S>(shared: &Shared, mut tx: WsSender<S>, mut rx: WsReceiver<S>, gen: u64) -> LinkEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let end = {
        let write = write_loop(shared, &mut tx, gen);
        let read = read_loop(shared, &mut rx, gen);
        tokio::pin!(write, read);
        tokio::select! {
            end = &mut write => end,
            end = &mut read => end,
        }
    };
    // Finish the connection as its ending requires; bounded by the connection's close
    // timeout, since the reader completes the closing handshake.
    let (code, reason) = match &end {
        LinkEnd::Superseded => (SUPERSEDED, "superseded"),
        LinkEnd::Protocol(_) => (close_code::PROTOCOL_ERROR, "resume protocol error"),
        LinkEnd::Closed { .. } | LinkEnd::Failed(_) => return end,
    };
    let _ = tx.close(code, reason).await;
    while let Some(Ok(_)) = rx.recv().await {}
    end
}

async fn write_loop<S>(shared: &Shared, tx: &mut WsSender<S>, gen: u64) -> LinkEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut batch = Vec::new();
    let mut closed = false;
    loop {
        let notified = shared.to_link.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let (deadline, close) = {
            let mut st = shared.lock();
            if st.link != gen {
                return if st.ended.is_some() && st.ended != Some(EndReason::Moved) {
                    LinkEnd::Closed {
                        code: close_code::NORMAL,
                        asked: true,
                    }
                } else {
                    LinkEnd::Superseded
                };
            }
            if st.resume {
                st.session.piggyback_ack();
                while let Some(part) = st.session.poll_transmit_parts() {
                    batch.push(part);
                }
            } else {
                batch.extend(st.plain_out.drain(..).map(|m| match m {
                    Message::Text(t) => (OpCode::Text, &[][..], t.into_bytes()),
                    Message::Binary(b) => (OpCode::Binary, &[][..], b),
                }));
            }
            let deadline = st.session.poll_timeout();
            (deadline, if closed { None } else { st.closing.clone() })
        };
        if closed {
            // Our Close went out: nothing more may be written (acknowledgements taken
            // meanwhile are moot, the session is ending).
            batch.clear();
        }
        let wrote = !batch.is_empty();
        for (opcode, prefix, payload) in batch.drain(..) {
            if let Err(e) = tx.feed_parts(opcode, prefix, payload).await {
                return LinkEnd::Failed(e);
            }
        }
        if wrote {
            if let Err(e) = tx.flush().await {
                return LinkEnd::Failed(e);
            }
        }
        if let Some((code, reason)) = close {
            // The reader finishes the closing handshake and ends the link.
            closed = true;
            if let Err(e) = tx.close(code, &reason).await {
                return LinkEnd::Failed(e);
            }
        }
        match deadline {
            Some(at) => {
                let at = tokio::time::Instant::from_std(at);
                tokio::select! {
                    _ = &mut notified => {}
                    _ = tokio::time::sleep_until(at) => {
                        let mut st = shared.lock();
                        if st.link == gen {
                            st.session.handle_timeout(now());
                        }
                    }
                }
            }
            None => notified.await,
        }
    }
}

async fn read_loop<S>(shared: &Shared, rx: &mut WsReceiver<S>, gen: u64) -> LinkEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let msg = match rx.recv().await {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => return LinkEnd::Failed(e),
            None => {
                let asked = shared.lock().closing.is_some();
                return LinkEnd::Closed {
                    code: rx.close_code(),
                    asked,
                };
            }
        };
        let mut st = shared.lock();
        if st.link != gen {
            // Superseded: what still arrives here belongs to no one (the new connection
            // resumes right after what the application took).
            continue;
        }
        if !st.resume {
            st.plain_in.push_back(msg);
            shared.to_recv.notify_waiters();
            continue;
        }
        let (op, payload) = match msg {
            Message::Text(t) => (OpCode::Text, t.into_bytes()),
            Message::Binary(b) => (OpCode::Binary, b),
        };
        let buffered = st.session.buffered().0;
        let had_message = st.session.has_message();
        if let Err(e) = st.session.receive(op, payload) {
            return LinkEnd::Protocol(e);
        }
        if st.session.buffered().0 < buffered {
            shared.to_send.notify_waiters();
        }
        if !had_message && st.session.has_message() {
            shared.to_recv.notify_waiters();
        }
    }
}

/// Reads the first message of a connection, which must be a resume-protocol control
/// message.
async fn read_control<S>(ws: &mut WebSocket<S>, within: Duration) -> Result<Control, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(within, ws.recv()).await {
        Err(_) => Err("no resume handshake in time".to_owned()),
        Ok(None) => Err(format!(
            "closed with {} during the resume handshake",
            ws.close_code()
        )),
        Ok(Some(Err(e))) => Err(e.to_string()),
        Ok(Some(Ok(Message::Binary(b)))) => Control::decode(&b).map_err(|e| e.to_string()),
        Ok(Some(Ok(Message::Text(_)))) => Err("text before the resume handshake".to_owned()),
    }
}

// ----- the client -----

/// Settings of a client session. Made by [`ClientBuilder::session`] or
/// [`Reconnect::session`]; [`start`](Self::start) begins it.
pub struct SessionBuilder {
    reconnect: Reconnect,
    config: SessionConfig,
    on_lost: OnLost,
    fallback: bool,
    handshake_timeout: Duration,
    on_event: Option<Arc<OnEvent>>,
}

impl fmt::Debug for SessionBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionBuilder")
            .field("reconnect", &self.reconnect)
            .field("config", &self.config)
            .field("on_lost", &self.on_lost)
            .field("fallback", &self.fallback)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// A resumable session over connections made with these settings and the default
    /// reconnect policy. Offers the subprotocol [`SUBPROTOCOL`] before any other.
    pub fn session(self) -> SessionBuilder {
        self.reconnecting().session()
    }
}

impl Reconnect {
    /// A resumable session over this reconnect loop: its policy decides when and whether to
    /// reconnect, and a fatal error ends the session.
    pub fn session(self) -> SessionBuilder {
        SessionBuilder {
            reconnect: self.map_builder(|b| b.offer_first(SUBPROTOCOL)),
            config: SessionConfig::default(),
            on_lost: OnLost::default(),
            fallback: false,
            handshake_timeout: Duration::from_secs(10),
            on_event: None,
        }
    }
}

impl SessionBuilder {
    /// Replay buffer limits and acknowledgement timing. Default: [`SessionConfig::default`]
    /// (4,096 messages, 1 MiB, an ack every 32 messages or 100 ms).
    pub fn config(mut self, config: SessionConfig) -> Self {
        self.config = config;
        self
    }

    /// What to do when the server cannot resume the session. Default: [`OnLost::Fail`].
    pub fn on_lost(mut self, on_lost: OnLost) -> Self {
        self.on_lost = on_lost;
        self
    }

    /// Against a server that does not offer sessions, go on as a plain reconnecting client
    /// (no guarantees: messages in flight at a break are lost) instead of failing. Default:
    /// fail with [`Error::SessionsNotOffered`].
    pub fn fallback_to_plain(mut self, fallback: bool) -> Self {
        self.fallback = fallback;
        self
    }

    /// Longest wait for the server's WELCOME after the WebSocket opened. Default: 10 s.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// A callback for every [`SessionEvent`].
    pub fn on_event<F>(mut self, callback: F) -> Self
    where
        F: Fn(&SessionEvent<'_>) + Send + Sync + 'static,
    {
        self.on_event = Some(Arc::new(callback));
        self
    }

    /// Starts the session in a background task (on the current tokio runtime) and returns
    /// its handle at once: sends wait in the buffer until the first connection is up.
    pub fn start(self) -> SessionHandle {
        let session = Session::new(SessionId::from_bytes([0; 16]), self.config.clone());
        let shared = Shared::new(
            Side::Client,
            true,
            session,
            self.on_event.clone(),
            None,
            Overflow::Wait,
            None,
        );
        let task = Arc::clone(&shared);
        let connections = self.reconnect.clone().stream();
        tokio::spawn(async move {
            let options = ClientOptions {
                config: self.config,
                on_lost: self.on_lost,
                fallback: self.fallback,
                handshake_timeout: self.handshake_timeout,
            };
            run_client(task, connections, options).await;
        });
        SessionHandle { shared }
    }
}

struct ClientOptions {
    config: SessionConfig,
    on_lost: OnLost,
    fallback: bool,
    handshake_timeout: Duration,
}

/// Waits until the application asks to close or drops its handle with no link up.
async fn closing(shared: &Shared) {
    loop {
        let notified = shared.to_link.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let st = shared.lock();
            if st.closing.is_some() || st.ended.is_some() {
                return;
            }
        }
        notified.await;
    }
}

async fn run_client(shared: Arc<Shared>, mut connections: Reconnecting, options: ClientOptions) {
    // The id the server gave, once it did.
    let mut known: Option<SessionId> = None;
    loop {
        let next = tokio::select! {
            next = connections.next() => next,
            _ = closing(&shared) => {
                let mut st = shared.lock();
                shared.end(&mut st, EndReason::Closed, None);
                return;
            }
        };
        let mut ws = match next {
            Some(Ok(ws)) => ws,
            Some(Err(e)) => {
                let mut st = shared.lock();
                let reason = EndReason::Failed(e.to_string());
                shared.end(&mut st, reason, Some(e));
                return;
            }
            None => {
                let mut st = shared.lock();
                shared.end(
                    &mut st,
                    EndReason::Failed("no more connections".into()),
                    None,
                );
                return;
            }
        };
        if ws.subprotocol() != Some(SUBPROTOCOL) {
            if !options.fallback {
                let _ = ws.close(close_code::NORMAL, "").await;
                let mut st = shared.lock();
                let e = Error::SessionsNotOffered;
                shared.end(&mut st, EndReason::Failed(e.to_string()), Some(e));
                return;
            }
            let gen = {
                let mut st = shared.lock();
                if st.resume {
                    // Everything waiting goes out as plain messages from now on.
                    let waiting: Vec<Message> = st
                        .session
                        .unacknowledged()
                        .map(|(_, k, p)| to_message(k, p.clone()))
                        .collect();
                    st.plain_out.extend(waiting);
                    st.session = Session::new(st.session.id(), options.config.clone());
                    st.resume = false;
                }
                st.links += 1;
                st.link = st.links;
                st.link
            };
            let end = run_link(&shared, ws, gen).await;
            if finish_link(&shared, gen, &end) {
                return;
            }
            continue;
        }

        // The resume handshake.
        let delivered = shared.lock().session.delivered();
        let hello = Control::Hello {
            id: known,
            delivered,
        };
        if ws.send(Message::Binary(hello.encode())).await.is_err() {
            continue;
        }
        let welcome = match read_control(&mut ws, options.handshake_timeout).await {
            Ok(Control::Welcome {
                id,
                resumed,
                delivered,
                reason,
            }) => (id, resumed, delivered, reason),
            Ok(_) => {
                fail_protocol(&shared, &mut ws, SessionError::UnexpectedHandshake).await;
                return;
            }
            Err(why) => {
                tracing::debug!(why, "resume handshake did not complete; reconnecting");
                continue;
            }
        };
        let (id, resumed, peer_delivered, reason) = welcome;
        let step = {
            let mut st = shared.lock();
            client_link_up(
                &shared,
                &mut st,
                known,
                id,
                resumed,
                peer_delivered,
                &reason,
                &options,
            )
        };
        let (gen, lost) = match step {
            ClientStep::Ended => {
                let _ = ws.close(close_code::NORMAL, "").await;
                return;
            }
            ClientStep::Protocol(e) => {
                fail_protocol(&shared, &mut ws, e).await;
                return;
            }
            ClientStep::Up { gen, lost } => (gen, lost),
        };
        if let Some(lost) = lost {
            if options.on_lost == OnLost::Fail {
                let _ = ws.close(close_code::NORMAL, "session lost").await;
                let mut st = shared.lock();
                shared.end(&mut st, EndReason::Lost(lost), None);
                return;
            }
        }
        known = Some(id);
        let end = run_link(&shared, ws, gen).await;
        if let LinkEnd::Closed {
            code: SUPERSEDED,
            asked: false,
        } = end
        {
            let mut st = shared.lock();
            let lost = SessionLost {
                reason: LostReason::Superseded,
                id,
                unacknowledged: unacknowledged(&st),
            };
            shared.emit(&SessionEvent::Lost(&lost));
            let reason = EndReason::Lost(LostReason::Superseded);
            shared.end(&mut st, reason, Some(Error::SessionLost(Box::new(lost))));
            return;
        }
        if finish_link(&shared, gen, &end) {
            return;
        }
    }
}

enum ClientStep {
    Ended,
    Protocol(SessionError),
    Up { gen: u64, lost: Option<LostReason> },
}

/// Applies the server's WELCOME: resumes, or reports the session lost and starts the new
/// one the server named.
#[allow(clippy::too_many_arguments)]
fn client_link_up(
    shared: &Shared,
    st: &mut State,
    known: Option<SessionId>,
    id: SessionId,
    resumed: bool,
    peer_delivered: u64,
    reason: &str,
    options: &ClientOptions,
) -> ClientStep {
    if st.ended.is_some() {
        return ClientStep::Ended;
    }
    let mut lost = None;
    match known {
        Some(asked) if !resumed || id != asked => {
            let session_lost = SessionLost {
                reason: LostReason::parse(reason),
                id: asked,
                unacknowledged: unacknowledged(st),
            };
            shared.emit(&SessionEvent::Lost(&session_lost));
            lost = Some(session_lost.reason.clone());
            st.errors
                .push_back(Error::SessionLost(Box::new(session_lost)));
            shared.to_recv.notify_waiters();
            st.session = Session::new(id, options.config.clone());
        }
        Some(_) => {}
        None => st.session.set_id(id),
    }
    let replayed = match st.session.link_up(peer_delivered) {
        Ok(n) => n,
        Err(e) => return ClientStep::Protocol(e),
    };
    st.links += 1;
    st.link = st.links;
    shared.to_send.notify_waiters();
    if known.is_some() && lost.is_none() {
        shared.emit(&SessionEvent::Resumed { id, replayed });
    } else if lost.is_none() || options.on_lost == OnLost::NewSession {
        shared.emit(&SessionEvent::Connected { id, replayed });
    }
    ClientStep::Up { gen: st.link, lost }
}

fn unacknowledged(st: &State) -> Vec<Message> {
    st.session
        .unacknowledged()
        .map(|(_, k, p)| to_message(k, p.clone()))
        .collect()
}

async fn fail_protocol(shared: &Shared, ws: &mut WebSocket, e: SessionError) {
    let _ = ws
        .close(close_code::PROTOCOL_ERROR, "resume protocol error")
        .await;
    let mut st = shared.lock();
    let reason = EndReason::Failed(e.to_string());
    shared.end(&mut st, reason, Some(Error::Session(e)));
}

/// After a link ended: ends the session if the ending was graceful (or a protocol error),
/// else takes the link down and reports the disconnection. True when the session ended.
fn finish_link(shared: &Shared, gen: u64, end: &LinkEnd) -> bool {
    let mut st = shared.lock();
    if st.ended.is_some() {
        return true;
    }
    if st.link != gen {
        // Superseded (server): the new connection carries on.
        return false;
    }
    let graceful = match end {
        LinkEnd::Closed { code, asked } => *asked || *code == close_code::NORMAL,
        _ => false,
    };
    if graceful || !st.resume && shared.side == Side::Server {
        let asked = st.closing.is_some();
        let reason = if asked {
            EndReason::Closed
        } else {
            EndReason::ClosedByPeer
        };
        shared.end(&mut st, reason, None);
        return true;
    }
    if let LinkEnd::Protocol(e) = end {
        let reason = EndReason::Failed(e.to_string());
        shared.end(&mut st, reason, Some(Error::Session(e.clone())));
        return true;
    }
    st.session.link_down();
    st.link = 0;
    st.away_epoch += 1;
    // A send waiting for room may now have to end the session (Overflow::End).
    shared.to_send.notify_waiters();
    let id = st.session.id();
    let reason = end.describe();
    let code = match end {
        LinkEnd::Closed { code, .. } => *code,
        _ => close_code::ABNORMAL,
    };
    shared.emit(&SessionEvent::Disconnected {
        id,
        code,
        reason: &reason,
    });
    false
}

/// Moves a live session onto a new connection; the WELCOME to send. Fails when the
/// session is ending (`None`) or the client's count breaks the protocol.
fn server_resume(
    shared: &Shared,
    st: &mut State,
    peer_delivered: u64,
) -> std::result::Result<(u64, Control), Option<SessionError>> {
    if st.ended.is_some() {
        return Err(None);
    }
    if st.link != 0 {
        // Another connection carries it: the newer one wins (the client came back before
        // the server noticed the old connection broke).
        st.session.link_down();
        st.link = 0;
        shared.to_link.notify_waiters();
    }
    let replayed = match st.session.link_up(peer_delivered) {
        Ok(n) => n,
        Err(e) => {
            st.session.link_down();
            return Err(Some(e));
        }
    };
    st.links += 1;
    st.link = st.links;
    st.away_epoch += 1;
    let id = st.session.id();
    shared.to_send.notify_waiters();
    shared.emit(&SessionEvent::Resumed { id, replayed });
    let welcome = Control::Welcome {
        id,
        resumed: true,
        delivered: st.session.delivered(),
        reason: String::new(),
    };
    Ok((st.link, welcome))
}

// ----- the server -----

/// Where a server keeps what it needs to resume sessions it does not hold in memory. One
/// session's state is read and written by key; every call is async, so that a store shared
/// by several server processes can implement it (`tether::redis::RedisStore`, feature `redis`).
///
/// A store works in one of two ways, as [`is_shared`](Self::is_shared) says:
///
/// * **Snapshots** (this process only, [`MemoryStore`]): a [`SessionServer`] holds its live
///   sessions itself, writes their [`Snapshot`] with [`save`](Self::save) when their client
///   goes away (and again on each send while it is away), reads with
///   [`load`](Self::load) only a session it does not hold, and calls [`end`](Self::end).
/// * **Shared** by several servers: the server also [`record`](Self::record)s every change
///   as it happens (a new session, each message sent before it goes out, each delivery
///   before the application sees it), takes a session with [`load`](Self::load) even when it
///   holds it (the store decides who holds it now), and learns through
///   [`watch`](Self::watch) that a client resumed elsewhere.
pub trait SessionStore: Send + Sync + 'static {
    /// Records the whole state of a session, to be kept for `ttl` without news. A shared
    /// store makes this server its holder.
    ///
    /// `holder` names the copy of the session in a server's memory that writes: a shared
    /// store records it as the session's holder (see [`Holder`]); a snapshot store may ignore
    /// it.
    fn save(
        &self,
        id: SessionId,
        holder: Holder,
        snapshot: Snapshot,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<()>>;

    /// The state of a session, or why it is gone. A shared store answers [`Lookup::Held`]
    /// when `held` (the copy this server has in memory, if any) holds it still; otherwise it
    /// makes `take_as` the session's holder (later writes by the previous holder answer
    /// [`Recorded::Moved`]) and answers with the state.
    fn load(
        &self,
        id: SessionId,
        take_as: Holder,
        held: Option<Holder>,
    ) -> BoxFuture<'_, Result<Lookup>>;

    /// The session ended: forget its state; a later [`load`](Self::load) reports `reason`
    /// (for a while) instead of [`Lookup::Unknown`]. A shared store ignores the call from a
    /// `holder` that no longer holds the session.
    fn end(&self, id: SessionId, holder: Holder, reason: LostReason) -> BoxFuture<'_, Result<()>>;

    /// True for a store shared by several servers, which must hear of every change
    /// ([`record`](Self::record)). Default: false.
    fn is_shared(&self) -> bool {
        false
    }

    /// Records one change of a session held by this server, which the store keeps for `ttl`
    /// from now. Only called when [`is_shared`](Self::is_shared). Default: nothing to do.
    /// A store that is not shared records nothing.
    fn record(
        &self,
        id: SessionId,
        holder: Holder,
        change: Change,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Recorded>> {
        let _ = (id, holder, change, ttl);
        Box::pin(async { Ok(Recorded::Done) })
    }

    /// Asks to be told (`moved(id)`) when a session may have been taken by another server;
    /// the server then checks with a [`record`](Self::record). Called once, by
    /// [`SessionServer::with_store`]. Default: never tells.
    fn watch(&self, moved: Box<dyn Fn(SessionId) + Send + Sync>) {
        let _ = moved;
    }
}

/// Which copy of a session writes to a shared store: a random number for each copy a server
/// makes (a new session, or one restored from the store). A shared store accepts writes only
/// from the session's current holder, so that neither another server nor an out-of-date copy
/// on the same server (the session moved away and came back) can write over it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Holder(u64);

impl Holder {
    /// A fresh holder.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// Its number.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

/// What a [`SessionStore`] knows of a session.
#[derive(Debug)]
#[non_exhaustive]
pub enum Lookup {
    /// Its state, resumable.
    Found(Snapshot),
    /// This server holds it already (shared stores): its memory is current.
    Held,
    /// It ended, for this reason.
    Gone(LostReason),
    /// Nothing.
    Unknown,
}

/// A change of a session, for [`SessionStore::record`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Change {
    /// A new session: nothing sent or delivered yet.
    Created,
    /// The application sent messages `first_seq`, `first_seq + 1`, … (1, 2, … in the
    /// session), to be kept until the client acknowledges them.
    Sent {
        /// The number of the first.
        first_seq: u64,
        /// The messages: text or binary, and the payload.
        messages: Vec<(Kind, tether_proto::Bytes)>,
        /// The application's new mark, set with the last message
        /// ([`SessionHandle::send_marked`]).
        mark: Option<tether_proto::Bytes>,
        /// The counts as they stand.
        progress: Progress,
    },
    /// The application set its mark ([`SessionHandle::set_mark`]).
    Marked {
        /// The mark.
        mark: tether_proto::Bytes,
        /// The counts as they stand.
        progress: Progress,
    },
    /// The counts moved on.
    Progress(Progress),
}

/// A session's counts, as a shared store keeps them. Either may be lower than what the store
/// has (changes recorded concurrently): the store keeps the higher.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Client messages the server's application took.
    pub delivered: u64,
    /// Server messages the client's application took: those before it can be forgotten.
    pub acknowledged: u64,
}

/// What became of a [`Change`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Recorded {
    /// Recorded.
    Done,
    /// Another server holds the session now: nothing was recorded, and this server must let
    /// the session go.
    Moved,
    /// The store has no such session and no record of its end (it lost its data): nothing
    /// was recorded; the server writes the session whole again with
    /// [`save`](SessionStore::save).
    Missing,
}

/// A [`SessionStore`] in this process's memory: sessions survive reconnects, not a restart.
/// Ended sessions are remembered (to tell `expired` from `unknown`) for an hour, at most
/// 100,000 of them.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<MemoryInner>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    saved: HashMap<SessionId, (Snapshot, tokio::time::Instant)>,
    gone: HashMap<SessionId, (LostReason, tokio::time::Instant)>,
    gone_order: VecDeque<SessionId>,
}

const TOMBSTONE_TIME: Duration = Duration::from_secs(3600);
const TOMBSTONES: usize = 100_000;

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemoryInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl MemoryInner {
    fn bury(&mut self, id: SessionId, reason: LostReason, now: tokio::time::Instant) {
        self.saved.remove(&id);
        if self.gone.insert(id, (reason, now)).is_none() {
            self.gone_order.push_back(id);
        }
        while self.gone_order.len() > TOMBSTONES {
            if let Some(old) = self.gone_order.pop_front() {
                self.gone.remove(&old);
            }
        }
    }
}

impl SessionStore for MemoryStore {
    fn save(
        &self,
        id: SessionId,
        _holder: Holder,
        snapshot: Snapshot,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<()>> {
        let at = tokio::time::Instant::now() + ttl;
        self.lock().saved.insert(id, (snapshot, at));
        Box::pin(async { Ok(()) })
    }

    fn load(
        &self,
        id: SessionId,
        _take_as: Holder,
        _held: Option<Holder>,
    ) -> BoxFuture<'_, Result<Lookup>> {
        let now = tokio::time::Instant::now();
        let mut inner = self.lock();
        let found = match inner.saved.get(&id) {
            Some((snapshot, until)) if *until > now => Lookup::Found(snapshot.clone()),
            Some(_) => {
                inner.bury(id, LostReason::Expired, now);
                Lookup::Gone(LostReason::Expired)
            }
            None => match inner.gone.get(&id) {
                Some((reason, since)) if now.duration_since(*since) < TOMBSTONE_TIME => {
                    Lookup::Gone(reason.clone())
                }
                _ => Lookup::Unknown,
            },
        };
        Box::pin(async { Ok(found) })
    }

    fn end(&self, id: SessionId, _holder: Holder, reason: LostReason) -> BoxFuture<'_, Result<()>> {
        self.lock().bury(id, reason, tokio::time::Instant::now());
        Box::pin(async { Ok(()) })
    }
}

/// Settings of a [`SessionServer`].
#[derive(Clone, Debug)]
pub struct SessionServerConfig {
    /// Replay buffer limits and acknowledgement timing of each session. Default:
    /// [`SessionConfig::default`].
    pub session: SessionConfig,
    /// How long a session whose client is away is kept. Default: 2 minutes.
    pub ttl: Duration,
    /// Longest wait for a client's HELLO after the WebSocket opened. Default: 10 s.
    pub handshake_timeout: Duration,
    /// Sends to an away client with a full buffer. Default: [`Overflow::Wait`].
    pub overflow: Overflow,
}

impl Default for SessionServerConfig {
    fn default() -> Self {
        Self {
            session: SessionConfig::default(),
            ttl: Duration::from_secs(120),
            handshake_timeout: Duration::from_secs(10),
            overflow: Overflow::Wait,
        }
    }
}

type Handler = dyn Fn(SessionHandle) -> BoxFuture<'static, ()> + Send + Sync;

struct Registry {
    config: SessionServerConfig,
    handler: Box<Handler>,
    live: Mutex<HashMap<SessionId, Arc<Shared>>>,
    store: Arc<dyn SessionStore>,
    /// The store is shared with other servers: changes are recorded as they happen.
    shared_store: bool,
    /// The task that keeps connected sessions alive in a shared store runs.
    keeping: std::sync::atomic::AtomicBool,
    on_event: std::sync::OnceLock<Arc<OnEvent>>,
}

impl Registry {
    fn live(&self) -> MutexGuard<'_, HashMap<SessionId, Arc<Shared>>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A session ended: drop it from memory and tell the store (unless it moved to another
    /// server, which holds it now).
    fn forget(&self, id: SessionId, reason: &EndReason, ended: &Shared) {
        {
            let mut live = self.live();
            // Not a session restored here meanwhile, after it moved away and back.
            if live
                .get(&id)
                .is_some_and(|s| std::ptr::eq(Arc::as_ptr(s), ended))
            {
                live.remove(&id);
            }
        }
        if *reason == EndReason::Moved {
            return;
        }
        let reason = match reason {
            EndReason::Expired => LostReason::Expired,
            EndReason::Overflow => LostReason::Overflow,
            _ => LostReason::Unknown,
        };
        let store = Arc::clone(&self.store);
        let holder = ended.holder();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = store.end(id, holder, reason).await {
                    tracing::warn!(%id, error = %e, "session store: recording the end failed");
                }
            });
        }
    }
}

impl Registry {
    /// Another server may have taken this session: a write tells (and ends it here if so).
    fn check_moved(self: &Arc<Self>, id: SessionId) {
        let Some(shared) = self.live().get(&id).cloned() else {
            return;
        };
        let store = Arc::clone(&self.store);
        let ttl = self.config.ttl;
        tokio::spawn(async move {
            let progress = progress_of(&shared.lock());
            let change = Change::Progress(progress);
            if let Ok(Recorded::Moved) = store.record(id, shared.holder(), change, ttl).await {
                let mut st = shared.lock();
                shared.end(&mut st, EndReason::Moved, None);
            }
        });
    }

    /// Keeps the connected sessions of a shared store alive there (a session only expires
    /// once its client is away), every third of the time to live.
    fn keep_alive(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if !self.shared_store || self.keeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let weak = Arc::downgrade(self);
        let every = (self.config.ttl / 3).max(Duration::from_millis(100));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(registry) = weak.upgrade() else {
                    return;
                };
                // (The registry's lock is let go before a session's is taken: ending a
                // session takes them the other way round.)
                let live: Vec<_> = registry.live().values().cloned().collect();
                let connected: Vec<_> = live
                    .into_iter()
                    .filter(|s| s.durable.is_some() && s.lock().link != 0)
                    .collect();
                let (store, ttl) = (Arc::clone(&registry.store), registry.config.ttl);
                drop(registry);
                for shared in connected {
                    let (id, progress) = {
                        let st = shared.lock();
                        (st.session.id(), progress_of(&st))
                    };
                    let change = Change::Progress(progress);
                    match store.record(id, shared.holder(), change, ttl).await {
                        Ok(Recorded::Moved) => {
                            let mut st = shared.lock();
                            shared.end(&mut st, EndReason::Moved, None);
                        }
                        Ok(Recorded::Missing) => {
                            let snapshot = shared.lock().session.snapshot();
                            if let Err(e) = store.save(id, shared.holder(), snapshot, ttl).await {
                                tracing::warn!(%id, error = %e, "session store: writing failed");
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(%id, error = %e, "session store: keep-alive failed")
                        }
                    }
                }
            }
        });
    }
}

/// Serves resumable sessions: runs its handler once per session, with a [`SessionHandle`]
/// that outlives the connections; hand it every accepted WebSocket with
/// [`serve`](Self::serve). Cheap to clone.
///
/// Clients that do not speak the resume protocol get the same handler with a plain handle
/// ([`SessionHandle::is_resumable`] is false) that ends with its connection. Offer the
/// subprotocol with [`server_config`](Self::server_config) (or
/// `ServerConfig::subprotocol(SUBPROTOCOL)`).
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// use tether::session::{SessionServer, SessionServerConfig};
/// let sessions = SessionServer::new(SessionServerConfig::default(), |session| async move {
///     while let Some(Ok(msg)) = session.recv().await {
///         if session.send(msg).await.is_err() {
///             break;
///         }
///     }
/// });
/// let config = sessions.server_config(tether::ServerConfig::default());
/// let server = tether::Server::bind("127.0.0.1:9001", config).await?;
/// server.serve(move |ws, _peer| sessions.serve(ws)).await
/// # }
/// ```
#[derive(Clone)]
pub struct SessionServer {
    registry: Arc<Registry>,
}

impl fmt::Debug for SessionServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionServer")
            .field("config", &self.registry.config)
            .field("sessions", &self.registry.live().len())
            .finish_non_exhaustive()
    }
}

impl SessionServer {
    /// A server of sessions kept in this process ([`MemoryStore`]), running `handler` once
    /// per session.
    pub fn new<H, F>(config: SessionServerConfig, handler: H) -> Self
    where
        H: Fn(SessionHandle) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        Self::with_store(config, Arc::new(MemoryStore::new()), handler)
    }

    /// As [`new`](Self::new), with sessions kept in `store`.
    pub fn with_store<H, F>(
        config: SessionServerConfig,
        store: Arc<dyn SessionStore>,
        handler: H,
    ) -> Self
    where
        H: Fn(SessionHandle) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let shared_store = store.is_shared();
        let registry = Arc::new(Registry {
            config,
            handler: Box::new(move |h| Box::pin(handler(h))),
            live: Mutex::new(HashMap::new()),
            store,
            shared_store,
            keeping: std::sync::atomic::AtomicBool::new(false),
            on_event: std::sync::OnceLock::new(),
        });
        if shared_store {
            let weak = Arc::downgrade(&registry);
            registry.store.watch(Box::new(move |id| {
                if let Some(registry) = weak.upgrade() {
                    registry.check_moved(id);
                }
            }));
        }
        Self { registry }
    }

    /// A callback for every [`SessionEvent`] of every session. Call before serving (and
    /// once: a second callback is ignored).
    pub fn on_event<F>(self, callback: F) -> Self
    where
        F: Fn(&SessionEvent<'_>) + Send + Sync + 'static,
    {
        let _ = self.registry.on_event.set(Arc::new(callback));
        self
    }

    /// `config` with the resume protocol's subprotocol offered first.
    pub fn server_config(&self, config: crate::ServerConfig) -> crate::ServerConfig {
        config.offer_first(SUBPROTOCOL)
    }

    /// Sessions held in memory (connected or away).
    pub fn len(&self) -> usize {
        self.registry.live().len()
    }

    /// True when no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Carries a session over this connection until the connection ends: a new one (the
    /// handler starts), or the one the client resumes. Returns when the connection is over;
    /// the session may live on, waiting for its client.
    ///
    /// The future owns what it needs (not `&self`): hand it over as the connection
    /// handler's future itself (`move |ws, _| sessions.serve(ws)`), so that no other future
    /// keeps a slot for the connection for its whole life.
    pub fn serve<S>(&self, ws: WebSocket<S>) -> impl Future<Output = ()> + Send + 'static
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // Each phase is boxed, and the connection moves into the first box at once: what
        // the connection's task holds for as long as the connection lives is only the
        // link's state, not the handshake's nor a slot for the connection itself.
        let server = self.clone();
        let open = Box::pin(async move {
            server.registry.keep_alive();
            let opened = server.open(ws).await;
            (server, opened)
        });
        async move {
            let (server, Some((shared, gen, ws))) = open.await else {
                return;
            };
            let end = Box::pin(run_link(&shared, ws, gen)).await;
            Box::pin(server.went_away(&shared, gen, &end)).await;
        }
    }

    /// The opening of a connection: the resume handshake (for a resumable client), the
    /// session it carries, and the connection, ready for the link.
    async fn open<S>(&self, mut ws: WebSocket<S>) -> Option<(Arc<Shared>, u64, WebSocket<S>)>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let registry = &self.registry;
        if ws.subprotocol() != Some(SUBPROTOCOL) {
            let session = Session::new(SessionId::random(), registry.config.session.clone());
            let shared = self.new_shared(false, session, Holder::random());
            let gen = {
                let mut st = shared.lock();
                st.links = 1;
                st.link = 1;
                1
            };
            self.spawn_handler(&shared);
            return Some((shared, gen, ws));
        }
        let within = registry.config.handshake_timeout;
        let (asked, peer_delivered) = match read_control(&mut ws, within).await {
            Ok(Control::Hello { id, delivered }) => (id, delivered),
            Ok(_) => {
                let _ = ws.close(close_code::PROTOCOL_ERROR, "HELLO expected").await;
                return None;
            }
            Err(why) => {
                tracing::debug!(why, "no resume handshake from the client");
                let _ = ws.close(close_code::PROTOCOL_ERROR, "HELLO expected").await;
                return None;
            }
        };
        let mut reason = String::new();
        let mut existing = None;
        if let Some(id) = asked {
            let live = registry.live().get(&id).cloned();
            // A shared store decides who holds the session, even one held here.
            // A copy restored here gets a holder of its own, so that an out-of-date copy
            // (the session moved away and came back) cannot write over it.
            let take_as = Holder::random();
            let lookup = if live.is_some() && !registry.shared_store {
                Ok(Lookup::Held)
            } else {
                let held = live.as_ref().map(|s| s.holder());
                registry.store.load(id, take_as, held).await
            };
            match lookup {
                Ok(Lookup::Held) => match live {
                    Some(shared) => existing = Some(shared),
                    None => reason = LostReason::Unknown.as_str().to_owned(),
                },
                Ok(Lookup::Found(snapshot)) => {
                    if let Some(stale) = live {
                        // It moved away and came back: the copy here is out of date.
                        let mut st = stale.lock();
                        stale.end(&mut st, EndReason::Moved, None);
                    }
                    let config = registry.config.session.clone();
                    match Session::restore(id, config, snapshot) {
                        Ok(session) => {
                            let shared = self.new_shared(true, session, take_as);
                            shared.lock().restored = true;
                            registry.live().insert(id, Arc::clone(&shared));
                            self.spawn_handler(&shared);
                            existing = Some(shared);
                        }
                        Err(e) => {
                            tracing::warn!(%id, error = %e, "stored session unusable");
                            reason = LostReason::Unknown.as_str().to_owned();
                        }
                    }
                }
                Ok(Lookup::Unknown) if live.is_some() => {
                    // The shared store lost it, but it lives here: write it again.
                    let shared = live.unwrap_or_else(|| unreachable!("checked"));
                    let snapshot = shared.lock().session.snapshot();
                    let (holder, ttl) = (shared.holder(), registry.config.ttl);
                    match registry.store.save(id, holder, snapshot, ttl).await {
                        Ok(()) => existing = Some(shared),
                        Err(e) => return self.unavailable(ws, id, &e).await,
                    }
                }
                Ok(Lookup::Gone(why)) => {
                    if let Some(stale) = live {
                        let mut st = stale.lock();
                        stale.end(&mut st, EndReason::Moved, None);
                    }
                    reason = why.as_str().to_owned();
                }
                Ok(_) => reason = LostReason::Unknown.as_str().to_owned(),
                Err(e) => return self.unavailable(ws, id, &e).await,
            }
        }
        let (shared, gen, welcome) = match existing {
            Some(shared) => {
                let resumed = {
                    let mut st = shared.lock();
                    server_resume(&shared, &mut st, peer_delivered)
                };
                match resumed {
                    Ok((gen, welcome)) => (shared, gen, welcome),
                    Err(None) => {
                        let _ = ws
                            .close(close_code::TRY_AGAIN_LATER, "session ending")
                            .await;
                        return None;
                    }
                    Err(Some(e)) => {
                        tracing::warn!(error = %e, "client broke the resume protocol");
                        let _ = ws.close(e.close_code(), "resume protocol error").await;
                        return None;
                    }
                }
            }
            None => {
                if asked.is_none() && peer_delivered != 0 {
                    let _ = ws
                        .close(close_code::PROTOCOL_ERROR, "new session with deliveries")
                        .await;
                    return None;
                }
                let id = SessionId::random();
                let session = Session::new(id, registry.config.session.clone());
                let shared = self.new_shared(true, session, Holder::random());
                let gen = {
                    let mut st = shared.lock();
                    // A new session has nothing to replay.
                    let _ = st.session.link_up(0);
                    st.links = 1;
                    st.link = 1;
                    shared.emit(&SessionEvent::Connected { id, replayed: 0 });
                    1
                };
                registry.live().insert(id, Arc::clone(&shared));
                self.spawn_handler(&shared);
                let welcome = Control::Welcome {
                    id,
                    resumed: false,
                    delivered: 0,
                    reason,
                };
                (shared, gen, welcome)
            }
        };
        if let Some(durable) = &shared.durable {
            // The WELCOME tells the client what the application took: the store must know it
            // first (for a new session: that the session exists).
            let (id, progress) = {
                let st = shared.lock();
                (st.session.id(), progress_of(&st))
            };
            let change = match welcome {
                Control::Welcome { resumed: false, .. } => Change::Created,
                _ => Change::Progress(Progress {
                    delivered: shared.lock().session.delivered(),
                    ..progress
                }),
            };
            match durable
                .store
                .record(id, durable.holder, change, durable.ttl)
                .await
            {
                Ok(Recorded::Done) => {
                    let mut st = shared.lock();
                    let delivered = st.session.delivered();
                    st.session.confirm_delivered(delivered, now());
                }
                outcome => {
                    let e = match outcome {
                        Err(e) => e,
                        Ok(other) => Error::Other(format!("session store: {other:?}").into()),
                    };
                    tracing::error!(%id, error = %e, "session store: recording failed");
                    let _ = ws
                        .close(close_code::INTERNAL_ERROR, "session store unavailable")
                        .await;
                    self.went_away(&shared, gen, &LinkEnd::Failed(e)).await;
                    return None;
                }
            }
        }
        if ws.send(Message::Binary(welcome.encode())).await.is_err() {
            self.went_away(&shared, gen, &LinkEnd::Failed(Error::ConnectionClosed))
                .await;
            return None;
        }
        Some((shared, gen, ws))
    }

    /// The store cannot be read: the client is told to come back (1011, which it retries).
    async fn unavailable<S>(
        &self,
        mut ws: WebSocket<S>,
        id: SessionId,
        e: &Error,
    ) -> Option<(Arc<Shared>, u64, WebSocket<S>)>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        tracing::error!(%id, error = %e, "session store unavailable");
        let _ = ws
            .close(close_code::INTERNAL_ERROR, "session store unavailable")
            .await;
        None
    }

    fn new_shared(&self, resume: bool, mut session: Session, holder: Holder) -> Arc<Shared> {
        let registry = &self.registry;
        let durable = (resume && registry.shared_store).then(|| {
            session.hold_acks();
            Box::new(Durable {
                store: Arc::clone(&registry.store),
                holder,
                ttl: registry.config.ttl,
                send_turn: tokio::sync::Mutex::new(()),
                recv_turn: tokio::sync::Mutex::new(None),
            })
        });
        Shared::new(
            Side::Server,
            resume,
            session,
            registry.on_event.get().cloned(),
            Some(Arc::downgrade(registry)),
            registry.config.overflow,
            durable,
        )
    }

    fn spawn_handler(&self, shared: &Arc<Shared>) {
        let handle = SessionHandle {
            shared: Arc::clone(shared),
        };
        tokio::spawn((self.registry.handler)(handle));
    }

    /// The link ended: end the session, or keep it for its client and start the clock.
    async fn went_away(&self, shared: &Arc<Shared>, gen: u64, end: &LinkEnd) {
        if finish_link(shared, gen, end) {
            return;
        }
        let (id, epoch, snapshot) = {
            let st = shared.lock();
            if st.link != 0 || st.ended.is_some() {
                return;
            }
            (st.session.id(), st.away_epoch, st.session.snapshot())
        };
        let ttl = self.registry.config.ttl;
        if shared.durable.is_some() {
            // Everything is recorded already; this starts the store's clock on it.
            let progress = progress_of(&shared.lock());
            match self
                .registry
                .store
                .record(id, shared.holder(), Change::Progress(progress), ttl)
                .await
            {
                Ok(Recorded::Moved) => {
                    let mut st = shared.lock();
                    shared.end(&mut st, EndReason::Moved, None);
                    return;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(%id, error = %e, "session store: recording failed"),
            }
        } else if let Err(e) = self
            .registry
            .store
            .save(id, shared.holder(), snapshot, ttl)
            .await
        {
            tracing::warn!(%id, error = %e, "session store: saving failed");
        }
        let weak = Arc::downgrade(shared);
        tokio::spawn(async move {
            tokio::time::sleep(ttl).await;
            let Some(shared) = weak.upgrade() else { return };
            let mut st = shared.lock();
            if st.link == 0 && st.away_epoch == epoch {
                shared.end(&mut st, EndReason::Expired, None);
            }
        });
    }
}
