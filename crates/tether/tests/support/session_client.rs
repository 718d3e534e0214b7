//! A resumable-session client for the chaos tests: it reconnects quickly (20–200 ms
//! backoff, a spread of up to 20 ms after a drop, no minimum uptime) and counts its resumes
//! and its lost sessions.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tether::reconnect::Backoff;
use tether::session::{SessionEvent, SessionHandle};
use tether::{ClientBuilder, Config, Policy};

/// A client session and its counts.
pub(crate) struct Client {
    pub(crate) session: SessionHandle,
    pub(crate) resumes: Arc<AtomicU64>,
    pub(crate) lost: Arc<AtomicU64>,
}

impl Client {
    /// Starts a session through `addr` with this connection configuration and resume
    /// handshake timeout.
    pub(crate) fn start(addr: SocketAddr, config: Config, handshake_timeout: Duration) -> Self {
        let resumes = Arc::new(AtomicU64::new(0));
        let lost = Arc::new(AtomicU64::new(0));
        let (r, l) = (Arc::clone(&resumes), Arc::clone(&lost));
        let policy = Policy::default()
            .backoff(Backoff {
                initial: Duration::from_millis(20),
                min: Duration::from_millis(20),
                factor: 1.5,
                max: Duration::from_millis(200),
                ..Backoff::default()
            })
            .reconnect_delay(Duration::from_millis(20))
            .min_uptime(Duration::ZERO);
        let session = ClientBuilder::new(format!("ws://{addr}/"))
            .config(config)
            .open_timeout(Duration::from_secs(2))
            .reconnecting()
            .policy(policy)
            .session()
            .handshake_timeout(handshake_timeout)
            .on_event(move |e| match e {
                SessionEvent::Resumed { .. } => {
                    r.fetch_add(1, Ordering::Relaxed);
                }
                SessionEvent::Lost(_) => {
                    l.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            })
            .start();
        Self {
            session,
            resumes,
            lost,
        }
    }
}
