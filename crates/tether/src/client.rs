//! Opening client connections: URL, TCP (or a Unix domain socket), proxy, TLS, upgrade,
//! redirects.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tether_proto::handshake::{self, ClientHandshake, ClientRequest, HeadLimits, Response};
use tether_proto::Role;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout_at, Instant};
use url::Url;

use crate::config::Config;
use crate::error::{Error, Phase, RedirectError, Result};
use crate::happy;
use crate::proxy::{self, Proxy, Tunnel};
use crate::stream::MaybeTlsStream;
use crate::tls::{server_name, TlsConfig};
use crate::websocket::WebSocket;

/// The default `User-Agent` header.
pub const USER_AGENT: &str = concat!("tether/", env!("CARGO_PKG_VERSION"));

/// Opens one WebSocket connection to `url` (`ws://` or `wss://`) with default settings.
/// Nothing is retried; see [`ClientBuilder::reconnecting`](crate::ClientBuilder::reconnecting)
/// for a connection that stays up.
///
/// ```no_run
/// # async fn run() -> Result<(), tether::Error> {
/// let mut ws = tether::connect("ws://127.0.0.1:8765/").await?;
/// ws.send("hello").await?;
/// if let Some(reply) = ws.recv().await {
///     println!("{:?}", reply?);
/// }
/// ws.close(1000, "bye").await?;
/// # Ok(()) }
/// ```
pub async fn connect(url: impl IntoClientRequest) -> Result<WebSocket> {
    ClientBuilder::new(url).connect().await
}

/// What a client connection can be opened from: a URL (`&str`, `String`, [`url::Url`],
/// [`http::Uri`]) or a whole [`http::Request<()>`] whose headers come along.
///
/// A request's headers are **added** to the handshake's own; they never replace them, so a
/// request built by hand (or for another library) cannot break the handshake:
///
/// * `Host`, `Upgrade`, `Connection`, `Sec-WebSocket-Key`, `Sec-WebSocket-Version`,
///   `Sec-WebSocket-Accept` and `Sec-WebSocket-Extensions` are left out (the handshake writes
///   them; permessage-deflate is offered from [`Config::compression`]);
/// * `Sec-WebSocket-Protocol` values become offered subprotocols, in order
///   ([`ClientBuilder::subprotocol`]); `Origin` and `User-Agent` set
///   [`ClientBuilder::origin`] and [`ClientBuilder::user_agent`];
/// * every other header is sent on every attempt ([`ClientBuilder::header`]). A value that
///   is not text makes [`ClientBuilder::connect`] fail with [`Error::InvalidUri`] naming the
///   header, before anything is sent.
///
/// ```
/// let request = http::Request::builder()
///     .uri("wss://example.com/feed")
///     .header("Authorization", "Bearer t0ken")
///     .header("Sec-WebSocket-Protocol", "v2.feed, v1.feed")
///     .body(())
///     .unwrap();
/// let builder = tether::ClientBuilder::new(request);
/// assert_eq!(builder.url(), "wss://example.com/feed");
/// ```
pub trait IntoClientRequest {
    /// A builder for this target with every other setting at its default.
    fn into_client_builder(self) -> ClientBuilder;
}

impl IntoClientRequest for ClientBuilder {
    fn into_client_builder(self) -> ClientBuilder {
        self
    }
}

impl IntoClientRequest for &str {
    fn into_client_builder(self) -> ClientBuilder {
        ClientBuilder::from_url(self.to_owned())
    }
}

impl IntoClientRequest for String {
    fn into_client_builder(self) -> ClientBuilder {
        ClientBuilder::from_url(self)
    }
}

impl IntoClientRequest for &String {
    fn into_client_builder(self) -> ClientBuilder {
        ClientBuilder::from_url(self.clone())
    }
}

impl IntoClientRequest for Url {
    fn into_client_builder(self) -> ClientBuilder {
        ClientBuilder::from_url(self.into())
    }
}

impl IntoClientRequest for &Url {
    fn into_client_builder(self) -> ClientBuilder {
        ClientBuilder::from_url(self.as_str().to_owned())
    }
}

impl IntoClientRequest for http::Uri {
    fn into_client_builder(self) -> ClientBuilder {
        ClientBuilder::from_url(self.to_string())
    }
}

impl IntoClientRequest for &http::Uri {
    fn into_client_builder(self) -> ClientBuilder {
        ClientBuilder::from_url(self.to_string())
    }
}

impl IntoClientRequest for http::Request<()> {
    fn into_client_builder(self) -> ClientBuilder {
        (&self).into_client_builder()
    }
}

impl IntoClientRequest for &http::Request<()> {
    fn into_client_builder(self) -> ClientBuilder {
        /// Written by the handshake itself; a request's own values are left out.
        const HANDSHAKE: [http::HeaderName; 7] = [
            http::header::HOST,
            http::header::UPGRADE,
            http::header::CONNECTION,
            http::header::SEC_WEBSOCKET_KEY,
            http::header::SEC_WEBSOCKET_VERSION,
            http::header::SEC_WEBSOCKET_ACCEPT,
            http::header::SEC_WEBSOCKET_EXTENSIONS,
        ];
        let mut builder = ClientBuilder::from_url(self.uri().to_string());
        for (name, value) in self.headers() {
            if HANDSHAKE.contains(name) {
                tracing::debug!(header = %name, "left out: the handshake writes it");
                continue;
            }
            let Ok(text) = value.to_str() else {
                builder.request_error.get_or_insert_with(|| {
                    format!("the value of request header {name} is not text")
                });
                continue;
            };
            if name == http::header::SEC_WEBSOCKET_PROTOCOL {
                let offered = text.split(',').map(str::trim).filter(|p| !p.is_empty());
                builder.subprotocols.extend(offered.map(str::to_owned));
            } else if name == http::header::ORIGIN {
                builder.origin = Some(text.to_owned());
            } else if name == http::header::USER_AGENT {
                builder.user_agent = Some(text.to_owned());
            } else {
                builder
                    .headers
                    .push((name.as_str().to_owned(), text.to_owned()));
            }
        }
        builder
    }
}

/// Settings for opening client connections, with documented defaults.
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    pub(crate) url: String,
    pub(crate) headers: Vec<(String, String)>,
    subprotocols: Vec<String>,
    origin: Option<String>,
    user_agent: Option<String>,
    open_timeout: Duration,
    pub(crate) config: Config,
    tls: TlsConfig,
    /// Happy Eyeballs' delay and the names given addresses.
    dialer: happy::Dialer,
    proxy: ProxyChoice,
    max_redirects: usize,
    head_limits: HeadLimits,
    /// Why the request this builder came from cannot be sent (see [`IntoClientRequest`]).
    request_error: Option<String>,
    /// Connect over this Unix domain socket instead of TCP ([`ClientBuilder::unix_socket`]).
    unix_socket: Option<PathBuf>,
}

impl ClientBuilder {
    /// Settings for connecting to `target` (a URL, or an `http::Request` whose headers come
    /// along: see [`IntoClientRequest`]), all else default: no extra headers, no
    /// subprotocol, `User-Agent: tether/VERSION`, open timeout 10 s, up to 10 redirects, the
    /// default [`Config`] and [`TlsConfig`], the proxy the environment names (see
    /// [`proxy`](Self::proxy)).
    pub fn new(target: impl IntoClientRequest) -> Self {
        target.into_client_builder()
    }

    fn from_url(url: String) -> Self {
        Self {
            url,
            headers: Vec::new(),
            subprotocols: Vec::new(),
            origin: None,
            user_agent: Some(USER_AGENT.to_owned()),
            open_timeout: Duration::from_secs(10),
            config: Config::default(),
            tls: TlsConfig::default(),
            dialer: happy::Dialer::default(),
            proxy: ProxyChoice::Environment,
            max_redirects: 10,
            head_limits: HeadLimits::default(),
            request_error: None,
            unix_socket: None,
        }
    }

    /// The URL connected to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Replaces the URL.
    pub fn set_url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self
    }

    /// Adds a request header, sent on every attempt.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Offers a subprotocol (call again to offer several, in preference order).
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

    /// Sets the `Origin` header. Default: none.
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = Some(origin.into());
        self
    }

    /// Sets the `User-Agent` header; `None` sends none. Default: `tether/VERSION`.
    pub fn user_agent(mut self, agent: Option<String>) -> Self {
        self.user_agent = agent;
        self
    }

    /// Limit for TCP connect, proxy, TLS and upgrade of one attempt together. Default: 10 s.
    pub fn open_timeout(mut self, timeout: Duration) -> Self {
        self.open_timeout = timeout;
        self
    }

    /// Connection settings: limits, keepalive, close timeout, buffers.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Which certificates `wss://` trusts.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = tls;
        self
    }

    /// Connect through this proxy, whatever the environment says: `http://` (CONNECT),
    /// `https://` (TLS to the proxy, verified with [`tls`](Self::tls)'s roots, then CONNECT),
    /// `socks5://` (the server's name resolved here) or `socks5h://` (resolved by the proxy),
    /// each with optional `user:password@`; e.g. `socks5h://user:pass@proxy:1080`. Without a
    /// scheme, `http://` is meant.
    ///
    /// By default the environment decides, read again for every attempt (so that a changed
    /// environment applies to the next reconnect): `no_proxy` first, then for `wss://` the
    /// first of `wss_proxy`, `https_proxy`, `all_proxy`, for `ws://` the first of
    /// `ws_proxy`, `http_proxy`, `all_proxy` (lower case first, then upper case), as curl and
    /// Python `websockets` do. See `docs/network-paths.md` for `no_proxy`'s rules.
    pub fn proxy(mut self, proxy: impl Into<String>) -> Self {
        self.proxy = ProxyChoice::Url(proxy.into());
        self
    }

    /// Happy Eyeballs (RFC 8305): when the server's name (or a proxy's) resolves to several
    /// addresses, they are tried in turn, alternating IPv6 and IPv4 from the resolver's first,
    /// each `delay` after the previous one started (or at once when it failed), and the first
    /// to connect wins; the open timeout covers all of them, so an address that does not
    /// answer costs `delay`, not the whole timeout. `Duration::ZERO` starts them all at once;
    /// `Duration::MAX` tries one at a time. Default: 250 ms (the RFC's).
    pub fn happy_eyeballs_delay(mut self, delay: Duration) -> Self {
        self.dialer.delay = delay;
        self
    }

    /// Connect to `name` at these addresses instead of asking the system's resolver, like
    /// curl's `--resolve`: for the server's host on a direct connection, for a proxy's host,
    /// and for the server's host through a `socks5://` proxy (which is sent the first
    /// address). The port stays the URL's (or the proxy's); names compare without case, and
    /// a later call for the same name replaces an earlier one. The addresses are raced as
    /// [`happy_eyeballs_delay`](Self::happy_eyeballs_delay) says; TLS still verifies
    /// `name`. Useful for split DNS, pinning a client to one node of a service, and tests.
    pub fn resolve(
        mut self,
        name: impl Into<String>,
        addrs: impl IntoIterator<Item = IpAddr>,
    ) -> Self {
        let name = name.into();
        let fixed = &mut self.dialer.fixed;
        fixed.retain(|(known, _)| !known.eq_ignore_ascii_case(&name));
        fixed.push((name, addrs.into_iter().collect()));
        self
    }

    /// Connect directly, even when the environment names a proxy.
    pub fn no_proxy(mut self) -> Self {
        self.proxy = ProxyChoice::Direct;
        self
    }

    /// Use the proxy the environment names (the default; see [`proxy`](Self::proxy)): undoes
    /// [`proxy`](Self::proxy) and [`no_proxy`](Self::no_proxy).
    pub fn proxy_from_env(mut self) -> Self {
        self.proxy = ProxyChoice::Environment;
        self
    }

    /// Most redirects (301, 302, 303, 307, 308) followed; 0 follows none. Default: 10.
    pub fn max_redirects(mut self, max: usize) -> Self {
        self.max_redirects = max;
        self
    }

    /// Connect over the Unix domain socket `path` instead of TCP, while the URL (`ws://` or
    /// `wss://`) still names the scheme, the `Host` header, the resource and, for `wss://`,
    /// the name the server's certificate must have: `ws://localhost/feed` over
    /// `/run/app.sock` sends `GET /feed` with `Host: localhost` (curl's `--unix-socket` does
    /// the same). The URL's port is not used. Applies to every attempt, reconnects and
    /// sessions included; it replaces the socket of a `ws+unix://` URL. Proxies are not used
    /// over a Unix socket, and redirects are followed only while they stay on the URL's
    /// origin (scheme, host and port), over the same socket; any other is
    /// [`RedirectError::Forbidden`].
    ///
    /// Without this, a URL `ws+unix:///path/to.sock:/resource` (or `wss+unix://`) connects
    /// over `/path/to.sock` with `Host: localhost`: the socket path, then `:` and the
    /// resource (`/` when there is none; a path with `:` in it is written with `%3A`).
    ///
    /// Unix domain sockets exist on Unix only: elsewhere connecting fails with an
    /// [`Error::Io`] of kind [`std::io::ErrorKind::Unsupported`]. Default: TCP.
    pub fn unix_socket(mut self, path: impl AsRef<Path>) -> Self {
        self.unix_socket = Some(path.as_ref().to_owned());
        self
    }

    /// Opens one connection, following redirects. Nothing is retried.
    pub async fn connect(&self) -> Result<WebSocket> {
        // Boxed: the opening's state (DNS, proxy, TLS, redirects) lives on the heap while it
        // runs instead of staying part of the caller's future for the connection's life.
        Box::pin(self.connect_to(&self.url, &self.headers)).await
    }

    /// Opens one connection to `url` with `headers` (used by the reconnect loop, whose
    /// per-attempt hook may change both).
    pub(crate) async fn connect_to(
        &self,
        url: &str,
        headers: &[(String, String)],
    ) -> Result<WebSocket> {
        if let Some(reason) = &self.request_error {
            return Err(Error::InvalidUri(reason.clone()));
        }
        let mut target = Target::parse(url)?;
        if let Some(path) = &self.unix_socket {
            target.unix = Some(path.clone());
        }
        let mut headers = headers.to_vec();
        let mut visited = vec![target.url.to_string()];
        let mut hops = 0;
        loop {
            match self.connect_once(&target, &headers).await {
                Err(Error::Status(response)) if is_redirect(response.status) => {
                    if hops == self.max_redirects {
                        return Err(Error::Redirect(RedirectError::TooMany {
                            max: self.max_redirects,
                        }));
                    }
                    hops += 1;
                    let next = redirect_target(&target, &response)?;
                    if visited.contains(&next.url.to_string()) {
                        return Err(Error::Redirect(RedirectError::Loop(next.url.to_string())));
                    }
                    visited.push(next.url.to_string());
                    tracing::debug!(from = %target.url, to = %next.url, status = response.status, "following redirect");
                    target = next;
                    if !target.same_origin_as_first(&visited) {
                        // Credentials are for the origin they were given to.
                        headers.retain(|(n, _)| {
                            !n.eq_ignore_ascii_case("authorization")
                                && !n.eq_ignore_ascii_case("cookie")
                        });
                        target.basic_auth = None;
                    }
                }
                other => return other,
            }
        }
    }

    async fn connect_once(
        &self,
        target: &Target,
        headers: &[(String, String)],
    ) -> Result<WebSocket> {
        let deadline = Instant::now() + self.open_timeout;
        if let Some(path) = &target.unix {
            // A Unix domain socket is connected to directly: proxies are for TCP.
            let io = self.open_unix(path, target, deadline).await?;
            return self.upgrade(io, target, headers, deadline).await;
        }
        let tunnel = match self.proxy_for(target)? {
            None => {
                // Every address the name resolves to, raced (RFC 8305), within the deadline.
                let tcp = timeout_at(deadline, self.dialer.connect(&target.host, target.port))
                    .await
                    .map_err(|_| Error::Timeout(Phase::Connect))??;
                // Small frames must not wait for Nagle's algorithm.
                tcp.set_nodelay(true)?;
                Tunnel::Tcp(tcp)
            }
            Some(proxy) => {
                tracing::debug!(proxy = %proxy.host, port = proxy.port, "connecting through a proxy");
                proxy::connect(
                    &proxy,
                    &target.host,
                    target.port,
                    deadline,
                    &self.tls,
                    &self.dialer,
                )
                .await?
            }
        };
        let io = match (tunnel, target.secure) {
            (Tunnel::Tcp(tcp), false) => MaybeTlsStream::Plain(tcp),
            (Tunnel::Tcp(tcp), true) => {
                MaybeTlsStream::ClientTls(Box::new(self.tls_to(target, tcp, deadline).await?))
            }
            (Tunnel::Tls(tunnel), false) => MaybeTlsStream::ClientTls(tunnel),
            (Tunnel::Tls(tunnel), true) => {
                MaybeTlsStream::ProxiedTls(Box::new(self.tls_to(target, *tunnel, deadline).await?))
            }
        };
        self.upgrade(io, target, headers, deadline).await
    }

    /// Connects to the Unix domain socket `path`, with TLS for `wss://`.
    #[cfg(unix)]
    async fn open_unix(
        &self,
        path: &Path,
        target: &Target,
        deadline: Instant,
    ) -> Result<MaybeTlsStream> {
        let unix = timeout_at(deadline, tokio::net::UnixStream::connect(path))
            .await
            .map_err(|_| Error::Timeout(Phase::Connect))?
            .map_err(|e| {
                Error::Io(std::io::Error::new(
                    e.kind(),
                    format!("{}: {e}", path.display()),
                ))
            })?;
        Ok(if target.secure {
            MaybeTlsStream::ClientUnixTls(Box::new(self.tls_to(target, unix, deadline).await?))
        } else {
            MaybeTlsStream::Unix(unix)
        })
    }

    /// No Unix domain sockets on this platform.
    #[cfg(not(unix))]
    async fn open_unix(
        &self,
        _path: &Path,
        _target: &Target,
        _deadline: Instant,
    ) -> Result<MaybeTlsStream> {
        Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "Unix domain sockets are not available on this platform",
        )))
    }

    /// The opening handshake on an open transport (TLS done).
    async fn upgrade(
        &self,
        io: MaybeTlsStream,
        target: &Target,
        headers: &[(String, String)],
        deadline: Instant,
    ) -> Result<WebSocket> {
        let request = ClientRequest {
            host: target.host_header.clone(),
            resource: target.resource.clone(),
            origin: self.origin.clone(),
            user_agent: self.user_agent.clone(),
            subprotocols: self.subprotocols.clone(),
            extensions: self.config.compression.as_ref().map(|c| c.client_offer()),
            basic_auth: target.basic_auth.clone(),
            headers: headers.to_vec(),
        };
        let handshake = ClientHandshake::try_new(
            &request,
            handshake::generate_key(),
            self.head_limits.clone(),
        )
        .map_err(|e| Error::InvalidUri(e.reason))?;
        client_handshake(io, handshake, &self.config, deadline).await
    }
}

impl ClientBuilder {
    /// The proxy this attempt goes through, if any (the environment is read now).
    fn proxy_for(&self, target: &Target) -> Result<Option<Proxy>> {
        match &self.proxy {
            ProxyChoice::Direct => Ok(None),
            ProxyChoice::Url(url) => Proxy::parse(url).map(Some),
            ProxyChoice::Environment => {
                match proxy::from_env(target.secure, &target.host, target.port) {
                    Some(url) => Proxy::parse(&url).map(Some),
                    None => Ok(None),
                }
            }
        }
    }

    /// TLS to the server over `io` (a TCP stream, or a proxy's TLS tunnel).
    async fn tls_to<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        target: &Target,
        io: S,
        deadline: Instant,
    ) -> Result<tokio_rustls::client::TlsStream<S>> {
        let config = self.tls.client_config().map_err(Error::Tls)?;
        let name = server_name(&target.host).map_err(Error::Tls)?;
        let connector = tokio_rustls::TlsConnector::from(config);
        timeout_at(deadline, connector.connect(name, io))
            .await
            .map_err(|_| Error::Timeout(Phase::Tls))?
            .map_err(Error::Tls)
    }
}

/// Where a builder's connections go: as the environment says, through a given proxy, or
/// directly.
#[derive(Clone, Debug)]
enum ProxyChoice {
    Environment,
    Url(String),
    Direct,
}

/// Runs the upgrade on an open transport: writes the request, reads the answer.
async fn client_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    mut handshake: ClientHandshake,
    config: &Config,
    deadline: Instant,
) -> Result<WebSocket<S>> {
    timeout_at(deadline, io.write_all(handshake.request_bytes()))
        .await
        .map_err(|_| Error::Timeout(Phase::Handshake))??;
    timeout_at(deadline, io.flush())
        .await
        .map_err(|_| Error::Timeout(Phase::Handshake))??;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = match timeout_at(deadline, io.read(&mut buf)).await {
            Err(_) => {
                return Err(match handshake.take_partial_response() {
                    Some(r) => Error::Status(Box::new(r)),
                    None => Error::Timeout(Phase::Handshake),
                })
            }
            Ok(Err(e)) => return Err(Error::Io(e)),
            Ok(Ok(0)) => return Err(handshake.receive_eof().into()),
            Ok(Ok(n)) => n,
        };
        let Some(accepted) = handshake.receive(&buf[..n])? else {
            continue;
        };
        let leftover = buf.get(accepted.consumed..n).unwrap_or(&[]);
        let deflate =
            match (&accepted.extensions, &config.compression) {
                (None, _) => None,
                (Some(value), Some(offered)) => Some(offered.client_accept(value).map_err(
                    |e| Error::InvalidResponse {
                        reason: e.to_string(),
                        response: Some(Box::new(accepted.response.clone())),
                    },
                )?),
                // Without an offer the handshake already refused any extension.
                (Some(value), None) => {
                    return Err(Error::InvalidResponse {
                        reason: format!("unsolicited extension {value}"),
                        response: Some(Box::new(accepted.response)),
                    })
                }
            };
        let ws = WebSocket::with_deflate(io, Role::Client, config, deflate, leftover)
            .with_negotiated(accepted.subprotocol, accepted.extensions)
            .with_response(accepted.response);
        return Ok(ws);
    }
}

fn is_redirect(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

fn redirect_target(from: &Target, response: &Response) -> Result<Target> {
    let location = response
        .headers
        .get_str("location")
        .ok_or(Error::Redirect(RedirectError::MissingLocation))?;
    let mut next = from
        .url
        .join(location.trim())
        .map_err(|_| Error::Redirect(RedirectError::Forbidden(location.to_owned())))?;
    // Servers often redirect with http(s) URLs; map them to their WebSocket schemes.
    let scheme = match next.scheme() {
        "http" => "ws",
        "https" => "wss",
        s => s,
    }
    .to_owned();
    if next.set_scheme(&scheme).is_err() || !matches!(scheme.as_str(), "ws" | "wss") {
        return Err(Error::Redirect(RedirectError::Forbidden(next.to_string())));
    }
    if from.secure && scheme == "ws" {
        return Err(Error::Redirect(RedirectError::Forbidden(next.to_string())));
    }
    let mut next = Target::parse(next.as_str())?;
    if let Some(path) = &from.unix {
        // Over a Unix socket, a redirect is followed only while it stays on the origin the
        // socket stands for, over the same socket: the socket was chosen for that origin, so
        // another host must not be asked for over it, nor may a local socket lead out to
        // the network.
        if next.origin() != from.origin() {
            return Err(Error::Redirect(RedirectError::Forbidden(
                next.url.to_string(),
            )));
        }
        next.unix = Some(path.clone());
    }
    Ok(next)
}

/// A parsed `ws://` or `wss://` URL, and the Unix domain socket to reach it over, if any.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    /// The URL (for `ws+unix://…:/resource`, `ws://localhost/resource`).
    pub(crate) url: Url,
    /// Connect over this Unix domain socket instead of TCP to `host` and `port`.
    pub(crate) unix: Option<PathBuf>,
    pub(crate) secure: bool,
    /// Host to connect to (IPv6 without brackets).
    pub(crate) host: String,
    pub(crate) port: u16,
    /// The Host header: host, plus the port when it is not the scheme's default.
    pub(crate) host_header: String,
    pub(crate) resource: String,
    pub(crate) basic_auth: Option<(String, String)>,
}

impl Target {
    pub(crate) fn parse(s: &str) -> Result<Self> {
        let url = Url::parse(s).map_err(|e| Error::InvalidUri(format!("{s}: {e}")))?;
        let secure = match url.scheme() {
            "ws" => false,
            "wss" => true,
            "ws+unix" => return Self::parse_unix(s, &url, false),
            "wss+unix" => return Self::parse_unix(s, &url, true),
            other => {
                return Err(Error::InvalidUri(format!(
                    "{s}: scheme {other} is not ws, wss, ws+unix or wss+unix"
                )))
            }
        };
        if url.fragment().is_some() {
            return Err(Error::InvalidUri(format!(
                "{s}: WebSocket URLs may not have a fragment"
            )));
        }
        let host_str = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| Error::InvalidUri(format!("{s}: no host")))?;
        let port = url
            .port_or_known_default()
            .unwrap_or(if secure { 443 } else { 80 });
        let host_header = match url.port() {
            Some(p) => format!("{host_str}:{p}"),
            None => host_str.to_owned(),
        };
        let host = host_str
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let mut resource = url.path().to_owned();
        if resource.is_empty() {
            resource.push('/');
        }
        if let Some(q) = url.query() {
            resource.push('?');
            resource.push_str(q);
        }
        let basic_auth = if url.username().is_empty() && url.password().is_none() {
            None
        } else {
            Some((
                percent_decode(url.username()),
                percent_decode(url.password().unwrap_or("")),
            ))
        };
        Ok(Self {
            url,
            unix: None,
            secure,
            host,
            port,
            host_header,
            resource,
            basic_auth,
        })
    }

    /// `ws+unix:///path/to.sock:/resource` (or `wss+unix://`): the socket path up to the
    /// first `:` (percent-decoded), then the resource (`/` when empty), for
    /// `ws://localhost/resource` as Node's `ws` and Python `websockets` name it.
    fn parse_unix(s: &str, url: &Url, secure: bool) -> Result<Self> {
        let invalid = |why: &str| Error::InvalidUri(format!("{s}: {why}"));
        if url.fragment().is_some() {
            return Err(invalid("WebSocket URLs may not have a fragment"));
        }
        if url.host_str().is_some_and(|h| !h.is_empty()) {
            return Err(invalid(
                "a Unix socket URL names no host: ws+unix:///path/to.sock:/resource",
            ));
        }
        let (socket, resource) = url.path().split_once(':').unwrap_or((url.path(), ""));
        if socket.is_empty() {
            return Err(invalid("no socket path: ws+unix:///path/to.sock:/resource"));
        }
        let resource = if resource.is_empty() { "/" } else { resource };
        if !resource.starts_with('/') {
            return Err(invalid(
                "the resource after the socket path must start with /",
            ));
        }
        let scheme = if secure { "wss" } else { "ws" };
        let mut view = format!("{scheme}://localhost{resource}");
        if let Some(query) = url.query() {
            view.push('?');
            view.push_str(query);
        }
        let mut target = Self::parse(&view)?;
        target.unix = Some(PathBuf::from(percent_decode(socket)));
        Ok(target)
    }

    fn origin(&self) -> (bool, &str, u16) {
        (self.secure, self.host.as_str(), self.port)
    }

    fn same_origin_as_first(&self, visited: &[String]) -> bool {
        visited
            .first()
            .and_then(|u| Self::parse(u).ok())
            .is_some_and(|first| first.origin() == self.origin())
    }
}

pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                // Both digits were checked just above.
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
