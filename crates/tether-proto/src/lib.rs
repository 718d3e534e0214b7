//! Sans-I/O WebSocket protocol core for tether (RFC 6455, RFC 7692).
//!
//! Nothing in this crate performs I/O or reads a clock: bytes and the current time are passed
//! in, events and bytes to write come out. Drivers (such as the `tether` crate for tokio) own
//! the sockets and timers.
#![forbid(unsafe_code)]

pub mod handshake;
