//! An axum extractor that upgrades a request to a tether [`WebSocket`](crate::WebSocket).
//! Feature `axum`.
//!
//! [`WebSocketUpgrade`] is extracted from the request (it refuses invalid upgrade requests
//! with tether's own answers: see [`WebSocketUpgradeRejection`]); the handler sets the
//! server's settings on it and returns [`WebSocketUpgrade::on_upgrade`], which answers 101
//! and runs the callback in a task of its own with the open connection. It is built on
//! [`upgrade`](crate::upgrade), so everything said there holds here: limits, keepalive,
//! compression, subprotocols and hooks of the [`ServerConfig`] apply as on tether's own
//! server. It depends on `axum-core` only.
//!
//! ```no_run
//! use axum::routing::get;
//! use axum::Router;
//! use tether::axum::WebSocketUpgrade;
//! use tether::upgrade::UpgradedWebSocket;
//! use tether::{Config, ServerConfig};
//!
//! async fn chat(ws: WebSocketUpgrade) -> axum::response::Response {
//!     let config = ServerConfig::default().config(Config::default().max_message_size(1 << 20));
//!     ws.config(config)
//!         .protocols(["chat.v2", "chat.v1"])
//!         .on_upgrade(|mut ws: UpgradedWebSocket| async move {
//!             while let Some(Ok(msg)) = ws.recv().await {
//!                 if ws.send(msg).await.is_err() {
//!                     break;
//!                 }
//!             }
//!         })
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let app = Router::new().route("/chat", get(chat));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9001").await?;
//! axum::serve(listener, app).await
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use axum_core::extract::FromRequestParts;
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;
use http::StatusCode;
use hyper::upgrade::OnUpgrade;
use tether_proto::handshake::{self, Request};

use crate::server::ServerConfig;
use crate::upgrade::{self as up, Checked, Invalid, UpgradedWebSocket};

/// Extractor of a WebSocket upgrade request: extraction succeeds for a valid opening
/// handshake (checked as tether's server checks it) that the connection can be upgraded
/// for, and fails with a [`WebSocketUpgradeRejection`] otherwise.
///
/// Next: optionally set the settings ([`config`](Self::config), default
/// [`ServerConfig::default`]; [`protocols`](Self::protocols);
/// [`max_message_size`](Self::max_message_size)), then return
/// [`on_upgrade`](Self::on_upgrade) from the handler.
pub struct WebSocketUpgrade {
    checked: Checked,
    on_upgrade: OnUpgrade,
    config: Arc<ServerConfig>,
    /// Replaces the config's subprotocols when set.
    protocols: Option<Vec<String>>,
}

impl fmt::Debug for WebSocketUpgrade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebSocketUpgrade")
            .field("path", &self.checked.request.path)
            .field("config", &self.config)
            .field("protocols", &self.protocols)
            .finish_non_exhaustive()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for WebSocketUpgrade {
    type Rejection = WebSocketUpgradeRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let checked = up::check(
            &parts.method,
            &parts.uri,
            parts.version,
            &parts.headers,
            &parts.extensions,
        )
        .map_err(|e| WebSocketUpgradeRejection(Refused::Invalid(e)))?;
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(WebSocketUpgradeRejection(Refused::NotUpgradable))?;
        Ok(Self {
            checked,
            on_upgrade,
            config: Arc::default(),
            protocols: None,
        })
    }
}

impl WebSocketUpgrade {
    /// The server's settings (a [`ServerConfig`], or an `Arc` of one shared by the requests):
    /// connection limits, keepalive, compression, subprotocols and hooks (which answer in
    /// [`on_upgrade`](Self::on_upgrade) instead of upgrading when they answer). Its TLS
    /// settings, open timeout and head limits are not used here. Default:
    /// [`ServerConfig::default`].
    pub fn config(mut self, config: impl Into<Arc<ServerConfig>>) -> Self {
        self.config = config.into();
        self
    }

    /// The subprotocols this route speaks, in preference order, in place of the config's:
    /// the first one the client offered is selected. Default: the config's
    /// ([`ServerConfig::subprotocol`]), none by default.
    pub fn protocols<I>(mut self, protocols: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.protocols = Some(protocols.into_iter().map(Into::into).collect());
        self
    }

    /// Sets the largest message accepted, after decompression, in the config's connection
    /// settings ([`Config::max_message_size`](crate::Config::max_message_size)); a larger
    /// one closes the connection with 1009. Default: 1 MiB.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        Arc::make_mut(&mut self.config)
            .connection_mut()
            .core
            .max_message_size = bytes;
        self
    }

    /// The validated handshake request: path, headers, offered subprotocols and extensions.
    pub fn request(&self) -> &Request {
        &self.checked.request
    }

    /// The subprotocol [`on_upgrade`](Self::on_upgrade) will agree on with the current
    /// settings: the first of the server's that the client offered, if any.
    pub fn selected_protocol(&self) -> Option<String> {
        handshake::negotiate(&self.checked.request, self.subprotocols(), None).subprotocol
    }

    fn subprotocols(&self) -> &[String] {
        self.protocols
            .as_deref()
            .unwrap_or_else(|| self.config.subprotocols())
    }

    /// Accepts the upgrade: returns the 101 answer (200 over HTTP/2) for the handler to
    /// return, and once the server has sent it and handed the connection over, runs
    /// `callback` with the open connection in a task of its own (`tokio::spawn`). When the
    /// hand-over fails (the client went away first), `callback` is not called and the failure
    /// is logged with `tracing` (at debug level).
    ///
    /// When a hook of the config answers the request, that answer is returned instead and
    /// nothing is spawned.
    pub fn on_upgrade<F, Fut>(self, callback: F) -> Response
    where
        F: FnOnce(UpgradedWebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let subprotocols = self.subprotocols().to_vec();
        let accepted = up::accept(
            self.checked,
            Some(self.on_upgrade),
            &self.config,
            &subprotocols,
        );
        match accepted {
            Ok((response, pending)) => {
                let path = pending.request().path.clone();
                tokio::spawn(async move {
                    match pending.await {
                        Ok(ws) => callback(ws).await,
                        Err(e) => tracing::debug!(%path, error = %e, "WebSocket upgrade failed"),
                    }
                });
                response
            }
            Err(refusal) => refusal,
        }
    }
}

/// Why a request could not be extracted as a [`WebSocketUpgrade`]; answers with what tether's
/// own server answers.
///
/// - 400, 405 (with `Allow: GET`) or 426 (with `Upgrade: websocket`, `Connection: upgrade` and
///   `Sec-WebSocket-Version: 13`): not a valid opening handshake, as
///   [`validate_request`](tether_proto::handshake::validate_request) documents (a plain
///   `GET` on a WebSocket route gets 426);
/// - 500: a valid handshake on a connection that cannot be upgraded (the request has no
///   hyper `OnUpgrade`: another extractor took it, or it did not come from a hyper server).
///
/// The body is the reason and a newline, as `text/plain; charset=utf-8`.
#[derive(Debug)]
pub struct WebSocketUpgradeRejection(Refused);

#[derive(Debug)]
enum Refused {
    Invalid(Invalid),
    NotUpgradable,
}

impl WebSocketUpgradeRejection {
    /// The HTTP status answered.
    pub fn status(&self) -> StatusCode {
        match &self.0 {
            Refused::Invalid(e) => {
                StatusCode::from_u16(e.error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
            Refused::NotUpgradable => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The reason, safe to show to the client (it never echoes request data).
    pub fn reason(&self) -> &str {
        match &self.0 {
            Refused::Invalid(e) => &e.error.reason,
            Refused::NotUpgradable => up::NOT_UPGRADABLE,
        }
    }
}

impl fmt::Display for WebSocketUpgradeRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "WebSocket upgrade refused (HTTP {}): {}",
            self.status().as_u16(),
            self.reason()
        )
    }
}

impl std::error::Error for WebSocketUpgradeRejection {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.0 {
            Refused::Invalid(e) => Some(&e.error),
            Refused::NotUpgradable => None,
        }
    }
}

impl IntoResponse for WebSocketUpgradeRejection {
    fn into_response(self) -> Response {
        match &self.0 {
            Refused::Invalid(e) => up::refusal(e, None),
            Refused::NotUpgradable => up::not_upgradable(),
        }
    }
}
