//! Sessions shared by several server nodes through a real Redis (`redis-server`, started
//! by each test on a free port): a client resumes on whichever node its reconnect lands on,
//! with nothing lost, repeated or reordered; a node that dies leaves its sessions to the
//! others; Redis itself may be unreachable, restart empty, or stall.
//!
//! Every node runs in a tokio runtime of its own, so that a test can kill one outright (its
//! runtime is dropped mid-flight: whatever it had not written to Redis is gone).
//!
//! The server's handler is written to be correct wherever its session goes (the pattern
//! `docs/scaling.md` shows): it reports every client message it takes, and numbers its own
//! messages on from [`SessionHandle::sent`], so that a handler on the node a session moved
//! to goes on exactly where the previous one stopped.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::chaos_proxy::{Chaos, ChaosProxy, Fault};
use support::numbered::{message, number};
use support::redis::Redis;
use support::session_client::Client;
use tether::reconnect::Backoff;
use tether::redis::{RedisStore, RedisTopic, TopicConfig};
use tether::session::{EndReason, SessionHandle, SessionServer, SessionServerConfig};
use tether::{ClientBuilder, Config, Policy, Server, ServerConfig};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Bounds every wait, so that a bug fails the test instead of hanging it.
const GUARD: Duration = Duration::from_secs(120);

/// What the handlers of every node report to the test.
#[derive(Debug)]
enum Report {
    /// A handler started: on which node, for a restored session or a new one, and the
    /// session's counts then.
    Started {
        node: usize,
        handler: u64,
        restored: bool,
        sent: u64,
        delivered: u64,
    },
    /// A handler took client message `n`.
    Took { handler: u64, n: u64 },
    /// A handler's session ended here.
    Ended {
        handler: u64,
        reason: Option<EndReason>,
    },
}

/// How the test's server behaves.
#[derive(Clone, Copy)]
struct Plan {
    /// Messages the server sends in the session.
    messages: u64,
    /// Messages per tick, and the tick.
    batch: u64,
    tick: Duration,
}

static HANDLERS: AtomicU64 = AtomicU64::new(0);

/// One server node: a `SessionServer` on a `RedisStore`, in a runtime of its own.
struct Node {
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: tether::ShutdownHandle,
}

/// What a node's handler does.
#[derive(Clone)]
enum Role {
    /// Reports what it takes, sends its own numbers (`handler`).
    Numbers(Plan),
    /// Relays the topic to the session (`relay_handler`).
    Relay(String),
    /// Answers what waits together (`recv_requests`, `reply`).
    BatchEcho,
    /// Takes requests and answers none (`reply` with no messages), reporting them.
    Consume,
}

impl Node {
    fn start(
        index: usize,
        url: &str,
        prefix: &str,
        plan: Plan,
        report: mpsc::UnboundedSender<Report>,
    ) -> Self {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        Self::start_at(index, url, prefix, Role::Numbers(plan), report, any)
    }

    fn start_at(
        index: usize,
        url: &str,
        prefix: &str,
        role: Role,
        report: mpsc::UnboundedSender<Report>,
        bind: SocketAddr,
    ) -> Self {
        let (url, prefix) = (url.to_owned(), prefix.to_owned());
        // Many clients: the library's keepalive (a blackhole is not among their faults);
        // few: a fast one, so that blackholes are noticed quickly.
        let node_config = match &role {
            Role::Relay(_) => Config::default(),
            Role::Numbers(_) | Role::BatchEcho | Role::Consume => keepalive(),
        };
        // (Made on a thread of its own: a runtime cannot be started from within the test's.)
        let (addr, shutdown, runtime) = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let (addr, shutdown) = runtime.block_on(async move {
                let store = Arc::new(RedisStore::open_with_prefix(&url, &prefix).unwrap());
                let topic = match &role {
                    Role::Relay(name) => {
                        let config = TopicConfig {
                            prefix: prefix.clone(),
                            ..TopicConfig::default()
                        };
                        Some(RedisTopic::open_with(&url, name, config).unwrap())
                    }
                    Role::Numbers(_) | Role::BatchEcho | Role::Consume => None,
                };
                let sessions = SessionServer::with_store(
                    SessionServerConfig::default(),
                    store,
                    move |session| {
                        let report = report.clone();
                        let (role, topic) = (role.clone(), topic.clone());
                        async move {
                            match (role, topic) {
                                (Role::Relay(_), Some(topic)) => {
                                    relay_handler(index, session, topic, report).await
                                }
                                (Role::Numbers(plan), _) => {
                                    handler(index, session, plan, report).await
                                }
                                (Role::BatchEcho, _) => {
                                    while let Some(Ok(batch)) = session.recv_requests(64).await {
                                        // Working on the answer: a break comes mid-work.
                                        tokio::time::sleep(Duration::from_millis(5)).await;
                                        if session.reply(batch).await.is_err() {
                                            break;
                                        }
                                    }
                                }
                                (Role::Consume, _) => {
                                    let id = HANDLERS.fetch_add(1, Ordering::Relaxed);
                                    while let Some(Ok(batch)) = session.recv_requests(64).await {
                                        for msg in &batch {
                                            let n = number('c', msg);
                                            let _ = report.send(Report::Took { handler: id, n });
                                        }
                                        if session.reply(Vec::new()).await.is_err() {
                                            break;
                                        }
                                    }
                                }
                                _ => unreachable!(),
                            }
                        }
                    },
                );
                let config = sessions.server_config(ServerConfig::default().config(node_config));
                let server = Server::bind(bind, config).await.unwrap();
                let addr = server.local_addr().unwrap();
                let shutdown = server.shutdown_handle();
                tokio::spawn(server.serve(move |ws, _| sessions.serve(ws)));
                (addr, shutdown)
            });
            (addr, shutdown, runtime)
        })
        .join()
        .unwrap();
        Self {
            addr,
            runtime: Some(runtime),
            shutdown,
        }
    }

    /// Kills the node: every task stops where it is, every socket closes.
    fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn handler(
    node: usize,
    session: SessionHandle,
    plan: Plan,
    report: mpsc::UnboundedSender<Report>,
) {
    let id = HANDLERS.fetch_add(1, Ordering::Relaxed);
    let _ = report.send(Report::Started {
        node,
        handler: id,
        restored: session.is_restored(),
        sent: session.sent(),
        delivered: session.delivered(),
    });
    // Numbers go on from what the session sent, wherever it started.
    let first = session.sent() + 1;
    let sender = session.sender();
    let sending = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(plan.tick);
        let mut n = first;
        while n <= plan.messages {
            ticker.tick().await;
            for _ in 0..plan.batch {
                if n > plan.messages || sender.send(message('s', n)).await.is_err() {
                    return;
                }
                n += 1;
            }
        }
    });
    while let Some(Ok(msg)) = session.recv().await {
        let _ = report.send(Report::Took {
            handler: id,
            n: number('c', &msg),
        });
    }
    sending.abort();
    let _ = report.send(Report::Ended {
        handler: id,
        reason: session.end_reason(),
    });
}

/// Relays the topic to the session; reports when it follows the topic (a new session marks
/// where the topic ended when it joined) and what it ended with.
async fn relay_handler(
    node: usize,
    session: SessionHandle,
    topic: RedisTopic,
    report: mpsc::UnboundedSender<Report>,
) {
    let id = HANDLERS.fetch_add(1, Ordering::Relaxed);
    if session.mark().is_none() {
        let end = topic.position().await.unwrap();
        session.set_mark(end.to_bytes()).await.unwrap();
    }
    let _ = report.send(Report::Started {
        node,
        handler: id,
        restored: session.is_restored(),
        sent: session.sent(),
        delivered: session.delivered(),
    });
    topic.relay(&session).await.unwrap();
    let _ = report.send(Report::Ended {
        handler: id,
        reason: session.end_reason(),
    });
}

fn keepalive() -> Config {
    Config::default()
        .ping_interval(Some(Duration::from_millis(100)))
        .ping_timeout(Some(Duration::from_millis(200)))
}

fn client(addr: SocketAddr) -> Client {
    Client::start(addr, keepalive(), Duration::from_secs(1))
}

fn client_with(addr: SocketAddr, config: Config, handshake_timeout: Duration) -> Client {
    Client::start(addr, config, handshake_timeout)
}

/// Sends c1..=count, `batch` per `tick`.
fn send_numbers(
    session: &SessionHandle,
    count: u64,
    batch: u64,
    tick: Duration,
) -> tokio::task::JoinHandle<()> {
    let sender = session.sender();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(tick);
        let mut n = 1;
        while n <= count {
            ticker.tick().await;
            for _ in 0..batch {
                if n > count {
                    break;
                }
                sender
                    .send(message('c', n))
                    .await
                    .unwrap_or_else(|e| panic!("send {n}: {e}"));
                n += 1;
            }
        }
    })
}

/// Takes s1..=count, asserting each is the next one.
async fn take_numbers(session: &SessionHandle, count: u64) {
    let mut expected = 1;
    while expected <= count {
        match session.recv().await {
            Some(Ok(msg)) => {
                assert_eq!(number('s', &msg), expected, "in order, exactly once");
                expected += 1;
            }
            other => panic!("session broke after {} messages: {other:?}", expected - 1),
        }
    }
}

/// What one handler reported.
#[derive(Debug)]
struct Log {
    node: usize,
    restored: bool,
    /// The session's counts when the handler started.
    sent: u64,
    delivered: u64,
    taken: Vec<u64>,
    /// Set once the handler ended: how its session ended (`None`: still going on).
    end: Option<Option<EndReason>>,
}

/// What the handlers reported, by handler.
#[derive(Debug, Default)]
struct Handlers {
    by_id: BTreeMap<u64, Log>,
}

impl Handlers {
    /// Takes reports until `done` holds (bounded by the guard).
    async fn absorb_until(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Report>,
        done: impl Fn(&Self) -> bool,
    ) {
        timeout(GUARD, async {
            while !done(self) {
                let report = rx.recv().await.expect("the nodes report");
                self.absorb(report);
            }
        })
        .await
        .expect("the handlers did not report in time");
    }

    /// Takes the reports already there.
    fn absorb_ready(&mut self, rx: &mut mpsc::UnboundedReceiver<Report>) {
        while let Ok(report) = rx.try_recv() {
            self.absorb(report);
        }
    }

    fn absorb(&mut self, report: Report) {
        {
            match report {
                Report::Started {
                    node,
                    handler,
                    restored,
                    sent,
                    delivered,
                } => {
                    let log = Log {
                        node,
                        restored,
                        sent,
                        delivered,
                        taken: Vec::new(),
                        end: None,
                    };
                    self.by_id.insert(handler, log);
                }
                Report::Took { handler, n } => self.by_id.get_mut(&handler).unwrap().taken.push(n),
                Report::Ended { handler, reason } => {
                    self.by_id.get_mut(&handler).unwrap().end = Some(reason)
                }
            }
        }
    }

    /// Every handler took consecutive numbers starting right after what its session had
    /// delivered when it started; together they took exactly 1..=count, once each.
    fn assert_took_exactly(&self, count: u64) {
        let mut all = Vec::new();
        for (
            id,
            Log {
                delivered, taken, ..
            },
        ) in &self.by_id
        {
            let expected: Vec<u64> = (delivered + 1..).take(taken.len()).collect();
            assert_eq!(taken, &expected, "handler {id} took out of sequence");
            all.extend_from_slice(taken);
        }
        all.sort_unstable();
        assert_eq!(
            all,
            (1..=count).collect::<Vec<_>>(),
            "the handlers together took 1..={count}"
        );
    }

    /// Client messages taken by all handlers together.
    fn taken(&self) -> u64 {
        self.by_id.values().map(|h| h.taken.len() as u64).sum()
    }

    fn restored(&self) -> usize {
        self.by_id.values().filter(|h| h.restored).count()
    }
}

/// The end of an exchange of `count` numbers each way: the client's sends finish, the
/// handlers report that they took them all, the client closes; the handlers must together
/// have taken exactly 1..=count, and no session may have been lost.
async fn settle(
    c: &Client,
    rx: &mut mpsc::UnboundedReceiver<Report>,
    sending: tokio::task::JoinHandle<()>,
    count: u64,
) -> Handlers {
    timeout(GUARD, sending).await.unwrap().unwrap();
    let mut handlers = Handlers::default();
    handlers.absorb_until(rx, |h| h.taken() == count).await;
    timeout(GUARD, c.session.close()).await.unwrap().unwrap();
    handlers.assert_took_exactly(count);
    assert_eq!(c.lost.load(Ordering::Relaxed), 0, "no session lost");
    handlers
}

fn prefix() -> String {
    format!("t{:08x}", rand::random::<u32>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_moves_to_another_node_with_nothing_lost_or_repeated() {
    let redis = Redis::start();
    let prefix = prefix();
    let plan = Plan {
        messages: 200,
        batch: 1,
        tick: Duration::from_millis(2),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let a = Node::start(0, &redis.url(), &prefix, plan, tx.clone());
    let b = Node::start(1, &redis.url(), &prefix, plan, tx);
    let proxy = ChaosProxy::start(a.addr).await;
    let c = client(proxy.addr());
    let sending = send_numbers(&c.session, 200, 1, Duration::from_millis(2));
    let session = &c.session;
    let taking = async {
        take_numbers(session, 200).await;
    };
    let moving = async {
        // Once both directions are under way, the connection breaks and the client's
        // reconnect lands on the other node.
        tokio::time::sleep(Duration::from_millis(150)).await;
        proxy.retarget(b.addr);
        proxy.fault(Fault::Rst);
    };
    timeout(GUARD, async { tokio::join!(taking, moving) })
        .await
        .unwrap();
    timeout(GUARD, sending).await.unwrap().unwrap();
    timeout(GUARD, c.session.close()).await.unwrap().unwrap();

    let mut handlers = Handlers::default();
    // The handlers report their end once the close reached them.
    handlers
        .absorb_until(&mut rx, |h| {
            h.by_id.len() == 2 && h.by_id.values().all(|h| h.end.is_some())
        })
        .await;
    handlers.assert_took_exactly(200);
    let (first, second) = (
        &handlers.by_id.values().next().unwrap(),
        &handlers.by_id.values().nth(1).unwrap(),
    );
    assert_eq!(
        (first.node, first.restored),
        (0, false),
        "a new session on node A"
    );
    assert_eq!(
        (second.node, second.restored),
        (1, true),
        "restored on node B"
    );
    assert!(
        second.sent > 0 && second.delivered > 0,
        "B went on from A's counts: {second:?}"
    );
    assert_eq!(
        first.end,
        Some(Some(EndReason::Moved)),
        "A's handler is told the session moved"
    );
    assert_eq!(second.end, Some(Some(EndReason::ClosedByPeer)));
    assert_eq!(c.lost.load(Ordering::Relaxed), 0);
    assert!(c.resumes.load(Ordering::Relaxed) >= 1);
}

/// The multi-node chaos run: three nodes behind a balancer that sends each new connection
/// to the next node and breaks connections every 50–500 ms (RST, FIN, mid-frame, a cut
/// opening handshake, a blackhole), while client and server each send 10,000 numbered
/// messages. Both sides take exactly 1..=10,000 in order; most reconnects land on another
/// node, and at least 10 such moves are asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_random_cuts_across_three_nodes() {
    const MESSAGES: u64 = 10_000;
    let redis = Redis::start();
    let prefix = prefix();
    let plan = Plan {
        messages: MESSAGES,
        batch: 10,
        tick: Duration::from_millis(10),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let nodes: Vec<Node> = (0..3)
        .map(|i| Node::start(i, &redis.url(), &prefix, plan, tx.clone()))
        .collect();
    drop(tx);
    let proxy = ChaosProxy::balance(nodes.iter().map(|n| n.addr).collect()).await;
    let c = client(proxy.addr());

    let (chaos, cuts) = proxy.break_at_random(Chaos::Everything);
    let sending = send_numbers(&c.session, MESSAGES, 10, Duration::from_millis(10));
    timeout(GUARD, take_numbers(&c.session, MESSAGES))
        .await
        .expect("the client did not receive everything in time");
    timeout(GUARD, sending).await.unwrap().unwrap();
    let mut handlers = Handlers::default();
    handlers
        .absorb_until(&mut rx, |h| h.taken() == MESSAGES)
        .await;
    chaos.abort();
    timeout(GUARD, c.session.close()).await.unwrap().unwrap();
    handlers.absorb_ready(&mut rx);

    let moves = handlers.restored();
    println!(
        "{} faults, {} resumes, {} connections, {} handlers, {moves} moves to another node",
        cuts.total(),
        c.resumes.load(Ordering::Relaxed),
        proxy.accepted(),
        handlers.by_id.len(),
    );
    handlers.assert_took_exactly(MESSAGES);
    assert_eq!(c.lost.load(Ordering::Relaxed), 0, "no session lost");
    assert!(moves >= 10, "only {moves} moves to another node");
    let nodes_used: std::collections::BTreeSet<_> =
        handlers.by_id.values().map(|h| h.node).collect();
    assert_eq!(
        nodes_used.len(),
        3,
        "every node carried the session at some point"
    );
    drop(nodes);
}

/// What `docs/scaling.md` promises when a node dies: every message a handler sent (its
/// `send` returned) reaches the client, exactly once and in order, from the node the session
/// moves to; every client message is taken at most once, and only one can be missing: the
/// one whose delivery was recorded as the node died, before its handler saw it (as when a
/// handler crashes right after `recv`). The test reports that gap when it happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_a_killed_node_resume_on_another() {
    const MESSAGES: u64 = 2_000;
    let redis = Redis::start();
    let prefix = prefix();
    let plan = Plan {
        messages: MESSAGES,
        batch: 5,
        tick: Duration::from_millis(5),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut a = Node::start(0, &redis.url(), &prefix, plan, tx.clone());
    let b = Node::start(1, &redis.url(), &prefix, plan, tx);
    // The balancer sends the first connection to A, and skips A once it is dead.
    let proxy = ChaosProxy::balance(vec![a.addr, b.addr]).await;
    let c = client(proxy.addr());
    let sending = send_numbers(&c.session, MESSAGES, 5, Duration::from_millis(5));
    let session = &c.session;
    let killing = async {
        // Mid-run, with traffic both ways.
        while session.delivered() < MESSAGES / 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        proxy.retarget(b.addr);
        a.kill();
    };
    timeout(GUARD, async {
        tokio::join!(take_numbers(session, MESSAGES), killing)
    })
    .await
    .expect("the client did not receive everything in time");
    timeout(GUARD, sending).await.unwrap().unwrap();
    let mut handlers = Handlers::default();
    // B's handler takes everything A did not.
    handlers
        .absorb_until(&mut rx, |h| {
            h.by_id
                .values()
                .any(|h| h.node == 1 && h.taken.last() == Some(&MESSAGES))
        })
        .await;
    timeout(GUARD, c.session.close()).await.unwrap().unwrap();

    let on_a: Vec<_> = handlers.by_id.values().filter(|h| h.node == 0).collect();
    let on_b: Vec<_> = handlers.by_id.values().filter(|h| h.node == 1).collect();
    assert_eq!((on_a.len(), on_b.len()), (1, 1), "{handlers:?}");
    let (a_taken, b) = (&on_a[0].taken, on_b[0]);
    assert!(b.restored, "restored on B");
    // Each handler took consecutive numbers: A from 1, B from what the store recorded.
    assert_eq!(a_taken, &(1..=a_taken.len() as u64).collect::<Vec<_>>());
    assert_eq!(b.taken, (b.delivered + 1..=MESSAGES).collect::<Vec<_>>());
    let gap = b.delivered - a_taken.len() as u64;
    println!(
        "A took {}, B went on after {} (gap {gap}); B resumed with {} of its messages sent",
        a_taken.len(),
        b.delivered,
        b.sent
    );
    assert!(gap <= 1, "{gap} client messages lost with node A");
    assert_eq!(c.lost.load(Ordering::Relaxed), 0);
}

/// Redis is killed mid-run (its data gone) and restarted empty: sessions wait meanwhile,
/// nothing is lost; the nodes write their sessions again, and a client then resumes on the
/// other node from what was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_loses_nothing() {
    const MESSAGES: u64 = 1_000;
    let mut redis = Redis::start();
    let prefix = prefix();
    let plan = Plan {
        messages: MESSAGES,
        batch: 2,
        tick: Duration::from_millis(2),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let a = Node::start(0, &redis.url(), &prefix, plan, tx.clone());
    let b = Node::start(1, &redis.url(), &prefix, plan, tx);
    let proxy = ChaosProxy::start(a.addr).await;
    let c = client(proxy.addr());
    let sending = send_numbers(&c.session, MESSAGES, 2, Duration::from_millis(2));
    let session = &c.session;
    let outage = async {
        while session.delivered() < MESSAGES / 4 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        redis.stop();
        // Down for a while: the session stalls (its sends and deliveries wait for Redis).
        tokio::time::sleep(Duration::from_millis(500)).await;
        let stalled = session.delivered();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            session.delivered(),
            stalled,
            "nothing is sent while Redis is down"
        );
        redis.restart();
        while session.delivered() < MESSAGES / 2 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Resumed on B from what A wrote again.
        proxy.retarget(b.addr);
        proxy.fault(Fault::Rst);
    };
    timeout(GUARD, async {
        tokio::join!(take_numbers(session, MESSAGES), outage)
    })
    .await
    .expect("the client did not receive everything in time");
    let handlers = settle(&c, &mut rx, sending, MESSAGES).await;
    assert_eq!(handlers.restored(), 1, "resumed once on B: {handlers:?}");
    assert_eq!(c.lost.load(Ordering::Relaxed), 0);
}

/// A node whose Redis is unreachable still starts and serves plain WebSocket clients; new
/// sessions are refused with 1011 (the client retries) until Redis is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_starts_without_redis_and_sessions_begin_once_it_is_up() {
    let mut redis = Redis::start();
    redis.stop();
    let prefix = prefix();
    let plan = Plan {
        messages: 5,
        batch: 5,
        tick: Duration::from_millis(1),
    };
    let (tx, _rx) = mpsc::unbounded_channel();
    let a = Node::start(0, &redis.url(), &prefix, plan, tx);

    // Plain traffic does not need Redis.
    let mut plain = ClientBuilder::new(format!("ws://{}/", a.addr))
        .connect()
        .await
        .unwrap();
    for n in 1..=5 {
        let msg = timeout(GUARD, plain.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(number('s', &msg), n);
    }
    plain.close(1000, "").await.unwrap();

    // A session is refused (1011) and tried again until Redis answers.
    let retries = Arc::new(AtomicU64::new(0));
    let r = Arc::clone(&retries);
    let codes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let c = Arc::clone(&codes);
    let policy = Policy::default()
        .backoff(Backoff {
            initial: Duration::from_millis(50),
            min: Duration::from_millis(50),
            factor: 1.0,
            max: Duration::from_millis(50),
            ..Backoff::default()
        })
        .reconnect_delay(Duration::from_millis(50))
        .min_uptime(Duration::ZERO);
    let session = ClientBuilder::new(format!("ws://{}/", a.addr))
        .reconnecting()
        .policy(policy)
        .on_event(move |e| match e {
            tether::reconnect::ReconnectEvent::Connecting { .. } => {
                r.fetch_add(1, Ordering::Relaxed);
            }
            tether::reconnect::ReconnectEvent::Closed { code, .. } => {
                c.lock().unwrap().push(*code);
            }
            _ => {}
        })
        .session()
        .start();
    timeout(GUARD, async {
        while retries.load(Ordering::Relaxed) < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    assert!(!session.is_connected());
    {
        let codes = codes.lock().unwrap();
        assert!(
            !codes.is_empty() && codes.iter().all(|&c| c == Some(1011)),
            "every refused session closed with 1011: {codes:?}"
        );
    }
    redis.restart();
    timeout(GUARD, take_numbers(&session, 5)).await.unwrap();
    assert!(session.is_connected());
    timeout(GUARD, session.close()).await.unwrap().unwrap();
}

/// Publishes p1..=count to the topic `name`, one every `every`.
fn publish_numbers(
    redis: &Redis,
    prefix: &str,
    name: &str,
    count: u64,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    let config = TopicConfig {
        prefix: prefix.to_owned(),
        ..TopicConfig::default()
    };
    let publisher = RedisTopic::open_with(&redis.url(), name, config).unwrap();
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        for n in 1..=count {
            ticker.tick().await;
            publisher.publish(&message('p', n)).await.unwrap();
        }
    })
}

/// Takes p1..=count from a topic relay, asserting each is the next one.
async fn take_published(session: &SessionHandle, count: u64) {
    let mut expected = 1;
    while expected <= count {
        match session.recv().await {
            Some(Ok(msg)) => {
                assert_eq!(number('p', &msg), expected, "in order, exactly once");
                expected += 1;
            }
            other => panic!("session broke after {} messages: {other:?}", expected - 1),
        }
    }
}

/// Cross-node broadcast with resumable sessions: 20 clients spread over two nodes follow a
/// topic while the balancer breaks every connection every 50–500 ms, so sessions keep
/// moving between nodes; every client takes every published message exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_reaches_every_session_on_every_node_once_through_cuts() {
    const CLIENTS: usize = 20;
    const MESSAGES: u64 = 1_000;
    let redis = Redis::start();
    let prefix = prefix();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let nodes: Vec<Node> = (0..2)
        .map(|i| {
            let role = Role::Relay("news".to_owned());
            Node::start_at(i, &redis.url(), &prefix, role, tx.clone(), any)
        })
        .collect();
    let proxy = ChaosProxy::balance(nodes.iter().map(|n| n.addr).collect()).await;
    let clients: Vec<Client> = (0..CLIENTS).map(|_| client(proxy.addr())).collect();
    // Every session follows the topic before the first message is published.
    let mut handlers = Handlers::default();
    handlers
        .absorb_until(&mut rx, |h| h.by_id.len() == CLIENTS)
        .await;
    let on_each: Vec<usize> = (0..2)
        .map(|n| handlers.by_id.values().filter(|h| h.node == n).count())
        .collect();
    assert!(
        on_each.iter().all(|&n| n > 0),
        "spread over both nodes: {on_each:?}"
    );

    let (chaos, _) = proxy.break_at_random(Chaos::Resets);
    let publishing = publish_numbers(&redis, &prefix, "news", MESSAGES, Duration::from_millis(3));
    let takers: Vec<_> = clients
        .iter()
        .map(|c| take_published(&c.session, MESSAGES))
        .collect();
    timeout(GUARD, futures_util::future::join_all(takers))
        .await
        .expect("every client took every message in time");
    timeout(GUARD, publishing).await.unwrap().unwrap();
    chaos.abort();
    handlers.absorb_ready(&mut rx);
    let resumes: u64 = clients
        .iter()
        .map(|c| c.resumes.load(Ordering::Relaxed))
        .sum();
    let lost: u64 = clients.iter().map(|c| c.lost.load(Ordering::Relaxed)).sum();
    println!(
        "{CLIENTS} clients, {resumes} resumes, {} moves to another node",
        handlers.restored()
    );
    assert_eq!(lost, 0);
    assert!(
        handlers.restored() >= CLIENTS,
        "sessions moved: {}",
        handlers.restored()
    );
    for c in &clients {
        timeout(GUARD, c.session.close()).await.unwrap().unwrap();
    }
}

/// A rolling restart: every node of three is shut down (its clients are closed with 1001)
/// and started again in turn, while many clients follow a topic that publishes 100
/// messages a second; every client takes every message exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_loses_no_broadcast_message() {
    const CLIENTS: usize = 1_000;
    const MESSAGES: u64 = 600;
    let redis = Redis::start();
    let prefix = prefix();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let role = Role::Relay("ticker".to_owned());
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| Node::start_at(i, &redis.url(), &prefix, role.clone(), tx.clone(), any))
        .collect();
    let proxy = ChaosProxy::balance(nodes.iter().map(|n| n.addr).collect()).await;
    // The library's keepalive and resume handshake timeout: under a thousand clients on a
    // small machine, tight ones would only make clients give up on answers under way.
    let clients: Vec<Client> = (0..CLIENTS)
        .map(|_| client_with(proxy.addr(), Config::default(), Duration::from_secs(10)))
        .collect();
    let mut handlers = Handlers::default();
    handlers
        .absorb_until(&mut rx, |h| h.by_id.len() == CLIENTS)
        .await;

    let publishing = publish_numbers(
        &redis,
        &prefix,
        "ticker",
        MESSAGES,
        Duration::from_millis(10),
    );
    let takers: Vec<_> = clients
        .iter()
        .map(|c| take_published(&c.session, MESSAGES))
        .collect();
    let restarting = async {
        for (i, node) in nodes.iter_mut().enumerate() {
            tokio::time::sleep(Duration::from_millis(1_000)).await;
            let addr = node.addr;
            node.shutdown.shutdown();
            tokio::time::sleep(Duration::from_millis(500)).await;
            node.kill();
            *node = Node::start_at(i, &redis.url(), &prefix, role.clone(), tx.clone(), addr);
        }
    };
    let started = std::time::Instant::now();
    // (The whole run is CPU-bound on a small machine: every delivery is a Redis write.)
    timeout(3 * GUARD, async {
        tokio::join!(futures_util::future::join_all(takers), restarting)
    })
    .await
    .expect("every client took every message in time");
    timeout(GUARD, publishing).await.unwrap().unwrap();
    handlers.absorb_ready(&mut rx);
    let resumes: u64 = clients
        .iter()
        .map(|c| c.resumes.load(Ordering::Relaxed))
        .sum();
    let lost: u64 = clients.iter().map(|c| c.lost.load(Ordering::Relaxed)).sum();
    println!(
        "{CLIENTS} clients took {MESSAGES} messages each in {:.1} s: {resumes} resumes, {} \
         moves to another node",
        started.elapsed().as_secs_f64(),
        handlers.restored()
    );
    assert_eq!(lost, 0);
    assert!(
        resumes >= CLIENTS as u64,
        "every node's clients resumed elsewhere: {resumes}"
    );
}

/// The JavaScript client in headless Chromium, across three nodes behind the cutting
/// balancer (as `sessions_survive_random_cuts_across_three_nodes` for tether's client):
/// the page and the server each send 10,000 numbered messages, and each side takes exactly
/// 1..=10,000 in order, with at least 10 moves to another node. Needs Chromium, node and
/// playwright-core, like the other browser tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_client_in_chromium_survives_cuts_across_three_nodes() {
    use support::browser::{require_chromium, run_driver, serve_js_page};
    const MESSAGES: u64 = 10_000;
    require_chromium();
    let redis = Redis::start();
    let prefix = prefix();
    let plan = Plan {
        messages: MESSAGES,
        batch: 10,
        tick: Duration::from_millis(10),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let nodes: Vec<Node> = (0..3)
        .map(|i| Node::start(i, &redis.url(), &prefix, plan, tx.clone()))
        .collect();
    let proxy = ChaosProxy::balance(nodes.iter().map(|n| n.addr).collect()).await;
    let (chaos, _) = proxy.break_at_random(Chaos::Cuts);
    let page_port = serve_js_page("numbers.html", "/?n=10000").await;
    let out = run_driver(
        "run.mjs",
        &[
            format!("http://127.0.0.1:{page_port}/?n={MESSAGES}"),
            format!("ws://127.0.0.1:{}/", proxy.addr().port()),
        ],
        GUARD,
    )
    .await;
    chaos.abort();
    println!("{}", out.result);
    let result: serde_json::Value = serde_json::from_str(&out.result)
        .unwrap_or_else(|e| panic!("{e}: {} {}", out.result, out.stderr));
    assert_eq!(result["inOrder"], true, "{result} {}", out.stderr);
    assert_eq!(result["count"], MESSAGES, "{result}");
    assert_eq!(result["lost"], serde_json::Value::Null, "{result}");
    let mut handlers = Handlers::default();
    handlers
        .absorb_until(&mut rx, |h| h.taken() == MESSAGES)
        .await;
    handlers.assert_took_exactly(MESSAGES);
    let moves = handlers.restored();
    println!(
        "{moves} moves to another node, {} connections",
        proxy.accepted()
    );
    assert!(moves >= 10, "only {moves} moves to another node");
    assert!(
        result["resumes"].as_u64().unwrap() >= moves as u64,
        "every move was a resume: {result}"
    );
}

/// A Redis that stalls for 3 s (longer than the store's 2 s response timeout) in the middle
/// of an exchange: the session waits and retries, and nothing is lost or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_delays_a_session_but_loses_nothing() {
    const MESSAGES: u64 = 600;
    let redis = Arc::new(Redis::start());
    let prefix = prefix();
    let plan = Plan {
        messages: MESSAGES,
        batch: 2,
        tick: Duration::from_millis(2),
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let a = Node::start(0, &redis.url(), &prefix, plan, tx);
    let c = client(a.addr);
    let sending = send_numbers(&c.session, MESSAGES, 2, Duration::from_millis(2));
    let session = &c.session;
    let stall = async {
        while session.delivered() < MESSAGES / 3 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let redis = Arc::clone(&redis);
        let before = session.delivered();
        tokio::task::spawn_blocking(move || redis.stall(3.0))
            .await
            .unwrap();
        assert!(
            session.delivered() < MESSAGES,
            "still going after the stall"
        );
        before
    };
    let (_, before) = timeout(GUARD, async {
        tokio::join!(take_numbers(session, MESSAGES), stall)
    })
    .await
    .expect("the client did not receive everything in time");
    let handlers = settle(&c, &mut rx, sending, MESSAGES).await;
    assert!(before < MESSAGES / 2);
    assert_eq!(handlers.by_id.len(), 1, "the same handler throughout");
    assert_eq!(c.lost.load(Ordering::Relaxed), 0);
}

/// A handler that answers requests in batches (`recv_requests`, `reply`: one Redis request
/// records a batch of replies and the deliveries of their requests) echoes 2,000 messages
/// while the session moves to another node: every
/// echo arrives exactly once, in order, also for the requests the first node had taken and
/// not answered yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_answered_exactly_once_across_a_move() {
    echo_across(Break::Move).await;
}

/// The same when the first node dies mid-run: what it had taken and not answered is
/// answered by the node the session moves to, and nothing it answered is answered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_answered_exactly_once_when_a_node_dies() {
    echo_across(Break::Kill).await;
}

/// Requests answered with no messages (`reply` with none) are recorded delivered all the
/// same: the client's graceful close, which waits for every acknowledgement, completes, and
/// the handler took each request once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_answered_with_nothing_are_acknowledged() {
    const MESSAGES: u64 = 500;
    let redis = Redis::start();
    let prefix = prefix();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let node = Node::start_at(0, &redis.url(), &prefix, Role::Consume, tx, any);
    let c = client(node.addr);
    timeout(
        GUARD,
        send_numbers(&c.session, MESSAGES, 50, Duration::from_millis(1)),
    )
    .await
    .unwrap()
    .unwrap();
    timeout(GUARD, c.session.close())
        .await
        .expect("every request acknowledged")
        .unwrap();
    assert_eq!(c.session.unacknowledged(), (0, 0));
    let mut taken = Vec::new();
    while let Ok(report) = rx.try_recv() {
        if let Report::Took { n, .. } = report {
            taken.push(n);
        }
    }
    assert_eq!(taken, (1..=MESSAGES).collect::<Vec<_>>());
}

/// How the echo run loses its first node.
enum Break {
    /// The connection is reset and the client resumes on the other node.
    Move,
    /// The node is killed.
    Kill,
}

async fn echo_across(how: Break) {
    const MESSAGES: u64 = 2_000;
    let redis = Redis::start();
    let prefix = prefix();
    let (tx, _rx) = mpsc::unbounded_channel();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut nodes: Vec<Node> = (0..2)
        .map(|i| Node::start_at(i, &redis.url(), &prefix, Role::BatchEcho, tx.clone(), any))
        .collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let proxy = ChaosProxy::start(addrs[0]).await;
    let c = client(proxy.addr());
    let sender = c.session.sender();
    // Ten every 2 ms: the run lasts long enough for the break to come mid-run, and batches
    // wait for the handler.
    let sending = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_millis(2));
        for n in 1..=MESSAGES {
            if n % 10 == 1 {
                ticker.tick().await;
            }
            sender.send(message('s', n)).await.unwrap();
        }
    });
    let session = &c.session;
    let breaking = async {
        while session.delivered() < MESSAGES / 2 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        proxy.retarget(addrs[1]);
        match how {
            Break::Move => proxy.fault(Fault::Rst),
            Break::Kill => nodes[0].kill(),
        }
    };
    timeout(GUARD, async {
        tokio::join!(take_numbers(session, MESSAGES), breaking)
    })
    .await
    .expect("every echo in time");
    timeout(GUARD, sending).await.unwrap().unwrap();
    timeout(GUARD, c.session.close()).await.unwrap().unwrap();
    assert!(c.resumes.load(Ordering::Relaxed) >= 1);
    assert_eq!(c.lost.load(Ordering::Relaxed), 0);
    drop(nodes);
}
