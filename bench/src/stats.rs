//! What the load processes count, and the one-line report they print for the orchestrator.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::hist::Histogram;

/// Where a measurement stands. Only what completes while `Measure` is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Warmup,
    Measure,
    Stop,
}

/// Counters shared by all tasks of one single-threaded load process.
pub(crate) struct Shared {
    pub(crate) phase: Cell<Phase>,
    count: Cell<u64>,
    errors: Cell<u64>,
    hist: RefCell<Histogram>,
    first_error: RefCell<Option<String>>,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            phase: Cell::new(Phase::Warmup),
            count: Cell::new(0),
            errors: Cell::new(0),
            hist: RefCell::new(Histogram::default()),
            first_error: RefCell::new(None),
        }
    }
}

impl Shared {
    /// True once the run is over and tasks should stop.
    pub(crate) fn stopped(&self) -> bool {
        self.phase.get() == Phase::Stop
    }

    /// One operation (an echoed message, a handshake) that started at `start` completed at
    /// `now`.
    pub(crate) fn complete(&self, start: Instant, now: Instant) {
        if self.phase.get() == Phase::Measure {
            self.count.set(self.count.get() + 1);
            let nanos =
                u64::try_from(now.saturating_duration_since(start).as_nanos()).unwrap_or(u64::MAX);
            self.hist.borrow_mut().record(nanos);
        }
    }

    /// An operation failed; errors are counted in every phase but `Stop`.
    pub(crate) fn error(&self, what: impl std::fmt::Display) {
        if self.stopped() {
            return;
        }
        self.errors.set(self.errors.get() + 1);
        let mut first = self.first_error.borrow_mut();
        if first.is_none() {
            *first = Some(what.to_string());
        }
    }

    /// Runs the warm-up, then the measurement, and returns the report line. The tasks must
    /// already be running.
    pub(crate) async fn measure(&self, warmup: Duration, duration: Duration) -> String {
        tokio::time::sleep(warmup).await;
        self.phase.set(Phase::Measure);
        let start = Instant::now();
        tokio::time::sleep(duration).await;
        self.phase.set(Phase::Stop);
        let secs = start.elapsed().as_secs_f64();
        self.report(secs)
    }

    fn report(&self, secs: f64) -> String {
        let hist = self.hist.borrow();
        let mut line = format!(
            "RESULT count={} secs={secs:.6} p50_ns={} p99_ns={} errors={}",
            self.count.get(),
            hist.quantile(0.50),
            hist.quantile(0.99),
            self.errors.get(),
        );
        if let Some(e) = self.first_error.borrow().as_deref() {
            let _ = write!(line, " first_error={}", e.replace(char::is_whitespace, "_"));
        }
        line
    }
}

/// A parsed `RESULT` line.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Outcome {
    pub(crate) count: u64,
    pub(crate) secs: f64,
    pub(crate) p50_ns: u64,
    pub(crate) p99_ns: u64,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    /// Broadcast: messages a receiver never got (gaps in the sequence numbers it saw).
    pub(crate) lost: u64,
    /// Broadcast: messages the sender sent.
    pub(crate) sent: u64,
    /// Compression: bytes read from the server's connections (frames, headers included).
    pub(crate) wire_bytes: u64,
    /// Compression: payload bytes of the messages those frames carried.
    pub(crate) payload_bytes: u64,
}

impl Outcome {
    pub(crate) fn parse(line: &str) -> Option<Self> {
        let rest = line.strip_prefix("RESULT ")?;
        let mut o = Self::default();
        for item in rest.split_whitespace() {
            let (k, v) = item.split_once('=')?;
            match k {
                "count" => o.count = v.parse().ok()?,
                "secs" => o.secs = v.parse().ok()?,
                "p50_ns" => o.p50_ns = v.parse().ok()?,
                "p99_ns" => o.p99_ns = v.parse().ok()?,
                "errors" => o.errors = v.parse().ok()?,
                "first_error" => o.first_error = Some(v.to_owned()),
                "lost" => o.lost = v.parse().ok()?,
                "sent" => o.sent = v.parse().ok()?,
                "wire_bytes" => o.wire_bytes = v.parse().ok()?,
                "payload_bytes" => o.payload_bytes = v.parse().ok()?,
                _ => {}
            }
        }
        Some(o)
    }

    /// Bytes on the wire per payload byte; `None` when nothing was counted.
    pub(crate) fn wire_ratio(&self) -> Option<f64> {
        (self.payload_bytes > 0).then(|| self.wire_bytes as f64 / self.payload_bytes as f64)
    }

    /// Operations per second.
    pub(crate) fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.count as f64 / self.secs
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_round_trips() {
        let s = Shared::default();
        let t = Instant::now();
        s.complete(t, t + Duration::from_micros(5)); // warm-up: not counted
        s.phase.set(Phase::Measure);
        s.complete(t, t + Duration::from_micros(10));
        s.error("connection reset");
        let o = Outcome::parse(&s.report(2.0)).unwrap();
        assert_eq!((o.count, o.errors), (1, 1));
        assert_eq!(o.first_error.as_deref(), Some("connection_reset"));
        assert!((o.p50_ns as f64 - 10_000.0).abs() < 400.0);
        assert!((o.rate() - 0.5).abs() < 1e-9);
        assert!(Outcome::parse("LISTENING 1").is_none());
        let line = format!(
            "{} lost=3 sent=9 wire_bytes=50 payload_bytes=100",
            s.report(1.0)
        );
        let o = Outcome::parse(&line).unwrap();
        assert_eq!((o.lost, o.sent), (3, 9));
        assert_eq!(o.wire_ratio(), Some(0.5));
    }
}
