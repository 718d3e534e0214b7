//! Upgrading a request of a hyper 1 server (or of a framework built on hyper) to a tether
//! [`WebSocket`]. Feature `hyper`.
//!
//! tether's own [`Server`](crate::Server) reads the HTTP request itself. When another server
//! owns the connection, [`upgrade`] takes the request as that server parsed it and does the
//! rest of the opening handshake: it checks the request with the rules of tether's server
//! ([`validate_request`](tether_proto::handshake::validate_request)), runs the
//! [`ServerConfig::process_request`] hooks, negotiates the subprotocol and permessage-deflate
//! ([`negotiate`](tether_proto::handshake::negotiate)), and returns the response to answer
//! with and a [`PendingUpgrade`]. Once the server has sent the response and handed over the
//! connection, the [`PendingUpgrade`] resolves to the open [`WebSocket`].
//!
//! What the connection gets from the [`ServerConfig`]: its [`Config`] (message,
//! frame and fragment limits, keepalive pings and their timeout, the close timeout, the write
//! buffer's water marks, compression), its subprotocols and its hooks; all behave as on
//! tether's own server. Its TLS settings, open timeout and head limits are not used: the
//! framework owns the socket and reads the head. Graceful shutdown: the framework's own does
//! not close upgraded connections, so make one [`ShutdownHandle`](crate::ShutdownHandle)
//! (`ShutdownHandle::new()`) for the app, have each handler
//! [`watch`](crate::ShutdownHandle::watch) its connection, and call
//! [`shutdown`](crate::ShutdownHandle::shutdown) (1001) or
//! [`restart`](crate::ShutdownHandle::restart) (1012) when the app stops. tether's server
//! sets `TCP_NODELAY` on every accepted socket; do the same on the sockets you hand to hyper.
//!
//! With the `http2` feature (and a hyper HTTP/2 server built with
//! `enable_connect_protocol()`), WebSocket over HTTP/2 (RFC 8441) is accepted as well: an
//! extended CONNECT request with `:protocol websocket` is answered with 200 and becomes one
//! WebSocket on one HTTP/2 stream. See [`upgrade`].
//!
//! ```no_run
//! use std::convert::Infallible;
//! use std::sync::Arc;
//!
//! use http_body_util::Full;
//! use hyper::body::{Bytes, Incoming};
//! use hyper::server::conn::http1;
//! use hyper::service::service_fn;
//! use hyper::{Request, Response};
//! use hyper_util::rt::TokioIo;
//! use tether::{upgrade, ServerConfig};
//!
//! async fn handle(
//!     mut req: Request<Incoming>,
//!     config: Arc<ServerConfig>,
//! ) -> Result<Response<Full<Bytes>>, Infallible> {
//!     if !upgrade::is_upgrade_request(&req) {
//!         return Ok(Response::new(Full::new(Bytes::from_static(b"plain HTTP\n"))));
//!     }
//!     // Err: the answer to a request that cannot be upgraded (400, 405, 426, ...).
//!     let (response, pending) = match upgrade::upgrade(&mut req, &config) {
//!         Ok(accepted) => accepted,
//!         Err(refusal) => return Ok(refusal),
//!     };
//!     tokio::spawn(async move {
//!         let mut ws = match pending.await {
//!             Ok(ws) => ws,
//!             Err(e) => return eprintln!("upgrade failed: {e}"),
//!         };
//!         while let Some(Ok(msg)) = ws.recv().await {
//!             if ws.send(msg).await.is_err() {
//!                 break;
//!             }
//!         }
//!     });
//!     Ok(response)
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let config = Arc::new(ServerConfig::default().subprotocol("chat"));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9001").await?;
//! loop {
//!     let (tcp, _) = listener.accept().await?;
//!     tcp.set_nodelay(true)?;
//!     let config = config.clone();
//!     let service = service_fn(move |req| handle(req, config.clone()));
//!     tokio::spawn(async move {
//!         // with_upgrades: hand the connection over after the 101 answer.
//!         let conn = http1::Builder::new().serve_connection(TokioIo::new(tcp), service);
//!         if let Err(e) = conn.with_upgrades().await {
//!             eprintln!("connection failed: {e}");
//!         }
//!     });
//! }
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Extensions, Method, Response, StatusCode, Uri, Version};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tether_proto::handshake::{
    self, value_contains_token, Headers, Request, RequestError, RequestHead,
};
use tether_proto::{DeflateParams, Role};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::server::{HttpRequest, HttpResponse, ServerConfig};
use crate::websocket::{MessageBudget, WebSocket};

/// The WebSocket that [`PendingUpgrade`] resolves to: tether's connection on the transport
/// hyper hands over after the upgrade.
pub type UpgradedWebSocket = WebSocket<TokioIo<Upgraded>>;

/// Whether `req` asks for a WebSocket: `Upgrade: websocket` and `Connection: upgrade` (tokens
/// compared case-insensitively), or, with the `http2` feature, an HTTP/2 extended CONNECT with
/// `:protocol websocket`. A cheap check for routing; [`upgrade`] checks everything else.
pub fn is_upgrade_request<B>(req: &http::Request<B>) -> bool {
    is_upgrade(req.method(), req.version(), req.headers(), req.extensions())
}

/// Accepts `req` as a WebSocket opening handshake with `config`'s settings, or refuses it.
///
/// `Ok((response, pending))`: answer the request with `response` (101 Switching Protocols
/// with `Upgrade`, `Connection`, `Sec-WebSocket-Accept` and, when agreed,
/// `Sec-WebSocket-Protocol` and `Sec-WebSocket-Extensions`; 200 with the last two over
/// HTTP/2), then await `pending` (in a task of its own: it resolves only after the response
/// has been sent) for the open connection. The hyper connection must be served with
/// upgrades (`http1::Builder::serve_connection(..).with_upgrades()`, or hyper-util's `auto`
/// builder's `serve_connection_with_upgrades`).
///
/// `Err(response)`: answer with it, the request is not upgraded. It is what tether's own
/// server answers: a hook's response when a [`ServerConfig::process_request`] hook answers
/// the request (hooks see every request, valid or not), else for an invalid request the
/// status, headers and `reason + "\n"` body of the
/// [`RequestError`] from
/// [`validate_request`](tether_proto::handshake::validate_request) (400; 405 with
/// `Allow: GET`; 426 with `Upgrade: websocket` and `Sec-WebSocket-Version: 13`), as
/// `text/plain; charset=utf-8`. A valid request that hyper cannot upgrade (no `OnUpgrade` in
/// its extensions: another extractor took it, or the request did not come from a hyper
/// server) gets 500.
///
/// `req` must be HTTP/1.1 (other versions get 400, as from tether's server), except with the
/// `http2` feature: an HTTP/2 `CONNECT` with the `:protocol` pseudo-header
/// `websocket` ([`hyper::ext::Protocol`]) is then a WebSocket request too (RFC 8441), checked
/// like an HTTP/1.1 one except that there is no `Sec-WebSocket-Key` (none is needed, one sent
/// is ignored) and that the host may come from `:authority`; `Sec-WebSocket-Version: 13` is
/// still required. [`PendingUpgrade::request`] then reports method `CONNECT` and an empty
/// key.
///
/// This takes the request's `OnUpgrade` out of its extensions (as `hyper::upgrade::on`
/// does) when the request is accepted, and changes nothing otherwise.
pub fn upgrade<B, R: From<Bytes>>(
    req: &mut http::Request<B>,
    config: &ServerConfig,
) -> std::result::Result<(Response<R>, PendingUpgrade), Response<R>> {
    let checked = match check(
        req.method(),
        req.uri(),
        req.version(),
        req.headers(),
        req.extensions(),
    ) {
        Ok(checked) => checked,
        Err(error) => return Err(refusal(&error, Some(config))),
    };
    let on_upgrade = req.extensions_mut().remove::<OnUpgrade>();
    accept(checked, on_upgrade, config, config.subprotocols())
}

/// The open connection, once the response that [`upgrade`] returned has been sent: a future
/// that resolves to the [`UpgradedWebSocket`], or to [`Error::Io`] when hyper could not hand
/// the connection over (the client went away, or the connection was not served with
/// upgrades).
///
/// Until it is awaited, [`request`](Self::request) tells what the client asked for.
#[must_use = "the connection opens only when this is awaited"]
pub struct PendingUpgrade {
    request: Request,
    on_upgrade: OnUpgrade,
    /// Everything the connection is built from; taken when the upgrade completes.
    open: Option<Open>,
    subprotocol: Option<String>,
    extensions: Option<String>,
}

/// The settings and negotiated parameters a [`PendingUpgrade`] opens its connection with.
struct Open {
    config: Config,
    deflate: Option<DeflateParams>,
    budget: Option<Arc<MessageBudget>>,
}

impl PendingUpgrade {
    /// The validated handshake request: path, headers, offered subprotocols and extensions.
    pub fn request(&self) -> &Request {
        &self.request
    }

    /// The subprotocol agreed with the client, if any.
    pub fn subprotocol(&self) -> Option<&str> {
        self.subprotocol.as_deref()
    }

    /// The `Sec-WebSocket-Extensions` answer (permessage-deflate's parameters), if
    /// compression was agreed.
    pub fn extensions(&self) -> Option<&str> {
        self.extensions.as_deref()
    }
}

impl fmt::Debug for PendingUpgrade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingUpgrade")
            .field("path", &self.request.path)
            .field("subprotocol", &self.subprotocol)
            .field("extensions", &self.extensions)
            .finish_non_exhaustive()
    }
}

impl Future for PendingUpgrade {
    type Output = Result<UpgradedWebSocket>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let completed = || Error::Io(io::Error::other("PendingUpgrade polled after it completed"));
        if this.open.is_none() {
            // Polling hyper's future again would not be answered.
            return Poll::Ready(Err(completed()));
        }
        let upgraded = ready!(Pin::new(&mut this.on_upgrade).poll(cx));
        let open = this.open.take().ok_or_else(completed)?;
        let upgraded = upgraded.map_err(|e| Error::Io(io::Error::other(e)))?;
        // hyper's `Upgraded` replays the bytes it read past the head itself: no leftover.
        let ws = WebSocket::with_deflate(
            TokioIo::new(upgraded),
            Role::Server,
            &open.config,
            open.deflate,
            &[],
        )
        .with_budget(open.budget)
        .with_negotiated(this.subprotocol.clone(), this.extensions.clone());
        Poll::Ready(Ok(ws))
    }
}

// ---------------------------------------------------------------------------------------------
// The steps, shared with the axum extractor
// ---------------------------------------------------------------------------------------------

/// A request that failed the checks: the error, and the request as received when the error's
/// own head is not it (RFC 8441 requests are checked as their HTTP/1.1 equivalent).
#[derive(Debug)]
pub(crate) struct Invalid {
    pub(crate) error: RequestError,
    received: Option<Box<RequestHead>>,
}

impl Invalid {
    /// The request as received, for the hooks.
    fn head(&self) -> Option<&RequestHead> {
        self.received.as_deref().or_else(|| self.error.head())
    }
}

impl From<RequestError> for Invalid {
    fn from(error: RequestError) -> Self {
        Self {
            error,
            received: None,
        }
    }
}

/// A request that passed the checks of [`validate_request`](handshake::validate_request).
#[derive(Debug)]
pub(crate) struct Checked {
    pub(crate) request: Request,
    /// RFC 8441: an HTTP/2 extended CONNECT, answered with 200 instead of 101.
    h2: bool,
}

fn is_upgrade(method: &Method, version: Version, headers: &HeaderMap, ext: &Extensions) -> bool {
    let has = |name: HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .any(|v| value_contains_token(v.as_bytes(), token))
    };
    (has(header::UPGRADE, "websocket") && has(header::CONNECTION, "upgrade"))
        || is_extended_connect(method, version, ext)
}

/// An HTTP/2 CONNECT with `:protocol websocket` (RFC 8441 section 4).
#[cfg(feature = "http2")]
fn is_extended_connect(method: &Method, version: Version, ext: &Extensions) -> bool {
    version == Version::HTTP_2
        && method == Method::CONNECT
        && ext
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

#[cfg(not(feature = "http2"))]
fn is_extended_connect(_: &Method, _: Version, _: &Extensions) -> bool {
    false
}

/// Runs tether's checks on a request a framework parsed (see [`upgrade`]).
pub(crate) fn check(
    method: &Method,
    uri: &Uri,
    version: Version,
    headers: &HeaderMap,
    ext: &Extensions,
) -> std::result::Result<Checked, Invalid> {
    let mut list = Headers::new();
    for (name, value) in headers {
        list.push(name.as_str(), value.as_bytes());
    }
    if is_extended_connect(method, version, ext) {
        return check_extended_connect(uri, list);
    }
    // The request target as sent: origin-form ("/chat?x=1") prints as itself.
    let path = uri.to_string();
    let request =
        handshake::validate_request(method.as_str(), &path, version == Version::HTTP_11, list)?;
    Ok(Checked { request, h2: false })
}

/// RFC 8441: checks an extended CONNECT with the HTTP/1.1 rules, by validating the
/// equivalent HTTP/1.1 request: the same headers, with the host from `:authority` when there
/// is no `Host`, `Upgrade` and `Connection`, and a placeholder key (none is sent over HTTP/2).
/// The request reported has the headers as received.
fn check_extended_connect(uri: &Uri, headers: Headers) -> std::result::Result<Checked, Invalid> {
    /// Base64 of 16 bytes, to pass the key check; never answered to.
    const PLACEHOLDER_KEY: &str = "AAAAAAAAAAAAAAAAAAAAAA==";
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let mut equivalent: Headers = headers
        .iter()
        .filter(|h| !h.name.eq_ignore_ascii_case("sec-websocket-key"))
        .cloned()
        .collect::<Vec<_>>()
        .into();
    if equivalent.get("host").is_none() {
        if let Some(authority) = uri.authority() {
            equivalent.push("host", authority.as_str());
        }
    }
    equivalent.push("upgrade", "websocket");
    equivalent.push("connection", "upgrade");
    equivalent.push("sec-websocket-key", PLACEHOLDER_KEY);
    let mut request = match handshake::validate_request("GET", &path, true, equivalent) {
        Ok(request) => request,
        Err(error) => {
            let received = RequestHead {
                method: Method::CONNECT.as_str().to_owned(),
                path,
                headers,
            };
            return Err(Invalid {
                error,
                received: Some(Box::new(received)),
            });
        }
    };
    request.method = Method::CONNECT.as_str().to_owned();
    request.headers = headers;
    request.key = String::new();
    Ok(Checked { request, h2: true })
}

/// Accepts a checked request: runs the hooks, negotiates with `subprotocols` (the server's,
/// in preference order) and `config`'s compression, and builds the response and the pending
/// connection.
pub(crate) fn accept<R: From<Bytes>>(
    checked: Checked,
    on_upgrade: Option<OnUpgrade>,
    config: &ServerConfig,
    subprotocols: &[String],
) -> std::result::Result<(Response<R>, PendingUpgrade), Response<R>> {
    let Checked { request, h2 } = checked;
    let view = HttpRequest {
        method: &request.method,
        path: &request.path,
        headers: &request.headers,
    };
    if let Some(answer) = config.hook_answer(&view) {
        return Err(hook_response(answer));
    }
    let Some(on_upgrade) = on_upgrade else {
        return Err(not_upgradable());
    };
    let settings = config.connection();
    let negotiated = handshake::negotiate(&request, subprotocols, settings.compression.as_ref());
    let (status, skip): (_, &[HeaderName]) = if h2 {
        // No Upgrade, Connection or Sec-WebSocket-Accept over HTTP/2 (RFC 8441 section 5).
        let skip = &[
            header::UPGRADE,
            header::CONNECTION,
            header::SEC_WEBSOCKET_ACCEPT,
        ];
        (StatusCode::OK, skip)
    } else {
        (StatusCode::SWITCHING_PROTOCOLS, &[])
    };
    let mut response = Response::new(R::from(Bytes::new()));
    *response.status_mut() = status;
    for (name, value) in negotiated.response_headers() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) else {
            // The values come from the client's own header values and tether's answers, so
            // this does not happen; refuse rather than answer without a header agreed on.
            return Err(text_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &[],
                "cannot encode the handshake answer\n",
            ));
        };
        if !skip.contains(&name) {
            response.headers_mut().append(name, value);
        }
    }
    let pending = PendingUpgrade {
        request,
        on_upgrade,
        open: Some(Open {
            config: settings.clone(),
            deflate: negotiated.deflate,
            budget: config.budget(),
        }),
        subprotocol: negotiated.subprotocol,
        extensions: negotiated.extensions,
    };
    Ok((response, pending))
}

/// The answer to a request that failed the checks: a hook's answer when `config` has a hook
/// that answers it, else the error's status, headers and reason.
pub(crate) fn refusal<R: From<Bytes>>(
    invalid: &Invalid,
    config: Option<&ServerConfig>,
) -> Response<R> {
    let hooked = config.zip(invalid.head()).and_then(|(config, head)| {
        config.hook_answer(&HttpRequest {
            method: &head.method,
            path: &head.path,
            headers: &head.headers,
        })
    });
    if let Some(answer) = hooked {
        return hook_response(answer);
    }
    let error = &invalid.error;
    let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut headers: Vec<(&str, &str)> = error.headers().to_vec();
    if status == StatusCode::UPGRADE_REQUIRED {
        // Upgrade is hop-by-hop: name it in Connection (RFC 9110 section 7.8).
        headers.push(("connection", "upgrade"));
    }
    text_response(status, &headers, &format!("{}\n", error.reason))
}

/// 500 for a valid request whose connection the server cannot hand over.
pub(crate) fn not_upgradable<R: From<Bytes>>() -> Response<R> {
    text_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        &[],
        &format!("{NOT_UPGRADABLE}\n"),
    )
}

/// Why [`not_upgradable`] answers 500.
pub(crate) const NOT_UPGRADABLE: &str = "this connection cannot be upgraded";

/// A plain-text response with `headers` and `body`.
fn text_response<R: From<Bytes>>(
    status: StatusCode,
    headers: &[(&str, &str)],
    body: &str,
) -> Response<R> {
    let mut response = Response::new(R::from(Bytes::copy_from_slice(body.as_bytes())));
    *response.status_mut() = status;
    let map = response.headers_mut();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            map.append(name, value);
        }
    }
    map.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A hook's [`HttpResponse`] as an HTTP response; headers that are not valid HTTP are
/// dropped (tether's server removes line breaks from them instead), `Content-Length` is the
/// framework's business.
fn hook_response<R: From<Bytes>>(answer: HttpResponse) -> Response<R> {
    let mut response = Response::new(R::from(Bytes::from(answer.body)));
    *response.status_mut() =
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in &answer.headers {
        if name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, headers: &[(&str, &str)]) -> http::Request<()> {
        let mut builder = http::Request::builder()
            .method(method)
            .uri("/chat?room=1")
            .version(Version::HTTP_11);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    const VALID: &[(&str, &str)] = &[
        ("host", "example.com"),
        ("upgrade", "websocket"),
        ("connection", "keep-alive, Upgrade"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
        ("sec-websocket-protocol", "chat, superchat"),
        (
            "sec-websocket-extensions",
            "permessage-deflate; client_max_window_bits",
        ),
    ];

    #[test]
    fn recognises_upgrade_requests() {
        assert!(is_upgrade_request(&request("GET", VALID)));
        assert!(!is_upgrade_request(&request("GET", &[("host", "x")])));
        assert!(!is_upgrade_request(&request(
            "GET",
            &[("upgrade", "websocket"), ("connection", "keep-alive")]
        )));
    }

    #[test]
    fn accepts_with_the_rfc_answer_and_negotiates() {
        let mut req = request("GET", VALID);
        let config = ServerConfig::default().subprotocol("superchat");
        // No OnUpgrade outside hyper: a valid request is then refused with 500.
        let refused: Response<Bytes> = upgrade(&mut req, &config).unwrap_err();
        assert_eq!(refused.status(), StatusCode::INTERNAL_SERVER_ERROR);

        let checked = check(
            req.method(),
            req.uri(),
            req.version(),
            req.headers(),
            req.extensions(),
        )
        .unwrap();
        assert_eq!(checked.request.path, "/chat?room=1");
        assert_eq!(checked.request.subprotocols, ["chat", "superchat"]);
        let (response, pending): (Response<Bytes>, _) = accept(
            checked,
            Some(hyper::upgrade::on(http::Request::new(()))),
            &config,
            config.subprotocols(),
        )
        .unwrap();
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        let h = response.headers();
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "Upgrade");
        assert_eq!(h["sec-websocket-accept"], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(h["sec-websocket-protocol"], "superchat");
        assert!(h["sec-websocket-extensions"]
            .to_str()
            .unwrap()
            .starts_with("permessage-deflate"));
        assert_eq!(pending.subprotocol(), Some("superchat"));
        assert_eq!(pending.request().header("host"), Some("example.com"));
    }

    #[test]
    fn refusals_are_tethers_answers() {
        let config = ServerConfig::default();
        // Method, request headers, expected status, expected headers.
        type Case = (&'static str, Pairs, u16, Pairs);
        type Pairs = &'static [(&'static str, &'static str)];
        let cases: &[Case] = &[
            ("POST", VALID, 405, &[("allow", "GET")]),
            (
                "GET",
                &[("host", "x")],
                426,
                &[
                    ("upgrade", "websocket"),
                    ("sec-websocket-version", "13"),
                    ("connection", "upgrade"),
                ],
            ),
            (
                "GET",
                &[
                    ("host", "x"),
                    ("upgrade", "websocket"),
                    ("connection", "upgrade"),
                    ("sec-websocket-version", "13"),
                    ("sec-websocket-key", "short"),
                ],
                400,
                &[],
            ),
        ];
        for (method, headers, status, extra) in cases {
            let mut req = request(method, headers);
            let refused: Response<Bytes> = upgrade(&mut req, &config).unwrap_err();
            assert_eq!(refused.status().as_u16(), *status, "{method} {headers:?}");
            for (name, value) in *extra {
                assert_eq!(refused.headers()[*name], *value, "{status}: {name}");
            }
            assert_eq!(
                refused.headers()["content-type"],
                "text/plain; charset=utf-8"
            );
            assert!(refused.body().ends_with(b"\n"));
        }
    }

    #[test]
    fn hooks_answer_first() {
        let config = ServerConfig::default().basic_auth_user("r", "u", "p");
        for method in ["GET", "POST"] {
            let mut req = request(method, VALID);
            let refused: Response<Bytes> = upgrade(&mut req, &config).unwrap_err();
            assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
            assert!(refused.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Basic realm=\"r\""));
        }
    }

    #[test]
    fn http10_is_refused() {
        let mut req = request("GET", VALID);
        *req.version_mut() = Version::HTTP_10;
        let refused: Response<Bytes> = upgrade(&mut req, &ServerConfig::default()).unwrap_err();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    }
    #[cfg(feature = "http2")]
    #[test]
    fn extended_connect_is_checked_as_its_http11_equivalent() {
        let connect = |version: Option<&str>| {
            let mut builder = http::Request::builder()
                .method(Method::CONNECT)
                .uri("http://example.com/chat?room=1")
                .version(Version::HTTP_2)
                .header("sec-websocket-protocol", "chat")
                .extension(hyper::ext::Protocol::from_static("websocket"));
            if let Some(version) = version {
                builder = builder.header("sec-websocket-version", version);
            }
            builder.body(()).unwrap()
        };
        let req = connect(Some("13"));
        assert!(is_upgrade_request(&req));
        let checked = check(
            req.method(),
            req.uri(),
            req.version(),
            req.headers(),
            req.extensions(),
        )
        .unwrap();
        assert_eq!(checked.request.method, "CONNECT");
        assert_eq!(checked.request.path, "/chat?room=1");
        assert_eq!(checked.request.key, "");
        assert_eq!(
            checked.request.header("host"),
            None,
            "the headers as received"
        );
        let config = ServerConfig::default().subprotocol("chat");
        let (response, _pending): (Response<Bytes>, _) = accept(
            checked,
            Some(hyper::upgrade::on(http::Request::new(()))),
            &config,
            config.subprotocols(),
        )
        .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["sec-websocket-protocol"], "chat");
        for absent in ["upgrade", "connection", "sec-websocket-accept"] {
            assert!(response.headers().get(absent).is_none(), "{absent}");
        }

        // Hooks see the request as received, also when it is refused.
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let config = ServerConfig::default().process_request(move |r| {
            log.lock()
                .unwrap()
                .push((r.method.to_owned(), r.header("upgrade").is_some()));
            None
        });
        let refused: Response<Bytes> = upgrade(&mut connect(None), &config).unwrap_err();
        assert_eq!(refused.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(*seen.lock().unwrap(), [("CONNECT".to_owned(), false)]);
    }
}
