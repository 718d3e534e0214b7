//! The markdown report and its SVG chart.
//!
//! The report replaces the part of the output file between the two `bench:results` marker
//! comments (appending it if the markers are missing), so the hand-written text around it
//! stays as it is.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::Path;

use crate::clients::CLIENTS;
use crate::micro::MicroResult;
use crate::run::{
    Deflater, MemorySample, Results, Settings, COMPRESSION_WORKLOADS, SESSION_MODES,
    SESSION_WORKLOADS, WORKLOADS,
};
use crate::servers::Impl;
use crate::stats::Outcome;

const BEGIN: &str = "<!-- bench:results:begin -->";
const END: &str = "<!-- bench:results:end -->";
const CHART: &str = "benchmarks-echo.svg";

/// Median, spread and latency of the runs of one case.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Summary {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
    pub(crate) p50_ns: f64,
    pub(crate) p99_ns: f64,
    pub(crate) errors: u64,
    pub(crate) runs: usize,
}

pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

impl Summary {
    pub(crate) fn of(runs: &[Outcome]) -> Option<Self> {
        if runs.is_empty() {
            return None;
        }
        let rates: Vec<f64> = runs.iter().map(Outcome::rate).collect();
        let p50: Vec<f64> = runs.iter().map(|o| o.p50_ns as f64).collect();
        let p99: Vec<f64> = runs.iter().map(|o| o.p99_ns as f64).collect();
        Some(Self {
            median: median(&rates),
            min: rates.iter().copied().fold(f64::INFINITY, f64::min),
            max: rates.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            p50_ns: median(&p50),
            p99_ns: median(&p99),
            errors: runs.iter().map(|o| o.errors).sum(),
            runs: runs.len(),
        })
    }
}

/// `1234567.8` → `1,234,568`.
pub(crate) fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "—".to_owned();
    }
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 && digits != "0" {
        out.insert(0, '-');
    }
    out
}

fn micros(ns: f64) -> String {
    let us = ns / 1e3;
    if us >= 1000.0 {
        thousands(us)
    } else {
        format!("{us:.1}")
    }
}

fn ratio(x: Option<f64>) -> String {
    match x {
        Some(r) if r.is_finite() => format!("{r:.2}×"),
        _ => "—".to_owned(),
    }
}

fn bytes(n: f64) -> String {
    if n.abs() >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", n / 1024.0 / 1024.0)
    } else if n.abs() >= 1024.0 {
        format!("{:.2} KiB", n / 1024.0)
    } else {
        format!("{n:.0} B")
    }
}

/// `1024` → `1 KiB`, `20` → `20 B`.
fn size_label(n: usize) -> String {
    if n >= 1024 && n.is_multiple_of(1024) {
        format!("{} KiB", n / 1024)
    } else {
        format!("{n} B")
    }
}

fn warn(s: &Summary) -> &'static str {
    if s.errors > 0 {
        " ⚠"
    } else {
        ""
    }
}

/// `/proc/loadavg`'s first three fields.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".to_owned())
}

fn rustc_version() -> String {
    std::process::Command::new("rustc")
        .arg("-V")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "rustc ?".to_owned())
}

/// Versions of the named packages in the workspace's Cargo.lock.
fn locked_versions(names: &[&str]) -> Vec<(String, String)> {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock"))
        .unwrap_or_default();
    let mut found = Vec::new();
    let mut lines = lock.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .strip_prefix("name = \"")
            .and_then(|s| s.strip_suffix('"'))
        else {
            continue;
        };
        if !names.contains(&name) {
            continue;
        }
        if let Some(v) = lines
            .peek()
            .and_then(|l| l.strip_prefix("version = \""))
            .and_then(|s| s.strip_suffix('"'))
        {
            found.push((name.to_owned(), v.to_owned()));
        }
    }
    found.sort_by_key(|(n, _)| names.iter().position(|x| x == n));
    found
}

/// Today's date (UTC) as `YYYY-MM-DD`.
fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 to a proleptic Gregorian date.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The summaries of the echo workloads: (workload, server) → summary.
type EchoTable = BTreeMap<(usize, &'static str), Summary>;

fn summarize(map: &BTreeMap<(usize, &'static str), Vec<Outcome>>) -> EchoTable {
    map.iter()
        .filter_map(|(k, runs)| Summary::of(runs).map(|s| (*k, s)))
        .collect()
}

/// The best peer's summary for workload `w`.
fn best_peer(table: &EchoTable, w: usize) -> Option<(&'static str, Summary)> {
    Impl::SERVERS
        .iter()
        .filter(|i| i.is_peer())
        .filter_map(|i| table.get(&(w, i.name())).map(|s| (i.name(), *s)))
        .max_by(|a, b| a.1.median.total_cmp(&b.1.median))
}

/// Per key: median bytes per connection, min, max, and the median VmRSS before and after.
fn memory_medians(
    samples: &BTreeMap<&'static str, Vec<MemorySample>>,
) -> BTreeMap<&'static str, (f64, f64, f64, f64, f64)> {
    samples
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| {
            let per: Vec<f64> = v.iter().map(|m| m.per_conn()).collect();
            let before: Vec<f64> = v.iter().map(|m| m.before as f64).collect();
            let after: Vec<f64> = v.iter().map(|m| m.after as f64).collect();
            let min = per.iter().copied().fold(f64::INFINITY, f64::min);
            let max = per.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (
                *k,
                (median(&per), min, max, median(&before), median(&after)),
            )
        })
        .collect()
}

/// The runs of one broadcast case.
#[derive(Clone, Copy, Debug)]
struct BroadcastSummary {
    /// Deliveries per second.
    median: f64,
    min: f64,
    max: f64,
    /// Messages the sender sent per second (median).
    sent_rate: f64,
    p50_ns: f64,
    p99_ns: f64,
    /// Messages the receivers never got, all runs together...
    lost: u64,
    /// ...and their share of what should have arrived (sent × receivers).
    lost_share: f64,
    errors: u64,
}

/// The receiver counts measured, in order.
fn broadcast_counts(results: &Results) -> Vec<usize> {
    let mut v: Vec<usize> = results.broadcast.keys().map(|(n, _)| *n).collect();
    v.dedup();
    v
}

fn broadcast_summary(
    results: &Results,
    receivers: usize,
    server: &str,
) -> Option<BroadcastSummary> {
    broadcast_summary_of(&results.broadcast, receivers, server)
}

fn broadcast_summary_of(
    map: &BTreeMap<(usize, &'static str), Vec<Outcome>>,
    receivers: usize,
    server: &str,
) -> Option<BroadcastSummary> {
    let runs = map.get(&(receivers, server))?;
    let s = Summary::of(runs)?;
    let sent: Vec<f64> = runs
        .iter()
        .map(|o| {
            if o.secs > 0.0 {
                o.sent as f64 / o.secs
            } else {
                0.0
            }
        })
        .collect();
    let lost: u64 = runs.iter().map(|o| o.lost).sum();
    let expected: f64 = runs.iter().map(|o| o.sent as f64 * receivers as f64).sum();
    Some(BroadcastSummary {
        median: s.median,
        min: s.min,
        max: s.max,
        sent_rate: median(&sent),
        p50_ns: s.p50_ns,
        p99_ns: s.p99_ns,
        lost,
        lost_share: if expected > 0.0 {
            lost as f64 / expected
        } else {
            0.0
        },
        errors: s.errors,
    })
}

fn best_broadcast_peer(
    results: &Results,
    receivers: usize,
) -> Option<(&'static str, BroadcastSummary)> {
    Impl::BROADCAST
        .iter()
        .filter(|i| i.is_peer())
        .filter_map(|i| broadcast_summary(results, receivers, i.name()).map(|s| (i.name(), s)))
        .max_by(|a, b| a.1.median.total_cmp(&b.1.median))
}

/// The runs of one compression case: throughput and the median wire/payload ratio.
#[derive(Clone, Copy, Debug)]
struct DeflateSummary {
    rate: Summary,
    ratio: Option<f64>,
}

fn compression_table(results: &Results) -> BTreeMap<(usize, String), DeflateSummary> {
    results
        .compression
        .iter()
        .filter_map(|(k, runs)| {
            let rate = Summary::of(runs)?;
            let ratios: Vec<f64> = runs.iter().filter_map(Outcome::wire_ratio).collect();
            let ratio = (!ratios.is_empty()).then(|| median(&ratios));
            Some((k.clone(), DeflateSummary { rate, ratio }))
        })
        .collect()
}

/// Writes the report into `settings.out` and the chart next to it.
pub(crate) fn write(settings: &Settings, results: &Results) -> io::Result<()> {
    let echo = summarize(&results.echo);
    let dir = settings.out.parent().unwrap_or(Path::new("."));
    if !dir.as_os_str().is_empty() {
        std::fs::create_dir_all(dir)?;
    }
    let chart = echo_chart(&echo);
    if let Some(svg) = &chart {
        std::fs::write(dir.join(CHART), svg)?;
    }
    let section = markdown(settings, results, &echo, chart.is_some());
    let existing = std::fs::read_to_string(&settings.out).unwrap_or_default();
    let updated = splice(&existing, &section);
    std::fs::write(&settings.out, updated)?;
    eprintln!("bench: wrote {}", settings.out.display());
    Ok(())
}

/// `existing` with the marked section replaced by `section` (or `section` appended).
fn splice(existing: &str, section: &str) -> String {
    let block = format!("{BEGIN}\n{section}{END}\n");
    match (existing.find(BEGIN), existing.find(END)) {
        (Some(b), Some(e)) if e > b => {
            let tail = &existing[e + END.len()..];
            let tail = tail.strip_prefix('\n').unwrap_or(tail);
            format!("{}{block}{tail}", &existing[..b])
        }
        _ if existing.is_empty() => format!("# Benchmarks\n\n{block}"),
        _ => format!("{}\n\n{block}", existing.trim_end()),
    }
}

fn markdown(settings: &Settings, results: &Results, echo: &EchoTable, chart: bool) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## Results\n");
    let mode = if settings.quick {
        "**quick smoke run** (`--quick`): indicative only"
    } else {
        "full run"
    };
    let _ = writeln!(
        md,
        "Generated on {} by `cargo run --release -p bench --bin bench --{}{}`: {mode}; \
         {} run(s) per case of {} s after {} s of warm-up, median reported with the spread \
         (min–max) of the runs.\n",
        today(),
        if settings.command.is_empty() { "" } else { " " },
        settings.command,
        settings.repeats,
        settings.duration,
        settings.warmup,
    );
    let versions = locked_versions(&[
        "tokio-tungstenite",
        "tungstenite",
        "fastwebsockets",
        "hyper",
        "tokio-websockets",
        "tokio",
        "axum",
    ]);
    let mut versions: Vec<String> = versions.iter().map(|(n, v)| format!("{n} {v}")).collect();
    versions.extend(results.external_versions.iter().cloned());
    let _ = writeln!(
        md,
        "Machine: {} × {}, Linux {}, {}. Servers pinned to CPU {}, load generator to CPU {}. \
         Load average (1/5/15 min) {} at the start, {} at the end. Peers: {}.\n",
        settings.cpus,
        cpu_model(),
        kernel(),
        rustc_version(),
        settings.server_cpu,
        settings.load_cpu,
        results.load_before,
        results.load_after,
        versions.join(", "),
    );
    targets(&mut md, results, echo);
    echo_section(&mut md, echo, chart);
    client_section(&mut md, results);
    handshake_section(&mut md, results);
    memory_section(&mut md, results, settings);
    broadcast_section(&mut md, results, settings);
    compression_section(&mut md, results);
    sessions_section(&mut md, results, settings);
    scaling_section(&mut md, results);
    micro_section(&mut md, &results.micro);
    if !results.failures.is_empty() {
        let _ = writeln!(md, "### Problems during the run\n");
        for f in &results.failures {
            let _ = writeln!(md, "- {f}");
        }
        md.push('\n');
    }
    md
}

fn targets(md: &mut String, results: &Results, echo: &EchoTable) {
    let _ = writeln!(md, "### Targets\n");
    let _ = writeln!(md, "| Target | Measured | Met |\n|---|---|---|");
    let tether = Impl::Tether.name();
    let raw = Impl::Raw.name();
    // `measured`: the text and whether the target is met.
    let mut row = |target: String, measured: Option<(String, bool)>| {
        let (text, met) = match measured {
            Some((text, ok)) => (text, if ok { "yes" } else { "**no**" }),
            None => ("not measured".to_owned(), "—"),
        };
        let _ = writeln!(md, "| {target} | {text} | {met} |");
    };
    let check =
        |v: f64, text: String, goal: &dyn Fn(f64) -> bool| v.is_finite().then(|| (text, goal(v)));
    for w in [0, 1] {
        let v = echo
            .get(&(w, tether))
            .zip(echo.get(&(w, raw)))
            .map(|(t, r)| t.median / r.median);
        row(
            format!("≥ 0.95× raw TCP echo, {}", WORKLOADS[w].label),
            v.and_then(|v| check(v, format!("{v:.2}×"), &|v| v >= 0.95)),
        );
    }
    let vs_peer = |w: usize| {
        let t = echo.get(&(w, tether))?;
        let (name, p) = best_peer(echo, w)?;
        let v = t.median / p.median;
        Some((v, format!("{v:.2}× ({name})")))
    };
    row(
        format!("≥ 5× the best peer, {}", WORKLOADS[2].label),
        vs_peer(2).and_then(|(v, t)| check(v, t, &|v| v >= 5.0)),
    );
    let v = echo
        .get(&(2, tether))
        .zip(echo.get(&(2, raw)))
        .map(|(t, r)| t.median / r.median);
    row(
        format!("≥ 0.9× raw TCP echo, {}", WORKLOADS[2].label),
        v.and_then(|v| check(v, format!("{v:.2}×"), &|v| v >= 0.9)),
    );
    for w in [3, 4] {
        row(
            format!("≥ 1.1× the best peer, {}", WORKLOADS[w].label),
            vs_peer(w).and_then(|(v, t)| check(v, t, &|v| v >= 1.1)),
        );
    }
    // tether behind axum: the same connection code behind another accept path.
    let axum = Impl::Axum.name();
    for (w, workload) in WORKLOADS.iter().enumerate() {
        let v = echo
            .get(&(w, axum))
            .zip(echo.get(&(w, tether)))
            .map(|(a, t)| a.median / t.median);
        row(
            format!(
                "tether-axum within 5% of tether's own server, {}",
                workload.label
            ),
            v.and_then(|v| check(v, format!("{v:.2}×"), &|v| (v - 1.0).abs() <= 0.05)),
        );
    }
    let mem = memory_medians(&results.memory);
    row(
        "≤ 2 KiB resident per idle connection".to_owned(),
        mem.get(tether)
            .and_then(|m| check(m.0, bytes(m.0), &|v| v <= 2.0 * 1024.0)),
    );
    // Resumable sessions against plain connections, in the same run.
    let sessions = summarize(&results.sessions);
    for &w in &SESSION_WORKLOADS {
        let v = sessions
            .get(&(w, "sessions"))
            .zip(sessions.get(&(w, "plain")))
            .map(|(s, p)| s.median / p.median);
        row(
            format!("sessions ≥ 0.9× plain, {}", WORKLOADS[w].label),
            v.and_then(|v| check(v, format!("{v:.2}×"), &|v| v >= 0.9)),
        );
    }
    let idle = memory_medians(&results.session_memory);
    row(
        "an idle resumable session ≤ 2× an idle plain connection".to_owned(),
        idle.get("sessions")
            .zip(idle.get("plain"))
            .map(|(s, p)| s.0 / p.0)
            .and_then(|v| check(v, format!("{v:.2}×"), &|v| v <= 2.0)),
    );
    for r in results
        .micro
        .iter()
        .filter(|r| r.group == "mask" && r.function == "apply_mask")
    {
        row(
            format!("masking ≥ 10 GB/s, {}", r.input),
            r.bytes_per_sec()
                .and_then(|b| check(b, format!("{:.1} GB/s", b / 1e9), &|v| v >= 10e9)),
        );
    }
    // Broadcast: the ratio counts only if tether delivered everything.
    let receivers: Vec<usize> = broadcast_counts(results);
    for n in receivers {
        let t = broadcast_summary(results, n, tether);
        let best = best_broadcast_peer(results, n);
        let measured = t.zip(best).map(|(t, (name, p))| {
            let v = t.median / p.median;
            let mut text = format!("{v:.2}× ({name})");
            if t.lost > 0 {
                let _ = write!(text, ", {} messages lost", thousands(t.lost as f64));
            }
            (text, v >= 3.0 && t.lost == 0)
        });
        row(
            format!(
                "≥ 3× the best peer in deliveries/s, broadcast to {} receivers",
                thousands(n as f64)
            ),
            measured,
        );
    }
    // Compression.
    let table = compression_table(results);
    if !table.is_empty() {
        let default = Deflater {
            kind: Impl::Tether,
            level: Some(Deflater::default_level()),
        }
        .label();
        let off = Deflater {
            kind: Impl::Tether,
            level: None,
        }
        .label();
        for (w, workload) in COMPRESSION_WORKLOADS.iter().enumerate() {
            let t = table.get(&(w, default.clone()));
            let v = t
                .zip(table.get(&(w, off.clone())))
                .map(|(t, u)| t.rate.median / u.rate.median);
            row(
                format!("{default} (default) ≥ 0.6× {off}, {}", workload.label),
                v.and_then(|v| check(v, format!("{v:.2}×"), &|v| v >= 0.6)),
            );
        }
        let level6 = Deflater {
            kind: Impl::Tether,
            level: Some(6),
        }
        .label();
        let ratio_of = |label: &str| -> Option<f64> {
            let v: Vec<f64> = (0..COMPRESSION_WORKLOADS.len())
                .filter_map(|w| table.get(&(w, label.to_owned()))?.ratio)
                .collect();
            (!v.is_empty()).then(|| median(&v))
        };
        let measured = ratio_of(&default).zip(ratio_of(&level6)).map(|(d, six)| {
            let off = d / six - 1.0;
            (
                format!("{d:.3} vs {six:.3} ({:+.1}%)", off * 100.0),
                off.abs() <= 0.15,
            )
        });
        row(
            format!("{default} (default): wire/payload within 15% of level 6's"),
            measured,
        );
        for (w, workload) in COMPRESSION_WORKLOADS.iter().enumerate() {
            let t = table.get(&(w, default.clone()));
            let peer = [Impl::NodeWs, Impl::PythonWebsockets]
                .iter()
                .filter_map(|k| table.get(&(w, k.name().to_owned())).map(|s| (k.name(), s)))
                .max_by(|a, b| a.1.rate.median.total_cmp(&b.1.rate.median));
            let measured = t.zip(peer).and_then(|(t, (name, p))| {
                let v = t.rate.median / p.rate.median;
                check(v, format!("{v:.2}× ({name})"), &|v| v >= 4.0)
            });
            row(
                format!(
                    "{default} (default) ≥ 4× the faster of Node ws and Python websockets, {}",
                    workload.label
                ),
                measured,
            );
        }
    }
    md.push('\n');
}

fn echo_section(md: &mut String, echo: &EchoTable, chart: bool) {
    if echo.is_empty() {
        return;
    }
    let _ = writeln!(md, "### Echo servers\n");
    if chart {
        let _ = writeln!(
            md,
            "![Echo throughput relative to the raw TCP echo]({CHART})\n"
        );
    }
    let _ = writeln!(
        md,
        "Messages echoed per second (median of the runs), the spread of the runs, round-trip \
         latency per message (median of the runs' p50 and p99), and the ratio of the median to \
         the best peer's and to the raw TCP echo's.\n"
    );
    let _ = writeln!(
        md,
        "| Workload | Server | msgs/s | min–max | p50 µs | p99 µs | × best peer | × raw TCP |\n\
         |---|---|--:|--:|--:|--:|--:|--:|"
    );
    for (w, workload) in WORKLOADS.iter().enumerate() {
        let best = best_peer(echo, w);
        let raw = echo.get(&(w, Impl::Raw.name()));
        for kind in Impl::ECHO {
            let Some(s) = echo.get(&(w, kind.name())) else {
                continue;
            };
            let name = if kind == Impl::Tether {
                format!("**{}**", kind.name())
            } else {
                kind.name().to_owned()
            };
            let _ = writeln!(
                md,
                "| {} | {name} | {}{} | {}–{} | {} | {} | {} | {} |",
                workload.label,
                thousands(s.median),
                warn(s),
                thousands(s.min),
                thousands(s.max),
                micros(s.p50_ns),
                micros(s.p99_ns),
                ratio(best.map(|(_, b)| s.median / b.median)),
                ratio(raw.map(|r| s.median / r.median)),
            );
        }
    }
    md.push('\n');
    axum_table(md, echo);
}

/// tether behind axum against tether's own server, per echo workload.
fn axum_table(md: &mut String, echo: &EchoTable) {
    let (tether, axum) = (Impl::Tether.name(), Impl::Axum.name());
    if !(0..WORKLOADS.len()).any(|w| echo.contains_key(&(w, axum))) {
        return;
    }
    let _ = writeln!(
        md,
        "tether behind axum (`tether-axum`: an axum `Router` whose handler upgrades with \
         `tether::axum::WebSocketUpgrade`, served by `axum::serve`) against tether's own \
         server, same workloads and echo loop:\n"
    );
    let _ = writeln!(
        md,
        "| Workload | tether msgs/s | tether-axum msgs/s | min–max | p99 µs | × tether |\n\
         |---|--:|--:|--:|--:|--:|"
    );
    for (w, workload) in WORKLOADS.iter().enumerate() {
        let Some(a) = echo.get(&(w, axum)) else {
            continue;
        };
        let t = echo.get(&(w, tether));
        let _ = writeln!(
            md,
            "| {} | {} | {}{} | {}–{} | {} | {} |",
            workload.label,
            t.map_or_else(|| "—".to_owned(), |t| thousands(t.median)),
            thousands(a.median),
            warn(a),
            thousands(a.min),
            thousands(a.max),
            micros(a.p99_ns),
            ratio(t.map(|t| a.median / t.median)),
        );
    }
    md.push('\n');
}

fn broadcast_section(md: &mut String, results: &Results, settings: &Settings) {
    let counts = broadcast_counts(results);
    if counts.is_empty() {
        return;
    }
    let _ = writeln!(md, "### Broadcast\n");
    let _ = writeln!(
        md,
        "One sender connection sends {} binary messages, each starting with a sequence number \
         and its send time, and keeps {} of them on their way (a message counts as delivered \
         to the sender when its own copy comes back; each copy back lets one more go). The \
         server relays every message to every connection, the sender included, through a \
         `tokio::sync::broadcast` channel of {} messages: tether as its `broadcast_server` \
         example does (one `PreparedMessage`, `feed_prepared` per receiver, one `flush` per \
         batch), the peers with one write per message and receiver. Deliveries/s counts the \
         messages received by all receivers (the sender's own copies not included), median of \
         the runs; the lag is from the sender's write to the read that completed the message \
         at a receiver (median of the runs' p50 and p99). Lost: sequence numbers receivers \
         never saw (a receiver more than {} messages behind skips ahead), all runs together, \
         with their share of what should have arrived.\n",
        size_label(crate::run::BROADCAST_SIZE),
        settings.broadcast_outstanding,
        thousands(crate::broadcast::CAPACITY as f64),
        thousands(crate::broadcast::CAPACITY as f64),
    );
    let _ = writeln!(
        md,
        "| Receivers | Server | deliveries/s | min–max | sent msgs/s | p50 lag µs | p99 lag µs \
         | lost | × best peer |\n|--:|---|--:|--:|--:|--:|--:|--:|--:|"
    );
    for n in counts {
        let best = best_broadcast_peer(results, n);
        for kind in Impl::BROADCAST {
            let Some(b) = broadcast_summary(results, n, kind.name()) else {
                continue;
            };
            let name = if kind == Impl::Tether {
                format!("**{}**", kind.name())
            } else {
                kind.name().to_owned()
            };
            let lost = if b.lost == 0 {
                "0".to_owned()
            } else {
                format!(
                    "{} ⚠ ({:.2}%)",
                    thousands(b.lost as f64),
                    b.lost_share * 100.0
                )
            };
            let _ = writeln!(
                md,
                "| {} | {name} | {}{} | {}–{} | {} | {} | {} | {lost} | {} |",
                thousands(n as f64),
                thousands(b.median),
                if b.errors > 0 { " ⚠" } else { "" },
                thousands(b.min),
                thousands(b.max),
                thousands(b.sent_rate),
                micros(b.p50_ns),
                micros(b.p99_ns),
                ratio(best.map(|(_, p)| b.median / p.median)),
            );
        }
    }
    md.push('\n');
}

fn compression_section(md: &mut String, results: &Results) {
    let table = compression_table(results);
    if table.is_empty() {
        return;
    }
    let default = Deflater::default_level();
    let off = Deflater {
        kind: Impl::Tether,
        level: None,
    }
    .label();
    let _ = writeln!(md, "### Compression\n");
    let _ = writeln!(
        md,
        "{} JSON-like text messages (16 distinct ones per connection, in turn) echoed with \
         permessage-deflate, no context takeover either way: tether at levels {} (its default \
         is {default}), tether with compression off on the same workload, Node's `ws` \
         (`perMessageDeflate` with `threshold: 0` and no context takeover, zlib's defaults \
         otherwise) and Python's `websockets` (its defaults, compression on). The load \
         generator offers `{}`, compresses its messages once before the run, checks one echo \
         per connection (compressed, and inflating to the message) and then only counts. \
         Wire/payload is the bytes read from the server per payload byte, frame headers \
         included: the compression of the server's side (lower is better; about 1.004 \
         uncompressed). Messages/s and latency as in the echo section; the ratios are to \
         tether uncompressed and to the faster of Node and Python.\n",
        size_label(crate::compress::PAYLOAD),
        crate::run::LEVELS
            .iter()
            .map(u8::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        tether::DeflateConfig::default().client_offer(),
    );
    let _ = writeln!(
        md,
        "| Workload | Server | msgs/s | min–max | p50 µs | p99 µs | wire/payload | × {off} | \
         × best of Node/Python |\n|---|---|--:|--:|--:|--:|--:|--:|--:|"
    );
    let labels: Vec<String> = Deflater::all(&Impl::SELECTABLE)
        .into_iter()
        .map(Deflater::label)
        .collect();
    for (w, workload) in COMPRESSION_WORKLOADS.iter().enumerate() {
        let base = table.get(&(w, off.clone()));
        let peer = [Impl::NodeWs, Impl::PythonWebsockets]
            .iter()
            .filter_map(|k| table.get(&(w, k.name().to_owned())))
            .map(|s| s.rate.median)
            .fold(f64::NAN, f64::max);
        for label in &labels {
            let Some(d) = table.get(&(w, label.clone())) else {
                continue;
            };
            let name = if *label == format!("tether level {default}") {
                format!("**{label}** (default)")
            } else {
                label.clone()
            };
            let r = &d.rate;
            let _ = writeln!(
                md,
                "| {} | {name} | {}{} | {}–{} | {} | {} | {} | {} | {} |",
                workload.label,
                thousands(r.median),
                warn(r),
                thousands(r.min),
                thousands(r.max),
                micros(r.p50_ns),
                micros(r.p99_ns),
                d.ratio
                    .map_or_else(|| "—".to_owned(), |x| format!("{x:.3}")),
                ratio(base.map(|b| r.median / b.rate.median)),
                ratio(Some(r.median / peer)),
            );
        }
    }
    md.push('\n');
}

/// One row of a throughput table: label, name, msgs/s with its spread and latency, ratio.
fn throughput_row(md: &mut String, label: &str, name: &str, s: &Summary, base: Option<&Summary>) {
    let _ = writeln!(
        md,
        "| {label} | {name} | {}{} | {}–{} | {} | {} | {} |",
        thousands(s.median),
        warn(s),
        thousands(s.min),
        thousands(s.max),
        micros(s.p50_ns),
        micros(s.p99_ns),
        ratio(base.map(|b| s.median / b.median)),
    );
}

fn client_section(md: &mut String, results: &Results) {
    let table = summarize(&results.client);
    if table.is_empty() {
        return;
    }
    let _ = writeln!(md, "### Clients\n");
    let _ = writeln!(
        md,
        "tether's client against tokio-tungstenite's, both driving the same minimal frame-echo \
         server (neither library on the server side).\n"
    );
    let _ = writeln!(
        md,
        "| Workload | Client | msgs/s | min–max | p50 µs | p99 µs | × tokio-tungstenite |\n\
         |---|---|--:|--:|--:|--:|--:|"
    );
    for (w, workload) in WORKLOADS.iter().enumerate() {
        let base = table.get(&(w, Impl::Tungstenite.name()));
        for kind in CLIENTS {
            let Some(s) = table.get(&(w, kind.name())) else {
                continue;
            };
            throughput_row(md, workload.label, kind.name(), s, base);
        }
    }
    md.push('\n');
}

fn handshake_section(md: &mut String, results: &Results) {
    let table: BTreeMap<&str, Summary> = results
        .handshakes
        .iter()
        .filter_map(|(k, v)| Summary::of(v).map(|s| (*k, s)))
        .collect();
    if table.is_empty() {
        return;
    }
    let best = Impl::SERVERS
        .iter()
        .filter(|i| i.is_peer())
        .filter_map(|i| table.get(i.name()))
        .map(|s| s.median)
        .fold(f64::NAN, f64::max);
    let raw = table.get(Impl::Raw.name()).map(|s| s.median);
    let _ = writeln!(md, "### Handshakes\n");
    let _ = writeln!(
        md,
        "Complete cycles per second (connect, upgrade, Close and the server's Close back) from \
         concurrent loops, each against a freshly started server; latency is per cycle. The \
         raw TCP line sends the same bytes to the raw echo, which sends them back: a reference \
         for connect, one exchange and close, not a strict ceiling (the raw echo never closes \
         first, the WebSocket servers do).\n"
    );
    let _ = writeln!(
        md,
        "| Server | handshakes/s | min–max | p50 µs | p99 µs | × best peer | × raw TCP |\n\
         |---|--:|--:|--:|--:|--:|--:|"
    );
    for kind in Impl::SERVERS {
        let Some(s) = table.get(kind.name()) else {
            continue;
        };
        let _ = writeln!(
            md,
            "| {} | {}{} | {}–{} | {} | {} | {} | {} |",
            kind.name(),
            thousands(s.median),
            warn(s),
            thousands(s.min),
            thousands(s.max),
            micros(s.p50_ns),
            micros(s.p99_ns),
            ratio(Some(s.median / best)),
            ratio(raw.map(|r| s.median / r)),
        );
    }
    md.push('\n');
}

fn memory_section(md: &mut String, results: &Results, settings: &Settings) {
    let mem = memory_medians(&results.memory);
    if mem.is_empty() {
        return;
    }
    let best = Impl::SERVERS
        .iter()
        .filter(|i| i.is_peer())
        .filter_map(|i| mem.get(i.name()))
        .map(|m| m.0)
        .fold(f64::NAN, f64::min);
    let _ = writeln!(md, "### Memory per idle connection\n");
    let _ = writeln!(
        md,
        "Growth of the server's resident memory (VmRSS) from just after start to {} open, \
         upgraded, idle connections, divided by their number (kernel socket buffers are not \
         in VmRSS). Lower is better; the ratio is to the leanest peer.\n",
        thousands(settings.idle_conns as f64)
    );
    let _ = writeln!(
        md,
        "| Server | per connection | min–max | VmRSS before → after | × best peer |\n\
         |---|--:|--:|--:|--:|"
    );
    for kind in Impl::SERVERS {
        let Some(&(per, min, max, before, after)) = mem.get(kind.name()) else {
            continue;
        };
        let _ = writeln!(
            md,
            "| {} | {} | {}–{} | {} → {} | {} |",
            kind.name(),
            bytes(per),
            bytes(min),
            bytes(max),
            bytes(before),
            bytes(after),
            ratio(Some(per / best)),
        );
    }
    md.push('\n');
}

fn sessions_section(md: &mut String, results: &Results, settings: &Settings) {
    let table = summarize(&results.sessions);
    if table.is_empty() && results.session_memory.is_empty() {
        return;
    }
    let _ = writeln!(md, "### Resumable sessions\n");
    let _ = writeln!(
        md,
        "tether's client against tether's echo server, without and with resumable sessions \
         (both ends number every message, keep it until acknowledged, and acknowledge every 32 \
         messages or 100 ms), in alternation in one run. Aim: sessions ≥ 0.9× plain.\n"
    );
    let _ = writeln!(
        md,
        "| Workload | Mode | msgs/s | min–max | p50 µs | p99 µs | × plain |\n\
         |---|---|--:|--:|--:|--:|--:|"
    );
    for &w in &SESSION_WORKLOADS {
        let base = table.get(&(w, "plain"));
        for (mode, _) in SESSION_MODES {
            let Some(s) = table.get(&(w, mode)) else {
                continue;
            };
            throughput_row(md, WORKLOADS[w].label, mode, s, base);
        }
    }
    md.push('\n');
    let memory = memory_medians(&results.session_memory);
    let per = |mode: &str| memory.get(mode).map(|&(m, min, max, _, _)| (m, min, max));
    let plain = per("plain");
    if plain.is_none() && per("sessions").is_none() {
        return;
    }
    let _ = writeln!(
        md,
        "Memory per idle connection of the same server: {} plain connections, and as many \
         resumable sessions (upgraded, HELLO and WELCOME exchanged, nothing buffered). Aim: a \
         session ≤ 2× a plain connection.\n",
        thousands(settings.idle_conns as f64)
    );
    let _ = writeln!(
        md,
        "| Mode | per connection | min–max | × plain |\n|---|--:|--:|--:|"
    );
    for (mode, _) in SESSION_MODES {
        let Some((m, min, max)) = per(mode) else {
            continue;
        };
        let _ = writeln!(
            md,
            "| {mode} | {} | {}–{} | {} |",
            bytes(m),
            bytes(min),
            bytes(max),
            ratio(plain.map(|p| m / p.0)),
        );
    }
    md.push('\n');
}

fn scaling_section(md: &mut String, results: &Results) {
    use crate::run::{SCALING_BROADCASTS, SCALING_RECEIVERS, SCALING_STORES};
    let table = summarize(&results.scaling_echo);
    let broadcasts: Vec<_> = SCALING_BROADCASTS
        .iter()
        .filter_map(|setup| {
            broadcast_summary_of(&results.scaling_broadcast, SCALING_RECEIVERS, setup)
                .map(|b| (*setup, b))
        })
        .collect();
    if table.is_empty() && broadcasts.is_empty() {
        return;
    }
    let _ = writeln!(md, "### Many nodes: sessions and broadcast in Redis\n");
    if !table.is_empty() {
        let _ = writeln!(
            md,
            "tether's session client against tether's resumable echo server, with the sessions \
             kept in the server's memory and in Redis (`RedisStore`: the messages sent and the \
             deliveries are recorded with one Lua script per batch, answered before the \
             messages go on). The handler answers what waits together (`recv_requests` and \
             `reply`, up to 64: one script records a batch of replies and the deliveries \
             of their requests), with either store. Redis (`redis-server`, no \
             persistence) runs on the load generator's core.\n"
        );
        let _ = writeln!(
            md,
            "| Workload | Store | msgs/s | min–max | p50 µs | p99 µs | × memory |\n\
             |---|---|--:|--:|--:|--:|--:|"
        );
        for &w in &SESSION_WORKLOADS {
            let base = table.get(&(w, "memory"));
            for store in SCALING_STORES {
                if let Some(s) = table.get(&(w, store)) {
                    throughput_row(md, WORKLOADS[w].label, store, s, base);
                }
            }
        }
        md.push('\n');
    }
    if !broadcasts.is_empty() {
        let _ = writeln!(
            md,
            "tether's broadcast server (as in the broadcast section) to {} receivers: on one \
             node, and on two nodes (both on the server's core) that publish what they receive \
             to a Redis topic (`RedisTopic`) and relay what it carries, half the receivers on \
             each; the sender is on the first.\n",
            thousands(SCALING_RECEIVERS as f64)
        );
        let _ = writeln!(
            md,
            "| Setup | deliveries/s | min–max | sent msgs/s | p50 lag µs | p99 lag µs | lost | \
             × one node |\n|---|--:|--:|--:|--:|--:|--:|--:|"
        );
        let one = broadcasts
            .iter()
            .find(|(s, _)| *s == "one node")
            .map(|(_, b)| b.median);
        for (setup, b) in &broadcasts {
            let _ = writeln!(
                md,
                "| {setup} | {}{} | {}–{} | {} | {} | {} | {} | {} |",
                thousands(b.median),
                if b.errors > 0 { " ⚠" } else { "" },
                thousands(b.min),
                thousands(b.max),
                thousands(b.sent_rate),
                micros(b.p50_ns),
                micros(b.p99_ns),
                thousands(b.lost as f64),
                ratio(one.map(|o| b.median / o)),
            );
        }
        md.push('\n');
    }
}

fn micro_section(md: &mut String, micro: &[MicroResult]) {
    if micro.is_empty() {
        return;
    }
    let _ = writeln!(md, "### Micro-benchmarks\n");
    let _ = writeln!(
        md,
        "criterion medians from `benches/micro.rs` (run alone with `cargo bench -p bench`).\n"
    );
    let _ = writeln!(
        md,
        "| Group | Benchmark | Input | Time | Throughput |\n|---|---|---|--:|--:|"
    );
    for r in micro {
        let time = if r.median_ns >= 1e6 {
            format!("{:.2} ms", r.median_ns / 1e6)
        } else if r.median_ns >= 1e3 {
            format!("{:.2} µs", r.median_ns / 1e3)
        } else {
            format!("{:.1} ns", r.median_ns)
        };
        let rate = match (r.bytes_per_sec(), r.elements_per_sec()) {
            (Some(b), _) => format!("{:.2} GB/s", b / 1e9),
            (_, Some(e)) => format!("{} msgs/s", thousands(e)),
            _ => "—".to_owned(),
        };
        let _ = writeln!(
            md,
            "| {} | `{}` | {} | {time} | {rate} |",
            r.group, r.function, r.input
        );
    }
    md.push('\n');
}

fn color(name: &str) -> &'static str {
    match name {
        "tether" => "#d1495b",
        "tokio-tungstenite" => "#4c78a8",
        "fastwebsockets" => "#f2a541",
        "tokio-websockets" => "#59a14f",
        "tether-axum" => "#e8868f",
        _ => "#9d9d9d",
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Grouped bars: per workload, each server's median relative to the raw TCP echo, with the
/// runs' min–max as whiskers. `None` without raw TCP results to relate to.
fn echo_chart(echo: &EchoTable) -> Option<String> {
    let groups: Vec<usize> = (0..WORKLOADS.len())
        .filter(|w| echo.contains_key(&(*w, Impl::Raw.name())))
        .collect();
    if groups.is_empty() {
        return None;
    }
    let servers: Vec<Impl> = Impl::ECHO
        .into_iter()
        .filter(|k| groups.iter().any(|w| echo.contains_key(&(*w, k.name()))))
        .collect();
    let (width, height) = (980.0, 460.0);
    let (left, right, top, bottom) = (64.0, 16.0, 64.0, 84.0);
    let plot_w = width - left - right;
    let plot_h = height - top - bottom;
    let mut top_value: f64 = 1.0;
    for &w in &groups {
        let raw = echo[&(w, Impl::Raw.name())].median;
        for k in &servers {
            if let Some(s) = echo.get(&(w, k.name())) {
                top_value = top_value.max(s.max / raw);
            }
        }
    }
    let step = if top_value > 2.0 { 0.5 } else { 0.25 };
    let y_max = (top_value / step).ceil() * step;
    let y = |v: f64| top + plot_h * (1.0 - v / y_max);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(
        svg,
        "<rect x=\"0\" y=\"0\" width=\"{width}\" height=\"{height}\" fill=\"white\"/>"
    );
    let _ = writeln!(
        svg,
        "<text x=\"{left}\" y=\"20\" font-size=\"15\" font-weight=\"bold\">Echo throughput \
         relative to the raw TCP echo (median; whiskers: min–max of the runs)</text>"
    );
    // Legend.
    let mut x = left;
    for k in &servers {
        let _ = writeln!(
            svg,
            "<rect x=\"{x}\" y=\"32\" width=\"12\" height=\"12\" fill=\"{}\"/>\
             <text x=\"{}\" y=\"43\">{}</text>",
            color(k.name()),
            x + 16.0,
            k.name()
        );
        x += 30.0 + 7.5 * k.name().len() as f64;
    }
    // Grid and axis.
    let mut v = 0.0;
    while v <= y_max + 1e-9 {
        let yy = y(v);
        let stroke = if (v - 1.0).abs() < 1e-9 {
            "#555"
        } else {
            "#ddd"
        };
        let _ = writeln!(
            svg,
            "<line x1=\"{left}\" y1=\"{yy:.1}\" x2=\"{}\" y2=\"{yy:.1}\" stroke=\"{stroke}\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.2}×</text>",
            width - right,
            left - 6.0,
            yy + 4.0
        );
        v += step;
    }
    let group_w = plot_w / groups.len() as f64;
    let bar_w = group_w * 0.8 / servers.len() as f64;
    for (gi, &w) in groups.iter().enumerate() {
        let raw = echo[&(w, Impl::Raw.name())];
        let gx = left + gi as f64 * group_w + group_w * 0.1;
        for (si, k) in servers.iter().enumerate() {
            let Some(s) = echo.get(&(w, k.name())) else {
                continue;
            };
            let bx = gx + si as f64 * bar_w;
            let rel = s.median / raw.median;
            let (y0, y1) = (y(rel), y(0.0));
            let _ = writeln!(
                svg,
                "<rect x=\"{bx:.1}\" y=\"{y0:.1}\" width=\"{:.1}\" height=\"{:.1}\" \
                 fill=\"{}\"><title>{}: {} msgs/s ({rel:.2}×)</title></rect>",
                bar_w - 2.0,
                (y1 - y0).max(0.0),
                color(k.name()),
                k.name(),
                thousands(s.median)
            );
            let cx = bx + (bar_w - 2.0) / 2.0;
            let _ = writeln!(
                svg,
                "<line x1=\"{cx:.1}\" y1=\"{:.1}\" x2=\"{cx:.1}\" y2=\"{:.1}\" stroke=\"#222\"/>",
                y(s.min / raw.median),
                y(s.max / raw.median)
            );
            let _ = writeln!(
                svg,
                "<text x=\"{cx:.1}\" y=\"{:.1}\" font-size=\"9\" text-anchor=\"middle\">{rel:.2}</text>",
                y(s.max / raw.median) - 3.0
            );
        }
        let lx = left + (gi as f64 + 0.5) * group_w;
        let _ = writeln!(
            svg,
            "<text x=\"{lx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\
             <text x=\"{lx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\" \
             fill=\"#555\">raw TCP: {} msgs/s</text>",
            height - bottom + 20.0,
            escape(WORKLOADS[w].label),
            height - bottom + 36.0,
            thousands(raw.median)
        );
    }
    let _ = writeln!(
        svg,
        "<line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{:.1}\" stroke=\"#555\"/>",
        height - bottom
    );
    svg.push_str("</svg>\n");
    Some(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(count: u64) -> Outcome {
        Outcome {
            count,
            secs: 1.0,
            p50_ns: 1000,
            p99_ns: 5000,
            ..Outcome::default()
        }
    }

    #[test]
    fn summary_takes_the_median_and_spread() {
        let s = Summary::of(&[outcome(30), outcome(10), outcome(20)]).unwrap();
        assert_eq!((s.median, s.min, s.max), (20.0, 10.0, 30.0));
        assert_eq!(s.runs, 3);
        assert_eq!(median(&[1.0, 2.0, 3.0, 4.0]), 2.5);
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn formatting() {
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(f64::NAN), "—");
        assert_eq!(bytes(2048.0), "2.00 KiB");
        assert_eq!(
            (size_label(1024), size_label(20)),
            ("1 KiB".into(), "20 B".into())
        );
        assert_eq!(ratio(Some(1.234)), "1.23×");
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn splices_between_markers() {
        let doc = format!("# T\n\nintro\n\n{BEGIN}\nold\n{END}\n\nafter\n");
        let out = splice(&doc, "new\n");
        assert_eq!(
            out,
            format!("# T\n\nintro\n\n{BEGIN}\nnew\n{END}\n\nafter\n")
        );
        let appended = splice("# T\n", "new\n");
        assert!(appended.starts_with("# T\n\n") && appended.contains("new\n"));
    }

    fn run(count: u64, extra: impl FnOnce(&mut Outcome)) -> Outcome {
        let mut o = outcome(count);
        extra(&mut o);
        o
    }

    #[test]
    fn broadcast_rows_and_targets() {
        let mut results = Results::default();
        let (tether, peer) = (Impl::Tether.name(), Impl::FastWebSockets.name());
        results.broadcast.insert(
            (1000, tether),
            vec![
                run(4_000_000, |o| o.sent = 4000),
                run(3_000_000, |o| o.sent = 3000),
            ],
        );
        results
            .broadcast
            .insert((1000, peer), vec![run(1_000_000, |o| o.sent = 1000)]);
        results.broadcast.insert(
            (10_000, tether),
            vec![run(9_000_000, |o| {
                o.sent = 1000;
                o.lost = 1_000_000;
            })],
        );
        results
            .broadcast
            .insert((10_000, peer), vec![run(1_000_000, |o| o.sent = 100)]);
        assert_eq!(broadcast_counts(&results), [1000, 10_000]);
        let t = broadcast_summary(&results, 1000, tether).unwrap();
        assert_eq!((t.median, t.sent_rate, t.lost), (3_500_000.0, 3500.0, 0));
        let t = broadcast_summary(&results, 10_000, tether).unwrap();
        assert!((t.lost_share - 0.1).abs() < 1e-9);
        let mut md = String::new();
        targets(&mut md, &results, &EchoTable::new());
        assert!(md.contains("broadcast to 1,000 receivers | 3.50× (fastwebsockets) | yes |"));
        // 9× the peer, but messages were lost: not met.
        assert!(md.contains("9.00× (fastwebsockets), 1,000,000 messages lost | **no** |"));
    }

    #[test]
    fn compression_rows_and_targets() {
        let mut results = Results::default();
        let default = format!("tether level {}", Deflater::default_level());
        let with_ratio = |count: u64, wire: u64| {
            run(count, |o| {
                o.wire_bytes = wire;
                o.payload_bytes = 1000;
            })
        };
        for w in 0..COMPRESSION_WORKLOADS.len() {
            let runs = [
                (default.clone(), with_ratio(70, 400)),
                ("tether level 6".to_owned(), with_ratio(70, 400)),
                ("tether uncompressed".to_owned(), with_ratio(100, 1004)),
                ("node-ws".to_owned(), with_ratio(10, 403)),
                ("python-websockets".to_owned(), with_ratio(20, 403)),
            ];
            for (label, o) in runs {
                results.compression.insert((w, label), vec![o]);
            }
        }
        let mut md = String::new();
        targets(&mut md, &results, &EchoTable::new());
        assert!(md.contains("≥ 0.6× tether uncompressed, 10 conns × 1 KiB JSON | 0.70× | yes |"));
        assert!(md.contains("within 15% of level 6's | 0.400 vs 0.400 (+0.0%) | yes |"));
        assert!(md.contains(
            "Python websockets, 10 conns × 1 KiB JSON | 3.50× (python-websockets) | **no** |"
        ));
        let mut md = String::new();
        compression_section(&mut md, &results);
        assert!(md.contains("| python-websockets | 20 |"), "{md}");
        assert!(md.contains("| 0.403 | 0.20× | 1.00× |"), "{md}");
    }

    #[test]
    fn chart_needs_the_ceiling() {
        let mut echo = EchoTable::new();
        let s = Summary::of(&[outcome(100)]).unwrap();
        echo.insert((0, Impl::Tether.name()), s);
        assert!(echo_chart(&echo).is_none());
        echo.insert((0, Impl::Raw.name()), s);
        let svg = echo_chart(&echo).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("tether") && svg.ends_with("</svg>\n"));
    }
}
