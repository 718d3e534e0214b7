//! tether: a WebSocket client and server for tokio that stays connected.
//!
//! * [`connect`] opens one connection and reports failure as a typed [`Error`].
//! * [`Server`] accepts connections (see [`serve`]).
//! * Behind hyper or axum, the modules `upgrade` (feature `hyper`) and `axum` (feature
//!   `axum`) turn a request into a [`WebSocket`].
//! * The protocol itself lives in the sans-I/O crate [`tether_proto`].
#![forbid(unsafe_code)]

#[cfg(feature = "axum")]
pub mod axum;
mod client;
mod config;
mod error;
mod happy;
mod proxy;
pub mod reconnect;
#[cfg(feature = "redis")]
pub mod redis;
mod server;
pub mod session;
mod stream;
pub mod tls;
#[cfg(unix)]
mod unix;
#[cfg(feature = "hyper")]
pub mod upgrade;
mod websocket;

pub use client::{connect, ClientBuilder, IntoClientRequest, USER_AGENT};
pub use config::Config;
pub use error::{Error, ErrorKind, Phase, ProxyError, RedirectError, Response, Result};
pub use reconnect::{Backoff, Decision, Policy, Reconnect, Reconnecting};
pub use server::{
    accept, credentials_match, serve, HttpRequest, HttpResponse, Server, ServerConfig,
    ShutdownHandle,
};
pub use stream::{MaybeTlsStream, PeerAddr};
pub use tether_proto::handshake::{Headers, Request};
pub use tether_proto::{
    self as proto, close_code, Bytes, CloseFrame, DeflateConfig, PeerClose, PreparedMessage,
    ProtocolError, Utf8Bytes,
};
pub use tls::TlsConfig;
pub use websocket::{Message, WebSocket, WsReceiver, WsSender};
