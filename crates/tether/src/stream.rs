//! The transport under a connection: plain TCP, TLS over TCP, or TLS inside a proxy's TLS;
//! on Unix, also a Unix domain socket, plain or with TLS.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
#[cfg(unix)]
use tokio::net::UnixStream;

/// A TCP stream or (on Unix) a Unix domain socket stream, or TLS over one, in either role.
#[derive(Debug)]
#[non_exhaustive]
pub enum MaybeTlsStream {
    /// Plain TCP (`ws://`).
    Plain(TcpStream),
    /// TLS as a client (`wss://`).
    ClientTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// TLS as a server.
    ServerTls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS to the server (`wss://`) inside the TLS tunnel of an `https://` proxy.
    ProxiedTls(Box<tokio_rustls::client::TlsStream<tokio_rustls::client::TlsStream<TcpStream>>>),
    /// A plain Unix domain socket (`ws+unix://`, [`ClientBuilder::unix_socket`](crate::ClientBuilder::unix_socket),
    /// [`Server::bind_unix`](crate::Server::bind_unix)).
    #[cfg(unix)]
    Unix(UnixStream),
    /// TLS as a client over a Unix domain socket (`wss+unix://`).
    #[cfg(unix)]
    ClientUnixTls(Box<tokio_rustls::client::TlsStream<UnixStream>>),
    /// TLS as a server over a Unix domain socket.
    #[cfg(unix)]
    ServerUnixTls(Box<tokio_rustls::server::TlsStream<UnixStream>>),
}

impl MaybeTlsStream {
    /// The TCP stream underneath, or `None` over a Unix domain socket.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Self::Plain(s) => Some(s),
            Self::ClientTls(s) => Some(s.get_ref().0),
            Self::ServerTls(s) => Some(s.get_ref().0),
            Self::ProxiedTls(s) => Some(s.get_ref().0.get_ref().0),
            #[cfg(unix)]
            Self::Unix(_) | Self::ClientUnixTls(_) | Self::ServerUnixTls(_) => None,
        }
    }

    /// The Unix domain socket stream underneath, or `None` over TCP.
    #[cfg(unix)]
    pub fn unix(&self) -> Option<&UnixStream> {
        match self {
            Self::Unix(s) => Some(s),
            Self::ClientUnixTls(s) => Some(s.get_ref().0),
            Self::ServerUnixTls(s) => Some(s.get_ref().0),
            _ => None,
        }
    }

    /// The other end's address: its TCP address (the proxy's, through a proxy), or over a
    /// Unix domain socket the path it is bound to (a server's path, as seen by a client;
    /// clients usually bind none, so a server sees [`PeerAddr::Unix`]`(None)`).
    pub fn peer_addr(&self) -> io::Result<PeerAddr> {
        #[cfg(unix)]
        if let Some(unix) = self.unix() {
            let addr = unix.peer_addr()?;
            return Ok(PeerAddr::Unix(addr.as_pathname().map(PathBuf::from)));
        }
        match self.tcp() {
            Some(tcp) => tcp.peer_addr().map(PeerAddr::Tcp),
            None => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "no peer address on this transport",
            )),
        }
    }
}

/// Who is at the other end of a connection ([`MaybeTlsStream::peer_addr`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PeerAddr {
    /// A TCP peer.
    Tcp(SocketAddr),
    /// A peer on a Unix domain socket, with the path it is bound to, if any.
    Unix(Option<PathBuf>),
}

impl fmt::Display for PeerAddr {
    /// `127.0.0.1:8765`, `[::1]:8765`; `unix:/run/app.sock`, or `unix:` for a peer bound to
    /// no path (as nginx writes `$remote_addr` for Unix socket clients).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix(Some(path)) => write!(f, "unix:{}", path.display()),
            Self::Unix(None) => f.write_str("unix:"),
        }
    }
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            MaybeTlsStream::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            MaybeTlsStream::ClientTls($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
            MaybeTlsStream::ServerTls($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
            MaybeTlsStream::ProxiedTls($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
            #[cfg(unix)]
            MaybeTlsStream::Unix($s) => {
                let $s = Pin::new($s);
                $e
            }
            #[cfg(unix)]
            MaybeTlsStream::ClientUnixTls($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
            #[cfg(unix)]
            MaybeTlsStream::ServerUnixTls($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
        }
    };
}

impl AsyncRead for MaybeTlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for MaybeTlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::ClientTls(s) => s.is_write_vectored(),
            Self::ServerTls(s) => s.is_write_vectored(),
            Self::ProxiedTls(s) => s.is_write_vectored(),
            #[cfg(unix)]
            Self::Unix(s) => s.is_write_vectored(),
            #[cfg(unix)]
            Self::ClientUnixTls(s) => s.is_write_vectored(),
            #[cfg(unix)]
            Self::ServerUnixTls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => s.poll_shutdown(cx))
    }
}
