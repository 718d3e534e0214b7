//! End-to-end tests of the `tether` binary: exit statuses, JSON events, retries, queued lines,
//! `serve` and `demo`. Each test waits for the child's output lines (with deadlines) rather
//! than sleeping, and children are killed when their handle is dropped.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::Value;
use tether::{Message, ServerConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// tinyproxy and microsocks of the test's own (the library's test helper).
#[path = "../../tether/tests/support/proxies.rs"]
#[allow(dead_code)]
mod proxies;

/// A redis-server of the test's own (the library's test helper).
#[path = "../../tether/tests/support/redis.rs"]
#[allow(dead_code)]
mod redis_server;

/// Longest wait for any one expected line or exit.
const PATIENCE: Duration = Duration::from_secs(15);

/// A running `tether` process; killed on drop.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    seen: Vec<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn forward_lines(pipe: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

impl Proc {
    fn spawn(args: &[&str]) -> Self {
        Self::spawn_with(args, Stdio::piped())
    }

    fn spawn_with(args: &[&str], stdin: Stdio) -> Self {
        Self::spawn_env(args, stdin, &[])
    }

    /// As [`spawn_with`](Self::spawn_with), with these environment variables set (and the
    /// proxy variables of the test's own environment removed).
    fn spawn_env(args: &[&str], stdin: Stdio, env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tether"));
        for var in [
            "ws_proxy",
            "wss_proxy",
            "http_proxy",
            "https_proxy",
            "all_proxy",
            "no_proxy",
        ] {
            command.env_remove(var).env_remove(var.to_ascii_uppercase());
        }
        command.envs(env.iter().copied());
        let mut child = command
            .args(args)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("NO_COLOR", "1")
            .spawn()
            .expect("the tether binary runs");
        let stdout = forward_lines(child.stdout.take().expect("piped stdout"));
        let stderr = forward_lines(child.stderr.take().expect("piped stderr"));
        Self {
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
            seen: Vec::new(),
        }
    }

    fn write(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin.write_all(text.as_bytes()).expect("write to stdin");
        stdin.flush().expect("flush stdin");
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The next stdout line, or `None` at end of output or after `PATIENCE`.
    fn next_line(&mut self) -> Option<String> {
        match self.stdout.recv_timeout(PATIENCE) {
            Ok(line) => {
                self.seen.push(line.clone());
                Some(line)
            }
            Err(RecvTimeoutError::Timeout) => panic!(
                "no stdout line within {PATIENCE:?}; so far: {:#?}",
                self.seen
            ),
            Err(RecvTimeoutError::Disconnected) => None,
        }
    }

    /// The next JSON event on stdout.
    fn next_event(&mut self) -> Value {
        let line = self
            .next_line()
            .unwrap_or_else(|| panic!("stdout ended; so far: {:#?}", self.seen));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"))
    }

    /// The next event, which must be called `name`.
    fn expect_event(&mut self, name: &str) -> Value {
        let event = self.next_event();
        assert_eq!(event["event"], name, "{event}; so far: {:#?}", self.seen);
        event
    }

    /// Skips events until one called `name`.
    fn wait_event(&mut self, name: &str) -> Value {
        loop {
            let event = self.next_event();
            if event["event"] == name {
                return event;
            }
        }
    }

    /// The stderr line containing `needle` (lines before it are skipped).
    fn wait_stderr(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => skipped.push(line),
                Err(_) => panic!("no stderr line with {needle:?}; saw {skipped:#?}"),
            }
        }
    }

    /// The exit status, waiting at most `PATIENCE`.
    fn wait_exit(&mut self) -> i32 {
        self.close_stdin();
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code().expect("exited normally, not by a signal");
            }
            assert!(
                Instant::now() < deadline,
                "still running after {PATIENCE:?}; stdout so far: {:#?}",
                self.seen
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The rest of stdout, after the process ended.
    fn rest_of_stdout(&mut self) -> Vec<String> {
        let mut rest = Vec::new();
        while let Some(line) = self.next_line() {
            rest.push(line);
        }
        rest
    }
}

/// `tether serve 127.0.0.1:0 ARGS`, and the port it reports on stderr.
fn serve(args: &[&str]) -> (Proc, u16) {
    let mut all = vec!["serve", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let mut proc = Proc::spawn(&all);
    let line = proc.wait_stderr("listening on ");
    let scheme = if args.contains(&"--tls-cert") {
        "wss"
    } else {
        "ws"
    };
    assert!(
        line.starts_with(&format!("listening on {scheme}://127.0.0.1:")),
        "{line}"
    );
    let port = line
        .rsplit(':')
        .next()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    (proc, port)
}

/// A port with nothing listening on it (bound, then released).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr").port()
}

/// Runs `server` on a runtime of its own, in a thread of its own.
fn in_thread<F>(server: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(server);
    });
}

/// Reads an HTTP request head from `tcp`.
async fn read_head(tcp: &mut tokio::net::TcpStream) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut byte).await.unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
}

/// The arguments of a quick reconnecting client: small waits, JSON events.
fn quick(url: &str, more: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "connect",
        url,
        "--json",
        "--reconnect",
        "--backoff-initial",
        "0.1",
        "--backoff-min",
        "0.1",
        "--backoff-max",
        "0.2",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.extend(more.iter().map(|s| (*s).to_owned()));
    args
}

fn spawn_owned(args: &[String]) -> Proc {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::spawn(&args)
}

// ----- connect against serve -----

#[test]
fn connect_and_serve_round_trip_json() {
    let (_server, port) = serve(&[]);
    let url = format!("ws://127.0.0.1:{port}/");
    let mut client = Proc::spawn(&["connect", &url, "--json"]);
    client.write("hello\nworld\n");
    client.close_stdin();
    let connecting = client.expect_event("connecting");
    assert_eq!(connecting["attempt"], 1);
    assert_eq!(connecting["url"], url.as_str());
    let open = client.expect_event("open");
    assert_eq!(open["attempt"], 1);
    assert!(open["subprotocol"].is_null());
    for word in ["hello", "world"] {
        let msg = client.expect_event("message");
        assert_eq!(msg["kind"], "text");
        assert_eq!(msg["data"], word);
    }
    let closed = client.expect_event("closed");
    assert_eq!(closed["code"], 1000);
    assert_eq!(closed["reason"], "");
    assert_eq!(client.wait_exit(), 0);
    assert!(client.rest_of_stdout().is_empty());
}

#[test]
fn end_of_input_keeps_replies_to_the_last_lines() {
    // The Close goes out only after the server has seen the lines, so their echoes arrive.
    let (_server, port) = serve(&[]);
    let url = format!("ws://127.0.0.1:{port}/");
    for _ in 0..5 {
        let mut client = Proc::spawn(&["connect", &url, "--json"]);
        client.write("a\nb\nc\n");
        assert_eq!(client.wait_exit(), 0);
        let data: Vec<String> = client
            .rest_of_stdout()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["event"] == "message")
            .map(|e| e["data"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(data, ["a", "b", "c"]);
    }
}

#[test]
fn human_output_prints_text_on_stdout_and_status_on_stderr() {
    let (_server, port) = serve(&[]);
    let url = format!("ws://127.0.0.1:{port}");
    let mut client = Proc::spawn(&["connect", &url]);
    client.write("hello\n");
    assert_eq!(client.next_line().as_deref(), Some("hello"));
    client.wait_stderr("connecting to ws://127.0.0.1:");
    client.wait_stderr("connected");
    assert_eq!(client.wait_exit(), 0);
    client.wait_stderr("closed 1000");
}

#[test]
fn broadcast_reaches_every_client() {
    let (_server, port) = serve(&["--broadcast"]);
    let url = format!("ws://127.0.0.1:{port}/");
    let mut listener = Proc::spawn(&["connect", &url, "--json"]);
    listener.expect_event("connecting");
    listener.expect_event("open");
    let mut talker = Proc::spawn(&["connect", &url, "--json"]);
    talker.write("to everyone\n");
    // The sender gets its own message too.
    assert_eq!(talker.wait_event("message")["data"], "to everyone");
    assert_eq!(listener.expect_event("message")["data"], "to everyone");
    assert_eq!(talker.wait_exit(), 0);
    assert_eq!(listener.wait_exit(), 0);
}

// ----- exit statuses -----

#[test]
fn http_401_is_fatal_with_status_1() {
    let (_server, port) = serve(&["--auth", "user:pass"]);
    let url = format!("ws://127.0.0.1:{port}/");
    // With --reconnect too: 401 is not retried.
    for reconnect in [false, true] {
        let mut args = vec!["connect", url.as_str(), "--json"];
        if reconnect {
            args.push("--reconnect");
        }
        let mut client = Proc::spawn_with(&args, Stdio::null());
        client.expect_event("connecting");
        let fatal = client.expect_event("fatal");
        assert_eq!(fatal["attempt"], 1);
        assert_eq!(fatal["error"]["kind"], "status");
        assert_eq!(fatal["error"]["status"], 401);
        let message = fatal["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("401"), "{message}");
        assert!(
            message.contains("WWW-Authenticate: Basic realm=\"tether\""),
            "{message}"
        );
        assert_eq!(client.wait_exit(), 1);
    }
}

#[test]
fn fatal_is_explained_on_stderr_without_json() {
    let (_server, port) = serve(&["--auth", "user:pass"]);
    let url = format!("ws://127.0.0.1:{port}/");
    let mut client = Proc::spawn_with(&["connect", &url], Stdio::null());
    let line = client.wait_stderr("fatal:");
    assert!(line.contains("HTTP 401 Unauthorized"), "{line}");
    assert!(line.contains("WWW-Authenticate: Basic realm="), "{line}");
    assert_eq!(client.wait_exit(), 1);
}

#[test]
fn credentials_in_the_url_are_accepted() {
    let (_server, port) = serve(&["--auth", "user:pass"]);
    let url = format!("ws://user:pass@127.0.0.1:{port}/");
    let mut client = Proc::spawn(&["connect", &url, "--json"]);
    client.write("let me in\n");
    // The password is not printed.
    let connecting = client.expect_event("connecting");
    assert_eq!(
        connecting["url"],
        format!("ws://user:***@127.0.0.1:{port}/").as_str()
    );
    client.expect_event("open");
    assert_eq!(client.expect_event("message")["data"], "let me in");
    assert_eq!(client.wait_exit(), 0);
}

#[test]
fn max_attempts_exhausted_is_status_1() {
    let url = format!("ws://127.0.0.1:{}/", free_port());
    let args = quick(&url, &["--max-attempts", "2"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut client = Proc::spawn_with(&args, Stdio::null());
    assert_eq!(client.expect_event("connecting")["attempt"], 1);
    let retry = client.expect_event("retry");
    assert_eq!(retry["attempt"], 1);
    let delay = retry["delay"].as_f64().expect("delay is a number");
    assert!((0.0..=0.1).contains(&delay), "{retry}");
    assert_eq!(retry["error"]["kind"], "io");
    assert!(retry["error"].get("status").is_none(), "{retry}");
    assert_eq!(client.expect_event("connecting")["attempt"], 2);
    let fatal = client.expect_event("fatal");
    assert_eq!(fatal["attempt"], 2);
    assert_eq!(fatal["error"]["kind"], "io");
    assert_eq!(client.wait_exit(), 1);
}

#[test]
fn without_reconnect_a_refused_connection_is_status_1() {
    let url = format!("ws://127.0.0.1:{}/", free_port());
    let mut client = Proc::spawn_with(&["connect", &url, "--json"], Stdio::null());
    client.expect_event("connecting");
    let fatal = client.expect_event("fatal");
    assert_eq!(fatal["error"]["kind"], "io");
    assert_eq!(client.wait_exit(), 1);
}

#[test]
fn usage_errors_are_status_2_and_attempt_nothing() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let http = format!("http://127.0.0.1:{port}/");
    let ws = format!("ws://127.0.0.1:{port}/");
    let cases: Vec<Vec<&str>> = vec![
        vec!["connect", &http],
        vec!["connect", "http://x"],
        vec!["connect", "not a url"],
        vec!["connect", &ws, "--no-such-flag"],
        vec!["connect", &ws, "--header", "no colon"],
        vec!["connect", &ws, "--max-attempts", "0"],
        vec!["connect", &ws, "--open-timeout", "-1"],
        vec!["connect", &ws, "--backoff-factor", "0.5"],
        vec!["connect", &ws, "--retry-on", "42"],
        vec!["connect", &ws, "--ca", "/nonexistent/ca.pem"],
        vec!["connect"],
        vec![
            "serve",
            "127.0.0.1:0",
            "--tls-cert",
            "/nonexistent/cert.pem",
        ],
        vec!["no-such-command"],
    ];
    for args in cases {
        let mut proc = Proc::spawn_with(&args, Stdio::null());
        assert_eq!(proc.wait_exit(), 2, "{args:?}");
        assert!(proc.rest_of_stdout().is_empty(), "{args:?}");
    }
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("a connection was attempted: {other:?}"),
    }
}

#[test]
fn help_and_version_are_status_0() {
    for args in [&["--help"][..], &["connect", "--help"], &["--version"]] {
        let mut proc = Proc::spawn_with(args, Stdio::null());
        assert_eq!(proc.wait_exit(), 0, "{args:?}");
    }
    let mut help = Proc::spawn_with(&["connect", "--help"], Stdio::null());
    let text = help.rest_of_stdout().join("\n");
    for flag in [
        "--reconnect",
        "--json",
        "--header",
        "--subprotocol",
        "--open-timeout",
        "--ping-interval",
        "--ping-timeout",
        "--close-timeout",
        "--backoff-initial",
        "--backoff-min",
        "--backoff-factor",
        "--backoff-max",
        "--min-uptime",
        "--reconnect-delay",
        "--max-attempts",
        "--echo",
        "--max-size",
        "--no-compression",
        "--retry-on",
        "--fatal-on",
        "1024 lines",
    ] {
        assert!(text.contains(flag), "--help does not mention {flag}");
    }
}

// ----- retries, against scripted servers -----

/// Answers 503 with Retry-After: 1, then accepts and echoes one message and drops the TCP
/// connection, then accepts and echoes until closed.
fn flaky_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    listener.set_nonblocking(true).expect("nonblocking");
    in_thread(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        let (mut tcp, _) = listener.accept().await.expect("accept 1");
        read_head(&mut tcp).await;
        let answer = "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\
                      Content-Length: 0\r\nConnection: close\r\n\r\n";
        let _ = tcp.write_all(answer.as_bytes()).await;
        drop(tcp);
        let config = ServerConfig::default();
        let (tcp, _) = listener.accept().await.expect("accept 2");
        let (mut ws, _) = tether::accept(tcp, &config)
            .await
            .expect("upgrade 2")
            .expect("upgraded 2");
        if let Some(Ok(msg)) = ws.recv().await {
            let _ = ws.send(msg).await;
        }
        // Drop without a closing handshake.
        drop(ws);
        echo_next(&listener, &config).await;
    });
    addr
}

/// Accepts the next connection and echoes until the client closes.
async fn echo_next(listener: &tokio::net::TcpListener, config: &ServerConfig) {
    let (tcp, _) = listener.accept().await.expect("accept");
    let (mut ws, _) = tether::accept(tcp, config)
        .await
        .expect("upgrade")
        .expect("upgraded");
    while let Some(Ok(msg)) = ws.recv().await {
        let _ = ws.send(msg).await;
    }
}

#[test]
fn retry_after_503_then_open_drop_and_reopen() {
    let addr = flaky_server();
    let url = format!("ws://{addr}/");
    let mut client = spawn_owned(&quick(&url, &[]));
    let started = Instant::now();
    assert_eq!(client.expect_event("connecting")["attempt"], 1);
    let retry = client.expect_event("retry");
    assert_eq!(retry["attempt"], 1);
    assert_eq!(retry["error"]["kind"], "status");
    assert_eq!(retry["error"]["status"], 503);
    let delay = retry["delay"].as_f64().expect("delay");
    assert!(delay >= 1.0, "Retry-After: 1 is a floor: {retry}");
    assert_eq!(client.expect_event("connecting")["attempt"], 2);
    assert_eq!(client.expect_event("open")["attempt"], 2);
    assert!(started.elapsed() >= Duration::from_secs(1));

    client.write("first\n");
    assert_eq!(client.expect_event("message")["data"], "first");
    let closed = client.expect_event("closed");
    assert_eq!(closed["code"], 1006, "no closing handshake: {closed}");
    // Open for less than the minimum uptime: reported as a retry with attempt 0.
    let short = client.expect_event("retry");
    assert_eq!(short["attempt"], 0);
    assert_eq!(short["error"]["kind"], "closed");
    assert!(short["delay"].as_f64().is_some(), "{short}");
    assert_eq!(client.expect_event("connecting")["attempt"], 1);
    assert_eq!(client.expect_event("open")["attempt"], 1);

    client.write("second\n");
    assert_eq!(client.expect_event("message")["data"], "second");
    client.close_stdin();
    assert_eq!(client.expect_event("closed")["code"], 1000);
    assert_eq!(client.wait_exit(), 0);
}

/// Accepts three connections: closes the first with 1012 (a restart), the second with 1013
/// (try again later), and echoes on the third until closed.
fn restarting_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    listener.set_nonblocking(true).expect("nonblocking");
    in_thread(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        let config = ServerConfig::default();
        for code in [1012, 1013] {
            let (tcp, _) = listener.accept().await.expect("accept");
            let (mut ws, _) = tether::accept(tcp, &config)
                .await
                .expect("upgrade")
                .expect("upgraded");
            let _ = ws.close(code, "").await;
        }
        echo_next(&listener, &config).await;
    });
    addr
}

#[test]
fn a_restart_is_spread_by_reconnect_delay_and_1013_backs_off() {
    let addr = restarting_server();
    let url = format!("ws://{addr}/");
    let more = ["--min-uptime", "0", "--reconnect-delay", "0.3"];
    let mut client = spawn_owned(&quick(&url, &more));
    client.expect_event("connecting");
    client.expect_event("open");
    assert_eq!(client.expect_event("closed")["code"], 1012);
    // The wait after a drop: a random spread within --reconnect-delay, as a retry with
    // attempt 0 and kind "closed".
    let spread = client.expect_event("retry");
    assert_eq!(spread["attempt"], 0, "{spread}");
    assert_eq!(spread["error"]["kind"], "closed", "{spread}");
    assert_eq!(spread["code"], 1012, "{spread}");
    let delay = spread["delay"].as_f64().expect("delay");
    assert!((0.0..=0.3).contains(&delay), "{spread}");
    assert_eq!(client.expect_event("connecting")["attempt"], 1);
    client.expect_event("open");
    assert_eq!(client.expect_event("closed")["code"], 1013);
    // 1013 is a failure: the backoff's first wait (random in [0, --backoff-initial 0.1]).
    let later = client.expect_event("retry");
    assert_eq!(
        (later["attempt"].clone(), later["code"].clone()),
        (0.into(), 1013.into())
    );
    assert_eq!(later["error"]["kind"], "closed", "{later}");
    let delay = later["delay"].as_f64().expect("delay");
    assert!((0.0..=0.1).contains(&delay), "{later}");
    client.expect_event("connecting");
    client.expect_event("open");
    client.write("back\n");
    assert_eq!(client.expect_event("message")["data"], "back");
    client.close_stdin();
    assert_eq!(client.expect_event("closed")["code"], 1000);
    assert_eq!(client.wait_exit(), 0);
}

#[test]
fn retry_on_and_fatal_on_change_the_policy() {
    // 429 is fatal by default; --retry-on makes it retryable. 503 is retried by default;
    // --fatal-on makes it fatal.
    for (status, flag, first_event) in [
        ("429 Too Many Requests", "--retry-on", "retry"),
        ("503 Service Unavailable", "--fatal-on", "fatal"),
    ] {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let answer = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
        in_thread(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            while let Ok((mut tcp, _)) = listener.accept().await {
                read_head(&mut tcp).await;
                let _ = tcp.write_all(answer.as_bytes()).await;
            }
        });
        let code = &status[..3];
        let url = format!("ws://{addr}/");
        let args = quick(&url, &[flag, code, "--max-attempts", "2"]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut client = Proc::spawn_with(&args, Stdio::null());
        client.expect_event("connecting");
        let event = client.expect_event(first_event);
        assert_eq!(event["error"]["status"].to_string(), code);
        assert_eq!(client.wait_exit(), 1);
    }
}

#[test]
fn lines_typed_while_disconnected_are_delivered_in_order() {
    let port = free_port();
    let url = format!("ws://127.0.0.1:{port}/");
    let mut client = spawn_owned(&quick(&url, &[]));
    client.expect_event("connecting");
    client.write("one\ntwo\nthree\n");
    // Two failed attempts after the lines were written: they are queued by now.
    client.wait_event("retry");
    client.wait_event("retry");

    let (tx, received) = channel();
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the reserved port");
    listener.set_nonblocking(true).expect("nonblocking");
    in_thread(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
        let server = tether::Server::from_listener(listener, ServerConfig::default());
        let _ = server
            .serve(move |mut ws, _| {
                let tx = tx.clone();
                async move {
                    while let Some(Ok(msg)) = ws.recv().await {
                        let _ = tx.send(msg);
                    }
                }
            })
            .await;
    });
    client.wait_event("open");
    for word in ["one", "two", "three"] {
        let msg = received.recv_timeout(PATIENCE).expect("a line arrives");
        assert_eq!(msg, Message::text(word));
    }
    client.write("four\n");
    assert_eq!(
        received.recv_timeout(PATIENCE).expect("a line arrives"),
        Message::text("four")
    );
    assert_eq!(client.wait_exit(), 0);
    assert_eq!(client.wait_event("closed")["code"], 1000);
}

#[test]
fn echo_sends_messages_back_and_the_server_closing_is_status_0() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    listener.set_nonblocking(true).expect("nonblocking");
    let (tx, echoed) = channel();
    in_thread(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
        let (tcp, _) = listener.accept().await.expect("accept");
        let (mut ws, _) = tether::accept(tcp, &ServerConfig::default())
            .await
            .expect("upgrade")
            .expect("upgraded");
        let sent = [Message::text("ping me"), Message::binary(vec![1u8, 2, 3])];
        for msg in &sent {
            ws.send(msg.clone()).await.expect("send");
        }
        for _ in &sent {
            if let Some(Ok(msg)) = ws.recv().await {
                let _ = tx.send(msg);
            }
        }
        let _ = ws.close(4000, "done").await;
    });
    let url = format!("ws://{addr}/");
    let mut client = Proc::spawn(&["connect", &url, "--json", "--echo"]);
    client.expect_event("connecting");
    client.expect_event("open");
    let text = client.expect_event("message");
    assert_eq!(
        (&text["kind"], &text["data"]),
        (&"text".into(), &"ping me".into())
    );
    let binary = client.expect_event("message");
    assert_eq!(
        (&binary["kind"], &binary["data"]),
        (&"binary".into(), &"AQID".into())
    );
    assert_eq!(
        echoed.recv_timeout(PATIENCE).expect("echo"),
        Message::text("ping me")
    );
    assert_eq!(
        echoed.recv_timeout(PATIENCE).expect("echo"),
        Message::binary(vec![1u8, 2, 3])
    );
    let closed = client.expect_event("closed");
    assert_eq!(closed["code"], 4000);
    assert_eq!(closed["reason"], "done");
    // Without --reconnect, the server closing ends the run with 0 (stdin still open).
    let deadline = Instant::now() + PATIENCE;
    while client.child.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "still running");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(client.wait_exit(), 0);
}

// ----- serve -----

#[test]
fn healthz_answers_200_over_plain_http_even_with_auth() {
    for args in [&[][..], &["--auth", "user:pass"]] {
        let (_server, port) = serve(args);
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        tcp.set_read_timeout(Some(PATIENCE)).expect("timeout");
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .expect("write");
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).expect("read");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        assert_eq!(body.trim(), "ok");
    }
}

#[test]
fn serve_shuts_down_gracefully_on_ctrl_c() {
    let (mut server, port) = serve(&[]);
    let url = format!("ws://127.0.0.1:{port}/");
    let mut client = Proc::spawn(&["connect", &url, "--json"]);
    client.expect_event("connecting");
    client.expect_event("open");
    server.wait_stderr("connection from");
    let pid = server.child.id().to_string();
    let status = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    // Every connection is closed with 1001 (going away).
    assert_eq!(client.expect_event("closed")["code"], 1001);
    assert_eq!(client.wait_exit(), 0);
    assert_eq!(server.wait_exit(), 0);
}

/// SIGTERM while 1,000 clients are mid-traffic: each gets 1001 after a gap-free run of its
/// echoes, and the process exits 0 within its close timeout.
#[test]
fn serve_closes_a_thousand_busy_clients_with_1001_on_sigterm() {
    const CLIENTS: usize = 1000;
    // The library's close timeout: 10 s.
    let (mut server, port) = serve(&[]);
    let url = format!("ws://127.0.0.1:{port}/");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let (warm_tx, warm_rx) = channel();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let url = url.clone();
            let warm = warm_tx.clone();
            runtime.spawn(async move {
                let mut ws = tether::connect(&url).await.expect("connect");
                // Numbered messages every 250 ms (`serve` prints each one it receives: 4,000
                // lines a second in all); the echoes must come back in order, without a gap,
                // until the server's Close.
                let mut next = 0u64;
                let mut echoed = 0u64;
                let mut tick = tokio::time::interval(Duration::from_millis(250));
                loop {
                    tokio::select! {
                        _ = tick.tick() => {
                            if ws.send(next.to_string()).await.is_err() {
                                break;
                            }
                            next += 1;
                        }
                        msg = ws.recv() => match msg {
                            Some(Ok(Message::Text(t))) => {
                                assert_eq!(t.as_str(), echoed.to_string(), "echo {echoed}");
                                echoed += 1;
                                if echoed == 3 {
                                    let _ = warm.send(());
                                }
                            }
                            Some(Ok(other)) => panic!("unexpected {other:?}"),
                            Some(Err(e)) => panic!("error before the close: {e}"),
                            None => break,
                        },
                    }
                }
                // Whatever the server had not echoed when it closed is the tail it never
                // read; the rest arrived.
                while let Some(Ok(Message::Text(t))) = ws.recv().await {
                    assert_eq!(t.as_str(), echoed.to_string(), "echo {echoed}");
                    echoed += 1;
                }
                (ws.close_code(), echoed)
            })
        })
        .collect();
    for _ in 0..CLIENTS {
        warm_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("every client gets echoes");
    }
    let pid = server.child.id().to_string();
    let stopped = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    assert_eq!(server.wait_exit(), 0);
    let took = stopped.elapsed();
    eprintln!("`tether serve` with {CLIENTS} busy clients exited {took:?} after SIGTERM");
    assert!(took < Duration::from_secs(10 + 3), "exit took {took:?}");
    runtime.block_on(async {
        for client in clients {
            let (code, echoed) = client.await.expect("the client task");
            assert_eq!(code, 1001, "every client gets 1001");
            assert!(echoed >= 3);
        }
    });
}

/// `--proxy` goes through the proxy given, the environment's proxy is used by default, and
/// `--no-proxy` ignores it; microsocks wants a password, so a wrong one proves which proxy
/// (and which credentials) an attempt used.
#[test]
fn connect_uses_the_proxy_given_or_the_environments_unless_told_not_to() {
    let (_server, port) = serve(&[]);
    let socks = proxies::ProxyProcess::microsocks(Some(("cli", "pw")));
    let url = format!("ws://127.0.0.1:{port}/");
    let good = format!("socks5h://cli:pw@127.0.0.1:{}", socks.port());
    let bad = format!("socks5://cli:wrong@127.0.0.1:{}", socks.port());
    let round_trip = |args: &[&str], env: &[(&str, &str)]| {
        let mut all = vec!["connect", url.as_str(), "--json"];
        all.extend_from_slice(args);
        let mut client = Proc::spawn_env(&all, Stdio::piped(), env);
        client.write("via\n");
        client.close_stdin();
        client.expect_event("connecting");
        client.expect_event("open");
        assert_eq!(
            client.expect_event("message")["data"],
            "via",
            "{args:?} {env:?}"
        );
        assert_eq!(client.wait_exit(), 0, "{args:?} {env:?}");
    };
    round_trip(&["--proxy", &good], &[]);
    round_trip(&[], &[("ws_proxy", &good)]);
    round_trip(&["--no-proxy"], &[("ws_proxy", &bad)]);
    round_trip(&["--proxy", &good], &[("ALL_PROXY", &bad)]);
    // The environment's proxy with the wrong password: fatal at the first attempt, even with
    // --reconnect.
    let mut client = Proc::spawn_env(
        &["connect", &url, "--json", "--reconnect"],
        Stdio::null(),
        &[("ws_proxy", &bad)],
    );
    client.expect_event("connecting");
    let fatal = client.expect_event("fatal");
    assert_eq!(fatal["attempt"], 1);
    assert_eq!(fatal["error"]["kind"], "proxy");
    assert_eq!(client.wait_exit(), 1);
}

// ----- demo -----

#[test]
fn demo_shows_every_stage_and_exits_0() {
    let mut demo = Proc::spawn_with(&["demo"], Stdio::null());
    let started = Instant::now();
    let mut output = Vec::new();
    while let Some(line) = demo.next_line() {
        output.push(line);
    }
    assert_eq!(demo.wait_exit(), 0, "{output:#?}");
    assert!(started.elapsed() < Duration::from_secs(15), "too slow");
    let text = output.join("\n");
    let timeline: Vec<&String> = output.iter().filter(|l| l.starts_with('+')).collect();
    let has = |needle: &str| timeline.iter().any(|l| l.contains(needle));
    assert!(has("connection refused"), "{text}");
    assert!(has("503 Service Unavailable"), "{text}");
    assert!(has("Retry-After"), "{text}");
    assert!(has("connected"), "{text}");
    assert!(has("received \"echo: hello 1\""), "{text}");
    assert!(has("dropped"), "{text}");
    assert!(has("1006"), "{text}");
    assert!(has("401 Unauthorized"), "{text}");
    assert!(has("fatal"), "{text}");
    assert!(has("WWW-Authenticate: Basic realm="), "{text}");
    // Stages in order.
    let first = |needle: &str| {
        timeline
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or(usize::MAX)
    };
    assert!(first("connection refused") < first("503"));
    assert!(first("503") < first("echo: hello"));
    assert!(first("echo: hello") < first("dropped"));
    assert!(first("dropped") < first("fatal"));
    // It says the waits are shortened, and what the defaults are, and where to change them.
    assert!(text.contains("shortened"), "{text}");
    assert!(text.contains("3.1 s"), "{text}");
    assert!(text.contains("tether::reconnect::Policy"), "{text}");
    assert!(text.contains("--min-uptime"), "{text}");
}

#[test]
fn headers_and_subprotocols_are_sent_on_every_attempt() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    listener.set_nonblocking(true).expect("nonblocking");
    let (tx, heads) = channel();
    in_thread(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && tcp.read(&mut byte).await.unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
            let answer = "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n";
            let _ = tcp.write_all(answer.as_bytes()).await;
        }
    });
    let url = format!("ws://{addr}/path?q=1");
    let args = quick(
        &url,
        &[
            "-H",
            "X-Token: abc",
            "--header",
            "X-Other:two words",
            "--subprotocol",
            "chat",
            "--subprotocol",
            "superchat",
            "--max-attempts",
            "2",
        ],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut client = Proc::spawn_with(&args, Stdio::null());
    for _ in 0..2 {
        let head = heads.recv_timeout(PATIENCE).expect("a request");
        let lower = head.to_ascii_lowercase();
        assert!(head.starts_with("GET /path?q=1 HTTP/1.1\r\n"), "{head}");
        assert!(lower.contains("x-token: abc\r\n"), "{head}");
        assert!(lower.contains("x-other: two words\r\n"), "{head}");
        assert!(
            lower.contains("sec-websocket-protocol: chat, superchat"),
            "{head}"
        );
    }
    let fatal = client.wait_event("fatal");
    assert_eq!(fatal["error"]["status"], 502);
    assert_eq!(client.wait_exit(), 1);
}

/// The request head the client sends with these extra flags (the server answers 404).
fn request_head(extra: &[&str]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    listener.set_nonblocking(true).expect("nonblocking");
    let (tx, heads) = channel();
    in_thread(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
        if let Ok((mut tcp, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && tcp.read(&mut byte).await.unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
            let answer = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
            let _ = tcp.write_all(answer.as_bytes()).await;
        }
    });
    let url = format!("ws://{addr}/");
    let args = quick(&url, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut client = Proc::spawn_with(&args, Stdio::null());
    let head = heads.recv_timeout(PATIENCE).expect("a request");
    assert_eq!(client.wait_exit(), 1);
    head.to_ascii_lowercase()
}

#[test]
fn compression_is_offered_unless_no_compression() {
    let offered = request_head(&[]);
    assert!(
        offered.contains("sec-websocket-extensions: permessage-deflate"),
        "{offered}"
    );
    let plain = request_head(&["--no-compression"]);
    assert!(!plain.contains("sec-websocket-extensions"), "{plain}");
}

#[test]
fn a_full_queue_drops_the_oldest_lines_with_a_warning() {
    let port = free_port();
    let url = format!("ws://127.0.0.1:{port}/");
    let mut client = spawn_owned(&quick(&url, &[]));
    client.expect_event("connecting");
    let lines: String = (0..1030).map(|i| format!("l{i}\n")).collect();
    client.write(&lines);
    for _ in 0..6 {
        let warning = client.wait_event("warning");
        assert!(
            warning["message"]
                .as_str()
                .unwrap_or_default()
                .contains("1024"),
            "{warning}"
        );
    }
    let (tx, received) = channel();
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the reserved port");
    listener.set_nonblocking(true).expect("nonblocking");
    in_thread(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
        let (tcp, _) = listener.accept().await.expect("accept");
        let (mut ws, _) = tether::accept(tcp, &ServerConfig::default())
            .await
            .expect("upgrade")
            .expect("upgraded");
        while let Some(Ok(msg)) = ws.recv().await {
            let _ = tx.send(msg);
        }
    });
    for i in 6..1030 {
        let msg = received.recv_timeout(PATIENCE).expect("a line arrives");
        assert_eq!(msg, Message::text(format!("l{i}")));
    }
    assert_eq!(client.wait_exit(), 0);
}

// ----- TLS -----

/// A private CA and a certificate for `localhost` it signed, as PEM files in a fresh
/// directory: (directory, ca.pem, cert.pem, key.pem).
fn make_pki(tag: &str) -> (std::path::PathBuf, String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tether cli test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().expect("CA key");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
    let issuer = Issuer::new(ca_params, ca_key);
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &issuer).expect("cert");

    let dir = std::env::temp_dir().join(format!("tether-cli-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).expect("write PEM");
        path.to_string_lossy().into_owned()
    };
    let ca = write("ca.pem", ca_cert.pem());
    let cert = write("cert.pem", cert.pem());
    let key = write("key.pem", key.serialize_pem());
    (dir, ca, cert, key)
}

#[test]
fn wss_with_a_private_ca_or_insecure() {
    let (dir, ca, cert, key) = make_pki("wss");
    let (_server, port) = serve(&["--tls-cert", &cert, "--tls-key", &key]);
    let url = format!("wss://localhost:{port}/");

    // Trusted through --ca.
    let mut client = Proc::spawn(&["connect", &url, "--json", "--ca", &ca]);
    client.write("secret\n");
    client.expect_event("connecting");
    client.expect_event("open");
    assert_eq!(client.expect_event("message")["data"], "secret");
    assert_eq!(client.wait_exit(), 0);

    // Not trusted: fatal, status 1.
    let mut client = Proc::spawn_with(&["connect", &url, "--json", "--reconnect"], Stdio::null());
    client.expect_event("connecting");
    let fatal = client.expect_event("fatal");
    assert_eq!(fatal["error"]["kind"], "tls", "{fatal}");
    assert_eq!(client.wait_exit(), 1);

    // --insecure accepts any certificate.
    let mut client = Proc::spawn(&["connect", &url, "--json", "--insecure"]);
    client.write("anyway\n");
    client.expect_event("connecting");
    client.expect_event("open");
    assert_eq!(client.expect_event("message")["data"], "anyway");
    assert_eq!(client.wait_exit(), 0);
    let _ = std::fs::remove_dir_all(dir);
}

// ----- resumable sessions -----

/// A TCP relay in threads whose connections can all be cut at once (both sockets shut
/// down), standing for a network that drops the connection.
struct CuttableRelay {
    addr: SocketAddr,
    target: std::sync::Arc<std::sync::Mutex<SocketAddr>>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl CuttableRelay {
    fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().unwrap();
        let conns: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>> = Default::default();
        let kept = conns.clone();
        let target = std::sync::Arc::new(std::sync::Mutex::new(target));
        let current = target.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let to = *current.lock().unwrap();
                let Ok(server) = TcpStream::connect(to) else {
                    continue;
                };
                kept.lock().unwrap().push(client.try_clone().unwrap());
                kept.lock().unwrap().push(server.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Self {
            addr,
            target,
            conns,
        }
    }

    fn retarget(&self, port: u16) {
        *self.target.lock().unwrap() = format!("127.0.0.1:{port}").parse().unwrap();
    }

    fn cut(&self) {
        for conn in self.conns.lock().unwrap().drain(..) {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Closes the client's input and collects the messages it prints until its session closed
/// with 1000; it must then exit 0.
fn end_of_input(client: &mut Proc) -> Vec<String> {
    client.close_stdin();
    let mut texts = Vec::new();
    loop {
        let event = client.next_event();
        match event["event"].as_str() {
            Some("message") => texts.push(event["data"].as_str().unwrap().to_owned()),
            Some("closed") if event["code"] == 1000 => break,
            Some("session_lost") | Some("fatal") => panic!("unexpected {event}"),
            _ => {}
        }
    }
    assert_eq!(client.wait_exit(), 0);
    texts
}

#[test]
fn resume_delivers_every_line_once_across_a_dropped_connection() {
    let (_server, port) = serve(&["--resume"]);
    let relay = CuttableRelay::start(format!("127.0.0.1:{port}").parse().unwrap());
    let url = format!("ws://{}/", relay.addr);
    let mut client = spawn_owned(&quick(&url, &["--resume"]));
    client.write("one\n");
    let open = client.wait_event("open");
    assert_eq!(open["resumed"], false);
    assert_eq!(open["replayed"], 0);
    assert_eq!(open["subprotocol"], "tether.resume.1");
    assert_eq!(client.wait_event("message")["data"], "one");
    relay.cut();
    client.wait_event("closed");
    // Typed while the connection is down (or coming back): delivered once it is.
    client.write("two\nthree\n");
    let open = client.wait_event("open");
    assert_eq!(open["resumed"], true, "{open}");
    assert_eq!(
        end_of_input(&mut client),
        ["two", "three"],
        "each echo exactly once, in order"
    );
}

#[test]
fn resume_delivers_a_fast_pipe_of_more_lines_than_both_buffers_hold_once_and_in_order() {
    // 20,000 lines written at once: more than the client's replay buffer (4,096 messages)
    // and the server's together, so both sides wait for room while the other takes.
    const N: usize = 20_000;
    let (mut server, port) = serve(&["--resume", "--json"]);
    let mut client = spawn_owned(&quick(&format!("ws://127.0.0.1:{port}/"), &["--resume"]));
    let mut input = client.stdin.take().expect("stdin is open");
    let writer = std::thread::spawn(move || {
        let lines: String = (1..=N).map(|i| format!("{i}\n")).collect();
        input.write_all(lines.as_bytes()).expect("write the lines");
        // Dropping `input` ends the client's input.
    });
    let echoes = end_of_input(&mut client);
    writer.join().unwrap();
    // The server took every line exactly once, in order.
    let mut taken = Vec::with_capacity(N);
    while taken.len() < N {
        let event = server.next_event();
        if event["event"] == "message" {
            taken.push(event["data"].as_str().unwrap().to_owned());
        }
    }
    assert_numbered(&taken, N, "the server took each line once, in order");
    // And every echo came back once, in order: `serve --resume` acknowledges a batch of
    // lines only once its echoes are queued, so the client, which closes once every line is
    // acknowledged, has had them all.
    assert_numbered(&echoes, N, "every line echoed once, in order");
}

/// Asserts that `got` is exactly "1", "2", … `n`; a failure says where it first went wrong
/// (not the whole list).
fn assert_numbered(got: &[String], n: usize, what: &str) {
    let expected: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
    let first_wrong = got.iter().zip(&expected).position(|(g, want)| g != want);
    assert!(
        got == expected,
        "{what}: {} of {n}, the first out of place at index {first_wrong:?}: {:?}",
        got.len(),
        first_wrong.map(|i| &got[i.saturating_sub(2)..(i + 3).min(got.len())]),
    );
}

#[test]
fn resume_against_a_server_without_sessions_is_fatal() {
    let (_server, port) = serve(&[]);
    let url = format!("ws://127.0.0.1:{port}/");
    let mut client = spawn_owned(&quick(&url, &["--resume"]));
    let fatal = client.wait_event("fatal");
    assert_eq!(fatal["error"]["kind"], "session", "{fatal}");
    assert_eq!(client.wait_exit(), 1);
}

#[test]
fn a_session_the_server_cannot_resume_is_reported_then_exit_1_or_a_new_session() {
    for reconnect in [false, true] {
        let (_first, port) = serve(&["--resume"]);
        let (_second, other) = serve(&["--resume"]);
        let relay = CuttableRelay::start(format!("127.0.0.1:{port}").parse().unwrap());
        let url = format!("ws://{}/", relay.addr);
        let mut args = vec![
            "connect",
            &url,
            "--json",
            "--resume",
            "--backoff-initial",
            "0.1",
            "--backoff-min",
            "0.1",
        ];
        if reconnect {
            args.push("--reconnect");
        }
        let mut client = Proc::spawn(&args);
        client.write("one\n");
        assert_eq!(client.wait_event("message")["data"], "one");
        // The client comes back to a server that never heard of its session.
        relay.retarget(other);
        relay.cut();
        let lost = client.wait_event("session_lost");
        assert_eq!(lost["reason"], "unknown", "{lost}");
        if !reconnect {
            assert_eq!(client.wait_exit(), 1);
            continue;
        }
        let open = client.wait_event("open");
        assert_eq!(open["resumed"], false, "a new session: {open}");
        client.write("two\n");
        assert_eq!(client.wait_event("message")["data"], "two");
        client.close_stdin();
        assert_eq!(client.wait_exit(), 0);
    }
}

#[test]
fn a_session_away_longer_than_its_ttl_is_lost_as_expired() {
    let (mut server, port) = serve(&["--resume", "--session-ttl", "0.5", "--json"]);
    let relay = CuttableRelay::start(format!("127.0.0.1:{port}").parse().unwrap());
    let url = format!("ws://{}/", relay.addr);
    let mut client = spawn_owned(&quick(&url, &["--resume"]));
    client.write("one\n");
    assert_eq!(client.wait_event("message")["data"], "one");
    // Away until the server has ended the session: every reconnect reaches a port where
    // nothing listens.
    relay.retarget(free_port());
    relay.cut();
    client.wait_event("closed");
    for state in ["connected", "disconnected", "ended"] {
        let event = server.wait_event("session");
        assert_eq!(event["state"], state, "{event}");
    }
    relay.retarget(port);
    let lost = client.wait_event("session_lost");
    assert_eq!(lost["reason"], "expired", "{lost}");
    // With --reconnect (which `quick` gives), a new session starts.
    let open = client.wait_event("open");
    assert_eq!(open["resumed"], false, "{open}");
    client.write("two\n");
    assert_eq!(client.wait_event("message")["data"], "two");
    client.close_stdin();
    assert_eq!(client.wait_exit(), 0);
}

#[test]
fn two_serve_processes_share_sessions_through_redis() {
    let redis = redis_server::Redis::start();
    let store = redis.url();
    let (mut first, port) = serve(&["--resume", "--session-store", &store, "--json"]);
    let (mut second, other) = serve(&["--resume", "--session-store", &store, "--json"]);
    let relay = CuttableRelay::start(format!("127.0.0.1:{port}").parse().unwrap());
    let url = format!("ws://{}/", relay.addr);
    let mut client = spawn_owned(&quick(&url, &["--resume"]));
    client.write("one\n");
    assert_eq!(client.wait_event("open")["resumed"], false);
    assert_eq!(client.wait_event("message")["data"], "one");
    // The first process dies (SIGKILL); the client's reconnect reaches the second one.
    let _ = first.child.kill();
    let _ = first.child.wait();
    relay.retarget(other);
    relay.cut();
    client.write("two\nthree\n");
    let open = client.wait_event("open");
    assert_eq!(
        open["resumed"], true,
        "resumed on the other process: {open}"
    );
    assert_eq!(
        end_of_input(&mut client),
        ["two", "three"],
        "each echo exactly once, in order"
    );
    let resumed = second.wait_event("session");
    assert_eq!(resumed["state"], "resumed", "{resumed}");
}

#[test]
fn a_serve_process_killed_mid_run_loses_and_repeats_no_echo() {
    const N: usize = 2_000;
    let redis = redis_server::Redis::start();
    let store = redis.url();
    let (mut first, port) = serve(&["--resume", "--session-store", &store]);
    let (mut second, other) = serve(&["--resume", "--session-store", &store, "--json"]);
    let relay = CuttableRelay::start(format!("127.0.0.1:{port}").parse().unwrap());
    let url = format!("ws://{}/", relay.addr);
    let mut client = spawn_owned(&quick(&url, &["--resume"]));
    // Lines keep coming, one a millisecond, while the first process is killed: some are on
    // their way to it, some of its echoes on their way back, some not yet recorded.
    let mut input = client.stdin.take().expect("stdin is open");
    let writer = std::thread::spawn(move || {
        for i in 1..=N {
            writeln!(input, "{i}").expect("write a line");
            std::thread::sleep(Duration::from_millis(1));
        }
        // Dropping `input` ends the client's input.
    });
    let mut echoes = Vec::new();
    while echoes.len() < 300 {
        let event = client.next_event();
        match event["event"].as_str() {
            Some("message") => echoes.push(event["data"].as_str().unwrap().to_owned()),
            Some("session_lost") | Some("fatal") => panic!("unexpected {event}"),
            _ => {}
        }
    }
    let _ = first.child.kill();
    let _ = first.child.wait();
    relay.retarget(other);
    relay.cut();
    echoes.extend(end_of_input(&mut client));
    writer.join().unwrap();
    assert_numbered(
        &echoes,
        N,
        "every line echoed exactly once, in order, through the SIGKILL",
    );
    let resumed = second.wait_event("session");
    assert_eq!(resumed["state"], "resumed", "{resumed}");
}

#[test]
fn a_session_store_that_is_not_redis_is_a_usage_error() {
    let mut serve = Proc::spawn(&[
        "serve",
        "127.0.0.1:0",
        "--resume",
        "--session-store",
        "http://x/",
    ]);
    assert_eq!(serve.wait_exit(), 2);
    let mut serve = Proc::spawn(&[
        "serve",
        "127.0.0.1:0",
        "--session-store",
        "redis://127.0.0.1:1/",
    ]);
    assert_eq!(serve.wait_exit(), 2, "--session-store needs --resume");
}

#[test]
fn broadcast_reaches_the_sessions_of_every_serve_process_through_redis() {
    let redis = redis_server::Redis::start();
    let store = redis.url();
    let args = ["--resume", "--broadcast", "--session-store", &store];
    let (_first, port) = serve(&args);
    let (_second, other) = serve(&args);
    let relay = CuttableRelay::start(format!("127.0.0.1:{other}").parse().unwrap());
    let mut a = spawn_owned(&quick(&format!("ws://127.0.0.1:{port}/"), &["--resume"]));
    let mut b = spawn_owned(&quick(&format!("ws://{}/", relay.addr), &["--resume"]));
    a.wait_event("open");
    b.wait_event("open");
    // A new session follows the broadcast from moments after it opened: a first message
    // that both receive shows that both do.
    b.write("ready\n");
    assert_eq!(b.wait_event("message")["data"], "ready");
    assert_eq!(a.wait_event("message")["data"], "ready");
    a.write("hello\n");
    assert_eq!(
        a.wait_event("message")["data"],
        "hello",
        "the sender's own process"
    );
    assert_eq!(
        b.wait_event("message")["data"],
        "hello",
        "the other process"
    );
    // B's connection drops and its reconnect reaches the first process: it resumes there
    // and goes on receiving, each message once.
    relay.retarget(port);
    relay.cut();
    let open = b.wait_event("open");
    assert_eq!(open["resumed"], true, "{open}");
    a.write("again\n");
    assert_eq!(a.wait_event("message")["data"], "again");
    assert_eq!(b.wait_event("message")["data"], "again");
    b.write("from b\n");
    assert_eq!(a.wait_event("message")["data"], "from b");
    assert_eq!(b.wait_event("message")["data"], "from b");
    a.close_stdin();
    b.close_stdin();
    assert_eq!(a.wait_exit(), 0);
    assert_eq!(b.wait_exit(), 0);
    let rest: Vec<String> = b
        .rest_of_stdout()
        .into_iter()
        .filter(|l| l.contains("\"message\""))
        .collect();
    assert!(rest.is_empty(), "nothing twice: {rest:?}");
}

// ----- Unix domain sockets -----

#[cfg(unix)]
mod unix_socket {
    use super::*;

    /// A directory of the test's own (socket paths must be short), removed at the end.
    struct SocketDir(std::path::PathBuf);

    impl SocketDir {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("tether-cli-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("temp dir");
            Self(dir)
        }

        fn path(&self, name: &str) -> String {
            self.0.join(name).to_string_lossy().into_owned()
        }
    }

    impl Drop for SocketDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// `tether serve --unix PATH --json ARGS`, once it says it listens.
    fn serve_unix(path: &str, args: &[&str]) -> Proc {
        let mut all = vec!["serve", "--unix", path, "--json"];
        all.extend_from_slice(args);
        let mut server = Proc::spawn(&all);
        assert_eq!(
            server.wait_stderr("listening on "),
            format!("listening on unix:{path}")
        );
        let listening = server.expect_event("listening");
        assert_eq!(listening["unix"], path);
        server
    }

    #[test]
    fn serve_and_connect_over_a_unix_socket_exchange_lines_both_ways() {
        let dir = SocketDir::new("unix");
        let path = dir.path("echo.sock");
        let mut server = serve_unix(&path, &[]);
        let mut client =
            Proc::spawn(&["connect", "ws://localhost/chat", "--unix", &path, "--json"]);
        assert_eq!(
            client.expect_event("connecting")["url"],
            "ws://localhost/chat"
        );
        client.expect_event("open");
        let connection = server.expect_event("connection");
        assert_eq!(connection["path"], "/chat");
        assert_eq!(connection["peer"], "unix:");
        for line in ["hello over a socket", "and a second line"] {
            client.write(&format!("{line}\n"));
            // The line reached the server, and its echo came back to the client.
            assert_eq!(server.expect_event("message")["data"], line);
            let back = client.expect_event("message");
            assert_eq!(
                (&back["kind"], &back["data"]),
                (&"text".into(), &line.into())
            );
        }
        client.close_stdin();
        assert_eq!(client.expect_event("closed")["code"], 1000);
        assert_eq!(client.wait_exit(), 0);
        let closed = server.expect_event("closed");
        assert_eq!(
            (&closed["code"], &closed["peer"]),
            (&1000.into(), &"unix:".into())
        );

        // SIGTERM: the graceful shutdown, and the socket file goes with the server.
        let pid = server.child.id().to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(status.success());
        assert_eq!(server.wait_exit(), 0);
        assert!(
            !std::path::Path::new(&path).exists(),
            "the socket file is removed"
        );
    }

    #[test]
    fn serve_unix_replaces_a_stale_socket_but_not_a_live_one_nor_a_file() {
        let dir = SocketDir::new("unix-stale");
        let path = dir.path("stale.sock");
        let first = serve_unix(&path, &[]);
        // A second server on the same path: refused, the first keeps it.
        let mut second = Proc::spawn(&["serve", "--unix", &path]);
        let refused = second.wait_stderr("cannot listen on");
        assert!(
            refused.contains(&format!("unix:{path}")) && refused.contains("listens"),
            "{refused}"
        );
        assert_eq!(second.wait_exit(), 1);
        // Killed (no cleanup): the socket file stays, stale; the next server replaces it.
        drop(first);
        assert!(std::path::Path::new(&path).exists());
        let _third = serve_unix(&path, &[]);
        let mut client = Proc::spawn(&["connect", "ws://localhost/", "--unix", &path, "--json"]);
        client.write("still served\n");
        client.expect_event("connecting");
        client.expect_event("open");
        assert_eq!(client.expect_event("message")["data"], "still served");
        assert_eq!(client.wait_exit(), 0);

        let file = dir.path("precious.txt");
        std::fs::write(&file, "keep me").expect("write");
        let mut refused = Proc::spawn(&["serve", "--unix", &file]);
        assert!(refused
            .wait_stderr("cannot listen on")
            .contains("not a socket"));
        assert_eq!(refused.wait_exit(), 1);
        assert_eq!(std::fs::read_to_string(&file).expect("read"), "keep me");
    }

    #[test]
    fn unix_flags_misused_are_usage_errors_and_a_missing_socket_is_fatal() {
        let dir = SocketDir::new("unix-usage");
        let path = dir.path("none.sock");
        let unix_url = format!("ws+unix://{path}:/");
        for args in [
            vec!["serve", "127.0.0.1:0", "--unix", &path],
            vec!["connect", &unix_url],
            vec![
                "connect",
                "ws://localhost/",
                "--unix",
                &path,
                "--proxy",
                "http://127.0.0.1:9",
            ],
        ] {
            let mut proc = Proc::spawn_with(&args, Stdio::null());
            assert_eq!(proc.wait_exit(), 2, "{args:?}");
            assert!(proc.rest_of_stdout().is_empty(), "{args:?}");
        }
        let mut hint = Proc::spawn_with(&["connect", &unix_url], Stdio::null());
        assert!(hint.wait_stderr("--unix").contains("ws://"));
        assert!(!std::path::Path::new(&path).exists(), "nothing was bound");

        let mut client = Proc::spawn(&["connect", "ws://localhost/", "--unix", &path, "--json"]);
        client.expect_event("connecting");
        let fatal = client.expect_event("fatal");
        assert_eq!(fatal["error"]["kind"], "io", "{fatal}");
        assert_eq!(client.wait_exit(), 1);
    }
}
