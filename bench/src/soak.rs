//! The soak test: N plain reconnecting tether clients (one process) hold connections to a
//! tether server (another process) that broadcasts R messages a second to all of them, for
//! M minutes, while each client drops its connection at random (about 1% of them every
//! 10 s) and reconnects. Every 10 s the orchestrator samples the server process — resident
//! memory, its peak, open file descriptors, connected clients — and asks the clients for
//! the latency of the broadcasts they received in that window and for their counters.
//!
//! The report is a table of the samples, a chart of the server's RSS, and a verdict: RSS
//! growth after the warm-up (the first 20% of the run, at least 20 s), fd growth after it,
//! and how stable the windows' p99 latency was. The run fails (non-zero exit) when the fd
//! count grows after the warm-up by more than 1% of N plus 50, when a client sees a gap in
//! the sequence numbers while connected, when a client gives up reconnecting, when a
//! process dies, or — for runs of at least 10 minutes — when RSS grows by more than 5%.
//!
//! Under the system allocator (glibc) each sample also has the heap in use as glibc counts
//! it, so that memory the server holds can be told from free space the allocator keeps;
//! `--allocator jemalloc` preloads jemalloc into the server instead.
//!
//! `scripts/soak.sh MINUTES [--clients N] [--rate R] [--allocator A]` builds and runs it
//! (`bench soak --minutes M ...`); see docs/benchmarks.md ("Soak").

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, BufRead as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tether::{ClientBuilder, PreparedMessage, Server, ServerConfig, WebSocket};
use tokio::sync::mpsc;

use crate::args::Args;
use crate::hist::Histogram;
use crate::load::run_local;
use crate::proc::Child;

/// Broadcast messages waiting for one client; a client whose queue is full when the next
/// broadcast comes is dropped (closed with [`CLOSE_SLOW`]) instead of holding others up.
const BACKLOG: usize = 64;
/// Most queued messages written to one client with one flush.
const BATCH: usize = 16;
/// The close code of a client dropped for being slow.
const CLOSE_SLOW: u16 = 4001;
/// Time between two samples unless `--interval` says otherwise.
const INTERVAL: Duration = Duration::from_secs(10);
/// The warm-up is this share of the run…
const WARMUP_SHARE: f64 = 0.2;
/// …and at least this long.
const WARMUP_MIN: Duration = Duration::from_secs(20);
/// Runs at least this long fail on RSS growth; shorter ones only report it.
const RSS_JUDGED_FROM: Duration = Duration::from_secs(600);
/// The RSS growth after the warm-up that fails a long enough run, in percent.
const RSS_LIMIT_PERCENT: f64 = 5.0;
/// How long the clients may take to connect, all of them.
const CONNECT_LIMIT: Duration = Duration::from_secs(120);
/// How long a child may take to answer a command.
const ANSWER_LIMIT: Duration = Duration::from_secs(20);

fn now_micros() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Counters and maps stay usable whatever panicked while holding the lock.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// A broadcast's payload: its sequence number and its send time (µs since the Unix epoch),
/// little-endian.
fn encode(seq: u64, sent_micros: u64) -> Vec<u8> {
    let mut payload = Vec::with_capacity(16);
    payload.extend_from_slice(&seq.to_le_bytes());
    payload.extend_from_slice(&sent_micros.to_le_bytes());
    payload
}

fn decode(payload: &[u8]) -> Option<(u64, u64)> {
    let seq = payload.get(..8)?.try_into().ok()?;
    let sent = payload.get(8..16)?.try_into().ok()?;
    Some((u64::from_le_bytes(seq), u64::from_le_bytes(sent)))
}

/// `name=value` pairs of a command's answer (`STATS a=1 b=2`); absent names read as 0.
#[derive(Clone, Debug, Default)]
struct Fields(Vec<(String, u64)>);

impl Fields {
    fn parse(line: &str) -> Self {
        Self(
            line.split_whitespace()
                .filter_map(|pair| {
                    let (name, value) = pair.split_once('=')?;
                    Some((name.to_owned(), value.parse().ok()?))
                })
                .collect(),
        )
    }

    fn get(&self, name: &str) -> u64 {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, v)| *v)
    }
}

// ----- the server process -----

/// The server's registry of connected clients and its counters.
#[derive(Default)]
struct Hub {
    /// Each connected client's queue of broadcasts.
    peers: Mutex<HashMap<u64, mpsc::Sender<PreparedMessage>>>,
    next_id: AtomicU64,
    upgrades: AtomicU64,
    /// Clients dropped because their queue was full.
    kicked: AtomicU64,
    /// Broadcasts made (the last sequence number).
    broadcasts: AtomicU64,
    /// Messages queued for clients, over all broadcasts.
    queued: AtomicU64,
}

impl Hub {
    fn line(&self) -> String {
        let (heap_used, heap_free) = heap();
        format!(
            "STATS connected={} upgrades={} kicked={} broadcasts={} queued={} heap_used={heap_used} heap_free={heap_free}",
            lock(&self.peers).len(),
            get(&self.upgrades),
            get(&self.kicked),
            get(&self.broadcasts),
            get(&self.queued),
        )
    }

    /// Encodes broadcast `seq` once and queues it for every client; drops the clients whose
    /// queue is full.
    fn broadcast(&self, seq: u64) {
        let msg = PreparedMessage::binary(encode(seq, now_micros()));
        let (mut queued, mut kicked) = (0, 0);
        lock(&self.peers).retain(|_, tx| match tx.try_send(msg.clone()) {
            Ok(()) => {
                queued += 1;
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                kicked += 1;
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        add(&self.queued, queued);
        add(&self.kicked, kicked);
        self.broadcasts.store(seq, Ordering::Relaxed);
    }
}

/// The bytes the allocator has handed out and the bytes it holds free, from glibc's
/// `mallinfo2` (zero elsewhere). Their sum is what the heap occupies; RSS growth with flat
/// use is the allocator's fragmentation, not memory the program holds.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn heap() -> (u64, u64) {
    // SAFETY: mallinfo2 only reads the allocator's own counters.
    let info = unsafe { libc::mallinfo2() };
    ((info.uordblks + info.hblkhd) as u64, info.fordblks as u64)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn heap() -> (u64, u64) {
    (0, 0)
}

/// Takes a client out of the registry when its connection task ends, however it ends.
struct Registered<'a> {
    hub: &'a Hub,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        lock(&self.hub.peers).remove(&self.id);
    }
}

/// `bench soak-server [--addr A] [--rate R] [--cpu C]`: a tether `Server` (default
/// `ServerConfig`) that broadcasts R messages a second to every connected client. Prints
/// `LISTENING <addr>`; `stats` on standard input answers `STATS connected=… upgrades=…
/// kicked=… broadcasts=… queued=…`. Exits when standard input closes.
pub(crate) fn server(args: &Args) -> io::Result<()> {
    args.only(&["addr", "rate", "cpu"])?;
    let addr: std::net::SocketAddr = args.parse_or("addr", ([127, 0, 0, 1], 0).into())?;
    let period = period(args.parse_or("rate", 10.0)?)?;
    let hub = Arc::new(Hub::default());
    let stats = hub.clone();
    std::thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            match line.as_deref() {
                Ok("stats") => println!("{}", stats.line()),
                Ok(other) => eprintln!("soak-server: unknown command {other:?}"),
                Err(_) => break,
            }
        }
        std::process::exit(0);
    });
    run_local(args, async move {
        let server = Server::bind(addr, ServerConfig::default()).await?;
        println!("LISTENING {}", server.local_addr()?);
        let ticker = hub.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            // A late tick is skipped, not made up for: sequence numbers count broadcasts, so
            // no client sees a gap from it.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            for seq in 1.. {
                tick.tick().await;
                ticker.broadcast(seq);
            }
        });
        server
            .serve(move |ws, _request| {
                let hub = hub.clone();
                async move { serve_client(ws, &hub).await }
            })
            .await
    })
}

fn period(rate: f64) -> io::Result<Duration> {
    if !(rate > 0.0 && rate <= 10_000.0) {
        return Err(io::Error::other(format!(
            "--rate {rate}: between 0 and 10000"
        )));
    }
    Ok(Duration::from_secs_f64(1.0 / rate))
}

/// One client's connection: writes out what the broadcasts queue for it until the client
/// leaves, or until the broadcaster drops it for being slow (its queue's sender goes away).
async fn serve_client(mut ws: WebSocket, hub: &Hub) {
    let (tx, mut outbox) = mpsc::channel(BACKLOG);
    let id = hub.next_id.fetch_add(1, Ordering::Relaxed);
    lock(&hub.peers).insert(id, tx);
    add(&hub.upgrades, 1);
    let _registered = Registered { hub, id };
    let slow = loop {
        tokio::select! {
            received = ws.recv() => match received {
                // Clients send nothing; whatever comes is ignored. An error means the
                // connection is closing: `None` comes next.
                Some(_) => {}
                None => break false,
            },
            next = outbox.recv() => match next {
                Some(first) => {
                    if send_batch(&mut ws, first, &mut outbox).await.is_err() {
                        break false;
                    }
                }
                // Only the registry held the sender: the broadcaster dropped this client.
                None => break true,
            },
        }
    };
    if slow {
        let _ = ws.close(CLOSE_SLOW, "too slow for the broadcast").await;
    }
    // Finish the closing handshake if sending failed first.
    while ws.recv().await.is_some() {}
}

/// Queues `first` and what else already waits (up to [`BATCH`]), then writes them at once.
async fn send_batch(
    ws: &mut WebSocket,
    first: PreparedMessage,
    outbox: &mut mpsc::Receiver<PreparedMessage>,
) -> tether::Result<()> {
    ws.feed_prepared(&first).await?;
    for _ in 1..BATCH {
        match outbox.try_recv() {
            Ok(next) => ws.feed_prepared(&next).await?,
            Err(_) => break,
        }
    }
    ws.flush().await
}

// ----- the clients process -----

/// Latency of the broadcasts received since the last `window` command.
#[derive(Default)]
struct Window {
    /// Receive time − send time, in ns (the histogram's unit), at µs precision.
    hist: Histogram,
    count: u64,
    max_micros: u64,
}

/// What the clients count, over all of them, since they started.
#[derive(Default)]
struct Crowd {
    /// Clients connected at least once.
    first: AtomicU64,
    /// Clients connected now.
    connected: AtomicU64,
    /// Connections opened after a client's first one.
    reconnects: AtomicU64,
    /// Connections the clients closed themselves (the random drops).
    drops: AtomicU64,
    /// Connections that ended otherwise (the server closed them, or they failed)…
    lost: AtomicU64,
    /// …of which the server closed as too slow.
    kicked: AtomicU64,
    /// Clients whose reconnect loop stopped with a fatal error.
    fatal: AtomicU64,
    messages: AtomicU64,
    /// Sequence numbers missing between two broadcasts received on one connection.
    gaps: AtomicU64,
    /// Broadcasts received on one connection after a later one, or twice.
    disorder: AtomicU64,
    /// Messages that were not a broadcast's 16 bytes.
    malformed: AtomicU64,
    window: Mutex<Window>,
}

impl Crowd {
    /// Counts broadcast `payload`; `last` is the connection's latest sequence number.
    fn receive(&self, payload: &[u8], last: &mut Option<u64>) {
        let Some((seq, sent)) = decode(payload) else {
            add(&self.malformed, 1);
            return;
        };
        let latency = now_micros().saturating_sub(sent);
        match *last {
            Some(prev) if seq > prev + 1 => add(&self.gaps, seq - prev - 1),
            Some(prev) if seq <= prev => add(&self.disorder, 1),
            _ => {}
        }
        *last = Some(last.map_or(seq, |prev| prev.max(seq)));
        add(&self.messages, 1);
        let mut window = lock(&self.window);
        window.hist.record(latency.saturating_mul(1000));
        window.count += 1;
        window.max_micros = window.max_micros.max(latency);
    }

    /// The window's latency (µs) and every counter, and starts the next window.
    fn line(&self) -> String {
        let window = std::mem::take(&mut *lock(&self.window));
        format!(
            "WINDOW count={} p50={} p99={} max={} first={} connected={} reconnects={} \
             drops={} lost={} kicked={} fatal={} messages={} gaps={} disorder={} malformed={}",
            window.count,
            window.hist.quantile(0.5) / 1000,
            window.hist.quantile(0.99) / 1000,
            window.max_micros,
            get(&self.first),
            get(&self.connected),
            get(&self.reconnects),
            get(&self.drops),
            get(&self.lost),
            get(&self.kicked),
            get(&self.fatal),
            get(&self.messages),
            get(&self.gaps),
            get(&self.disorder),
            get(&self.malformed),
        )
    }
}

/// splitmix64: enough randomness for the drop times, without a dependency.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Exponentially distributed with mean `mean`: the time to a drop that happens at a
    /// constant rate.
    fn exponential(&mut self, mean: f64) -> f64 {
        -(1.0 - self.unit()).ln() * mean
    }
}

/// The mean connection lifetime that drops `percent` of the connections every `INTERVAL`;
/// `None` for no drops.
fn mean_uptime(percent: f64) -> io::Result<Option<f64>> {
    if !(0.0..100.0).contains(&percent) {
        return Err(io::Error::other(format!(
            "--drops {percent}: a percentage below 100"
        )));
    }
    if percent == 0.0 {
        return Ok(None);
    }
    // P(drop within T) = 1 − e^(−T/mean).
    Ok(Some(-INTERVAL.as_secs_f64() / (1.0 - percent / 100.0).ln()))
}

/// `bench soak-clients --url U --clients N [--drops P] [--cpu C]`: N reconnecting tether
/// clients; each drops its connection (closes it) at random times, P% of the clients per
/// 10 s (default 1), and reconnects. Prints `CONNECTED N` once every client connected;
/// `window` on standard input answers a `WINDOW ...` line (latency since the last one, in
/// µs, and the counters). Exits when standard input closes.
pub(crate) fn clients(args: &Args) -> io::Result<()> {
    args.only(&["url", "clients", "drops", "cpu"])?;
    let url = args
        .get("url")
        .ok_or_else(|| io::Error::other("--url"))?
        .to_owned();
    let n: u64 = args.parse_or("clients", 10_000)?;
    let mean = mean_uptime(args.parse_or("drops", 1.0)?)?;
    let crowd = Arc::new(Crowd::default());
    let stats = crowd.clone();
    std::thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            match line.as_deref() {
                Ok("window") => println!("{}", stats.line()),
                Ok(other) => eprintln!("soak-clients: unknown command {other:?}"),
                Err(_) => break,
            }
        }
        std::process::exit(0);
    });
    run_local(args, async move {
        let seed = now_micros();
        for i in 0..n {
            let crowd = crowd.clone();
            let connections = ClientBuilder::new(url.as_str()).reconnecting().stream();
            let rng = Rng(seed ^ i.wrapping_mul(0xd6e8_feb8_6659_fd93));
            tokio::spawn(client(connections, rng, mean, crowd));
            // Connect at about 10,000 per second, not all in one instant.
            if i % 100 == 99 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        while get(&crowd.first) < n {
            if get(&crowd.fatal) > 0 {
                return Err(io::Error::other(format!(
                    "a client stopped: {}",
                    crowd.line()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!("CONNECTED {n}");
        std::future::pending::<io::Result<()>>().await
    })
}

/// One client: receives broadcasts, closes its connection when its random lifetime is up
/// (drawn anew for each connection), and takes the next connection from the stream.
async fn client(
    mut connections: tether::reconnect::Reconnecting,
    mut rng: Rng,
    mean: Option<f64>,
    crowd: Arc<Crowd>,
) {
    let mut first = true;
    while let Some(next) = connections.next().await {
        let Ok(mut ws) = next else {
            add(&crowd.fatal, 1);
            return;
        };
        add(
            if std::mem::take(&mut first) {
                &crowd.first
            } else {
                &crowd.reconnects
            },
            1,
        );
        add(&crowd.connected, 1);
        let lifetime = async {
            match mean {
                Some(mean) => {
                    tokio::time::sleep(Duration::from_secs_f64(rng.exponential(mean))).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::pin!(lifetime);
        // Sequence numbers are per broadcast: a connection counts missing ones from the
        // first broadcast it receives on.
        let mut last = None;
        let dropped = loop {
            tokio::select! {
                received = ws.recv() => match received {
                    Some(Ok(msg)) => crowd.receive(msg.as_bytes(), &mut last),
                    // The connection is closing: `None` comes next.
                    Some(Err(_)) => {}
                    None => break false,
                },
                () = &mut lifetime => break true,
            }
        };
        crowd.connected.fetch_sub(1, Ordering::Relaxed);
        if dropped {
            add(&crowd.drops, 1);
            let _ = ws.close(1000, "soak: random drop").await;
        } else {
            add(&crowd.lost, 1);
            if ws.close_code() == CLOSE_SLOW {
                add(&crowd.kicked, 1);
            }
        }
    }
}

// ----- the orchestrator -----

/// What the run was asked to do.
#[derive(Clone, Debug)]
struct Settings {
    duration: Duration,
    clients: u64,
    rate: f64,
    drops: f64,
    interval: Duration,
    /// The server's allocator: `None` for the system's (glibc), or a shared library to
    /// preload in its place.
    preload: Option<String>,
}

impl Settings {
    /// The first 20% of the run, at least 20 s.
    fn warmup(&self) -> Duration {
        self.duration.mul_f64(WARMUP_SHARE).max(WARMUP_MIN)
    }
}

/// One sample of the server process and of the clients' last window.
#[derive(Clone, Debug, Default)]
struct Sample {
    /// Since every client had connected.
    elapsed: Duration,
    /// The server's VmRSS and VmHWM, in bytes, and its open file descriptors.
    rss: u64,
    hwm: u64,
    fds: u64,
    /// The clients process's VmRSS.
    clients_rss: u64,
    /// CPU time (user + system) of the server and of the clients so far, in clock ticks.
    server_cpu: u64,
    clients_cpu: u64,
    /// The server's `STATS` answer.
    server: Fields,
    /// The clients' `WINDOW` answer.
    clients: Fields,
}

/// The whole run.
struct Soak {
    settings: Settings,
    connect_time: Duration,
    samples: Vec<Sample>,
    /// Why sampling stopped early: a child died or stopped answering.
    died: Option<String>,
}

/// `bench soak --minutes M [--clients N] [--rate R] [--drops P] [--interval S] [--out FILE]`:
/// the soak test (see the module's documentation); a Markdown report on standard output
/// (and in FILE). Fails after writing the report when the verdict does.
pub(crate) fn main(args: &Args) -> io::Result<()> {
    args.only(&[
        "minutes",
        "clients",
        "rate",
        "drops",
        "interval",
        "allocator",
        "out",
    ])?;
    let minutes: f64 = args
        .parse("minutes")?
        .ok_or_else(|| io::Error::other("--minutes M is required (1 = 60 s)"))?;
    let duration = Duration::try_from_secs_f64(minutes * 60.0)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| io::Error::other(format!("--minutes {minutes}: a positive number")))?;
    let interval = crate::load::secs(args, "interval", INTERVAL.as_secs_f64())?;
    if interval.is_zero() {
        return Err(io::Error::other("--interval: a positive number of seconds"));
    }
    let settings = Settings {
        duration,
        clients: args.parse_or("clients", 10_000)?,
        rate: args.parse_or("rate", 10.0)?,
        drops: args.parse_or("drops", 1.0)?,
        interval,
        preload: preload(args.get("allocator").unwrap_or("system"))?,
    };
    period(settings.rate)?;
    mean_uptime(settings.drops)?;
    crate::proc::prepare_children()?;
    let soak = run(settings);
    crate::proc::cleanup_children();
    let soak = soak?;
    let verdict = Verdict::of(&soak);
    let report = report(&soak, &verdict);
    print!("{report}");
    if let Some(path) = args.get("out") {
        std::fs::write(path, &report)?;
    }
    if verdict.failures.is_empty() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "soak failed: {}",
            verdict.failures.join("; ")
        )))
    }
}

/// `--allocator`: `system`, `jemalloc` (Debian's `libjemalloc2`), or `jemalloc=PATH`.
fn preload(allocator: &str) -> io::Result<Option<String>> {
    const JEMALLOC: [&str; 2] = [
        "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
        "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    ];
    match allocator.split_once('=') {
        None if allocator == "system" => Ok(None),
        None if allocator == "jemalloc" => JEMALLOC
            .iter()
            .find(|p| std::path::Path::new(p).exists())
            .map(|p| Some((*p).to_owned()))
            .ok_or_else(|| {
                io::Error::other("--allocator jemalloc: libjemalloc.so.2 not found (apt-get install libjemalloc2), or give jemalloc=PATH")
            }),
        Some(("jemalloc", path)) if std::path::Path::new(path).exists() => {
            Ok(Some(path.to_owned()))
        }
        _ => Err(io::Error::other(format!(
            "--allocator {allocator:?}: system, jemalloc or jemalloc=PATH (an existing file)"
        ))),
    }
}

fn run(settings: Settings) -> io::Result<Soak> {
    let env: Vec<(String, String)> = settings
        .preload
        .iter()
        .map(|p| ("LD_PRELOAD".to_owned(), p.clone()))
        .collect();
    let mut server = Child::spawn_with_env(
        &[
            "soak-server".to_owned(),
            "--addr".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--rate".to_owned(),
            settings.rate.to_string(),
            "--cpu".to_owned(),
            "0".to_owned(),
        ],
        &env,
    )?;
    let line = server.wait_line("LISTENING ", ANSWER_LIMIT)?;
    let addr = line["LISTENING ".len()..].trim().to_owned();
    eprintln!(
        "soak: {} clients, {} broadcasts/s, {} s, server {addr} (pid {})",
        settings.clients,
        settings.rate,
        settings.duration.as_secs_f64(),
        server.pid()
    );
    let started = Instant::now();
    let mut crowd = Child::spawn(&[
        "soak-clients".to_owned(),
        "--url".to_owned(),
        format!("ws://{addr}/"),
        "--clients".to_owned(),
        settings.clients.to_string(),
        "--drops".to_owned(),
        settings.drops.to_string(),
        "--cpu".to_owned(),
        "1".to_owned(),
    ])?;
    crowd.wait_line("CONNECTED ", CONNECT_LIMIT)?;
    let connect_time = started.elapsed();
    let t0 = Instant::now();
    let mut samples = Vec::new();
    let mut died = None;
    let mut at = Duration::ZERO;
    loop {
        std::thread::sleep((t0 + at).saturating_duration_since(Instant::now()));
        match sample(&mut server, &mut crowd, t0.elapsed()) {
            Ok(s) => {
                let heap = heap_used(&settings, &s).map_or_else(String::new, |used| {
                    format!(
                        " (heap in use {:.1}, free {:.1})",
                        mb(used),
                        mb(s.server.get("heap_free"))
                    )
                });
                eprintln!(
                    "soak: {:>6.0} s: {} connected, server RSS {:.1} MB{heap}, {} fds, p99 {:.1} ms",
                    s.elapsed.as_secs_f64(),
                    s.server.get("connected"),
                    mb(s.rss),
                    s.fds,
                    s.clients.get("p99") as f64 / 1000.0,
                );
                samples.push(s);
            }
            Err(e) => {
                eprintln!("soak: sampling stopped: {e}");
                died = Some(e.to_string());
                break;
            }
        }
        if at >= settings.duration {
            break;
        }
        at = (at + settings.interval).min(settings.duration);
    }
    crowd.finish(Duration::from_secs(5));
    server.finish(Duration::from_secs(5));
    Ok(Soak {
        settings,
        connect_time,
        samples,
        died,
    })
}

/// Samples the server process, then asks both children for their counters. The first
/// sample (at 0 s) only starts the clients' first window.
fn sample(server: &mut Child, crowd: &mut Child, elapsed: Duration) -> io::Result<Sample> {
    let pid = server.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| io::Error::other(format!("the server (pid {pid}) is gone: {e}")))?;
    // A dead but unreaped server has a status without memory lines.
    let (rss, hwm) = match (status_kib(&status, "VmRSS:"), status_kib(&status, "VmHWM:")) {
        (Some(rss), Some(hwm)) => (rss * 1024, hwm * 1024),
        _ => {
            return Err(io::Error::other(format!(
                "the server (pid {pid}) has exited"
            )))
        }
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
    let server_cpu = cpu_ticks(pid).unwrap_or(0);
    let clients_rss = std::fs::read_to_string(format!("/proc/{}/status", crowd.pid()))
        .ok()
        .and_then(|s| status_kib(&s, "VmRSS:"))
        .map_or(0, |kib| kib * 1024);
    let clients_cpu = cpu_ticks(crowd.pid()).unwrap_or(0);
    server.send_line("stats")?;
    let stats = server.wait_line("STATS ", ANSWER_LIMIT)?;
    crowd.send_line("window")?;
    let window = crowd.wait_line("WINDOW ", ANSWER_LIMIT)?;
    Ok(Sample {
        elapsed,
        rss,
        hwm,
        fds,
        clients_rss,
        server_cpu,
        clients_cpu,
        server: Fields::parse(&stats),
        clients: Fields::parse(&window),
    })
}

/// A `Name:   123 kB` line of `/proc/PID/status`, in KiB.
fn status_kib(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(name))?;
    let mut fields = line[name.len()..].split_whitespace();
    let value = fields.next()?.parse().ok()?;
    (fields.next() == Some("kB")).then_some(value)
}

/// Clock ticks per second of `/proc/PID/stat` (`USER_HZ`, 100 on every Linux architecture
/// this runs on).
const USER_HZ: f64 = 100.0;

/// User plus system CPU time of process `pid`, in clock ticks (`/proc/PID/stat`).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat)
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces; utime and stime are
    // fields 14 and 15, the 12th and 13th after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The CPU share (percent of one core) between two samples.
fn cpu_percent(ticks: u64, before: u64, span: Duration) -> f64 {
    ticks.saturating_sub(before) as f64 / USER_HZ / span.as_secs_f64().max(f64::MIN_POSITIVE)
        * 100.0
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// What the samples say.
#[derive(Debug, Default)]
struct Verdict {
    /// The samples after the warm-up (the last one if the run was shorter).
    first_after: usize,
    /// RSS of the last and of the largest sample after the warm-up against the first one
    /// after it, in percent.
    rss_last: f64,
    rss_max: f64,
    /// Whether the RSS growth can fail the run.
    rss_judged: bool,
    /// The fd counts after the warm-up: first, min, max, last, and the most `max` may be.
    fds: (u64, u64, u64, u64),
    fd_limit: u64,
    /// The largest and the median p99 of the windows after the warm-up, in µs.
    p99_max: u64,
    p99_median: f64,
    /// Broadcasts per second the server made after the warm-up, and its CPU share then.
    broadcast_rate: f64,
    server_cpu: f64,
    /// The growth of the heap in use (glibc's count), last vs first sample after the
    /// warm-up, in percent; `None` under another allocator.
    heap_last: Option<f64>,
    /// What makes the numbers harder to read without failing the run.
    warnings: Vec<String>,
    /// Every reason the run fails.
    failures: Vec<String>,
}

impl Verdict {
    fn of(soak: &Soak) -> Self {
        let s = &soak.settings;
        let mut v = Self::default();
        if let Some(why) = &soak.died {
            v.failures
                .push(format!("a process died or stopped answering: {why}"));
        }
        let Some(last) = soak.samples.last() else {
            v.failures.push("no sample".to_owned());
            return v;
        };
        let warmup = s.warmup();
        v.first_after = soak
            .samples
            .iter()
            .position(|x| x.elapsed + Duration::from_millis(500) >= warmup)
            .unwrap_or(soak.samples.len() - 1);
        let after = &soak.samples[v.first_after..];
        let first = &after[0];

        let growth = |rss: u64| (rss as f64 / first.rss.max(1) as f64 - 1.0) * 100.0;
        v.rss_last = growth(last.rss);
        v.rss_max = growth(after.iter().map(|x| x.rss).max().unwrap_or(0));
        // glibc's own count of the bytes handed out: what the program holds, without the
        // free space around it. Not known under another allocator.
        if let (Some(first), Some(last)) = (heap_used(s, first), heap_used(s, last)) {
            v.heap_last = Some((last as f64 / first as f64 - 1.0) * 100.0);
        }
        v.rss_judged = s.duration >= RSS_JUDGED_FROM && soak.died.is_none();
        if v.rss_judged && v.rss_last > RSS_LIMIT_PERCENT {
            v.failures.push(format!(
                "server RSS grew {:.1}% after the warm-up (limit {RSS_LIMIT_PERCENT}%)",
                v.rss_last
            ));
        }

        let fds = after.iter().map(|x| x.fds);
        v.fds = (
            first.fds,
            fds.clone().min().unwrap_or(0),
            fds.max().unwrap_or(0),
            last.fds,
        );
        v.fd_limit = first.fds + s.clients / 100 + 50;
        if v.fds.2 > v.fd_limit {
            v.failures.push(format!(
                "server fds grew from {} to {} after the warm-up (limit {})",
                v.fds.0, v.fds.2, v.fd_limit
            ));
        }

        let p99s: Vec<u64> = after
            .iter()
            .filter(|x| x.clients.get("count") > 0)
            .map(|x| x.clients.get("p99"))
            .collect();
        v.p99_max = p99s.iter().copied().max().unwrap_or(0);
        v.p99_median = median(p99s.iter().map(|&p| p as f64).collect());
        if soak.died.is_none() {
            // The first sample only opens the first window.
            if let Some(x) = soak.samples[1..]
                .iter()
                .find(|x| x.clients.get("count") == 0)
            {
                v.failures.push(format!(
                    "no broadcast arrived in the window ending at {:.0} s",
                    x.elapsed.as_secs_f64()
                ));
            }
        }

        let span = last.elapsed.saturating_sub(first.elapsed);
        if !span.is_zero() {
            v.broadcast_rate =
                last.server
                    .get("broadcasts")
                    .saturating_sub(first.server.get("broadcasts")) as f64
                    / span.as_secs_f64();
            v.server_cpu = cpu_percent(last.server_cpu, first.server_cpu, span);
            if v.broadcast_rate < s.rate * 0.95 {
                v.warnings.push(format!(
                    "the server made {:.2} of the {} broadcasts/s asked for (server CPU {:.0}%): \
                     it does not keep up on this machine, and the latency includes how far it \
                     falls behind",
                    v.broadcast_rate, s.rate, v.server_cpu
                ));
            }
        }

        let c = &last.clients;
        for (name, what) in [
            ("gaps", "broadcasts missing while connected"),
            ("disorder", "broadcasts out of order or twice"),
            ("malformed", "malformed messages"),
            ("fatal", "clients that gave up reconnecting"),
        ] {
            if c.get(name) > 0 {
                v.failures.push(format!("{} {what}", c.get(name)));
            }
        }
        v
    }

    fn p99_ratio(&self) -> f64 {
        self.p99_max as f64 / self.p99_median.max(1.0)
    }
}

fn report(soak: &Soak, v: &Verdict) -> String {
    let s = &soak.settings;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Soak: {} clients, {} broadcasts/s, {} s\n",
        s.clients,
        s.rate,
        s.duration.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "Server: a tether `Server` (default `ServerConfig`) on core 0, broadcasting one \
         `PreparedMessage` (16 bytes: sequence number, send time) every {:.0} ms to every \
         client, each through its own queue of {BACKLOG} (a full queue drops the client). \
         Clients: one process on core 1, `ClientBuilder::reconnecting()` with the default \
         policy; each closes its connection at random times ({}% of the clients per 10 s) \
         and reconnects. {} clients connected in {:.1} s; a sample every {} s from then on; \
         warm-up {} s. The server's allocator: {}. Load average at the end: {}.\n",
        1000.0 / s.rate,
        s.drops,
        s.clients,
        soak.connect_time.as_secs_f64(),
        s.interval.as_secs_f64(),
        s.warmup().as_secs_f64(),
        s.preload.as_deref().map_or_else(
            || "the system's (glibc)".to_owned(),
            |p| format!("`{p}`, preloaded")
        ),
        crate::report::load_average(),
    );
    let verdict = if v.failures.is_empty() {
        "PASS".to_owned()
    } else {
        format!("FAIL ({})", v.failures.join("; "))
    };
    let rss_note = if v.rss_judged {
        format!("limit {RSS_LIMIT_PERCENT}%")
    } else {
        format!(
            "reported only: runs under {} minutes are too noisy to judge",
            RSS_JUDGED_FROM.as_secs() / 60
        )
    };
    let _ = writeln!(
        out,
        "**Verdict: {verdict}.** After the warm-up: server RSS {:+.1}% (last vs first), \
         {:+.1}% (max vs first), {rss_note}; heap in use {}; fds first {}, min {}, max {}, last {} (limit {}); \
         p99 latency max {:.1} ms ÷ median {:.1} ms = {:.2}; {:.2} broadcasts/s, server CPU \
         {:.0}%.\n",
        v.rss_last,
        v.rss_max,
        v.heap_last.map_or_else(
            || "not known under this allocator".to_owned(),
            |h| format!("{h:+.1}% (last vs first; the rest of the RSS growth is free space the allocator keeps)")
        ),
        v.fds.0,
        v.fds.1,
        v.fds.2,
        v.fds.3,
        v.fd_limit,
        ms(v.p99_max),
        v.p99_median / 1000.0,
        v.p99_ratio(),
        v.broadcast_rate,
        v.server_cpu,
    );
    for warning in &v.warnings {
        let _ = writeln!(out, "**Warning:** {warning}.\n");
    }
    if let Some(why) = &soak.died {
        let _ = writeln!(out, "Sampling stopped early: {why}.\n");
    }
    table(&mut out, soak, v);
    if let (Some(first), Some(last)) = (soak.samples.first(), soak.samples.last()) {
        let c = &last.clients;
        let srv = &last.server;
        let span = (last.elapsed.as_secs_f64()).max(f64::MIN_POSITIVE);
        let _ = writeln!(
            out,
            "\nTotals. Clients: {} connected at least once, {} reconnects, {} own drops, \
             {} connections ended by the server or failed ({} closed as too slow), {} gave \
             up; {} broadcasts received, {} missing while connected, {} out of order, {} \
             malformed. Server: {} broadcasts ({:.2}/s over the samples), {} messages \
             queued, {} upgrades, {} clients dropped as too slow; peak RSS {:.1} MB. \
             Clients process RSS {:.1} MB at the start, {:.1} MB at the end.\n",
            crate::report::thousands(c.get("first") as f64),
            crate::report::thousands(c.get("reconnects") as f64),
            crate::report::thousands(c.get("drops") as f64),
            c.get("lost"),
            c.get("kicked"),
            c.get("fatal"),
            crate::report::thousands(c.get("messages") as f64),
            c.get("gaps"),
            c.get("disorder"),
            c.get("malformed"),
            srv.get("broadcasts"),
            srv.get("broadcasts")
                .saturating_sub(first.server.get("broadcasts")) as f64
                / span,
            crate::report::thousands(srv.get("queued") as f64),
            crate::report::thousands(srv.get("upgrades") as f64),
            srv.get("kicked"),
            mb(last.hwm),
            mb(first.clients_rss),
            mb(last.clients_rss),
        );
        let points: Vec<(f64, u64)> = soak
            .samples
            .iter()
            .map(|x| (x.elapsed.as_secs_f64(), x.rss))
            .collect();
        let _ = writeln!(
            out,
            "Server RSS over the run (MB, from zero):\n\n```text\n{}```",
            chart(&points)
        );
    }
    out
}

fn table(out: &mut String, soak: &Soak, v: &Verdict) {
    let _ = writeln!(
        out,
        "| elapsed | connected | RSS MB | heap in use MB | peak MB | fds | server CPU | clients CPU | broadcasts/s | msgs/s | p50 ms | p99 ms | max ms | drops | reconnects | kicked | gaps |"
    );
    let _ = writeln!(
        out,
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    );
    let mut previous: Option<&Sample> = None;
    for (i, x) in soak.samples.iter().enumerate() {
        let delta = |name: &str| {
            x.clients
                .get(name)
                .saturating_sub(previous.map_or(0, |p| p.clients.get(name)))
        };
        let span = previous.map_or(Duration::ZERO, |p| x.elapsed.saturating_sub(p.elapsed));
        let count = x.clients.get("count");
        let latency = |name: &str| {
            if count == 0 || previous.is_none() {
                "–".to_owned()
            } else {
                format!("{:.1}", ms(x.clients.get(name)))
            }
        };
        let per_second = |n: u64| {
            if span.is_zero() {
                "–".to_owned()
            } else {
                crate::report::thousands(n as f64 / span.as_secs_f64())
            }
        };
        let cpu = |now: u64, before: Option<u64>| match before {
            Some(before) if !span.is_zero() => format!("{:.0}%", cpu_percent(now, before, span)),
            _ => "–".to_owned(),
        };
        let broadcasts = x
            .server
            .get("broadcasts")
            .saturating_sub(previous.map_or(0, |p| p.server.get("broadcasts")));
        let mark = if i == v.first_after { " ←" } else { "" };
        let _ = writeln!(
            out,
            "| {:.0} s{mark} | {} | {:.1} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            x.elapsed.as_secs_f64(),
            x.server.get("connected"),
            mb(x.rss),
            heap_cell(&soak.settings, x),
            mb(x.hwm),
            x.fds,
            cpu(x.server_cpu, previous.map(|p| p.server_cpu)),
            cpu(x.clients_cpu, previous.map(|p| p.clients_cpu)),
            per_second(broadcasts),
            per_second(count),
            latency("p50"),
            latency("p99"),
            latency("max"),
            delta("drops"),
            delta("reconnects"),
            x.server
                .get("kicked")
                .saturating_sub(previous.map_or(0, |p| p.server.get("kicked"))),
            delta("gaps"),
        );
        previous = Some(x);
    }
    let _ = writeln!(
        out,
        "\nEach row: the server process at that time (connected clients, VmRSS, the heap \
         bytes handed out as glibc counts them, VmHWM, open fds), the CPU each process used since the row before (percent of one core), the \
         broadcasts the server made per second, and what the clients counted since the row \
         before (broadcasts received per second, their latency from send to receive, own drops, reconnects, clients the \
         server dropped as too slow, broadcasts missing while connected). ← marks the first \
         sample after the warm-up."
    );
}

/// The server's heap in use at sample `x`, in bytes: glibc's count, so known only when the
/// server runs on glibc.
fn heap_used(settings: &Settings, x: &Sample) -> Option<u64> {
    let used = x.server.get("heap_used");
    (settings.preload.is_none() && used > 0).then_some(used)
}

/// The heap in use at sample `x`, in MB, for the table; "–" when it is not known.
fn heap_cell(settings: &Settings, x: &Sample) -> String {
    heap_used(settings, x).map_or_else(|| "–".to_owned(), |used| format!("{:.1}", mb(used)))
}

/// A column chart of `points` (seconds, bytes), scaled from zero to the largest value,
/// eight rows of eight heights each; at most [`CHART_WIDTH`] columns (each the largest of
/// the samples it stands for).
fn chart(points: &[(f64, u64)]) -> String {
    const BARS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    const ROWS: u64 = 8;
    let per_column = points.len().div_ceil(CHART_WIDTH).max(1);
    let columns: Vec<u64> = points
        .chunks(per_column)
        .map(|c| c.iter().map(|p| p.1).max().unwrap_or(0))
        .collect();
    let top = columns.iter().copied().max().unwrap_or(0).max(1);
    let mut out = String::new();
    for row in (0..ROWS).rev() {
        let _ = write!(out, "{:>8.1} │", mb(top) * (row + 1) as f64 / ROWS as f64);
        for &value in &columns {
            let eighths = (value * ROWS * 8 + top / 2) / top;
            let fill = eighths.saturating_sub(row * 8).min(8);
            out.push(BARS[usize::try_from(fill).unwrap_or(8)]);
        }
        out.push('\n');
    }
    let _ = writeln!(out, "{:>8} └{}", "", "─".repeat(columns.len()));
    let end = points.last().map_or(0.0, |p| p.0);
    let label = format!("{end:.0} s");
    let _ = writeln!(
        out,
        "{:>8}  0 s{:>width$}",
        "",
        label,
        width = columns.len().saturating_sub(3).max(label.len() + 1)
    );
    out
}

/// Most columns of the RSS chart.
const CHART_WIDTH: usize = 90;

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(secs: u64, clients: u64) -> Settings {
        Settings {
            duration: Duration::from_secs(secs),
            clients,
            rate: 10.0,
            drops: 1.0,
            interval: INTERVAL,
            preload: None,
        }
    }

    fn sample(secs: u64, rss_mb: u64, fds: u64, p99: u64) -> Sample {
        Sample {
            elapsed: Duration::from_secs(secs),
            rss: rss_mb * 1_000_000,
            hwm: rss_mb * 1_000_000,
            fds,
            clients_rss: 0,
            server_cpu: secs * 50,
            clients_cpu: secs * 50,
            server: Fields::parse(&format!("STATS connected=100 broadcasts={}", secs * 10)),
            clients: Fields::parse(&format!("WINDOW count=10 p99={p99}")),
        }
    }

    fn soak(secs: u64, samples: Vec<Sample>) -> Soak {
        Soak {
            settings: settings(secs, 1000),
            connect_time: Duration::from_secs(1),
            samples,
            died: None,
        }
    }

    #[test]
    fn the_allocator_is_the_systems_or_an_existing_library() {
        assert_eq!(preload("system").unwrap(), None);
        assert_eq!(
            preload("jemalloc=/proc/self/exe").unwrap().as_deref(),
            Some("/proc/self/exe")
        );
        assert!(preload("jemalloc=/nonexistent/libjemalloc.so.2").is_err());
        assert!(preload("tcmalloc").is_err());
    }

    #[test]
    fn payload_round_trip() {
        assert_eq!(
            decode(&encode(7, 1_700_000_000_000_000)),
            Some((7, 1_700_000_000_000_000))
        );
        assert_eq!(decode(&[0; 15]), None);
    }

    #[test]
    fn reads_cpu_ticks_after_the_command_name() {
        let stat = "42 (a b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert_eq!(parse_cpu_ticks("42 (x"), None);
        assert!(cpu_ticks(std::process::id()).is_some());
        let pct = cpu_percent(150, 50, Duration::from_secs(2));
        assert!((pct - 50.0).abs() < 1e-9, "{pct}");
    }

    #[test]
    fn fields_read_pairs_and_default_to_zero() {
        let f = Fields::parse("STATS connected=12 kicked=0 junk x=y");
        assert_eq!(f.get("connected"), 12);
        assert_eq!(f.get("kicked"), 0);
        assert_eq!(f.get("missing"), 0);
        assert_eq!(
            status_kib("VmHWM:\t  2048 kB\nVmRSS:\t 1024 kB\n", "VmRSS:"),
            Some(1024)
        );
    }

    #[test]
    fn drop_rate_matches_the_percentage() {
        let mean = mean_uptime(1.0).unwrap().unwrap();
        let mut rng = Rng(42);
        let n = 200_000;
        let within = (0..n)
            .filter(|_| rng.exponential(mean) < INTERVAL.as_secs_f64())
            .count();
        let share = within as f64 / n as f64;
        assert!((share - 0.01).abs() < 0.002, "{share}");
        assert_eq!(mean_uptime(0.0).unwrap(), None);
        assert!(mean_uptime(100.0).is_err());
    }

    #[test]
    fn warmup_is_a_fifth_but_at_least_twenty_seconds() {
        assert_eq!(settings(60, 1).warmup(), Duration::from_secs(20));
        assert_eq!(settings(1800, 1).warmup(), Duration::from_secs(360));
    }

    #[test]
    fn flat_run_passes() {
        let samples = (0..=6).map(|i| sample(i * 10, 50, 1010, 20_000)).collect();
        let v = Verdict::of(&soak(60, samples));
        assert_eq!(v.first_after, 2);
        assert!(v.failures.is_empty(), "{:?}", v.failures);
        assert!(v.rss_last.abs() < 1e-9 && !v.rss_judged);
        assert!((v.p99_ratio() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn fd_growth_past_the_allowance_fails() {
        // 1000 clients: 1% is 10, plus 50.
        let mut samples: Vec<Sample> = (0..=6).map(|i| sample(i * 10, 50, 1010, 20_000)).collect();
        samples[5].fds = 1070;
        assert!(Verdict::of(&soak(60, samples.clone())).failures.is_empty());
        samples[5].fds = 1071;
        let v = Verdict::of(&soak(60, samples));
        assert_eq!(v.failures.len(), 1, "{:?}", v.failures);
    }

    #[test]
    fn rss_growth_fails_only_long_runs() {
        let grow = |secs: u64| -> Vec<Sample> {
            (0..=secs / 10)
                .map(|i| sample(i * 10, 100 + 3 * i, 1010, 20_000))
                .collect()
        };
        let short = Verdict::of(&soak(60, grow(60)));
        assert!(short.rss_last > 5.0 && short.failures.is_empty());
        let long = Verdict::of(&soak(600, grow(600)));
        assert!(
            long.rss_judged && long.failures.len() == 1,
            "{:?}",
            long.failures
        );
    }

    #[test]
    fn gaps_and_silent_windows_fail() {
        let mut samples: Vec<Sample> = (0..=6).map(|i| sample(i * 10, 50, 1010, 20_000)).collect();
        samples[6].clients = Fields::parse("WINDOW count=10 p99=20000 gaps=3");
        samples[3].clients = Fields::parse("WINDOW count=0");
        let v = Verdict::of(&soak(60, samples));
        assert_eq!(v.failures.len(), 2, "{:?}", v.failures);
    }

    #[test]
    fn chart_scales_from_zero() {
        let points: Vec<(f64, u64)> = (0..7).map(|i| (i as f64 * 10.0, 8_000_000)).collect();
        let c = chart(&points);
        let lines: Vec<&str> = c.lines().collect();
        assert_eq!(lines.len(), 10);
        assert!(lines[0].starts_with("     8.0 │███████"), "{c}");
        assert!(lines[1].contains("│███████"));
        assert!(lines[9].trim_end().ends_with("60 s"));
        let many: Vec<(f64, u64)> = (0..500).map(|i| (i as f64, 1 + i)).collect();
        assert!(chart(&many)
            .lines()
            .all(|l| l.chars().count() <= CHART_WIDTH + 12));
    }
}
