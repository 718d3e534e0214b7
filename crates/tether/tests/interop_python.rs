//! Interoperability with Python `websockets`, the implementation many peers meet first:
//!
//! * our client against its asyncio server (`python/server.py`),
//! * our client against a scripted sans-I/O server that sends frames we must reject
//!   (`python/raw_server.py`),
//! * its asyncio client (`python/client.py`) against our [`Server`].
//!
//! The Python interpreter comes from `TETHER_PYTHON`, else `<workspace>/.venv-test/bin/python`
//! (`scripts/test.sh` creates that venv and installs `websockets` into it). Without a usable
//! one these tests fail: they never skip.
//!
//! Compression: most tests turn it off on the Python side (`compression=None`), so they prove
//! the uncompressed path even though tether offers and accepts permessage-deflate by default.
//! The `*_deflate_*` tests run both sides with their defaults, compression on (websockets'
//! `compression="deflate"`): they compare the negotiated extension as each side reports it, and
//! round-trip compressible (JSON-like) and incompressible (random) messages up to 1 MiB in both
//! roles, through a relay that counts the bytes on the wire to prove the compression real.
//!
//!
//! Each Python peer prints result lines on stdout (a server's first line is its port) and the
//! tests compare them exactly. A [`Peer`] guard kills its process when the test ends or panics.

mod relay;

use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use relay::Relay;
use tether::proto::DeflateParams;
use tether::{
    ClientBuilder, CloseFrame, Config, DeflateConfig, Error, Message, PeerClose, ProtocolError,
    Server, ServerConfig, ShutdownHandle, WebSocket,
};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// Longest wait for any one step (a line from Python, a message, a close).
const STEP: Duration = Duration::from_secs(30);

/// Message sizes tried in both directions (the same list as `common.SIZES` in Python): the
/// frame length encodings' edges, then large messages.
const SIZES: [usize; 8] = [0, 1, 125, 126, 65535, 65536, 1 << 20, 16 << 20];

/// Message sizes of the compression tests (the same list as `common.COMPRESSION_SIZES`).
const COMPRESSION_SIZES: [usize; 8] = [0, 1, 125, 126, 4096, 65535, 65536, 1 << 20];

/// Large enough for the 16 MiB messages.
const MAX_MESSAGE: usize = 32 << 20;

// ---------------------------------------------------------------------------------------------
// Finding Python and running the peers
// ---------------------------------------------------------------------------------------------

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

/// Runs `python -c CHECK`; Ok if it exits 0.
fn python_works(python: &Path) -> Result<(), String> {
    const CHECK: &str = "import websockets.asyncio.client, websockets.asyncio.server, \
                         websockets.server; print(websockets.__version__)";
    match Command::new(python)
        .args(["-c", CHECK])
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "{}: `import websockets` failed: {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("{}: {e}", python.display())),
    }
}

/// The Python interpreter with `websockets`; panics (fails the test) when there is none.
fn python() -> &'static Path {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = PYTHON.get_or_init(|| {
        let mut tried = Vec::new();
        let mut candidates = Vec::new();
        match std::env::var_os("TETHER_PYTHON") {
            Some(p) if !p.is_empty() => candidates.push(PathBuf::from(p)),
            _ => tried.push("TETHER_PYTHON is not set".to_owned()),
        }
        candidates.push(workspace_root().join(".venv-test/bin/python"));
        for candidate in candidates {
            match python_works(&candidate) {
                Ok(()) => return Ok(candidate),
                Err(e) => tried.push(e),
            }
        }
        Err(tried.join("\n  "))
    });
    match found {
        Ok(p) => p,
        Err(tried) => panic!(
            "no Python with the `websockets` package for the interop tests; run \
             `scripts/test.sh` (it creates .venv-test with the test peers), or set \
             TETHER_PYTHON to such an interpreter.\n  {tried}"
        ),
    }
}

/// Awaits `fut` for at most [`STEP`]; panics naming `what` if it takes longer.
async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(STEP, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {STEP:?}: {what}"),
    }
}

/// A running Python peer. Dropping it kills the process (also when a test panics, and then
/// the peer's stderr is printed to help tell what happened).
struct Peer {
    name: String,
    child: Child,
    lines: UnboundedReceiver<String>,
    seen: Vec<String>,
    stderr: Arc<Mutex<Vec<u8>>>,
}

impl Peer {
    /// Starts `python tests/python/SCRIPT ARGS...`.
    fn start(script_name: &str, args: &[&str]) -> Self {
        let python = python();
        let mut child = Command::new(python)
            .arg("-u")
            .arg(script(script_name))
            .args(args)
            .env("PYTHONIOENCODING", "utf-8")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} {script_name}: {e}", python.display()));

        let (tx, lines) = unbounded_channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        std::thread::spawn(move || forward_lines(stdout, tx));

        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut err_pipe = child.stderr.take().expect("stderr is piped");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });

        Self {
            name: format!("{script_name} {}", args.join(" ")),
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// The next line the peer prints; panics if it exits first or takes too long.
    async fn line(&mut self) -> String {
        match tokio::time::timeout(STEP, self.lines.recv()).await {
            Ok(Some(line)) => {
                self.seen.push(line.clone());
                line
            }
            Ok(None) => panic!(
                "{} ended without printing another line (printed so far: {:?})\nstderr:\n{}",
                self.name,
                self.seen,
                self.stderr_text()
            ),
            Err(_) => panic!(
                "{} printed no line within {STEP:?} (printed so far: {:?})\nstderr:\n{}",
                self.name,
                self.seen,
                self.stderr_text()
            ),
        }
    }

    /// The port a server peer listens on: its first line.
    async fn port(&mut self) -> u16 {
        let line = self.line().await;
        line.parse()
            .unwrap_or_else(|_| panic!("{}: expected a port, got {line:?}", self.name))
    }

    /// Waits for the peer to exit; returns its exit status and the lines it printed that
    /// were not taken yet.
    async fn finish(&mut self) -> (ExitStatus, Vec<String>) {
        let mut rest = Vec::new();
        loop {
            match tokio::time::timeout(STEP, self.lines.recv()).await {
                Ok(Some(line)) => {
                    self.seen.push(line.clone());
                    rest.push(line);
                }
                Ok(None) => break,
                Err(_) => panic!(
                    "{} did not exit within {STEP:?} (printed: {:?})\nstderr:\n{}",
                    self.name,
                    self.seen,
                    self.stderr_text()
                ),
            }
        }
        let status = within("the peer's exit after closing stdout", async {
            loop {
                if let Some(status) = self.child.try_wait().expect("try_wait") {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        (status, rest)
    }

    /// Like [`finish`](Self::finish), and asserts that the peer succeeded.
    async fn finish_ok(&mut self) -> Vec<String> {
        let (status, rest) = self.finish().await;
        assert!(
            status.success(),
            "{} failed ({status}); printed {:?}\nstderr:\n{}",
            self.name,
            self.seen,
            self.stderr_text()
        );
        rest
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- {} printed {:?}; its stderr:\n{}",
                self.name,
                self.seen,
                self.stderr_text()
            );
        }
    }
}

fn forward_lines(stdout: impl Read, tx: UnboundedSender<String>) {
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if tx.send(line).is_err() {
            break;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Messages (the same formulas as tests/python/common.py)
// ---------------------------------------------------------------------------------------------

/// Byte i is (31 i + 7) mod 256.
fn binary_payload(size: usize) -> Vec<u8> {
    (0..size).map(|i| (31 * i + 7) as u8).collect()
}

/// Character i is the printable ASCII character 0x20 + (7 i mod 95); `size` bytes.
fn text_payload(size: usize) -> String {
    (0..size)
        .map(|i| char::from(0x20 + (7 * i % 95) as u8))
        .collect()
}

/// Non-ASCII texts (as `common.NON_ASCII`): 2-, 3- and 4-byte sequences, and 70,000 bytes of
/// them so that characters straddle read boundaries.
fn non_ascii_texts() -> Vec<String> {
    vec![
        "héllo wörld".to_owned(),
        "ελληνικά κείμενο".to_owned(),
        "中文字符测试".to_owned(),
        "emoji 🚀🦀✓".to_owned(),
        "aé中🦀".repeat(7000),
    ]
}

/// JSON-like lines, repeated and cut to `size` bytes (as `common.json_text`): compresses well.
fn json_text(size: usize) -> String {
    let mut s = String::with_capacity(size + 80);
    let mut i = 0u64;
    while s.len() < size {
        s.push_str(&format!(
            "{{\"seq\":{i},\"symbol\":\"TETH-USD\",\"price\":{},\"ok\":true}}\n",
            (i * 7919) % 100_003
        ));
        i += 1;
    }
    s.truncate(size);
    s
}

/// xorshift32 bytes: do not compress.
fn random_bytes(size: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn describe(msg: &Message) -> String {
    match msg {
        Message::Text(t) => format!("text of {} bytes", t.len()),
        Message::Binary(b) => format!("binary of {} bytes", b.len()),
    }
}

/// Sends `msg` and asserts that the next message received is identical.
async fn assert_echo(ws: &mut WebSocket, msg: Message) {
    let label = describe(&msg);
    within(&format!("sending {label}"), ws.send(msg.clone()))
        .await
        .unwrap_or_else(|e| panic!("sending {label}: {e}"));
    let got = match within(&format!("the echo of {label}"), ws.recv()).await {
        Some(Ok(got)) => got,
        Some(Err(e)) => panic!("receiving the echo of {label}: {e}"),
        None => panic!(
            "connection closed (code {}) before the echo of {label}",
            ws.close_code()
        ),
    };
    // No assert_eq!: a 16 MiB mismatch would print 16 MiB.
    if got != msg {
        let first = got
            .as_bytes()
            .iter()
            .zip(msg.as_bytes())
            .position(|(a, b)| a != b);
        panic!(
            "echo differs: sent {label}, got {} (first differing byte: {first:?})",
            describe(&got)
        );
    }
}

fn url_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

// ---------------------------------------------------------------------------------------------
// Our client, Python's asyncio server
// ---------------------------------------------------------------------------------------------

async fn python_server() -> (Peer, u16) {
    let mut peer = Peer::start("server.py", &[]);
    let port = peer.port().await;
    (peer, port)
}

async fn connect_to(port: u16, path: &str, config: Config) -> WebSocket {
    let url = format!("ws://127.0.0.1:{port}{path}");
    within(
        &format!("connecting to {url}"),
        ClientBuilder::new(&url).config(config).connect(),
    )
    .await
    .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

fn big_messages() -> Config {
    Config::default().max_message_size(MAX_MESSAGE)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_round_trips_every_size_with_python_server() {
    let (mut py, port) = python_server().await;
    let mut ws = connect_to(port, "/echo", big_messages()).await;
    for size in SIZES {
        assert_echo(&mut ws, Message::binary(binary_payload(size))).await;
        assert_echo(&mut ws, Message::text(text_payload(size))).await;
    }
    within("closing", ws.close(1000, "")).await.unwrap();
    assert_eq!(py.line().await, "closed 1000 ''");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_round_trips_non_ascii_text_with_python_server() {
    let (mut py, port) = python_server().await;
    let mut ws = connect_to(port, "/echo", Config::default()).await;
    for text in non_ascii_texts() {
        assert_echo(&mut ws, Message::text(text)).await;
    }
    within("closing", ws.close(1000, "")).await.unwrap();
    assert_eq!(py.line().await, "closed 1000 ''");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ping_to_python_server_returns_round_trip_time() {
    let (mut py, port) = python_server().await;
    let mut ws = connect_to(port, "/echo", Config::default()).await;
    for _ in 0..2 {
        let rtt = within("ping", ws.ping()).await.expect("ping");
        assert!(
            rtt > Duration::ZERO && rtt < Duration::from_secs(5),
            "rtt {rtt:?}"
        );
    }
    // Still usable after the pings.
    assert_echo(&mut ws, Message::text("after ping")).await;
    within("closing", ws.close(1000, "")).await.unwrap();
    assert_eq!(py.line().await, "closed 1000 ''");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_close_code_and_reason_reach_python_server() {
    let (mut py, port) = python_server().await;
    let mut ws = connect_to(port, "/echo", Config::default()).await;
    assert_echo(&mut ws, Message::text("hello")).await;
    within("closing", ws.close(1000, "bye ✓"))
        .await
        .expect("close");
    assert_eq!(py.line().await, "closed 1000 'bye ✓'");
    assert!(ws.is_closed());
    // Python echoes our Close frame.
    assert_eq!(ws.close_code(), 1000);
    assert_eq!(
        ws.peer_close(),
        &PeerClose::Frame(CloseFrame {
            code: 1000,
            reason: "bye ✓".to_owned()
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reports_close_codes_sent_by_python_server() {
    let (mut py, port) = python_server().await;
    for (code, reason) in [(1001, "going away"), (4000, "custom: 🦀 done")] {
        let path = format!("/close?code={code}&reason={}", url_encode(reason));
        let mut ws = connect_to(port, &path, Config::default()).await;
        match within("recv until the server's close", ws.recv()).await {
            None => {}
            Some(other) => panic!("expected the connection to end, got {other:?}"),
        }
        assert_eq!(ws.close_code(), code);
        assert_eq!(
            ws.peer_close(),
            &PeerClose::Frame(CloseFrame {
                code,
                reason: reason.to_owned()
            })
        );
        // What we answered: the code echoed (the reason is ours to choose).
        let answer = py.line().await;
        assert!(
            answer.starts_with(&format!("closed-by-server {code} ")),
            "Python saw {answer:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Our client, a scripted Python server sending what we must reject
// ---------------------------------------------------------------------------------------------

/// Connects to `raw_server.py` at `path`, expects `recv` to fail with `expected`, then the
/// connection to end, and Python to see a Close frame with the error's code and reason.
async fn assert_rejected(path: &str, config: Config, expected: ProtocolError) {
    let mut py = Peer::start("raw_server.py", &[]);
    let port = py.port().await;
    let mut ws = connect_to(port, path, config).await;
    match within("recv of the bad frame", ws.recv()).await {
        Some(Err(Error::Protocol(e))) => assert_eq!(e, expected),
        other => panic!("{path}: expected protocol error {expected:?}, got {other:?}"),
    }
    match within("recv after the error", ws.recv()).await {
        None => {}
        Some(other) => panic!("{path}: expected the end of the connection, got {other:?}"),
    }
    assert_eq!(
        py.line().await,
        format!(
            "client-closed {} '{}'",
            expected.close_code(),
            expected.close_reason()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_rejects_invalid_utf8_from_python_with_1007() {
    assert_rejected(
        "/invalid-utf8",
        Config::default(),
        ProtocolError::InvalidUtf8,
    )
    .await;
    assert_eq!(ProtocolError::InvalidUtf8.close_code(), 1007);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_rejects_reserved_opcode_from_python_with_1002() {
    assert_rejected(
        "/reserved-opcode",
        Config::default(),
        ProtocolError::UnknownOpcode(3),
    )
    .await;
    assert_eq!(ProtocolError::UnknownOpcode(3).close_code(), 1002);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_rejects_message_over_max_size_from_python_with_1009() {
    let limit = || Config::default().max_message_size(1024);
    let too_big = ProtocolError::MessageTooLarge { max: 1024 };
    assert_eq!(too_big.close_code(), 1009);
    // One frame, one byte over.
    assert_rejected("/binary?size=1025", limit(), too_big.clone()).await;
    // Three frames that only together exceed the limit.
    assert_rejected("/binary?size=1200&fragments=3", limit(), too_big).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_accepts_message_of_exactly_max_size_from_python() {
    let mut py = Peer::start("raw_server.py", &[]);
    let port = py.port().await;
    let config = Config::default().max_message_size(1024);
    for fragments in [1, 4] {
        let path = format!("/binary?size=1024&fragments={fragments}");
        let mut ws = connect_to(port, &path, config.clone()).await;
        match within("recv", ws.recv()).await {
            Some(Ok(Message::Binary(b))) => assert!(b == binary_payload(1024), "payload differs"),
            other => panic!("{path}: expected 1024 bytes, got {other:?}"),
        }
        within("closing", ws.close(1000, "ok")).await.unwrap();
        assert_eq!(py.line().await, "client-closed 1000 'ok'");
    }
}

// ---------------------------------------------------------------------------------------------
// Python's asyncio client, our server
// ---------------------------------------------------------------------------------------------

/// How a connection ended, as the echo server's handler saw it.
#[derive(Debug, PartialEq, Eq)]
struct Ended {
    /// The first error `recv` returned, if any.
    error: Option<String>,
    close_code: u16,
    close_frame: PeerClose,
}

/// The extension negotiation of one connection, as the echo server's handler saw it.
#[derive(Debug)]
struct Negotiated {
    /// The client's `Sec-WebSocket-Extensions` offer.
    offer: Option<String>,
    /// tether's answer, [`WebSocket::extensions`].
    answer: Option<String>,
}

struct EchoServer {
    port: u16,
    handle: ShutdownHandle,
    ended: UnboundedReceiver<Ended>,
    negotiated: UnboundedReceiver<Negotiated>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo_server() -> EchoServer {
    let config = ServerConfig::default().config(big_messages());
    let server = Server::bind("127.0.0.1:0", config).await.expect("bind");
    let port = server.local_addr().expect("local_addr").port();
    let handle = server.shutdown_handle();
    let (tx, ended) = unbounded_channel();
    let (negotiated_tx, negotiated) = unbounded_channel();
    let task = tokio::spawn(server.serve(move |mut ws, request| {
        let tx = tx.clone();
        let _ = negotiated_tx.send(Negotiated {
            offer: request.extensions.clone(),
            answer: ws.extensions().map(str::to_owned),
        });
        async move {
            let mut error = None;
            while let Some(msg) = ws.recv().await {
                match msg {
                    Ok(msg) => {
                        if let Err(e) = ws.send(msg).await {
                            error.get_or_insert(format!("send: {e}"));
                            break;
                        }
                    }
                    Err(e) => {
                        error.get_or_insert(format!("recv: {e}"));
                        break;
                    }
                }
            }
            // Finish the closing handshake that ended the loop.
            while ws.recv().await.is_some() {}
            let _ = tx.send(Ended {
                error,
                close_code: ws.close_code(),
                close_frame: ws.peer_close().clone(),
            });
        }
    }));
    EchoServer {
        port,
        handle,
        ended,
        negotiated,
        task,
    }
}

impl EchoServer {
    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port)
    }

    async fn negotiated(&mut self) -> Negotiated {
        within("the server's handler to start", self.negotiated.recv())
            .await
            .expect("the server's handler reported")
    }

    async fn ended(&mut self) -> Ended {
        within("the end of the server's connection", self.ended.recv())
            .await
            .expect("the server's handler reported")
    }
}

fn closed_normally(reason: &str) -> Ended {
    Ended {
        error: None,
        close_code: 1000,
        close_frame: PeerClose::Frame(CloseFrame {
            code: 1000,
            reason: reason.to_owned(),
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_round_trips_every_size_through_tether_server() {
    let mut server = echo_server().await;
    let mut py = Peer::start("client.py", &[&server.url(), "echo"]);
    let mut expected = Vec::new();
    for size in SIZES {
        expected.push(format!("echoed binary {size}"));
        expected.push(format!("echoed text {size}"));
    }
    for text in non_ascii_texts() {
        expected.push(format!("echoed non-ascii {}", text.len()));
    }
    expected.push("done".to_owned());
    assert_eq!(py.finish_ok().await, expected);
    assert_eq!(server.ended().await, closed_normally(""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_ping_gets_pong_from_tether_server() {
    let mut server = echo_server().await;
    let mut py = Peer::start("client.py", &[&server.url(), "ping"]);
    let pong = py.line().await;
    let latency: f64 = pong
        .strip_prefix("pong ")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("expected `pong SECONDS`, got {pong:?}"));
    assert!((0.0..5.0).contains(&latency), "latency {latency}");
    assert_eq!(py.finish_ok().await, ["echoed after-ping"]);
    // The context manager closed with 1000 and no reason.
    assert_eq!(server.ended().await, closed_normally(""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_close_1000_is_clean_on_both_sides() {
    let mut server = echo_server().await;
    let mut py = Peer::start("client.py", &[&server.url(), "close"]);
    // Python got our answering Close frame with its code (1000); echoing the reason too is
    // not required, so only the code is compared.
    let lines = py.finish_ok().await;
    assert_eq!(lines.len(), 1, "Python printed {lines:?}");
    assert!(
        lines[0].starts_with("closed clean 1000 "),
        "Python printed {lines:?}"
    );
    assert_eq!(server.ended().await, closed_normally("python done ✓"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_shutdown_closes_python_client_with_1001() {
    let mut server = echo_server().await;
    let mut py = Peer::start("client.py", &[&server.url(), "wait-close"]);
    assert_eq!(py.line().await, "echoed hello");
    assert_eq!(py.line().await, "ready");
    server.handle.shutdown();
    let served = within("serve() to return after shutdown", &mut server.task).await;
    served.expect("serve task").expect("serve");
    assert_eq!(py.finish_ok().await, ["closed 1001 'server shutting down'"]);
    let ended = server.ended().await;
    assert_eq!(ended.error, None);
    // Python answered our Close by echoing it.
    assert_eq!(ended.close_code, 1001);
}

// ---------------------------------------------------------------------------------------------
// Compression: permessage-deflate on both sides, with their defaults
// ---------------------------------------------------------------------------------------------

/// The line `common.describe_extensions` prints for permessage-deflate with `params`, seen from
/// the Python side, which is the client when `python_is_client`.
fn python_negotiated_line(params: &DeflateParams, python_is_client: bool) -> String {
    let title = |b: bool| if b { "True" } else { "False" };
    let (local_nct, remote_nct, local_bits, remote_bits) = if python_is_client {
        (
            params.client_no_context_takeover,
            params.server_no_context_takeover,
            params.client_max_window_bits,
            params.server_max_window_bits,
        )
    } else {
        (
            params.server_no_context_takeover,
            params.client_no_context_takeover,
            params.server_max_window_bits,
            params.client_max_window_bits,
        )
    };
    format!(
        "negotiated permessage-deflate local_no_context_takeover={} \
         remote_no_context_takeover={} local_max_window_bits={local_bits} \
         remote_max_window_bits={remote_bits}",
        title(local_nct),
        title(remote_nct)
    )
}

/// The compression tests' messages, as `client.py compress` sends them: for every size,
/// JSON-like text, random bytes and JSON-like bytes; then the non-ASCII texts. With each, its
/// label and whether it compresses.
fn compression_messages() -> Vec<(Message, String, bool)> {
    let mut messages = Vec::new();
    for size in COMPRESSION_SIZES {
        messages.push((Message::text(json_text(size)), format!("json {size}"), true));
        messages.push((
            Message::binary(random_bytes(size, size as u32)),
            format!("random {size}"),
            false,
        ));
        messages.push((
            Message::binary(json_text(size).into_bytes()),
            format!("json-binary {size}"),
            true,
        ));
    }
    for text in non_ascii_texts() {
        let label = format!("non-ascii {}", text.len());
        messages.push((Message::text(text), label, true));
    }
    messages
}

/// Asserts that `wire` bytes carried `messages` one way compressed: no fewer than the random
/// bytes, which cannot shrink, and well under the total, as the rest compresses many-fold.
fn assert_compressed_on_wire(wire: u64, messages: &[(Message, String, bool)], direction: &str) {
    let (mut compressible, mut random) = (0usize, 0usize);
    for (msg, _, compresses) in messages {
        if *compresses {
            compressible += msg.len();
        } else {
            random += msg.len();
        }
    }
    // Handshake, frame headers and the closing handshake.
    let slack = 16 << 10;
    eprintln!(
        "{direction}: {wire} bytes on the wire for {} bytes of messages ({compressible} \
         compressible)",
        compressible + random
    );
    assert!(
        wire < (random + compressible / 4 + slack) as u64,
        "{direction}: {wire} bytes on the wire for {random} random and {compressible} \
         compressible bytes: not compressed"
    );
    assert!(
        wire > random as u64,
        "{direction}: {wire} bytes cannot carry {random} random bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_negotiates_deflate_with_python_server_and_round_trips() {
    let mut py = Peer::start("server.py", &["deflate"]);
    let port = py.port().await;
    let relay = Relay::start(([127, 0, 0, 1], port).into()).await;
    let mut ws = connect_to(relay.port, "/echo", Config::default()).await;

    // Both sides report the same negotiation.
    let header = py.line().await;
    let answer = ws.extensions().expect("tether negotiated an extension");
    assert_eq!(
        header,
        format!("extensions {answer}"),
        "Python's response header"
    );
    let params = DeflateConfig::default()
        .client_accept(answer)
        .expect("tether accepted the answer");
    assert_eq!(
        answer,
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
         server_max_window_bits=12; client_max_window_bits=12",
        "Python's answer to tether's default offer"
    );
    assert_eq!(py.line().await, python_negotiated_line(&params, false));

    let messages = compression_messages();
    for (msg, _, _) in &messages {
        assert_echo(&mut ws, msg.clone()).await;
    }
    within("closing", ws.close(1000, "")).await.unwrap();
    assert_eq!(py.line().await, "closed 1000 ''");
    assert_compressed_on_wire(relay.upstream_bytes(), &messages, "tether to Python");
    assert_compressed_on_wire(relay.downstream_bytes(), &messages, "Python to tether");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_negotiates_deflate_with_tether_server_and_round_trips() {
    let mut server = echo_server().await;
    let relay = Relay::start(([127, 0, 0, 1], server.port).into()).await;
    let url = format!("ws://127.0.0.1:{}/", relay.port);
    let mut py = Peer::start("client.py", &[&url, "compress", "deflate"]);

    // What tether saw and answered, and what Python says it got.
    let negotiated = server.negotiated().await;
    let offer = negotiated.offer.expect("Python offered an extension");
    assert!(offer.starts_with("permessage-deflate"), "offer {offer:?}");
    let (expected, params) = DeflateConfig::default()
        .server_accept(&offer)
        .expect("tether's defaults accept Python's offer");
    assert_eq!(negotiated.answer.as_deref(), Some(expected.as_str()));
    assert_eq!(py.line().await, format!("extensions {expected}"));
    assert_eq!(py.line().await, python_negotiated_line(&params, true));

    let messages = compression_messages();
    let mut lines: Vec<String> = messages
        .iter()
        .map(|(_, label, _)| format!("echoed {label}"))
        .collect();
    lines.push("done".to_owned());
    assert_eq!(py.finish_ok().await, lines);
    assert_eq!(server.ended().await, closed_normally(""));
    assert_compressed_on_wire(relay.upstream_bytes(), &messages, "Python to tether");
    assert_compressed_on_wire(relay.downstream_bytes(), &messages, "tether to Python");
}

// ---------------------------------------------------------------------------------------------
// A resumable session against Python's plain server
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumable_client_against_python_fails_clearly_or_falls_back_as_configured() {
    let (_py, port) = python_server().await;
    let url = format!("ws://127.0.0.1:{port}/echo");
    // Default: a clear error, and nothing else.
    let session = ClientBuilder::new(&url).session().start();
    match within("the session's first answer", session.recv()).await {
        Some(Err(tether::Error::SessionsNotOffered)) => {}
        other => panic!("expected SessionsNotOffered, got {other:?}"),
    }
    assert!(within("the end", session.recv()).await.is_none());
    assert!(session.send("late").await.is_err());
    // Configured to fall back: a plain reconnecting client, without the guarantees.
    let session = ClientBuilder::new(&url)
        .session()
        .fallback_to_plain(true)
        .start();
    for i in 0..5 {
        session.send(format!("plain {i}")).await.unwrap();
    }
    for i in 0..5 {
        match within("the echo", session.recv()).await {
            Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), format!("plain {i}")),
            other => panic!("expected the echo, got {other:?}"),
        }
    }
    // Plain messages on the wire: the echoes above are byte-for-byte what was sent, no
    // resume-protocol framing.
    assert!(!session.is_resumable());
    within("closing", session.close()).await.unwrap();
}
