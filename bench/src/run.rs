//! The orchestrator: starts servers and load processes pinned to their cores, repeats every
//! case, and writes the report.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::args::Args;
use crate::clients::CLIENTS;
use crate::compress;
use crate::micro::{self, MicroMode};
use crate::proc::{Child, ServerProcess};
use crate::report;
use crate::servers::Impl;
use crate::stats::Outcome;

/// One echo workload.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Workload {
    pub(crate) label: &'static str,
    pub(crate) conns: usize,
    pub(crate) size: usize,
    pub(crate) inflight: usize,
}

pub(crate) const WORKLOADS: [Workload; 5] = [
    Workload {
        label: "100 conns × 20 B",
        conns: 100,
        size: 20,
        inflight: 1,
    },
    Workload {
        label: "10 conns × 1 KiB",
        conns: 10,
        size: 1024,
        inflight: 1,
    },
    Workload {
        label: "16 conns × 1 KiB, 16 in flight",
        conns: 16,
        size: 1024,
        inflight: 16,
    },
    Workload {
        label: "200 conns × 16 KiB",
        conns: 200,
        size: 16 << 10,
        inflight: 1,
    },
    Workload {
        label: "10 conns × 1 MiB",
        conns: 10,
        size: 1 << 20,
        inflight: 1,
    },
];

/// The compression section's workloads: the same shapes as two of the echo workloads, with
/// 1 KiB JSON-like text instead of binary.
pub(crate) const COMPRESSION_WORKLOADS: [Workload; 2] = [
    Workload {
        label: "10 conns × 1 KiB JSON",
        conns: 10,
        size: compress::PAYLOAD,
        inflight: 1,
    },
    Workload {
        label: "16 conns × 1 KiB JSON, 16 in flight",
        conns: 16,
        size: compress::PAYLOAD,
        inflight: 16,
    },
];

/// tether's compression levels measured (its default is added if it is not among them).
pub(crate) const LEVELS: [u8; 3] = [1, 6, 9];

/// Payload of the broadcast section's messages.
pub(crate) const BROADCAST_SIZE: usize = 1024;

/// One server of the compression section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Deflater {
    pub(crate) kind: Impl,
    /// tether's compression level; `None` for tether with compression off, and for the
    /// peers (which run with their own settings).
    pub(crate) level: Option<u8>,
}

impl Deflater {
    /// The level tether compresses at by default.
    pub(crate) fn default_level() -> u8 {
        tether::DeflateConfig::default().level
    }

    /// The name in the report: `tether level 6`, `tether uncompressed`, `node-ws`, ...
    pub(crate) fn label(self) -> String {
        match (self.kind, self.level) {
            (Impl::Tether, Some(level)) => format!("tether level {level}"),
            (Impl::Tether, None) => "tether uncompressed".to_owned(),
            (kind, _) => kind.name().to_owned(),
        }
    }

    /// True unless this is tether with compression off.
    pub(crate) fn compresses(self) -> bool {
        !(self.kind == Impl::Tether && self.level.is_none())
    }

    /// The servers of the section, in report order, for the selected `servers`.
    pub(crate) fn all(servers: &[Impl]) -> Vec<Self> {
        let mut v = Vec::new();
        if servers.contains(&Impl::Tether) {
            let mut levels = LEVELS.to_vec();
            if !levels.contains(&Self::default_level()) {
                levels.push(Self::default_level());
                levels.sort_unstable();
            }
            for level in levels {
                v.push(Self {
                    kind: Impl::Tether,
                    level: Some(level),
                });
            }
            v.push(Self {
                kind: Impl::Tether,
                level: None,
            });
        }
        for kind in [Impl::NodeWs, Impl::PythonWebsockets] {
            if servers.contains(&kind) {
                v.push(Self { kind, level: None });
            }
        }
        v
    }
}

/// Settings of one orchestrated run.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) quick: bool,
    pub(crate) repeats: usize,
    pub(crate) warmup: f64,
    pub(crate) duration: f64,
    pub(crate) idle_conns: usize,
    pub(crate) memory_repeats: usize,
    pub(crate) handshake_concurrency: usize,
    /// Receiver counts of the broadcast section.
    pub(crate) broadcast_receivers: Vec<usize>,
    /// Messages the broadcast sender keeps on their way.
    pub(crate) broadcast_outstanding: usize,
    /// `--python`: the interpreter for Python's `websockets`.
    pub(crate) python: Option<String>,
    pub(crate) server_cpu: usize,
    pub(crate) load_cpu: usize,
    /// Where the scaling section's Redis runs (default: the load generator's core).
    pub(crate) redis_cpu: usize,
    pub(crate) servers: Vec<Impl>,
    pub(crate) sections: Vec<String>,
    pub(crate) micro: MicroMode,
    pub(crate) out: PathBuf,
    pub(crate) command: String,
    /// CPUs of the machine, counted before this process pinned itself.
    pub(crate) cpus: usize,
}

impl Settings {
    fn section(&self, name: &str) -> bool {
        self.sections.iter().any(|s| s == name)
    }
}

const SECTIONS: [&str; 9] = [
    "echo",
    "client",
    "handshakes",
    "memory",
    "broadcast",
    "compression",
    "sessions",
    "scaling",
    "micro",
];

/// The sessions section's workloads (indices into [`WORKLOADS`]): 1 KiB with one and with
/// 16 messages in flight.
pub(crate) const SESSION_WORKLOADS: [usize; 2] = [1, 2];

/// The two sides of the sessions section: tether's client and server without and with
/// resumable sessions.
pub(crate) const SESSION_MODES: [(&str, Impl); 2] =
    [("plain", Impl::Tether), ("sessions", Impl::TetherSessions)];

pub(crate) const HELP: &str = "\
bench: comparative benchmarks of tether (see docs/benchmarks.md)

  cargo run --release -p bench --bin bench -- [options]

  --out FILE           markdown report to update (default docs/benchmarks.md); the chart
                       is written next to it
  --quick              smoke run: 2 repeats of 1 s, 0.3 s warm-up, quick micro-benchmarks
  --repeats N          runs per case (default 5; the median is reported)
  --duration S         measured seconds per run (default 3)
  --warmup S           warm-up seconds per run (default 1)
  --idle-conns N       connections for the memory count (default 10000)
  --memory-repeats N   memory counts per server (default: --repeats)
  --handshake-concurrency N   concurrent connect/upgrade/close loops (default 32)
  --broadcast-receivers LIST  receiver counts of the broadcast section (default 1000,10000)
  --broadcast-outstanding N   messages the broadcast sender keeps out (default 8)
  --python PATH        Python with `websockets` (default .venv-test/bin/python, else python3)
  --only LIST          comma-separated sections: echo,client,handshakes,memory,broadcast,
                       compression,sessions,scaling,micro (scaling needs redis-server)
  --servers LIST       comma-separated servers (default all): tether,tether-axum,
                       tokio-tungstenite,fastwebsockets,tokio-websockets,raw-tcp,node-ws,
                       python-websockets (each section runs those of its own among them)
  --micro MODE         run (default: cargo bench the micro-benchmarks), summary (only read
                       existing criterion results) or skip
  --redis-cpu N        the core of the scaling section's redis-server (default: --load-cpu)
  --server-cpu N       core for the servers (default 0)
  --load-cpu N         core for the load generator and this process (default 1)

Reconnect storms (a separate report, not part of the run above):
  storm [--clients LIST] [--cases restart,kill] [--down S] [--max-handshakes K] [--out FILE]
       N reconnecting tether clients against a server that closes them all with 1012
       (restart) or is killed and back after S seconds (kill, default 1); arrivals per
       100 ms with the defaults, with full jitter, and with a handshake limit K (default 64)

Soak test (a separate report; scripts/soak.sh MINUTES runs it):
  soak --minutes M [--clients N] [--rate R] [--drops P] [--interval S] [--out FILE]
       N reconnecting clients (default 10000) of a server broadcasting R messages/s
       (default 10) for M minutes, P% of the clients dropping and reconnecting per 10 s
       (default 1); server RSS, fds and client latency sampled every S s (default 10);
       fails on fd growth, sequence gaps, a dead process, or (runs of 10 minutes and
       more) RSS growth over 5% after the warm-up

Modes used by the orchestrator (this same binary):
  server --impl NAME [--addr A] [--cpu N]
  load --addr A --conns N --size B --inflight K --warmup S --duration S [--raw] [--cpu N]
  client --impl tether|tether-sessions|tokio-tungstenite --addr A --conns N --size B
         --inflight K ...
  handshakes --addr A [--concurrency C] --warmup S --duration S [--cpu N]
  idle --addr A --conns N [--raw | --session] [--cpu N]
  server --impl NAME --broadcast | --deflate-level L ...
  broadcast --addr A --receivers N --size B --outstanding K --warmup S --duration S [--cpu N]
  deflate-load --addr A --conns N --size B --inflight K --warmup S --duration S
               [--require-deflate] [--cpu N]
  storm-server [--addr A] [--max-handshakes K] [--cpu N]
  storm-clients --url U --clients N [--jitter default|full] [--cpu N]
  soak-server [--addr A] [--rate R] [--cpu N]
  soak-clients --url U --clients N [--drops P] [--cpu N]
";

fn settings(args: &Args, raw_args: &[String]) -> io::Result<Settings> {
    args.only(&[
        "out",
        "quick",
        "repeats",
        "duration",
        "warmup",
        "idle-conns",
        "memory-repeats",
        "handshake-concurrency",
        "broadcast-receivers",
        "broadcast-outstanding",
        "python",
        "only",
        "servers",
        "micro",
        "server-cpu",
        "load-cpu",
        "redis-cpu",
    ])?;
    let quick = args.flag("quick");
    let repeats: usize = args.parse_or("repeats", if quick { 2 } else { 5 })?.max(1);
    let cpus = crate::sys::cpu_count();
    let sections: Vec<String> = match args.get("only") {
        Some(list) => list.split(',').map(|s| s.trim().to_owned()).collect(),
        None => SECTIONS.iter().map(|s| (*s).to_owned()).collect(),
    };
    if let Some(bad) = sections.iter().find(|s| !SECTIONS.contains(&s.as_str())) {
        return Err(io::Error::other(format!("--only: unknown section {bad}")));
    }
    let servers = match args.get("servers") {
        Some(list) => list
            .split(',')
            .map(|s| {
                Impl::parse(s.trim())
                    .filter(|i| Impl::SELECTABLE.contains(i))
                    .ok_or_else(|| io::Error::other(format!("--servers: unknown server {s}")))
            })
            .collect::<io::Result<Vec<_>>>()?,
        None => Impl::SELECTABLE.to_vec(),
    };
    let broadcast_receivers = match args.get("broadcast-receivers") {
        Some(list) => list
            .split(',')
            .map(|n| {
                n.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| io::Error::other(format!("--broadcast-receivers: {n:?}")))
            })
            .collect::<io::Result<Vec<_>>>()?,
        None => vec![1000, 10_000],
    };
    let micro = match args.get("micro").unwrap_or("run") {
        "run" => MicroMode::Run,
        "summary" => MicroMode::Summary,
        "skip" => MicroMode::Skip,
        other => return Err(io::Error::other(format!("--micro: unknown mode {other}"))),
    };
    Ok(Settings {
        quick,
        repeats,
        warmup: args.parse_or("warmup", if quick { 0.3 } else { 1.0 })?,
        duration: args.parse_or("duration", if quick { 1.0 } else { 3.0 })?,
        idle_conns: args.parse_or("idle-conns", 10_000)?,
        memory_repeats: args.parse_or("memory-repeats", repeats)?.max(1),
        handshake_concurrency: args.parse_or("handshake-concurrency", 32)?,
        broadcast_receivers,
        broadcast_outstanding: args.parse_or::<usize>("broadcast-outstanding", 8)?.max(1),
        python: args.get("python").map(str::to_owned),
        server_cpu: args.parse_or("server-cpu", 0)?,
        load_cpu: args.parse_or("load-cpu", if cpus > 1 { 1 } else { 0 })?,
        redis_cpu: args.parse_or("redis-cpu", if cpus > 1 { 1 } else { 0 })?,
        servers,
        sections,
        micro,
        out: PathBuf::from(args.get("out").unwrap_or("docs/benchmarks.md")),
        command: raw_args.join(" "),
        cpus,
    })
}

/// One memory count.
#[derive(Clone, Debug)]
pub(crate) struct MemorySample {
    pub(crate) before: u64,
    pub(crate) after: u64,
    pub(crate) conns: usize,
    pub(crate) errors: usize,
}

impl MemorySample {
    pub(crate) fn per_conn(&self) -> f64 {
        (self.after as f64 - self.before as f64) / self.conns.max(1) as f64
    }
}

/// Everything measured.
#[derive(Debug, Default)]
pub(crate) struct Results {
    /// (workload index, server) → runs.
    pub(crate) echo: BTreeMap<(usize, &'static str), Vec<Outcome>>,
    /// (workload index, client) → runs.
    pub(crate) client: BTreeMap<(usize, &'static str), Vec<Outcome>>,
    pub(crate) handshakes: BTreeMap<&'static str, Vec<Outcome>>,
    pub(crate) memory: BTreeMap<&'static str, Vec<MemorySample>>,
    /// (receivers, server) → runs.
    pub(crate) broadcast: BTreeMap<(usize, &'static str), Vec<Outcome>>,
    /// (compression workload index, server label) → runs.
    pub(crate) compression: BTreeMap<(usize, String), Vec<Outcome>>,
    /// (workload index, "plain" or "sessions") → runs of tether's client against tether's
    /// server, without and with resumable sessions.
    pub(crate) sessions: BTreeMap<(usize, &'static str), Vec<Outcome>>,
    /// "plain" or "sessions" → idle connection counts.
    pub(crate) session_memory: BTreeMap<&'static str, Vec<MemorySample>>,
    /// (workload index, store) → runs of the resumable echo with sessions in this process
    /// or in Redis.
    pub(crate) scaling_echo: BTreeMap<(usize, &'static str), Vec<Outcome>>,
    /// (receivers, setup) → runs of tether's broadcast on one node, or on two nodes through
    /// Redis.
    pub(crate) scaling_broadcast: BTreeMap<(usize, &'static str), Vec<Outcome>>,
    /// Versions of the peers outside Rust, as found when they ran.
    pub(crate) external_versions: Vec<String>,
    pub(crate) micro: Vec<micro::MicroResult>,
    pub(crate) failures: Vec<String>,
    pub(crate) load_before: String,
    pub(crate) load_after: String,
}

/// `bench [run] [options]`.
pub(crate) fn main(args: &Args, raw_args: &[String]) -> io::Result<()> {
    if args.flag("help") {
        print!("{HELP}");
        return Ok(());
    }
    let s = settings(args, raw_args)?;
    crate::proc::prepare_children()?;
    let result = run_all(&s);
    crate::proc::cleanup_children();
    result
}

fn run_all(s: &Settings) -> io::Result<()> {
    if s.section("micro") && s.micro == MicroMode::Run {
        // Compile now, unpinned, so that no compiler runs while something is measured.
        micro::build()?;
    }
    crate::sys::pin_to_cpu(s.load_cpu)?;
    crate::sys::raise_nofile_limit()?;
    eprintln!(
        "bench: {} repeats × {} s (+{} s warm-up); servers on CPU {}, load on CPU {}",
        s.repeats, s.duration, s.warmup, s.server_cpu, s.load_cpu
    );
    let mut results = Results {
        load_before: report::load_average(),
        ..Results::default()
    };
    if s.section("echo") {
        run_echo(s, &mut results)?;
    }
    if s.section("client") {
        run_clients(s, &mut results)?;
    }
    if s.section("handshakes") {
        run_handshakes(s, &mut results)?;
    }
    if s.section("memory") {
        run_memory(s, &mut results)?;
    }
    if s.section("broadcast") {
        run_broadcast(s, &mut results)?;
    }
    if s.section("compression") {
        run_compression(s, &mut results)?;
    }
    if s.section("sessions") {
        run_sessions(s, &mut results)?;
    }
    if s.section("scaling") {
        run_scaling(s, &mut results)?;
    }
    results.load_after = report::load_average();
    if s.section("micro") {
        results.micro = micro::collect(s.micro, s.quick)?;
    }
    report::write(s, &results)?;
    for f in &results.failures {
        eprintln!("bench: failed: {f}");
    }
    Ok(())
}

/// The servers of the run in the order of repeat `r`: the order rotates so that no server
/// always runs first or last.
fn rotated<T: Clone>(servers: &[T], r: usize) -> Vec<T> {
    let mut v = servers.to_vec();
    if !v.is_empty() {
        let k = r % v.len();
        v.rotate_left(k);
    }
    v
}

fn timing_args(s: &Settings) -> Vec<String> {
    vec![
        "--warmup".into(),
        s.warmup.to_string(),
        "--duration".into(),
        s.duration.to_string(),
        "--cpu".into(),
        s.load_cpu.to_string(),
    ]
}

/// Runs one load child to its `RESULT` line.
fn run_child(args: Vec<String>, s: &Settings) -> io::Result<Outcome> {
    let mut child = Child::spawn(&args)?;
    let limit = Duration::from_secs_f64(s.warmup + s.duration + 120.0);
    let line = child.wait_line("RESULT ", limit)?;
    child.finish(Duration::from_secs(10));
    // Let the server see the connections go before the next run.
    std::thread::sleep(Duration::from_millis(200));
    Outcome::parse(&line).ok_or_else(|| io::Error::other(format!("bad line {line:?}")))
}

fn record(
    failures: &mut Vec<String>,
    runs: &mut Vec<Outcome>,
    what: String,
    outcome: io::Result<Outcome>,
) {
    match outcome {
        Ok(o) => {
            let mut note = String::new();
            if o.errors > 0 {
                note = format!(
                    " ({} errors, first: {})",
                    o.errors,
                    o.first_error.as_deref().unwrap_or("?")
                );
                failures.push(format!("{what}: {} errors{note}", o.errors));
            }
            if let Some(ratio) = o.wire_ratio() {
                note.push_str(&format!(" wire/payload {ratio:.3}"));
            }
            if o.sent > 0 {
                note.push_str(&format!(" sent {} lost {}", o.sent, o.lost));
            }
            eprintln!(
                "  {what}: {:.0}/s p50 {:.1} µs p99 {:.1} µs{note}",
                o.rate(),
                o.p50_ns as f64 / 1e3,
                o.p99_ns as f64 / 1e3
            );
            runs.push(o);
        }
        Err(e) => {
            eprintln!("  {what}: FAILED: {e}");
            failures.push(format!("{what}: {e}"));
        }
    }
}

/// The selected servers that `section` runs, in the order of `section`.
fn selected(s: &Settings, section: &[Impl]) -> Vec<Impl> {
    section
        .iter()
        .copied()
        .filter(|k| s.servers.contains(k))
        .collect()
}

fn run_echo(s: &Settings, results: &mut Results) -> io::Result<()> {
    eprintln!("echo servers: {} workloads", WORKLOADS.len());
    let kinds = selected(s, &Impl::ECHO);
    let mut servers = Vec::new();
    for &kind in &kinds {
        servers.push((kind, ServerProcess::start(kind.name(), s.server_cpu)?));
    }
    for r in 0..s.repeats {
        for (wi, w) in WORKLOADS.iter().enumerate() {
            for kind in rotated(&kinds, r) {
                let Some((_, server)) = servers.iter().find(|(k, _)| *k == kind) else {
                    continue;
                };
                let mut args = workload_args(&["load"], &server.addr, w);
                if kind == Impl::Raw {
                    args.push("--raw".into());
                }
                args.extend(timing_args(s));
                let what = format!("[{}/{}] {} {}", r + 1, s.repeats, kind.name(), w.label);
                let outcome = run_child(args, s);
                let runs = results.echo.entry((wi, kind.name())).or_default();
                record(&mut results.failures, runs, what, outcome);
            }
        }
    }
    for (_, server) in servers {
        server.stop();
    }
    Ok(())
}

fn run_clients(s: &Settings, results: &mut Results) -> io::Result<()> {
    eprintln!("clients against the frame-echo server");
    let server = ServerProcess::start(Impl::FrameEcho.name(), s.server_cpu)?;
    for r in 0..s.repeats {
        for (wi, w) in WORKLOADS.iter().enumerate() {
            for kind in rotated(&CLIENTS, r) {
                let args = client_args(kind, &server.addr, w, s);
                let what = format!(
                    "[{}/{}] {} client {}",
                    r + 1,
                    s.repeats,
                    kind.name(),
                    w.label
                );
                let outcome = run_child(args, s);
                let runs = results.client.entry((wi, kind.name())).or_default();
                record(&mut results.failures, runs, what, outcome);
            }
        }
    }
    server.stop();
    Ok(())
}

/// `head` (the mode and its own flags) followed by the address and workload `w`.
fn workload_args(head: &[&str], addr: &str, w: &Workload) -> Vec<String> {
    let mut args: Vec<String> = head.iter().map(|a| (*a).to_owned()).collect();
    for (flag, value) in [
        ("--addr", addr.to_owned()),
        ("--conns", w.conns.to_string()),
        ("--size", w.size.to_string()),
        ("--inflight", w.inflight.to_string()),
    ] {
        args.push(flag.to_owned());
        args.push(value);
    }
    args
}

/// The arguments of `bench client` with client `kind` for workload `w`.
fn client_args(kind: Impl, addr: &str, w: &Workload, s: &Settings) -> Vec<String> {
    let mut args = workload_args(&["client", "--impl", kind.name()], addr, w);
    args.extend(timing_args(s));
    args
}

/// One memory count of `kind`, printed; a failure is recorded in `failures` instead.
fn count_memory(
    s: &Settings,
    kind: Impl,
    what: &str,
    failures: &mut Vec<String>,
) -> Option<MemorySample> {
    match memory_once(s, kind) {
        Ok(m) => {
            eprintln!(
                "  {what}: {:.0} B per connection ({} → {} KiB, {} open, {} failed)",
                m.per_conn(),
                m.before >> 10,
                m.after >> 10,
                m.conns,
                m.errors
            );
            if m.errors > 0 {
                failures.push(format!("{what}: {} connections failed", m.errors));
            }
            Some(m)
        }
        Err(e) => {
            eprintln!("  {what}: FAILED: {e}");
            failures.push(format!("{what}: {e}"));
            None
        }
    }
}

fn run_handshakes(s: &Settings, results: &mut Results) -> io::Result<()> {
    eprintln!("handshakes");
    let kinds = selected(s, &Impl::SERVERS);
    for r in 0..s.repeats {
        for kind in rotated(&kinds, r) {
            // A fresh server each time: the rate must not depend on what ran before.
            let server = ServerProcess::start(kind.name(), s.server_cpu)?;
            let mut args: Vec<String> = [
                "handshakes",
                "--addr",
                &server.addr,
                "--concurrency",
                &s.handshake_concurrency.to_string(),
            ]
            .map(str::to_owned)
            .to_vec();
            if kind == Impl::Raw {
                args.push("--raw".into());
            }
            args.extend(timing_args(s));
            let what = format!("[{}/{}] {} handshakes", r + 1, s.repeats, kind.name());
            let outcome = run_child(args, s);
            server.stop();
            let runs = results.handshakes.entry(kind.name()).or_default();
            record(&mut results.failures, runs, what, outcome);
        }
    }
    Ok(())
}

fn run_memory(s: &Settings, results: &mut Results) -> io::Result<()> {
    eprintln!("memory: {} idle connections per server", s.idle_conns);
    let kinds = selected(s, &Impl::SERVERS);
    for r in 0..s.memory_repeats {
        for kind in rotated(&kinds, r) {
            let what = format!("[{}/{}] {} memory", r + 1, s.memory_repeats, kind.name());
            if let Some(m) = count_memory(s, kind, &what, &mut results.failures) {
                results.memory.entry(kind.name()).or_default().push(m);
            }
        }
    }
    Ok(())
}

fn run_broadcast(s: &Settings, results: &mut Results) -> io::Result<()> {
    let kinds = selected(s, &Impl::BROADCAST);
    eprintln!(
        "broadcast: {:?} receivers, {} B messages, {} outstanding",
        s.broadcast_receivers, BROADCAST_SIZE, s.broadcast_outstanding
    );
    for r in 0..s.repeats {
        for &receivers in &s.broadcast_receivers {
            for kind in rotated(&kinds, r) {
                let what = format!(
                    "[{}/{}] {} broadcast to {receivers}",
                    r + 1,
                    s.repeats,
                    kind.name()
                );
                // A fresh server each time: no connection of an earlier run is still being
                // written to.
                let server = match ServerProcess::start_with(
                    kind.name(),
                    s.server_cpu,
                    &["--broadcast".to_owned()],
                ) {
                    Ok(server) => server,
                    Err(e) => {
                        eprintln!("  {what}: FAILED: {e}");
                        results.failures.push(format!("{what}: {e}"));
                        continue;
                    }
                };
                let mut args: Vec<String> = [
                    "broadcast",
                    "--addr",
                    &server.addr,
                    "--receivers",
                    &receivers.to_string(),
                    "--size",
                    &BROADCAST_SIZE.to_string(),
                    "--outstanding",
                    &s.broadcast_outstanding.to_string(),
                ]
                .map(str::to_owned)
                .to_vec();
                args.extend(timing_args(s));
                let outcome = run_child(args, s);
                server.stop();
                let runs = results
                    .broadcast
                    .entry((receivers, kind.name()))
                    .or_default();
                record(&mut results.failures, runs, what, outcome);
            }
        }
    }
    Ok(())
}

/// Starts one server of the compression section.
fn start_deflater(
    s: &Settings,
    d: Deflater,
    python: &std::path::Path,
) -> io::Result<ServerProcess> {
    match (d.kind, d.level) {
        (Impl::Tether, Some(level)) => ServerProcess::start_with(
            Impl::Tether.name(),
            s.server_cpu,
            &["--deflate-level".to_owned(), level.to_string()],
        ),
        (Impl::Tether, None) => ServerProcess::start(Impl::Tether.name(), s.server_cpu),
        (kind, _) => {
            let (program, args) = compress::external_server(kind, s.server_cpu, python);
            ServerProcess::start_program(&program, &args)
        }
    }
}

/// `program args`'s first line of output, trimmed.
fn first_line(program: &std::path::Path, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    Some(text.lines().next()?.trim().to_owned()).filter(|l| !l.is_empty())
}

fn run_compression(s: &Settings, results: &mut Results) -> io::Result<()> {
    let mut variants = Deflater::all(&s.servers);
    eprintln!(
        "compression: {} servers, {} workloads",
        variants.len(),
        COMPRESSION_WORKLOADS.len()
    );
    // Everything is installed and started before anything is measured.
    if variants.iter().any(|d| d.kind == Impl::NodeWs) {
        if let Err(e) = compress::ensure_node_modules() {
            eprintln!("  node-ws: FAILED: {e}");
            results.failures.push(format!("node-ws: {e}"));
            variants.retain(|d| d.kind != Impl::NodeWs);
        }
    }
    let python = compress::python(s.python.as_deref());
    let mut servers = Vec::new();
    for d in variants {
        match start_deflater(s, d, &python) {
            Ok(server) => servers.push((d, server)),
            Err(e) => {
                eprintln!("  {}: FAILED to start: {e}", d.label());
                results.failures.push(format!("{}: {e}", d.label()));
            }
        }
    }
    if servers.iter().any(|(d, _)| d.kind == Impl::NodeWs) {
        let ws = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/node/node_modules/ws/package.json"
        ))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["version"].as_str().map(str::to_owned));
        let node = first_line(std::path::Path::new("node"), &["--version"]);
        results.external_versions.push(format!(
            "ws {} (Node {})",
            ws.as_deref().unwrap_or("?"),
            node.as_deref().unwrap_or("?")
        ));
    }
    if servers
        .iter()
        .any(|(d, _)| d.kind == Impl::PythonWebsockets)
    {
        let code = "import sys, websockets; print(websockets.__version__, sys.version.split()[0])";
        let v = first_line(&python, &["-c", code]).unwrap_or_else(|| "? ?".to_owned());
        let (ws, py) = v.split_once(' ').unwrap_or((&v, "?"));
        results
            .external_versions
            .push(format!("websockets {ws} (Python {py})"));
    }
    let order: Vec<usize> = (0..servers.len()).collect();
    for r in 0..s.repeats {
        for (wi, w) in COMPRESSION_WORKLOADS.iter().enumerate() {
            for i in rotated(&order, r) {
                let (d, server) = &servers[i];
                let mut args: Vec<String> = [
                    "deflate-load",
                    "--addr",
                    &server.addr,
                    "--conns",
                    &w.conns.to_string(),
                    "--size",
                    &w.size.to_string(),
                    "--inflight",
                    &w.inflight.to_string(),
                ]
                .map(str::to_owned)
                .to_vec();
                if d.compresses() {
                    args.push("--require-deflate".into());
                }
                args.extend(timing_args(s));
                let what = format!("[{}/{}] {} {}", r + 1, s.repeats, d.label(), w.label);
                let outcome = run_child(args, s);
                let runs = results.compression.entry((wi, d.label())).or_default();
                record(&mut results.failures, runs, what, outcome);
            }
        }
    }
    for (_, server) in servers {
        server.stop();
    }
    Ok(())
}

/// tether's client against tether's server, plain and with resumable sessions, in
/// alternation; then memory per idle connection and per idle session.
fn run_sessions(s: &Settings, results: &mut Results) -> io::Result<()> {
    eprintln!("sessions: plain against resumable");
    let mut servers = Vec::new();
    for (mode, kind) in SESSION_MODES {
        servers.push((mode, ServerProcess::start(kind.name(), s.server_cpu)?));
    }
    for r in 0..s.repeats {
        for &wi in &SESSION_WORKLOADS {
            let w = WORKLOADS[wi];
            for (mode, kind) in rotated(&SESSION_MODES, r) {
                let Some((_, server)) = servers.iter().find(|(m, _)| *m == mode) else {
                    continue;
                };
                // The client of the same kind: tether plain, or tether with sessions.
                let args = client_args(kind, &server.addr, &w, s);
                let what = format!("[{}/{}] {mode} {}", r + 1, s.repeats, w.label);
                let outcome = run_child(args, s);
                let runs = results.sessions.entry((wi, mode)).or_default();
                record(&mut results.failures, runs, what, outcome);
            }
        }
    }
    for (_, server) in servers {
        server.stop();
    }
    for r in 0..s.memory_repeats {
        for (mode, kind) in rotated(&SESSION_MODES, r) {
            let what = format!("[{}/{}] {mode} memory", r + 1, s.memory_repeats);
            if let Some(m) = count_memory(s, kind, &what, &mut results.failures) {
                results.session_memory.entry(mode).or_default().push(m);
            }
        }
    }
    Ok(())
}

/// The scaling section's stores for the resumable echo.
pub(crate) const SCALING_STORES: [&str; 2] = ["memory", "redis"];
/// The scaling section's broadcast setups, and its receiver count.
pub(crate) const SCALING_BROADCASTS: [&str; 2] = ["one node", "two nodes, Redis"];
pub(crate) const SCALING_RECEIVERS: usize = 1000;

/// Starts Debian's `redis-server` (no persistence) on a free port on 127.0.0.1, pinned to
/// `cpu`; returns it and its URL once it answers.
fn start_redis(cpu: usize) -> io::Result<(Child, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let args: Vec<String> = [
        "-c",
        &cpu.to_string(),
        "redis-server",
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    .map(str::to_owned)
    .to_vec();
    let child = Child::spawn_program(std::path::Path::new("taskset"), &args)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        use std::io::{Read as _, Write as _};
        if let Ok(mut tcp) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let mut buf = [0; 7];
            if tcp.write_all(b"PING\r\n").is_ok()
                && tcp.read_exact(&mut buf).is_ok()
                && &buf == b"+PONG\r\n"
            {
                return Ok((child, format!("redis://127.0.0.1:{port}/")));
            }
        }
        if std::time::Instant::now() > deadline {
            return Err(io::Error::other("redis-server did not answer in 10 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sessions and broadcast shared through Redis: the resumable echo with sessions kept in
/// the server's memory and in Redis, and tether's broadcast to 1,000 receivers on one node
/// and spread over two nodes that relay through a Redis topic. Redis runs on the load
/// generator's core (`--redis-cpu`); both broadcast nodes on the server's.
fn run_scaling(s: &Settings, results: &mut Results) -> io::Result<()> {
    eprintln!("scaling: sessions in memory and in Redis; broadcast over one and two nodes");
    let (redis, url) = start_redis(s.redis_cpu)?;
    let redis_args = ["--redis".to_owned(), url.clone()];
    let mut servers = Vec::new();
    for store in SCALING_STORES {
        let mut more = vec!["--batch".to_owned()];
        if store == "redis" {
            more.extend_from_slice(&redis_args);
        }
        let server = ServerProcess::start_with(Impl::TetherSessions.name(), s.server_cpu, &more)?;
        servers.push((store, server));
    }
    for r in 0..s.repeats {
        for &wi in &SESSION_WORKLOADS {
            let w = WORKLOADS[wi];
            for (store, server) in rotated(&servers.iter().collect::<Vec<_>>(), r) {
                let args = client_args(Impl::TetherSessions, &server.addr, &w, s);
                let what = format!("[{}/{}] sessions in {store} {}", r + 1, s.repeats, w.label);
                let outcome = run_child(args, s);
                let runs = results.scaling_echo.entry((wi, *store)).or_default();
                record(&mut results.failures, runs, what, outcome);
            }
        }
    }
    for (_, server) in servers {
        server.stop();
    }
    let mut broadcast_args = vec!["--broadcast".to_owned()];
    broadcast_args.extend_from_slice(&redis_args);
    for r in 0..s.repeats {
        for setup in rotated(&SCALING_BROADCASTS, r) {
            let what = format!(
                "[{}/{}] broadcast to {SCALING_RECEIVERS} on {setup}",
                r + 1,
                s.repeats
            );
            let started: io::Result<Vec<ServerProcess>> = if setup == "one node" {
                ServerProcess::start_with("tether", s.server_cpu, &["--broadcast".to_owned()])
                    .map(|one| vec![one])
            } else {
                (0..2)
                    .map(|_| ServerProcess::start_with("tether", s.server_cpu, &broadcast_args))
                    .collect()
            };
            let nodes = match started {
                Ok(nodes) => nodes,
                Err(e) => {
                    eprintln!("  {what}: FAILED: {e}");
                    results.failures.push(format!("{what}: {e}"));
                    continue;
                }
            };
            let mut args: Vec<String> = [
                "broadcast",
                "--addr",
                &nodes[0].addr,
                "--receivers",
                &SCALING_RECEIVERS.to_string(),
                "--size",
                &BROADCAST_SIZE.to_string(),
                "--outstanding",
                &s.broadcast_outstanding.to_string(),
            ]
            .map(str::to_owned)
            .to_vec();
            if let Some(other) = nodes.get(1) {
                args.extend(["--also".to_owned(), other.addr.clone()]);
            }
            args.extend(timing_args(s));
            let outcome = run_child(args, s);
            for node in nodes {
                node.stop();
            }
            let runs = results
                .scaling_broadcast
                .entry((SCALING_RECEIVERS, setup))
                .or_default();
            record(&mut results.failures, runs, what, outcome);
        }
    }
    redis.finish(Duration::ZERO);
    Ok(())
}

fn memory_once(s: &Settings, kind: Impl) -> io::Result<MemorySample> {
    let server = ServerProcess::start(kind.name(), s.server_cpu)?;
    std::thread::sleep(Duration::from_millis(300));
    let before = crate::sys::vm_rss(server.child.pid())?;
    let mut args: Vec<String> = [
        "idle",
        "--addr",
        &server.addr,
        "--conns",
        &s.idle_conns.to_string(),
        "--cpu",
        &s.load_cpu.to_string(),
    ]
    .map(str::to_owned)
    .to_vec();
    if kind == Impl::Raw {
        args.push("--raw".into());
    }
    if kind == Impl::TetherSessions {
        args.push("--session".into());
    }
    let mut idle = Child::spawn(&args)?;
    let line = idle.wait_line("READY ", Duration::from_secs(300))?;
    let field = |name: &str| -> usize {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
            .unwrap_or(0)
    };
    let (conns, errors) = (field("ok"), field("errors"));
    // Let the server finish polling the last connections.
    std::thread::sleep(Duration::from_secs(1));
    let after = crate::sys::vm_rss(server.child.pid())?;
    idle.finish(Duration::from_secs(30));
    server.stop();
    std::thread::sleep(Duration::from_millis(300));
    Ok(MemorySample {
        before,
        after,
        conns,
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_visits_every_position() {
        let all = Impl::SERVERS;
        let firsts: Vec<Impl> = (0..all.len()).map(|r| rotated(&all, r)[0]).collect();
        for k in all {
            assert!(firsts.contains(&k));
        }
        assert_eq!(rotated(&all, 0), all.to_vec());
    }

    #[test]
    fn compression_servers() {
        let all = Deflater::all(&Impl::SELECTABLE);
        let labels: Vec<String> = all.iter().map(|d| d.label()).collect();
        assert!(labels.contains(&"tether level 1".to_owned()));
        assert!(labels.contains(&format!("tether level {}", Deflater::default_level())));
        assert!(labels.contains(&"tether uncompressed".to_owned()));
        assert!(
            labels.contains(&"node-ws".to_owned())
                && labels.contains(&"python-websockets".to_owned())
        );
        assert_eq!(all.iter().filter(|d| !d.compresses()).count(), 1);
        assert!(Deflater::all(&[Impl::NodeWs])
            .iter()
            .all(|d| d.kind == Impl::NodeWs));
    }

    #[test]
    fn quick_settings() {
        let args = Args::parse_from(&["--quick".to_owned()]).unwrap();
        let s = settings(&args, &[]).unwrap();
        assert_eq!((s.repeats, s.memory_repeats), (2, 2));
        assert!(s.duration < 3.0);
        assert!(s.section("echo") && s.section("micro"));
        assert!(s.section("broadcast") && s.section("compression"));
        assert_eq!(s.broadcast_receivers, [1000, 10_000]);
        let args = Args::parse_from(&["--only".to_owned(), "nope".to_owned()]).unwrap();
        assert!(settings(&args, &[]).is_err());
    }
}
