//! HTTP/1.1 heads and bodies, as far as the opening handshake needs them.
//!
//! Sans-I/O like the rest of the crate: [`Headers`] describes a parsed head, the head and body
//! readers (crate-internal) consume bytes incrementally within [`HeadLimits`], and
//! [`http_response`] serializes a plain HTTP answer (for example a 401 from an authentication
//! hook) whose values cannot inject header lines.
//!
//! The WebSocket-specific parts (the request, the 101 answer, their checks) live in
//! [`crate::handshake`], which also re-exports the public items of this module.

use std::borrow::Cow;

/// Caps applied while parsing an HTTP head (request or response).
///
/// Use [`HeadLimits::default`] unless you have a reason to change them; pass the value to
/// [`ClientHandshake::new`](crate::handshake::ClientHandshake::new) /
/// [`ServerHandshake::new`](crate::handshake::ServerHandshake::new).
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
    pub(crate) fn occurrence(&self, name: &str) -> Occurrence<'_> {
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
pub(crate) enum Occurrence<'a> {
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
pub(crate) fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
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
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

/// Bytes that must never reach a header line from caller-supplied text.
pub(crate) fn is_line_breaking(c: char) -> bool {
    matches!(c, '\r' | '\n' | '\0')
}

/// `value` without CR, LF and NUL.
pub(crate) fn strip_line_breaks(value: &str) -> Cow<'_, str> {
    if value.contains(is_line_breaking) {
        Cow::Owned(value.chars().filter(|&c| !is_line_breaking(c)).collect())
    } else {
        Cow::Borrowed(value)
    }
}

/// Appends `name: value\r\n`.
pub(crate) fn put_header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

// ---------------------------------------------------------------------------------------------
// Incremental head reader (requests and responses)
// ---------------------------------------------------------------------------------------------

/// Which limit an incoming head broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HeadOverflow {
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
    pub(crate) fn describe(self, limits: &HeadLimits, first_line: &str) -> String {
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
pub(crate) struct HeadEnd {
    /// Length of the head in the reader's buffer, terminating empty line included.
    pub(crate) len: usize,
    /// How many bytes of the last chunk belonged to the head.
    pub(crate) consumed: usize,
}

/// Accumulates a head and finds its end without rescanning: `scan_pos` remembers where the
/// search for the next line feed stopped.
#[derive(Debug, Default)]
pub(crate) struct HeadReader {
    /// Head bytes received so far (never more than `max_head`).
    pub(crate) buf: Vec<u8>,
    /// Next byte of `buf` not yet examined.
    scan_pos: usize,
    /// Start of the line being received.
    line_start: usize,
    /// Non-empty lines completed so far (start line plus header lines).
    pub(crate) lines: usize,
}

impl HeadReader {
    /// Appends (part of) `data` and looks for the empty line ending the head. Lines may end in
    /// CRLF or a bare LF; empty lines before the start line are skipped (as the HTTP parser does).
    pub(crate) fn feed(
        &mut self,
        data: &[u8],
        limits: &HeadLimits,
    ) -> Result<Option<HeadEnd>, HeadOverflow> {
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
pub(crate) fn header_slots(lines: usize, limits: &HeadLimits) -> Vec<httparse::Header<'static>> {
    vec![httparse::EMPTY_HEADER; lines.min(limits.max_headers)]
}

/// Copies parsed headers into an owned list.
pub(crate) fn owned_headers(parsed: &[httparse::Header<'_>]) -> Headers {
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
// Bodies (the start of a non-101 answer, kept for the caller)
// ---------------------------------------------------------------------------------------------

/// How the body of a response is delimited (RFC 9112 section 6.3).
///
/// Create with [`BodyReader::for_response`] once the head is parsed, then pass every later
/// byte to [`BodyReader::feed`] until it returns `true`; at end of file ask
/// [`BodyReader::complete_at_eof`] whether the body is whole.
#[derive(Debug)]
pub(crate) enum BodyReader {
    /// `Content-Length`: this many bytes are still expected.
    Length { remaining: u64 },
    /// `Transfer-Encoding: chunked`.
    Chunked(ChunkDecoder),
    /// No framing: the body runs until the connection closes.
    UntilEof,
}

/// Appends as much of `bytes` to `body` as fits under `cap`; returns `true` (and sets
/// `truncated`) when something had to be dropped.
fn keep_body(body: &mut Vec<u8>, truncated: &mut bool, bytes: &[u8], cap: usize) -> bool {
    let room = cap.saturating_sub(body.len());
    let kept = bytes.len().min(room);
    body.extend_from_slice(bytes.get(..kept).unwrap_or_default());
    if kept < bytes.len() {
        *truncated = true;
        true
    } else {
        false
    }
}

impl BodyReader {
    /// Picks the framing of a response with `status` and `headers`; `None` when the status
    /// has no body (1xx, 204, 304).
    pub(crate) fn for_response(status: u16, headers: &Headers) -> Option<Self> {
        if (100..200).contains(&status) || status == 204 || status == 304 {
            return None;
        }
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

    /// Consumes body bytes, keeping at most [`HeadLimits::max_body_prefix`] of them in `body`
    /// and setting `truncated` when some are dropped or the framing is malformed; returns
    /// `true` once the caller should stop waiting for more.
    pub(crate) fn feed(
        &mut self,
        body: &mut Vec<u8>,
        truncated: &mut bool,
        data: &[u8],
        limits: &HeadLimits,
    ) -> bool {
        let cap = limits.max_body_prefix;
        match self {
            Self::Length { remaining } => {
                let n = usize::try_from(*remaining)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                keep_body(body, truncated, data.get(..n).unwrap_or_default(), cap);
                // Cannot underflow: `n <= *remaining` by construction.
                *remaining -= n as u64;
                if *remaining == 0 {
                    return true;
                }
                if body.len() >= cap {
                    // The declared body is longer than what we keep: stop waiting.
                    *truncated = true;
                    return true;
                }
                false
            }
            Self::Chunked(decoder) => decoder.feed(body, truncated, data, limits),
            Self::UntilEof => keep_body(body, truncated, data, cap),
        }
    }

    /// Whether the body is complete when the connection ends now.
    pub(crate) fn complete_at_eof(&self) -> bool {
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
pub(crate) struct ChunkDecoder {
    state: ChunkState,
    /// Chunk size being parsed (state `Size`) or data bytes left (state `Data`).
    size: u64,
    /// Hex digits seen for the current size.
    digits: usize,
    /// Framing bytes (sizes, extensions, trailers) seen, bounded by `max_head`.
    overhead: usize,
}

impl ChunkDecoder {
    /// Decodes `data` into `body` (at most [`HeadLimits::max_body_prefix`] bytes in all).
    /// Returns `true` when done: terminator seen, cap exceeded or framing malformed (the last
    /// two set `truncated`).
    fn feed(
        &mut self,
        body: &mut Vec<u8>,
        truncated: &mut bool,
        data: &[u8],
        limits: &HeadLimits,
    ) -> bool {
        let cap = limits.max_body_prefix;
        let mut rest = data;
        while let Some((&b, tail)) = rest.split_first() {
            if self.state == ChunkState::Data {
                let n = usize::try_from(self.size)
                    .unwrap_or(usize::MAX)
                    .min(rest.len());
                // `n <= rest.len()` (the `min` above), so `split_at` cannot panic.
                let (chunk, after) = rest.split_at(n);
                if keep_body(body, truncated, chunk, cap) {
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
                *truncated = true;
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
                    *truncated = true;
                    return true;
                }
            }
        }
        false
    }
}

// ---------------------------------------------------------------------------------------------
// Response builders
// ---------------------------------------------------------------------------------------------

/// Whether a caller-supplied header name may be written, given the names the builder writes
/// itself.
pub(crate) fn allowed_header(name: &str, reserved: &[&str]) -> bool {
    is_token(name) && !reserved.iter().any(|r| name.eq_ignore_ascii_case(r))
}
/// Any HTTP response (e.g. 401 from an auth hook, 200 for a health check): status line with
/// the standard reason phrase, the headers, `Content-Length`, `Connection: close`, body.
/// Write it and close the connection. Use
/// [`accept_response`](crate::handshake::accept_response) for 101.
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

/// Shared by [`http_response`] and
/// [`RequestError::response_bytes`](crate::handshake::RequestError::response_bytes).
pub(crate) fn build_response(
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
    connection: &str,
) -> Vec<u8> {
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
