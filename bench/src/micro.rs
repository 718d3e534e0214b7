//! Runs the criterion micro-benchmarks (`benches/micro.rs`) and reads their results back from
//! criterion's output directory for the report.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

/// What the orchestrator does about the micro-benchmarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MicroMode {
    /// Run `cargo bench -p bench --bench micro`, then summarize.
    Run,
    /// Summarize results of an earlier `cargo bench -p bench`.
    Summary,
    Skip,
}

/// The criterion groups of `benches/micro.rs`, in report order.
pub(crate) const GROUPS: [&str; 4] = ["mask", "utf8", "frame_encode", "frame_decode"];

/// Throughput unit of one benchmark, per iteration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Per {
    Bytes(u64),
    Elements(u64),
}

/// One micro-benchmark's median.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct MicroResult {
    pub(crate) group: String,
    pub(crate) function: String,
    pub(crate) input: String,
    pub(crate) median_ns: f64,
    pub(crate) per: Option<Per>,
}

impl MicroResult {
    /// Bytes per second, for byte throughputs.
    pub(crate) fn bytes_per_sec(&self) -> Option<f64> {
        match self.per {
            Some(Per::Bytes(b)) if self.median_ns > 0.0 => Some(b as f64 / self.median_ns * 1e9),
            _ => None,
        }
    }

    /// Elements (messages) per second, for element throughputs.
    pub(crate) fn elements_per_sec(&self) -> Option<f64> {
        match self.per {
            Some(Per::Elements(n)) if self.median_ns > 0.0 => Some(n as f64 / self.median_ns * 1e9),
            _ => None,
        }
    }
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

const MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");

/// Where criterion writes: `$CRITERION_HOME`, else `criterion/` in the target directory
/// this binary was built in (criterion's own default).
fn criterion_dir() -> io::Result<PathBuf> {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return Ok(PathBuf::from(home));
    }
    let exe = crate::proc::own_exe()?;
    // <target>/release/bench
    let target = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| io::Error::other("cannot find the target directory"))?;
    Ok(target.join("criterion"))
}

/// Builds the micro-benchmarks without running them, so that the compiler does not run
/// while something is being measured.
pub(crate) fn build() -> io::Result<()> {
    let status = Command::new(cargo())
        .args([
            "bench",
            "--manifest-path",
            MANIFEST,
            "-p",
            "bench",
            "--bench",
            "micro",
        ])
        .arg("--no-run")
        .status()?;
    if !status.success() {
        return Err(io::Error::other("building the micro-benchmarks failed"));
    }
    Ok(())
}

/// Runs (per `mode`) and reads the micro-benchmarks.
pub(crate) fn collect(mode: MicroMode, quick: bool) -> io::Result<Vec<MicroResult>> {
    let dir = criterion_dir()?;
    let since = match mode {
        MicroMode::Skip => return Ok(Vec::new()),
        MicroMode::Summary => None,
        MicroMode::Run => {
            let started = SystemTime::now();
            let timing: &[&str] = if quick {
                &[
                    "--warm-up-time",
                    "0.3",
                    "--measurement-time",
                    "0.7",
                    "--sample-size",
                    "10",
                ]
            } else {
                &["--warm-up-time", "1", "--measurement-time", "3"]
            };
            eprintln!("micro-benchmarks: cargo bench -p bench --bench micro");
            let status = Command::new(cargo())
                .args([
                    "bench",
                    "--manifest-path",
                    MANIFEST,
                    "-p",
                    "bench",
                    "--bench",
                    "micro",
                ])
                .arg("--")
                .args(timing)
                .env("CRITERION_HOME", &dir)
                .status()?;
            if !status.success() {
                return Err(io::Error::other("cargo bench failed"));
            }
            Some(started)
        }
    };
    let mut results = Vec::new();
    for group in GROUPS {
        read_dir(&dir.join(group), since, &mut results)?;
    }
    results.sort_by(|a, b| {
        let key = |r: &MicroResult| {
            let group = GROUPS.iter().position(|g| *g == r.group);
            // UTF-8 inputs are grouped by kind of text first ("ascii 1 KiB").
            let kind = if r.group == "utf8" {
                r.input.split(' ').next().unwrap_or("").to_owned()
            } else {
                String::new()
            };
            (group, kind, size_in(&r.input), r.function.clone())
        };
        key(a).cmp(&key(b))
    });
    Ok(results)
}

/// The first size ("20 B", "64 KiB", "1 MiB") named in a benchmark's input label.
fn size_in(label: &str) -> u64 {
    let words: Vec<&str> = label.split_whitespace().collect();
    words
        .windows(2)
        .find_map(|w| {
            let n: u64 = w[0].parse().ok()?;
            match w[1] {
                "B" => Some(n),
                "KiB" => Some(n << 10),
                "MiB" => Some(n << 20),
                _ => None,
            }
        })
        .unwrap_or(0)
}

/// Collects every `new/benchmark.json` under `dir` (written after `since`, if given).
fn read_dir(dir: &Path, since: Option<SystemTime>, out: &mut Vec<MicroResult>) -> io::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry?.path();
        if !path.is_dir() {
            continue;
        }
        if path.file_name().is_some_and(|n| n == "new") {
            let meta = path.join("benchmark.json");
            let fresh = match (since, std::fs::metadata(&meta).and_then(|m| m.modified())) {
                (None, _) => true,
                (Some(t), Ok(m)) => m >= t,
                (Some(_), Err(_)) => false,
            };
            if fresh {
                if let Some(r) = read_one(&meta, &path.join("estimates.json")) {
                    out.push(r);
                }
            }
        } else if path
            .file_name()
            .is_some_and(|n| n != "base" && n != "report")
        {
            read_dir(&path, since, out)?;
        }
    }
    Ok(())
}

fn read_one(benchmark: &Path, estimates: &Path) -> Option<MicroResult> {
    let b: serde_json::Value = serde_json::from_slice(&std::fs::read(benchmark).ok()?).ok()?;
    let e: serde_json::Value = serde_json::from_slice(&std::fs::read(estimates).ok()?).ok()?;
    let per = b.get("throughput").and_then(|t| {
        if let Some(n) = t.get("Bytes").and_then(serde_json::Value::as_u64) {
            Some(Per::Bytes(n))
        } else {
            t.get("Elements")
                .and_then(serde_json::Value::as_u64)
                .map(Per::Elements)
        }
    });
    Some(MicroResult {
        group: b.get("group_id")?.as_str()?.to_owned(),
        function: b.get("function_id")?.as_str()?.to_owned(),
        input: b
            .get("value_str")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
            .to_owned(),
        median_ns: e.get("median")?.get("point_estimate")?.as_f64()?,
        per,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_from_labels() {
        assert_eq!(size_in("ascii 64 KiB"), 64 << 10);
        assert_eq!(size_in("1 MiB × 1"), 1 << 20);
        assert_eq!(size_in("20 B × 1000"), 20);
        assert_eq!(size_in("none"), 0);
    }

    #[test]
    fn rates() {
        let r = MicroResult {
            group: "mask".into(),
            function: "apply_mask".into(),
            input: "1 KiB".into(),
            median_ns: 100.0,
            per: Some(Per::Bytes(1000)),
        };
        assert_eq!(r.bytes_per_sec(), Some(1e10));
        assert_eq!(r.elements_per_sec(), None);
    }
}
