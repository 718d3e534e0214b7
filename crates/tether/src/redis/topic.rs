//! Broadcast across nodes: a topic is a Redis stream that every node publishes to and reads
//! from.
//!
//! Each node reads the stream once (one blocking `XREAD` loop per [`RedisTopic`]) and hands
//! every entry to all its local subscribers, with the message prepared once
//! ([`TopicEntry::prepared`]), so a node encodes (and compresses) each message once whatever
//! number of its connections receive it. The stream keeps the last
//! [`TopicConfig::history`] entries, so that a subscriber can start *after a position*
//! ([`RedisTopic::subscribe_after`]): a resumable session marks each message it relays with
//! its position ([`SessionHandle::send_marked`](crate::session::SessionHandle::send_marked)),
//! and the handler that takes the session over on another node goes on right after it.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{AsyncConnectionConfig, Client, Value};
use tokio::sync::broadcast;

use super::{manager, store_error};
use crate::error::{Error, Result};
use crate::session::SessionHandle;
use crate::websocket::Message;
use crate::PreparedMessage;

/// Settings of a [`RedisTopic`].
#[derive(Clone, Debug)]
pub struct TopicConfig {
    /// Prefix of the stream's key (`PREFIX:topic:NAME`). Default: `tether`.
    pub prefix: String,
    /// Entries the stream keeps (about: Redis trims in whole blocks), for subscribers that
    /// start after a position. Default: 10,000.
    pub history: usize,
    /// Entries a node buffers for each local subscriber; one that falls further behind reads
    /// what it missed back from the stream. Default: 4,096.
    pub buffer: usize,
}

impl Default for TopicConfig {
    fn default() -> Self {
        Self {
            prefix: "tether".to_owned(),
            history: 10_000,
            buffer: 4096,
        }
    }
}

/// A position in a topic: the id Redis gave the entry (`MILLISECONDS-SEQUENCE`), in the order
/// of the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    ms: u64,
    seq: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for Position {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::Other(format!("not a topic position: {s:?}").into());
        let (ms, seq) = s.split_once('-').ok_or_else(bad)?;
        Ok(Self {
            ms: ms.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

impl Position {
    /// The position as bytes, for a session's mark.
    pub fn to_bytes(self) -> tether_proto::Bytes {
        tether_proto::Bytes::from(self.to_string())
    }

    /// A position from [`to_bytes`](Self::to_bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        std::str::from_utf8(bytes)
            .map_err(|_| Error::Other("not a topic position".into()))?
            .parse()
    }
}

/// One message of a topic, as every local subscriber receives it.
#[derive(Clone, Debug)]
pub struct TopicEntry {
    /// Where it is in the topic.
    pub position: Position,
    /// The message.
    pub message: Message,
    /// The same message, prepared once for all the node's connections
    /// ([`WebSocket::send_prepared`](crate::WebSocket::send_prepared)).
    pub prepared: PreparedMessage,
}

/// A topic shared by every node that opens it on the same Redis: what one publishes, all
/// subscribers on all nodes receive, in the same order. Cheap to clone; the node's reader
/// stops when the last clone and subscription are gone.
#[derive(Clone)]
pub struct RedisTopic {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionManager,
    key: String,
    config: TopicConfig,
    feed: broadcast::Sender<Arc<TopicEntry>>,
    reader: tokio::task::AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl fmt::Debug for RedisTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTopic")
            .field("key", &self.inner.key)
            .finish_non_exhaustive()
    }
}

impl RedisTopic {
    /// The topic `name` on the Redis at `url`, with the default [`TopicConfig`]. Connects
    /// lazily (fails only for a malformed URL) and starts this node's reader; call within a
    /// tokio runtime.
    pub fn open(url: &str, name: &str) -> Result<Self> {
        Self::open_with(url, name, TopicConfig::default())
    }

    /// As [`open`](Self::open), with these settings.
    pub fn open_with(url: &str, name: &str, config: TopicConfig) -> Result<Self> {
        let client = Client::open(url).map_err(store_error)?;
        let conn = manager(&client)?;
        let key = format!("{}:topic:{name}", config.prefix);
        let (feed, _) = broadcast::channel(config.buffer.max(1));
        let reader = tokio::spawn(read(client, key.clone(), feed.downgrade())).abort_handle();
        Ok(Self {
            inner: Arc::new(Inner {
                conn,
                key,
                config,
                feed,
                reader,
            }),
        })
    }

    /// Publishes a message to every subscriber on every node; returns its position.
    pub async fn publish(&self, msg: &Message) -> Result<Position> {
        let mut positions = self.publish_batch(std::slice::from_ref(msg)).await?;
        positions
            .pop()
            .ok_or_else(|| Error::Other("XADD answered nothing".into()))
    }

    /// Publishes several messages, in order, in one round trip (a pipeline of `XADD`s):
    /// they reach subscribers together, so each node writes them to a connection in one go.
    /// Returns their positions.
    pub async fn publish_batch(&self, msgs: &[Message]) -> Result<Vec<Position>> {
        let mut pipe = redis::pipe();
        for msg in msgs {
            let (kind, payload): (&str, &[u8]) = match msg {
                Message::Text(t) => ("t", t.as_str().as_bytes()),
                Message::Binary(b) => ("b", b),
            };
            pipe.cmd("XADD")
                .arg(&self.inner.key)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.inner.config.history)
                .arg("*")
                .arg("k")
                .arg(kind)
                .arg("d")
                .arg(payload);
        }
        let mut conn = self.inner.conn.clone();
        let ids: Vec<String> = pipe.query_async(&mut conn).await.map_err(store_error)?;
        ids.iter().map(|id| id.parse()).collect()
    }

    /// Where the topic ends now: the position of its last entry (`0-0` when it has none).
    pub async fn position(&self) -> Result<Position> {
        let mut conn = self.inner.conn.clone();
        let reply: Value = redis::cmd("XREVRANGE")
            .arg(&self.inner.key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await
            .map_err(store_error)?;
        Ok(entries(&reply).first().map_or(START, |e| e.position))
    }

    /// Carries a session on this topic for as long as it lives: what its client sends is
    /// published (what waits is published together), and every entry of the topic goes to
    /// the client, in order, each once,
    /// marked with its position ([`SessionHandle::send_marked`]). A session restored on
    /// another node goes on right after the last entry it got; a new one starts where the
    /// topic ends when it joins. Redis being away only makes it wait (publishing and reading
    /// are retried). Returns when the session ends, or with an error when the topic no
    /// longer keeps what the session missed (its history moved past the session's mark).
    pub async fn relay(&self, session: &SessionHandle) -> Result<()> {
        self.relay_observing(session, |_| {}).await
    }

    /// As [`relay`](Self::relay), calling `received` with each message the client sent
    /// before it is published (to log it, count it).
    pub async fn relay_observing(
        &self,
        session: &SessionHandle,
        mut received: impl FnMut(&Message) + Send,
    ) -> Result<()> {
        let after = match session.mark() {
            Some(mark) => Position::from_bytes(&mark)?,
            None => {
                let end = retry(|| self.position()).await;
                session.set_mark(end.to_bytes()).await?;
                end
            }
        };
        let mut subscription = self.subscribe_after(after);
        let deliver = async {
            loop {
                let entries = match subscription.next_batch(BATCH).await {
                    Ok(entries) => entries,
                    Err(Error::Other(e)) if subscription.missed() => {
                        return Err(Error::Other(e));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "topic: reading failed; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                // One request to the store for the whole batch, marked with its last entry.
                let mark = entries.last().map(|e| e.position.to_bytes());
                let msgs = entries.into_iter().map(|e| e.message).collect();
                if session.send_batch(msgs, mark).await.is_err() {
                    return Ok(());
                }
            }
        };
        let publish = async {
            while let Some(Ok(msgs)) = session.recv_batch(BATCH).await {
                msgs.iter().for_each(&mut received);
                retry(|| self.publish_batch(&msgs)).await;
            }
            Ok(())
        };
        tokio::select! {
            done = deliver => done,
            done = publish => done,
        }
    }

    /// Receives what is published from now on.
    pub fn subscribe(&self) -> Subscription {
        Subscription {
            topic: self.clone(),
            rx: self.inner.feed.subscribe(),
            last: None,
            backlog: VecDeque::new(),
            catch_up: Catchup::No,
            missed: false,
        }
    }

    /// Receives everything published after `position`, then what is published from now on.
    /// When the topic no longer keeps `position` (its history moved past it), the first
    /// [`Subscription::next`] fails: entries were missed and cannot be had.
    pub fn subscribe_after(&self, position: Position) -> Subscription {
        Subscription {
            topic: self.clone(),
            rx: self.inner.feed.subscribe(),
            last: Some(position),
            backlog: VecDeque::new(),
            // The start of the topic is always there to read from.
            catch_up: if position == START {
                Catchup::Behind
            } else {
                Catchup::From(position)
            },
            missed: false,
        }
    }

    /// Entries after `after`, oldest first, at most `count`.
    async fn range_after(&self, after: Position, count: usize) -> Result<Vec<TopicEntry>> {
        let mut conn = self.inner.conn.clone();
        let reply: Value = redis::cmd("XRANGE")
            .arg(&self.inner.key)
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await
            .map_err(store_error)?;
        Ok(entries(&reply))
    }

    /// Whether the stream still has the entry at `position`.
    async fn keeps(&self, position: Position) -> Result<bool> {
        let mut conn = self.inner.conn.clone();
        let reply: Value = redis::cmd("XRANGE")
            .arg(&self.inner.key)
            .arg(position.to_string())
            .arg(position.to_string())
            .query_async(&mut conn)
            .await
            .map_err(store_error)?;
        Ok(!entries(&reply).is_empty())
    }
}

enum Catchup {
    No,
    /// Read the stream after this position (checking first that it is still kept).
    From(Position),
    /// Read the stream after the last entry received (fell behind the node's buffer).
    Behind,
}

/// A subscriber of a [`RedisTopic`] on this node.
pub struct Subscription {
    topic: RedisTopic,
    rx: broadcast::Receiver<Arc<TopicEntry>>,
    last: Option<Position>,
    backlog: VecDeque<TopicEntry>,
    catch_up: Catchup,
    /// Entries were missed for good.
    missed: bool,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

/// The position before every entry.
const START: Position = Position { ms: 0, seq: 0 };

/// Runs `attempt` until it succeeds, pausing between tries (growing to 2 s).
async fn retry<T, F, Fut>(attempt: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut pause = Duration::from_millis(50);
    loop {
        match attempt().await {
            Ok(done) => return done,
            Err(e) => tracing::warn!(error = %e, "topic: Redis request failed; retrying"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// Most entries a relay sends a session in one batch (one store request).
const BATCH: usize = 64;

/// Entries read back from the stream per request while catching up.
const CATCH_UP: usize = 512;

impl Subscription {
    /// True once [`next`](Self::next) failed because entries were missed for good (as
    /// opposed to Redis being away, after which `next` can be called again).
    pub fn missed(&self) -> bool {
        self.missed
    }

    /// The next entry and what else is already there, up to `max` (at least one), as
    /// [`next`](Self::next).
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<TopicEntry>> {
        let mut batch = vec![self.next().await?];
        while batch.len() < max {
            if let Some(entry) = self.backlog.pop_front() {
                self.last = Some(entry.position);
                batch.push(entry);
                continue;
            }
            if !matches!(self.catch_up, Catchup::No) {
                break;
            }
            match self.rx.try_recv() {
                Ok(entry) => {
                    if self.last.is_some_and(|last| entry.position <= last) {
                        continue;
                    }
                    self.last = Some(entry.position);
                    batch.push((*entry).clone());
                }
                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                    self.catch_up = Catchup::Behind;
                    break;
                }
                Err(_) => break,
            }
        }
        Ok(batch)
    }

    /// The next entry, in the topic's order, each once. Fails when entries were missed for
    /// good (the topic's history moved past them) or Redis could not be read to catch up.
    ///
    /// **Cancel safety:** cancel-safe.
    pub async fn next(&mut self) -> Result<TopicEntry> {
        loop {
            if let Some(entry) = self.backlog.pop_front() {
                self.last = Some(entry.position);
                return Ok(entry);
            }
            match self.catch_up {
                Catchup::No => {}
                Catchup::From(position) => {
                    if !self.topic.keeps(position).await? {
                        self.missed = true;
                        return Err(Error::Other(
                            format!("topic entries after {position} are no longer kept").into(),
                        ));
                    }
                    self.catch_up = Catchup::Behind;
                    continue;
                }
                Catchup::Behind => {
                    let Some(after) = self.last else {
                        self.catch_up = Catchup::No;
                        continue;
                    };
                    let got = self.topic.range_after(after, CATCH_UP).await?;
                    if got.len() < CATCH_UP {
                        self.catch_up = Catchup::No;
                    }
                    self.backlog.extend(got);
                    continue;
                }
            }
            match self.rx.recv().await {
                Ok(entry) => {
                    if self.last.is_some_and(|last| entry.position <= last) {
                        continue;
                    }
                    self.last = Some(entry.position);
                    return Ok((*entry).clone());
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    if self.last.is_none() {
                        self.missed = true;
                        return Err(Error::Other(
                            "topic subscriber fell behind before its first entry".into(),
                        ));
                    }
                    self.catch_up = Catchup::Behind;
                }
                Err(broadcast::error::RecvError::Closed) => return Err(Error::ConnectionClosed),
            }
        }
    }
}

/// The node's reader: follows the stream from its end as it was first seen, and hands every
/// entry to the local subscribers. Reconnects (with a pause growing to 2 s) when Redis goes.
async fn read(client: Client, key: String, feed: broadcast::WeakSender<Arc<TopicEntry>>) {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(5)));
    let mut last: Option<Position> = None;
    let mut pause = Duration::from_millis(100);
    loop {
        if let Ok(mut conn) = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            if last.is_none() {
                // Where the stream ends now: what comes after is new.
                let reply: redis::RedisResult<Value> = redis::cmd("XREVRANGE")
                    .arg(&key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut conn)
                    .await;
                if let Ok(reply) = reply {
                    last = Some(entries(&reply).first().map_or(START, |e| e.position));
                }
            }
            while let Some(after) = last {
                let reply: redis::RedisResult<Value> = redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(CATCH_UP)
                    .arg("BLOCK")
                    .arg(1000)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(after.to_string())
                    .query_async(&mut conn)
                    .await;
                let Ok(reply) = reply else { break };
                let Some(feed) = feed.upgrade() else { return };
                for entry in streams_entries(&reply) {
                    last = Some(entry.position);
                    // No receiver is fine: nobody on this node subscribes right now.
                    let _ = feed.send(Arc::new(entry));
                }
                pause = Duration::from_millis(100);
            }
        }
        if feed.upgrade().is_none() {
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// The entries of an `XRANGE` reply.
fn entries(reply: &Value) -> Vec<TopicEntry> {
    match reply {
        Value::Array(items) => items.iter().filter_map(entry).collect(),
        _ => Vec::new(),
    }
}

/// The entries of an `XREAD` reply for one stream (nil when the wait timed out).
fn streams_entries(reply: &Value) -> Vec<TopicEntry> {
    let streams: Vec<&Value> = match reply {
        Value::Array(streams) => streams.iter().collect(),
        Value::Map(pairs) => pairs.iter().map(|(_, v)| v).collect(),
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    for stream in streams {
        match stream {
            // RESP2: [key, entries]; RESP3 maps give the entries directly.
            Value::Array(parts) if parts.len() == 2 && !matches!(parts[0], Value::Array(_)) => {
                out.extend(entries(&parts[1]));
            }
            other => out.extend(entries(other)),
        }
    }
    out
}

/// One `[id, [field, value, ...]]` entry, if it is one of ours.
fn entry(item: &Value) -> Option<TopicEntry> {
    let Value::Array(parts) = item else {
        return None;
    };
    let [id, Value::Array(fields)] = parts.as_slice() else {
        return None;
    };
    let position: Position = text(id)?.parse().ok()?;
    let (mut kind, mut data) = (None, None);
    for pair in fields.chunks(2) {
        if let [name, value] = pair {
            match bytes(name)? {
                b"k" => kind = bytes(value),
                b"d" => data = bytes(value),
                _ => {}
            }
        }
    }
    let data = tether_proto::Bytes::copy_from_slice(data?);
    let message = match kind? {
        b"t" => Message::Text(tether_proto::Utf8Bytes::try_from(data).ok()?),
        b"b" => Message::Binary(data),
        _ => return None,
    };
    let prepared = PreparedMessage::from(message.clone());
    Some(TopicEntry {
        position,
        message,
        prepared,
    })
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn text(v: &Value) -> Option<&str> {
    std::str::from_utf8(bytes(v)?).ok()
}
