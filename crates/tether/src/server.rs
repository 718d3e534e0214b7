//! Accepting connections (TCP, or a Unix domain socket): the upgrade, hooks, authentication
//! and graceful shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use tether_proto::handshake::{self, HeadLimits, Headers, Request, ServerHandshake};
use tether_proto::Role;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
#[cfg(unix)]
use tokio::net::UnixListener;
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::{timeout_at, Instant};

use crate::config::Config;
use crate::error::{Error, Phase, Result};
use crate::stream::{MaybeTlsStream, PeerAddr};
use crate::websocket::{CloseSignal, MessageBudget, WebSocket};

/// [`ServerConfig::message_budget`]'s default: 256 MiB.
const DEFAULT_MESSAGE_BUDGET: usize = 256 << 20;

/// An HTTP request as a [`ServerConfig::process_request`] hook sees it: every request that
/// parsed as HTTP, upgrade or not.
#[derive(Clone, Copy, Debug)]
pub struct HttpRequest<'a> {
    /// The method, e.g. `GET`.
    pub method: &'a str,
    /// The request target, e.g. `/chat?room=1`.
    pub path: &'a str,
    /// The request headers.
    pub headers: &'a Headers,
}

impl HttpRequest<'_> {
    /// The first header called `name` (case-insensitive), as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get_str(name)
    }

    /// The request as an `http::Request`, for routing or authentication code written against
    /// the `http` crate. Fails only when the target is not a URI the `http` crate accepts.
    pub fn to_http(&self) -> std::result::Result<http::Request<()>, http::Error> {
        let mut request = http::Request::builder()
            .method(self.method)
            .uri(self.path)
            .version(http::Version::HTTP_11)
            .body(())?;
        *request.headers_mut() = self.headers.to_header_map();
        Ok(request)
    }
}

/// An HTTP response sent instead of upgrading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code, e.g. 401.
    pub status: u16,
    /// Headers; `Content-Length` and `Connection: close` are added.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A response with a plain-text body.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            headers: vec![("Content-Type".into(), "text/plain; charset=utf-8".into())],
            body: body.into().into_bytes(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn to_bytes(&self) -> Vec<u8> {
        handshake::http_response(self.status, &self.headers, &self.body)
    }

    /// The response as an `http::Response`.
    pub fn into_http(self) -> http::Response<Bytes> {
        let mut response = http::Response::new(Bytes::from(self.body));
        *response.status_mut() = http::StatusCode::from_u16(self.status)
            .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        for (name, value) in self.headers {
            let name = http::HeaderName::try_from(name);
            let value = http::HeaderValue::try_from(value);
            if let (Ok(name), Ok(value)) = (name, value) {
                response.headers_mut().append(name, value);
            }
        }
        response
    }
}

impl<B: Into<Bytes>> From<http::Response<B>> for HttpResponse {
    /// An `http::Response` to send instead of upgrading (from a hook). Header values that are
    /// not UTF-8 are sent with U+FFFD in place of the bytes that are not.
    fn from(response: http::Response<B>) -> Self {
        let (parts, body) = response.into_parts();
        let headers = parts
            .headers
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), value)
            })
            .collect();
        Self {
            status: parts.status.as_u16(),
            headers,
            body: Vec::from(body.into()),
        }
    }
}

type ProcessRequest = dyn Fn(&HttpRequest<'_>) -> Option<HttpResponse> + Send + Sync;
type OnAccept = dyn Fn(SocketAddr) -> bool + Send + Sync;

/// Settings of a server, with documented defaults.
#[derive(Clone)]
pub struct ServerConfig {
    config: Config,
    open_timeout: Duration,
    subprotocols: Vec<String>,
    tls: Option<Arc<rustls::ServerConfig>>,
    process_request: Vec<Arc<ProcessRequest>>,
    head_limits: HeadLimits,
    max_handshakes: Option<usize>,
    max_handshake_rate: Option<u32>,
    max_connections: Option<usize>,
    busy_retry_after: Duration,
    on_accept: Option<Arc<OnAccept>>,
    message_budget: Option<Arc<MessageBudget>>,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("config", &self.config)
            .field("open_timeout", &self.open_timeout)
            .field("subprotocols", &self.subprotocols)
            .field("tls", &self.tls.is_some())
            .field("hooks", &self.process_request.len())
            .field("max_handshakes", &self.max_handshakes)
            .field("max_handshake_rate", &self.max_handshake_rate)
            .field("max_connections", &self.max_connections)
            .field("busy_retry_after", &self.busy_retry_after)
            .field("on_accept", &self.on_accept.is_some())
            .field(
                "message_budget",
                &self.message_budget.as_ref().map(|b| b.limit()),
            )
            .finish()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            config: Config::default(),
            open_timeout: Duration::from_secs(10),
            subprotocols: Vec::new(),
            tls: None,
            process_request: Vec::new(),
            head_limits: HeadLimits::default(),
            max_handshakes: None,
            max_handshake_rate: None,
            max_connections: None,
            busy_retry_after: Duration::from_secs(10),
            on_accept: None,
            message_budget: Some(Arc::new(MessageBudget::new(DEFAULT_MESSAGE_BUDGET))),
        }
    }
}

impl ServerConfig {
    /// Connection settings: limits, keepalive, close timeout, buffers.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// A client that has not completed TLS and the upgrade within this time is dropped.
    /// Default: 10 s.
    pub fn open_timeout(mut self, timeout: Duration) -> Self {
        self.open_timeout = timeout;
        self
    }

    /// Admission control for [`Server::serve`]: at most this many opening handshakes (TLS
    /// and upgrade) in progress at once. A connection arriving above the limit is answered
    /// at once with `503 Service Unavailable` and a `Retry-After` drawn at random for each
    /// refusal (see [`busy_retry_after`](Self::busy_retry_after)), so that a reconnect storm
    /// is served at the rate the server sustains and the refused clients, which honour
    /// `Retry-After`, come back spread out instead of together. Over TLS the refused
    /// connection is closed before the TLS handshake (that handshake is the cost being
    /// limited); clients retry it with their backoff. Default: no limit.
    pub fn max_handshakes(mut self, limit: Option<usize>) -> Self {
        self.max_handshakes = limit;
        self
    }

    /// Admission control by rate: [`Server::serve`] starts at most this many opening
    /// handshakes a second, with bursts of up to one second's worth (a token bucket). A
    /// connection arriving faster is refused at once, exactly as above
    /// [`max_handshakes`](Self::max_handshakes) (`503` with a random `Retry-After` on plain
    /// TCP, closed before TLS otherwise). Where the handshake limit bounds the work in
    /// progress, this bounds the work per second: for a server whose handshakes are cheap
    /// to hold but costly to complete, or one that must leave room to serve the clients it
    /// holds while a storm comes back. Zero refuses every handshake. Default: no limit.
    pub fn max_handshake_rate(mut self, per_second: Option<u32>) -> Self {
        self.max_handshake_rate = per_second;
        self
    }

    /// A limit on the connections [`Server::serve`] holds at once: those in their opening
    /// handshake (an idle TCP connection that never sends a byte counts until the open
    /// timeout drops it) and the open WebSocket connections. A connection arriving at the
    /// limit is refused at once, exactly as above the handshake limit (`503` with a random
    /// `Retry-After` on plain TCP, closed before TLS otherwise), so that a flood of
    /// connections costs the server a file descriptor for a moment each, not memory and not
    /// its service to the clients it holds. Default: no limit (the process's file
    /// descriptor limit is the bound).
    pub fn max_connections(mut self, limit: Option<usize>) -> Self {
        self.max_connections = limit;
        self
    }

    /// The longest `Retry-After` of a refusal by [`max_handshakes`](Self::max_handshakes),
    /// [`max_handshake_rate`](Self::max_handshake_rate) or
    /// [`max_connections`](Self::max_connections):
    /// each refusal asks for a whole number of seconds drawn uniformly from [1, this]
    /// (at least 1). Default: 10 s.
    pub fn busy_retry_after(mut self, max: Duration) -> Self {
        self.busy_retry_after = max;
        self
    }

    /// A budget for the memory that incoming messages hold while they are being assembled,
    /// summed over every connection of this server (and of the axum and hyper upgrades made
    /// with this config): a connection whose growth takes the total past `bytes` fails with
    /// close code 1013 ("try again later"), which tether clients retry with their backoff.
    /// [`Config::max_message_size`] bounds one message; this bounds them all, so that a few
    /// hundred clients each sending a large message slowly cannot take gigabytes. What a
    /// connection holds up to 64 KiB is not charged (so small messages, compressed or not,
    /// always pass; the bound is this budget plus 64 KiB per connection, which
    /// [`max_connections`](Self::max_connections) bounds in turn); uncompressed messages that
    /// arrive whole in one read are not held at all. Clones of this config
    /// share one budget; `None` turns it off. Default: 256 MiB.
    pub fn message_budget(mut self, bytes: Option<usize>) -> Self {
        self.message_budget = bytes.map(|b| Arc::new(MessageBudget::new(b)));
        self
    }

    /// A hook that [`Server::serve`] calls for every TCP connection as it is accepted, before
    /// a byte is read and before admission control: `false` closes the connection at once
    /// (a deny list, a per-address limit); `true` goes on. It runs on the accept loop, so it
    /// must be quick. Default: none (every connection goes on).
    ///
    /// It is not called for connections on a Unix domain socket
    /// ([`Server::bind_unix`]): their peers have no address to decide on (a client binds no
    /// path), and who may connect is decided by the socket file's permissions instead. The
    /// connection limits apply to them as to TCP.
    pub fn on_accept<F>(mut self, hook: F) -> Self
    where
        F: Fn(SocketAddr) -> bool + Send + Sync + 'static,
    {
        self.on_accept = Some(Arc::new(hook));
        self
    }

    /// Subprotocols this server speaks, in preference order; the first one the client offers
    /// is selected. Default: none.
    pub fn subprotocol(mut self, name: impl Into<String>) -> Self {
        self.subprotocols.push(name.into());
        self
    }

    /// Offers `name` before any other subprotocol (once).
    pub(crate) fn offer_first(mut self, name: &str) -> Self {
        self.subprotocols.retain(|p| p != name);
        self.subprotocols.insert(0, name.to_owned());
        self
    }

    /// Serve TLS (`wss://`) with this rustls configuration (see
    /// [`tls::server_config_from_pem`](crate::tls::server_config_from_pem)).
    pub fn tls(mut self, tls: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Adds a hook that sees every HTTP request before the upgrade and may answer it with any
    /// response instead (authentication, health checks, routing). Hooks run in the order they
    /// were added; the first `Some` answers. Requests no hook answers are upgraded if valid,
    /// or refused with 400, 405, 426 or 431.
    pub fn process_request<F>(mut self, hook: F) -> Self
    where
        F: Fn(&HttpRequest<'_>) -> Option<HttpResponse> + Send + Sync + 'static,
    {
        self.process_request.push(Arc::new(hook));
        self
    }

    /// Requires HTTP Basic credentials that `check(user, password)` accepts; other requests
    /// get 401 with `WWW-Authenticate: Basic realm="REALM"`. See [`credentials_match`] for a
    /// constant-time comparison to use in `check`.
    pub fn basic_auth<F>(self, realm: &str, check: F) -> Self
    where
        F: Fn(&str, &str) -> bool + Send + Sync + 'static,
    {
        let challenge = format!(
            "Basic realm=\"{}\", charset=\"UTF-8\"",
            realm.replace('"', "")
        );
        self.process_request(move |req| {
            let ok = req
                .header("authorization")
                .and_then(parse_basic)
                .is_some_and(|(user, pass)| check(&user, &pass));
            if ok {
                None
            } else {
                Some(
                    HttpResponse::text(401, "authentication required\n")
                        .header("WWW-Authenticate", challenge.clone()),
                )
            }
        })
    }

    /// Requires the one user and password given, compared in constant time.
    pub fn basic_auth_user(self, realm: &str, user: &str, password: &str) -> Self {
        let (user, password) = (user.to_owned(), password.to_owned());
        self.basic_auth(realm, move |u, p| credentials_match(u, p, &user, &password))
    }
}

/// What the framework upgrade paths (`upgrade`, `axum`) read of a config.
#[cfg(feature = "hyper")]
impl ServerConfig {
    /// The connection settings.
    pub(crate) fn connection(&self) -> &Config {
        &self.config
    }

    /// The connection settings, to change one.
    #[cfg(feature = "axum")]
    pub(crate) fn connection_mut(&mut self) -> &mut Config {
        &mut self.config
    }

    /// The budget the connections share.
    pub(crate) fn budget(&self) -> Option<Arc<MessageBudget>> {
        self.message_budget.clone()
    }

    /// The subprotocols, in preference order.
    pub(crate) fn subprotocols(&self) -> &[String] {
        &self.subprotocols
    }

    /// The first hook's answer to `request`, if any.
    pub(crate) fn hook_answer(&self, request: &HttpRequest<'_>) -> Option<HttpResponse> {
        run_hooks(self, request)
    }
}

fn parse_basic(value: &str) -> Option<(String, String)> {
    let (scheme, b64) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

/// Compares credentials in time that does not depend on where they differ.
pub fn credentials_match(user: &str, password: &str, want_user: &str, want_password: &str) -> bool {
    // Evaluate both comparisons whatever the first gives.
    let a = ct_eq(user.as_bytes(), want_user.as_bytes());
    let b = ct_eq(password.as_bytes(), want_password.as_bytes());
    a & b
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// Performs the server side of the opening handshake on an accepted transport (TLS, if any,
/// already done). Returns the open connection and the request, or `Ok(None)` when the request
/// was answered with an HTTP response instead (a hook's, or 400/405/426/431).
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    config: &ServerConfig,
) -> Result<Option<(WebSocket<S>, Request)>> {
    let deadline = Instant::now() + config.open_timeout;
    // Boxed: the handshake's state (about 1 KB) lives on the heap while it runs, instead of
    // staying part of the caller's future, and so of every connection task, for the whole
    // life of the connection.
    Box::pin(accept_until(io, config, deadline, None)).await
}

async fn accept_until<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    config: &ServerConfig,
    deadline: Instant,
    shutdown: Option<&ShutdownState>,
) -> Result<Option<(WebSocket<S>, Request)>> {
    let mut parser = ServerHandshake::new(config.head_limits.clone());
    let mut buf = vec![0u8; 4096];
    let (request, leftover) = loop {
        let read = async {
            match shutdown {
                Some(s) => tokio::select! {
                    r = io.read(&mut buf) => Some(r),
                    _ = s.wait() => None,
                },
                None => Some(io.read(&mut buf).await),
            }
        };
        let n = match timeout_at(deadline, read).await {
            Err(_) => return Err(Error::Timeout(Phase::Handshake)),
            Ok(None) => {
                reply(&mut io, &unavailable()).await;
                return Ok(None);
            }
            Ok(Some(r)) => r?,
        };
        if n == 0 {
            return Err(Error::Eof);
        }
        match parser.receive(&buf[..n]) {
            Ok(None) => continue,
            Ok(Some(request)) => {
                let leftover = buf[request.consumed..n].to_vec();
                break (request, leftover);
            }
            Err(e) => {
                let answered = e.head().and_then(|head| {
                    let view = HttpRequest {
                        method: &head.method,
                        path: &head.path,
                        headers: &head.headers,
                    };
                    run_hooks(config, &view)
                });
                let bytes = answered.map_or_else(|| e.response_bytes(), |r| r.to_bytes());
                reply(&mut io, &bytes).await;
                return Ok(None);
            }
        }
    };
    if shutdown.is_some_and(ShutdownState::is_set) {
        reply(&mut io, &unavailable()).await;
        return Ok(None);
    }
    let view = HttpRequest {
        method: &request.method,
        path: &request.path,
        headers: &request.headers,
    };
    if let Some(response) = run_hooks(config, &view) {
        reply(&mut io, &response.to_bytes()).await;
        return Ok(None);
    }
    let negotiated = handshake::negotiate(
        &request,
        &config.subprotocols,
        config.config.compression.as_ref(),
    );
    let response = handshake::accept_response(
        &request,
        negotiated.subprotocol.as_deref(),
        negotiated.extensions.as_deref(),
        &[],
    );
    timeout_at(deadline, io.write_all(&response))
        .await
        .map_err(|_| Error::Timeout(Phase::Handshake))??;
    let ws = WebSocket::with_deflate(
        io,
        Role::Server,
        &config.config,
        negotiated.deflate,
        &leftover,
    )
    .with_budget(config.message_budget.clone())
    .with_negotiated(negotiated.subprotocol, negotiated.extensions);
    Ok(Some((ws, request)))
}

fn run_hooks(config: &ServerConfig, request: &HttpRequest<'_>) -> Option<HttpResponse> {
    config.process_request.iter().find_map(|hook| hook(request))
}

fn unavailable() -> Vec<u8> {
    HttpResponse::text(503, "server shutting down\n")
        .header("Retry-After", "1")
        .to_bytes()
}

/// Writes an HTTP answer and closes; the client may be gone already, so errors are ignored.
async fn reply<S: AsyncWrite + Unpin>(io: &mut S, bytes: &[u8]) {
    let write = async {
        io.write_all(bytes).await?;
        io.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), write).await;
}

/// The shutdown flag shared by a server, its accept tasks and its connections.
#[derive(Debug, Default)]
pub(crate) struct ShutdownState {
    set: AtomicBool,
    /// The close code open connections get: 1001, or 1012 for a restart.
    code: std::sync::atomic::AtomicU16,
    notify: Notify,
}

impl ShutdownState {
    fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    async fn wait(&self) {
        let notified = self.notify.notified();
        if self.is_set() {
            return;
        }
        notified.await;
    }

    fn trigger(&self, code: u16) {
        self.code.store(code, Ordering::Release);
        self.set.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    fn code(&self) -> u16 {
        self.code.load(Ordering::Acquire)
    }
}

/// The connections a [`ShutdownHandle`] closes, and how many were added since the last prune.
#[derive(Debug, Default)]
struct Signals {
    list: Vec<std::sync::Weak<CloseSignal>>,
    watched: usize,
}

/// Starts a server's graceful shutdown from anywhere (for example a Ctrl-C handler).
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    state: Arc<ShutdownState>,
    signals: Arc<std::sync::Mutex<Signals>>,
}

impl Default for ShutdownHandle {
    fn default() -> Self {
        Self::new()
    }
}

impl ShutdownHandle {
    /// A handle of its own, for connections that tether's [`Server`] did not accept: those
    /// upgraded inside hyper or axum ([`upgrade`](crate::upgrade), the axum extractor) or
    /// opened with [`WebSocket::from_raw`]. Register each with [`watch`](Self::watch); then
    /// [`shutdown`](Self::shutdown) and [`restart`](Self::restart) close them as a
    /// [`Server`]'s are closed. (A [`Server`]'s own handle, from
    /// [`Server::shutdown_handle`], watches what it accepts by itself, and can watch more.)
    pub fn new() -> Self {
        Self {
            state: Arc::new(ShutdownState::default()),
            signals: Arc::default(),
        }
    }

    /// Closes `ws` when this handle shuts down: with 1001 (going away) on
    /// [`shutdown`](Self::shutdown), 1012 (service restart) on [`restart`](Self::restart), at
    /// once if one of them was already called. The task that owns `ws` sees the closing
    /// handshake through its `recv`, which returns `None` once it is done (or after the close
    /// timeout): a `while let Some(..) = ws.recv().await` loop ends by itself. Replaces the
    /// handle `ws` was watched by before, if any.
    pub fn watch<S: AsyncRead + AsyncWrite + Unpin>(&self, ws: &mut WebSocket<S>) {
        let signal = Arc::new(CloseSignal::default());
        {
            let mut signals = self.signals.lock().unwrap_or_else(|e| e.into_inner());
            // Prune closed connections every eighth of the list's length in new entries (and
            // before it would grow): amortised O(1) a watch, and a `Weak` keeps a closed
            // connection's signal allocated for at most that long.
            signals.watched += 1;
            if signals.list.len() == signals.list.capacity()
                || signals.watched >= (signals.list.len() / 8).max(64)
            {
                signals.list.retain(|w| w.strong_count() > 0);
                signals.watched = 0;
            }
            signals.list.push(Arc::downgrade(&signal));
        }
        if self.state.is_set() {
            signal.request(self.state.code());
        }
        ws.set_close_signal(signal);
    }

    /// Whether [`shutdown`](Self::shutdown) or [`restart`](Self::restart) was called.
    pub fn is_shutting_down(&self) -> bool {
        self.state.is_set()
    }

    /// Stops accepting, answers handshakes in progress with 503, and closes every open
    /// connection with 1001 (going away). [`Server::serve`] returns once all connections
    /// ended (or after their close timeout).
    pub fn shutdown(&self) {
        self.stop(tether_proto::close_code::GOING_AWAY);
    }

    /// As [`shutdown`](Self::shutdown), but closes every open connection with 1012 (service
    /// restart): the server is coming back (a deploy, a drained node), so clients reconnect
    /// — tether's after their reconnect delay — and resumable sessions resume.
    pub fn restart(&self) {
        self.stop(tether_proto::close_code::SERVICE_RESTART);
    }

    fn stop(&self, code: u16) {
        if self.state.is_set() {
            // The first call decides the close code.
            return;
        }
        self.state.trigger(code);
        let signals = self.signals.lock().unwrap_or_else(|e| e.into_inner());
        for s in signals.list.iter().filter_map(std::sync::Weak::upgrade) {
            s.request(code);
        }
    }
}

/// A listening WebSocket server.
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// let server = tether::Server::bind("127.0.0.1:8765", tether::ServerConfig::default()).await?;
/// server
///     .serve(|mut ws, _request| async move {
///         while let Some(Ok(msg)) = ws.recv().await {
///             if ws.send(msg).await.is_err() {
///                 break;
///             }
///         }
///     })
///     .await
/// # }
/// ```
pub struct Server {
    listener: Listener,
    config: Arc<ServerConfig>,
    handle: ShutdownHandle,
    /// Opening handshakes in progress (for `ServerConfig::max_handshakes`).
    handshakes: Arc<std::sync::atomic::AtomicUsize>,
    /// Connections held, handshakes included (for `ServerConfig::max_connections`).
    connections: Arc<std::sync::atomic::AtomicUsize>,
    /// Refusals being written (bounded by [`MAX_REFUSING`]).
    refusing: Arc<std::sync::atomic::AtomicUsize>,
}

/// Most refusals (503 answers) written at once; past it, a refused connection is closed
/// without an answer, so that a flood cannot hold descriptors through its refusals.
const MAX_REFUSING: usize = 256;

impl Server {
    /// Binds to `addr`.
    pub async fn bind(addr: impl ToSocketAddrs, config: ServerConfig) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self::from_listener(listener, config))
    }

    /// Serves on a listener bound elsewhere.
    pub fn from_listener(listener: TcpListener, config: ServerConfig) -> Self {
        Self::with_listener(Listener::Tcp(listener), config)
    }

    /// Listens on the Unix domain socket `path`, with everything a TCP server has: TLS when
    /// [`ServerConfig::tls`] is set (clients connect with `wss+unix://` or
    /// [`ClientBuilder::unix_socket`](crate::ClientBuilder::unix_socket) and a `wss://` URL),
    /// the open timeout, limits, hooks and the graceful shutdown.
    /// [`ServerConfig::on_accept`] is not called (see there).
    ///
    /// A socket file already at `path` is removed first only when it is stale: a socket
    /// that refuses connections, which means that nobody listens on it (what a server that
    /// crashed leaves behind). When a server listens on it, this fails with
    /// [`io::ErrorKind::AddrInUse`]; when `path` is anything other than a socket (a regular
    /// file, a directory, a symbolic link), with [`io::ErrorKind::AlreadyExists`], and
    /// nothing is removed. The socket file is created with the process's umask (create it
    /// in a directory whose permissions say who may connect), and removed when the server
    /// stops listening (when [`serve`](Self::serve) returns, or the server is dropped),
    /// unless another server bound the path again meanwhile.
    ///
    /// Unix domain sockets exist on Unix only: elsewhere this fails with
    /// [`io::ErrorKind::Unsupported`].
    pub async fn bind_unix(path: impl AsRef<Path>, config: ServerConfig) -> io::Result<Self> {
        #[cfg(unix)]
        {
            let path = path.as_ref();
            let (listener, file) = crate::unix::bind(path).await?;
            let listener = Listener::Unix {
                listener,
                path: Some(path.to_owned()),
                _file: Some(file),
            };
            Ok(Self::with_listener(listener, config))
        }
        #[cfg(not(unix))]
        {
            let _ = (path, config);
            Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "Unix domain sockets are not available on this platform",
            ))
        }
    }

    /// Serves on a Unix domain socket listener bound elsewhere (inherited from a service
    /// manager, say). Its socket file is left alone: whoever bound it removes it.
    #[cfg(unix)]
    pub fn from_unix_listener(listener: UnixListener, config: ServerConfig) -> Self {
        let path = listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(Into::into));
        let listener = Listener::Unix {
            listener,
            path,
            _file: None,
        };
        Self::with_listener(listener, config)
    }

    fn with_listener(listener: Listener, config: ServerConfig) -> Self {
        Self {
            listener,
            config: Arc::new(config),
            handle: ShutdownHandle::new(),
            handshakes: Arc::default(),
            connections: Arc::default(),
            refusing: Arc::default(),
        }
    }

    /// The address the server listens on. A server on a Unix domain socket has none: this
    /// fails with [`io::ErrorKind::Unsupported`] (see [`unix_path`](Self::unix_path)).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.listener {
            Listener::Tcp(listener) => listener.local_addr(),
            #[cfg(unix)]
            Listener::Unix { .. } => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the server listens on a Unix domain socket, not on a TCP address",
            )),
        }
    }

    /// The path of the Unix domain socket the server listens on; `None` for a TCP server
    /// (and for a Unix listener bound to no path).
    pub fn unix_path(&self) -> Option<&Path> {
        match &self.listener {
            Listener::Tcp(_) => None,
            #[cfg(unix)]
            Listener::Unix { path, .. } => path.as_deref(),
        }
    }

    /// A handle that starts the graceful shutdown.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.handle.clone()
    }

    /// Accepts connections until shutdown, running `handler` in its own task for each
    /// upgraded connection. After [`ShutdownHandle::shutdown`], waits for the connections to
    /// close (each at most its close timeout, plus one second) and returns.
    pub async fn serve<H, F>(self, handler: H) -> io::Result<()>
    where
        H: Fn(WebSocket, Request) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let mut tasks = JoinSet::new();
        let state = self.handle.state.clone();
        let mut rate = self
            .config
            .max_handshake_rate
            .map(|r| HandshakeRate::new(r, Instant::now()));
        loop {
            let accepted = tokio::select! {
                r = self.listener.accept() => r,
                // A connection's task is freed as soon as it ends, not at the next accept:
                // a server that stops getting connections keeps nothing of those that left,
                // and an ended connection's memory goes back together, in one piece.
                Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
                _ = state.wait() => break,
            };
            let (conn, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Unix socket peers have no address for the hook (see `ServerConfig::on_accept`).
            if let (Some(hook), PeerAddr::Tcp(addr)) = (&self.config.on_accept, &peer) {
                if !hook(*addr) {
                    tracing::debug!(%peer, "refused by the on_accept hook");
                    continue;
                }
            }
            let Some(held) = Admitted::try_new(&self.connections, self.config.max_connections)
            else {
                tracing::debug!(%peer, "busy: at the connection limit; refused");
                self.refuse(&mut tasks, conn, "too many connections");
                continue;
            };
            if rate.as_mut().is_some_and(|r| !r.take(Instant::now())) {
                tracing::debug!(%peer, "busy: above the handshake rate; refused");
                self.refuse(&mut tasks, conn, "too many handshakes a second");
                continue;
            }
            let Some(admitted) = Admitted::try_new(&self.handshakes, self.config.max_handshakes)
            else {
                tracing::debug!(%peer, "busy: too many handshakes in progress; refused");
                self.refuse(&mut tasks, conn, "too many handshakes in progress");
                continue;
            };
            let config = self.config.clone();
            let handler = handler.clone();
            let handle = self.handle.clone();
            tasks.spawn(async move {
                let _held = held;
                // Boxed so that the handshake's state does not stay part of every
                // connection task's size once the handler runs; and the handler's future is
                // made inside a block, so that the opened connection (moved into it) leaves
                // no slot of its own in this task for the connection's life.
                let deadline = Instant::now() + config.open_timeout;
                // An idle connection holds no buffers until its first byte: until then it
                // costs this task and its socket, and it is dropped at the open timeout (or
                // at shutdown) like any handshake that does not finish.
                let first = tokio::select! {
                    r = timeout_at(deadline, readable(&conn)) => r.is_ok_and(|r| r.is_ok()),
                    _ = handle.state.wait() => false,
                };
                if !first {
                    tracing::debug!(%peer, "no byte before the open timeout (or shutdown)");
                    return;
                }
                let opened = Box::pin(open(conn, &config, &handle, deadline)).await;
                drop(admitted);
                let served = match opened {
                    // Boxed: the handler's future (which holds the connection) is allocated
                    // once the connection is open, so that a task still waiting for its
                    // first byte does not reserve room for it.
                    Ok(Some((ws, request))) => Box::pin(handler(ws, request)),
                    Ok(None) => return,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "handshake failed");
                        return;
                    }
                };
                served.await;
            });
        }
        // Graceful shutdown: close what is open, then wait for it.
        self.handle.shutdown();
        drop(self.listener);
        let grace = self.config.config.core.close_timeout
            + self.config.open_timeout.min(Duration::from_secs(1));
        let deadline = Instant::now() + grace + Duration::from_secs(1);
        while !tasks.is_empty() {
            if timeout_at(deadline, tasks.join_next()).await.is_err() {
                tasks.abort_all();
                break;
            }
        }
        Ok(())
    }
}

impl Server {
    /// Refuses `conn` with [`refuse_busy`] in a task of its own, or closes it at once when
    /// [`MAX_REFUSING`] refusals are being written already.
    fn refuse(&self, tasks: &mut JoinSet<()>, conn: MaybeTlsStream, why: &'static str) {
        let Some(place) = Admitted::try_new(&self.refusing, Some(MAX_REFUSING)) else {
            return;
        };
        let (plain, retry_after) = (self.config.tls.is_none(), self.config.busy_retry_after);
        tasks.spawn(async move {
            refuse_busy(conn, plain, retry_after, why).await;
            drop(place);
        });
    }
}

/// A place among the handshakes in progress, given back on drop.
/// A token bucket for [`ServerConfig::max_handshake_rate`]: `rate` tokens a second, at most
/// one second's worth saved up.
#[derive(Debug)]
struct HandshakeRate {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl HandshakeRate {
    /// A full bucket: a burst of one second's worth may start at once.
    fn new(per_second: u32, now: Instant) -> Self {
        let rate = f64::from(per_second);
        Self {
            rate,
            tokens: rate,
            at: now,
        }
    }

    /// Takes a token if one is there at `now`.
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Admitted(Option<Arc<std::sync::atomic::AtomicUsize>>);

impl Admitted {
    /// A place, or `None` when `limit` handshakes are in progress already.
    fn try_new(count: &Arc<std::sync::atomic::AtomicUsize>, limit: Option<usize>) -> Option<Self> {
        let Some(limit) = limit else {
            return Some(Self(None));
        };
        let taken = count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < limit).then_some(n + 1)
        });
        taken.ok().map(|_| Self(Some(Arc::clone(count))))
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(count) = &self.0 {
            count.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// Refuses a connection above the handshake or connection limit (`why` says which): without
/// TLS, `503` with a random `Retry-After` in [1, `retry_after`] seconds, written at once;
/// then what the client sends is read and dropped for up to a second, so that closing does
/// not reset the connection before the client read the answer. Over TLS, the connection is
/// closed at once.
async fn refuse_busy(mut conn: MaybeTlsStream, plain: bool, retry_after: Duration, why: &str) {
    if !plain {
        return;
    }
    let most = retry_after.as_secs().max(1);
    let wait = 1 + (rand::random::<f64>() * most as f64) as u64;
    let answer = HttpResponse::text(503, format!("server busy: {why}\n"))
        .header("Retry-After", wait.min(most).to_string())
        .to_bytes();
    let drain = async {
        conn.write_all(&answer).await?;
        conn.shutdown().await?;
        let mut sink = [0u8; 1024];
        while conn.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// Accepts one connection (TCP or Unix, as the listener gave it): TLS if configured, then
/// the upgrade.
async fn open(
    conn: MaybeTlsStream,
    config: &ServerConfig,
    handle: &ShutdownHandle,
    deadline: Instant,
) -> Result<Option<(WebSocket, Request)>> {
    let io = match (conn, &config.tls) {
        (MaybeTlsStream::Plain(tcp), tls) => {
            tcp.set_nodelay(true)?;
            match tls {
                None => MaybeTlsStream::Plain(tcp),
                Some(tls) => {
                    MaybeTlsStream::ServerTls(Box::new(tls_accept(tls, tcp, deadline).await?))
                }
            }
        }
        #[cfg(unix)]
        (MaybeTlsStream::Unix(unix), Some(tls)) => {
            MaybeTlsStream::ServerUnixTls(Box::new(tls_accept(tls, unix, deadline).await?))
        }
        (conn, _) => conn,
    };
    let Some((mut ws, request)) = accept_until(io, config, deadline, Some(&handle.state)).await?
    else {
        return Ok(None);
    };
    handle.watch(&mut ws);
    Ok(Some((ws, request)))
}

/// The server side of TLS on an accepted transport.
async fn tls_accept<S: AsyncRead + AsyncWrite + Unpin>(
    tls: &Arc<rustls::ServerConfig>,
    io: S,
    deadline: Instant,
) -> Result<tokio_rustls::server::TlsStream<S>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
    timeout_at(deadline, acceptor.accept(io))
        .await
        .map_err(|_| Error::Timeout(Phase::Tls))?
        .map_err(Error::Tls)
}

/// What a [`Server`] accepts connections on.
enum Listener {
    Tcp(TcpListener),
    #[cfg(unix)]
    Unix {
        listener: UnixListener,
        /// The path bound, if any.
        path: Option<std::path::PathBuf>,
        /// The socket file [`Server::bind_unix`] created, removed when the listener goes:
        /// declared after `listener`, so that it is dropped after it.
        _file: Option<crate::unix::SocketFile>,
    },
}

impl Listener {
    /// The next connection, still without TLS ([`MaybeTlsStream::Plain`] or
    /// [`MaybeTlsStream::Unix`]), and who it comes from.
    async fn accept(&self) -> io::Result<(MaybeTlsStream, PeerAddr)> {
        match self {
            Self::Tcp(listener) => {
                let (tcp, addr) = listener.accept().await?;
                Ok((MaybeTlsStream::Plain(tcp), PeerAddr::Tcp(addr)))
            }
            #[cfg(unix)]
            Self::Unix { listener, .. } => {
                let (unix, addr) = listener.accept().await?;
                let path = addr.as_pathname().map(Into::into);
                Ok((MaybeTlsStream::Unix(unix), PeerAddr::Unix(path)))
            }
        }
    }
}

/// Waits until an accepted connection has something to read (or is closed).
async fn readable(conn: &MaybeTlsStream) -> io::Result<()> {
    match conn {
        MaybeTlsStream::Plain(tcp) => tcp.readable().await,
        #[cfg(unix)]
        MaybeTlsStream::Unix(unix) => unix.readable().await,
        // The accept loop hands over transports without TLS only; reading tells the rest.
        _ => Ok(()),
    }
}

/// Binds to `addr` with default settings and serves `handler` until the process ends.
pub async fn serve<H, F>(addr: impl ToSocketAddrs, handler: H) -> io::Result<()>
where
    H: Fn(WebSocket, Request) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    Server::bind(addr, ServerConfig::default())
        .await?
        .serve(handler)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handshake_rate_allows_a_seconds_burst_then_the_rate() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut rate = HandshakeRate::new(4, t0);
        // A full bucket: four at once, then none.
        assert_eq!((0..6).filter(|_| rate.take(t0)).count(), 4);
        // A token every 250 ms.
        assert!(!rate.take(ms(249)));
        assert!(rate.take(ms(250)));
        assert!(!rate.take(ms(251)));
        assert!(rate.take(ms(500)));
        // Idle for a minute: one second's worth saved up, no more.
        assert_eq!((0..10).filter(|_| rate.take(ms(60_500))).count(), 4);
        // Zero refuses everything.
        let mut none = HandshakeRate::new(0, t0);
        assert!(!none.take(t0));
        assert!(!none.take(ms(10_000)));
    }
}
