//! Abuse, measured: what slow attackers cost a tether server, and what a well-behaved client
//! sees meanwhile. Each scenario starts a fresh `abuse-server` (a tether echo `Server` with
//! the default `ServerConfig`, on core 0) and drives it from this process (core 1):
//!
//! - **baseline:** one well-behaved client alone: echo round trips of 64-byte messages, one
//!   every 5 ms, with their latency;
//! - **slowloris:** the same client while 1,000 attackers each send the opening handshake
//!   one byte per second (reconnecting when the server drops them, so that 1,000 press at
//!   all times);
//! - **large messages:** 1,000 connections each start a binary message just under the
//!   default 1 MiB limit and send it at 64 KiB/s, against the default server (256 MiB
//!   message budget) and against one with the budget off.
//!
//! For each: the server's peak RSS (`VmHWM`), what happened to the attackers, and the
//! well-behaved client's p50/p99/max. `cargo run --release -p bench --bin bench -- abuse`
//! runs it; see `docs/benchmarks.md` ("Abuse").

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tether::proto::handshake::{generate_key, ClientHandshake, ClientRequest, HeadLimits};
use tether::{ClientBuilder, Message, ServerConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::args::Args;
use crate::hist::Histogram;
use crate::load::run_local;
use crate::proc::Child;

/// Attacking connections per scenario.
const ATTACKERS: usize = 1000;
/// How long the well-behaved client measures in each scenario.
const MEASURE: Duration = Duration::from_secs(20);
/// Its pace: one round trip every this long.
const PACE: Duration = Duration::from_millis(5);
/// The large messages: just under the default 1 MiB limit…
const LARGE: u64 = (1 << 20) - 1;
/// …sent at this many bytes per second each.
const LARGE_RATE: usize = 64 << 10;

/// `abuse-server --budget default|none`: a tether echo server; prints `LISTENING addr`.
pub(crate) fn server(args: &Args) -> io::Result<()> {
    args.only(&["budget", "cpu"])?;
    crate::exit_when_stdin_closes();
    let mut config = ServerConfig::default();
    if args.get("budget") == Some("none") {
        config = config.message_budget(None);
    }
    run_local(args, async move {
        let server = tether::Server::bind("127.0.0.1:0", config).await?;
        println!("LISTENING {}", server.local_addr()?);
        server
            .serve(|mut ws, _request| async move {
                while let Some(Ok(msg)) = ws.recv().await {
                    if ws.send(msg).await.is_err() {
                        break;
                    }
                }
            })
            .await
    })
}

/// What the attackers of one scenario saw.
#[derive(Default)]
struct Attack {
    /// Connections the server closed (by FIN or reset, before or after a Close frame).
    dropped: u64,
    /// Close frames with 1013 (the message budget).
    closed_1013: u64,
    /// Messages the server echoed whole.
    echoed: u64,
    /// Time from connect to the server's drop, summed (for the mean).
    held_for: Duration,
}

/// One scenario's numbers.
struct Outcome {
    name: &'static str,
    peak_rss: u64,
    latency: Option<(f64, f64, f64, u64)>,
    attack: Option<Attack>,
}

fn status_kb(pid: u32, field: &str) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| io::Error::other(format!("no {field} in /proc/{pid}/status")))
}

/// The opening request a tether client would send to `addr`.
fn request_bytes(addr: SocketAddr) -> Vec<u8> {
    let request = ClientRequest {
        host: addr.to_string(),
        ..ClientRequest::default()
    };
    ClientHandshake::new(&request, generate_key(), HeadLimits::default())
        .request_bytes()
        .to_vec()
}

/// Round trips of the well-behaved client for [`MEASURE`]: (p50 ms, p99 ms, max ms, count).
async fn measure(addr: SocketAddr) -> io::Result<(f64, f64, f64, u64)> {
    let mut ws = ClientBuilder::new(format!("ws://{addr}/"))
        .connect()
        .await
        .map_err(io::Error::other)?;
    let mut hist = Histogram::default();
    let mut max = 0u64;
    let mut count = 0u64;
    let end = Instant::now() + MEASURE;
    let mut tick = tokio::time::interval(PACE);
    let payload = Message::binary(vec![0x2a; 64]);
    while Instant::now() < end {
        tick.tick().await;
        let sent = Instant::now();
        ws.send(payload.clone()).await.map_err(io::Error::other)?;
        match ws.recv().await {
            Some(Ok(_)) => {}
            other => return Err(io::Error::other(format!("the echo: {other:?}"))),
        }
        let nanos = sent.elapsed().as_nanos() as u64;
        hist.record(nanos);
        max = max.max(nanos);
        count += 1;
    }
    let _ = ws.close(1000, "").await;
    let ms = |n: u64| n as f64 / 1e6;
    Ok((
        ms(hist.quantile(0.5)),
        ms(hist.quantile(0.99)),
        ms(max),
        count,
    ))
}

/// One slowloris attacker until `end`: sends `request` a byte a second, reconnecting when the
/// server drops it.
async fn slowloris(
    addr: SocketAddr,
    request: Rc<Vec<u8>>,
    end: Instant,
    attack: Rc<RefCell<Attack>>,
) {
    while Instant::now() < end {
        let Ok(tcp) = TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let opened = Instant::now();
        let (mut read, mut write) = tcp.into_split();
        let trickle = async {
            for b in request.iter() {
                if write.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            std::future::pending::<()>().await;
        };
        let dropped = async {
            let mut sink = [0u8; 256];
            while matches!(read.read(&mut sink).await, Ok(n) if n > 0) {}
        };
        tokio::select! {
            () = dropped => {
                let mut a = attack.borrow_mut();
                a.dropped += 1;
                a.held_for += opened.elapsed();
            }
            () = trickle => {}
            () = tokio::time::sleep_until(end.into()) => return,
        }
    }
}

/// A masked binary frame header for `len` payload bytes.
fn frame_header(len: u64) -> Vec<u8> {
    let mut out = vec![0x82, 0x80 | 127];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out
}

/// One large-message attacker: upgrades, then sends a [`LARGE`]-byte message at
/// [`LARGE_RATE`]; records whether the server echoed it or closed (and how).
async fn large(addr: SocketAddr, attack: Rc<RefCell<Attack>>) -> io::Result<()> {
    let mut tcp = TcpStream::connect(addr).await?;
    let request = ClientRequest {
        host: addr.to_string(),
        ..ClientRequest::default()
    };
    let mut handshake = ClientHandshake::new(&request, generate_key(), HeadLimits::default());
    tcp.write_all(handshake.request_bytes()).await?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = tcp.read(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if handshake
            .receive(&buf[..n])
            .map_err(io::Error::other)?
            .is_some()
        {
            break;
        }
    }
    let opened = Instant::now();
    let (mut read, mut write) = tcp.into_split();
    let send = async {
        write.write_all(&frame_header(LARGE)).await?;
        // With a zero mask the payload goes as is.
        let chunk = vec![0u8; LARGE_RATE / 10];
        let mut left = LARGE as usize;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        while left > 0 {
            tick.tick().await;
            let n = left.min(chunk.len());
            write.write_all(&chunk[..n]).await?;
            left -= n;
        }
        std::future::pending::<io::Result<()>>().await
    };
    let answer = async {
        // The echo (10-byte header + payload) or a Close frame (2-byte header + code).
        let mut got = Vec::new();
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            let n = read.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return (got, true);
            }
            got.extend_from_slice(&chunk[..n]);
            if got.len() >= 4 && got[0] & 0x0f == 0x8 {
                return (got, false);
            }
            if got.len() as u64 >= 10 + LARGE {
                return (got, false);
            }
        }
    };
    tokio::select! {
        r = send => r?,
        (got, _eof) = answer => {
            let mut a = attack.borrow_mut();
            if got.first().is_some_and(|b| b & 0x0f == 0x8) {
                if got.get(2..4) == Some(&1013u16.to_be_bytes()[..]) {
                    a.closed_1013 += 1;
                }
                a.dropped += 1;
                a.held_for += opened.elapsed();
            } else if got.len() as u64 >= 10 + LARGE {
                a.echoed += 1;
            } else {
                a.dropped += 1;
                a.held_for += opened.elapsed();
            }
        }
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    Baseline,
    Slowloris,
    Large { budget: bool },
}

fn one(scenario: Scenario) -> io::Result<Outcome> {
    let budget = match scenario {
        Scenario::Large { budget: false } => "none",
        _ => "default",
    };
    let mut server = Child::spawn(&[
        "abuse-server".to_owned(),
        "--budget".to_owned(),
        budget.to_owned(),
        "--cpu".to_owned(),
        "0".to_owned(),
    ])?;
    let line = server.wait_line("LISTENING ", Duration::from_secs(20))?;
    let addr: SocketAddr = line["LISTENING ".len()..]
        .trim()
        .parse()
        .map_err(io::Error::other)?;
    let pid = server.pid();
    let args = Args::parse_from(&["--cpu".to_owned(), "1".to_owned()])?;
    let (latency, attack) = run_local(&args, async move {
        let attack = Rc::new(RefCell::new(Attack::default()));
        match scenario {
            Scenario::Baseline => Ok((Some(measure(addr).await?), None)),
            Scenario::Slowloris => {
                let request = Rc::new(request_bytes(addr));
                let end = Instant::now() + MEASURE + Duration::from_secs(2);
                let mut attackers = Vec::new();
                for _ in 0..ATTACKERS {
                    attackers.push(tokio::task::spawn_local(slowloris(
                        addr,
                        request.clone(),
                        end,
                        attack.clone(),
                    )));
                }
                // Let them all start pressing.
                tokio::time::sleep(Duration::from_secs(2)).await;
                let latency = measure(addr).await?;
                for a in attackers {
                    let _ = a.await;
                }
                let attack = Rc::try_unwrap(attack)
                    .map(RefCell::into_inner)
                    .unwrap_or_default();
                Ok((Some(latency), Some(attack)))
            }
            Scenario::Large { .. } => {
                let mut attackers = Vec::new();
                for _ in 0..ATTACKERS {
                    attackers.push(tokio::task::spawn_local(large(addr, attack.clone())));
                }
                let latency = measure(addr).await?;
                for a in attackers {
                    match a.await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => eprintln!("attacker: {e}"),
                        Err(e) => eprintln!("attacker task: {e}"),
                    }
                }
                let attack = Rc::try_unwrap(attack)
                    .map(RefCell::into_inner)
                    .unwrap_or_default();
                Ok((Some(latency), Some(attack)))
            }
        }
    })?;
    let peak_rss = status_kb(pid, "VmHWM:")?;
    server.finish(Duration::from_secs(5));
    let name = match scenario {
        Scenario::Baseline => "baseline: one client alone",
        Scenario::Slowloris => "slowloris: 1,000 handshakes at 1 byte/s",
        Scenario::Large { budget: true } => "1,000 × (1 MiB − 1) at 64 KiB/s, default budget",
        Scenario::Large { budget: false } => "1,000 × (1 MiB − 1) at 64 KiB/s, budget off",
    };
    Ok(Outcome {
        name,
        peak_rss,
        latency,
        attack,
    })
}

/// `bench abuse [--out FILE]`: runs every scenario and prints (or writes) the report.
pub(crate) fn main(args: &Args) -> io::Result<()> {
    args.only(&["out"])?;
    crate::sys::raise_nofile_limit()?;
    crate::proc::prepare_children()?;
    let scenarios = [
        Scenario::Baseline,
        Scenario::Slowloris,
        Scenario::Large { budget: true },
        Scenario::Large { budget: false },
    ];
    let mut outcomes = Vec::new();
    for s in scenarios {
        let outcome = one(s);
        match outcome {
            Ok(o) => outcomes.push(o),
            Err(e) => {
                crate::proc::cleanup_children();
                return Err(e);
            }
        }
    }
    crate::proc::cleanup_children();
    let report = report(&outcomes);
    match args.get("out") {
        Some(path) => std::fs::write(path, &report)?,
        None => print!("{report}"),
    }
    Ok(())
}

fn report(outcomes: &[Outcome]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| scenario | server peak RSS | client p50 | client p99 | client max | round trips | attackers |"
    );
    let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|---|");
    for o in outcomes {
        let (p50, p99, max, n) = o.latency.unwrap_or((0.0, 0.0, 0.0, 0));
        let attack = o.attack.as_ref().map_or_else(String::new, |a| {
            let mean = if a.dropped > 0 {
                format!(
                    ", held {:.1} s on average",
                    a.held_for.as_secs_f64() / a.dropped as f64
                )
            } else {
                String::new()
            };
            format!(
                "dropped {}{mean}; 1013 {}; echoed whole {}",
                a.dropped, a.closed_1013, a.echoed
            )
        });
        let _ = writeln!(
            out,
            "| {} | {:.1} MB | {p50:.2} ms | {p99:.2} ms | {max:.2} ms | {n} | {attack} |",
            o.name,
            o.peak_rss as f64 / 1e6
        );
    }
    out
}
