//! Proxies on the way to the server: HTTP CONNECT (over plain TCP or TLS to the proxy) and
//! SOCKS5 (RFC 1928, with RFC 1929 username/password), and the choice of proxy from the
//! environment as curl and Python `websockets` make it.
//!
//! Which proxy an attempt uses (the first that applies):
//!
//! 1. the builder's [`ClientBuilder::proxy`](crate::ClientBuilder::proxy), or none at all
//!    after [`ClientBuilder::no_proxy`](crate::ClientBuilder::no_proxy);
//! 2. otherwise the environment, read again for every attempt: none when `no_proxy` matches
//!    the server; else for `wss://` the first set of `wss_proxy`, `https_proxy`, `all_proxy`,
//!    and for `ws://` the first set of `ws_proxy`, `http_proxy`, `all_proxy`. Each name is
//!    looked up in lower case first, then in upper case; an empty value counts as unset.
//!
//! `no_proxy` is a list separated by commas or spaces of `*` (everything), host names (the
//! name and its subdomains: `example.com` and `.example.com` both match `a.example.com`;
//! `*.example.com` too), IP addresses, CIDR ranges (`10.0.0.0/8`, `fd00::/8`), each
//! optionally with `:PORT` (`[::1]:8080` for IPv6) to match that port only. Addresses and
//! ranges match servers given by address (names are not resolved for the comparison).
//! Nothing is exempt unless listed, `localhost` included, as with curl.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use url::Url;

use crate::client::percent_decode;
use crate::error::{Error, Phase, ProxyError, Result};
use crate::happy::Dialer;
use crate::tls::TlsConfig;

/// The kinds of proxy tether speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `http://`: CONNECT over plain TCP.
    Http,
    /// `https://`: TLS to the proxy, then CONNECT inside it.
    Https,
    /// `socks5://` (the client resolves the server's name) or `socks5h://` (the proxy does).
    Socks5 { remote_dns: bool },
}

/// A parsed proxy URL.
#[derive(Clone, Debug)]
pub(crate) struct Proxy {
    pub(crate) kind: Kind,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) credentials: Option<(String, String)>,
}

fn proxy_error(message: impl Into<String>) -> Error {
    Error::Proxy(ProxyError::new(message))
}

impl Proxy {
    /// Parses `http://`, `https://`, `socks5://` or `socks5h://` URLs, with optional
    /// `user:password@` (percent-encoded). A URL without a scheme is taken as `http://`, as
    /// curl does.
    pub(crate) fn parse(s: &str) -> Result<Self> {
        let with_scheme = if s.contains("://") {
            s.to_owned()
        } else {
            format!("http://{s}")
        };
        let url = Url::parse(&with_scheme)
            .map_err(|e| proxy_error(format!("invalid proxy URL {s:?}: {e}")))?;
        let (kind, default_port) = match url.scheme() {
            "http" => (Kind::Http, 80),
            "https" => (Kind::Https, 443),
            "socks5" => (Kind::Socks5 { remote_dns: false }, 1080),
            "socks5h" => (Kind::Socks5 { remote_dns: true }, 1080),
            other => {
                return Err(proxy_error(format!(
                    "proxy scheme {other}:// is not supported (http, https, socks5, socks5h)"
                )))
            }
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| proxy_error(format!("proxy URL {s:?} has no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let credentials = (!url.username().is_empty()).then(|| {
            (
                percent_decode(url.username()),
                percent_decode(url.password().unwrap_or("")),
            )
        });
        Ok(Self {
            kind,
            host,
            port: url.port().unwrap_or(default_port),
            credentials,
        })
    }
}

/// The proxy the environment names for a server at `host:port` (`secure`: `wss://`), read
/// through `get` (a variable's value, `None` when unset); see the module documentation.
pub(crate) fn from_env_with(
    secure: bool,
    host: &str,
    port: u16,
    get: impl Fn(&str) -> Option<String>,
) -> Option<String> {
    let var = |name: &str| {
        get(name)
            .or_else(|| get(&name.to_ascii_uppercase()))
            .filter(|v| !v.trim().is_empty())
    };
    if var("no_proxy").is_some_and(|list| bypass(&list, host, port)) {
        return None;
    }
    let names: [&str; 3] = if secure {
        ["wss_proxy", "https_proxy", "all_proxy"]
    } else {
        ["ws_proxy", "http_proxy", "all_proxy"]
    };
    names
        .iter()
        .find_map(|n| var(n))
        .map(|v| v.trim().to_owned())
}

/// The proxy the process environment names for a server (see [`from_env_with`]).
pub(crate) fn from_env(secure: bool, host: &str, port: u16) -> Option<String> {
    from_env_with(secure, host, port, |name| std::env::var(name).ok())
}

/// Whether the `no_proxy` list matches the server at `host:port`.
pub(crate) fn bypass(list: &str, host: &str, port: u16) -> bool {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let host_ip: Option<IpAddr> = host.parse().ok();
    list.split(|c: char| c == ',' || c.is_whitespace())
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| entry_matches(&entry.to_ascii_lowercase(), &host, host_ip, port))
}

fn entry_matches(entry: &str, host: &str, host_ip: Option<IpAddr>, port: u16) -> bool {
    if entry == "*" {
        return true;
    }
    let (pattern, entry_port) = split_port(entry);
    if entry_port.is_some_and(|p| p != port) {
        return false;
    }
    if let Some((net, bits)) = pattern.split_once('/') {
        let (Ok(net), Ok(bits), Some(ip)) = (net.parse::<IpAddr>(), bits.parse::<u8>(), host_ip)
        else {
            return false;
        };
        return in_network(ip, net, bits);
    }
    if let Ok(ip) = pattern.parse::<IpAddr>() {
        return host_ip == Some(ip);
    }
    let name = pattern
        .trim_start_matches("*.")
        .trim_start_matches('.')
        .trim_end_matches('.');
    !name.is_empty() && (host == name || host.ends_with(&format!(".{name}")))
}

/// Splits `host:port`, `[v6]:port`, or a bare pattern (an IPv6 address or range without
/// brackets has no port).
fn split_port(entry: &str) -> (&str, Option<u16>) {
    if let Some(rest) = entry.strip_prefix('[') {
        if let Some((inside, after)) = rest.split_once(']') {
            let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
            return (inside, port);
        }
    }
    if entry.matches(':').count() == 1 {
        if let Some((name, port)) = entry.rsplit_once(':') {
            if let Ok(port) = port.parse() {
                return (name, Some(port));
            }
        }
    }
    (entry, None)
}

fn in_network(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        // An IPv4 server given as an IPv4-mapped IPv6 range, and the like, does not match.
        _ => false,
    }
}

/// A tunnel through a proxy to the server: the bytes of the WebSocket connection (and of its
/// TLS, for `wss://`) go through it.
pub(crate) enum Tunnel {
    /// Over plain TCP to the proxy (HTTP CONNECT, SOCKS5).
    Tcp(TcpStream),
    /// Over TLS to the proxy (an `https://` proxy).
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Opens a tunnel to `host:port` through `proxy`, within `deadline`. `tls` verifies an
/// `https://` proxy's certificate (the same roots as the server's).
pub(crate) async fn connect(
    proxy: &Proxy,
    host: &str,
    port: u16,
    deadline: Instant,
    tls: &TlsConfig,
    dialer: &Dialer,
) -> Result<Tunnel> {
    let reach = dialer.connect(&proxy.host, proxy.port);
    let tcp = timeout_at(deadline, reach)
        .await
        .map_err(|_| Error::Timeout(Phase::Proxy))?
        .map_err(|e| {
            Error::Proxy(ProxyError {
                message: format!("cannot reach proxy {}:{}: {e}", proxy.host, proxy.port),
                io: Some(e),
                ..ProxyError::new("")
            })
        })?;
    tcp.set_nodelay(true)?;
    match proxy.kind {
        Kind::Http => {
            let mut tcp = tcp;
            http_connect(&mut tcp, proxy, host, port, deadline).await?;
            Ok(Tunnel::Tcp(tcp))
        }
        Kind::Https => {
            let config: Arc<rustls::ClientConfig> = tls.client_config().map_err(Error::Tls)?;
            let name = rustls::pki_types::ServerName::try_from(proxy.host.clone())
                .map_err(|e| proxy_error(format!("proxy host {}: {e}", proxy.host)))?;
            let connector = tokio_rustls::TlsConnector::from(config);
            let mut stream = timeout_at(deadline, connector.connect(name, tcp))
                .await
                .map_err(|_| Error::Timeout(Phase::Proxy))?
                .map_err(|e| {
                    Error::Proxy(ProxyError {
                        message: format!("TLS to proxy {}:{} failed: {e}", proxy.host, proxy.port),
                        ..ProxyError::new("")
                    })
                })?;
            http_connect(&mut stream, proxy, host, port, deadline).await?;
            Ok(Tunnel::Tls(Box::new(stream)))
        }
        Kind::Socks5 { remote_dns } => {
            let mut tcp = tcp;
            socks5_connect(&mut tcp, proxy, remote_dns, (host, port), dialer, deadline).await?;
            Ok(Tunnel::Tcp(tcp))
        }
    }
}

fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// An I/O error while talking to the proxy, after it was reached.
fn hung_up(e: io::Error) -> Error {
    Error::Proxy(ProxyError {
        message: format!("proxy closed the connection: {e}"),
        io: Some(e),
        ..ProxyError::new("")
    })
}

/// Asks an HTTP proxy for a tunnel with CONNECT.
async fn http_connect<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    proxy: &Proxy,
    host: &str,
    port: u16,
    deadline: Instant,
) -> Result<()> {
    let authority = authority(host, port);
    let mut req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some((user, password)) = &proxy.credentials {
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        req.push_str(&format!("Proxy-Authorization: Basic {b64}\r\n"));
    }
    req.push_str("\r\n");
    let write = async {
        io.write_all(req.as_bytes()).await?;
        io.flush().await
    };
    timeout_at(deadline, write)
        .await
        .map_err(|_| Error::Timeout(Phase::Proxy))?
        .map_err(hung_up)?;
    // Read the answer's head byte by byte: nothing after it may be consumed, it belongs to the
    // tunnel. The head is short, and this happens once per connection.
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 16 << 10 {
            return Err(proxy_error("proxy response head too long"));
        }
        let b = timeout_at(deadline, io.read_u8())
            .await
            .map_err(|_| Error::Timeout(Phase::Proxy))?
            .map_err(hung_up)?;
        head.push(b);
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or_default().trim().to_owned();
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| proxy_error(format!("invalid proxy response: {line}")))?;
    if (200..300).contains(&status) {
        return Ok(());
    }
    // A 407 carries Proxy-Authenticate; some proxies (tinyproxy) answer wrong credentials
    // with 401 and put the same challenge in WWW-Authenticate.
    let challenge = |name: &str| {
        name.eq_ignore_ascii_case("proxy-authenticate")
            || (status == 401 && name.eq_ignore_ascii_case("www-authenticate"))
    };
    let authenticate = lines
        .filter_map(|l| l.split_once(':'))
        .filter(|(name, _)| challenge(name.trim()))
        .map(|(_, value)| value.trim().to_owned())
        .collect();
    Err(Error::Proxy(ProxyError {
        status: Some(status),
        message: format!("proxy refused CONNECT: {line}"),
        authenticate,
        ..ProxyError::new("")
    }))
}

/// Runs one exchange with the proxy within `deadline`.
async fn within<T>(
    deadline: Instant,
    f: impl std::future::Future<Output = io::Result<T>>,
) -> Result<T> {
    timeout_at(deadline, f)
        .await
        .map_err(|_| Error::Timeout(Phase::Proxy))?
        .map_err(hung_up)
}

/// What a SOCKS5 reply code means (RFC 1928 section 6).
pub(crate) fn socks_reply_text(code: u8) -> &'static str {
    match code {
        1 => "general SOCKS server failure",
        2 => "connection not allowed by ruleset",
        3 => "network unreachable",
        4 => "host unreachable",
        5 => "connection refused",
        6 => "TTL expired",
        7 => "command not supported",
        8 => "address type not supported",
        _ => "unassigned reply code",
    }
}

/// Asks a SOCKS5 proxy for a tunnel: greeting, username/password if the proxy wants it
/// (RFC 1929), then CONNECT to the server by name (`remote_dns`) or by the address resolved
/// here.
async fn socks5_connect(
    tcp: &mut TcpStream,
    proxy: &Proxy,
    remote_dns: bool,
    (host, port): (&str, u16),
    dialer: &Dialer,
    deadline: Instant,
) -> Result<()> {
    // The request's address: resolved here for socks5://, the name for socks5h://.
    let mut address = Vec::with_capacity(host.len() + 8);
    let literal: Option<IpAddr> = host.parse().ok();
    let ip = match (literal, remote_dns) {
        (Some(ip), _) => Some(ip),
        (None, true) => None,
        (None, false) => {
            let found = timeout_at(deadline, dialer.lookup(host, port))
                .await
                .map_err(|_| Error::Timeout(Phase::Connect))??;
            // lookup returns at least one address.
            found.first().map(SocketAddr::ip)
        }
    };
    match ip {
        Some(IpAddr::V4(v4)) => {
            address.push(1);
            address.extend_from_slice(&v4.octets());
        }
        Some(IpAddr::V6(v6)) => {
            address.push(4);
            address.extend_from_slice(&v6.octets());
        }
        None => {
            let name = host.as_bytes();
            let len = u8::try_from(name.len())
                .map_err(|_| proxy_error("host name too long for SOCKS5 (255 bytes at most)"))?;
            address.push(3);
            address.push(len);
            address.extend_from_slice(name);
        }
    }
    address.extend_from_slice(&port.to_be_bytes());

    // Greeting: no authentication, and username/password when we have credentials.
    let greeting: &[u8] = if proxy.credentials.is_some() {
        &[5, 2, 0, 2]
    } else {
        &[5, 1, 0]
    };
    within(deadline, tcp.write_all(greeting)).await?;
    let mut choice = [0u8; 2];
    within(deadline, tcp.read_exact(&mut choice)).await?;
    if choice[0] != 5 {
        return Err(proxy_error(format!(
            "not a SOCKS5 proxy (version {} in its answer)",
            choice[0]
        )));
    }
    match (choice[1], &proxy.credentials) {
        (0, _) => {}
        (2, Some((user, password))) => {
            let (Ok(ulen), Ok(plen)) = (u8::try_from(user.len()), u8::try_from(password.len()))
            else {
                return Err(proxy_error(
                    "SOCKS5 user name or password too long (255 bytes at most)",
                ));
            };
            let mut auth = Vec::with_capacity(3 + user.len() + password.len());
            auth.extend_from_slice(&[1, ulen]);
            auth.extend_from_slice(user.as_bytes());
            auth.push(plen);
            auth.extend_from_slice(password.as_bytes());
            within(deadline, tcp.write_all(&auth)).await?;
            let mut status = [0u8; 2];
            within(deadline, tcp.read_exact(&mut status)).await?;
            if status[1] != 0 {
                return Err(proxy_error(
                    "SOCKS5 proxy refused the user name and password",
                ));
            }
        }
        (2, None) => {
            return Err(proxy_error(
                "SOCKS5 proxy requires a user name and password (none in the proxy URL)",
            ))
        }
        (0xff, _) => {
            return Err(proxy_error(
                "SOCKS5 proxy accepts none of the offered authentication methods",
            ))
        }
        (other, _) => {
            return Err(proxy_error(format!(
                "SOCKS5 proxy chose an authentication method not offered ({other})"
            )))
        }
    }

    let mut request = vec![5, 1, 0];
    request.extend_from_slice(&address);
    within(deadline, tcp.write_all(&request)).await?;
    let mut reply = [0u8; 4];
    within(deadline, tcp.read_exact(&mut reply)).await?;
    if reply[0] != 5 {
        return Err(proxy_error(format!(
            "not a SOCKS5 proxy (version {} in its reply)",
            reply[0]
        )));
    }
    if reply[1] != 0 {
        let code = reply[1];
        return Err(Error::Proxy(ProxyError {
            message: format!(
                "SOCKS5 proxy could not connect to {}: {} (reply {code})",
                authority(host, port),
                socks_reply_text(code)
            ),
            socks_reply: Some(code),
            ..ProxyError::new("")
        }));
    }
    // The bound address, which we do not need: skip it by its type.
    let rest = match reply[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => {
            let mut len = [0u8; 1];
            within(deadline, tcp.read_exact(&mut len)).await?;
            usize::from(len[0]) + 2
        }
        other => {
            return Err(proxy_error(format!(
                "SOCKS5 reply with an unknown address type {other}"
            )))
        }
    };
    let mut skip = vec![0u8; rest];
    within(deadline, tcp.read_exact(&mut skip)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn no_proxy_rules() {
        // (no_proxy, host, port, bypassed)
        let table: &[(&str, &str, u16, bool)] = &[
            ("*", "example.com", 443, true),
            ("example.com", "example.com", 443, true),
            ("example.com", "a.example.com", 443, true),
            (".example.com", "a.example.com", 443, true),
            ("*.example.com", "a.b.example.com", 80, true),
            (".example.com", "example.com", 443, true),
            ("example.com", "badexample.com", 443, false),
            ("example.com", "example.org", 443, false),
            ("EXAMPLE.com", "a.Example.COM", 443, true),
            ("example.com.", "example.com", 443, true),
            ("example.com:8080", "example.com", 8080, true),
            ("example.com:8080", "example.com", 443, false),
            ("10.0.0.0/8", "10.1.2.3", 80, true),
            ("10.0.0.0/8", "11.1.2.3", 80, false),
            ("10.0.0.0/8", "ten.example", 80, false),
            ("192.168.1.1", "192.168.1.1", 80, true),
            ("192.168.1.1", "192.168.1.2", 80, false),
            ("0.0.0.0/0", "8.8.8.8", 53, true),
            ("::1", "::1", 80, true),
            ("::1", "[::1]", 80, true),
            ("[::1]:8080", "::1", 8080, true),
            ("[::1]:8080", "::1", 80, false),
            ("fd00::/8", "fd12:3456::1", 443, true),
            ("fd00::/8", "fe80::1", 443, false),
            ("10.0.0.0/8", "::ffff:10.0.0.1", 80, false),
            ("localhost, 127.0.0.1", "127.0.0.1", 80, true),
            ("a.com b.com", "b.com", 80, true),
            (" , ,", "example.com", 80, false),
            ("", "example.com", 80, false),
            ("127.0.0.0/33", "127.0.0.1", 80, false),
            ("localhost", "127.0.0.1", 80, false),
        ];
        for &(list, host, port, want) in table {
            assert_eq!(
                bypass(list, host, port),
                want,
                "no_proxy={list:?} host={host} port={port}"
            );
        }
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    /// Environment variables as name and value.
    type Vars<'a> = &'a [(&'a str, &'a str)];

    #[test]
    fn proxy_selection_order() {
        // (environment, secure, expected)
        let table: &[(Vars, bool, Option<&str>)] = &[
            (&[], false, None),
            (&[("http_proxy", "http://h:1")], false, Some("http://h:1")),
            (&[("http_proxy", "http://h:1")], true, None),
            (&[("https_proxy", "http://s:1")], true, Some("http://s:1")),
            (
                &[("ws_proxy", "http://w:1"), ("http_proxy", "http://h:1")],
                false,
                Some("http://w:1"),
            ),
            (
                &[
                    ("wss_proxy", "socks5h://w:1"),
                    ("https_proxy", "http://s:1"),
                ],
                true,
                Some("socks5h://w:1"),
            ),
            (&[("all_proxy", "socks5://a:1")], true, Some("socks5://a:1")),
            (
                &[("ALL_PROXY", "socks5://a:1")],
                false,
                Some("socks5://a:1"),
            ),
            (
                &[
                    ("http_proxy", "http://lower:1"),
                    ("HTTP_PROXY", "http://upper:1"),
                ],
                false,
                Some("http://lower:1"),
            ),
            (
                &[("HTTPS_PROXY", "http://upper:1")],
                true,
                Some("http://upper:1"),
            ),
            (
                &[("https_proxy", ""), ("all_proxy", "http://a:1")],
                true,
                Some("http://a:1"),
            ),
            (
                &[("https_proxy", "http://s:1"), ("no_proxy", "example.com")],
                true,
                None,
            ),
            (
                &[("https_proxy", "http://s:1"), ("NO_PROXY", "*")],
                true,
                None,
            ),
            (
                &[("https_proxy", "http://s:1"), ("no_proxy", "other.com")],
                true,
                Some("http://s:1"),
            ),
        ];
        for &(vars, secure, want) in table {
            assert_eq!(
                from_env_with(secure, "api.example.com", 443, env(vars)).as_deref(),
                want,
                "env={vars:?} secure={secure}"
            );
        }
    }

    #[test]
    fn proxy_urls() {
        let p = Proxy::parse("socks5h://us%40er:p%3Ass@proxy.local:1081").unwrap();
        assert_eq!(p.kind, Kind::Socks5 { remote_dns: true });
        assert_eq!((p.host.as_str(), p.port), ("proxy.local", 1081));
        assert_eq!(p.credentials, Some(("us@er".to_owned(), "p:ss".to_owned())));
        let p = Proxy::parse("socks5://[::1]").unwrap();
        assert_eq!(
            (p.kind, p.host.as_str(), p.port),
            (Kind::Socks5 { remote_dns: false }, "::1", 1080)
        );
        let p = Proxy::parse("proxy:3128").unwrap();
        assert_eq!(
            (p.kind, p.host.as_str(), p.port),
            (Kind::Http, "proxy", 3128)
        );
        let p = Proxy::parse("https://proxy").unwrap();
        assert_eq!((p.kind, p.port, p.credentials), (Kind::Https, 443, None));
        assert_eq!(Proxy::parse("http://proxy").unwrap().port, 80);
        let e = Proxy::parse("socks4://proxy:1080").unwrap_err();
        assert!(e.to_string().contains("socks4:// is not supported"), "{e}");
        assert!(Proxy::parse("http://").is_err());
    }
}
