//! `tether demo`: the reconnect policy at work, offline, in one process.
//!
//! A server in this process misbehaves on schedule: at first nothing listens (connection
//! refused), then it answers 503 with `Retry-After`, then accepts and exchanges messages
//! before restarting, then accepts and drops the connection at once, then rejects the
//! credentials with 401. A client driven by the library's reconnecting stream goes through it
//! all, and the `on_event` callback prints each step on a timeline.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tether::reconnect::{Backoff, Policy, ReconnectEvent};
use tether::{
    ClientBuilder, Error, HttpResponse, Message, PeerClose, Server, ServerConfig, WebSocket,
};
use tokio::time::Instant;

use crate::output::short_reason;
use crate::{EXIT_FATAL, EXIT_OK};

/// How long nothing listens on the demo's port at first.
const SILENT_START: Duration = Duration::from_secs(1);
/// The `Retry-After` of the demo's 503, in seconds.
const RETRY_AFTER: u64 = 2;
/// The minimum uptime of the demo's policy.
const MIN_UPTIME: Duration = Duration::from_millis(500);
/// Messages the client sends on the good connection.
const MESSAGES: usize = 3;
/// The challenge of the demo's 401.
const CHALLENGE: &str = "Basic realm=\"tether demo\"";
/// If the demo has not ended by then, something is wrong.
const DEADLINE: Duration = Duration::from_secs(40);

/// The shortened backoff of the demo (the default is 5 s, 3.1 s, ×1.618, 90 s).
fn demo_backoff() -> Backoff {
    Backoff {
        initial: Duration::from_millis(500),
        min: Duration::from_millis(500),
        factor: 1.618,
        max: Duration::from_secs(3),
        ..Backoff::default()
    }
}

/// Prints timestamped lines, `+1.234s  text`, on stdout.
#[derive(Debug)]
struct Timeline {
    start: Instant,
}

impl Timeline {
    fn line(&self, text: &str) {
        use std::io::Write as _;
        let t = self.start.elapsed().as_secs_f64();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "+{t:.3}s  {text}");
        let _ = out.flush();
    }

    fn server(&self, text: &str) {
        self.line(&format!("    server: {text}"));
    }

    /// A line that explains the one above it, indented under its text and wrapped.
    fn note(&self, text: &str) {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        for line in wrap(text, 80) {
            let _ = writeln!(out, "           {line}");
        }
        let _ = out.flush();
    }

    fn event(&self, event: &ReconnectEvent<'_>) {
        match event {
            ReconnectEvent::Connecting { attempt, url } => {
                self.line(&format!("connecting to {url} (attempt {attempt})"))
            }
            ReconnectEvent::Open { attempt, .. } => {
                self.line(&format!("connected (attempt {attempt})"));
                if *attempt > 1 {
                    self.note("a success resets the attempt count: the next failure is attempt 1");
                }
            }
            ReconnectEvent::Retry {
                delay,
                error,
                attempt,
            } => {
                self.line(&format!(
                    "retrying in {:.1} s: {}",
                    delay.as_secs_f64(),
                    reason(error)
                ));
                self.note(&why_retried(error, *attempt));
            }
            ReconnectEvent::ShortLived { uptime, delay } => {
                self.line(&format!(
                    "retrying in {:.1} s: the connection lasted only {:.3} s",
                    delay.as_secs_f64(),
                    uptime.as_secs_f64(),
                ));
                self.note(&format!(
                    "shorter than the minimum uptime ({:.1} s here), so it counts as a failure: \
                     the backoff goes on instead of starting over",
                    MIN_UPTIME.as_secs_f64()
                ));
            }
            ReconnectEvent::Closed { delay, code, .. } => {
                self.line(&format!(
                    "reconnecting in {:.2} s: the connection ended ({})",
                    delay.as_secs_f64(),
                    code.map_or("no close code".to_owned(), |c| format!("close {c}")),
                ));
                self.note(
                    "a random wait up to the reconnect delay (1 s by default), so that the \
                     clients of a restarting server do not all come back in the same moment",
                );
            }
            ReconnectEvent::Fatal { attempt, error } => {
                self.line(&format!(
                    "fatal (attempt {attempt}): {}",
                    crate::output::describe(error)
                ));
                self.note(
                    "401 is not retried: waiting does not fix credentials. The stream of \
                     connections ends with this error, and the client says why.",
                );
            }
            _ => {}
        }
    }
}

/// Splits `text` into lines of at most `width` characters, at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// What went wrong, in a few words: `HTTP 503 Service Unavailable`, `connection refused`.
fn reason(error: &Error) -> String {
    match error {
        Error::Status(r) => format!("HTTP {} {}", r.status, r.reason),
        e => short_reason(e),
    }
}

/// Why the policy retries this error, in words.
fn why_retried(error: &Error, attempt: u32) -> String {
    match error {
        Error::Io(_) if attempt == 1 => "nothing is listening yet; network errors are retried, \
             and the first wait is random so that many clients do not come back at once"
            .to_owned(),
        Error::Io(_) => "still nothing listening; each wait is longer than the last".to_owned(),
        Error::Status(r) => match r.headers.get_str("retry-after") {
            Some(after) => format!(
                "{} is retried, and the server's Retry-After: {after} is honoured as the \
                 least wait",
                r.status
            ),
            None => format!("{} is retried", r.status),
        },
        _ => "retryable".to_owned(),
    }
}

/// Runs the demo; returns the exit status.
pub(crate) async fn run() -> i32 {
    let timeline = Arc::new(Timeline {
        start: Instant::now(),
    });
    // Bind a socket without listening on it for a while: connections are refused, and no
    // other program can take the port in the meantime.
    let bound = tokio::net::TcpSocket::new_v4().and_then(|socket| {
        socket.bind(([127, 0, 0, 1], 0).into())?;
        let port = socket.local_addr()?.port();
        Ok((socket, port))
    });
    let (socket, port) = match bound {
        Ok(bound) => bound,
        Err(e) => {
            eprintln!("tether demo: cannot find a free port: {e}");
            return EXIT_FATAL;
        }
    };
    let url = format!("ws://127.0.0.1:{port}/");
    let backoff = demo_backoff();
    println!(
        "tether demo: a client that stays connected, against a server in this process\n\
         that misbehaves on schedule at {url}. The server will:\n  \
         1. not listen for the first {} s (connections are refused),\n  \
         2. answer 503 Service Unavailable with Retry-After: {RETRY_AFTER},\n  \
         3. accept, exchange {MESSAGES} messages, and restart (close with 1012),\n  \
         4. accept and drop the connection at once,\n  \
         5. answer 401 Unauthorized with WWW-Authenticate.\n\
         Waits are shortened for the demo: the first retry waits a random time up to {:.1} s,\n\
         then {:.1} s growing x{} up to {:.0} s; minimum uptime {:.1} s. The defaults are:\n\
         random up to 5 s, then 3.1 s growing x1.618 up to 90 s; minimum uptime 5 s.\n",
        SILENT_START.as_secs(),
        backoff.initial.as_secs_f64(),
        backoff.min.as_secs_f64(),
        backoff.factor,
        backoff.max.as_secs_f64(),
        MIN_UPTIME.as_secs_f64(),
    );
    tokio::spawn(scripted_server(socket, port, timeline.clone()));

    let events = timeline.clone();
    let policy = Policy::default()
        .backoff(backoff)
        .min_uptime(MIN_UPTIME)
        .max_attempts(Some(20));
    let mut connections = ClientBuilder::new(url.as_str())
        .open_timeout(Duration::from_secs(5))
        .reconnecting()
        .policy(policy)
        .on_event(move |event| events.event(event))
        .stream();
    let client = async {
        loop {
            match connections.next().await {
                Some(Ok(mut ws)) => converse(&mut ws, &timeline).await,
                Some(Err(error)) => return error.status() == Some(401),
                None => return false,
            }
        }
    };
    let ended_as_scripted = match tokio::time::timeout(DEADLINE, client).await {
        Ok(ok) => ok,
        Err(_) => {
            timeline.line("the demo took too long; stopping");
            false
        }
    };
    println!();
    println!("{SUMMARY}");
    if ended_as_scripted {
        EXIT_OK
    } else {
        EXIT_FATAL
    }
}

const SUMMARY: &str = "\
What happened: the client retried what waiting can fix (connection refused, HTTP 503) and
stopped at what it cannot (HTTP 401), saying why, with the server's WWW-Authenticate.

The policy, by default: network errors, timeouts, a connection closed during the handshake
and HTTP 500, 502, 503 and 504 are retried; other HTTP statuses (401, 403, 404, 429, ...),
invalid answers, bad redirects and certificate errors are fatal. Waits follow an exponential
backoff: the first is random in [0, 5 s], then 3.1 s, growing x1.618 per attempt up to 90 s;
a server's Retry-After is honoured as the least wait (up to 300 s). A connection must stay
open 5 s (the minimum uptime) before the backoff starts over, so a server that accepts and
drops at once is retried with growing waits, not in a hot loop. There is no attempt limit.

To change it: tether::reconnect::Policy in code (backoff, min_uptime, max_attempts,
retry_on_status, fatal_on_status, on_error), or `tether connect --reconnect` with
--retry-on, --fatal-on, --backoff-initial, --backoff-min, --backoff-factor, --backoff-max,
--min-uptime and --max-attempts.";

/// The client's side of one connection: send a few messages, print what arrives, until the
/// connection ends.
async fn converse(ws: &mut WebSocket, timeline: &Timeline) {
    let opened = Instant::now();
    let mut sent = 0;
    let mut tick = tokio::time::interval_at(
        opened + Duration::from_millis(200),
        Duration::from_millis(300),
    );
    loop {
        tokio::select! {
            received = ws.recv() => match received {
                Some(Ok(Message::Text(text))) => timeline.line(&format!("received {text:?}")),
                Some(Ok(Message::Binary(data))) => {
                    timeline.line(&format!("received {} bytes", data.len()))
                }
                Some(Err(e)) => timeline.line(&format!("connection error: {e}")),
                None => break,
            },
            _ = tick.tick(), if sent < MESSAGES => {
                sent += 1;
                let text = format!("hello {sent}");
                timeline.line(&format!("sending {text:?}"));
                if let Err(e) = ws.send(text.as_str()).await {
                    timeline.line(&format!("could not send: {e}"));
                }
            }
        }
    }
    let uptime = opened.elapsed();
    let how = match ws.peer_close() {
        PeerClose::Frame(frame) if !frame.reason.is_empty() => format!(
            "closed by the server with {} ({})",
            frame.code, frame.reason
        ),
        PeerClose::Frame(frame) => format!("closed by the server with {}", frame.code),
        PeerClose::NoStatus => "closed by the server".to_owned(),
        PeerClose::NotReceived => {
            "dropped by the server without a closing handshake (1006)".to_owned()
        }
    };
    timeline.line(&format!(
        "connection {how} after {:.3} s",
        uptime.as_secs_f64()
    ));
    if uptime >= MIN_UPTIME {
        timeline.note(
            "it stayed up longer than the minimum uptime, so the backoff starts over and the \
             client reconnects at once",
        );
    }
}

/// The misbehaving server: silent at first, then a scripted answer per request.
async fn scripted_server(socket: tokio::net::TcpSocket, port: u16, timeline: Arc<Timeline>) {
    tokio::time::sleep(SILENT_START).await;
    let requests = Arc::new(AtomicUsize::new(0));
    let hook_timeline = timeline.clone();
    let config = ServerConfig::default().process_request(move |_req| {
        match requests.fetch_add(1, Ordering::SeqCst) {
            0 => {
                hook_timeline.server(&format!(
                    "overloaded: answering 503 Service Unavailable with Retry-After: {RETRY_AFTER}"
                ));
                Some(
                    HttpResponse::text(503, "overloaded, come back later\n")
                        .header("Retry-After", RETRY_AFTER.to_string()),
                )
            }
            1 | 2 => None,
            _ => {
                hook_timeline.server(&format!(
                    "answering 401 Unauthorized with WWW-Authenticate: {CHALLENGE}"
                ));
                Some(
                    HttpResponse::text(401, "authentication required\n")
                        .header("WWW-Authenticate", CHALLENGE),
                )
            }
        }
    });
    let server = match socket.listen(1024) {
        Ok(listener) => Server::from_listener(listener, config),
        Err(e) => {
            timeline.server(&format!("cannot listen on port {port}: {e}"));
            return;
        }
    };
    timeline.server(&format!("now listening on 127.0.0.1:{port}"));
    let accepted = Arc::new(AtomicUsize::new(0));
    let _ = server
        .serve(move |mut ws, _request| {
            let timeline = timeline.clone();
            let n = accepted.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    timeline.server("accepted the upgrade; echoing messages");
                    let mut echoed = 0;
                    while let Some(Ok(msg)) = ws.recv().await {
                        let reply = format!("echo: {}", msg.as_text().unwrap_or("(binary)"));
                        if ws.send(reply).await.is_err() {
                            // Closing: keep receiving to finish the handshake.
                            continue;
                        }
                        echoed += 1;
                        if echoed == MESSAGES {
                            timeline.server("restarting: closing with 1012 (service restart)");
                            let _ = ws.close(1012, "service restart").await;
                            return;
                        }
                    }
                } else {
                    timeline.server(
                        "accepted, then dropping the TCP connection (no closing handshake)",
                    );
                    drop(ws);
                }
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_wrap_at_spaces() {
        assert_eq!(wrap("aa bb cc", 5), ["aa bb", "cc"]);
        assert_eq!(wrap("toolongword x", 4), ["toolongword", "x"]);
        assert!(wrap("", 10).is_empty());
    }
}
