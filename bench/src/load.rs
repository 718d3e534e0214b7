//! The load generator: `bench load` (echo throughput and latency), `bench handshakes`
//! (connect, upgrade, close) and `bench idle` (hold connections open for the memory count).
//!
//! Written so that it is not the bottleneck: one single-threaded process, one task per
//! connection, frames encoded and masked once before the run, one shared read buffer, a
//! parser that only counts the frames coming back, and one write per read to refill the
//! window with exactly as many frames as came back.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::{stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::args::Args;
use crate::stats::Shared;
use crate::wire::{self, FrameCounter};

/// How many connections are being opened at once.
const OPEN_CONCURRENCY: usize = 64;
/// The one read buffer all connections of the process share.
const READ_BUFFER: usize = 256 << 10;
const MASK_KEY: [u8; 4] = [0x3c, 0x5a, 0xa5, 0xc3];

thread_local! {
    static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_BUFFER]);
}

/// Pins to `--cpu`, raises the descriptor limit and runs `f` on a current-thread runtime
/// with a `LocalSet`.
pub(crate) fn run_local<F, T>(args: &Args, f: F) -> io::Result<T>
where
    F: std::future::Future<Output = io::Result<T>>,
{
    if let Some(cpu) = args.parse::<usize>("cpu")? {
        crate::sys::pin_to_cpu(cpu)?;
    }
    crate::sys::raise_nofile_limit()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    tokio::task::LocalSet::new().block_on(&rt, f)
}

/// Reads from `tcp` into the buffer all connections of the process share and hands what came
/// to `f` (which must not read itself); `Ok(false)` at the end of the stream. Through
/// `poll_read` (not `readable` + `try_read`): after a short read tokio knows the socket is
/// drained and waits for the next edge without another read.
pub(crate) async fn read_shared(tcp: &mut TcpStream, mut f: impl FnMut(&[u8])) -> io::Result<bool> {
    std::future::poll_fn(|cx| {
        READ_BUF.with(|cell| {
            let mut buf = cell.borrow_mut();
            let mut rb = ReadBuf::new(&mut buf[..]);
            match Pin::new(&mut *tcp).poll_read(cx, &mut rb) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if rb.filled().is_empty() => Poll::Ready(Ok(false)),
                Poll::Ready(Ok(())) => {
                    f(rb.filled());
                    Poll::Ready(Ok(true))
                }
            }
        })
    })
    .await
}

pub(crate) fn secs(args: &Args, name: &str, default: f64) -> io::Result<Duration> {
    let s: f64 = args.parse_or(name, default)?;
    Duration::try_from_secs_f64(s).map_err(|_| io::Error::other(format!("--{name}: bad duration")))
}

/// Opens `n` connections, `OPEN_CONCURRENCY` at a time, in order.
pub(crate) async fn open_many(
    addr: &str,
    n: usize,
    raw: bool,
) -> Vec<io::Result<(TcpStream, Vec<u8>)>> {
    stream::iter(0..n)
        .map(|_| wire::open(addr, raw))
        .buffered(OPEN_CONCURRENCY)
        .collect()
        .await
}

/// `bench load --addr A --conns N --size BYTES --inflight K --warmup S --duration S [--raw]`
pub(crate) fn main(args: &Args) -> io::Result<()> {
    args.only(&[
        "addr", "conns", "size", "inflight", "warmup", "duration", "raw", "cpu",
    ])?;
    let addr = args
        .get("addr")
        .ok_or_else(|| io::Error::other("--addr"))?
        .to_owned();
    let conns: usize = args.parse_or("conns", 10)?;
    let size: usize = args.parse_or("size", 20)?;
    let inflight: usize = args.parse_or::<usize>("inflight", 1)?.max(1);
    let warmup = secs(args, "warmup", 1.0)?;
    let duration = secs(args, "duration", 3.0)?;
    let raw = args.flag("raw");
    let line = run_local(args, async move {
        let shared = Rc::new(Shared::default());
        let (frames, frame_len) = wire::masked_frames(size, inflight, MASK_KEY);
        let frames: Rc<[u8]> = frames.into();
        for opened in open_many(&addr, conns, raw).await {
            let (tcp, extra) = opened?;
            tokio::task::spawn_local(drive(tcp, extra, frames.clone(), frame_len, shared.clone()));
        }
        Ok(shared.measure(warmup, duration).await)
    })?;
    println!("{line}");
    Ok(())
}

/// One connection: keep `frames.len() / frame_len` messages in flight.
async fn drive(
    tcp: TcpStream,
    extra: Vec<u8>,
    frames: Rc<[u8]>,
    frame_len: usize,
    shared: Rc<Shared>,
) {
    if let Err(e) = drive_inner(tcp, extra, frames, frame_len, &shared).await {
        shared.error(e);
    }
}

async fn drive_inner(
    mut tcp: TcpStream,
    extra: Vec<u8>,
    frames: Rc<[u8]>,
    frame_len: usize,
    shared: &Shared,
) -> io::Result<()> {
    let window = frames.len() / frame_len;
    let mut counter = FrameCounter::default();
    let mut sent: VecDeque<Instant> = VecDeque::with_capacity(window);
    counter.feed(&extra);
    let start = Instant::now();
    tcp.write_all(&frames).await?;
    sent.extend(std::iter::repeat_n(start, window));
    loop {
        // Read through `poll_read` (not `readable` + `try_read`): after a short read tokio
        // knows the socket is drained and waits for the next edge without another read.
        let got = std::future::poll_fn(|cx| {
            READ_BUF.with(|cell| {
                let mut buf = cell.borrow_mut();
                let mut rb = ReadBuf::new(&mut buf[..]);
                match Pin::new(&mut tcp).poll_read(cx, &mut rb) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                        Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()))
                    }
                    Poll::Ready(Ok(())) => Poll::Ready(Ok(counter.feed(rb.filled()))),
                }
            })
        })
        .await?;
        if counter.closed {
            return Err(io::Error::other("server sent Close"));
        }
        if got == 0 {
            continue;
        }
        let now = Instant::now();
        let got = got.min(sent.len());
        for start in sent.drain(..got) {
            shared.complete(start, now);
        }
        if shared.stopped() {
            return Ok(());
        }
        tcp.write_all(&frames[..got * frame_len]).await?;
        sent.extend(std::iter::repeat_n(now, got));
    }
}

/// `bench handshakes --addr A [--concurrency C] --warmup S --duration S [--raw]`: each task
/// loops connect, upgrade, Close and back, drop. With `--raw` (against the raw TCP echo) the
/// same bytes go back and forth without any WebSocket processing: the ceiling.
pub(crate) fn handshakes(args: &Args) -> io::Result<()> {
    args.only(&["addr", "concurrency", "warmup", "duration", "raw", "cpu"])?;
    let raw = args.flag("raw");
    let addr = args
        .get("addr")
        .ok_or_else(|| io::Error::other("--addr"))?
        .to_owned();
    let concurrency: usize = args.parse_or("concurrency", 32)?;
    let warmup = secs(args, "warmup", 1.0)?;
    let duration = secs(args, "duration", 3.0)?;
    let line = run_local(args, async move {
        let shared = Rc::new(Shared::default());
        let addr: Rc<str> = addr.into();
        for _ in 0..concurrency {
            let (shared, addr) = (shared.clone(), addr.clone());
            tokio::task::spawn_local(async move {
                while !shared.stopped() {
                    let start = Instant::now();
                    match tokio::time::timeout(Duration::from_secs(5), handshake_once(&addr, raw))
                        .await
                    {
                        Ok(Ok(())) => shared.complete(start, Instant::now()),
                        Ok(Err(e)) => shared.error(e),
                        Err(_) => shared.error("handshake cycle timed out"),
                    }
                }
            });
        }
        Ok(shared.measure(warmup, duration).await)
    })?;
    println!("{line}");
    Ok(())
}

async fn handshake_once(addr: &str, raw: bool) -> io::Result<()> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    // Reset instead of TIME_WAIT on our side, so that ports do not run out.
    tcp.set_zero_linger()?;
    let extra = wire::handshake(&mut tcp, addr, !raw).await?;
    let mut counter = FrameCounter::default();
    counter.feed(&extra);
    tcp.write_all(&wire::masked_close(MASK_KEY)).await?;
    let mut buf = [0u8; 512];
    while !counter.closed {
        match tcp.read(&mut buf).await? {
            0 => break,
            n => {
                counter.feed(&buf[..n]);
            }
        }
    }
    Ok(())
}

/// `bench idle --addr A --conns N [--raw]`: opens the connections (upgraded unless `--raw`),
/// prints `READY ok=N errors=E` and holds them until standard input closes.
pub(crate) fn idle(args: &Args) -> io::Result<()> {
    args.only(&["addr", "conns", "raw", "session", "cpu"])?;
    let addr = args
        .get("addr")
        .ok_or_else(|| io::Error::other("--addr"))?
        .to_owned();
    let conns: usize = args.parse_or("conns", 10_000)?;
    let raw = args.flag("raw");
    let session = args.flag("session");
    run_local(args, async move {
        let mut open = Vec::with_capacity(conns);
        let mut errors = 0;
        let mut first_error = None;
        let opened = if session {
            stream::iter(0..conns)
                .map(|_| wire::open_session(&addr, MASK_KEY))
                .buffered(OPEN_CONCURRENCY)
                .collect()
                .await
        } else {
            open_many(&addr, conns, raw).await
        };
        for r in opened {
            match r {
                Ok((tcp, _)) => open.push(tcp),
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        println!("READY ok={} errors={errors}", open.len());
        if let Some(e) = first_error {
            eprintln!("idle: first error: {e}");
        }
        // Hold the connections until the orchestrator is done measuring.
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = io::Read::read_to_end(&mut io::stdin(), &mut sink);
        })
        .await
        .map_err(io::Error::other)?;
        drop(open);
        Ok(())
    })
}
