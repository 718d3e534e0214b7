//! Opening handshake (RFC 6455 section 4), both roles.
//!
//! Everything here is sans-I/O: the caller reads bytes from its transport and feeds them in,
//! and writes the bytes this module hands back. The roles live in [`client`] and [`server`];
//! the HTTP heads, bodies and plain responses they are built on live in [`crate::http`]. Every
//! public item of the three is re-exported here, so `use tether_proto::handshake::*` is enough.
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
//!    Behind an HTTP framework that already parsed the head (hyper, axum, actix, ...), call
//!    [`validate_request`] with its method, target, version and headers instead.
//! 2. On `Ok(Some(request))` (or `Ok(request)`), decide (authentication, routing, ...);
//!    [`negotiate`] picks the subprotocol and permessage-deflate parameters. Then write either
//!    [`accept_response`] or an [`http_response`] of your choice, or, in a framework, answer
//!    101 with [`Negotiated::response_headers`]. The bytes of the last chunk after
//!    [`Request::consumed`] already belong to the WebSocket connection.
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
//! [`ClientHandshake::new`], [`accept_response`], [`Negotiated::response_headers`] and
//! [`http_response`] remove those characters from values and drop headers whose names are not
//! valid HTTP tokens.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

pub mod client;
pub mod server;

pub use crate::http::{
    http_response, reason_phrase, value_contains_token, HeadLimits, Header, Headers,
};
pub use client::{
    Accepted, ClientHandshake, ClientRequest, ClientRequestError, HandshakeError, Response,
};
pub use server::{
    accept_response, negotiate, validate_request, Negotiated, Request, RequestError, RequestHead,
    ServerHandshake,
};

/// The GUID appended to the key before hashing (RFC 6455 section 1.3).
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Reason used when a handshake object is driven after it already finished.
const ALREADY_FINISHED: &str = "handshake already finished";

/// Computes the `Sec-WebSocket-Accept` value for a `Sec-WebSocket-Key`:
/// base64(SHA-1(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")).
///
/// The key is used exactly as given (no trimming). Servers send the result in the 101
/// response ([`accept_response`] and [`negotiate`] do it for you); clients compare it with the
/// answer ([`ClientHandshake`] does it for you).
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

/// Requests and answers shared by the unit tests of both roles.
#[cfg(test)]
mod fixtures {
    use super::ClientRequest;

    /// The sample key of RFC 6455 section 1.3 and its accept value.
    pub(super) const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    pub(super) const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    pub(super) fn basic_request() -> ClientRequest {
        ClientRequest {
            host: "example.com".into(),
            resource: "/chat".into(),
            subprotocols: vec!["chat".into(), "superchat".into()],
            extensions: Some("permessage-deflate".into()),
            ..ClientRequest::default()
        }
    }

    pub(super) fn ok_101(extra: &str) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {ACCEPT}\r\n{extra}\r\n"
        )
    }

    pub(super) fn valid_request() -> String {
        format!(
            "GET /chat?room=1 HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
             Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n\
             Origin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\n\
             Sec-WebSocket-Protocol: v2\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\
             Sec-WebSocket-Extensions: x-foo\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{basic_request, ok_101, valid_request, ACCEPT, KEY};
    use super::*;

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
}
