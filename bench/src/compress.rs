//! The compression section: 1 KiB JSON-like text messages echoed with permessage-deflate
//! (no context takeover either way) by tether at several levels, by tether with compression
//! off (the same workload uncompressed), by Node's `ws` and by Python's `websockets`.
//!
//! The load generator (`bench deflate-load ...`) offers tether's default permessage-deflate
//! (`server_no_context_takeover; client_no_context_takeover; client_max_window_bits`) with
//! the handshake written by hand, checks the answer with tether's own negotiation code, and
//! compresses its messages once before the run with a client-role `tether_proto::Connection`
//! (so each frame is a valid compressed, masked text frame under the agreed parameters).
//! Every connection first makes one checked exchange: the echo must come back compressed
//! (RSV1) when deflate was agreed and must inflate to the message sent. After that the
//! replies are only counted, as in the echo section (no inflating on the load side), and
//! every byte read from the servers' connections is counted: bytes on the wire per payload
//! byte is the compression ratio of the server's side.

use std::cell::Cell;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::{stream, StreamExt};
use tether::proto::{Connection, DeflateConfig, Event, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::args::Args;
use crate::load::{read_shared, run_local, secs};
use crate::servers::Impl;
use crate::stats::{Phase, Shared};
use crate::wire::{self, FrameCounter};

/// Distinct messages each connection cycles through (at least as many as are in flight).
const DISTINCT: usize = 16;
/// The payload size of the section's messages.
pub(crate) const PAYLOAD: usize = 1024;

// ---------------------------------------------------------------------------------------
// Payloads

/// Deterministic pseudo-random numbers (64-bit LCG, high bits).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) as u32
    }

    fn below(&mut self, n: u32) -> u32 {
        self.next() % n
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len() as u32) as usize]
    }
}

const NAMES: [&str; 8] = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
];
const PRODUCTS: [&str; 8] = [
    "widget", "gadget", "sprocket", "gizmo", "flange", "bracket", "spindle", "coupling",
];
const TAGS: [&str; 6] = ["new", "sale", "popular", "limited", "eco", "imported"];
const WORDS: [&str; 12] = [
    "the", "order", "was", "shipped", "to", "customer", "with", "express", "delivery", "and",
    "tracking", "number",
];

/// Message `index` of the section: an order-like JSON object of exactly `size` bytes
/// (`size` ≥ 512), ASCII, with numbers and names that vary from one message to the next.
pub(crate) fn json_message(index: usize, size: usize) -> String {
    let mut rng = Lcg(0x9e37_79b9_7f4a_7c15 ^ (index as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9));
    let user = rng.pick(&NAMES);
    let mut s = format!(
        "{{\"id\":{},\"type\":\"order.updated\",\"ts\":\"2026-11-25T{:02}:{:02}:{:02}.{:03}Z\",\
         \"user\":{{\"id\":{},\"name\":\"{user}\",\"email\":\"{user}@example.com\",\
         \"verified\":{}}},\"items\":[",
        100_000 + index,
        rng.below(24),
        rng.below(60),
        rng.below(60),
        rng.below(1000),
        10_000 + rng.below(90_000),
        rng.below(2) == 1,
    );
    let tail = "],\"note\":\"\"}".len() + 24;
    let mut first = true;
    loop {
        let item = format!(
            "{{\"sku\":\"SKU-{:05}\",\"name\":\"{}\",\"qty\":{},\"price\":{}.{:02},\
             \"tags\":[\"{}\",\"{}\"]}}",
            rng.below(100_000),
            rng.pick(&PRODUCTS),
            1 + rng.below(20),
            rng.below(500),
            rng.below(100),
            rng.pick(&TAGS),
            rng.pick(&TAGS),
        );
        if s.len() + item.len() + 1 + tail > size {
            break;
        }
        if !first {
            s.push(',');
        }
        first = false;
        s.push_str(&item);
    }
    s.push_str("],\"note\":\"");
    while s.len() < size - 2 {
        s.push_str(rng.pick(&WORDS));
        s.push(' ');
    }
    s.truncate(size - 2);
    s.push_str("\"}");
    s
}

// ---------------------------------------------------------------------------------------
// The peers outside Rust

/// `bench/node`, with the `ws` echo server and its package files.
fn node_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("node")
}

/// Installs `ws` with `npm ci` in `bench/node` unless it is there already.
pub(crate) fn ensure_node_modules() -> io::Result<()> {
    let dir = node_dir();
    if dir.join("node_modules/ws/package.json").is_file() {
        return Ok(());
    }
    eprintln!("compression: npm ci in {}", dir.display());
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(io::stderr()))
        .status()
        .map_err(|e| io::Error::other(format!("npm ci: {e}")))?;
    if !status.success() {
        return Err(io::Error::other(format!("npm ci failed ({status})")));
    }
    Ok(())
}

/// The Python to run the `websockets` server with: `--python`, else the test venv's
/// (`.venv-test` at the workspace root, which `scripts/test.sh` sets up), else `python3`.
pub(crate) fn python(chosen: Option<&str>) -> PathBuf {
    if let Some(p) = chosen {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv-test/bin/python");
    if venv.is_file() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// The program and arguments that start `kind` (Node `ws` or Python `websockets`) pinned to
/// `cpu` with `taskset`, listening on a free port.
pub(crate) fn external_server(kind: Impl, cpu: usize, python: &Path) -> (PathBuf, Vec<String>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (interpreter, script) = match kind {
        Impl::NodeWs => (PathBuf::from("node"), dir.join("node/echo.mjs")),
        _ => (python.to_path_buf(), dir.join("python/echo.py")),
    };
    let args = vec![
        "-c".to_owned(),
        cpu.to_string(),
        interpreter.display().to_string(),
        script.display().to_string(),
        "0".to_owned(),
    ];
    (PathBuf::from("taskset"), args)
}

// ---------------------------------------------------------------------------------------
// Load generator

/// Bytes counted while measuring.
#[derive(Default)]
struct Tally {
    wire: Cell<u64>,
    payload: Cell<u64>,
}

/// One upgraded connection with its frames ready: `frames` holds the connection's
/// [`DISTINCT`] (or more) compressed frames twice over, `offsets[i]` where frame `i` of
/// that doubled sequence starts, so any run of up to that many consecutive frames is one
/// slice.
struct Ready {
    tcp: TcpStream,
    frames: Vec<u8>,
    offsets: Vec<usize>,
}

/// `bench deflate-load --addr A --conns N --size B --inflight K --warmup S --duration S
/// [--require-deflate]`
pub(crate) fn load(args: &Args) -> io::Result<()> {
    args.only(&[
        "addr",
        "conns",
        "size",
        "inflight",
        "warmup",
        "duration",
        "cpu",
        "require-deflate",
    ])?;
    let addr = args
        .get("addr")
        .ok_or_else(|| io::Error::other("--addr"))?
        .to_owned();
    let conns: usize = args.parse_or("conns", 10)?;
    let size: usize = args.parse_or("size", PAYLOAD)?;
    if size < 512 {
        return Err(io::Error::other("--size: at least 512 bytes"));
    }
    let inflight: usize = args.parse_or::<usize>("inflight", 1)?.max(1);
    let warmup = secs(args, "warmup", 1.0)?;
    let duration = secs(args, "duration", 3.0)?;
    let require = args.flag("require-deflate");
    let line = run_local(args, async move {
        let messages: Vec<String> = (0..DISTINCT.max(inflight))
            .map(|i| json_message(i, size))
            .collect();
        let opened: Vec<io::Result<Ready>> = stream::iter(0..conns)
            .map(|_| open(&addr, &messages, require))
            .buffered(64)
            .collect()
            .await;
        let shared = Rc::new(Shared::default());
        let tally = Rc::new(Tally::default());
        for ready in opened {
            let task = drive(ready?, inflight, size, shared.clone(), tally.clone());
            tokio::task::spawn_local(task);
        }
        let mut line = shared.measure(warmup, duration).await;
        let _ = write!(
            line,
            " wire_bytes={} payload_bytes={}",
            tally.wire.get(),
            tally.payload.get()
        );
        Ok(line)
    })?;
    println!("{line}");
    Ok(())
}

/// Connects, offers permessage-deflate, prepares the frames and makes the checked exchange.
async fn open(addr: &str, messages: &[String], require: bool) -> io::Result<Ready> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let deflate = DeflateConfig::default();
    let offer = format!("Sec-WebSocket-Extensions: {}\r\n", deflate.client_offer());
    let (head, extra) = wire::handshake_with(&mut tcp, addr, &offer, true).await?;
    let mut conn = Connection::new(
        Role::Client,
        tether::proto::Config::default(),
        Instant::now(),
    );
    match crate::servers::header_value(&head, "sec-websocket-extensions") {
        Some(answer) => {
            let params = deflate.client_accept(&answer).map_err(|e| {
                io::Error::other(format!("extension answer {answer:?}: {}", e.reason))
            })?;
            conn.enable_deflate(params, &deflate);
        }
        None if require => {
            return Err(io::Error::other(
                "the server did not agree to permessage-deflate",
            ))
        }
        None => {}
    }
    let mut one_by_one = Vec::with_capacity(messages.len());
    for m in messages {
        conn.send_text(m).map_err(io::Error::other)?;
        one_by_one.push(conn.take_transmit());
    }
    tcp.write_all(&one_by_one[0]).await?;
    let compressed = check_echo(&mut tcp, &mut conn, extra, &messages[0]).await?;
    if conn.deflate_enabled() && !compressed {
        return Err(io::Error::other(
            "deflate was agreed but the echo came back uncompressed",
        ));
    }
    let mut frames = Vec::new();
    let mut offsets = vec![0];
    for _ in 0..2 {
        for f in &one_by_one {
            frames.extend_from_slice(f);
            offsets.push(frames.len());
        }
    }
    Ok(Ready {
        tcp,
        frames,
        offsets,
    })
}

/// Reads the echo of the first message through `conn` (inflating it); returns whether its
/// first frame had RSV1 set (came compressed). Fails unless it is the text sent.
async fn check_echo(
    tcp: &mut TcpStream,
    conn: &mut Connection,
    mut pending: Vec<u8>,
    expected: &str,
) -> io::Result<bool> {
    let mut first_byte = None;
    let mut buf = vec![0u8; 16 << 10];
    loop {
        if let Some(&b) = pending.first() {
            first_byte.get_or_insert(b);
            conn.receive(&pending, Instant::now());
            pending.clear();
        }
        while let Some(event) = conn.poll_event() {
            match event {
                Event::Text(text) if text.as_str() == expected => {
                    return Ok(first_byte.is_some_and(|b| b & 0x40 != 0));
                }
                Event::Text(_) => {
                    return Err(io::Error::other("the echo differs from the message"))
                }
                Event::Binary(_) => return Err(io::Error::other("the echo came back as binary")),
                Event::Close(_) => return Err(io::Error::other("the server closed")),
                Event::Error(e) => return Err(io::Error::other(format!("echo: {e}"))),
                Event::Ping(_) | Event::Pong { .. } => {}
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no echo in 10 s"))??;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

/// One connection: keeps `inflight` messages out, cycling through its frames, one write per
/// read with as many frames as came back.
async fn drive(ready: Ready, inflight: usize, size: usize, shared: Rc<Shared>, tally: Rc<Tally>) {
    if let Err(e) = drive_inner(ready, inflight, size, &shared, &tally).await {
        shared.error(e);
    }
}

async fn drive_inner(
    ready: Ready,
    inflight: usize,
    size: usize,
    shared: &Shared,
    tally: &Tally,
) -> io::Result<()> {
    let Ready {
        mut tcp,
        frames,
        offsets,
    } = ready;
    let distinct = (offsets.len() - 1) / 2;
    let inflight = inflight.min(distinct);
    let mut counter = FrameCounter::default();
    let mut sent: VecDeque<Instant> = VecDeque::with_capacity(inflight);
    let start = Instant::now();
    tcp.write_all(&frames[..offsets[inflight]]).await?;
    sent.extend(std::iter::repeat_n(start, inflight));
    let mut next = inflight % distinct;
    loop {
        let mut got = 0;
        let open = read_shared(&mut tcp, |data| {
            if shared.phase.get() == Phase::Measure {
                tally.wire.set(tally.wire.get() + data.len() as u64);
            }
            got = counter.feed(data);
        })
        .await?;
        if !open {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if counter.closed {
            return Err(io::Error::other("server sent Close"));
        }
        if got == 0 {
            continue;
        }
        let now = Instant::now();
        let got = got.min(sent.len());
        if shared.phase.get() == Phase::Measure {
            tally.payload.set(tally.payload.get() + (got * size) as u64);
        }
        for start in sent.drain(..got) {
            shared.complete(start, now);
        }
        if shared.stopped() {
            return Ok(());
        }
        tcp.write_all(&frames[offsets[next]..offsets[next + got]])
            .await?;
        sent.extend(std::iter::repeat_n(now, got));
        next = (next + got) % distinct;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_json_of_the_size_asked() {
        let a = json_message(0, PAYLOAD);
        let b = json_message(1, PAYLOAD);
        assert_eq!((a.len(), b.len()), (PAYLOAD, PAYLOAD));
        assert_ne!(a, b);
        assert!(a.is_ascii());
        for m in [&a, &b, &json_message(5, 600)] {
            let v: serde_json::Value = serde_json::from_str(m).unwrap();
            assert!(v["items"].as_array().is_some_and(|i| !i.is_empty()), "{m}");
        }
    }

    #[test]
    fn prepared_frames_inflate_to_the_message() {
        // A client core compresses, a server core with the same agreement inflates.
        let config = DeflateConfig::default();
        let (answer, server_params) = config.server_accept(&config.client_offer()).unwrap();
        let client_params = config.client_accept(&answer).unwrap();
        let now = Instant::now();
        let mut client = Connection::new(Role::Client, Default::default(), now);
        client.enable_deflate(client_params, &config);
        let mut server = Connection::new(Role::Server, Default::default(), now);
        server.enable_deflate(server_params, &config);
        let text = json_message(3, PAYLOAD);
        client.send_text(&text).unwrap();
        let frame = client.take_transmit();
        assert_eq!(frame[0], 0x80 | 0x40 | 0x1, "FIN, RSV1, text");
        assert!(frame.len() < PAYLOAD / 2, "{} bytes", frame.len());
        server.receive(&frame, now);
        match server.poll_event() {
            Some(Event::Text(t)) => assert_eq!(t.as_str(), text),
            other => panic!("{other:?}"),
        }
    }
}
