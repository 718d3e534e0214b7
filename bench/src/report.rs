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
use crate::run::{Results, Settings, WORKLOADS};
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

fn memory_medians(results: &Results) -> BTreeMap<&'static str, (f64, f64, f64, f64, f64)> {
    results
        .memory
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
    ]);
    let versions: Vec<String> = versions.iter().map(|(n, v)| format!("{n} {v}")).collect();
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
    let mut row = |target: String, measured: Option<(f64, String)>, goal: &dyn Fn(f64) -> bool| {
        let (text, met) = match measured {
            Some((v, text)) if v.is_finite() => (text, if goal(v) { "yes" } else { "**no**" }),
            _ => ("not measured".to_owned(), "—"),
        };
        let _ = writeln!(md, "| {target} | {text} | {met} |");
    };
    for w in [0, 1] {
        let v = echo
            .get(&(w, tether))
            .zip(echo.get(&(w, raw)))
            .map(|(t, r)| t.median / r.median);
        row(
            format!("≥ 0.95× raw TCP echo, {}", WORKLOADS[w].label),
            v.map(|v| (v, format!("{v:.2}×"))),
            &|v| v >= 0.95,
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
        vs_peer(2),
        &|v| v >= 5.0,
    );
    for w in [3, 4] {
        row(
            format!("≥ 1.1× the best peer, {}", WORKLOADS[w].label),
            vs_peer(w),
            &|v| v >= 1.1,
        );
    }
    let mem = memory_medians(results);
    row(
        "≤ 3 KiB resident per idle connection".to_owned(),
        mem.get(tether).map(|m| (m.0, bytes(m.0))),
        &|v| v <= 3.0 * 1024.0,
    );
    for r in results
        .micro
        .iter()
        .filter(|r| r.group == "mask" && r.function == "apply_mask")
    {
        row(
            format!("masking ≥ 10 GB/s, {}", r.input),
            r.bytes_per_sec()
                .map(|b| (b, format!("{:.1} GB/s", b / 1e9))),
            &|v| v >= 10e9,
        );
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
        for kind in Impl::SERVERS {
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
            let _ = writeln!(
                md,
                "| {} | {} | {}{} | {}–{} | {} | {} | {} |",
                workload.label,
                kind.name(),
                thousands(s.median),
                warn(s),
                thousands(s.min),
                thousands(s.max),
                micros(s.p50_ns),
                micros(s.p99_ns),
                ratio(base.map(|b| s.median / b.median)),
            );
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
    let mem = memory_medians(results);
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
    let servers: Vec<Impl> = Impl::SERVERS
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
