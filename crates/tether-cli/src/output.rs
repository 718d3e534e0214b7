//! What `tether connect` prints: JSON events on stdout (`--json`), or received text on stdout
//! and dim status lines on stderr.
//!
//! When the interactive line editor runs, every line goes through its external printer (from
//! a thread of its own, so the async code never blocks on the terminal) and appears above the
//! line being typed.

use std::io::{IsTerminal as _, Write as _};
use std::sync::mpsc as std_mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Map, Value};
use tether::reconnect::ReconnectEvent;
use tether::{Error, Message};

/// A line for the printer thread, or a request to report once everything before it is out.
enum PrintJob {
    Line(String),
    Flush(std_mpsc::Sender<()>),
}

/// The line editor's printer thread, once installed.
static PRINTER: OnceLock<std_mpsc::Sender<PrintJob>> = OnceLock::new();

/// The terminal mode before the line editor changed it.
#[cfg(unix)]
static SAVED_TERMINAL: Mutex<Option<nix::sys::termios::Termios>> = Mutex::new(None);

/// Routes every output line through the line editor's external printer from now on.
pub(crate) fn install_printer<P>(mut printer: P)
where
    P: rustyline::ExternalPrinter + Send + 'static,
{
    let (tx, rx) = std_mpsc::channel::<PrintJob>();
    if PRINTER.set(tx).is_err() {
        return;
    }
    std::thread::spawn(move || {
        for job in rx {
            match job {
                PrintJob::Line(mut line) => {
                    line.push('\n');
                    if printer.print(line.clone()).is_err() {
                        // The editor is gone: write directly.
                        let mut out = std::io::stdout().lock();
                        let _ = out.write_all(line.as_bytes());
                        let _ = out.flush();
                    }
                }
                PrintJob::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
    });
}

/// Remembers the terminal's mode, to restore it if we exit while the line editor has it in
/// raw mode.
pub(crate) fn save_terminal() {
    #[cfg(unix)]
    if let Ok(mode) = nix::sys::termios::tcgetattr(std::io::stdin()) {
        *SAVED_TERMINAL.lock().unwrap_or_else(|e| e.into_inner()) = Some(mode);
    }
}

/// Writes out what is pending, restores the terminal and exits with `code`.
pub(crate) fn exit(code: i32) -> ! {
    if let Some(printer) = PRINTER.get() {
        let (tx, rx) = std_mpsc::channel();
        if printer.send(PrintJob::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(1));
        }
        // The editor draws the last lines handed to it from its own thread, a moment later;
        // it offers no way to wait for that.
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::io::stdout().flush();
    #[cfg(unix)]
    {
        use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
        let saved = SAVED_TERMINAL.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mode) = saved.as_ref() {
            // Still in the editor's raw mode (it is waiting for a line): restore it.
            let raw = tcgetattr(std::io::stdin())
                .is_ok_and(|now| !now.local_flags.contains(LocalFlags::ICANON));
            if raw && mode.local_flags.contains(LocalFlags::ICANON) {
                let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, mode);
                // Erase the prompt and whatever was typed on it.
                let _ = std::io::stdout().write_all(b"\r\x1b[K");
                let _ = std::io::stdout().flush();
            }
        }
    }
    std::process::exit(code);
}

/// Prints the events of one `tether connect` run.
#[derive(Debug)]
pub(crate) struct Output {
    json: bool,
    dim: bool,
    /// Status lines go through the line editor's printer only when stderr is the terminal.
    stderr_tty: bool,
}

impl Output {
    /// JSON events on stdout with `json`; otherwise text on stdout and status on stderr, dim
    /// when stderr is a terminal (and `NO_COLOR` is not set).
    pub(crate) fn new(json: bool) -> Self {
        let stderr_tty = std::io::stderr().is_terminal();
        let dim = stderr_tty && std::env::var_os("NO_COLOR").is_none();
        Self {
            json,
            dim,
            stderr_tty,
        }
    }

    fn stdout_line(&self, line: String) {
        if let Some(printer) = PRINTER.get() {
            if printer.send(PrintJob::Line(line.clone())).is_ok() {
                return;
            }
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    fn stderr_line(&self, line: &str) {
        let line = if self.dim {
            format!("\x1b[2m{line}\x1b[0m")
        } else {
            line.to_owned()
        };
        if let Some(printer) = PRINTER.get().filter(|_| self.stderr_tty) {
            if printer.send(PrintJob::Line(line.clone())).is_ok() {
                return;
            }
        }
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{line}");
    }

    /// One JSON event, in `--json` mode.
    fn event(&self, value: Value) {
        if self.json {
            self.stdout_line(value.to_string());
        }
    }

    /// A human-readable status line, without `--json`.
    fn status(&self, text: &str) {
        if !self.json {
            self.stderr_line(text);
        }
    }

    /// Prints a reconnect loop event.
    pub(crate) fn reconnect_event(&self, event: &ReconnectEvent<'_>) {
        match event {
            ReconnectEvent::Connecting { attempt, url } => self.connecting(*attempt, url),
            ReconnectEvent::Open {
                attempt,
                subprotocol,
            } => self.open(*attempt, *subprotocol),
            ReconnectEvent::Retry {
                attempt,
                delay,
                error,
            } => self.retry(*attempt, *delay, error),
            ReconnectEvent::ShortLived { uptime, delay } => self.short_lived(*uptime, *delay),
            ReconnectEvent::Closed {
                uptime,
                code,
                delay,
            } => self.after_close(*uptime, *code, *delay),
            ReconnectEvent::Fatal { attempt, error } => self.fatal(*attempt, error),
            _ => {}
        }
    }

    /// An attempt starts.
    pub(crate) fn connecting(&self, attempt: u32, url: &str) {
        let url = redact(url);
        self.event(json!({"event": "connecting", "attempt": attempt, "url": url}));
        if attempt > 1 {
            self.status(&format!("connecting to {url} (attempt {attempt})"));
        } else {
            self.status(&format!("connecting to {url}"));
        }
    }

    /// A resumable session is carried by a new connection.
    pub(crate) fn session_open(&self, attempt: u32, resumed: bool, replayed: u64) {
        self.event(json!({
            "event": "open",
            "attempt": attempt,
            "subprotocol": tether::session::SUBPROTOCOL,
            "resumed": resumed,
            "replayed": replayed,
        }));
        if resumed {
            self.status(&format!("session resumed ({replayed} messages sent again)"));
        } else {
            self.status("connected (new session)");
        }
    }

    /// The server could not resume the session.
    pub(crate) fn session_lost(&self, reason: &str, unacknowledged: usize) {
        self.event(json!({"event": "session_lost", "reason": reason}));
        self.status(&format!(
            "session lost ({reason}); {unacknowledged} lines were not acknowledged"
        ));
    }

    /// An attempt succeeded.
    pub(crate) fn open(&self, attempt: u32, subprotocol: Option<&str>) {
        self.event(json!({"event": "open", "attempt": attempt, "subprotocol": subprotocol}));
        match subprotocol {
            Some(p) => self.status(&format!("connected (subprotocol {p})")),
            None => self.status("connected"),
        }
    }

    /// A message arrived.
    pub(crate) fn message(&self, msg: &Message) {
        if self.json {
            let (kind, data) = match msg {
                Message::Text(t) => ("text", t.to_string()),
                Message::Binary(b) => (
                    "binary",
                    base64::engine::general_purpose::STANDARD.encode(b),
                ),
            };
            self.event(json!({"event": "message", "kind": kind, "data": data}));
            return;
        }
        match msg {
            Message::Text(t) => self.stdout_line(t.to_string()),
            Message::Binary(b) => self.stdout_line(binary_summary(b)),
        }
    }

    /// A connection ended. `code` is `None` when the peer's Close frame had no status code.
    pub(crate) fn closed(&self, code: Option<u16>, reason: &str, error: Option<&Error>) {
        let mut event = Map::new();
        event.insert("event".into(), "closed".into());
        event.insert("code".into(), code.into());
        event.insert("reason".into(), reason.into());
        if let Some(e) = error {
            event.insert("error".into(), error_json(e));
        }
        self.event(Value::Object(event));
        let mut text = match code {
            Some(c) => format!("closed {c}"),
            None => "closed (no status code)".to_owned(),
        };
        if !reason.is_empty() {
            text.push_str(&format!(" ({reason})"));
        }
        if let Some(e) = error {
            text.push_str(&format!(": {}", describe(e)));
        }
        self.status(&text);
    }

    /// A failed attempt will be retried after `delay`.
    pub(crate) fn retry(&self, attempt: u32, delay: Duration, error: &Error) {
        self.event(json!({
            "event": "retry",
            "attempt": attempt,
            "delay": seconds(delay),
            "error": error_json(error),
        }));
        self.status(&format!(
            "retrying in {:.1} s because {}",
            delay.as_secs_f64(),
            short_reason(error)
        ));
    }

    /// The last connection closed before the minimum uptime: the next attempt waits `delay`.
    /// Reported as a `retry` with attempt 0 (no attempt failed; the connection was too short).
    pub(crate) fn short_lived(&self, uptime: Duration, delay: Duration) {
        let message = format!(
            "the connection closed after {:.3} s, before the minimum uptime",
            uptime.as_secs_f64()
        );
        self.event(json!({
            "event": "retry",
            "attempt": 0,
            "delay": seconds(delay),
            "uptime": seconds(uptime),
            "error": {"kind": "closed", "message": message},
        }));
        self.status(&format!(
            "retrying in {:.1} s because {message}",
            delay.as_secs_f64()
        ));
    }

    /// The last connection ended; the next attempt waits `delay` (the spread, or the backoff
    /// after 1013). Reported as a `retry` with attempt 0, as [`short_lived`](Self::short_lived).
    pub(crate) fn after_close(&self, uptime: Duration, code: Option<u16>, delay: Duration) {
        let message = match code {
            Some(1013) => "the server asked to try again later (1013)".to_owned(),
            Some(code) => format!("the connection closed ({code}); spreading the reconnect"),
            None => "the connection ended; spreading the reconnect".to_owned(),
        };
        self.event(json!({
            "event": "retry",
            "attempt": 0,
            "delay": seconds(delay),
            "uptime": seconds(uptime),
            "code": code,
            "error": {"kind": "closed", "message": message},
        }));
        self.status(&format!(
            "reconnecting in {:.1} s: {message}",
            delay.as_secs_f64()
        ));
    }

    /// The loop stops: a fatal error, or the attempt limit.
    pub(crate) fn fatal(&self, attempt: u32, error: &Error) {
        self.event(json!({"event": "fatal", "attempt": attempt, "error": error_json(error)}));
        // A fatal error is the one status line shown however the output is configured: the
        // run is about to fail and the user must learn why.
        if self.json {
            return;
        }
        self.stderr_line(&format!("fatal: {}", describe(error)));
    }

    /// Something the user should know that is not an event of the contract.
    pub(crate) fn warning(&self, message: &str) {
        self.event(json!({"event": "warning", "message": message}));
        self.status(&format!("warning: {message}"));
    }
}

/// Seconds as a float, rounded to the millisecond.
fn seconds(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// The URL with its password, if any, replaced by `***`.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// `<binary 1234 bytes: 0a1b2c…>`: the size and the first 16 bytes in hex.
pub(crate) fn binary_summary(data: &[u8]) -> String {
    let shown: String = data.iter().take(16).map(|b| format!("{b:02x}")).collect();
    let more = if data.len() > 16 { "…" } else { "" };
    let unit = if data.len() == 1 { "byte" } else { "bytes" };
    format!("<binary {} {unit}: {shown}{more}>", data.len())
}

/// The `error` object of an event: kind, status (for HTTP status errors), message.
pub(crate) fn error_json(error: &Error) -> Value {
    let mut obj = Map::new();
    obj.insert("kind".into(), error.kind().as_str().into());
    if let Some(status) = error.status() {
        obj.insert("status".into(), status.into());
    }
    obj.insert("message".into(), describe(error).into());
    Value::Object(obj)
}

/// The error's message with what the server said that explains it: `WWW-Authenticate`,
/// `Retry-After`, `Location`.
pub(crate) fn describe(error: &Error) -> String {
    let mut text = error.to_string();
    if let Some(response) = error.response() {
        let context: Vec<String> = ["WWW-Authenticate", "Retry-After", "Location"]
            .iter()
            .filter_map(|name| {
                response
                    .headers
                    .get_str(name)
                    .map(|value| format!("{name}: {value}"))
            })
            .collect();
        if !context.is_empty() {
            text.push_str(&format!(" ({})", context.join(", ")));
        }
    }
    text
}

/// A short "because …" for a retried error: `HTTP 503 Service Unavailable`, `connection
/// refused`, `timed out during TCP connect`.
pub(crate) fn short_reason(error: &Error) -> String {
    let error = match error {
        Error::AttemptsExhausted { last, .. } => last,
        e => e,
    };
    match error {
        Error::Status(r) => {
            let mut text = format!("HTTP {} {}", r.status, r.reason);
            if let Some(after) = r.headers.get_str("retry-after") {
                text.push_str(&format!(" (Retry-After: {after})"));
            }
            text
        }
        Error::Io(e) => {
            use std::io::ErrorKind as K;
            match e.kind() {
                K::ConnectionRefused
                | K::ConnectionReset
                | K::ConnectionAborted
                | K::TimedOut
                | K::AddrNotAvailable
                | K::NotConnected
                | K::BrokenPipe
                | K::UnexpectedEof => e.kind().to_string(),
                _ => e.to_string(),
            }
        }
        e => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_summaries() {
        assert_eq!(binary_summary(&[0x0a, 0x1b]), "<binary 2 bytes: 0a1b>");
        assert_eq!(binary_summary(&[7]), "<binary 1 byte: 07>");
        let long = vec![0xffu8; 1234];
        assert_eq!(
            binary_summary(&long),
            format!("<binary 1234 bytes: {}…>", "ff".repeat(16))
        );
    }

    #[test]
    fn passwords_are_not_printed() {
        assert_eq!(redact("ws://u:secret@h:1/x"), "ws://u:***@h:1/x");
        assert_eq!(redact("ws://h:1/x"), "ws://h:1/x");
    }

    #[test]
    fn io_errors_read_well() {
        let e = Error::Io(std::io::ErrorKind::ConnectionRefused.into());
        assert_eq!(short_reason(&e), "connection refused");
        let json = error_json(&e);
        assert_eq!(json["kind"], "io");
        assert!(json.get("status").is_none());
        assert_eq!(seconds(Duration::from_micros(1_234_567)), 1.235);
    }
}
