//! Sessions shared by several server processes, in Redis (feature `redis`).
//!
//! [`RedisStore`] is a [`SessionStore`] that every node of a service opens on the same Redis:
//! a client whose reconnect lands on another node resumes there, and a session whose node
//! died is resumable on any other from what was recorded. Each change is one Lua script,
//! so it is atomic: a message is recorded with the session's counts, a takeover changes the
//! holder and tells the previous one in the same step. The client is
//! [`redis`](https://docs.rs/redis) (redis-rs) with its `ConnectionManager`, which
//! multiplexes the node's requests on one connection (concurrent requests are pipelined)
//! and reconnects by itself.
//!
//! Keys, with `P` the prefix (default `tether`) and `ID` the session id (in braces, so that
//! a Redis Cluster keeps one session's keys in one slot):
//!
//! | Key | Type | Holds |
//! |---|---|---|
//! | `P:{ID}:s` | hash | `holder` (node and copy), `sent`, `delivered`, `acked`, `mark` |
//! | `P:{ID}:o` | hash | the messages sent and not acknowledged, by number |
//! | `P:{ID}:g` | string | why the session is gone (`expired` while it lives) |
//!
//! The first two expire when nothing was recorded for the server's session time to live
//! (the node refreshes connected sessions); the third an hour after that, so that a late
//! client is told `expired` rather than `unknown`. Takeovers are announced on the channel
//! `P:moved`.
//!
//! Faults: a Redis that is unreachable or restarting makes new sessions and resumptions
//! of sessions held elsewhere fail with close code 1011 (clients retry with their
//! backoff); sessions held by a node wait (their sends and deliveries are retried until
//! Redis answers, so nothing is lost or repeated); a Redis that lost its data gets each
//! session a node holds written again whole. Plain WebSocket traffic does not touch Redis.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};
use tether_proto::session::{Kind, SessionId, Snapshot};

use crate::error::{Error, Result};
use crate::session::{
    BoxFuture, Change, Holder, Lookup, LostReason, Progress, Recorded, SessionStore,
};

mod topic;
pub use topic::{Position, RedisTopic, Subscription, TopicConfig, TopicEntry};

/// How long a session's tombstone outlives it, to tell `expired` from `unknown`.
const TOMBSTONE: Duration = Duration::from_secs(3600);

/// A [`SessionStore`] in Redis, shared by every server that opens it on the same Redis and
/// prefix. Cheap to clone: clones share the connection and the node identity.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    conn: ConnectionManager,
    /// This node's identity as a session holder: random, per store.
    node: String,
    prefix: String,
    scripts: Scripts,
    watching: Mutex<bool>,
}

struct Scripts {
    save: Script,
    record: Script,
    load: Script,
    end: Script,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("node", &self.inner.node)
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

fn store_error(e: redis::RedisError) -> Error {
    Error::Other(Box::new(e))
}

/// A lazily connecting, self-reconnecting connection with short timeouts: a Redis that does
/// not answer is retried by the session (or the client), not waited for.
fn manager(client: &Client) -> Result<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(store_error)
}

impl RedisStore {
    /// A store on the Redis at `url` (`redis://HOST:PORT[/DB]`, or `rediss://` for TLS,
    /// with `user:password@` when Redis wants it), with keys under `tether`. Connects
    /// lazily: this fails only for a malformed URL, so a server starts while Redis is
    /// still unreachable (see [`ping`](Self::ping)). Call within a tokio runtime.
    pub fn open(url: &str) -> Result<Self> {
        Self::open_with_prefix(url, "tether")
    }

    /// As [`open`](Self::open), with keys under `prefix` (several services on one Redis).
    pub fn open_with_prefix(url: &str, prefix: &str) -> Result<Self> {
        let client = Client::open(url).map_err(store_error)?;
        let conn = manager(&client)?;
        let node = format!("{:032x}", rand::random::<u128>());
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                conn,
                node,
                prefix: prefix.to_owned(),
                scripts: Scripts {
                    save: Script::new(SAVE),
                    record: Script::new(RECORD),
                    load: Script::new(LOAD),
                    end: Script::new(END),
                },
                watching: Mutex::new(false),
            }),
        })
    }

    /// Checks that Redis answers.
    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.inner.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(drop)
            .map_err(store_error)
    }

    /// This node's identity as the holder of sessions (random, one per store).
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    fn keys(&self, id: SessionId) -> [String; 3] {
        let p = &self.inner.prefix;
        [
            format!("{p}:{{{id}}}:s"),
            format!("{p}:{{{id}}}:o"),
            format!("{p}:{{{id}}}:g"),
        ]
    }

    /// A holder as the store writes it: this node, then the copy.
    fn holder(&self, holder: Holder) -> String {
        format!("{}:{:016x}", self.inner.node, holder.as_u64())
    }

    fn channel(&self) -> String {
        format!("{}:moved", self.inner.prefix)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// A message as a field value: its kind (`t` or `b`), then the payload.
fn encode(kind: Kind, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + payload.len());
    v.push(match kind {
        Kind::Text => b't',
        Kind::Binary => b'b',
    });
    v.extend_from_slice(payload);
    v
}

fn decode(field: &[u8]) -> Option<(Kind, tether_proto::Bytes)> {
    let (&tag, payload) = field.split_first()?;
    let kind = match tag {
        b't' => {
            std::str::from_utf8(payload).ok()?;
            Kind::Text
        }
        b'b' => Kind::Binary,
        _ => return None,
    };
    Some((kind, tether_proto::Bytes::copy_from_slice(payload)))
}

/// A mark as a script argument: empty for none, else `m` and the mark.
fn mark_arg(mark: Option<&[u8]>) -> Vec<u8> {
    match mark {
        None => Vec::new(),
        Some(mark) => {
            let mut v = Vec::with_capacity(1 + mark.len());
            v.push(b'm');
            v.extend_from_slice(mark);
            v
        }
    }
}

fn number(field: &[u8]) -> Option<u64> {
    std::str::from_utf8(field).ok()?.parse().ok()
}

/// Writes a session whole: counts, holder, mark, kept messages. KEYS: s, o, g. ARGV: node,
/// ttl (ms), tombstone (ms), sent, delivered, acked, mark (empty for none, else `m` and the
/// mark), then number and message pairs.
const SAVE: &str = r"
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'sent', ARGV[4], 'delivered', ARGV[5], 'acked', ARGV[6], 'mark', ARGV[7])
for i = 8, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], 'expired', 'PX', ARGV[3])
return 0
";

/// Records progress and, optionally, messages sent, if this copy holds the session (a few
/// commands whatever the batch: one read of the counts, one write of each hash).
/// KEYS: s, o, g. ARGV: holder, ttl, tombstone, delivered, acked, mark (empty: unchanged),
/// then number and message pairs.
/// Returns 0 (done), 1 (held elsewhere, or ended), 2 (missing: the store lost it).
const RECORD: &str = r"
local meta = redis.call('HMGET', KEYS[1], 'holder', 'delivered', 'acked', 'sent')
if not meta[1] then
  if redis.call('EXISTS', KEYS[3]) == 1 then return 1 end
  return 2
end
if meta[1] ~= ARGV[1] then return 1 end
local counts = {}
if tonumber(ARGV[4]) > tonumber(meta[2]) then
  counts[#counts + 1] = 'delivered'
  counts[#counts + 1] = ARGV[4]
end
local acked, before = tonumber(ARGV[5]), tonumber(meta[3])
if acked > before then
  local n = before + 1
  while n <= acked do
    local gone = {}
    while n <= acked and #gone < 1000 do
      gone[#gone + 1] = n
      n = n + 1
    end
    redis.call('HDEL', KEYS[2], unpack(gone))
  end
  counts[#counts + 1] = 'acked'
  counts[#counts + 1] = ARGV[5]
end
if ARGV[6] ~= '' then
  counts[#counts + 1] = 'mark'
  counts[#counts + 1] = ARGV[6]
end
if #ARGV >= 8 then
  redis.call('HSET', KEYS[2], unpack(ARGV, 7))
  local last = ARGV[#ARGV - 1]
  if tonumber(last) > tonumber(meta[4]) then
    counts[#counts + 1] = 'sent'
    counts[#counts + 1] = last
  end
end
if #counts > 0 then
  redis.call('HSET', KEYS[1], unpack(counts))
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return 0
";

/// Takes a session for a holder of this node. KEYS: s, o, g. ARGV: the new holder, the
/// holder this node has in memory (empty for none), channel, id. (The expiry is left as it
/// is: the new holder's first record renews it.)
/// Returns {'found', sent, delivered, acked, mark, messages...}, {'held'}, {'gone', reason},
/// {'unknown'} or {'broken'}.
const LOAD: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  local why = redis.call('GET', KEYS[3])
  if why then return {'gone', why} end
  return {'unknown'}
end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'holder') == ARGV[2] then return {'held'} end
redis.call('HSET', KEYS[1], 'holder', ARGV[1])
redis.call('PUBLISH', ARGV[3], ARGV[4] .. ' ' .. ARGV[1])
local sent = redis.call('HGET', KEYS[1], 'sent')
local acked = redis.call('HGET', KEYS[1], 'acked')
local out = {'found', sent, redis.call('HGET', KEYS[1], 'delivered'), acked,
  redis.call('HGET', KEYS[1], 'mark') or ''}
for n = tonumber(acked) + 1, tonumber(sent) do
  local m = redis.call('HGET', KEYS[2], tostring(n))
  if not m then return {'broken'} end
  out[#out + 1] = m
end
return out
";

/// Ends a session this node holds (or that nobody holds). KEYS: s, o, g. ARGV: node,
/// reason, tombstone. Returns 0, or 1 when another node holds it (nothing done).
const END: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 and redis.call('HGET', KEYS[1], 'holder') ~= ARGV[1] then
  return 1
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3])
return 0
";

impl SessionStore for RedisStore {
    fn save(
        &self,
        id: SessionId,
        holder: Holder,
        snapshot: Snapshot,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let keys = self.keys(id);
            let mut call = self.inner.scripts.save.prepare_invoke();
            call.key(&keys[0]).key(&keys[1]).key(&keys[2]);
            call.arg(self.holder(holder))
                .arg(millis(ttl))
                .arg(millis(ttl + TOMBSTONE))
                .arg(snapshot.sent)
                .arg(snapshot.delivered)
                .arg(snapshot.peer_delivered)
                .arg(mark_arg(snapshot.mark.as_deref()));
            for (i, (kind, payload)) in snapshot.unacknowledged.iter().enumerate() {
                call.arg(snapshot.peer_delivered + 1 + i as u64)
                    .arg(encode(*kind, payload));
            }
            let mut conn = self.inner.conn.clone();
            call.invoke_async::<i64>(&mut conn)
                .await
                .map(drop)
                .map_err(store_error)
        })
    }

    fn load(
        &self,
        id: SessionId,
        take_as: Holder,
        held: Option<Holder>,
    ) -> BoxFuture<'_, Result<Lookup>> {
        Box::pin(async move {
            let keys = self.keys(id);
            let mut call = self.inner.scripts.load.prepare_invoke();
            call.key(&keys[0]).key(&keys[1]).key(&keys[2]);
            call.arg(self.holder(take_as))
                .arg(held.map(|h| self.holder(h)).unwrap_or_default())
                .arg(self.channel())
                .arg(id.to_string());
            let mut conn = self.inner.conn.clone();
            let reply: Vec<Vec<u8>> = call.invoke_async(&mut conn).await.map_err(store_error)?;
            let broken =
                || Error::Other(format!("session store: session {id} is inconsistent").into());
            match reply.first().map(Vec::as_slice) {
                Some(b"found") => {
                    let count = |i: usize| reply.get(i).and_then(|v| number(v)).ok_or_else(broken);
                    let (sent, delivered, peer_delivered) = (count(1)?, count(2)?, count(3)?);
                    let mark = match reply.get(4).map(Vec::as_slice) {
                        Some([b'm', mark @ ..]) => Some(tether_proto::Bytes::copy_from_slice(mark)),
                        Some([]) => None,
                        _ => return Err(broken()),
                    };
                    let unacknowledged = reply[5..]
                        .iter()
                        .map(|m| decode(m).ok_or_else(broken))
                        .collect::<Result<Vec<_>>>()?;
                    Ok(Lookup::Found(Snapshot {
                        sent,
                        delivered,
                        peer_delivered,
                        unacknowledged,
                        mark,
                    }))
                }
                Some(b"held") => Ok(Lookup::Held),
                Some(b"gone") => {
                    let why = reply
                        .get(1)
                        .map(|w| String::from_utf8_lossy(w).into_owned());
                    Ok(Lookup::Gone(LostReason::parse(
                        why.as_deref().unwrap_or(""),
                    )))
                }
                Some(b"unknown") => Ok(Lookup::Unknown),
                _ => Err(broken()),
            }
        })
    }

    fn end(&self, id: SessionId, holder: Holder, reason: LostReason) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let keys = self.keys(id);
            let mut call = self.inner.scripts.end.prepare_invoke();
            call.key(&keys[0]).key(&keys[1]).key(&keys[2]);
            call.arg(self.holder(holder))
                .arg(reason.as_str())
                .arg(millis(TOMBSTONE));
            let mut conn = self.inner.conn.clone();
            call.invoke_async::<i64>(&mut conn)
                .await
                .map(drop)
                .map_err(store_error)
        })
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn record(
        &self,
        id: SessionId,
        holder: Holder,
        change: Change,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Recorded>> {
        Box::pin(async move {
            let progress = match &change {
                Change::Created => {
                    return self
                        .save(id, holder, Snapshot::default(), ttl)
                        .await
                        .map(|()| Recorded::Done)
                }
                Change::Sent { progress, .. }
                | Change::Marked { progress, .. }
                | Change::Progress(progress) => *progress,
            };
            let mark = match &change {
                Change::Sent { mark, .. } => mark.as_deref(),
                Change::Marked { mark, .. } => Some(&mark[..]),
                _ => None,
            };
            let Progress {
                delivered,
                acknowledged,
            } = progress;
            let keys = self.keys(id);
            let mut call = self.inner.scripts.record.prepare_invoke();
            call.key(&keys[0]).key(&keys[1]).key(&keys[2]);
            call.arg(self.holder(holder))
                .arg(millis(ttl))
                .arg(millis(ttl + TOMBSTONE))
                .arg(delivered)
                .arg(acknowledged)
                .arg(mark_arg(mark));
            if let Change::Sent {
                first_seq,
                messages,
                ..
            } = &change
            {
                for (i, (kind, payload)) in messages.iter().enumerate() {
                    call.arg(first_seq + i as u64).arg(encode(*kind, payload));
                }
            }
            let mut conn = self.inner.conn.clone();
            match call
                .invoke_async::<i64>(&mut conn)
                .await
                .map_err(store_error)?
            {
                0 => Ok(Recorded::Done),
                1 => Ok(Recorded::Moved),
                _ => Ok(Recorded::Missing),
            }
        })
    }

    fn watch(&self, moved: Box<dyn Fn(SessionId) + Send + Sync>) {
        {
            let mut watching = self
                .inner
                .watching
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if std::mem::replace(&mut *watching, true) {
                return;
            }
        }
        let weak = Arc::downgrade(&self.inner);
        let channel = self.channel();
        tokio::spawn(async move {
            use futures_util::StreamExt as _;
            let mut pause = Duration::from_millis(100);
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let (client, node) = (inner.client.clone(), inner.node.clone());
                drop(inner);
                match client.get_async_pubsub().await {
                    Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                        Ok(()) => {
                            pause = Duration::from_millis(100);
                            let mut messages = pubsub.on_message();
                            while let Some(msg) = messages.next().await {
                                if weak.strong_count() == 0 {
                                    return;
                                }
                                let text = String::from_utf8_lossy(msg.get_payload_bytes());
                                let mut parts = text.split(' ');
                                let (Some(id), Some(holder)) = (parts.next(), parts.next()) else {
                                    continue;
                                };
                                // This node's own copies are its business (a move
                                // back here replaces the old copy itself).
                                if holder.split(':').next() != Some(node.as_str()) {
                                    if let Some(id) = SessionId::parse(id) {
                                        moved(id);
                                    }
                                }
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "session store: subscribing failed"),
                    },
                    Err(e) => tracing::warn!(error = %e, "session store: subscribing failed"),
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        });
    }
}
