//! The orchestrator: starts servers and load processes pinned to their cores, repeats every
//! case, and writes the report.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::args::Args;
use crate::clients::CLIENTS;
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
    pub(crate) server_cpu: usize,
    pub(crate) load_cpu: usize,
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

const SECTIONS: [&str; 5] = ["echo", "client", "handshakes", "memory", "micro"];

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
  --only LIST          comma-separated sections: echo,client,handshakes,memory,micro
  --servers LIST       comma-separated servers (default all): tether,tokio-tungstenite,
                       fastwebsockets,tokio-websockets,raw-tcp
  --micro MODE         run (default: cargo bench the micro-benchmarks), summary (only read
                       existing criterion results) or skip
  --server-cpu N       core for the servers (default 0)
  --load-cpu N         core for the load generator and this process (default 1)

Modes used by the orchestrator (this same binary):
  server --impl NAME [--addr A] [--cpu N]
  load --addr A --conns N --size B --inflight K --warmup S --duration S [--raw] [--cpu N]
  client --impl tether|tokio-tungstenite --addr A --conns N --size B --inflight K ...
  handshakes --addr A [--concurrency C] --warmup S --duration S [--cpu N]
  idle --addr A --conns N [--raw] [--cpu N]
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
        "only",
        "servers",
        "micro",
        "server-cpu",
        "load-cpu",
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
                    .filter(|i| Impl::SERVERS.contains(i))
                    .ok_or_else(|| io::Error::other(format!("--servers: unknown server {s}")))
            })
            .collect::<io::Result<Vec<_>>>()?,
        None => Impl::SERVERS.to_vec(),
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
        server_cpu: args.parse_or("server-cpu", 0)?,
        load_cpu: args.parse_or("load-cpu", if cpus > 1 { 1 } else { 0 })?,
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
fn rotated(servers: &[Impl], r: usize) -> Vec<Impl> {
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

fn run_echo(s: &Settings, results: &mut Results) -> io::Result<()> {
    eprintln!("echo servers: {} workloads", WORKLOADS.len());
    let mut servers = Vec::new();
    for &kind in &s.servers {
        servers.push((kind, ServerProcess::start(kind.name(), s.server_cpu)?));
    }
    for r in 0..s.repeats {
        for (wi, w) in WORKLOADS.iter().enumerate() {
            for kind in rotated(&s.servers, r) {
                let Some((_, server)) = servers.iter().find(|(k, _)| *k == kind) else {
                    continue;
                };
                let mut args: Vec<String> = [
                    "load",
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
                let mut args: Vec<String> = [
                    "client",
                    "--impl",
                    kind.name(),
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
                args.extend(timing_args(s));
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

fn run_handshakes(s: &Settings, results: &mut Results) -> io::Result<()> {
    eprintln!("handshakes");
    for r in 0..s.repeats {
        for kind in rotated(&s.servers, r) {
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
    for r in 0..s.memory_repeats {
        for kind in rotated(&s.servers, r) {
            let what = format!("[{}/{}] {} memory", r + 1, s.memory_repeats, kind.name());
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
                        results
                            .failures
                            .push(format!("{what}: {} connections failed", m.errors));
                    }
                    results.memory.entry(kind.name()).or_default().push(m);
                }
                Err(e) => {
                    eprintln!("  {what}: FAILED: {e}");
                    results.failures.push(format!("{what}: {e}"));
                }
            }
        }
    }
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
    fn quick_settings() {
        let args = Args::parse_from(&["--quick".to_owned()]).unwrap();
        let s = settings(&args, &[]).unwrap();
        assert_eq!((s.repeats, s.memory_repeats), (2, 2));
        assert!(s.duration < 3.0);
        assert!(s.section("echo") && s.section("micro"));
        let args = Args::parse_from(&["--only".to_owned(), "nope".to_owned()]).unwrap();
        assert!(settings(&args, &[]).is_err());
    }
}
