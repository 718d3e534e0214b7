//! Echo servers, one per library, built the same way: a current-thread tokio runtime pinned
//! to one core, one accept loop, `TCP_NODELAY` on every accepted socket, one task per
//! connection (hyper's connection task comes first for fastwebsockets, as its docs do it),
//! compression off (tether's is on with `--deflate-level`, for the compression section).
//! Inside the task each library is used as its own echo example does. tether behind axum
//! (`tether-axum`) runs axum's own accept loop. The broadcast servers are in
//! [`crate::broadcast`].

use std::io;
use std::pin::Pin;
use std::task::Poll;

use futures_util::{future, SinkExt, StreamExt, TryStreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::args::Args;

/// The servers the harness can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Impl {
    /// Raw TCP echo of the same bytes: the ceiling.
    Raw,
    Tether,
    Tungstenite,
    FastWebSockets,
    TokioWebsockets,
    /// A minimal frame-level echo (unmask, re-frame) for the client-side comparison.
    FrameEcho,
    /// tether behind axum: an axum app upgrading with `tether::axum::WebSocketUpgrade`.
    Axum,
    /// Node's `ws` (`bench/node/echo.mjs`), compression section only.
    NodeWs,
    /// Python's `websockets` (`bench/python/echo.py`), compression section only.
    PythonWebsockets,
    /// tether's echo with resumable sessions (`tether::session::SessionServer`), sessions
    /// section only.
    TetherSessions,
}

impl Impl {
    /// The WebSocket servers compared, then the ceiling.
    pub(crate) const SERVERS: [Self; 5] = [
        Self::Tether,
        Self::Tungstenite,
        Self::FastWebSockets,
        Self::TokioWebsockets,
        Self::Raw,
    ];

    /// The echo section's servers: the compared ones with tether behind axum after tether.
    pub(crate) const ECHO: [Self; 6] = [
        Self::Tether,
        Self::Axum,
        Self::Tungstenite,
        Self::FastWebSockets,
        Self::TokioWebsockets,
        Self::Raw,
    ];

    /// The broadcast section's servers.
    pub(crate) const BROADCAST: [Self; 4] = [
        Self::Tether,
        Self::Tungstenite,
        Self::FastWebSockets,
        Self::TokioWebsockets,
    ];

    /// Every server `--servers` may name.
    pub(crate) const SELECTABLE: [Self; 8] = [
        Self::Tether,
        Self::Axum,
        Self::Tungstenite,
        Self::FastWebSockets,
        Self::TokioWebsockets,
        Self::Raw,
        Self::NodeWs,
        Self::PythonWebsockets,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Raw => "raw-tcp",
            Self::Tether => "tether",
            Self::Tungstenite => "tokio-tungstenite",
            Self::FastWebSockets => "fastwebsockets",
            Self::TokioWebsockets => "tokio-websockets",
            Self::FrameEcho => "frame-echo",
            Self::Axum => "tether-axum",
            Self::NodeWs => "node-ws",
            Self::PythonWebsockets => "python-websockets",
            Self::TetherSessions => "tether-sessions",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Self::SELECTABLE
            .into_iter()
            .chain([Self::FrameEcho, Self::TetherSessions])
            .find(|i| i.name() == s)
    }

    /// True for the servers this binary runs itself (not Node or Python).
    pub(crate) fn is_rust(self) -> bool {
        !matches!(self, Self::NodeWs | Self::PythonWebsockets)
    }

    /// True for the libraries tether is compared with.
    pub(crate) fn is_peer(self) -> bool {
        matches!(
            self,
            Self::Tungstenite | Self::FastWebSockets | Self::TokioWebsockets
        )
    }
}

/// `bench server --impl NAME [--addr 127.0.0.1:0] [--cpu N] [--broadcast] [--deflate-level L]
/// [--redis URL]`: prints `LISTENING <addr>` and serves until its standard input closes.
/// `--broadcast` relays every message to every connection instead of echoing it (see
/// [`crate::broadcast`]); `--deflate-level` turns tether's permessage-deflate on at that
/// level; `--redis` keeps tether-sessions' sessions in that Redis (`RedisStore`), or relays
/// tether's broadcast through a topic there (`RedisTopic`), shared with every server started
/// with the same URL; `--batch` makes tether-sessions answer what waits together
/// (`recv_requests`, `reply`).
pub(crate) fn main(args: &Args) -> io::Result<()> {
    args.only(&[
        "impl",
        "addr",
        "cpu",
        "broadcast",
        "deflate-level",
        "redis",
        "batch",
    ])?;
    let kind = args
        .get("impl")
        .and_then(Impl::parse)
        .filter(|k| k.is_rust())
        .ok_or_else(|| io::Error::other("--impl: raw-tcp, tether, tether-axum, tokio-tungstenite, fastwebsockets, tokio-websockets or frame-echo"))?;
    let addr = args.get("addr").unwrap_or("127.0.0.1:0").to_owned();
    let broadcast = args.flag("broadcast");
    let level: Option<u8> = args.parse("deflate-level")?;
    let redis = args.get("redis").map(str::to_owned);
    let batch = args.flag("batch");
    if redis.is_some() && !matches!(kind, Impl::TetherSessions | Impl::Tether) {
        return Err(io::Error::other("--redis: tether or tether-sessions only"));
    }
    if level.is_some() && kind != Impl::Tether {
        return Err(io::Error::other("--deflate-level: tether only"));
    }
    let compression = level.map(|level| tether::DeflateConfig {
        level,
        ..Default::default()
    });
    if let Some(cpu) = args.parse::<usize>("cpu")? {
        crate::sys::pin_to_cpu(cpu)?;
    }
    crate::sys::raise_nofile_limit()?;
    crate::exit_when_stdin_closes();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if broadcast {
        return rt.block_on(crate::broadcast::serve(kind, &addr, redis.as_deref()));
    }
    if kind == Impl::Axum {
        return rt.block_on(axum_serve(&addr));
    }
    rt.block_on(serve(kind, &addr, compression, redis.as_deref(), batch))
}

async fn serve(
    kind: Impl,
    addr: &str,
    compression: Option<tether::DeflateConfig>,
    redis: Option<&str>,
    batch: bool,
) -> io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    println!("LISTENING {}", listener.local_addr()?);
    let tether_config =
        tether::ServerConfig::default().config(tether::Config::default().compression(compression));
    let echo = move |session: tether::session::SessionHandle| async move {
        if batch {
            // What waits is answered together: one store request per batch, for the replies
            // and the deliveries of their requests. (Boxed, so that the per-message echo's
            // future, measured idle, does not carry it.)
            return Box::pin(async move {
                while let Some(Ok(msgs)) = session.recv_requests(64).await {
                    if session.reply(msgs).await.is_err() {
                        break;
                    }
                }
            })
            .await;
        }
        while let Some(Ok(msg)) = session.recv().await {
            if session.send(msg).await.is_err() {
                break;
            }
        }
    };
    let config = tether::session::SessionServerConfig::default();
    let sessions = match redis {
        None => tether::session::SessionServer::new(config, echo),
        Some(url) => {
            let store = tether::redis::RedisStore::open(url).map_err(io::Error::other)?;
            store.ping().await.map_err(io::Error::other)?;
            tether::session::SessionServer::with_store(config, std::sync::Arc::new(store), echo)
        }
    };
    // Shared, as tether's own `Server` shares its configuration: a copy per connection
    // would be held for the connection's life by its task (280 bytes).
    let session_config = std::sync::Arc::new(sessions.server_config(tether_config.clone()));
    let tether_config = std::sync::Arc::new(tether_config);
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(_) => {
                // Out of descriptors, most likely: let connections end.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        match kind {
            Impl::Raw => tokio::spawn(raw_echo(tcp)),
            Impl::Tether => tokio::spawn(tether_echo(tcp, std::sync::Arc::clone(&tether_config))),
            Impl::TetherSessions => {
                let sessions = sessions.clone();
                let config = std::sync::Arc::clone(&session_config);
                tokio::spawn(async move {
                    // The session's future is made in a block: nothing else keeps a slot
                    // for the connection while it runs.
                    let serving = {
                        let Ok(Some((ws, _))) = tether::accept(tcp, &config).await else {
                            return;
                        };
                        sessions.serve(ws)
                    };
                    serving.await;
                })
            }
            Impl::Tungstenite => tokio::spawn(tungstenite_echo(tcp)),
            Impl::FastWebSockets => tokio::spawn(fastwebsockets_connection(tcp)),
            Impl::TokioWebsockets => tokio::spawn(tokio_websockets_echo(tcp)),
            Impl::FrameEcho => tokio::spawn(frame_echo(tcp)),
            other => {
                return Err(io::Error::other(format!(
                    "{} is not served here",
                    other.name()
                )))
            }
        };
    }
}

thread_local! {
    /// The raw echo's read buffer, shared by all its connections; as large as the load
    /// generator's, so that large messages take as few reads as they can.
    static RAW_BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 256 << 10]);
}

/// Echoes bytes as they come: one read into a buffer shared by all connections, one write
/// straight from it. Only what the socket did not take at once is copied, into a buffer of
/// the connection's own, so an idle connection holds no buffer.
async fn raw_echo(mut tcp: TcpStream) {
    let mut pending: Vec<u8> = Vec::new();
    loop {
        if !pending.is_empty() {
            if tcp.write_all(&pending).await.is_err() {
                return;
            }
            pending.clear();
        }
        // `poll_read` rather than `readable` + `try_read`: after a short read tokio knows the
        // socket is drained and waits for the next edge without another read.
        let step = std::future::poll_fn(|cx| {
            RAW_BUF.with(|cell| {
                let mut buf = cell.borrow_mut();
                let mut rb = ReadBuf::new(&mut buf[..]);
                match Pin::new(&mut tcp).poll_read(cx, &mut rb) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(_)) => return Poll::Ready(Err(())),
                    Poll::Ready(Ok(())) => {}
                }
                let data = rb.filled();
                if data.is_empty() {
                    return Poll::Ready(Err(()));
                }
                let written = match tcp.try_write(data) {
                    Ok(w) => w,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                    Err(_) => return Poll::Ready(Err(())),
                };
                pending.extend_from_slice(&data[written..]);
                Poll::Ready(Ok(()))
            })
        })
        .await;
        if step.is_err() {
            return;
        }
    }
}

/// tether: `accept` on the hand-accepted stream, then the `recv`/`send` loop of the
/// `Server` documentation.
async fn tether_echo(tcp: TcpStream, config: std::sync::Arc<tether::ServerConfig>) {
    let Ok(Some((mut ws, _))) = tether::accept(tcp, &config).await else {
        return;
    };
    drop(config);
    while let Some(Ok(msg)) = ws.recv().await {
        if ws.send(msg).await.is_err() {
            break;
        }
    }
}

/// tether behind axum, as `crates/tether/examples/axum_echo.rs` has it (`axum::serve` with
/// `TCP_NODELAY` on every accepted socket, the `recv`/`send` loop in `on_upgrade`), with
/// compression off like the other echo servers.
async fn axum_serve(addr: &str) -> io::Result<()> {
    use axum::serve::ListenerExt as _;
    use tether::axum::WebSocketUpgrade;
    use tether::upgrade::UpgradedWebSocket;

    let listener = TcpListener::bind(addr).await?;
    println!("LISTENING {}", listener.local_addr()?);
    let config = std::sync::Arc::new(
        tether::ServerConfig::default().config(tether::Config::default().compression(None)),
    );
    let echo = move |ws: WebSocketUpgrade| {
        let config = config.clone();
        async move {
            ws.config(config)
                .on_upgrade(|mut ws: UpgradedWebSocket| async move {
                    while let Some(Ok(msg)) = ws.recv().await {
                        if ws.send(msg).await.is_err() {
                            break;
                        }
                    }
                    while ws.recv().await.is_some() {}
                })
        }
    };
    let app = axum::Router::new().route("/", axum::routing::get(echo));
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await
}

/// tokio-tungstenite: its `echo-server` example (split, keep data messages, forward).
async fn tungstenite_echo(tcp: TcpStream) {
    let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    let (write, read) = ws.split();
    let _ = read
        .try_filter(|msg| future::ready(msg.is_text() || msg.is_binary()))
        .forward(write)
        .await;
}

/// fastwebsockets: hyper serves the upgrade request, `upgrade::upgrade` answers it, and the
/// echo task reads whole messages through `FragmentCollector`, as in its `echo_server`
/// example.
async fn fastwebsockets_connection(tcp: TcpStream) {
    let io = hyper_util::rt::TokioIo::new(tcp);
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, hyper::service::service_fn(fastwebsockets_upgrade))
        .with_upgrades()
        .await;
}

async fn fastwebsockets_upgrade(
    mut request: hyper::Request<hyper::body::Incoming>,
) -> Result<
    hyper::Response<http_body_util::Empty<hyper::body::Bytes>>,
    fastwebsockets::WebSocketError,
> {
    let (response, upgrade) = fastwebsockets::upgrade::upgrade(&mut request)?;
    tokio::spawn(async move {
        let _ = fastwebsockets_echo(upgrade).await;
    });
    Ok(response)
}

async fn fastwebsockets_echo(
    upgrade: fastwebsockets::upgrade::UpgradeFut,
) -> Result<(), fastwebsockets::WebSocketError> {
    use fastwebsockets::OpCode;
    let mut ws = fastwebsockets::FragmentCollector::new(upgrade.await?);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => return Ok(()),
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
}

/// tokio-websockets: `ServerBuilder::accept`, then the `next`/`send` loop of its README.
async fn tokio_websockets_echo(tcp: TcpStream) {
    let Ok((_, mut ws)) = tokio_websockets::ServerBuilder::new().accept(tcp).await else {
        return;
    };
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            break;
        }
    }
}

/// Frame-level echo for the client comparison: answers the upgrade, then unmasks each
/// complete frame and writes it back unmasked, everything parsed from one read leaving in
/// one write. Neither client library is involved on this side.
async fn frame_echo(mut tcp: TcpStream) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if buf.len() > 16 << 10 {
            return;
        }
        buf.reserve(4096);
        match tcp.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    };
    let Some(key) = header_value(&buf[..head_end], "sec-websocket-key") else {
        return;
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        tether::proto::handshake::accept_key(&key)
    );
    if tcp.write_all(response.as_bytes()).await.is_err() {
        return;
    }
    buf.drain(..head_end);
    let mut out = Vec::new();
    loop {
        let (used, closing) = unmask_frames(&buf, &mut out);
        buf.drain(..used);
        if !out.is_empty() {
            if tcp.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if closing {
            let _ = tcp.shutdown().await;
            return;
        }
        buf.reserve(64 << 10);
        match tcp.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// The value of header `name` (case-insensitive) in an HTTP head.
pub(crate) fn header_value(head: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(head).ok()?;
    text.split("\r\n").find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// Appends every complete frame at the front of `input` to `out`, unmasked. Returns the bytes
/// consumed and whether a Close frame was among them.
fn unmask_frames(input: &[u8], out: &mut Vec<u8>) -> (usize, bool) {
    let mut pos = 0;
    let mut closing = false;
    while !closing {
        let rest = &input[pos..];
        if rest.len() < 2 {
            break;
        }
        let (ext, len) = match rest[1] & 0x7f {
            126 if rest.len() >= 4 => (2, u64::from(u16::from_be_bytes([rest[2], rest[3]]))),
            127 if rest.len() >= 10 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&rest[2..10]);
                (8, u64::from_be_bytes(b))
            }
            126 | 127 => break,
            n => (0, u64::from(n)),
        };
        let masked = rest[1] & 0x80 != 0;
        let head = 2 + ext + if masked { 4 } else { 0 };
        let Ok(len) = usize::try_from(len) else { break };
        if rest.len() < head + len {
            break;
        }
        out.push(rest[0]);
        out.push(rest[1] & 0x7f);
        out.extend_from_slice(&rest[2..2 + ext]);
        let start = out.len();
        out.extend_from_slice(&rest[head..head + len]);
        if masked {
            let key = [rest[2 + ext], rest[3 + ext], rest[4 + ext], rest[5 + ext]];
            xor_key(&mut out[start..], key);
        }
        closing = rest[0] & 0x0f == 0x8;
        pos += head + len;
    }
    (pos, closing)
}

fn xor_key(buf: &mut [u8], key: [u8; 4]) {
    let word = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut words = buf.chunks_exact_mut(8);
    for w in &mut words {
        let v = u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]) ^ word;
        w.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in words.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_echo_unmasks_complete_frames_only() {
        let (frames, len) = crate::wire::masked_frames(300, 2, [1, 2, 3, 4]);
        let mut out = Vec::new();
        let (used, closing) = unmask_frames(&frames[..len + 10], &mut out);
        assert_eq!((used, closing), (len, false));
        assert_eq!(&out[..4], &[0x82, 126, 1, 44]);
        assert!(out[4..]
            .iter()
            .enumerate()
            .all(|(i, &b)| b == b'a' + (i % 26) as u8));
        let mut out = Vec::new();
        let mut input = frames.clone();
        input.extend_from_slice(&crate::wire::masked_close([5, 6, 7, 8]));
        let (used, closing) = unmask_frames(&input, &mut out);
        assert_eq!((used, closing), (input.len(), true));
        assert_eq!(&out[out.len() - 4..], &[0x88, 2, 0x03, 0xe8]);
    }

    #[test]
    fn finds_headers_case_insensitively() {
        let head = b"GET / HTTP/1.1\r\nsec-WebSocket-key:  abc== \r\n\r\n";
        assert_eq!(
            header_value(head, "Sec-WebSocket-Key").as_deref(),
            Some("abc==")
        );
    }
}
