//! Arbitrary bytes as an HTTP request to a server and as a response to a client.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_proto::handshake::{ClientHandshake, ClientRequest, HeadLimits, ServerHandshake};

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(1, |b| usize::from(*b).max(1));
    let mut server = ServerHandshake::new(HeadLimits::default());
    for piece in data.chunks(split) {
        match server.receive(piece) {
            Ok(None) => {}
            Ok(Some(_)) => break,
            Err(e) => {
                assert!(
                    [400, 405, 414, 426, 431].contains(&e.status),
                    "{}",
                    e.status
                );
                let _ = e.response_bytes();
                break;
            }
        }
    }
    let request = ClientRequest {
        host: "example.com".into(),
        resource: "/".into(),
        subprotocols: vec!["chat".into()],
        extensions: Some("permessage-deflate".into()),
        ..ClientRequest::default()
    };
    let mut client = ClientHandshake::new(
        &request,
        "dGhlIHNhbXBsZSBub25jZQ==".into(),
        HeadLimits::default(),
    );
    for piece in data.chunks(split) {
        match client.receive(piece) {
            Ok(None) => {}
            Ok(Some(_)) | Err(_) => return,
        }
    }
    let _ = client.receive_eof();
});
