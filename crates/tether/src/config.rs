//! Settings of an open connection, shared by both roles.

use std::time::Duration;

use tether_proto::DeflateConfig;

/// Limits, timers and buffer sizes of a connection. Every setting has a documented default;
/// change them with the chained setters.
///
/// ```
/// use std::time::Duration;
/// let config = tether::Config::default()
///     .max_message_size(1 << 20)
///     .ping_interval(Some(Duration::from_secs(10)));
/// # let _ = config;
/// ```
#[derive(Clone, Debug)]
pub struct Config {
    /// Largest message accepted, after reassembly and decompression; larger messages close the
    /// connection with 1009. Default: 64 MiB.
    pub max_message_size: usize,
    /// Largest frame accepted; larger frames close with 1009. Default: 16 MiB.
    pub max_frame_size: usize,
    /// Most frames one message may be split into; more close with 1009. Default: 131,072.
    pub max_fragments: usize,
    /// Keepalive ping period; `None` disables keepalive. Default: 20 s.
    pub ping_interval: Option<Duration>,
    /// A keepalive ping unanswered this long closes the connection with 1011 and `recv`
    /// returns a keepalive error. `None`: never. Default: 20 s.
    pub ping_timeout: Option<Duration>,
    /// Longest wait for the peer during the closing handshake. Default: 10 s.
    pub close_timeout: Duration,
    /// `send` waits while more than this many bytes are queued… Default: 64 KiB.
    pub write_buffer_high: usize,
    /// …until no more than this many are. Default: 16 KiB.
    pub write_buffer_low: usize,
    /// permessage-deflate: a client offers it, a server accepts it, with these settings;
    /// `None` turns compression off. Default: on, with [`DeflateConfig::default`]: no
    /// context takeover either way, so an idle connection holds no compression state
    /// (measured: 4.4 KB of heap per server connection after traffic, against 3.7 KB with
    /// compression off). [`DeflateConfig::best_compression`] compresses small, similar
    /// messages better for about 430 KB per connection.
    pub compression: Option<DeflateConfig>,
}

impl Default for Config {
    fn default() -> Self {
        let p = tether_proto::Config::default();
        Self {
            max_message_size: p.max_message_size,
            max_frame_size: p.max_frame_size,
            max_fragments: p.max_fragments,
            ping_interval: p.ping_interval,
            ping_timeout: p.ping_timeout,
            close_timeout: p.close_timeout,
            write_buffer_high: 64 << 10,
            write_buffer_low: 16 << 10,
            compression: Some(DeflateConfig::default()),
        }
    }
}

impl Config {
    /// Sets [`Config::max_message_size`].
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }
    /// Sets [`Config::max_frame_size`].
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame_size = bytes;
        self
    }
    /// Sets [`Config::max_fragments`].
    pub fn max_fragments(mut self, count: usize) -> Self {
        self.max_fragments = count;
        self
    }
    /// Sets [`Config::ping_interval`].
    pub fn ping_interval(mut self, interval: Option<Duration>) -> Self {
        self.ping_interval = interval;
        self
    }
    /// Sets [`Config::ping_timeout`].
    pub fn ping_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.ping_timeout = timeout;
        self
    }
    /// Sets [`Config::close_timeout`].
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }
    /// Sets the write buffer's high and low water marks (see [`Config::write_buffer_high`]).
    pub fn write_buffer(mut self, high: usize, low: usize) -> Self {
        self.write_buffer_high = high;
        self.write_buffer_low = low.min(high);
        self
    }

    /// Sets [`Config::compression`]; `None` turns permessage-deflate off.
    pub fn compression(mut self, compression: Option<DeflateConfig>) -> Self {
        self.compression = compression;
        self
    }

    pub(crate) fn proto_config(&self) -> tether_proto::Config {
        tether_proto::Config {
            max_message_size: self.max_message_size,
            max_frame_size: self.max_frame_size,
            max_fragments: self.max_fragments,
            ping_interval: self.ping_interval,
            ping_timeout: self.ping_timeout,
            close_timeout: self.close_timeout,
        }
    }
}
