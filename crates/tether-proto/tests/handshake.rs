//! Property tests for the opening handshake: chunking independence, no panics on arbitrary
//! input, and no header injection through `ClientHandshake::new`.

use proptest::prelude::*;
use tether_proto::handshake::*;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
const FRAMES: &[u8] = &[0x81, 0x85, 1, 2, 3, 4, 5, 6, 7, 8, 9];

fn request_head() -> String {
    format!(
        "GET /chat?room=1 HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: chat, superchat\r\n\
         Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
    )
}

fn response_head() -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {ACCEPT}\r\nSec-WebSocket-Protocol: chat\r\n\r\n"
    )
}

fn client() -> ClientHandshake {
    let request = ClientRequest {
        host: "server.example.com".into(),
        resource: "/chat".into(),
        subprotocols: vec!["chat".into()],
        ..ClientRequest::default()
    };
    ClientHandshake::try_new(&request, KEY.into(), HeadLimits::default()).unwrap()
}

/// Splits `data` at the given cut points (indices taken modulo the length, sorted).
fn chunks(data: &[u8], cuts: &[prop::sample::Index]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(data.len() + 1)).collect();
    points.push(0);
    points.push(data.len());
    points.sort_unstable();
    points
        .windows(2)
        .map(|w| data[w[0]..w[1]].to_vec())
        .collect()
}

/// Something that looks like the start of an HTTP head, to reach deeper code than pure noise.
fn http_ish() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        Just(b"HTTP/1.1 101 Switching Protocols".to_vec()),
        Just(b"HTTP/1.1 401 Unauthorized".to_vec()),
        Just(b"GET / HTTP/1.1".to_vec()),
        Just(b"Host: x".to_vec()),
        Just(b"Upgrade: websocket".to_vec()),
        Just(b"Connection: Upgrade".to_vec()),
        Just(format!("Sec-WebSocket-Key: {KEY}").into_bytes()),
        Just(format!("Sec-WebSocket-Accept: {ACCEPT}").into_bytes()),
        Just(b"Sec-WebSocket-Version: 13".to_vec()),
        Just(b"Content-Length: 5".to_vec()),
        Just(b"Content-Length: 99999999999999999999999".to_vec()),
        Just(b"Transfer-Encoding: chunked".to_vec()),
        Just(b"ffffffffffffffffffff".to_vec()),
        Just(b"3;x".to_vec()),
        Just(b"0".to_vec()),
        Just(Vec::new()),
        proptest::collection::vec(any::<u8>(), 0..40),
    ];
    proptest::collection::vec(line, 0..16).prop_map(|lines| {
        let mut out = Vec::new();
        for line in lines {
            out.extend_from_slice(&line);
            out.extend_from_slice(b"\r\n");
        }
        out
    })
}

fn small_limits() -> HeadLimits {
    HeadLimits {
        max_line: 24,
        max_headers: 4,
        max_head: 200,
        max_body_prefix: 8,
    }
}

const RESERVED: &[&str] = &[
    "host",
    "upgrade",
    "connection",
    "sec-websocket-key",
    "sec-websocket-version",
];

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn server_result_is_independent_of_chunking(
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let head = request_head();
        let mut data = head.clone().into_bytes();
        data.extend_from_slice(FRAMES);
        let mut server = ServerHandshake::new(HeadLimits::default());
        let mut fed = 0;
        let mut found = None;
        for chunk in chunks(&data, &cuts) {
            if let Some(request) = server.receive(&chunk).unwrap() {
                found = Some((fed, request));
                break;
            }
            fed += chunk.len();
        }
        let (before, request) = found.expect("request completes");
        prop_assert_eq!(before + request.consumed, head.len());
        prop_assert_eq!(request.key.as_str(), KEY);
        prop_assert_eq!(request.path.as_str(), "/chat?room=1");
        prop_assert_eq!(request.subprotocols, vec!["chat".to_owned(), "superchat".to_owned()]);
        prop_assert_eq!(request.extensions.as_deref(), Some("permessage-deflate"));
    }

    #[test]
    fn client_result_is_independent_of_chunking(
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let head = response_head();
        let mut data = head.clone().into_bytes();
        data.extend_from_slice(FRAMES);
        let mut client = client();
        let mut fed = 0;
        let mut found = None;
        for chunk in chunks(&data, &cuts) {
            if let Some(accepted) = client.receive(&chunk).unwrap() {
                found = Some((fed, accepted));
                break;
            }
            fed += chunk.len();
        }
        let (before, accepted) = found.expect("handshake completes");
        prop_assert_eq!(before + accepted.consumed, head.len());
        prop_assert_eq!(accepted.subprotocol.as_deref(), Some("chat"));
    }

    #[test]
    fn chunked_error_body_is_independent_of_chunking(
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let data = b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
                     4\r\nWiki\r\n7;a=b\r\npedia i\r\nB\r\nn \r\nchunks.\r\n0\r\n\r\n";
        let mut client = client();
        let mut response = None;
        for chunk in chunks(data, &cuts) {
            match client.receive(&chunk) {
                Ok(None) => {}
                Err(HandshakeError::Status(r)) => {
                    response = Some(r);
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        let response = response.expect("body completes");
        prop_assert_eq!(&response.body[..], b"Wikipedia in \r\nchunks.");
        prop_assert!(!response.body_truncated);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        data in prop_oneof![proptest::collection::vec(any::<u8>(), 0..600), http_ish()],
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        small in any::<bool>(),
    ) {
        let limits = if small { small_limits() } else { HeadLimits::default() };
        let mut server = ServerHandshake::new(limits.clone());
        let mut client = ClientHandshake::try_new(
            &ClientRequest { host: "h".into(), ..ClientRequest::default() },
            KEY.into(),
            limits,
        ).unwrap();
        let mut client_done = false;
        for chunk in chunks(&data, &cuts) {
            match server.receive(&chunk) {
                Ok(Some(request)) => prop_assert!(request.consumed <= chunk.len()),
                Ok(None) => {}
                Err(error) => {
                    let _ = error.response_bytes();
                    let _ = error.to_string();
                }
            }
            if !client_done {
                match client.receive(&chunk) {
                    Ok(None) => {}
                    Ok(Some(accepted)) => {
                        prop_assert!(accepted.consumed <= chunk.len());
                        client_done = true;
                    }
                    Err(error) => {
                        let _ = error.to_string();
                        client_done = true;
                    }
                }
            }
        }
        if !client_done {
            let _ = client.take_partial_response();
            let _ = client.receive_eof();
        }
    }

    #[test]
    fn lenient_new_never_injects_headers(
        host in "[a-z]{1,10}",
        resource in "[ -~\r\n\t]{0,20}",
        origin in "[ -~\r\n\t]{0,20}",
        extra in proptest::collection::vec(("[ -~\r\n]{0,8}", "[ -~\r\n\t]{0,12}"), 0..4),
    ) {
        let request = ClientRequest {
            host,
            resource,
            origin: Some(origin),
            headers: extra.clone(),
            ..ClientRequest::default()
        };
        let client = ClientHandshake::new(&request, KEY.into(), HeadLimits::default());
        let mut server = ServerHandshake::new(HeadLimits::default());
        let parsed = server.receive(client.request_bytes()).unwrap().unwrap();
        prop_assert_eq!(parsed.consumed, client.request_bytes().len());
        let kept = extra
            .iter()
            .filter(|(name, _)| is_token(name) && !RESERVED.iter().any(|r| name.eq_ignore_ascii_case(r)))
            .count();
        prop_assert_eq!(parsed.headers.len(), 6 + kept);
        prop_assert!(parsed.path.starts_with('/'));
        // The strict constructor agrees whenever nothing needed repairing.
        if request.validate().is_ok() {
            let strict = ClientHandshake::try_new(&request, KEY.into(), HeadLimits::default()).unwrap();
            prop_assert_eq!(strict.request_bytes(), client.request_bytes());
        }
    }
}
