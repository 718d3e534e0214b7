//! Sans-I/O WebSocket protocol core for tether (RFC 6455, RFC 7692).
//!
//! Nothing in this crate performs I/O or reads a clock: bytes and the current time are passed
//! in, events and bytes to write come out. Drivers (such as the `tether` crate for tokio) own
//! the sockets and timers.
//!
//! * [`handshake`]: the opening handshake, both roles.
//! * [`Connection`]: frames, messages, limits, keepalive and the closing handshake.
// `unsafe` is allowed in the `utf8` module only, where a comment justifies each use.
#![deny(unsafe_code)]

mod connection;
pub mod deflate;
mod error;
pub mod frame;
pub mod handshake;
pub mod http;
#[cfg(feature = "http")]
mod http_types;
pub mod mask;
pub mod session;
mod utf8;

pub use connection::{
    CloseFrame, Config, Connection, Event, PeerClose, PreparedMessage, Role, State,
};
pub use deflate::{DeflateConfig, DeflateParams};
pub use error::{ProtocolError, SendError};
pub use frame::{close_code, OpCode};
pub use utf8::Utf8Bytes;

/// The incremental UTF-8 check that text messages go through, exposed only so that the fuzz
/// targets in `fuzz/` can compare it with the standard library. Not part of the API: hidden
/// from the documentation and free to change in any release.
#[doc(hidden)]
pub mod fuzz_internals {
    pub use crate::utf8::{into_text, valid_prefix};
}

/// The shared byte buffer that message payloads are made of (re-exported from `bytes`).
pub use bytes::{self, Bytes};
