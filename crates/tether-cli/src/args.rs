//! Command-line flags, their defaults and their validation.
//!
//! Everything that can be checked before connecting is checked here, so that a usage error
//! exits with status 2 before any connection attempt.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use url::Url;

use crate::input::QUEUE_LIMIT;

/// The `tether` command line.
#[derive(Debug, Parser)]
#[command(
    name = "tether",
    version,
    about = "A WebSocket client and server that stay connected",
    long_about = "A WebSocket client and server that stay connected.\n\n\
        Start with `tether demo` to see the reconnect policy at work, offline.",
    after_help = "Exit status: 0 success, 1 fatal connection error, 2 usage error."
)]
pub(crate) struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Connect to a WebSocket server: send standard input line by line, print what arrives.
    Connect(Box<ConnectArgs>),
    /// Run a WebSocket echo (or broadcast) server.
    Serve(ServeArgs),
    /// Show the reconnect policy at work against a misbehaving in-process server (offline,
    /// about 5 seconds).
    Demo,
}

const CONNECT_HELP: &str = "\
Input:
  Each line of standard input is sent as one text message (without the newline). Lines read
  while no connection is open are queued, in order, and sent after the next successful
  connection; the queue holds at most QUEUE_LIMIT lines, and when it is full the oldest line is
  dropped (with a `warning` event). End of input closes the connection with code 1000 and exits
  0 once the closing handshake is done (at most --close-timeout); before the Close, a ping round
  trip makes sure the server has read every line, and replies that arrive before the server's
  Close frame are printed. End of input while no connection is open waits for the next
  connection, delivers the queued lines, then closes it.
  When standard input and output are a terminal, a line editor with history is used (Ctrl-D
  ends the input; Ctrl-C closes the connection and exits 130).

Exit status:
  0  ended by end of input, or (without --reconnect) the server closed the connection
  1  a fatal connection error (for example HTTP 401), or --max-attempts exhausted
  2  usage error: bad flags, or a URL that is not ws:// or wss:// (nothing attempted)
  130  interrupted by Ctrl-C

Events (--json), one JSON object per line on standard output:
  {\"event\":\"connecting\",\"attempt\":1,\"url\":\"ws://127.0.0.1:8765/\"}
  {\"event\":\"open\",\"attempt\":1,\"subprotocol\":null}
  {\"event\":\"message\",\"kind\":\"text\",\"data\":\"hello\"}
  {\"event\":\"message\",\"kind\":\"binary\",\"data\":\"<base64>\"}
  {\"event\":\"closed\",\"code\":1006,\"reason\":\"\"}
  {\"event\":\"retry\",\"attempt\":1,\"delay\":3.1,\"error\":{\"kind\":\"status\",\"status\":503,\"message\":\"...\"}}
  {\"event\":\"fatal\",\"attempt\":1,\"error\":{\"kind\":\"status\",\"status\":401,\"message\":\"...\"}}
  {\"event\":\"warning\",\"message\":\"...\"}
  closed.code is null when the server's Close frame had no status code, 1006 when there was no
  closing handshake; an `error` object is added when an error ended the connection. The wait
  after an open connection ended (--reconnect-delay's random spread, the backoff after a close
  with 1013 or before --min-uptime) is reported as a `retry` with attempt 0, the wait in
  `delay`, the connection's `uptime`, the peer's close `code`, and error.kind \"closed\".";

/// Flags of `tether connect`. Times are in seconds and may be fractional.
#[derive(Debug, Args)]
#[command(after_long_help = CONNECT_HELP.replace("QUEUE_LIMIT", &QUEUE_LIMIT.to_string()))]
pub(crate) struct ConnectArgs {
    /// The server's URL: ws://HOST[:PORT]/PATH or wss://… (user:password@ sends Basic auth).
    #[arg(value_parser = parse_ws_url)]
    pub(crate) url: Url,

    /// Keep reconnecting: retry failed attempts the policy calls retryable; after an open
    /// connection ends for any reason other than end of input, connect again.
    #[arg(long)]
    pub(crate) reconnect: bool,

    /// A resumable session (implies --reconnect for failed connections): lines are delivered
    /// exactly once and in order across reconnects, and so are received messages. A session
    /// the server cannot resume is a `session_lost` event and exit 1, unless --reconnect is
    /// also given (then a new session starts).
    #[arg(long)]
    pub(crate) resume: bool,

    /// Print one JSON object per line on stdout for every event; without it, print received
    /// text as lines and human-readable status on stderr.
    #[arg(long)]
    pub(crate) json: bool,

    /// Extra request header, sent on every attempt; repeatable.
    #[arg(short = 'H', long = "header", value_name = "'Name: value'", value_parser = parse_header)]
    pub(crate) headers: Vec<(String, String)>,

    /// Offer a subprotocol; repeatable.
    #[arg(long = "subprotocol", value_name = "NAME")]
    pub(crate) subprotocols: Vec<String>,

    /// Limit for TCP + TLS + proxy + HTTP upgrade of one attempt.
    #[arg(long, value_name = "S", default_value = "10", value_parser = parse_secs)]
    pub(crate) open_timeout: Duration,

    /// Keepalive ping period; 0 disables keepalive.
    #[arg(long, value_name = "S", default_value = "20", value_parser = parse_secs)]
    pub(crate) ping_interval: Duration,

    /// A ping unanswered this long means the connection is dead; 0 waits forever.
    #[arg(long, value_name = "S", default_value = "20", value_parser = parse_secs)]
    pub(crate) ping_timeout: Duration,

    /// How long to wait for the peer during the closing handshake.
    #[arg(long, value_name = "S", default_value = "10", value_parser = parse_secs)]
    pub(crate) close_timeout: Duration,

    /// The first retry waits a random time in [0, S].
    #[arg(long, value_name = "S", default_value = "5", value_parser = parse_secs)]
    pub(crate) backoff_initial: Duration,

    /// The second retry waits S.
    #[arg(long, value_name = "S", default_value = "3.1", value_parser = parse_secs)]
    pub(crate) backoff_min: Duration,

    /// Each later wait is the previous times F (at least 1) …
    #[arg(long, value_name = "F", default_value = "1.618", value_parser = parse_factor)]
    pub(crate) backoff_factor: f64,

    /// … capped at S.
    #[arg(long, value_name = "S", default_value = "90", value_parser = parse_secs)]
    pub(crate) backoff_max: Duration,

    /// After an open connection ends, wait a random time in [0, S] before connecting again,
    /// so that clients dropped together do not return together; 0 reconnects at once. A
    /// close with 1013 (try again later) takes the backoff's next wait instead.
    #[arg(long, value_name = "S", default_value = "1", value_parser = parse_secs)]
    pub(crate) reconnect_delay: Duration,

    /// A connection must stay open this long before backoff restarts from the beginning; 0
    /// restarts after every successful handshake. [default: the library's, 5 s]
    #[arg(long, value_name = "S", value_parser = parse_secs)]
    pub(crate) min_uptime: Option<Duration>,

    /// Give up after N failed attempts in a row (fatal, exit 1). [default: unlimited]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_attempts: Option<u32>,

    /// Send every received message back unchanged (text as text, binary as binary).
    #[arg(long)]
    pub(crate) echo: bool,

    /// Largest message accepted; a larger one closes the connection with 1009. [default: the
    /// library's, 1 MiB]
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) max_size: Option<u64>,

    /// Do not offer permessage-deflate (offered by default, without context takeover).
    #[arg(long)]
    pub(crate) no_compression: bool,

    /// Also retry this HTTP status (e.g. 429); repeatable.
    #[arg(long, value_name = "STATUS", value_parser = parse_status)]
    pub(crate) retry_on: Vec<u16>,

    /// Never retry this HTTP status (e.g. 503); repeatable; wins over --retry-on.
    #[arg(long, value_name = "STATUS", value_parser = parse_status)]
    pub(crate) fatal_on: Vec<u16>,

    /// wss://: accept any server certificate. Dangerous: anyone on the path can read and
    /// change the traffic.
    #[arg(long, short = 'k')]
    pub(crate) insecure: bool,

    /// wss://: also trust the CA certificates in this PEM file.
    #[arg(long, value_name = "FILE")]
    pub(crate) ca: Option<PathBuf>,

    /// Connect through this proxy: http://, https://, socks5:// or socks5h://, with
    /// user:password@ for authentication. [default: the proxy the environment names:
    /// no_proxy, then wss_proxy/https_proxy/all_proxy for wss://, ws_proxy/http_proxy/
    /// all_proxy for ws://]
    #[arg(long, value_name = "URL", conflicts_with = "no_proxy")]
    pub(crate) proxy: Option<String>,

    /// Connect directly, ignoring the proxy environment variables.
    #[arg(long)]
    pub(crate) no_proxy: bool,

    /// Connect over the Unix domain socket PATH instead of TCP; the URL still names the
    /// scheme, the Host header and the resource (and for wss:// the certificate's name), e.g.
    /// `tether connect ws://localhost/chat --unix /run/app.sock`. No proxy is used.
    #[arg(long, value_name = "PATH", conflicts_with = "proxy")]
    pub(crate) unix: Option<PathBuf>,
}

/// Flags of `tether serve`.
#[derive(Debug, Args)]
#[command(after_long_help = "\
Every message received is sent back to its sender (echo), or with --broadcast to every client
connected at that moment, the sender included. GET /healthz answers 200 \"ok\" over plain HTTP,
without authentication. Ctrl-C (or SIGTERM) closes every connection with 1001 and exits 0.
The first line on stderr is `listening on ws://ADDR:PORT` with the port actually bound, so
`tether serve 127.0.0.1:0` picks a free port and says which; with --unix PATH it is
`listening on unix:PATH` (clients: `tether connect ws://localhost/ --unix PATH`).")]
pub(crate) struct ServeArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(default_value = "127.0.0.1:8765")]
    pub(crate) addr: String,

    /// Listen on the Unix domain socket PATH instead of ADDR. A stale socket file there (one
    /// nobody listens on) is replaced; anything else at PATH is an error. The file is
    /// removed on exit.
    #[arg(long, value_name = "PATH", conflicts_with = "addr")]
    pub(crate) unix: Option<PathBuf>,

    /// Relay each message to every connected client, the sender included, instead of echoing.
    #[arg(long)]
    pub(crate) broadcast: bool,

    /// Offer resumable sessions (subprotocol tether.resume.1): a client that reconnects
    /// resumes where it was, receiving what was sent meanwhile. Plain clients are served as
    /// before.
    #[arg(long)]
    pub(crate) resume: bool,

    /// How long a session whose client is away is kept. [default: the library's, 120 s]
    #[arg(long, value_name = "S", value_parser = parse_secs, requires = "resume")]
    pub(crate) session_ttl: Option<Duration>,

    /// Keep sessions (and, with --broadcast, the broadcast) in this Redis, shared by every
    /// `tether serve` that uses it: a client may resume on any of them.
    /// [default: sessions live in this process]
    #[arg(long, value_name = "URL", value_parser = parse_redis_url, requires = "resume")]
    pub(crate) session_store: Option<String>,

    /// Require HTTP Basic credentials; other upgrade requests get 401.
    #[arg(long, value_name = "USER:PASS", value_parser = parse_credentials)]
    pub(crate) auth: Option<(String, String)>,

    /// Serve wss:// with this PEM certificate chain (needs --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,

    /// Print one JSON object per line on stdout for every event (listening, connection,
    /// message, closed).
    #[arg(long)]
    pub(crate) json: bool,
}

/// A `ws://` or `wss://` URL with a host and no fragment.
fn parse_ws_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("not a URL: {e}"))?;
    if let Some(scheme @ ("ws" | "wss")) = url.scheme().strip_suffix("+unix") {
        return Err(format!(
            "use a {scheme}:// URL with --unix PATH (e.g. {scheme}://localhost/ --unix /run/app.sock)"
        ));
    }
    if !matches!(url.scheme(), "ws" | "wss") {
        return Err(format!(
            "the scheme is {}, not ws or wss (use ws://… or wss://…)",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".into());
    }
    if url.fragment().is_some() {
        return Err("a WebSocket URL cannot have a #fragment".into());
    }
    Ok(url)
}

/// A time in seconds, fractional allowed, not negative.
fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?} is not a number of seconds (0 or more)"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} seconds is too long"))
}

/// A `redis://HOST:PORT[/DB]` URL (or `rediss://` for TLS).
fn parse_redis_url(s: &str) -> Result<String, String> {
    let url = Url::parse(s).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "redis" | "rediss") {
        return Err(format!(
            "the scheme is {}, not redis or rediss (use redis://HOST:PORT[/DB])",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host (use redis://HOST:PORT[/DB])".to_owned());
    }
    Ok(s.to_owned())
}

/// A backoff growth factor: a finite number, at least 1.
fn parse_factor(s: &str) -> Result<f64, String> {
    let f: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if !f.is_finite() || f < 1.0 {
        return Err(format!("{s:?}: the factor must be at least 1"));
    }
    Ok(f)
}

/// An HTTP status code, 100 to 599.
fn parse_status(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(code) if (100..=599).contains(&code) => Ok(code),
        _ => Err(format!("{s:?} is not an HTTP status code (100-599)")),
    }
}

/// `Name: value`.
fn parse_header(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not of the form 'Name: value'"))?;
    let name = name.trim();
    let valid_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid_name {
        return Err(format!("{name:?} is not a valid header name"));
    }
    let value = value.trim();
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err("a header value cannot contain CR, LF or NUL".into());
    }
    Ok((name.to_owned(), value.to_owned()))
}

/// `USER:PASS`.
fn parse_credentials(s: &str) -> Result<(String, String), String> {
    let (user, pass) = s
        .split_once(':')
        .ok_or_else(|| "expected USER:PASS".to_owned())?;
    if user.is_empty() {
        return Err("the user name is empty".into());
    }
    Ok((user.to_owned(), pass.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(parse_ws_url("ws://127.0.0.1:8765/").is_ok());
        assert!(parse_ws_url("wss://example.com/feed?x=1").is_ok());
        assert!(parse_ws_url("WS://example.com").is_ok());
        assert!(parse_ws_url("http://x").is_err());
        assert!(parse_ws_url("x").is_err());
        assert!(parse_ws_url("ws://x/#frag").is_err());
        let unix = parse_ws_url("ws+unix:///run/app.sock:/").unwrap_err();
        assert!(unix.contains("--unix"), "{unix}");
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_secs("3.1"), Ok(Duration::from_millis(3100)));
        assert_eq!(parse_secs("0"), Ok(Duration::ZERO));
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("inf").is_err());
        assert!(parse_secs("NaN").is_err());
        assert!(parse_secs("1e300").is_err());
        assert!(parse_factor("0.5").is_err());
        assert_eq!(parse_factor("1.618"), Ok(1.618));
    }

    #[test]
    fn headers_and_statuses() {
        assert_eq!(
            parse_header("X-Token:  abc def "),
            Ok(("X-Token".into(), "abc def".into()))
        );
        assert!(parse_header("no colon").is_err());
        assert!(parse_header(": value").is_err());
        assert!(parse_header("Bad Name: v").is_err());
        assert_eq!(parse_status("429"), Ok(429));
        assert!(parse_status("99").is_err());
        assert!(parse_status("600").is_err());
        assert_eq!(
            parse_credentials("user:pa:ss"),
            Ok(("user".into(), "pa:ss".into()))
        );
        assert!(parse_credentials("user").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
