//! Client side of the opening handshake (RFC 6455 section 4.1).
//!
//! Describe the request with a [`ClientRequest`], create a [`ClientHandshake`], write
//! [`ClientHandshake::request_bytes`] and feed the server's answer to
//! [`ClientHandshake::receive`]. A 101 that passes the checks gives an [`Accepted`]; anything
//! else is a [`HandshakeError`] that keeps the whole [`Response`] when it parsed.

use std::fmt::{self, Write as _};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use super::{accept_key, ALREADY_FINISHED};
use crate::http::{
    header_slots, is_line_breaking, is_token, owned_headers, put_header, reason_phrase,
    strip_line_breaks, BodyReader, HeadLimits, HeadOverflow, HeadReader, Headers, Occurrence,
};

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
    /// `key` normally comes from [`generate_key`](super::generate_key); the caller passes it so tests are
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
    /// [`generate_key`](super::generate_key)). On error, fix the request; on success, write
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
                let Some(mut body) = BodyReader::for_response(response.status, &response.headers)
                else {
                    return Err(HandshakeError::Status(response));
                };
                let mut response = Box::new(response);
                let rest = data.get(end.consumed..).unwrap_or_default();
                if body.feed(
                    &mut response.body,
                    &mut response.body_truncated,
                    rest,
                    &self.limits,
                ) {
                    return Err(HandshakeError::Status(*response));
                }
                self.state = ClientState::Body(response, body);
                Ok(None)
            }
            ClientState::Body(mut response, mut body) => {
                if body.feed(
                    &mut response.body,
                    &mut response.body_truncated,
                    data,
                    &self.limits,
                ) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::fixtures::{basic_request, ok_101, ACCEPT, KEY};

    fn client_with(request: &ClientRequest) -> ClientHandshake {
        ClientHandshake::try_new(request, KEY.to_owned(), HeadLimits::default()).unwrap()
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
}
