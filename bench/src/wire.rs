//! The load generator's own WebSocket wire code: the opening handshake by hand, frames
//! encoded once up front, and a parser that only counts the frames coming back. No
//! WebSocket library is involved, so the load generator costs the same against every server.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upgrade request sent by every load-generator connection, with `extra_headers` (lines
/// ending with CRLF, or nothing) before the blank line. The key is the RFC 6455 sample;
/// servers do not care that it repeats.
pub(crate) fn upgrade_request_with(host: &str, extra_headers: &str) -> Vec<u8> {
    format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         {extra_headers}\r\n"
    )
    .into_bytes()
}

/// Connects to `addr`, turns Nagle off and, unless `raw`, performs the opening handshake.
/// Returns the stream and any bytes that arrived after the response head.
pub(crate) async fn open(addr: &str, raw: bool) -> io::Result<(TcpStream, Vec<u8>)> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    if raw {
        return Ok((tcp, Vec::new()));
    }
    let extra = handshake(&mut tcp, addr, true).await?;
    Ok((tcp, extra))
}

/// Connects to `addr` and opens a resumable session on it: the upgrade offering the resume
/// subprotocol, a masked HELLO for a new session, and the server's WELCOME read (the
/// connection is then an idle session).
pub(crate) async fn open_session(addr: &str, key: [u8; 4]) -> io::Result<(TcpStream, Vec<u8>)> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let protocol = format!(
        "Sec-WebSocket-Protocol: {}\r\n",
        tether::session::SUBPROTOCOL
    );
    let (head, mut extra) = handshake_with(&mut tcp, addr, &protocol, true).await?;
    if !String::from_utf8_lossy(&head).contains(tether::session::SUBPROTOCOL) {
        return Err(io::Error::other(
            "the server did not select the resume subprotocol",
        ));
    }
    let hello = tether::proto::session::Control::Hello {
        id: None,
        delivered: 0,
    }
    .encode();
    let mut frame = vec![0x82, 0x80 | hello.len() as u8];
    frame.extend_from_slice(&key);
    frame.extend(hello.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    tcp.write_all(&frame).await?;
    // WELCOME: a 2-byte header and 28 bytes (no reason).
    let mut buf = [0u8; 64];
    while extra.len() < 30 {
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no WELCOME"))??;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        extra.extend_from_slice(&buf[..n]);
    }
    if extra[0] != 0x82 || extra.get(2) != Some(&0x03) {
        return Err(io::Error::other("expected WELCOME"));
    }
    Ok((tcp, Vec::new()))
}

/// Sends the upgrade request and reads the response head; fails unless it is a 101 when
/// `expect_101` (the raw TCP echo answers with the request itself).
pub(crate) async fn handshake(
    tcp: &mut TcpStream,
    host: &str,
    expect_101: bool,
) -> io::Result<Vec<u8>> {
    let (_head, extra) = handshake_with(tcp, host, "", expect_101).await?;
    Ok(extra)
}

/// [`handshake`] with more request header lines (see [`upgrade_request_with`]); returns the
/// response head too.
pub(crate) async fn handshake_with(
    tcp: &mut TcpStream,
    host: &str,
    extra_headers: &str,
    expect_101: bool,
) -> io::Result<(Vec<u8>, Vec<u8>)> {
    tcp.write_all(&upgrade_request_with(host, extra_headers))
        .await?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"))??;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = find_head_end(&head) {
            if expect_101 && !head.starts_with(b"HTTP/1.1 101") {
                let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
                return Err(io::Error::other(format!(
                    "upgrade refused: {}",
                    String::from_utf8_lossy(line)
                )));
            }
            let extra = head.split_off(end);
            return Ok((head, extra));
        }
        if head.len() > 16 << 10 {
            return Err(io::Error::other("response head too long"));
        }
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// `count` copies of one masked binary frame carrying `size` bytes, back to back, and the
/// length of one frame. The payload is printable ASCII, so it would also be valid text.
pub(crate) fn masked_frames(size: usize, count: usize, key: [u8; 4]) -> (Vec<u8>, usize) {
    let mut frame = Vec::with_capacity(size + 14);
    frame.push(0x82); // FIN + binary
    if size < 126 {
        frame.push(0x80 | size as u8);
    } else if size <= usize::from(u16::MAX) {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(size as u16).to_be_bytes());
    } else {
        frame.push(0x80 | 127);
        frame.extend_from_slice(&(size as u64).to_be_bytes());
    }
    frame.extend_from_slice(&key);
    frame.extend((0..size).map(|i| (b'a' + (i % 26) as u8) ^ key[i % 4]));
    let len = frame.len();
    (frame.repeat(count), len)
}

/// A masked Close frame with status 1000.
pub(crate) fn masked_close(key: [u8; 4]) -> [u8; 8] {
    let code = 1000u16.to_be_bytes();
    [
        0x88,
        0x82,
        key[0],
        key[1],
        key[2],
        key[3],
        code[0] ^ key[0],
        code[1] ^ key[1],
    ]
}

/// Total header length given a frame's first two bytes.
pub(crate) fn header_len(b1: u8) -> usize {
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 }
}

/// Counts complete frames in a byte stream without looking at payloads. Accepts masked
/// frames too, because the raw TCP echo sends the client's own frames back.
#[derive(Debug, Default)]
pub(crate) struct FrameCounter {
    head: [u8; 14],
    head_len: usize,
    /// Payload bytes of the current frame still to skip.
    remaining: u64,
    in_payload: bool,
    fin: bool,
    opcode: u8,
    /// A Close frame was seen.
    pub(crate) closed: bool,
}

impl FrameCounter {
    /// Consumes `data`; returns how many complete messages (final data frames) it ended.
    pub(crate) fn feed(&mut self, mut data: &[u8]) -> usize {
        let mut messages = 0;
        while !data.is_empty() {
            if self.in_payload {
                let n = usize::try_from(self.remaining).map_or(data.len(), |r| r.min(data.len()));
                data = &data[n..];
                self.remaining -= n as u64;
                if self.remaining == 0 {
                    messages += self.end_frame();
                }
                continue;
            }
            // Fast path: a whole header at the front of `data`.
            if self.head_len == 0 && data.len() >= 2 {
                let need = header_len(data[1]);
                if data.len() >= need {
                    self.begin_frame(&data[..need]);
                    data = &data[need..];
                    if self.remaining == 0 {
                        messages += self.end_frame();
                    }
                    continue;
                }
            }
            // Slow path: a header split across reads.
            let need = if self.head_len < 2 {
                2
            } else {
                header_len(self.head[1])
            };
            let take = (need - self.head_len).min(data.len());
            self.head[self.head_len..self.head_len + take].copy_from_slice(&data[..take]);
            self.head_len += take;
            data = &data[take..];
            if self.head_len >= 2 && self.head_len == header_len(self.head[1]) {
                let head = self.head;
                self.begin_frame(&head[..self.head_len]);
                self.head_len = 0;
                if self.remaining == 0 {
                    messages += self.end_frame();
                }
            }
        }
        messages
    }

    fn begin_frame(&mut self, head: &[u8]) {
        self.fin = head[0] & 0x80 != 0;
        self.opcode = head[0] & 0x0f;
        self.remaining = match head[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([head[2], head[3]])),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&head[2..10]);
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        self.in_payload = true;
    }

    fn end_frame(&mut self) -> usize {
        self.in_payload = false;
        match self.opcode {
            0x8 => {
                self.closed = true;
                0
            }
            // Continuation, text or binary: a message ends with its final frame.
            0x0..=0x2 if self.fin => 1,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unmasked(payload: usize, opcode: u8) -> Vec<u8> {
        let mut v = vec![0x80 | opcode];
        if payload < 126 {
            v.push(payload as u8);
        } else if payload <= 65535 {
            v.push(126);
            v.extend_from_slice(&(payload as u16).to_be_bytes());
        } else {
            v.push(127);
            v.extend_from_slice(&(payload as u64).to_be_bytes());
        }
        v.resize(v.len() + payload, 7);
        v
    }

    #[test]
    fn counts_frames_whatever_the_chunking() {
        let mut stream = Vec::new();
        for size in [0, 1, 20, 125, 126, 1024, 65535, 65536, 200_000] {
            stream.extend(unmasked(size, 2));
        }
        stream.extend(unmasked(3, 9)); // a Ping: not a message
        let (masked, _) = masked_frames(300, 2, [1, 2, 3, 4]);
        stream.extend(masked);
        for chunk in [1, 2, 3, 7, 100, 4096, stream.len()] {
            let mut c = FrameCounter::default();
            let n: usize = stream.chunks(chunk).map(|p| c.feed(p)).sum();
            assert_eq!(n, 11, "chunk {chunk}");
            assert!(!c.closed);
        }
    }

    #[test]
    fn masked_frames_unmask_to_the_pattern() {
        let key = [9, 8, 7, 6];
        let (frames, len) = masked_frames(200, 3, key);
        assert_eq!(frames.len(), 3 * len);
        assert_eq!(&frames[..2], &[0x82, 0x80 | 126]);
        assert_eq!(&frames[2..4], &200u16.to_be_bytes());
        assert_eq!(&frames[4..8], &key);
        let payload: Vec<u8> = frames[8..len]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        assert!(payload
            .iter()
            .enumerate()
            .all(|(i, &b)| b == b'a' + (i % 26) as u8));
    }

    #[test]
    fn sees_close() {
        let mut c = FrameCounter::default();
        assert_eq!(c.feed(&masked_close([1, 2, 3, 4])), 0);
        assert!(c.closed);
    }

    #[test]
    fn finds_the_end_of_a_response_head() {
        let r = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nxy";
        assert_eq!(find_head_end(r), Some(r.len() - 2));
        assert_eq!(find_head_end(b"HTTP/1.1 101\r\n"), None);
    }
}
