//! The client role against hostile servers: answers that never end, never stop growing or
//! point somewhere odd. Each must become a clear error, bounded in memory and within the open
//! timeout — a client must never hang on, or buffer without limit, what a server sends.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tether::reconnect::default_decision;
use tether::{ClientBuilder, Decision, Error, ErrorKind, Phase, RedirectError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// The open timeout the client is given in these tests.
const OPEN_TIMEOUT: Duration = Duration::from_secs(2);

/// Slack allowed past the open timeout for the error to surface on a loaded machine.
const SLACK: Duration = Duration::from_secs(2);

/// A server on loopback that reads each request head and then runs `attack` on the socket.
async fn hostile<F, Fut>(attack: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match tcp.read(&mut byte).await {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            tokio::spawn(attack(tcp));
        }
    });
    addr
}

/// Writes `chunk` over and over until the client goes away.
async fn forever(mut tcp: TcpStream, prefix: &'static [u8], chunk: &'static [u8]) {
    if tcp.write_all(prefix).await.is_err() {
        return;
    }
    while tcp.write_all(chunk).await.is_ok() {}
}

/// Writes `prefix`, then one byte of `chunk` every 100 ms, forever.
async fn trickle(mut tcp: TcpStream, prefix: &'static [u8], chunk: &'static [u8]) {
    if tcp.write_all(prefix).await.is_err() {
        return;
    }
    for &b in chunk.iter().cycle() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if tcp.write_all(&[b]).await.is_err() {
            return;
        }
    }
}

/// Connects to `addr`, returning the error and how long it took to come.
async fn fail(addr: SocketAddr, path: &str) -> (Error, Duration) {
    let started = Instant::now();
    let result = ClientBuilder::new(format!("ws://{addr}{path}"))
        .open_timeout(OPEN_TIMEOUT)
        .connect()
        .await;
    let took = started.elapsed();
    match result {
        Ok(_) => panic!("the hostile server was accepted"),
        Err(e) => {
            assert!(
                took < OPEN_TIMEOUT + SLACK,
                "the error took {took:?}, past the open timeout {OPEN_TIMEOUT:?}: {e}"
            );
            (e, took)
        }
    }
}

fn is_fatal(e: &Error) -> bool {
    matches!(default_decision(e), Decision::Fatal)
}

#[tokio::test]
async fn an_endless_header_line_is_an_invalid_response_at_the_line_limit() {
    let addr =
        hostile(|tcp| forever(tcp, b"HTTP/1.1 101 Switching Protocols\r\nX-A: ", b"a")).await;
    let (e, _) = fail(addr, "/").await;
    let Error::InvalidResponse { reason, .. } = &e else {
        panic!("expected an invalid response, got {e:?}");
    };
    assert!(
        reason.contains("8192"),
        "the reason names the limit: {reason}"
    );
    assert_eq!(e.kind(), ErrorKind::InvalidResponse);
    assert!(is_fatal(&e));
}

#[tokio::test]
async fn endless_headers_are_an_invalid_response_at_the_header_count_limit() {
    let addr = hostile(|tcp| {
        forever(
            tcp,
            b"HTTP/1.1 101 Switching Protocols\r\n",
            b"X-Filler: 0123456789\r\n",
        )
    })
    .await;
    let (e, _) = fail(addr, "/").await;
    let Error::InvalidResponse { reason, .. } = &e else {
        panic!("expected an invalid response, got {e:?}");
    };
    assert!(
        reason.contains("100"),
        "the reason names the limit: {reason}"
    );
    assert!(is_fatal(&e));
}

#[tokio::test]
async fn a_head_of_long_headers_is_refused_at_the_head_size_limit() {
    // Each line under the line limit, few enough lines, but 64 KiB in all.
    static LINE: [u8; 8000] = {
        let mut line = [b'v'; 8000];
        line[0] = b'X';
        line[1] = b':';
        line[7998] = b'\r';
        line[7999] = b'\n';
        line
    };
    let addr = hostile(|tcp| forever(tcp, b"HTTP/1.1 101 Switching Protocols\r\n", &LINE)).await;
    let (e, _) = fail(addr, "/").await;
    let Error::InvalidResponse { reason, .. } = &e else {
        panic!("expected an invalid response, got {e:?}");
    };
    assert!(
        reason.contains("65536"),
        "the reason names the limit: {reason}"
    );
}

#[tokio::test]
async fn a_header_trickled_one_byte_at_a_time_times_out_in_the_handshake() {
    let addr =
        hostile(|tcp| trickle(tcp, b"HTTP/1.1 101 Switching Protocols\r\n", b"X-Slow: y")).await;
    let (e, took) = fail(addr, "/").await;
    assert!(
        matches!(e, Error::Timeout(Phase::Handshake)),
        "expected a handshake timeout, got {e:?}"
    );
    assert!(took >= OPEN_TIMEOUT, "gave up early, after {took:?}");
    assert!(!is_fatal(&e), "a timeout is transient");
}

#[tokio::test]
async fn endless_informational_responses_are_refused_at_the_first() {
    for status in ["100 Continue", "102 Processing", "103 Early Hints"] {
        let prefix: &'static [u8] = format!("HTTP/1.1 {status}\r\n\r\n").leak().as_bytes();
        let addr = hostile(move |tcp| forever(tcp, prefix, prefix)).await;
        let (e, took) = fail(addr, "/").await;
        let Error::Status(response) = &e else {
            panic!("{status}: expected a status error, got {e:?}");
        };
        assert_eq!(
            response.status,
            status[..3].parse::<u16>().unwrap(),
            "{status}"
        );
        assert!(response.body.is_empty(), "1xx has no body");
        assert!(
            took < OPEN_TIMEOUT,
            "{status}: refused at once, not at the timeout"
        );
        assert!(
            is_fatal(&e),
            "{status}: a server that never upgrades is fatal"
        );
    }
}

#[tokio::test]
async fn a_rejection_whose_body_never_ends_keeps_only_its_prefix() {
    // Three framings of a body that does not end: a huge Content-Length, endless chunks and
    // no framing at all. Each stops at the 4,096-byte body prefix, without waiting for more.
    let heads: [&'static [u8]; 3] = [
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 99999999999999\r\n\r\n",
        b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 403 Forbidden\r\n\r\n",
    ];
    for head in heads {
        let chunked = head.windows(7).any(|w| w == b"chunked");
        let chunk: &'static [u8] = if chunked { b"4\r\nnope\r\n" } else { b"nope" };
        let addr = hostile(move |tcp| forever(tcp, head, chunk)).await;
        let (e, took) = fail(addr, "/").await;
        let Error::Status(response) = &e else {
            panic!("expected a status error, got {e:?}");
        };
        assert_eq!(response.status, 403);
        assert!(response.body_truncated);
        assert_eq!(response.body.len(), 4096, "the body prefix is bounded");
        assert!(response.body.starts_with(b"nopenope"));
        assert!(took < OPEN_TIMEOUT, "not waiting for the end: {took:?}");
        assert!(is_fatal(&e));
    }
}

#[tokio::test]
async fn a_rejection_whose_body_trickles_ends_at_the_open_timeout_with_what_came() {
    let addr = hostile(|tcp| {
        trickle(
            tcp,
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 1000\r\n\r\n",
            b"busy",
        )
    })
    .await;
    let (e, took) = fail(addr, "/").await;
    let Error::Status(response) = &e else {
        panic!("expected a status error, got {e:?}");
    };
    assert_eq!(response.status, 503);
    assert!(response.body_truncated);
    assert!(
        !response.body.is_empty() && b"busy".repeat(64).starts_with(&response.body),
        "the bytes that came are kept: {:?}",
        response.body
    );
    assert!(took >= OPEN_TIMEOUT, "gave up early, after {took:?}");
    assert!(!is_fatal(&e), "503 is retried");
}

#[tokio::test]
async fn redirects_to_odd_schemes_are_forbidden() {
    let locations = [
        "ftp://example.com/",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "data:text/plain,hi",
        "gopher://example.com/",
        "ws+unix:///run/tether.sock:/",
        "mailto:root@example.com",
    ];
    for location in locations {
        let reply: &'static [u8] =
            format!("HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n")
                .leak()
                .as_bytes();
        let addr = hostile(move |mut tcp| async move {
            let _ = tcp.write_all(reply).await;
            let mut sink = [0u8; 64];
            while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
        let (e, took) = fail(addr, "/").await;
        assert!(
            matches!(&e, Error::Redirect(RedirectError::Forbidden(_))),
            "{location}: expected a forbidden redirect, got {e:?}"
        );
        assert_eq!(e.kind(), ErrorKind::Redirect);
        assert!(took < OPEN_TIMEOUT, "{location}: refused at once");
        assert!(is_fatal(&e), "{location}");
    }
}

#[tokio::test]
async fn a_malformed_location_is_a_clear_redirect_error() {
    let addr = hostile(|mut tcp| async move {
        let _ = tcp
            .write_all(b"HTTP/1.1 301 Moved\r\nLocation: ws://[::1\r\nContent-Length: 0\r\n\r\n")
            .await;
        let mut sink = [0u8; 64];
        while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    let (e, _) = fail(addr, "/").await;
    assert!(
        matches!(&e, Error::Redirect(RedirectError::Forbidden(l)) if l.contains("[::1")),
        "expected a forbidden redirect naming the location, got {e:?}"
    );
}

#[tokio::test]
async fn binary_noise_instead_of_a_response_is_an_invalid_response() {
    static NOISE: [u8; 256] = {
        let mut noise = [0u8; 256];
        let mut i = 0;
        while i < 256 {
            noise[i] = (i as u8).wrapping_mul(151).wrapping_add(7);
            i += 1;
        }
        noise
    };
    let addr = hostile(|tcp| forever(tcp, b"", &NOISE)).await;
    let (e, took) = fail(addr, "/").await;
    assert_eq!(e.kind(), ErrorKind::InvalidResponse, "got {e:?}");
    assert!(took < OPEN_TIMEOUT, "refused at once: {took:?}");
    assert!(is_fatal(&e));
}
