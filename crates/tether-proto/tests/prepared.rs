//! Messages prepared once for many connections: shared payloads, compressed once per set of
//! deflate parameters, and byte-for-byte what a plain send would have written.

use std::time::Instant;

use tether_proto::{
    Bytes, Config, Connection, DeflateConfig, DeflateParams, Event, OpCode, PreparedMessage, Role,
};

fn events(c: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

/// The parameters a default server agrees on with a client offering `client`.
fn agreed(client: &DeflateConfig) -> DeflateParams {
    DeflateConfig::default()
        .server_accept(&client.client_offer())
        .expect("the default server accepts the offer")
        .1
}

/// A connected pair with permessage-deflate on, compressing at `level` on the server side.
fn deflate_pair(params: DeflateParams, level: u8, now: Instant) -> (Connection, Connection) {
    let mut server = Connection::new(Role::Server, Config::default(), now);
    let mut client = Connection::new(Role::Client, Config::default(), now);
    let server_settings = DeflateConfig {
        level,
        ..DeflateConfig::default()
    };
    server.enable_deflate(params, &server_settings);
    client.enable_deflate(params, &DeflateConfig::default());
    (server, client)
}

fn deliver(from: &mut Connection, to: &mut Connection, now: Instant) -> Vec<Event> {
    let bytes = from.take_transmit();
    to.receive(&bytes, now);
    events(to)
}

fn json_like(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "{{\"id\":{i},\"price\":{}.25,\"side\":\"buy\"}}",
                100 + i % 7
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn prepared_message_writes_the_same_bytes_as_a_plain_send() {
    let now = Instant::now();
    for payload in [b"small".to_vec(), vec![42u8; 20_000]] {
        let mut plain = Connection::new(Role::Server, Config::default(), now);
        let mut prepared = Connection::new(Role::Server, Config::default(), now);
        plain.send_binary(&payload).unwrap();
        let message = PreparedMessage::binary(payload.clone());
        prepared.send_prepared(&message, true).unwrap();
        assert_eq!(plain.take_transmit(), prepared.take_transmit());
    }
}

#[test]
fn large_prepared_payload_is_shared_by_every_server_connection() {
    let now = Instant::now();
    let message = PreparedMessage::binary(vec![9u8; 64 << 10]);
    let addr = message.payload().as_ptr();
    let mut conns: Vec<Connection> = (0..3)
        .map(|_| Connection::new(Role::Server, Config::default(), now))
        .collect();
    for c in &mut conns {
        c.send_prepared(&message, true).unwrap();
        let mut parts = [std::io::IoSlice::new(&[]); 4];
        assert_eq!(
            c.transmit_vectored(&mut parts),
            2,
            "header, then the payload"
        );
        assert_eq!(parts[1].as_ptr(), addr, "no connection copied the payload");
    }
}

#[test]
fn client_masks_a_copy_when_the_payload_is_shared() {
    let now = Instant::now();
    let payload = Bytes::from(vec![1u8; 32 << 10]);
    let message = PreparedMessage::binary(payload.clone());
    let mut client = Connection::new(Role::Client, Config::default(), now);
    let mut server = Connection::new(Role::Server, Config::default(), now);
    client.send_prepared(&message, true).unwrap();
    // Masking happened on a copy: the caller's bytes are untouched.
    assert!(payload.iter().all(|&b| b == 1));
    assert_eq!(
        deliver(&mut client, &mut server, now),
        vec![Event::Binary(payload.clone())]
    );
    // A payload nobody else holds is masked in place and still arrives intact.
    client
        .send_message(OpCode::Binary, Bytes::from(vec![2u8; 32 << 10]), false)
        .unwrap();
    assert_eq!(
        deliver(&mut client, &mut server, now),
        vec![Event::Binary(vec![2u8; 32 << 10].into())]
    );
}

#[test]
fn broadcast_compresses_once_for_connections_that_agreed_on_the_same_parameters() {
    let now = Instant::now();
    let text = json_like(40);
    let message = PreparedMessage::text(text.clone());
    let params = agreed(&DeflateConfig::default());
    let mut wire = Vec::new();
    for _ in 0..4 {
        let (mut server, mut client) = deflate_pair(params, 6, now);
        server.send_prepared(&message, true).unwrap();
        let bytes = server.take_transmit();
        assert_eq!(bytes[0] & 0x40, 0x40, "RSV1: the frame is compressed");
        assert!(bytes.len() < text.len() / 2, "{} bytes", bytes.len());
        client.receive(&bytes, now);
        assert_eq!(events(&mut client), vec![Event::Text(text.clone().into())]);
        wire.push(bytes);
    }
    assert_eq!(
        message.compressed_forms(),
        1,
        "compressed once for all four"
    );
    assert!(wire.windows(2).all(|w| w[0] == w[1]));

    // Another window size, or another level, is another compressed form.
    let small_window = agreed(&DeflateConfig {
        server_max_window_bits: 10,
        ..DeflateConfig::default()
    });
    assert_ne!(small_window, params);
    for (params, level) in [(small_window, 6), (params, 1), (small_window, 6)] {
        let (mut server, mut client) = deflate_pair(params, level, now);
        server.send_prepared(&message, true).unwrap();
        assert_eq!(
            deliver(&mut server, &mut client, now),
            vec![Event::Text(text.clone().into())]
        );
    }
    assert_eq!(message.compressed_forms(), 3);
}

#[test]
fn prepared_message_sent_uncompressed_on_request_or_without_deflate() {
    let now = Instant::now();
    let text = json_like(10);
    let message = PreparedMessage::text(text.clone());
    let (mut server, mut client) = deflate_pair(agreed(&DeflateConfig::default()), 6, now);
    server.send_prepared(&message, false).unwrap();
    let bytes = server.take_transmit();
    assert_eq!(bytes[0], 0x81, "FIN + text, RSV1 clear");
    client.receive(&bytes, now);
    assert_eq!(events(&mut client), vec![Event::Text(text.clone().into())]);
    assert_eq!(message.compressed_forms(), 0);
}

#[test]
fn with_context_takeover_each_connection_compresses_for_itself() {
    let now = Instant::now();
    let takeover = DeflateConfig {
        server_no_context_takeover: false,
        client_no_context_takeover: false,
        ..DeflateConfig::default()
    };
    let params = takeover
        .server_accept(&takeover.client_offer())
        .expect("accepted")
        .1;
    assert!(!params.server_no_context_takeover);
    let text = json_like(20);
    let message = PreparedMessage::text(text.clone());
    let mut server = Connection::new(Role::Server, Config::default(), now);
    let mut client = Connection::new(Role::Client, Config::default(), now);
    server.enable_deflate(params, &takeover);
    client.enable_deflate(params, &takeover);
    for _ in 0..3 {
        server.send_prepared(&message, true).unwrap();
    }
    let want = vec![Event::Text(text.clone().into()); 3];
    assert_eq!(deliver(&mut server, &mut client, now), want);
    assert_eq!(message.compressed_forms(), 0, "nothing shared to cache");
}

#[test]
fn prepared_messages_are_refused_after_close() {
    let now = Instant::now();
    let mut server = Connection::new(Role::Server, Config::default(), now);
    server.close(1000, "", now).unwrap();
    assert!(server
        .send_prepared(&PreparedMessage::text("late"), true)
        .is_err());
}

#[test]
fn a_message_sent_in_two_parts_arrives_as_one_in_either_direction() {
    let now = Instant::now();
    let params = agreed(&DeflateConfig::default());
    for size in [0usize, 1, 125, 126, 4000, 9000, 70_000] {
        let payload = Bytes::from(json_like(size / 20 + 1).into_bytes()[..size].to_vec());
        let mut want = vec![0x00];
        want.extend_from_slice(&payload);
        for compress in [false, true] {
            let (mut server, mut client) = deflate_pair(params, 6, now);
            // Held elsewhere too, so masking must not change it in place.
            let kept = payload.clone();
            client
                .send_message_prefixed(OpCode::Binary, &[0x00], payload.clone(), compress)
                .unwrap();
            server
                .send_message_prefixed(OpCode::Binary, &[0x00], payload.clone(), compress)
                .unwrap();
            for events in [
                deliver(&mut client, &mut server, now),
                deliver(&mut server, &mut client, now),
            ] {
                match events.as_slice() {
                    [Event::Binary(got)] => {
                        assert_eq!(&got[..], &want[..], "{size} bytes, compress {compress}")
                    }
                    other => panic!("{size} bytes: {other:?}"),
                }
            }
            assert_eq!(kept, payload, "the shared payload is untouched");
        }
    }
}
