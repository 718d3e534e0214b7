//! Opening handshake (RFC 6455 section 4), both roles.
//!
//! Everything here is sans-I/O: the caller reads bytes from its transport and feeds them in,
//! and writes the bytes this module hands back.
//!
//! # Client
//!
//! 1. Describe the request with a [`ClientRequest`] and create a [`ClientHandshake`] with
//!    [`ClientHandshake::try_new`] (or [`ClientHandshake::new`]), passing a key from
//!    [`generate_key`].
//! 2. Write [`ClientHandshake::request_bytes`] to the transport.
//! 3. Feed every chunk read from the transport to [`ClientHandshake::receive`] until it returns
//!    `Ok(Some(accepted))` or an error. On success, the bytes of the last chunk after
//!    [`Accepted::consumed`] are already WebSocket frames: feed them to the connection.
//! 4. If the transport reaches end of file first, call [`ClientHandshake::receive_eof`]; if the
//!    caller's timer fires, [`ClientHandshake::take_partial_response`] returns whatever non-101
//!    answer was collected.
//!
//! # Server
//!
//! 1. Create a [`ServerHandshake`] and feed every chunk read to [`ServerHandshake::receive`].
//! 2. On `Ok(Some(request))`, decide (subprotocol, extensions, authentication, ...) and write
//!    either [`accept_response`] or an [`http_response`] of your choice. The bytes of the last
//!    chunk after [`Request::consumed`] already belong to the WebSocket connection.
//! 3. On `Err(error)`, write [`RequestError::response_bytes`] and close the connection.
//!
//! ```
//! use tether_proto::handshake::*;
//!
//! let request = ClientRequest {
//!     host: "example.com".into(),
//!     resource: "/chat".into(),
//!     ..ClientRequest::default()
//! };
//! let mut client =
//!     ClientHandshake::try_new(&request, generate_key(), HeadLimits::default()).unwrap();
//! let mut server = ServerHandshake::new(HeadLimits::default());
//! let incoming = server.receive(client.request_bytes()).unwrap().unwrap();
//! let answer = accept_response(&incoming, None, None, &[]);
//! let accepted = client.receive(&answer).unwrap().unwrap();
//! assert_eq!(accepted.consumed, answer.len());
//! ```
//!
//! # Header injection
//!
//! Strings supplied by callers never produce extra header lines: [`ClientHandshake::try_new`]
//! rejects CR, LF and NUL (and other invalid input, see [`ClientRequest::validate`]);
//! [`ClientHandshake::new`], [`accept_response`] and [`http_response`] remove those
//! characters from values and drop headers whose names are not valid HTTP tokens.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

/// The GUID appended to the key before hashing (RFC 6455 section 1.3).
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Reason used when a handshake object is driven after it already finished.
const ALREADY_FINISHED: &str = "handshake already finished";

/// Caps applied while parsing an HTTP head (request or response).
///
/// Use [`HeadLimits::default`] unless you have a reason to change them; pass the value to
/// [`ClientHandshake::new`] / [`ServerHandshake::new`].
#[derive(Clone, Debug)]
pub struct HeadLimits {
    /// Longest request line, status line or header line, in bytes, not counting the line
    /// terminator. Default 8192.
    pub max_line: usize,
    /// Most header lines accepted (the request/status line does not count). Default 100.
    pub max_headers: usize,
    /// Most bytes in the whole head, terminating empty line included. Default 65536.
    pub max_head: usize,
    /// Most body bytes kept from a non-101 response (client side). Default 4096.
    pub max_body_prefix: usize,
}

impl Default for HeadLimits {
    /// `max_line` 8192, `max_headers` 100, `max_head` 65536, `max_body_prefix` 4096.
    fn default() -> Self {
        Self {
            max_line: 8192,
            max_headers: 100,
            max_head: 65536,
            max_body_prefix: 4096,
        }
    }
}

/// Computes the `Sec-WebSocket-Accept` value for a `Sec-WebSocket-Key`:
/// base64(SHA-1(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")).
///
/// The key is used exactly as given (no trimming). Servers send the result in the 101
/// response ([`accept_response`] does it for you); clients compare it with the answer
/// ([`ClientHandshake`] does it for you).
pub fn accept_key(key: &str) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WEBSOCKET_GUID.as_bytes());
    BASE64.encode(sha.digest().bytes())
}

/// Generates a fresh `Sec-WebSocket-Key`: base64 of 16 random bytes from `rand::random`.
///
/// Pass the result to [`ClientHandshake::new`] / [`ClientHandshake::try_new`]; use a new key
/// for every connection attempt.
pub fn generate_key() -> String {
    BASE64.encode(rand::random::<[u8; 16]>())
}

// ---------------------------------------------------------------------------------------------
// Headers
// ---------------------------------------------------------------------------------------------

/// One HTTP header as received: name as sent, value as raw bytes.
///
/// Values come from the parser with leading and trailing whitespace removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Header name, in the case the peer used.
    pub name: String,
    /// Header value bytes (not necessarily UTF-8).
    pub value: Vec<u8>,
}

/// An ordered list of headers with case-insensitive lookup by name.
///
/// Starts empty ([`Headers::new`] / `Default`). Repeated headers are kept as separate entries,
/// in the order received; use [`Headers::get_all`] to see all of them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(Vec<Header>);

impl Headers {
    /// Creates an empty list; add entries with [`Headers::push`].
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Value of the first header called `name` (ASCII case-insensitive), or `None` when there
    /// is none. Use [`Headers::get_all`] when the header may repeat.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_slice())
    }

    /// Like [`Headers::get`], but `None` also when the value is not valid UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Values of every header called `name` (ASCII case-insensitive), in order received.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.0
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_slice())
    }

    /// Whether any header called `name` is a comma-separated list containing `token`
    /// (both compared ASCII case-insensitively, whitespace around items ignored), e.g.
    /// `contains_token("connection", "upgrade")` for `Connection: keep-alive, Upgrade`.
    pub fn contains_token(&self, name: &str, token: &str) -> bool {
        self.get_all(name).any(|v| value_contains_token(v, token))
    }

    /// Iterates over all headers in order received.
    pub fn iter(&self) -> std::slice::Iter<'_, Header> {
        self.0.iter()
    }

    /// Appends a header. No validation is done: this list only describes headers, it is never
    /// serialized by this module.
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) {
        self.0.push(Header {
            name: name.into(),
            value: value.into(),
        });
    }

    /// Number of header entries (repeated headers count once per line).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `name` is absent, present once (with its value) or repeated.
    fn occurrence(&self, name: &str) -> Occurrence<'_> {
        let mut found = self.0.iter().filter(|h| h.name.eq_ignore_ascii_case(name));
        match (found.next(), found.next()) {
            (None, _) => Occurrence::Absent,
            (Some(header), None) => Occurrence::Once(&header.value),
            (Some(_), Some(_)) => Occurrence::Repeated,
        }
    }

    /// Consumes the list and returns the entries.
    pub fn into_vec(self) -> Vec<Header> {
        self.0
    }
}

impl From<Vec<Header>> for Headers {
    fn from(headers: Vec<Header>) -> Self {
        Self(headers)
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = &'a Header;
    type IntoIter = std::slice::Iter<'a, Header>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// How often a header appears, see [`Headers::occurrence`].
#[derive(Clone, Copy, Debug)]
enum Occurrence<'a> {
    Absent,
    Once(&'a [u8]),
    Repeated,
}

/// Whether a comma-separated header value contains `token`, compared ASCII
/// case-insensitively with whitespace around items ignored (`b"keep-alive, Upgrade"` contains
/// `"upgrade"`).
pub fn value_contains_token(value: &[u8], token: &str) -> bool {
    list_items(value).any(|item| item.eq_ignore_ascii_case(token.as_bytes()))
}

/// Non-empty, trimmed items of a comma-separated header value.
fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|item| !item.is_empty())
}

/// `tchar` from RFC 9110 section 5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether `s` is a non-empty HTTP token (valid header name, subprotocol name, ...).
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

/// Bytes that must never reach a header line from caller-supplied text.
fn is_line_breaking(c: char) -> bool {
    matches!(c, '\r' | '\n' | '\0')
}

/// `value` without CR, LF and NUL.
fn strip_line_breaks(value: &str) -> Cow<'_, str> {
    if value.contains(is_line_breaking) {
        Cow::Owned(value.chars().filter(|&c| !is_line_breaking(c)).collect())
    } else {
        Cow::Borrowed(value)
    }
}

/// Appends `name: value\r\n`.
fn put_header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

// ---------------------------------------------------------------------------------------------
// Incremental head reader (shared by both roles)
// ---------------------------------------------------------------------------------------------

/// Which limit an incoming head broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HeadOverflow {
    /// The request/status line is longer than `max_line`.
    FirstLine,
    /// A header line is longer than `max_line`.
    HeaderLine,
    /// More than `max_headers` header lines.
    TooManyHeaders,
    /// More than `max_head` bytes without the terminating empty line.
    TooLarge,
}

impl HeadOverflow {
    fn describe(self, limits: &HeadLimits, first_line: &str) -> String {
        match self {
            Self::FirstLine => format!("{first_line} exceeds {} bytes", limits.max_line),
            Self::HeaderLine => format!("header line exceeds {} bytes", limits.max_line),
            Self::TooManyHeaders => format!("more than {} headers", limits.max_headers),
            Self::TooLarge => format!("head exceeds {} bytes", limits.max_head),
        }
    }
}

/// Where the head ended.
#[derive(Clone, Copy, Debug)]
struct HeadEnd {
    /// Length of the head in the reader's buffer, terminating empty line included.
    len: usize,
    /// How many bytes of the last chunk belonged to the head.
    consumed: usize,
}

/// Accumulates a head and finds its end without rescanning: `scan_pos` remembers where the
/// search for the next line feed stopped.
#[derive(Debug, Default)]
struct HeadReader {
    /// Head bytes received so far (never more than `max_head`).
    buf: Vec<u8>,
    /// Next byte of `buf` not yet examined.
    scan_pos: usize,
    /// Start of the line being received.
    line_start: usize,
    /// Non-empty lines completed so far (start line plus header lines).
    lines: usize,
}

impl HeadReader {
    /// Appends (part of) `data` and looks for the empty line ending the head. Lines may end in
    /// CRLF or a bare LF; empty lines before the start line are skipped (as the HTTP parser does).
    fn feed(&mut self, data: &[u8], limits: &HeadLimits) -> Result<Option<HeadEnd>, HeadOverflow> {
        let prev_len = self.buf.len();
        // Never buffer more than `max_head` bytes: a head longer than that is an error anyway,
        // and whatever follows the head is handed back to the caller, not stored here.
        let take = data.len().min(limits.max_head.saturating_sub(prev_len));
        self.buf
            .extend_from_slice(data.get(..take).unwrap_or_default());

        while let Some(offset) = self
            .buf
            .get(self.scan_pos..)
            .and_then(|rest| rest.iter().position(|&b| b == b'\n'))
        {
            let newline = self.scan_pos + offset;
            self.scan_pos = newline + 1;
            let mut content_end = newline;
            if content_end > self.line_start && self.buf.get(content_end - 1) == Some(&b'\r') {
                content_end -= 1;
            }
            let line_len = content_end.saturating_sub(self.line_start);
            self.line_start = newline + 1;
            if line_len == 0 {
                if self.lines == 0 {
                    continue;
                }
                return Ok(Some(HeadEnd {
                    len: newline + 1,
                    consumed: (newline + 1).saturating_sub(prev_len),
                }));
            }
            if line_len > limits.max_line {
                return Err(if self.lines == 0 {
                    HeadOverflow::FirstLine
                } else {
                    HeadOverflow::HeaderLine
                });
            }
            self.lines += 1;
            if self.lines > limits.max_headers.saturating_add(1) {
                return Err(HeadOverflow::TooManyHeaders);
            }
        }
        self.scan_pos = self.buf.len();

        // The line in progress may already be too long (one extra byte allowed for its CR).
        if self.buf.len().saturating_sub(self.line_start) > limits.max_line.saturating_add(1) {
            return Err(if self.lines == 0 {
                HeadOverflow::FirstLine
            } else {
                HeadOverflow::HeaderLine
            });
        }
        if self.buf.len() >= limits.max_head {
            return Err(HeadOverflow::TooLarge);
        }
        Ok(None)
    }
}

/// Header slots for the parser: the head has `lines` non-empty lines (start line included), so
/// that many slots always suffice; `max_headers` may be huge, so it is not used to size the
/// allocation, only as a cap.
fn header_slots(lines: usize, limits: &HeadLimits) -> Vec<httparse::Header<'static>> {
    vec![httparse::EMPTY_HEADER; lines.min(limits.max_headers)]
}

/// Copies parsed headers into an owned list.
fn owned_headers(parsed: &[httparse::Header<'_>]) -> Headers {
    Headers(
        parsed
            .iter()
            .map(|h| Header {
                name: h.name.to_owned(),
                value: h.value.to_vec(),
            })
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------------------------

/// An HTTP response head plus a body prefix (kept whole for non-101 answers so a caller can
/// decide on it, e.g. show a 401 page or follow a `Location` header).
#[derive(Clone, Debug)]
pub struct Response {
    /// Status code, e.g. 101 or 401.
    pub status: u16,
    /// Reason phrase as sent (empty if missing or not plain ASCII).
    pub reason: String,
    /// All response headers, in order received.
    pub headers: Headers,
    /// Start of the body, at most [`HeadLimits::max_body_prefix`] bytes; chunked bodies are
    /// decoded. Always empty for an accepted 101.
    pub body: Vec<u8>,
    /// `true` when `body` is not the complete body: bytes beyond the cap were dropped, or the
    /// body ended early (end of file before `Content-Length` bytes or the chunked terminator,
    /// malformed chunked framing, or [`ClientHandshake::take_partial_response`] before the body
    /// was complete). Default `false`.
    pub body_truncated: bool,
}

/// What the client asks for. Fill in at least `host`; everything else has a usable default
/// (`Default` gives resource "/" and no optional headers). Then create a [`ClientHandshake`].
#[derive(Clone, Debug, Default)]
pub struct ClientRequest {
    /// Value of the `Host` header, e.g. "example.com:8080" (the caller omits a default port).
    pub host: String,
    /// Path and query, e.g. "/chat?x=1"; "/" when empty. Must not contain a fragment.
    /// Non-ASCII bytes are percent-encoded.
    pub resource: String,
    /// `Origin` header value, if any.
    pub origin: Option<String>,
    /// `User-Agent` header value, if any.
    pub user_agent: Option<String>,
    /// Offered subprotocols, in preference order; sent as one comma-separated
    /// `Sec-WebSocket-Protocol` header when not empty.
    pub subprotocols: Vec<String>,
    /// Raw `Sec-WebSocket-Extensions` offer (e.g. "permessage-deflate; client_max_window_bits");
    /// `None` (or blank) sends no offer, and then any extension in the answer is an error.
    pub extensions: Option<String>,
    /// Already percent-decoded user and password, sent as `Authorization: Basic
    /// base64(user:pass)`.
    pub basic_auth: Option<(String, String)>,
    /// Extra headers, sent as given after the standard ones.
    pub headers: Vec<(String, String)>,
}

/// Header names the client handshake writes itself and callers may not add again.
const CLIENT_RESERVED: &[&str] = &[
    "host",
    "upgrade",
    "connection",
    "sec-websocket-key",
    "sec-websocket-version",
];

/// A [`ClientRequest`] (or key) that cannot be sent safely.
///
/// Returned by [`ClientRequest::validate`] and [`ClientHandshake::try_new`]; fix the request
/// (the `reason` says which field) and try again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientRequestError {
    /// What is wrong, e.g. "origin contains CR, LF or NUL".
    pub reason: String,
}

impl ClientRequestError {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ClientRequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid WebSocket client request: {}", self.reason)
    }
}

impl std::error::Error for ClientRequestError {}

/// The outcome of serializing a [`ClientRequest`].
#[derive(Debug)]
struct BuiltRequest {
    bytes: Vec<u8>,
    key: String,
    subprotocols: Vec<String>,
    offers_extensions: bool,
}

/// Serializes the request. With `strict`, anything unsafe or invalid is an error; otherwise it
/// is repaired (CR/LF/NUL removed, bad headers/subprotocols dropped, resource encoded).
fn build_request(
    request: &ClientRequest,
    key: &str,
    strict: bool,
) -> Result<BuiltRequest, ClientRequestError> {
    let value = |what: &str, v: &'_ str| -> Result<String, ClientRequestError> {
        if strict && v.contains(is_line_breaking) {
            return Err(ClientRequestError::new(format!(
                "{what} contains CR, LF or NUL"
            )));
        }
        Ok(strip_line_breaks(v).into_owned())
    };

    let host = value("host", &request.host)?;
    if strict && host.trim().is_empty() {
        return Err(ClientRequestError::new("host is empty"));
    }
    let resource = encode_resource(&request.resource, strict)?;
    let key = value("key", key)?;
    if strict && BASE64.decode(&key).map(|k| k.len()) != Ok(16) {
        return Err(ClientRequestError::new(
            "key is not the base64 encoding of 16 bytes",
        ));
    }

    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(resource.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    put_header(&mut out, "Host", &host);
    put_header(&mut out, "Upgrade", "websocket");
    put_header(&mut out, "Connection", "Upgrade");
    put_header(&mut out, "Sec-WebSocket-Key", &key);
    put_header(&mut out, "Sec-WebSocket-Version", "13");
    if let Some(origin) = &request.origin {
        put_header(&mut out, "Origin", &value("origin", origin)?);
    }
    if let Some(agent) = &request.user_agent {
        put_header(&mut out, "User-Agent", &value("user agent", agent)?);
    }

    let mut subprotocols: Vec<String> = Vec::with_capacity(request.subprotocols.len());
    for protocol in &request.subprotocols {
        let problem = if !is_token(protocol) {
            Some("is not a valid token")
        } else if subprotocols.contains(protocol) {
            Some("is offered twice")
        } else {
            None
        };
        match problem {
            Some(problem) if strict => {
                return Err(ClientRequestError::new(format!(
                    "subprotocol {protocol:?} {problem}"
                )))
            }
            Some(_) => {}
            None => subprotocols.push(protocol.clone()),
        }
    }
    if !subprotocols.is_empty() {
        put_header(&mut out, "Sec-WebSocket-Protocol", &subprotocols.join(", "));
    }

    let mut offers_extensions = false;
    if let Some(extensions) = &request.extensions {
        let extensions = value("extensions", extensions)?;
        let extensions = extensions.trim();
        if !extensions.is_empty() {
            offers_extensions = true;
            put_header(&mut out, "Sec-WebSocket-Extensions", extensions);
        }
    }

    if let Some((user, password)) = &request.basic_auth {
        if strict && user.contains(':') {
            return Err(ClientRequestError::new("basic auth user name contains ':'"));
        }
        let credentials = BASE64.encode(format!("{user}:{password}"));
        put_header(&mut out, "Authorization", &format!("Basic {credentials}"));
    }

    for (name, header_value) in &request.headers {
        let problem = if !is_token(name) {
            Some("is not a valid header name")
        } else if CLIENT_RESERVED
            .iter()
            .any(|reserved| name.eq_ignore_ascii_case(reserved))
        {
            Some("is set by the handshake itself")
        } else {
            None
        };
        match problem {
            Some(problem) if strict => {
                return Err(ClientRequestError::new(format!(
                    "header {name:?} {problem}"
                )))
            }
            Some(_) => {}
            None => {
                let header_value = value(&format!("header {name:?}"), header_value)?;
                put_header(&mut out, name, &header_value);
            }
        }
    }
    out.extend_from_slice(b"\r\n");

    Ok(BuiltRequest {
        bytes: out,
        key,
        subprotocols,
        offers_extensions,
    })
}

/// Turns the caller's resource into a valid request-target.
fn encode_resource(resource: &str, strict: bool) -> Result<String, ClientRequestError> {
    if resource.is_empty() {
        return Ok("/".to_owned());
    }
    let mut out = String::with_capacity(resource.len() + 1);
    if !resource.starts_with('/') {
        if strict {
            return Err(ClientRequestError::new("resource does not start with '/'"));
        }
        out.push('/');
    }
    for &b in resource.as_bytes() {
        match b {
            b'#' if strict => {
                return Err(ClientRequestError::new(
                    "resource contains a fragment ('#')",
                ));
            }
            // Lenient: drop the fragment, it is never sent.
            b'#' => break,
            0..=0x20 | 0x7f if strict => {
                return Err(ClientRequestError::new(
                    "resource contains whitespace or a control character",
                ));
            }
            0..=0x20 | 0x7f..=0xff => {
                // Writing to a String cannot fail.
                let _ = write!(out, "%{b:02X}");
            }
            _ => out.push(char::from(b)),
        }
    }
    Ok(out)
}

impl ClientRequest {
    /// Checks that the request can be sent safely: `host` not empty; `resource` empty or
    /// starting with '/', without whitespace, control characters or '#'; no CR, LF or NUL in
    /// any value; subprotocols are distinct HTTP tokens; extra header names are tokens and not
    /// one of Host, Upgrade, Connection, Sec-WebSocket-Key, Sec-WebSocket-Version; the basic
    /// auth user has no ':'. [`ClientHandshake::try_new`] runs this for you.
    pub fn validate(&self) -> Result<(), ClientRequestError> {
        build_request(self, "AAAAAAAAAAAAAAAAAAAAAA==", true).map(|_| ())
    }
}

/// A successful opening handshake, returned by [`ClientHandshake::receive`].
///
/// Next: create the WebSocket connection and feed it `data[consumed..]` of the last chunk
/// passed to `receive`, then everything read afterwards.
#[derive(Clone, Debug)]
pub struct Accepted {
    /// The 101 response (its body is always empty).
    pub response: Response,
    /// The subprotocol the server selected, one of those offered; `None` if it named none.
    pub subprotocol: Option<String>,
    /// Raw `Sec-WebSocket-Extensions` value of the answer (several headers joined with ", "),
    /// if present; the caller validates it against its offer.
    pub extensions: Option<String>,
    /// Bytes of the LAST `data` passed to [`ClientHandshake::receive`] that belonged to the
    /// head; the rest are WebSocket frames the caller must feed to the connection.
    pub consumed: usize,
}

/// Why a client handshake failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum HandshakeError {
    /// Server answered a non-101 status. Keeps the whole response (body up to
    /// [`HeadLimits::max_body_prefix`]); the caller may follow a redirect from `Location`,
    /// retry with credentials after a 401, or report it.
    Status(Response),
    /// The answer is not valid HTTP or not a valid WebSocket acceptance. `reason` is a short
    /// human text ("missing Sec-WebSocket-Accept", "invalid HTTP status line", "unsolicited
    /// extension", "head exceeds 65536 bytes" ...); `response` is Some when the head parsed.
    /// The caller closes the connection.
    InvalidResponse {
        /// Short description of the problem.
        reason: String,
        /// The parsed response, when the head was valid HTTP.
        response: Option<Box<Response>>,
    },
    /// The connection closed before the response head was complete.
    Eof,
}

impl HandshakeError {
    fn invalid(reason: impl Into<String>, response: Option<Response>) -> Self {
        Self::InvalidResponse {
            reason: reason.into(),
            response: response.map(Box::new),
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status(response) => {
                write!(
                    f,
                    "server rejected WebSocket connection: HTTP {}",
                    response.status
                )?;
                let reason = if response.reason.is_empty() {
                    reason_phrase(response.status)
                } else {
                    response.reason.as_str()
                };
                if !reason.is_empty() {
                    write!(f, " {reason}")?;
                }
                Ok(())
            }
            Self::InvalidResponse { reason, .. } => {
                write!(f, "invalid handshake response: {reason}")
            }
            Self::Eof => f.write_str("connection closed during the opening handshake"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// How the body of a non-101 response is delimited.
#[derive(Debug)]
enum BodyReader {
    /// `Content-Length`: this many bytes are still expected.
    Length { remaining: u64 },
    /// `Transfer-Encoding: chunked`.
    Chunked(ChunkDecoder),
    /// No framing: the body runs until the connection closes.
    UntilEof,
}

/// Appends as much of `bytes` as fits under `cap`; returns `true` (and flags the response)
/// when something had to be dropped.
fn keep_body(response: &mut Response, bytes: &[u8], cap: usize) -> bool {
    let room = cap.saturating_sub(response.body.len());
    let kept = bytes.len().min(room);
    response
        .body
        .extend_from_slice(bytes.get(..kept).unwrap_or_default());
    if kept < bytes.len() {
        response.body_truncated = true;
        true
    } else {
        false
    }
}

impl BodyReader {
    /// Picks the framing of a non-101 response; `None` when the status has no body.
    fn for_response(response: &Response) -> Option<Self> {
        let status = response.status;
        if (100..200).contains(&status) || status == 204 || status == 304 {
            return None;
        }
        let headers = &response.headers;
        if headers.get("transfer-encoding").is_some() {
            let last = headers
                .get_all("transfer-encoding")
                .flat_map(list_items)
                .last();
            return Some(match last {
                Some(coding) if coding.eq_ignore_ascii_case(b"chunked") => {
                    Self::Chunked(ChunkDecoder::default())
                }
                _ => Self::UntilEof,
            });
        }
        let mut length: Option<u64> = None;
        for item in headers.get_all("content-length").flat_map(list_items) {
            let parsed = std::str::from_utf8(item)
                .ok()
                .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok());
            match (parsed, length) {
                (None, _) => return Some(Self::UntilEof),
                (Some(n), Some(previous)) if n != previous => return Some(Self::UntilEof),
                (Some(n), _) => length = Some(n),
            }
        }
        Some(match length {
            Some(remaining) => Self::Length { remaining },
            None => Self::UntilEof,
        })
    }

    /// Consumes body bytes; returns `true` once the caller should stop waiting for more.
    fn feed(&mut self, response: &mut Response, data: &[u8], limits: &HeadLimits) -> bool {
        let cap = limits.max_body_prefix;
        match self {
            Self::Length { remaining } => {
                let n = usize::try_from(*remaining)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                keep_body(response, data.get(..n).unwrap_or_default(), cap);
                // Cannot underflow: `n <= *remaining` by construction.
                *remaining -= n as u64;
                if *remaining == 0 {
                    return true;
                }
                if response.body.len() >= cap {
                    // The declared body is longer than what we keep: stop waiting.
                    response.body_truncated = true;
                    return true;
                }
                false
            }
            Self::Chunked(decoder) => decoder.feed(response, data, limits),
            Self::UntilEof => keep_body(response, data, cap),
        }
    }

    /// Whether the body is complete when the connection ends now.
    fn complete_at_eof(&self) -> bool {
        matches!(self, Self::UntilEof)
    }
}

/// Position inside a chunked body.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum ChunkState {
    /// Reading the hex digits of a chunk size.
    #[default]
    Size,
    /// After the size: skipping chunk extensions up to the line feed.
    Extension,
    /// Inside chunk data.
    Data,
    /// After chunk data: expecting CR or LF.
    DataEnd,
    /// After chunk data and CR: expecting LF.
    DataEndLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer line.
    Trailer,
    /// Saw CR at the start of a trailer line: expecting LF.
    TrailerEndLf,
}

/// Streaming decoder for `Transfer-Encoding: chunked`; keeps only decoded data, up to the cap.
#[derive(Debug, Default)]
struct ChunkDecoder {
    state: ChunkState,
    /// Chunk size being parsed (state `Size`) or data bytes left (state `Data`).
    size: u64,
    /// Hex digits seen for the current size.
    digits: usize,
    /// Framing bytes (sizes, extensions, trailers) seen, bounded by `max_head`.
    overhead: usize,
}

impl ChunkDecoder {
    /// Returns `true` when done: terminator seen, cap exceeded or framing malformed (the last
    /// two flag the response as truncated).
    fn feed(&mut self, response: &mut Response, data: &[u8], limits: &HeadLimits) -> bool {
        let cap = limits.max_body_prefix;
        let mut rest = data;
        while let Some((&b, tail)) = rest.split_first() {
            if self.state == ChunkState::Data {
                let n = usize::try_from(self.size)
                    .unwrap_or(usize::MAX)
                    .min(rest.len());
                // `n <= rest.len()` (the `min` above), so `split_at` cannot panic.
                let (chunk, after) = rest.split_at(n);
                if keep_body(response, chunk, cap) {
                    return true;
                }
                // Cannot underflow: `n <= self.size` by construction.
                self.size -= n as u64;
                if self.size == 0 {
                    self.state = ChunkState::DataEnd;
                }
                rest = after;
                continue;
            }
            rest = tail;
            self.overhead += 1;
            if self.overhead > limits.max_head {
                response.body_truncated = true;
                return true;
            }
            let next = match (self.state, b) {
                (ChunkState::Size, _) if b.is_ascii_hexdigit() => {
                    // `to_digit(16)` is Some for every ASCII hex digit.
                    let digit = u64::from(char::from(b).to_digit(16).unwrap_or(0));
                    match self.size.checked_mul(16).and_then(|s| s.checked_add(digit)) {
                        Some(size) => {
                            self.size = size;
                            self.digits += 1;
                            Some(ChunkState::Size)
                        }
                        None => None,
                    }
                }
                (ChunkState::Size, _) if self.digits == 0 => None,
                (ChunkState::Size, b';' | b' ' | b'\t' | b'\r') => Some(ChunkState::Extension),
                (ChunkState::Size | ChunkState::Extension, b'\n') => {
                    self.digits = 0;
                    if self.size == 0 {
                        Some(ChunkState::TrailerStart)
                    } else {
                        Some(ChunkState::Data)
                    }
                }
                (ChunkState::Size, _) => None,
                (ChunkState::Extension, _) => Some(ChunkState::Extension),
                (ChunkState::DataEnd, b'\r') => Some(ChunkState::DataEndLf),
                (ChunkState::DataEnd | ChunkState::DataEndLf, b'\n') => {
                    self.size = 0;
                    Some(ChunkState::Size)
                }
                (ChunkState::DataEnd | ChunkState::DataEndLf, _) => None,
                (ChunkState::TrailerStart, b'\r') => Some(ChunkState::TrailerEndLf),
                (ChunkState::TrailerStart | ChunkState::TrailerEndLf, b'\n') => return true,
                (ChunkState::TrailerEndLf, _) => None,
                (ChunkState::Trailer, b'\n') => Some(ChunkState::TrailerStart),
                (ChunkState::TrailerStart | ChunkState::Trailer, _) => Some(ChunkState::Trailer),
                // Handled before the match.
                (ChunkState::Data, _) => Some(ChunkState::Data),
            };
            match next {
                Some(state) => self.state = state,
                None => {
                    response.body_truncated = true;
                    return true;
                }
            }
        }
        false
    }
}

/// Client handshake progress.
#[derive(Debug)]
enum ClientState {
    /// Waiting for the response head.
    Head(HeadReader),
    /// Non-101 head received; collecting the body.
    Body(Box<Response>, BodyReader),
    /// Accepted, failed, or the response was handed out.
    Done,
}

/// Client side of the opening handshake: builds the request, then parses the server's answer
/// incrementally.
///
/// Create with [`ClientHandshake::try_new`] (validates the request) or
/// [`ClientHandshake::new`] (repairs it), write [`ClientHandshake::request_bytes`], then feed
/// the answer to [`ClientHandshake::receive`].
#[derive(Debug)]
pub struct ClientHandshake {
    request: Vec<u8>,
    key: String,
    expected_accept: String,
    subprotocols: Vec<String>,
    offers_extensions: bool,
    limits: HeadLimits,
    state: ClientState,
}

impl ClientHandshake {
    /// Builds the handshake without failing: CR, LF and NUL are removed from every value
    /// (host, key, origin, user agent, extensions, extra header values); subprotocols that are
    /// not tokens or are repeated are dropped; extra headers with invalid names or reserved
    /// names (Host, Upgrade, Connection, Sec-WebSocket-Key, Sec-WebSocket-Version) are dropped;
    /// the resource gets a leading '/', loses any fragment and has whitespace, control and
    /// non-ASCII bytes percent-encoded. Prefer [`ClientHandshake::try_new`], which reports
    /// these problems instead.
    ///
    /// `key` normally comes from [`generate_key`]; the caller passes it so tests are
    /// deterministic. Next: write [`ClientHandshake::request_bytes`].
    pub fn new(request: &ClientRequest, key: String, limits: HeadLimits) -> Self {
        match build_request(request, &key, false) {
            Ok(built) => Self::from_built(built, limits),
            // Unreachable: every error path of `build_request` is taken only when `strict`.
            // Fall back to an empty request rather than panicking.
            Err(_) => Self::from_built(
                BuiltRequest {
                    bytes: Vec::new(),
                    key: strip_line_breaks(&key).into_owned(),
                    subprotocols: Vec::new(),
                    offers_extensions: false,
                },
                limits,
            ),
        }
    }

    /// Builds the handshake after checking the request with the rules of
    /// [`ClientRequest::validate`], plus: `key` must be base64 of exactly 16 bytes (use
    /// [`generate_key`]). On error, fix the request; on success, write
    /// [`ClientHandshake::request_bytes`].
    pub fn try_new(
        request: &ClientRequest,
        key: String,
        limits: HeadLimits,
    ) -> Result<Self, ClientRequestError> {
        build_request(request, &key, true).map(|built| Self::from_built(built, limits))
    }

    fn from_built(built: BuiltRequest, limits: HeadLimits) -> Self {
        Self {
            request: built.bytes,
            expected_accept: accept_key(&built.key),
            key: built.key,
            subprotocols: built.subprotocols,
            offers_extensions: built.offers_extensions,
            limits,
            state: ClientState::Head(HeadReader::default()),
        }
    }

    /// The complete HTTP request to write to the transport: "GET {resource} HTTP/1.1", Host,
    /// Upgrade, Connection, Sec-WebSocket-Key, Sec-WebSocket-Version: 13, then Origin,
    /// User-Agent, Sec-WebSocket-Protocol, Sec-WebSocket-Extensions, Authorization when set,
    /// then the extra headers, then the empty line.
    pub fn request_bytes(&self) -> &[u8] {
        &self.request
    }

    /// The `Sec-WebSocket-Key` sent (after any repair done by [`ClientHandshake::new`]).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Feeds bytes from the server. Returns `Ok(None)` while more is needed; `Ok(Some(accepted))`
    /// on a valid 101 (bytes after [`Accepted::consumed`] are WebSocket frames); an error
    /// otherwise (a non-101 answer is [`HandshakeError::Status`] once its body is collected).
    ///
    /// Calling it again after it returned `Ok(Some(_))` or an error is a logic error: it returns
    /// `InvalidResponse` with reason "handshake already finished" and ignores `data`.
    pub fn receive(&mut self, data: &[u8]) -> Result<Option<Accepted>, HandshakeError> {
        match std::mem::replace(&mut self.state, ClientState::Done) {
            ClientState::Head(mut reader) => {
                let end = match reader.feed(data, &self.limits) {
                    Ok(Some(end)) => end,
                    Ok(None) => {
                        self.state = ClientState::Head(reader);
                        return Ok(None);
                    }
                    Err(overflow) => {
                        let reason = overflow.describe(&self.limits, "status line");
                        return Err(HandshakeError::invalid(reason, None));
                    }
                };
                let head = reader.buf.get(..end.len).unwrap_or_default();
                let (response, minor_version) = parse_response(head, reader.lines, &self.limits)?;
                if response.status == 101 {
                    return self
                        .validate_101(response, minor_version, end.consumed)
                        .map(Some);
                }
                let Some(mut body) = BodyReader::for_response(&response) else {
                    return Err(HandshakeError::Status(response));
                };
                let mut response = Box::new(response);
                let rest = data.get(end.consumed..).unwrap_or_default();
                if body.feed(&mut response, rest, &self.limits) {
                    return Err(HandshakeError::Status(*response));
                }
                self.state = ClientState::Body(response, body);
                Ok(None)
            }
            ClientState::Body(mut response, mut body) => {
                if body.feed(&mut response, data, &self.limits) {
                    return Err(HandshakeError::Status(*response));
                }
                self.state = ClientState::Body(response, body);
                Ok(None)
            }
            ClientState::Done => Err(HandshakeError::invalid(ALREADY_FINISHED, None)),
        }
    }

    /// The peer closed the connection: returns `Eof` if the head was not complete, or
    /// `Status(response)` with the body collected so far if a non-101 head was complete (flagged
    /// truncated unless the body was delimited by end of file). The caller reports the error.
    ///
    /// After the handshake finished (accepted or failed) this is a logic error and returns
    /// `InvalidResponse` with reason "handshake already finished".
    pub fn receive_eof(&mut self) -> HandshakeError {
        match std::mem::replace(&mut self.state, ClientState::Done) {
            ClientState::Head(_) => HandshakeError::Eof,
            ClientState::Body(mut response, body) => {
                if !body.complete_at_eof() {
                    response.body_truncated = true;
                }
                HandshakeError::Status(*response)
            }
            ClientState::Done => HandshakeError::invalid(ALREADY_FINISHED, None),
        }
    }

    /// The caller gives up waiting (timeout): returns the non-101 response collected so far
    /// (flagged truncated), if its head was complete, and finishes the handshake. Returns `None`
    /// (and changes nothing) while the head is incomplete or once the handshake finished.
    pub fn take_partial_response(&mut self) -> Option<Response> {
        match std::mem::replace(&mut self.state, ClientState::Done) {
            ClientState::Body(mut response, _) => {
                response.body_truncated = true;
                Some(*response)
            }
            other => {
                self.state = other;
                None
            }
        }
    }

    /// Checks a 101 answer against RFC 6455 section 4.1 and the client's offer.
    fn validate_101(
        &self,
        response: Response,
        minor_version: u8,
        consumed: usize,
    ) -> Result<Accepted, HandshakeError> {
        match self.check_101(&response, minor_version) {
            Ok((subprotocol, extensions)) => Ok(Accepted {
                response,
                subprotocol,
                extensions,
                consumed,
            }),
            Err(reason) => Err(HandshakeError::invalid(reason, Some(response))),
        }
    }

    /// The checks of [`ClientHandshake::validate_101`]; returns the selected subprotocol and
    /// the extensions answer, or the reason for rejecting the response.
    fn check_101(
        &self,
        response: &Response,
        minor_version: u8,
    ) -> Result<(Option<String>, Option<String>), &'static str> {
        let headers = &response.headers;
        if minor_version != 1 {
            return Err("101 response is not HTTP/1.1");
        }
        if !headers.contains_token("upgrade", "websocket") {
            return Err("missing Upgrade: websocket");
        }
        if !headers.contains_token("connection", "upgrade") {
            return Err("missing Connection: Upgrade");
        }
        match headers.occurrence("sec-websocket-accept") {
            Occurrence::Absent => return Err("missing Sec-WebSocket-Accept"),
            Occurrence::Repeated => return Err("duplicate Sec-WebSocket-Accept"),
            Occurrence::Once(accept) if accept.trim_ascii() != self.expected_accept.as_bytes() => {
                return Err("Sec-WebSocket-Accept mismatch");
            }
            Occurrence::Once(_) => {}
        }

        let subprotocol = match headers.occurrence("sec-websocket-protocol") {
            Occurrence::Repeated => return Err("duplicate Sec-WebSocket-Protocol"),
            Occurrence::Absent => None,
            Occurrence::Once(value) if value.trim_ascii().is_empty() => None,
            Occurrence::Once(value) => {
                let value = value.trim_ascii();
                match self
                    .subprotocols
                    .iter()
                    .find(|offered| offered.as_bytes() == value)
                {
                    Some(offered) => Some(offered.clone()),
                    None => return Err("unsolicited subprotocol"),
                }
            }
        };

        let mut extensions: Option<String> = None;
        for value in headers.get_all("sec-websocket-extensions") {
            let value = value.trim_ascii();
            if value.is_empty() {
                continue;
            }
            let Ok(value) = std::str::from_utf8(value) else {
                return Err("invalid Sec-WebSocket-Extensions");
            };
            match &mut extensions {
                Some(joined) => {
                    joined.push_str(", ");
                    joined.push_str(value);
                }
                None => extensions = Some(value.to_owned()),
            }
        }
        if extensions.is_some() && !self.offers_extensions {
            return Err("unsolicited extension");
        }
        Ok((subprotocol, extensions))
    }
}

/// Parses a complete response head; returns the response (empty body) and the HTTP minor
/// version.
fn parse_response(
    head: &[u8],
    lines: usize,
    limits: &HeadLimits,
) -> Result<(Response, u8), HandshakeError> {
    let mut slots = header_slots(lines, limits);
    let mut parsed = httparse::Response::new(&mut slots);
    let reason = match parsed.parse(head) {
        Ok(httparse::Status::Complete(len)) if len == head.len() => None,
        Ok(_) => Some("malformed HTTP response head".to_owned()),
        Err(httparse::Error::Status | httparse::Error::Version) => {
            Some("invalid HTTP status line".to_owned())
        }
        Err(httparse::Error::TooManyHeaders) => {
            Some(HeadOverflow::TooManyHeaders.describe(limits, "status line"))
        }
        Err(_) => Some("malformed HTTP response header".to_owned()),
    };
    if let Some(reason) = reason {
        return Err(HandshakeError::invalid(reason, None));
    }
    let (Some(status), Some(minor_version)) = (parsed.code, parsed.version) else {
        return Err(HandshakeError::invalid("invalid HTTP status line", None));
    };
    let response = Response {
        status,
        reason: parsed.reason.unwrap_or_default().to_owned(),
        headers: owned_headers(parsed.headers),
        body: Vec::new(),
        body_truncated: false,
    };
    Ok((response, minor_version))
}

// ---------------------------------------------------------------------------------------------
// Server side
// ---------------------------------------------------------------------------------------------

/// A valid WebSocket upgrade request, returned by [`ServerHandshake::receive`].
///
/// Next: decide whether to accept (check `path`, `Origin`, credentials, pick one of
/// `subprotocols`, negotiate `extensions`), then write [`accept_response`] or an
/// [`http_response`], and feed the bytes of the last chunk after `consumed` to the connection.
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
    /// head; the rest already belong to the WebSocket connection.
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
/// Statuses used by [`ServerHandshake`]:
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

/// Parses and validates a complete request head (RFC 6455 section 4.2.1).
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
    let head = RequestHead {
        method: method.to_owned(),
        path: path.to_owned(),
        headers: owned_headers(parsed.headers),
    };
    match validate_upgrade(&head, version) {
        Ok((key, subprotocols, extensions)) => Ok(Request {
            method: head.method,
            path: head.path,
            key,
            subprotocols,
            extensions,
            consumed: 0,
            headers: head.headers,
        }),
        Err(mut error) => {
            error.head = Some(Box::new(head));
            Err(error)
        }
    }
}

/// The upgrade-specific checks of RFC 6455 section 4.2.1 on a parsed head: returns the key,
/// the offered subprotocols and the extension offers.
fn validate_upgrade(
    head: &RequestHead,
    version: u8,
) -> Result<(String, Vec<String>, Option<String>), RequestError> {
    let bad = |reason: &str| RequestError::new(400, reason);
    if head.method != "GET" {
        return Err(RequestError::new(405, "only GET can open a WebSocket"));
    }
    if version != 1 {
        return Err(bad("HTTP/1.1 required"));
    }

    match head.headers.occurrence("host") {
        Occurrence::Repeated => return Err(bad("duplicate Host header")),
        Occurrence::Once(host) if !host.trim_ascii().is_empty() => {}
        _ => return Err(bad("missing Host header")),
    }
    if !head.headers.contains_token("upgrade", "websocket") {
        return Err(RequestError::new(426, "WebSocket upgrade required"));
    }
    if !head.headers.contains_token("connection", "upgrade") {
        return Err(bad("missing Connection: Upgrade"));
    }
    match head.headers.occurrence("sec-websocket-version") {
        Occurrence::Absent => return Err(RequestError::new(426, "missing Sec-WebSocket-Version")),
        Occurrence::Once(v) if v.trim_ascii() == b"13" => {}
        _ => {
            return Err(RequestError::new(
                426,
                "unsupported Sec-WebSocket-Version (13 required)",
            ))
        }
    }
    let key = match head.headers.occurrence("sec-websocket-key") {
        Occurrence::Absent => return Err(bad("missing Sec-WebSocket-Key")),
        Occurrence::Repeated => return Err(bad("duplicate Sec-WebSocket-Key")),
        Occurrence::Once(key) => key.trim_ascii(),
    };
    let key = match std::str::from_utf8(key) {
        Ok(key) if BASE64.decode(key).map(|k| k.len()) == Ok(16) => key.to_owned(),
        _ => return Err(bad("invalid Sec-WebSocket-Key")),
    };

    let mut subprotocols = Vec::new();
    for value in head.headers.get_all("sec-websocket-protocol") {
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
    for value in head.headers.get_all("sec-websocket-extensions") {
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
// Response builders
// ---------------------------------------------------------------------------------------------

/// Whether a caller-supplied header name may be written, given the names the builder writes
/// itself.
fn allowed_header(name: &str, reserved: &[&str]) -> bool {
    is_token(name) && !reserved.iter().any(|r| name.eq_ignore_ascii_case(r))
}

/// 101 Switching Protocols for `request`, with optional subprotocol and extensions header
/// values and extra headers. Write it, then run the WebSocket connection.
///
/// `subprotocol` should be one of `request.subprotocols` and `extensions` the negotiated
/// answer to `request.extensions`; both are omitted when `None` or blank. CR, LF and NUL are
/// removed from all values; extra headers whose names are not HTTP tokens, or that would
/// corrupt the handshake (Upgrade, Connection, Sec-WebSocket-Accept, Content-Length,
/// Transfer-Encoding), are dropped.
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
    put_header(&mut out, "Upgrade", "websocket");
    put_header(&mut out, "Connection", "Upgrade");
    put_header(&mut out, "Sec-WebSocket-Accept", &accept_key(&request.key));
    for (name, value) in [
        ("Sec-WebSocket-Protocol", subprotocol),
        ("Sec-WebSocket-Extensions", extensions),
    ] {
        if let Some(value) = value {
            let value = strip_line_breaks(value);
            let value = value.trim();
            if !value.is_empty() {
                put_header(&mut out, name, value);
            }
        }
    }
    for (name, value) in extra_headers {
        if allowed_header(name, RESERVED) {
            put_header(&mut out, name, &strip_line_breaks(value));
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Any HTTP response (e.g. 401 from an auth hook, 200 for a health check): status line with
/// the standard reason phrase, the headers, `Content-Length`, `Connection: close`, body.
/// Write it and close the connection. Use [`accept_response`] for 101.
///
/// Status codes outside 100..=999 are replaced by 500. For 1xx, 204 and 304 no
/// `Content-Length` and no body are written. CR, LF and NUL are removed from header values;
/// headers whose names are not HTTP tokens, and `Content-Length`, `Transfer-Encoding` and
/// `Connection` (written by this function), are dropped.
pub fn http_response(status: u16, headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    build_response(status, &headers, body, "close")
}

/// Shared by [`http_response`] and [`RequestError::response_bytes`].
fn build_response(status: u16, headers: &[(&str, &str)], body: &[u8], connection: &str) -> Vec<u8> {
    const RESERVED: &[&str] = &["content-length", "transfer-encoding", "connection"];
    let status = if (100..=999).contains(&status) {
        status
    } else {
        500
    };
    let bodiless = (100..200).contains(&status) || status == 204 || status == 304;
    let mut out = Vec::with_capacity(128 + body.len());
    out.extend_from_slice(format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status)).as_bytes());
    for (name, value) in headers {
        if allowed_header(name, RESERVED) {
            put_header(&mut out, name, &strip_line_breaks(value));
        }
    }
    if !bodiless {
        put_header(&mut out, "Content-Length", &body.len().to_string());
    }
    put_header(&mut out, "Connection", connection);
    out.extend_from_slice(b"\r\n");
    if !bodiless {
        out.extend_from_slice(body);
    }
    out
}

/// The standard reason phrase for `status` (RFC 9110 names), e.g. "Not Found" for 404;
/// "" if unknown.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        102 => "Processing",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        305 => "Use Proxy",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        423 => "Locked",
        424 => "Failed Dependency",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        506 => "Variant Also Negotiates",
        507 => "Insufficient Storage",
        508 => "Loop Detected",
        511 => "Network Authentication Required",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    fn client_with(request: &ClientRequest) -> ClientHandshake {
        ClientHandshake::try_new(request, KEY.to_owned(), HeadLimits::default()).unwrap()
    }

    fn basic_request() -> ClientRequest {
        ClientRequest {
            host: "example.com".into(),
            resource: "/chat".into(),
            subprotocols: vec!["chat".into(), "superchat".into()],
            extensions: Some("permessage-deflate".into()),
            ..ClientRequest::default()
        }
    }

    fn ok_101(extra: &str) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {ACCEPT}\r\n{extra}\r\n"
        )
    }

    fn invalid_reason(result: Result<Option<Accepted>, HandshakeError>) -> String {
        match result {
            Err(HandshakeError::InvalidResponse { reason, .. }) => reason,
            other => panic!("expected InvalidResponse, got {other:?}"),
        }
    }

    fn status(result: Result<Option<Accepted>, HandshakeError>) -> Response {
        match result {
            Err(HandshakeError::Status(response)) => response,
            other => panic!("expected Status, got {other:?}"),
        }
    }

    /// Feeds `bytes` one byte at a time until the handshake finishes.
    fn feed_bytewise(
        client: &mut ClientHandshake,
        bytes: &[u8],
    ) -> (usize, Result<Option<Accepted>, HandshakeError>) {
        for (i, b) in bytes.iter().enumerate() {
            match client.receive(std::slice::from_ref(b)) {
                Ok(None) => {}
                other => return (i, other),
            }
        }
        (bytes.len(), Ok(None))
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(accept_key(KEY), ACCEPT);
    }

    #[test]
    fn generated_keys_are_16_random_bytes() {
        let a = generate_key();
        let b = generate_key();
        assert_eq!(BASE64.decode(&a).unwrap().len(), 16);
        assert_ne!(a, b);
    }

    #[test]
    fn request_bytes_layout() {
        let request = ClientRequest {
            host: "example.com:8080".into(),
            resource: "/chat?x=1".into(),
            origin: Some("https://example.com".into()),
            user_agent: Some("tether-test".into()),
            subprotocols: vec!["a".into(), "b".into()],
            extensions: Some("permessage-deflate; client_max_window_bits".into()),
            basic_auth: Some(("user".into(), "pa:ss".into())),
            headers: vec![("X-Trace".into(), "1".into())],
        };
        let client = client_with(&request);
        let expected = format!(
            "GET /chat?x=1 HTTP/1.1\r\nHost: example.com:8080\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\
             Origin: https://example.com\r\nUser-Agent: tether-test\r\n\
             Sec-WebSocket-Protocol: a, b\r\n\
             Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
             Authorization: Basic {}\r\nX-Trace: 1\r\n\r\n",
            BASE64.encode("user:pa:ss")
        );
        assert_eq!(
            std::str::from_utf8(client.request_bytes()).unwrap(),
            expected
        );
        assert_eq!(client.key(), KEY);
    }

    #[test]
    fn empty_resource_becomes_slash_and_non_ascii_is_encoded() {
        let mut request = basic_request();
        request.resource = String::new();
        assert!(client_with(&request)
            .request_bytes()
            .starts_with(b"GET / HTTP/1.1\r\n"));
        request.resource = "/caf\u{e9}".into();
        assert!(client_with(&request)
            .request_bytes()
            .starts_with(b"GET /caf%C3%A9 HTTP/1.1\r\n"));
    }

    type Mutation = fn(&mut ClientRequest);

    #[test]
    fn try_new_rejects_injection_and_invalid_input() {
        let cases: Vec<(&str, Mutation)> = vec![
            ("origin", |r| r.origin = Some("a\r\nX-Evil: 1".into())),
            ("host", |r| r.host = "h\nX: y".into()),
            ("empty host", |r| r.host = String::new()),
            ("resource space", |r| r.resource = "/a b".into()),
            ("resource crlf", |r| r.resource = "/a\r\nX: y".into()),
            ("resource slash", |r| r.resource = "chat".into()),
            ("fragment", |r| r.resource = "/a#b".into()),
            ("subprotocol", |r| r.subprotocols = vec!["a b".into()]),
            ("duplicate subprotocol", |r| {
                r.subprotocols = vec!["a".into(), "a".into()]
            }),
            ("header name", |r| {
                r.headers = vec![("X\r\nY".into(), "1".into())]
            }),
            ("header value", |r| {
                r.headers = vec![("X".into(), "1\r\n".into())]
            }),
            ("reserved header", |r| {
                r.headers = vec![("host".into(), "x".into())]
            }),
            ("extensions", |r| r.extensions = Some("a\0".into())),
            ("user agent", |r| r.user_agent = Some("a\n".into())),
            ("auth user", |r| {
                r.basic_auth = Some(("a:b".into(), "c".into()))
            }),
        ];
        for (what, mutate) in cases {
            let mut request = basic_request();
            mutate(&mut request);
            assert!(request.validate().is_err(), "{what}");
            assert!(
                ClientHandshake::try_new(&request, KEY.into(), HeadLimits::default()).is_err(),
                "{what}"
            );
        }
        let bad_key =
            ClientHandshake::try_new(&basic_request(), "abc".into(), HeadLimits::default());
        assert!(bad_key.is_err());
        assert!(basic_request().validate().is_ok());
    }

    #[test]
    fn new_repairs_unsafe_input() {
        let request = ClientRequest {
            host: "example.com\r\n".into(),
            resource: "chat room#frag".into(),
            origin: Some("o\r\nX-Evil: 1".into()),
            subprotocols: vec!["ok".into(), "not ok".into(), "ok".into()],
            headers: vec![
                ("Bad Name".into(), "v".into()),
                ("Connection".into(), "close".into()),
                ("X-Good".into(), "a\nb".into()),
            ],
            ..ClientRequest::default()
        };
        let client = ClientHandshake::new(&request, KEY.into(), HeadLimits::default());
        let text = std::str::from_utf8(client.request_bytes()).unwrap();
        assert!(text.starts_with("GET /chat%20room HTTP/1.1\r\nHost: example.com\r\n"));
        assert!(text.contains("Origin: oX-Evil: 1\r\n"));
        assert!(text.contains("Sec-WebSocket-Protocol: ok\r\n"));
        assert!(text.contains("X-Good: ab\r\n"));
        assert!(!text.contains("Bad Name"));
        assert!(!text.contains("close"));
        // Every line but the last two CRLFs is a header line with a colon.
        assert_eq!(text.matches("\r\n").count(), 10);
    }

    #[test]
    fn valid_101_in_one_chunk_with_frames_after() {
        let mut client = client_with(&basic_request());
        let head = ok_101(
            "Sec-WebSocket-Protocol: superchat\r\nSec-WebSocket-Extensions: permessage-deflate\r\n",
        );
        let mut data = head.clone().into_bytes();
        data.extend_from_slice(&[0x81, 0x02, b'h', b'i']);
        let accepted = client.receive(&data).unwrap().unwrap();
        assert_eq!(accepted.consumed, head.len());
        assert_eq!(accepted.subprotocol.as_deref(), Some("superchat"));
        assert_eq!(accepted.extensions.as_deref(), Some("permessage-deflate"));
        assert_eq!(accepted.response.status, 101);
        assert_eq!(accepted.response.reason, "Switching Protocols");
        assert!(accepted.response.body.is_empty());
        assert_eq!(
            invalid_reason(client.receive(b"more")),
            "handshake already finished"
        );
    }

    #[test]
    fn valid_101_byte_at_a_time() {
        let head = ok_101("Sec-WebSocket-Protocol: chat\r\n");
        let mut one = client_with(&basic_request());
        let whole = one.receive(head.as_bytes()).unwrap().unwrap();
        let mut data = head.clone().into_bytes();
        data.extend_from_slice(b"\x81\x00");
        let mut client = client_with(&basic_request());
        let (index, result) = feed_bytewise(&mut client, &data);
        let accepted = result.unwrap().unwrap();
        assert_eq!(index + 1, head.len());
        assert_eq!(accepted.consumed, 1);
        assert_eq!(accepted.subprotocol, whole.subprotocol);
        assert_eq!(accepted.response.headers, whole.response.headers);
    }

    #[test]
    fn no_subprotocol_chosen_is_allowed_and_case_insensitive_tokens() {
        let mut client = client_with(&basic_request());
        let head = format!(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: WebSocket\r\n\
             connection: keep-alive, UPGRADE\r\nsec-websocket-accept:  {ACCEPT} \r\n\r\n"
        );
        let accepted = client.receive(head.as_bytes()).unwrap().unwrap();
        assert_eq!(accepted.subprotocol, None);
        assert_eq!(accepted.extensions, None);
    }

    #[test]
    fn invalid_101_answers() {
        let cases = [
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n"
                    .to_owned(),
                "Sec-WebSocket-Accept mismatch",
            ),
            (
                format!(
                    "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Accept: {ACCEPT}\r\n\r\n"
                ),
                "missing Upgrade: websocket",
            ),
            (
                format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Sec-WebSocket-Accept: {ACCEPT}\r\n\r\n"
                ),
                "missing Connection: Upgrade",
            ),
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                    .to_owned(),
                "missing Sec-WebSocket-Accept",
            ),
            (
                ok_101(&format!("Sec-WebSocket-Accept: {ACCEPT}\r\n")),
                "duplicate Sec-WebSocket-Accept",
            ),
            (ok_101("Sec-WebSocket-Protocol: other\r\n"), "unsolicited subprotocol"),
            (
                ok_101("Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Protocol: chat\r\n"),
                "duplicate Sec-WebSocket-Protocol",
            ),
            (
                format!(
                    "HTTP/1.0 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n"
                ),
                "101 response is not HTTP/1.1",
            ),
            ("garbage garbage\r\n\r\n".to_owned(), "invalid HTTP status line"),
            ("HTTP/1.1 abc OK\r\n\r\n".to_owned(), "invalid HTTP status line"),
            (
                "HTTP/1.1 101 OK\r\nBad Header\r\n\r\n".to_owned(),
                "malformed HTTP response header",
            ),
        ];
        for (answer, reason) in cases {
            let mut client = client_with(&basic_request());
            assert_eq!(
                invalid_reason(client.receive(answer.as_bytes())),
                reason,
                "{answer}"
            );
        }

        // No extension offered: any extension in the answer is an error.
        let mut request = basic_request();
        request.extensions = None;
        let mut client = client_with(&request);
        let result =
            client.receive(ok_101("Sec-WebSocket-Extensions: permessage-deflate\r\n").as_bytes());
        match result {
            Err(HandshakeError::InvalidResponse { reason, response }) => {
                assert_eq!(reason, "unsolicited extension");
                assert_eq!(response.unwrap().status, 101);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn non_101_with_content_length_keeps_everything() {
        let mut client = client_with(&basic_request());
        let answer = b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"x\"\r\n\
                       Content-Length: 12\r\n\r\nnot allowed\n";
        let (split_a, split_b) = answer.split_at(40);
        assert!(client.receive(split_a).unwrap().is_none());
        let response = status(client.receive(split_b));
        assert_eq!(response.status, 401);
        assert_eq!(response.reason, "Unauthorized");
        assert_eq!(
            response.headers.get_str("www-authenticate"),
            Some("Basic realm=\"x\"")
        );
        assert_eq!(response.body, b"not allowed\n");
        assert!(!response.body_truncated);
        let error = HandshakeError::Status(response);
        assert_eq!(
            error.to_string(),
            "server rejected WebSocket connection: HTTP 401 Unauthorized"
        );
    }

    #[test]
    fn body_longer_than_cap_is_truncated_and_flagged() {
        let limits = HeadLimits {
            max_body_prefix: 8,
            ..HeadLimits::default()
        };
        let mut client =
            ClientHandshake::try_new(&basic_request(), KEY.into(), limits.clone()).unwrap();
        let answer = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 100\r\n\r\n0123456789";
        let response = status(client.receive(answer));
        assert_eq!(response.body, b"01234567");
        assert!(response.body_truncated);

        // Cap reached exactly while more is declared: stop waiting.
        let mut client =
            ClientHandshake::try_new(&basic_request(), KEY.into(), limits.clone()).unwrap();
        assert!(client
            .receive(b"HTTP/1.1 500 Oops\r\nContent-Length: 100\r\n\r\n0123")
            .unwrap()
            .is_none());
        let response = status(client.receive(b"4567"));
        assert_eq!(response.body, b"01234567");
        assert!(response.body_truncated);

        // No framing: the body runs until EOF or beyond the cap.
        let mut client = ClientHandshake::try_new(&basic_request(), KEY.into(), limits).unwrap();
        assert!(client
            .receive(b"HTTP/1.1 502 Bad Gateway\r\n\r\n01234567")
            .unwrap()
            .is_none());
        let response = status(client.receive(b"8"));
        assert_eq!(response.body, b"01234567");
        assert!(response.body_truncated);
    }

    #[test]
    fn body_until_eof() {
        let mut client = client_with(&basic_request());
        assert!(client
            .receive(b"HTTP/1.1 403 Forbidden\r\n\r\ngo away")
            .unwrap()
            .is_none());
        match client.receive_eof() {
            HandshakeError::Status(response) => {
                assert_eq!(response.status, 403);
                assert_eq!(response.body, b"go away");
                assert!(!response.body_truncated);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn chunked_body_is_decoded() {
        let answer: &[u8] = b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n\
                              5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";
        for split in 0..answer.len() {
            let mut client = client_with(&basic_request());
            let (a, b) = answer.split_at(split);
            let response = match client.receive(a) {
                Ok(None) => status(client.receive(b)),
                other => status(other),
            };
            assert_eq!(response.body, b"hello world", "split {split}");
            assert!(!response.body_truncated);
        }
        // Malformed framing stops collection and flags the body.
        let mut client = client_with(&basic_request());
        let response =
            status(client.receive(
                b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXYZ",
            ));
        assert_eq!(response.body, b"abc");
        assert!(response.body_truncated);
        // Over the cap.
        let limits = HeadLimits {
            max_body_prefix: 4,
            ..HeadLimits::default()
        };
        let mut client = ClientHandshake::try_new(&basic_request(), KEY.into(), limits).unwrap();
        let response = status(client.receive(
            b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndef",
        ));
        assert_eq!(response.body, b"abcd");
        assert!(response.body_truncated);
    }

    #[test]
    fn statuses_without_body_complete_immediately() {
        for code in ["204 No Content", "304 Not Modified", "100 Continue"] {
            let mut client = client_with(&basic_request());
            let answer = format!("HTTP/1.1 {code}\r\nContent-Length: 10\r\n\r\n");
            let response = status(client.receive(answer.as_bytes()));
            assert!(response.body.is_empty());
        }
        let mut client = client_with(&basic_request());
        let response = status(client.receive(
            b"HTTP/1.1 301 Moved Permanently\r\nLocation: wss://other/\r\nContent-Length: 0\r\n\r\n",
        ));
        assert_eq!(response.headers.get_str("location"), Some("wss://other/"));
    }

    #[test]
    fn eof_before_head_and_mid_body() {
        let mut client = client_with(&basic_request());
        assert!(client.receive(b"HTTP/1.1 101 Swi").unwrap().is_none());
        let error = client.receive_eof();
        assert!(matches!(error, HandshakeError::Eof));
        assert_eq!(
            error.to_string(),
            "connection closed during the opening handshake"
        );

        let mut client = client_with(&basic_request());
        assert!(client
            .receive(b"HTTP/1.1 404 Not Found\r\nContent-Length: 20\r\n\r\npartial")
            .unwrap()
            .is_none());
        match client.receive_eof() {
            HandshakeError::Status(response) => {
                assert_eq!(response.status, 404);
                assert_eq!(response.body, b"partial");
                assert!(response.body_truncated);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            client.receive_eof(),
            HandshakeError::InvalidResponse { .. }
        ));
    }

    #[test]
    fn take_partial_response_after_timeout() {
        let mut client = client_with(&basic_request());
        assert!(client.take_partial_response().is_none());
        assert!(client
            .receive(b"HTTP/1.1 503 Service Unavailable\r\n")
            .unwrap()
            .is_none());
        assert!(client.take_partial_response().is_none());
        assert!(client
            .receive(b"Content-Length: 9\r\n\r\nbusy")
            .unwrap()
            .is_none());
        let response = client.take_partial_response().unwrap();
        assert_eq!(response.status, 503);
        assert_eq!(response.body, b"busy");
        assert!(response.body_truncated);
        assert!(client.take_partial_response().is_none());
    }

    #[test]
    fn client_head_limits() {
        let limits = HeadLimits {
            max_line: 32,
            max_headers: 2,
            max_head: 128,
            ..HeadLimits::default()
        };
        let long_status = format!("HTTP/1.1 200 {}\r\n\r\n", "x".repeat(40));
        let many = "HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        let long_header = format!("HTTP/1.1 200 OK\r\nA: {}\r\n\r\n", "x".repeat(40));
        let huge = format!("HTTP/1.1 200 OK\r\n{}", "A: 1\r\n".repeat(40));
        let expected = [
            (long_status.as_str(), "status line exceeds 32 bytes"),
            (many, "more than 2 headers"),
            (long_header.as_str(), "header line exceeds 32 bytes"),
        ];
        for (answer, reason) in expected {
            let mut client =
                ClientHandshake::try_new(&basic_request(), KEY.into(), limits.clone()).unwrap();
            assert_eq!(invalid_reason(client.receive(answer.as_bytes())), reason);
        }
        let limits = HeadLimits {
            max_headers: 1000,
            ..limits
        };
        let mut client = ClientHandshake::try_new(&basic_request(), KEY.into(), limits).unwrap();
        assert_eq!(
            invalid_reason(client.receive(huge.as_bytes())),
            "head exceeds 128 bytes"
        );
        // A long line is detected before its end arrives.
        let mut client = client_with(&basic_request());
        assert!(client.receive(&[b'H'; 8193]).unwrap().is_none());
        assert_eq!(
            invalid_reason(client.receive(b"x")),
            "status line exceeds 8192 bytes"
        );
    }

    #[test]
    fn invalid_response_display() {
        let error = HandshakeError::invalid("missing Sec-WebSocket-Accept", None);
        assert_eq!(
            error.to_string(),
            "invalid handshake response: missing Sec-WebSocket-Accept"
        );
    }

    // --- server -------------------------------------------------------------------------------

    fn valid_request() -> String {
        format!(
            "GET /chat?room=1 HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
             Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n\
             Origin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\n\
             Sec-WebSocket-Protocol: v2\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\
             Sec-WebSocket-Extensions: x-foo\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
    }

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
    fn huge_limits_do_not_allocate_up_front() {
        let limits = HeadLimits {
            max_line: usize::MAX,
            max_headers: usize::MAX,
            max_head: usize::MAX,
            max_body_prefix: usize::MAX,
        };
        let mut server = ServerHandshake::new(limits.clone());
        assert!(server
            .receive(valid_request().as_bytes())
            .unwrap()
            .is_some());
        let mut client = ClientHandshake::try_new(&basic_request(), KEY.into(), limits).unwrap();
        assert!(client.receive(ok_101("").as_bytes()).unwrap().is_some());
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

    #[test]
    fn http_response_layout() {
        let bytes = http_response(
            401,
            &[
                ("WWW-Authenticate".into(), "Basic realm=\"x\"".into()),
                ("Content-Length".into(), "999".into()),
            ],
            b"no",
        );
        assert_eq!(
            bytes,
            b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"x\"\r\n\
              Content-Length: 2\r\nConnection: close\r\n\r\nno"
        );
        assert_eq!(
            http_response(204, &[], b"ignored"),
            b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
        );
        assert!(http_response(42, &[], b"").starts_with(b"HTTP/1.1 500 Internal Server Error\r\n"));
        assert!(http_response(299, &[], b"").starts_with(b"HTTP/1.1 299 \r\n"));
        assert_eq!(reason_phrase(404), "Not Found");
        assert_eq!(reason_phrase(431), "Request Header Fields Too Large");
        assert_eq!(reason_phrase(299), "");
    }

    #[test]
    fn round_trip() {
        let request = ClientRequest {
            host: "localhost:9001".into(),
            resource: "/ws".into(),
            subprotocols: vec!["graphql-ws".into()],
            extensions: Some("permessage-deflate; client_max_window_bits".into()),
            basic_auth: Some(("u".into(), "p".into())),
            ..ClientRequest::default()
        };
        let mut client =
            ClientHandshake::try_new(&request, generate_key(), HeadLimits::default()).unwrap();
        let mut server = ServerHandshake::new(HeadLimits::default());
        let incoming = server.receive(client.request_bytes()).unwrap().unwrap();
        assert_eq!(incoming.consumed, client.request_bytes().len());
        assert_eq!(incoming.key, client.key());
        assert_eq!(incoming.path, "/ws");
        assert_eq!(incoming.header("host"), Some("localhost:9001"));
        assert_eq!(
            incoming.header("authorization"),
            Some(format!("Basic {}", BASE64.encode("u:p")).as_str())
        );
        let answer = accept_response(
            &incoming,
            incoming.subprotocols.first().map(String::as_str),
            Some("permessage-deflate"),
            &[],
        );
        let accepted = client.receive(&answer).unwrap().unwrap();
        assert_eq!(accepted.consumed, answer.len());
        assert_eq!(accepted.subprotocol.as_deref(), Some("graphql-ws"));
        assert_eq!(accepted.extensions.as_deref(), Some("permessage-deflate"));
    }

    #[test]
    fn headers_helpers() {
        let mut headers = Headers::new();
        assert!(headers.is_empty());
        headers.push("Connection", "keep-alive, Upgrade");
        headers.push("X-Bin", vec![0xff, 0xfe]);
        headers.push("x-bin", "second");
        assert_eq!(headers.len(), 3);
        assert!(headers.contains_token("CONNECTION", "upgrade"));
        assert!(!headers.contains_token("connection", "upgrad"));
        assert_eq!(headers.get("x-bin"), Some(&[0xff, 0xfe][..]));
        assert_eq!(headers.get_str("x-bin"), None);
        assert_eq!(headers.get_all("X-BIN").count(), 2);
        assert_eq!(headers.iter().count(), 3);
        assert_eq!((&headers).into_iter().count(), 3);
        assert!(value_contains_token(b" a ,, b ,c", "B"));
        assert_eq!(headers.clone().into_vec().len(), 3);
    }
}
