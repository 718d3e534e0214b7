//! permessage-deflate (RFC 7692): negotiation in both roles and the per-connection codec.
//!
//! Compression runs through zlib-rs (a Rust port of zlib), whose safe API lets the window size
//! and memory level be chosen, so the footprint per connection stays small.

use std::cell::RefCell;
use std::fmt;

use zlib_rs::{DeflateFlush, InflateFlush, Status};

use crate::connection::Role;
use crate::error::ProtocolError;

/// The extension's name in `Sec-WebSocket-Extensions`.
pub const EXTENSION_NAME: &str = "permessage-deflate";

/// The four bytes a sync flush ends with, removed from each message (RFC 7692 section 7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

/// What to offer (client) or accept (server), and how to compress.
///
/// The default is built for many connections: no context takeover in either direction, so
/// no compression state survives a message and a connection borrows zlib state from a
/// per-thread pool only while it compresses or inflates one. An idle connection holds no
/// zlib memory. Small, similar messages compress less well than with context takeover;
/// [`DeflateConfig::best_compression`] keeps a compressor and a decompressor per connection
/// (with zlib-rs about 165 KiB and 48 KiB) for the best ratio.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeflateConfig {
    /// Client: ask the server to compress each message independently. Server: always do so
    /// (and say so). Either way the state of the server's direction is pooled between
    /// messages. Default: true.
    pub server_no_context_takeover: bool,
    /// Client: compress each message independently (and say so in the offer). Server: ask
    /// the client to. Either way the state of the client's direction is pooled between
    /// messages. Default: true.
    pub client_no_context_takeover: bool,
    /// Largest window, as a power of two (8–15), the server may compress with. A client
    /// offers it when below 15; a server never uses more. Default: 15.
    pub server_max_window_bits: u8,
    /// Largest window the client may compress with. A client uses no more; a server asks for
    /// no more when the client allows it. Default: 15.
    pub client_max_window_bits: u8,
    /// zlib compression level, 0 (none) to 9 (best). Default: 6.
    pub level: u8,
    /// zlib memory level, 1 to 9 (zlib-rs sizes its hash table the same for every level; the
    /// level sizes the symbol buffer). Default: 8.
    pub mem_level: u8,
    /// Messages shorter than this are sent uncompressed. Default: 0 (compress everything).
    pub min_size: usize,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        Self {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
            level: 6,
            mem_level: 8,
            min_size: 0,
        }
    }
}

impl DeflateConfig {
    /// No context takeover in either direction (the default, named): idle connections hold
    /// no compression state.
    pub fn low_memory() -> Self {
        Self {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            ..Self::default()
        }
    }

    /// Context takeover in both directions: the best compression of small, similar messages,
    /// at the cost of keeping a compressor and a decompressor per connection.
    pub fn best_compression() -> Self {
        Self {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            ..Self::default()
        }
    }

    /// The client's `Sec-WebSocket-Extensions` offer for this configuration.
    pub fn client_offer(&self) -> String {
        let mut s = String::from(EXTENSION_NAME);
        if self.server_no_context_takeover {
            s.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            s.push_str("; client_no_context_takeover");
        }
        if self.server_max_window_bits < 15 {
            s.push_str(&format!(
                "; server_max_window_bits={}",
                self.server_max_window_bits.max(8)
            ));
        }
        if self.client_max_window_bits < 15 {
            s.push_str(&format!(
                "; client_max_window_bits={}",
                self.client_max_window_bits.max(8)
            ));
        } else {
            s.push_str("; client_max_window_bits");
        }
        s
    }

    /// Checks the server's answer to [`client_offer`](Self::client_offer) and returns the
    /// agreed parameters. An error means the handshake must fail.
    pub fn client_accept(&self, response: &str) -> Result<DeflateParams, NegotiationError> {
        let mut offers = parse_offers(response)?;
        if offers.len() != 1 {
            return Err(NegotiationError::new("more than one extension accepted"));
        }
        let (name, params) = offers.remove(0);
        if name != EXTENSION_NAME {
            return Err(NegotiationError::new(format!(
                "unsupported extension {name}"
            )));
        }
        let p = Params::parse(&params)?;
        if let Some(Some(bits)) = p.server_max_window_bits {
            if self.server_max_window_bits < 15 && bits > self.server_max_window_bits {
                return Err(NegotiationError::new(
                    "server_max_window_bits above the offer",
                ));
            }
        } else if p.server_max_window_bits.is_some() {
            return Err(NegotiationError::new(
                "server_max_window_bits needs a value",
            ));
        }
        if self.server_no_context_takeover && !p.server_no_context_takeover {
            return Err(NegotiationError::new(
                "server ignored server_no_context_takeover",
            ));
        }
        let client_bits = match p.client_max_window_bits {
            None => self.client_max_window_bits,
            Some(Some(bits)) => bits.min(self.client_max_window_bits),
            Some(None) => {
                return Err(NegotiationError::new(
                    "client_max_window_bits needs a value",
                ))
            }
        };
        Ok(DeflateParams {
            server_no_context_takeover: p.server_no_context_takeover,
            client_no_context_takeover: p.client_no_context_takeover
                || self.client_no_context_takeover,
            server_max_window_bits: p.server_max_window_bits.flatten().unwrap_or(15),
            client_max_window_bits: client_bits,
        })
    }

    /// Picks the first acceptable permessage-deflate offer among a client's
    /// `Sec-WebSocket-Extensions` values. Returns the response header value and the agreed
    /// parameters, or `None` to decline (no offer, or none acceptable).
    pub fn server_accept(&self, offers: &str) -> Option<(String, DeflateParams)> {
        let offers = parse_offers(offers).ok()?;
        offers
            .iter()
            .filter(|(name, _)| name == EXTENSION_NAME)
            .find_map(|(_, params)| self.server_accept_one(params))
    }

    fn server_accept_one(
        &self,
        params: &[(String, Option<String>)],
    ) -> Option<(String, DeflateParams)> {
        let p = Params::parse(params).ok()?;
        let server_bits = match p.server_max_window_bits {
            None => self.server_max_window_bits,
            Some(Some(bits)) => bits.min(self.server_max_window_bits),
            Some(None) => return None,
        };
        // The client's window can only be limited if it said it can be.
        let client_bits = match p.client_max_window_bits {
            None => None,
            Some(None) => Some(self.client_max_window_bits),
            Some(Some(bits)) => Some(bits.min(self.client_max_window_bits)),
        };
        let agreed = DeflateParams {
            server_no_context_takeover: p.server_no_context_takeover
                || self.server_no_context_takeover,
            client_no_context_takeover: p.client_no_context_takeover
                || self.client_no_context_takeover,
            server_max_window_bits: server_bits,
            client_max_window_bits: client_bits.unwrap_or(15),
        };
        let mut response = String::from(EXTENSION_NAME);
        if agreed.server_no_context_takeover {
            response.push_str("; server_no_context_takeover");
        }
        if agreed.client_no_context_takeover {
            response.push_str("; client_no_context_takeover");
        }
        if server_bits < 15 || p.server_max_window_bits.is_some() {
            response.push_str(&format!("; server_max_window_bits={server_bits}"));
        }
        if let Some(bits) = client_bits {
            if bits < 15 || matches!(p.client_max_window_bits, Some(Some(_))) {
                response.push_str(&format!("; client_max_window_bits={bits}"));
            }
        }
        Some((response, agreed))
    }
}

/// The parameters both ends agreed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeflateParams {
    /// The server compresses each message independently.
    pub server_no_context_takeover: bool,
    /// The client compresses each message independently.
    pub client_no_context_takeover: bool,
    /// The server compresses with at most 2^N bytes of window.
    pub server_max_window_bits: u8,
    /// The client compresses with at most 2^N bytes of window.
    pub client_max_window_bits: u8,
}

/// A `Sec-WebSocket-Extensions` value that cannot be accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NegotiationError {
    /// What was wrong.
    pub reason: String,
}

impl NegotiationError {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

impl fmt::Display for NegotiationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid permessage-deflate negotiation: {}", self.reason)
    }
}

impl std::error::Error for NegotiationError {}

type Offer = (String, Vec<(String, Option<String>)>);

/// Splits a `Sec-WebSocket-Extensions` value into extensions and their parameters.
fn parse_offers(value: &str) -> Result<Vec<Offer>, NegotiationError> {
    let mut out = Vec::new();
    for ext in value.split(',') {
        let mut parts = ext.split(';').map(str::trim);
        let name = parts.next().unwrap_or("");
        if name.is_empty() {
            return Err(NegotiationError::new("empty extension"));
        }
        let mut params = Vec::new();
        for part in parts {
            if part.is_empty() {
                return Err(NegotiationError::new("empty parameter"));
            }
            match part.split_once('=') {
                None => params.push((part.to_ascii_lowercase(), None)),
                Some((k, v)) => {
                    let v = v.trim();
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .unwrap_or(v);
                    params.push((k.trim().to_ascii_lowercase(), Some(v.to_owned())));
                }
            }
        }
        out.push((name.to_ascii_lowercase(), params));
    }
    Ok(out)
}

/// The parameters of one permessage-deflate offer or response, validated.
#[derive(Default)]
struct Params {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    /// `Some(None)`: present without a value.
    server_max_window_bits: Option<Option<u8>>,
    client_max_window_bits: Option<Option<u8>>,
}

impl Params {
    fn parse(params: &[(String, Option<String>)]) -> Result<Self, NegotiationError> {
        let mut p = Self::default();
        let mut seen: Vec<&str> = Vec::new();
        for (key, value) in params {
            if seen.contains(&key.as_str()) {
                return Err(NegotiationError::new(format!("duplicate parameter {key}")));
            }
            seen.push(key);
            let bits = |v: &Option<String>| -> Result<Option<u8>, NegotiationError> {
                match v {
                    None => Ok(None),
                    Some(v) => match v.parse::<u8>() {
                        Ok(b) if (8..=15).contains(&b) && !v.starts_with('0') => Ok(Some(b)),
                        _ => Err(NegotiationError::new(format!("invalid {key}={v}"))),
                    },
                }
            };
            match key.as_str() {
                "server_no_context_takeover" | "client_no_context_takeover" => {
                    if value.is_some() {
                        return Err(NegotiationError::new(format!("{key} takes no value")));
                    }
                    if key.starts_with("server") {
                        p.server_no_context_takeover = true;
                    } else {
                        p.client_no_context_takeover = true;
                    }
                }
                "server_max_window_bits" => p.server_max_window_bits = Some(bits(value)?),
                "client_max_window_bits" => p.client_max_window_bits = Some(bits(value)?),
                other => return Err(NegotiationError::new(format!("unknown parameter {other}"))),
            }
        }
        Ok(p)
    }
}

/// Compressor settings that decide whether a pooled compressor can be reused.
type DeflateKey = (u8, u8, u8);

/// How many idle compressors (and decompressors) each thread keeps for reuse.
const POOL_SIZE: usize = 4;

thread_local! {
    /// Compressors and decompressors of directions without context takeover, between
    /// messages. Such a direction keeps no state from one message to the next, so its zlib
    /// state need not belong to a connection: it is taken from here for a message and
    /// returned, reset, afterwards. An idle connection then holds no zlib memory at all (zlib-rs
    /// keeps a 128 KiB hash table per compressor and a 32 KiB window per decompressor,
    /// whatever the window bits and memory level).
    static DEFLATE_POOL: RefCell<Vec<(DeflateKey, Box<zlib_rs::Deflate>)>> =
        const { RefCell::new(Vec::new()) };
    // Boxed as connections hold them, so moving one in or out of the pool copies a pointer.
    #[allow(clippy::vec_box)]
    static INFLATE_POOL: RefCell<Vec<Box<zlib_rs::Inflate>>> = const { RefCell::new(Vec::new()) };
}

fn new_deflate(key: DeflateKey) -> Box<zlib_rs::Deflate> {
    let (window, level, mem_level) = key;
    // zlib cannot produce a raw stream with a 256-byte window; it would silently use 512.
    // Stored blocks (level 0) have no back-references, so they honour any window.
    let (bits, level) = if window < 9 { (9, 0) } else { (window, level) };
    Box::new(zlib_rs::Deflate::new_with_config(zlib_rs::DeflateConfig {
        level: i32::from(level),
        method: zlib_rs::Method::Deflated,
        window_bits: -i32::from(bits),
        mem_level: i32::from(mem_level),
        strategy: zlib_rs::Strategy::Default,
    }))
}

fn take_pooled_deflate(key: DeflateKey) -> Box<zlib_rs::Deflate> {
    let pooled = DEFLATE_POOL.with(|pool| {
        let mut pool = pool.try_borrow_mut().ok()?;
        let i = pool.iter().position(|(k, _)| *k == key)?;
        Some(pool.swap_remove(i).1)
    });
    pooled.unwrap_or_else(|| new_deflate(key))
}

fn return_pooled_deflate(key: DeflateKey, mut compressor: Box<zlib_rs::Deflate>) {
    compressor.reset();
    DEFLATE_POOL.with(|pool| {
        if let Ok(mut pool) = pool.try_borrow_mut() {
            if pool.len() < POOL_SIZE {
                pool.push((key, compressor));
            }
        }
    });
}

fn new_inflate() -> Box<zlib_rs::Inflate> {
    // The largest window inflates whatever window the peer used.
    Box::new(zlib_rs::Inflate::new(false, 15))
}

fn take_pooled_inflate() -> Box<zlib_rs::Inflate> {
    let pooled = INFLATE_POOL.with(|pool| pool.try_borrow_mut().ok()?.pop());
    pooled.unwrap_or_else(new_inflate)
}

fn return_pooled_inflate(mut decompressor: Box<zlib_rs::Inflate>) {
    decompressor.reset(false);
    INFLATE_POOL.with(|pool| {
        if let Ok(mut pool) = pool.try_borrow_mut() {
            if pool.len() < POOL_SIZE {
                pool.push(decompressor);
            }
        }
    });
}

/// The compressor and decompressor of one connection. A direction with context takeover
/// allocates its state when first needed and keeps it; one without borrows state from a
/// per-thread pool for each message.
pub(crate) struct Codec {
    params: DeflateParams,
    role: Role,
    level: u8,
    mem_level: u8,
    pub(crate) min_size: usize,
    compressor: Option<Box<zlib_rs::Deflate>>,
    decompressor: Option<Box<zlib_rs::Inflate>>,
}

impl fmt::Debug for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Codec")
            .field("params", &self.params)
            .field("compressor", &self.compressor.is_some())
            .field("decompressor", &self.decompressor.is_some())
            .finish_non_exhaustive()
    }
}

impl Codec {
    pub(crate) fn new(role: Role, params: DeflateParams, config: &DeflateConfig) -> Self {
        Self {
            params,
            role,
            level: config.level.min(9),
            mem_level: config.mem_level.clamp(1, 9),
            min_size: config.min_size,
            compressor: None,
            decompressor: None,
        }
    }

    fn own_window(&self) -> u8 {
        match self.role {
            Role::Client => self.params.client_max_window_bits,
            Role::Server => self.params.server_max_window_bits,
        }
    }

    /// What identifies this connection's compressed output when each message is compressed
    /// on its own (no context takeover in our direction), so that connections with the same
    /// key produce the same bytes; `None` with context takeover.
    pub(crate) fn shared_key(&self) -> Option<crate::connection::CompressKey> {
        self.own_no_context()
            .then_some((self.own_window(), self.level, self.mem_level))
    }

    fn own_no_context(&self) -> bool {
        match self.role {
            Role::Client => self.params.client_no_context_takeover,
            Role::Server => self.params.server_no_context_takeover,
        }
    }

    fn peer_no_context(&self) -> bool {
        match self.role {
            Role::Client => self.params.server_no_context_takeover,
            Role::Server => self.params.client_no_context_takeover,
        }
    }

    /// Appends the compressed form of `data` (without the sync-flush tail) to `out`.
    /// Returns false if compression failed, in which case `out` is unchanged and the caller
    /// sends the message uncompressed.
    pub(crate) fn compress(&mut self, data: &[u8], out: &mut Vec<u8>) -> bool {
        let key = (self.own_window(), self.level, self.mem_level);
        let pooled = self.own_no_context();
        let mut compressor = match self.compressor.take() {
            Some(c) => c,
            None if pooled => take_pooled_deflate(key),
            None => new_deflate(key),
        };
        let start = out.len();
        let mut input = data;
        let ok = loop {
            let chunk = input.len() + input.len() / 8 + 64;
            let old = out.len();
            out.resize(old + chunk, 0);
            let (in0, out0) = (compressor.total_in(), compressor.total_out());
            let result = compressor.compress(input, &mut out[old..], DeflateFlush::SyncFlush);
            let consumed = (compressor.total_in() - in0) as usize;
            let produced = (compressor.total_out() - out0) as usize;
            out.truncate(old + produced);
            input = input.get(consumed..).unwrap_or(&[]);
            match result {
                Err(_) => break false,
                // A sync flush is complete once the output buffer was not filled.
                Ok(_) if input.is_empty() && produced < chunk => break true,
                Ok(_) => {}
            }
        };
        if !ok {
            // The state may be inconsistent: drop it, and send this message uncompressed.
            out.truncate(start);
            return false;
        }
        if out.len() == start {
            // zlib emits nothing for a sync flush right after another one (an empty message
            // after a message, with context takeover). An empty payload would make the
            // peer read the appended tail as a block header: send an empty stored block
            // (RFC 7692 section 7.2.3.6).
            out.push(0x00);
        } else if out[start..].ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        if pooled {
            return_pooled_deflate(key, compressor);
        } else {
            self.compressor = Some(compressor);
        }
        true
    }

    /// Inflates a piece of a compressed message into `out`, failing once `out` would exceed
    /// `limit` bytes (checked while inflating: a compression bomb is never allocated whole).
    pub(crate) fn decompress(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), ProtocolError> {
        let pooled = self.peer_no_context();
        let d = self.decompressor.get_or_insert_with(|| {
            if pooled {
                take_pooled_inflate()
            } else {
                new_inflate()
            }
        });
        let mut input = input;
        loop {
            let room = (limit + 1).saturating_sub(out.len());
            if room == 0 {
                return Err(ProtocolError::MessageTooLarge { max: limit });
            }
            let chunk = (input.len().saturating_mul(4))
                .clamp(1024, 64 << 10)
                .min(room);
            let old = out.len();
            if old + chunk > out.capacity() {
                // Grow geometrically, but never past the limit: a bomb allocates no more
                // than the limit allows.
                let target = (out.capacity() * 2).max(old + chunk).min(limit + 1);
                out.reserve_exact(target.max(old + chunk) - old);
            }
            out.resize(old + chunk, 0);
            let (in0, out0) = (d.total_in(), d.total_out());
            let result = d.decompress(input, &mut out[old..], InflateFlush::SyncFlush);
            let consumed = (d.total_in() - in0) as usize;
            let produced = (d.total_out() - out0) as usize;
            out.truncate(old + produced);
            input = input.get(consumed..).unwrap_or(&[]);
            if out.len() > limit {
                return Err(ProtocolError::MessageTooLarge { max: limit });
            }
            match result {
                Err(_) => return Err(ProtocolError::Compression),
                Ok(Status::StreamEnd) => {
                    // A final block ends the stream; anything after it is invalid.
                    if !input.is_empty() {
                        return Err(ProtocolError::Compression);
                    }
                    d.reset(false);
                    return Ok(());
                }
                Ok(_) if input.is_empty() && produced < chunk => return Ok(()),
                Ok(_) if consumed == 0 && produced == 0 => return Err(ProtocolError::Compression),
                Ok(_) => {}
            }
        }
    }

    /// Ends a compressed message: feeds the removed tail and, without context takeover,
    /// frees the decompressor.
    pub(crate) fn finish_message(
        &mut self,
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<(), ProtocolError> {
        let result = self.decompress(&TAIL, out, limit);
        if result.is_err() {
            self.decompressor = None;
        } else if self.peer_no_context() {
            if let Some(d) = self.decompressor.take() {
                return_pooled_inflate(d);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(server_nct: bool, client_nct: bool, sb: u8, cb: u8) -> DeflateParams {
        DeflateParams {
            server_no_context_takeover: server_nct,
            client_no_context_takeover: client_nct,
            server_max_window_bits: sb,
            client_max_window_bits: cb,
        }
    }

    #[test]
    fn default_offer_and_acceptance() {
        let c = DeflateConfig::default();
        let offer = c.client_offer();
        assert_eq!(
            offer,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             client_max_window_bits"
        );
        let (response, agreed) = DeflateConfig::default().server_accept(&offer).unwrap();
        assert_eq!(
            response,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        assert_eq!(agreed, params(true, true, 15, 15));
        assert_eq!(c.client_accept(&response).unwrap(), agreed);
    }

    #[test]
    fn browser_offer() {
        // What Chromium sends.
        let (response, agreed) = DeflateConfig::default()
            .server_accept("permessage-deflate; client_max_window_bits")
            .unwrap();
        assert_eq!(
            response,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        assert_eq!(agreed, params(true, true, 15, 15));
        // A server that limits windows, and a client that cannot limit its own.
        let small = DeflateConfig {
            server_max_window_bits: 12,
            client_max_window_bits: 12,
            ..DeflateConfig::best_compression()
        };
        let (response, agreed) = small
            .server_accept("permessage-deflate; client_max_window_bits")
            .unwrap();
        assert_eq!(
            response,
            "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"
        );
        assert_eq!(agreed, params(false, false, 12, 12));
        let (response, agreed) = small.server_accept("permessage-deflate").unwrap();
        assert_eq!(response, "permessage-deflate; server_max_window_bits=12");
        assert_eq!(agreed.client_max_window_bits, 15);
    }

    #[test]
    fn server_honours_offered_parameters_and_skips_bad_offers() {
        let server = DeflateConfig::best_compression();
        let (response, agreed) = server
            .server_accept(
                "permessage-deflate; foo=1, permessage-deflate; server_no_context_takeover; \
                 server_max_window_bits=9; client_max_window_bits=10",
            )
            .unwrap();
        assert_eq!(agreed, params(true, false, 9, 10));
        assert_eq!(
            response,
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=9; \
             client_max_window_bits=10"
        );
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; client_max_window_bits=08",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "x-webkit-deflate-frame",
            "",
        ] {
            assert_eq!(server.server_accept(bad), None, "{bad}");
        }
        // Quoted values are allowed.
        let (_, agreed) = server
            .server_accept("permessage-deflate; client_max_window_bits=\"10\"")
            .unwrap();
        assert_eq!(agreed.client_max_window_bits, 10);
    }

    #[test]
    fn client_rejects_what_it_did_not_ask_for() {
        let c = DeflateConfig {
            server_max_window_bits: 12,
            client_max_window_bits: 12,
            ..DeflateConfig::best_compression()
        };
        assert!(c
            .client_accept("permessage-deflate; server_max_window_bits=13")
            .is_err());
        assert!(c
            .client_accept("permessage-deflate; client_max_window_bits")
            .is_err());
        assert!(c.client_accept("permessage-deflate; bogus").is_err());
        assert!(c
            .client_accept("permessage-deflate, permessage-deflate")
            .is_err());
        assert!(c.client_accept("x-other").is_err());
        let strict = DeflateConfig {
            server_no_context_takeover: true,
            ..DeflateConfig::default()
        };
        assert!(strict.client_accept("permessage-deflate").is_err());
        let ok = c
            .client_accept("permessage-deflate; client_no_context_takeover")
            .unwrap();
        assert_eq!(ok, params(false, true, 15, 12));
    }

    fn round_trip(p: DeflateParams, messages: &[&[u8]]) {
        let config = DeflateConfig::default();
        let mut client = Codec::new(Role::Client, p, &config);
        let mut server = Codec::new(Role::Server, p, &config);
        for m in messages {
            let mut wire = Vec::new();
            assert!(client.compress(m, &mut wire));
            let mut plain = Vec::new();
            server.decompress(&wire, &mut plain, 1 << 20).unwrap();
            server.finish_message(&mut plain, 1 << 20).unwrap();
            assert_eq!(&plain, m);
            let mut wire = Vec::new();
            assert!(server.compress(m, &mut wire));
            let mut plain = Vec::new();
            // Byte at a time: any chunking inflates the same.
            for b in wire.chunks(1) {
                client.decompress(b, &mut plain, 1 << 20).unwrap();
            }
            client.finish_message(&mut plain, 1 << 20).unwrap();
            assert_eq!(&plain, m);
        }
    }

    #[test]
    fn codec_round_trips_with_every_setting() {
        let text = b"Hello, hello, hello! The quick brown fox jumps over the lazy dog.";
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let msgs: [&[u8]; 4] = [b"", text, text, &big];
        for (snct, cnct) in [(false, false), (true, true), (true, false)] {
            for bits in [8, 9, 12, 15] {
                round_trip(params(snct, cnct, bits, bits), &msgs);
            }
        }
    }

    #[test]
    fn empty_message_after_another_keeps_the_stream_in_step() {
        // Regression: the empty message compressed to nothing and corrupted the next one.
        let p = params(false, false, 12, 12);
        let config = DeflateConfig::default();
        let mut tx = Codec::new(Role::Server, p, &config);
        let mut rx = Codec::new(Role::Client, p, &config);
        for m in [&b"first message"[..], b"", b"", b"after the empty ones"] {
            let mut wire = Vec::new();
            assert!(tx.compress(m, &mut wire));
            assert!(!wire.is_empty());
            let mut plain = Vec::new();
            rx.decompress(&wire, &mut plain, 1 << 20).unwrap();
            rx.finish_message(&mut plain, 1 << 20).unwrap();
            assert_eq!(plain, m);
        }
    }

    #[test]
    fn context_takeover_shrinks_repeated_messages() {
        let config = DeflateConfig::default();
        let msg = b"{\"type\":\"ticker\",\"product_id\":\"BTC-USD\",\"price\":\"43000.12\"}";
        let mut keep = Codec::new(Role::Server, params(false, false, 12, 12), &config);
        let mut fresh = Codec::new(Role::Server, params(true, false, 12, 12), &config);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        keep.compress(msg, &mut a);
        fresh.compress(msg, &mut b);
        assert_eq!(a, b, "the first message is the same either way");
        a.clear();
        b.clear();
        keep.compress(msg, &mut a);
        fresh.compress(msg, &mut b);
        assert!(a.len() < b.len() / 2, "{} vs {}", a.len(), b.len());
        assert!(
            fresh.compressor.is_none(),
            "no context takeover frees the state"
        );
    }

    #[test]
    fn bomb_is_stopped_at_the_limit() {
        let config = DeflateConfig::default();
        let mut tx = Codec::new(Role::Client, params(false, false, 15, 15), &config);
        let mut rx = Codec::new(Role::Server, params(false, false, 15, 15), &config);
        let zeros = vec![0u8; 10 << 20];
        let mut wire = Vec::new();
        tx.compress(&zeros, &mut wire);
        assert!(wire.len() < 20 << 10, "{}", wire.len());
        let mut out = Vec::new();
        let err = rx.decompress(&wire, &mut out, 1 << 20).unwrap_err();
        assert_eq!(err, ProtocolError::MessageTooLarge { max: 1 << 20 });
        assert!(
            out.capacity() <= (1 << 20) + (64 << 10),
            "{}",
            out.capacity()
        );
    }

    #[test]
    fn garbage_is_a_compression_error() {
        let config = DeflateConfig::default();
        let mut rx = Codec::new(Role::Server, params(false, false, 15, 15), &config);
        let mut out = Vec::new();
        let r = rx
            .decompress(&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF], &mut out, 1 << 20)
            .and_then(|()| rx.finish_message(&mut out, 1 << 20));
        assert_eq!(r, Err(ProtocolError::Compression));
    }
}
