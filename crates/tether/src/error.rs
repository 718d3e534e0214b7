//! The error type of the tokio driver.

use std::fmt;
use std::io;

pub use tether_proto::handshake::Response;
use tether_proto::ProtocolError;

/// A shorthand for results whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which step of opening a connection ran out of time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// DNS resolution and the TCP connection.
    Connect,
    /// The HTTP CONNECT exchange with a proxy.
    Proxy,
    /// The TLS handshake.
    Tls,
    /// The WebSocket upgrade request and response.
    Handshake,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connect => "TCP connect",
            Self::Proxy => "proxy CONNECT",
            Self::Tls => "TLS handshake",
            Self::Handshake => "WebSocket handshake",
        })
    }
}

/// Why redirects were not followed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RedirectError {
    /// More hops than the configured maximum.
    TooMany {
        /// The configured maximum.
        max: usize,
    },
    /// A redirect back to a URL already visited.
    Loop(String),
    /// A redirect from `wss://` to `ws://`, or to a scheme that is not a WebSocket one.
    Forbidden(String),
    /// A 3xx answer without a usable Location header.
    MissingLocation,
}

impl fmt::Display for RedirectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooMany { max } => write!(f, "more than {max} redirects"),
            Self::Loop(url) => write!(f, "redirect loop at {url}"),
            Self::Forbidden(url) => write!(f, "redirect to {url} is not allowed"),
            Self::MissingLocation => f.write_str("redirect without a Location header"),
        }
    }
}

/// Why tunnelling through a proxy (HTTP CONNECT or SOCKS5) failed.
#[derive(Debug)]
#[non_exhaustive]
pub struct ProxyError {
    /// The proxy's HTTP status, when it answered the CONNECT (e.g. 407, 502).
    pub status: Option<u16>,
    /// The `Proxy-Authenticate` challenges of a refusal (a 407's), as sent; for a 401 (the
    /// answer of some proxies, tinyproxy's among them, to wrong credentials), its
    /// `WWW-Authenticate` challenges too.
    pub authenticate: Vec<String>,
    /// The SOCKS5 reply code, when a SOCKS5 proxy refused the CONNECT (RFC 1928: 1 general
    /// failure, 2 not allowed by ruleset, 3 network unreachable, 4 host unreachable, 5
    /// connection refused, 6 TTL expired, 7 command not supported, 8 address type not
    /// supported).
    pub socks_reply: Option<u8>,
    /// What happened, for humans.
    pub message: String,
    /// The I/O error, when the proxy could not be reached or hung up.
    pub io: Option<io::Error>,
}

impl ProxyError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            status: None,
            authenticate: Vec::new(),
            socks_reply: None,
            message: message.into(),
            io: None,
        }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ProxyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.io.as_ref().map(|e| e as _)
    }
}

/// The kind of an [`Error`], for matching in policies without destructuring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// [`Error::Io`].
    Io,
    /// [`Error::Timeout`].
    Timeout,
    /// [`Error::Eof`].
    Eof,
    /// [`Error::Status`].
    Status,
    /// [`Error::InvalidResponse`].
    InvalidResponse,
    /// [`Error::Redirect`].
    Redirect,
    /// [`Error::Tls`].
    Tls,
    /// [`Error::Proxy`].
    Proxy,
    /// [`Error::Protocol`].
    Protocol,
    /// [`Error::InvalidUri`].
    InvalidUri,
    /// [`Error::ConnectionClosed`].
    Closed,
    /// [`Error::SessionLost`], [`Error::SessionsNotOffered`], [`Error::Session`].
    Session,
    /// [`Error::Other`] (and anything else).
    Other,
}

impl ErrorKind {
    /// The kind's name as used in the CLI's JSON events: `io`, `timeout`, `eof`, `status`,
    /// `invalid_response`, `redirect`, `tls`, `proxy`, `protocol`, `invalid_uri`, `closed`,
    /// `session`, `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Io => "io",
            Self::Timeout => "timeout",
            Self::Eof => "eof",
            Self::Status => "status",
            Self::InvalidResponse => "invalid_response",
            Self::Redirect => "redirect",
            Self::Tls => "tls",
            Self::Proxy => "proxy",
            Self::Protocol => "protocol",
            Self::InvalidUri => "invalid_uri",
            Self::Closed => "closed",
            Self::Session => "session",
            Self::Other => "other",
        }
    }
}

/// Everything that can go wrong opening or using a WebSocket connection.
///
/// Errors keep what a retry decision needs: the I/O error kind, the phase that timed out, the
/// whole HTTP response of a rejected handshake, and their [`source`](std::error::Error::source)
/// chain. [`Error::is_certificate_error`] tells an untrusted server certificate apart from
/// other TLS failures.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error: connection refused or reset, DNS failure, …
    Io(io::Error),
    /// A phase of opening the connection exceeded the open timeout.
    Timeout(Phase),
    /// The server closed the connection before its handshake response was complete.
    Eof,
    /// The server answered the upgrade with a status other than 101. The whole response is
    /// kept: status, headers (such as `WWW-Authenticate` or `Retry-After`) and a body prefix.
    Status(Box<Response>),
    /// The answer was not valid HTTP or not a valid WebSocket acceptance.
    InvalidResponse {
        /// What was wrong, for humans.
        reason: String,
        /// The response, when its head could be parsed.
        response: Option<Box<Response>>,
    },
    /// Redirects could not be followed.
    Redirect(RedirectError),
    /// The TLS handshake failed.
    Tls(io::Error),
    /// The proxy could not be reached, or refused or failed the CONNECT request.
    Proxy(ProxyError),
    /// The peer violated the protocol, a limit was exceeded, or the keepalive timed out.
    Protocol(ProtocolError),
    /// The URL is not a usable `ws://` or `wss://` URL.
    InvalidUri(String),
    /// The connection is closed (or closing) and cannot send.
    ConnectionClosed,
    /// The reconnect policy gave up after this many failed attempts in a row.
    AttemptsExhausted {
        /// Failed attempts in a row.
        attempts: u32,
        /// The last attempt's error.
        last: Box<Self>,
    },
    /// The server could not resume the session (see [`crate::session`]): why, and the
    /// messages sent that it never acknowledged.
    SessionLost(Box<crate::session::SessionLost>),
    /// A resumable session was asked for, and the server did not select the resume
    /// protocol's subprotocol.
    SessionsNotOffered,
    /// The peer broke the resume protocol (the connection was closed with 1002).
    Session(tether_proto::session::SessionError),
    /// An error raised by user code (for example a reconnect hook).
    Other(Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    /// The HTTP response of a rejected handshake, if this error carries one.
    pub fn response(&self) -> Option<&Response> {
        match self {
            Self::Status(r) => Some(r),
            Self::InvalidResponse { response, .. } => response.as_deref(),
            Self::AttemptsExhausted { last, .. } => last.response(),
            _ => None,
        }
    }

    /// The HTTP status of a rejected handshake.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status(r) => Some(r.status),
            Self::AttemptsExhausted { last, .. } => last.status(),
            _ => None,
        }
    }

    /// True if TLS failed because the server's certificate is invalid or not trusted.
    pub fn is_certificate_error(&self) -> bool {
        let Self::Tls(e) = self else { return false };
        matches!(
            e.get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
            Some(rustls::Error::InvalidCertificate(_))
                | Some(rustls::Error::NoCertificatesPresented)
                | Some(rustls::Error::InvalidCertRevocationList(_))
        )
    }

    /// The kind of error (for [`AttemptsExhausted`](Self::AttemptsExhausted), the last
    /// attempt's).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Io(_) => ErrorKind::Io,
            Self::Timeout(_) => ErrorKind::Timeout,
            Self::Eof => ErrorKind::Eof,
            Self::Status(_) => ErrorKind::Status,
            Self::InvalidResponse { .. } => ErrorKind::InvalidResponse,
            Self::Redirect(_) => ErrorKind::Redirect,
            Self::Tls(_) => ErrorKind::Tls,
            Self::Proxy(_) => ErrorKind::Proxy,
            Self::Protocol(_) => ErrorKind::Protocol,
            Self::InvalidUri(_) => ErrorKind::InvalidUri,
            Self::ConnectionClosed => ErrorKind::Closed,
            Self::AttemptsExhausted { last, .. } => last.kind(),
            Self::SessionLost(_) | Self::SessionsNotOffered | Self::Session(_) => {
                ErrorKind::Session
            }
            Self::Other(_) => ErrorKind::Other,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "I/O error: {e}"),
            Self::Timeout(phase) => write!(f, "timed out during {phase}"),
            Self::Eof => f.write_str("connection closed during the opening handshake"),
            Self::Status(r) => {
                write!(f, "server rejected WebSocket connection: HTTP {}", r.status)?;
                if !r.reason.is_empty() {
                    write!(f, " {}", r.reason)?;
                }
                Ok(())
            }
            Self::InvalidResponse { reason, .. } => {
                write!(f, "invalid handshake response: {reason}")
            }
            Self::Redirect(e) => write!(f, "redirect failed: {e}"),
            Self::Tls(e) => write!(f, "TLS error: {e}"),
            Self::Proxy(e) => write!(f, "proxy error: {e}"),
            Self::Protocol(e) => write!(f, "protocol error: {e}"),
            Self::InvalidUri(e) => write!(f, "invalid URI: {e}"),
            Self::ConnectionClosed => f.write_str("the connection is closed"),
            Self::AttemptsExhausted { attempts, last } => {
                write!(f, "gave up after {attempts} failed attempts: {last}")
            }
            Self::SessionLost(lost) => lost.fmt(f),
            Self::SessionsNotOffered => f.write_str(
                "the server does not offer resumable sessions (subprotocol tether.resume.1)",
            ),
            Self::Session(e) => write!(f, "resume protocol error: {e}"),
            Self::Other(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) | Self::Tls(e) => Some(e),
            Self::Proxy(e) => Some(e),
            Self::Protocol(e) => Some(e),
            Self::AttemptsExhausted { last, .. } => Some(last.as_ref()),
            Self::SessionLost(e) => Some(e.as_ref()),
            Self::Session(e) => Some(e),
            Self::Other(e) => Some(e.as_ref()),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<ProtocolError> for Error {
    fn from(e: ProtocolError) -> Self {
        Self::Protocol(e)
    }
}

impl From<tether_proto::handshake::HandshakeError> for Error {
    fn from(e: tether_proto::handshake::HandshakeError) -> Self {
        use tether_proto::handshake::HandshakeError as H;
        match e {
            H::Status(r) => Self::Status(Box::new(r)),
            H::InvalidResponse { reason, response } => Self::InvalidResponse { reason, response },
            H::Eof => Self::Eof,
            #[allow(unreachable_patterns)]
            other => Self::InvalidResponse {
                reason: other.to_string(),
                response: None,
            },
        }
    }
}
