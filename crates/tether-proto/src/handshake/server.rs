//! Server side of the opening handshake (RFC 6455 section 4.2).
//!
//! Two ways in:
//!
//! * With your own transport: feed the bytes read to a [`ServerHandshake`], which parses the
//!   head and hands back a checked [`Request`] (or a [`RequestError`] to answer with).
//! * Behind a framework that already parsed the HTTP head (hyper, axum, actix, ...): pass
//!   method, target, version and headers to [`validate_request`].
//!
//! Either way, [`negotiate`] then picks the subprotocol and permessage-deflate parameters, and
//! the answer is [`accept_response`] (complete bytes) or the framework's own 101 carrying
//! [`Negotiated::response_headers`].

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use super::{accept_key, ALREADY_FINISHED};
use crate::http::{
    allowed_header, build_response, header_slots, owned_headers, put_header, strip_line_breaks,
    HeadLimits, HeadOverflow, HeadReader, Headers, Occurrence,
};
use crate::{DeflateConfig, DeflateParams};

/// A valid WebSocket upgrade request, returned by [`ServerHandshake::receive`] and
/// [`validate_request`].
///
/// Next: decide whether to accept (check `path`, `Origin`, credentials, pick one of
/// `subprotocols`, negotiate `extensions`: [`negotiate`] does the last two), then write
/// [`accept_response`] or an [`http_response`](crate::http::http_response), and feed the bytes
/// of the last chunk after `consumed` to the connection.
#[derive(Clone, Debug)]
pub struct Request {
    /// Request method (always "GET").
    pub method: String,
    /// Request target as sent, e.g. "/chat?x=1".
    pub path: String,
    /// All request headers, in order received.
    pub headers: Headers,
    /// The `Sec-WebSocket-Key` value (validated: base64 of 16 bytes).
    pub key: String,
    /// Offered subprotocols, in order, from all `Sec-WebSocket-Protocol` headers.
    pub subprotocols: Vec<String>,
    /// All `Sec-WebSocket-Extensions` values joined with ", "; `None` when there is no offer.
    pub extensions: Option<String>,
    /// Bytes of the last `data` passed to [`ServerHandshake::receive`] that belonged to the
    /// head; the rest already belong to the WebSocket connection. Always 0 from
    /// [`validate_request`].
    pub consumed: usize,
}

impl Request {
    /// First header called `name` (ASCII case-insensitive) as text; `None` if absent or not
    /// UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get_str(name)
    }
}

/// A request the server must refuse. Write [`RequestError::response_bytes`] and close.
///
/// Statuses used by [`ServerHandshake`] (and, except 414 and 431, by [`validate_request`]):
/// - 414: the request line is longer than [`HeadLimits::max_line`];
/// - 431: a header line is longer than `max_line`, more than `max_headers` headers, or the head
///   is longer than `max_head`;
/// - 400: malformed HTTP, HTTP version other than 1.1, missing/duplicate/empty `Host`,
///   `Connection` without `upgrade`, missing/duplicate/invalid `Sec-WebSocket-Key`, non-UTF-8
///   `Sec-WebSocket-Protocol` or `Sec-WebSocket-Extensions`;
/// - 405 (with `Allow: GET`): method other than GET;
/// - 426 (with `Upgrade: websocket`, `Sec-WebSocket-Version: 13`): no `Upgrade: websocket`, or
///   `Sec-WebSocket-Version` missing, repeated or not 13.
#[derive(Debug, Clone)]
pub struct RequestError {
    /// HTTP status to answer with.
    pub status: u16,
    /// Short explanation, safe for a client to see (never echoes request data).
    pub reason: String,
    headers: Vec<(&'static str, &'static str)>,
    head: Option<Box<RequestHead>>,
}

/// The method, target and headers of a request that parsed as HTTP, valid upgrade or not.
#[derive(Clone, Debug)]
pub struct RequestHead {
    /// Request method, e.g. "GET".
    pub method: String,
    /// Request target as sent, e.g. "/healthz".
    pub path: String,
    /// All request headers, in order received.
    pub headers: Headers,
}

impl RequestError {
    fn new(status: u16, reason: impl Into<String>) -> Self {
        let headers = match status {
            405 => vec![("Allow", "GET")],
            426 => vec![("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")],
            _ => Vec::new(),
        };
        Self {
            status,
            reason: reason.into(),
            headers,
            head: None,
        }
    }

    /// The request's method, target and headers when it parsed as HTTP but is not a valid
    /// upgrade (a plain `GET /healthz`, a `POST`, a wrong version …), so that a server can
    /// still route or answer it.
    pub fn head(&self) -> Option<&RequestHead> {
        self.head.as_deref()
    }

    /// Extra headers sent with this error (`Allow` for 405; `Upgrade` and
    /// `Sec-WebSocket-Version` for 426), for callers building their own response.
    pub fn headers(&self) -> &[(&'static str, &'static str)] {
        &self.headers
    }

    /// The full HTTP response to write before closing: status line, the extra headers,
    /// `Content-Type: text/plain; charset=utf-8`, `Content-Length`, `Connection: close` (426
    /// sends `Connection: Upgrade, close`), and body `reason + "\n"`.
    pub fn response_bytes(&self) -> Vec<u8> {
        let mut headers: Vec<(&str, &str)> = self.headers.clone();
        headers.push(("Content-Type", "text/plain; charset=utf-8"));
        let connection = if self.status == 426 {
            "Upgrade, close"
        } else {
            "close"
        };
        let body = format!("{}\n", self.reason);
        build_response(self.status, &headers, body.as_bytes(), connection)
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rejected WebSocket upgrade request (HTTP {}): {}",
            self.status, self.reason
        )
    }
}

impl std::error::Error for RequestError {}

/// Server handshake progress.
#[derive(Debug)]
enum ServerState {
    Head(HeadReader),
    Failed(RequestError),
    Done,
}

/// Server side of the opening handshake: an incremental request parser.
///
/// Create one per connection with [`ServerHandshake::new`], then feed every chunk read to
/// [`ServerHandshake::receive`].
#[derive(Debug)]
pub struct ServerHandshake {
    limits: HeadLimits,
    state: ServerState,
}

impl ServerHandshake {
    /// Starts waiting for a request head bounded by `limits` (usually
    /// [`HeadLimits::default`]; `max_body_prefix` is unused here).
    pub fn new(limits: HeadLimits) -> Self {
        Self {
            limits,
            state: ServerState::Head(HeadReader::default()),
        }
    }

    /// Feeds bytes from the client. `Ok(None)`: need more. `Ok(Some(request))`: a valid
    /// WebSocket upgrade request (`request.consumed` = bytes of the last `data` that belonged
    /// to the head; bytes after it are not looked at). `Err(error)`: write
    /// `error.response_bytes()` and close.
    ///
    /// After an error, further calls return the same error. After success, further calls are
    /// a logic error and return a 500 error "handshake already finished".
    pub fn receive(&mut self, data: &[u8]) -> Result<Option<Request>, RequestError> {
        match std::mem::replace(&mut self.state, ServerState::Done) {
            ServerState::Head(mut reader) => {
                let result = match reader.feed(data, &self.limits) {
                    Ok(None) => {
                        self.state = ServerState::Head(reader);
                        return Ok(None);
                    }
                    Ok(Some(end)) => {
                        let head = reader.buf.get(..end.len).unwrap_or_default();
                        parse_request(head, reader.lines, &self.limits).map(|mut request| {
                            request.consumed = end.consumed;
                            request
                        })
                    }
                    Err(overflow) => {
                        let status = if overflow == HeadOverflow::FirstLine {
                            414
                        } else {
                            431
                        };
                        Err(RequestError::new(
                            status,
                            overflow.describe(&self.limits, "request line"),
                        ))
                    }
                };
                match result {
                    Ok(request) => Ok(Some(request)),
                    Err(error) => {
                        self.state = ServerState::Failed(error.clone());
                        Err(error)
                    }
                }
            }
            ServerState::Failed(error) => {
                self.state = ServerState::Failed(error.clone());
                Err(error)
            }
            ServerState::Done => Err(RequestError::new(500, ALREADY_FINISHED)),
        }
    }
}

/// Checks an upgrade request whose head a framework (hyper, axum, actix, ...) already
/// parsed, with the rules [`ServerHandshake::receive`] applies (RFC 6455 section 4.2.1).
///
/// `method` and `path` are the request method and target as sent; `http11` says whether the
/// request is HTTP/1.1 (WebSocket over HTTP/2, RFC 8441, is not supported: pass `false` and
/// the request is refused with 400); `headers` are all request headers in order received
/// (whitespace around values is ignored by the checks, and the values are kept as given).
///
/// On success the returned [`Request`] has `consumed` 0; next call [`negotiate`] and answer
/// with a 101 carrying [`Negotiated::response_headers`] (or write [`accept_response`]). On
/// error the [`RequestError`] says how to refuse: answer with its `status`,
/// [`RequestError::headers`] and `reason` (or write [`RequestError::response_bytes`]);
/// [`RequestError::head`] gives the method, target and headers back, so the request can
/// still be routed elsewhere. The checks, in order:
/// - 405 (with `Allow: GET`): method other than GET;
/// - 400: not HTTP/1.1; `Host` missing, empty or repeated;
/// - 426 (with `Upgrade: websocket`, `Sec-WebSocket-Version: 13`): no `Upgrade: websocket`;
/// - 400: `Connection` without `upgrade`;
/// - 426 (same headers): `Sec-WebSocket-Version` missing, repeated or not 13;
/// - 400: `Sec-WebSocket-Key` missing, repeated or not base64 of 16 bytes; non-UTF-8
///   `Sec-WebSocket-Protocol` or `Sec-WebSocket-Extensions`.
pub fn validate_request(
    method: &str,
    path: &str,
    http11: bool,
    headers: Headers,
) -> Result<Request, RequestError> {
    match validate_upgrade(method, http11, &headers) {
        Ok((key, subprotocols, extensions)) => Ok(Request {
            method: method.to_owned(),
            path: path.to_owned(),
            headers,
            key,
            subprotocols,
            extensions,
            consumed: 0,
        }),
        Err(mut error) => {
            error.head = Some(Box::new(RequestHead {
                method: method.to_owned(),
                path: path.to_owned(),
                headers,
            }));
            Err(error)
        }
    }
}

/// Parses and validates a complete request head (RFC 6455 section 4.2.1); `consumed` is left
/// at 0 for the caller to set.
fn parse_request(head: &[u8], lines: usize, limits: &HeadLimits) -> Result<Request, RequestError> {
    let bad = |reason: &str| RequestError::new(400, reason);
    let mut slots = header_slots(lines, limits);
    let mut parsed = httparse::Request::new(&mut slots);
    match parsed.parse(head) {
        Ok(httparse::Status::Complete(len)) if len == head.len() => {}
        Ok(_) => return Err(bad("malformed HTTP request")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(RequestError::new(
                431,
                HeadOverflow::TooManyHeaders.describe(limits, "request line"),
            ))
        }
        Err(httparse::Error::Version) => return Err(bad("HTTP/1.1 required")),
        Err(_) => return Err(bad("malformed HTTP request")),
    }
    let (Some(method), Some(path), Some(version)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(bad("malformed HTTP request"));
    };
    validate_request(method, path, version == 1, owned_headers(parsed.headers))
}

/// The upgrade-specific checks of RFC 6455 section 4.2.1 on a parsed head, in the order
/// [`validate_request`] documents: returns the key, the offered subprotocols and the
/// extension offers.
fn validate_upgrade(
    method: &str,
    http11: bool,
    headers: &Headers,
) -> Result<(String, Vec<String>, Option<String>), RequestError> {
    let bad = |reason: &str| RequestError::new(400, reason);
    if method != "GET" {
        return Err(RequestError::new(405, "only GET can open a WebSocket"));
    }
    if !http11 {
        return Err(bad("HTTP/1.1 required"));
    }

    match headers.occurrence("host") {
        Occurrence::Repeated => return Err(bad("duplicate Host header")),
        Occurrence::Once(host) if !host.trim_ascii().is_empty() => {}
        _ => return Err(bad("missing Host header")),
    }
    if !headers.contains_token("upgrade", "websocket") {
        return Err(RequestError::new(426, "WebSocket upgrade required"));
    }
    if !headers.contains_token("connection", "upgrade") {
        return Err(bad("missing Connection: Upgrade"));
    }
    match headers.occurrence("sec-websocket-version") {
        Occurrence::Absent => return Err(RequestError::new(426, "missing Sec-WebSocket-Version")),
        Occurrence::Once(v) if v.trim_ascii() == b"13" => {}
        _ => {
            return Err(RequestError::new(
                426,
                "unsupported Sec-WebSocket-Version (13 required)",
            ))
        }
    }
    let key = match headers.occurrence("sec-websocket-key") {
        Occurrence::Absent => return Err(bad("missing Sec-WebSocket-Key")),
        Occurrence::Repeated => return Err(bad("duplicate Sec-WebSocket-Key")),
        Occurrence::Once(key) => key.trim_ascii(),
    };
    let key = match std::str::from_utf8(key) {
        Ok(key) if BASE64.decode(key).map(|k| k.len()) == Ok(16) => key.to_owned(),
        _ => return Err(bad("invalid Sec-WebSocket-Key")),
    };

    let mut subprotocols = Vec::new();
    for value in headers.get_all("sec-websocket-protocol") {
        let Ok(value) = std::str::from_utf8(value) else {
            return Err(bad("invalid Sec-WebSocket-Protocol"));
        };
        subprotocols.extend(
            value
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned),
        );
    }
    let mut offers: Vec<&str> = Vec::new();
    for value in headers.get_all("sec-websocket-extensions") {
        let Ok(value) = std::str::from_utf8(value) else {
            return Err(bad("invalid Sec-WebSocket-Extensions"));
        };
        let value = value.trim();
        if !value.is_empty() {
            offers.push(value);
        }
    }
    let extensions = (!offers.is_empty()).then(|| offers.join(", "));

    Ok((key, subprotocols, extensions))
}

// ---------------------------------------------------------------------------------------------
// Negotiation and the 101 answer
// ---------------------------------------------------------------------------------------------

/// What the server agreed to, returned by [`negotiate`].
///
/// Next: answer 101 with [`Negotiated::response_headers`] (or write [`accept_response`] with
/// `subprotocol` and `extensions`), then run the connection with `deflate` enabled when it is
/// `Some` (see [`Connection::enable_deflate`](crate::Connection::enable_deflate)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// The subprotocol chosen, one the client offered; `None` when none matched (or the server
    /// supports none): the connection then runs without one.
    pub subprotocol: Option<String>,
    /// The `Sec-WebSocket-Extensions` answer (a permessage-deflate response); `None` when no
    /// extension was agreed.
    pub extensions: Option<String>,
    /// The permessage-deflate parameters agreed, `Some` exactly when `extensions` is.
    pub deflate: Option<DeflateParams>,
    /// The `Sec-WebSocket-Accept` value: [`accept_key`] of the request's key.
    pub accept: String,
}

impl Negotiated {
    /// The headers a framework puts on its own 101 Switching Protocols answer, in this order:
    /// `Upgrade: websocket`, `Connection: Upgrade`, `Sec-WebSocket-Accept`, then
    /// `Sec-WebSocket-Protocol` and `Sec-WebSocket-Extensions` when `subprotocol` /
    /// `extensions` are set (and not blank). CR, LF and NUL are removed from the values.
    /// [`accept_response`] writes the same headers.
    pub fn response_headers(&self) -> Vec<(&'static str, String)> {
        upgrade_headers(
            &self.accept,
            self.subprotocol.as_deref(),
            self.extensions.as_deref(),
        )
    }
}

/// The server's side of negotiation for a valid `request`: the subprotocol is the first of
/// `subprotocols` (the server's preference order) that the client offered, compared exactly;
/// permessage-deflate is agreed through [`DeflateConfig::server_accept`] when `compression` is
/// `Some` and the client offered extensions (other extensions are never accepted). Nothing is
/// rejected here: when nothing matches, the connection simply runs without.
///
/// Next: see [`Negotiated`].
pub fn negotiate(
    request: &Request,
    subprotocols: &[String],
    compression: Option<&DeflateConfig>,
) -> Negotiated {
    let subprotocol = subprotocols
        .iter()
        .find(|supported| request.subprotocols.contains(supported))
        .cloned();
    let (extensions, deflate) = compression
        .zip(request.extensions.as_deref())
        .and_then(|(config, offers)| config.server_accept(offers))
        .unzip();
    Negotiated {
        subprotocol,
        extensions,
        deflate,
        accept: accept_key(&request.key),
    }
}

/// 101 Switching Protocols for `request`, with optional subprotocol and extensions header
/// values and extra headers. Write it, then run the WebSocket connection.
///
/// `subprotocol` should be one of `request.subprotocols` and `extensions` the negotiated
/// answer to `request.extensions` (the fields of [`Negotiated`] from [`negotiate`]); both are
/// omitted when `None` or blank. The headers before the extra ones are those of
/// [`Negotiated::response_headers`]. CR, LF and NUL are removed from all values; extra headers
/// whose names are not HTTP tokens, or that would corrupt the handshake (Upgrade, Connection,
/// Sec-WebSocket-Accept, Content-Length, Transfer-Encoding), are dropped.
pub fn accept_response(
    request: &Request,
    subprotocol: Option<&str>,
    extensions: Option<&str>,
    extra_headers: &[(String, String)],
) -> Vec<u8> {
    const RESERVED: &[&str] = &[
        "upgrade",
        "connection",
        "sec-websocket-accept",
        "content-length",
        "transfer-encoding",
    ];
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
    for (name, value) in upgrade_headers(&accept_key(&request.key), subprotocol, extensions) {
        put_header(&mut out, name, &value);
    }
    for (name, value) in extra_headers {
        if allowed_header(name, RESERVED) {
            put_header(&mut out, name, &strip_line_breaks(value));
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The headers of every 101 answer, shared by [`Negotiated::response_headers`] and
/// [`accept_response`]: Upgrade, Connection, Sec-WebSocket-Accept, then Sec-WebSocket-Protocol
/// and Sec-WebSocket-Extensions unless `None` or blank (those two are trimmed). CR, LF and NUL
/// are removed from every value.
fn upgrade_headers(
    accept: &str,
    subprotocol: Option<&str>,
    extensions: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        ("Upgrade", "websocket".to_owned()),
        ("Connection", "Upgrade".to_owned()),
        (
            "Sec-WebSocket-Accept",
            strip_line_breaks(accept).into_owned(),
        ),
    ];
    for (name, value) in [
        ("Sec-WebSocket-Protocol", subprotocol),
        ("Sec-WebSocket-Extensions", extensions),
    ] {
        if let Some(value) = value {
            let value = strip_line_breaks(value);
            let value = value.trim();
            if !value.is_empty() {
                headers.push((name, value.to_owned()));
            }
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::fixtures::{valid_request, ACCEPT, KEY};

    fn rejected(request: &str) -> RequestError {
        let mut server = ServerHandshake::new(HeadLimits::default());
        match server.receive(request.as_bytes()) {
            Err(error) => error,
            other => panic!("expected rejection of {request:?}, got {other:?}"),
        }
    }

    #[test]
    fn server_accepts_valid_request() {
        let head = valid_request();
        let mut data = head.clone().into_bytes();
        data.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]);
        let mut server = ServerHandshake::new(HeadLimits::default());
        let request = server.receive(&data).unwrap().unwrap();
        assert_eq!(request.consumed, head.len());
        assert_eq!(request.method, "GET");
        assert_eq!(request.path, "/chat?room=1");
        assert_eq!(request.key, KEY);
        assert_eq!(request.subprotocols, ["chat", "superchat", "v2"]);
        assert_eq!(
            request.extensions.as_deref(),
            Some("permessage-deflate, x-foo")
        );
        assert_eq!(request.header("origin"), Some("http://example.com"));
        assert_eq!(request.headers.get_all("sec-websocket-protocol").count(), 2);
        assert_eq!(
            server.receive(b"x").unwrap_err().status,
            500,
            "receive after success is a logic error"
        );
    }

    #[test]
    fn server_accepts_byte_at_a_time_and_tolerates_bare_lf_and_leading_crlf() {
        let head = valid_request();
        let mut server = ServerHandshake::new(HeadLimits::default());
        let bytes = head.as_bytes();
        let (last, init) = bytes.split_last().unwrap();
        for b in init {
            assert!(server.receive(std::slice::from_ref(b)).unwrap().is_none());
        }
        let request = server.receive(&[*last, 0x88]).unwrap().unwrap();
        assert_eq!(request.consumed, 1);

        let lf = format!("\r\n{}", head.replace("\r\n", "\n"));
        let mut server = ServerHandshake::new(HeadLimits::default());
        let request = server.receive(lf.as_bytes()).unwrap().unwrap();
        assert_eq!(request.consumed, lf.len());
        assert_eq!(request.key, KEY);
    }

    #[test]
    fn server_rejections_use_documented_statuses() {
        let base = valid_request();
        let without = |name: &str| {
            base.lines()
                .filter(|line| !line.starts_with(name))
                .map(|line| format!("{line}\r\n"))
                .collect::<String>()
        };
        let cases: Vec<(String, u16)> = vec![
            (base.replacen("GET", "POST", 1), 405),
            (base.replacen("HTTP/1.1", "HTTP/1.0", 1), 400),
            (base.replacen("HTTP/1.1", "HTTP/2.0", 1), 400),
            (without("Host"), 400),
            (
                base.replacen("Host: server", "Host: server\r\nHost: other", 1),
                400,
            ),
            (without("Upgrade"), 426),
            (base.replacen("Upgrade: websocket", "Upgrade: h2c", 1), 426),
            (base.replacen("keep-alive, Upgrade", "keep-alive", 1), 400),
            (without("Sec-WebSocket-Version"), 426),
            (base.replacen("Version: 13", "Version: 8", 1), 426),
            (without("Sec-WebSocket-Key"), 400),
            (base.replacen(KEY, "dGhlIHNhbXBsZQ==", 1), 400),
            (base.replacen(KEY, "not base64 at all!", 1), 400),
            ("GARBAGE\r\n\r\n".to_owned(), 400),
            ("GET / HTTP/1.1\r\nBad Header\r\n\r\n".to_owned(), 400),
            (format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(9000)), 414),
            (
                base.replacen(
                    "Origin: ",
                    &format!("X: {}\r\nOrigin: ", "a".repeat(9000)),
                    1,
                ),
                431,
            ),
            (base.replacen("Origin: ", &"X: 1\r\n".repeat(101), 1), 431),
        ];
        for (request, expected) in cases {
            let error = rejected(&request);
            assert_eq!(error.status, expected, "{request:.80?}: {error}");
        }
        let error = rejected(&base.replacen("GET", "PUT", 1));
        assert_eq!(error.headers(), [("Allow", "GET")]);
        let error = rejected(&without("Upgrade"));
        assert_eq!(
            error.headers(),
            [("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")]
        );
    }

    #[test]
    fn server_head_too_large_and_error_repeats() {
        let limits = HeadLimits {
            max_head: 64,
            ..HeadLimits::default()
        };
        let mut server = ServerHandshake::new(limits);
        let error = server.receive(valid_request().as_bytes()).unwrap_err();
        assert_eq!(error.status, 431);
        assert_eq!(error.reason, "head exceeds 64 bytes");
        assert_eq!(server.receive(b"more").unwrap_err().status, 431);
    }

    #[test]
    fn request_error_response_bytes() {
        let error = rejected(&valid_request().replacen("Version: 13", "Version: 7", 1));
        let text = String::from_utf8(error.response_bytes()).unwrap();
        let body = format!("{}\n", error.reason);
        assert_eq!(
            text,
            format!(
                "HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\n\
                 Sec-WebSocket-Version: 13\r\nContent-Type: text/plain; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: Upgrade, close\r\n\r\n{body}",
                body.len()
            )
        );
        assert_eq!(
            error.to_string(),
            "rejected WebSocket upgrade request (HTTP 426): unsupported Sec-WebSocket-Version (13 required)"
        );
        let error = rejected(&valid_request().replacen("GET", "POST", 1));
        let text = String::from_utf8(error.response_bytes()).unwrap();
        assert!(text.starts_with("HTTP/1.1 405 Method Not Allowed\r\nAllow: GET\r\n"));
        assert!(text.contains("\r\nConnection: close\r\n"));
    }

    #[test]
    fn accept_response_layout_and_sanitizing() {
        let mut server = ServerHandshake::new(HeadLimits::default());
        let request = server.receive(valid_request().as_bytes()).unwrap().unwrap();
        let bytes = accept_response(
            &request,
            Some("chat"),
            Some("permessage-deflate\r\nX-Evil: 1"),
            &[
                ("X-Server".into(), "tether".into()),
                ("Connection".into(), "close".into()),
                ("Bad\r\nName".into(), "x".into()),
            ],
        );
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {ACCEPT}\r\nSec-WebSocket-Protocol: chat\r\n\
                 Sec-WebSocket-Extensions: permessage-deflateX-Evil: 1\r\nX-Server: tether\r\n\r\n"
            )
        );
        let plain = accept_response(&request, None, Some("  "), &[]);
        assert!(!String::from_utf8(plain)
            .unwrap()
            .contains("Sec-WebSocket-Extensions"));
    }

    // --- for frameworks: validate_request, negotiate, Negotiated ----------------------------

    type HeaderList = Vec<(&'static str, Vec<u8>)>;

    /// The headers of `valid_request()` as a framework would hand them over.
    fn framework_headers() -> HeaderList {
        vec![
            ("Host", b"server.example.com".to_vec()),
            ("Upgrade", b"websocket".to_vec()),
            ("Connection", b"keep-alive, Upgrade".to_vec()),
            ("Sec-WebSocket-Key", KEY.as_bytes().to_vec()),
            ("Origin", b"http://example.com".to_vec()),
            ("Sec-WebSocket-Protocol", b"chat, superchat".to_vec()),
            ("Sec-WebSocket-Protocol", b"v2".to_vec()),
            ("Sec-WebSocket-Extensions", b"permessage-deflate".to_vec()),
            ("Sec-WebSocket-Extensions", b"x-foo".to_vec()),
            ("Sec-WebSocket-Version", b"13".to_vec()),
        ]
    }

    fn to_headers(list: HeaderList) -> Headers {
        let mut headers = Headers::new();
        for (name, value) in list {
            headers.push(name, value);
        }
        headers
    }

    fn without(list: &mut HeaderList, name: &str) {
        list.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    fn replace(list: &mut HeaderList, name: &'static str, value: &[u8]) {
        without(list, name);
        list.push((name, value.to_vec()));
    }

    fn accepted_request() -> Request {
        let mut server = ServerHandshake::new(HeadLimits::default());
        server.receive(valid_request().as_bytes()).unwrap().unwrap()
    }

    #[test]
    fn validate_request_accepts_a_parsed_head_like_the_parser() {
        let request =
            validate_request("GET", "/chat?room=1", true, to_headers(framework_headers())).unwrap();
        assert_eq!(request.method, "GET");
        assert_eq!(request.path, "/chat?room=1");
        assert_eq!(request.key, KEY);
        assert_eq!(request.subprotocols, ["chat", "superchat", "v2"]);
        assert_eq!(
            request.extensions.as_deref(),
            Some("permessage-deflate, x-foo")
        );
        assert_eq!(request.consumed, 0);
        assert_eq!(request.header("origin"), Some("http://example.com"));
        assert_eq!(request.headers.len(), framework_headers().len());

        let parsed = accepted_request();
        assert_eq!(parsed.key, request.key);
        assert_eq!(parsed.subprotocols, request.subprotocols);
        assert_eq!(parsed.extensions, request.extensions);
        assert_eq!(parsed.headers, request.headers);
    }

    #[test]
    fn validate_request_rejections_keep_status_headers_and_head() {
        let check = |what: &str, method: &str, http11: bool, list: HeaderList, status: u16| {
            let expected_headers = to_headers(list.clone());
            let error =
                validate_request(method, "/chat?room=1", http11, to_headers(list)).expect_err(what);
            assert_eq!(error.status, status, "{what}: {error}");
            let extra: &[(&str, &str)] = match status {
                405 => &[("Allow", "GET")],
                426 => &[("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")],
                _ => &[],
            };
            assert_eq!(error.headers(), extra, "{what}");
            let head = error.head().expect(what);
            assert_eq!(head.method, method, "{what}");
            assert_eq!(head.path, "/chat?room=1", "{what}");
            assert_eq!(head.headers, expected_headers, "{what}");
            error
        };
        check("POST", "POST", true, framework_headers(), 405);
        let error = check("HTTP/1.0", "GET", false, framework_headers(), 400);
        assert_eq!(error.reason, "HTTP/1.1 required");

        type Mutation = fn(&mut HeaderList);
        let cases: Vec<(&str, Mutation, u16)> = vec![
            ("no Host", |h| without(h, "Host"), 400),
            ("empty Host", |h| replace(h, "Host", b""), 400),
            ("duplicate Host", |h| h.push(("host", b"x".to_vec())), 400),
            ("no Upgrade", |h| without(h, "Upgrade"), 426),
            ("Upgrade: h2c", |h| replace(h, "Upgrade", b"h2c"), 426),
            (
                "no upgrade token",
                |h| replace(h, "Connection", b"close"),
                400,
            ),
            ("no version", |h| without(h, "Sec-WebSocket-Version"), 426),
            (
                "version 8",
                |h| replace(h, "Sec-WebSocket-Version", b"8"),
                426,
            ),
            (
                "duplicate version",
                |h| h.push(("sec-websocket-version", b"13".to_vec())),
                426,
            ),
            ("no key", |h| without(h, "Sec-WebSocket-Key"), 400),
            (
                "duplicate key",
                |h| h.push(("sec-websocket-key", KEY.into())),
                400,
            ),
            (
                "short key",
                |h| replace(h, "Sec-WebSocket-Key", b"dGhlIHNhbXBsZQ=="),
                400,
            ),
            (
                "non-UTF-8 protocol",
                |h| replace(h, "Sec-WebSocket-Protocol", &[0xff]),
                400,
            ),
            (
                "non-UTF-8 extensions",
                |h| replace(h, "Sec-WebSocket-Extensions", &[0xfe]),
                400,
            ),
        ];
        for (what, mutate, status) in cases {
            let mut list = framework_headers();
            mutate(&mut list);
            check(what, "GET", true, list, status);
        }
    }

    #[test]
    fn parser_rejections_keep_the_head() {
        let error = ServerHandshake::new(HeadLimits::default())
            .receive(b"GET /healthz HTTP/1.1\r\nHost: example.com\r\n\r\n")
            .unwrap_err();
        assert_eq!(error.status, 426);
        let head = error.head().unwrap();
        assert_eq!(
            (head.method.as_str(), head.path.as_str()),
            ("GET", "/healthz")
        );
        assert_eq!(head.headers.get_str("host"), Some("example.com"));
        // Not HTTP at all: nothing to keep.
        let error = ServerHandshake::new(HeadLimits::default())
            .receive(b"GARBAGE\r\n\r\n")
            .unwrap_err();
        assert!(error.head().is_none());
    }

    #[test]
    fn negotiate_picks_the_first_supported_subprotocol_in_server_order() {
        let request = accepted_request();
        assert_eq!(request.subprotocols, ["chat", "superchat", "v2"]);
        let pick = |supported: &[&str]| {
            let supported: Vec<String> = supported.iter().map(|&s| s.to_owned()).collect();
            negotiate(&request, &supported, None).subprotocol
        };
        assert_eq!(pick(&["v2", "chat"]).as_deref(), Some("v2"));
        assert_eq!(
            pick(&["other", "superchat", "chat"]).as_deref(),
            Some("superchat")
        );
        assert_eq!(pick(&["chat", "v2"]).as_deref(), Some("chat"));
        assert_eq!(pick(&["CHAT"]), None, "subprotocols compare exactly");
        assert_eq!(pick(&["other"]), None);
        assert_eq!(pick(&[]), None);

        let mut silent = request.clone();
        silent.subprotocols.clear();
        assert_eq!(
            negotiate(&silent, &["chat".to_owned()], None).subprotocol,
            None
        );
    }

    #[test]
    fn negotiate_deflate_only_when_configured_and_offered() {
        let request = accepted_request();
        let config = DeflateConfig::default();
        let negotiated = negotiate(&request, &[], Some(&config));
        let (header, params) = config
            .server_accept("permessage-deflate, x-foo")
            .expect("the default config accepts a plain offer");
        assert_eq!(negotiated.extensions.as_deref(), Some(header.as_str()));
        assert!(header.starts_with("permessage-deflate"));
        assert_eq!(negotiated.deflate, Some(params));
        assert_eq!(negotiated.subprotocol, None);
        assert_eq!(negotiated.accept, ACCEPT);

        // Compression off on the server.
        let off = negotiate(&request, &[], None);
        assert_eq!((off.extensions, off.deflate), (None, None));
        assert_eq!(off.accept, ACCEPT);

        // No offer from the client.
        let mut plain = request.clone();
        plain.extensions = None;
        let none = negotiate(&plain, &[], Some(&config));
        assert_eq!((none.extensions, none.deflate), (None, None));

        // Only extensions the server does not know.
        let mut unknown = request;
        unknown.extensions = Some("x-foo, x-bar; p=1".into());
        let none = negotiate(&unknown, &[], Some(&config));
        assert_eq!((none.extensions, none.deflate), (None, None));
    }

    #[test]
    fn response_headers_match_accept_response() {
        let request = accepted_request();
        let config = DeflateConfig::default();
        let negotiated = negotiate(&request, &["superchat".to_owned()], Some(&config));
        let extensions = negotiated.extensions.clone().unwrap();
        assert_eq!(
            negotiated.response_headers(),
            [
                ("Upgrade", "websocket".to_owned()),
                ("Connection", "Upgrade".to_owned()),
                ("Sec-WebSocket-Accept", ACCEPT.to_owned()),
                ("Sec-WebSocket-Protocol", "superchat".to_owned()),
                ("Sec-WebSocket-Extensions", extensions),
            ]
        );
        let mut expected = b"HTTP/1.1 101 Switching Protocols\r\n".to_vec();
        for (name, value) in negotiated.response_headers() {
            expected.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        expected.extend_from_slice(b"\r\n");
        let bytes = accept_response(
            &request,
            negotiated.subprotocol.as_deref(),
            negotiated.extensions.as_deref(),
            &[],
        );
        assert_eq!(bytes, expected);

        let bare = negotiate(&request, &[], None);
        assert_eq!(
            bare.response_headers(),
            [
                ("Upgrade", "websocket".to_owned()),
                ("Connection", "Upgrade".to_owned()),
                ("Sec-WebSocket-Accept", ACCEPT.to_owned()),
            ]
        );

        // Hand-made values are cleaned like accept_response cleans them.
        let odd = Negotiated {
            subprotocol: Some("  ".into()),
            extensions: Some("permessage-deflate\r\nX-Evil: 1".into()),
            deflate: None,
            accept: ACCEPT.into(),
        };
        assert_eq!(
            odd.response_headers(),
            [
                ("Upgrade", "websocket".to_owned()),
                ("Connection", "Upgrade".to_owned()),
                ("Sec-WebSocket-Accept", ACCEPT.to_owned()),
                (
                    "Sec-WebSocket-Extensions",
                    "permessage-deflateX-Evil: 1".to_owned()
                ),
            ]
        );
    }
}
