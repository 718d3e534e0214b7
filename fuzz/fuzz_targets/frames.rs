//! Arbitrary bytes, in arbitrary chunks, into a connection of either role, with and without
//! permessage-deflate: never a panic, and every failure carries a close code the RFC allows.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tether_proto::{Config, Connection, DeflateConfig, DeflateParams, Event, Role};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let role = if flags & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let now = Instant::now();
    let config = Config::default()
        .max_message_size(1 << 16)
        .max_fragments(64);
    let mut conn = Connection::new(role, config, now);
    if flags & 2 != 0 {
        let bits = 9 + (flags >> 4) % 7;
        let params = DeflateParams {
            server_no_context_takeover: flags & 4 != 0,
            client_no_context_takeover: flags & 8 != 0,
            server_max_window_bits: bits,
            client_max_window_bits: bits,
        };
        conn.enable_deflate(params, &DeflateConfig::default());
    }
    let chunk = usize::from(flags >> 2).max(1);
    for (i, piece) in rest.chunks(chunk).enumerate() {
        conn.receive(piece, now + Duration::from_millis(i as u64));
        while let Some(event) = conn.poll_event() {
            if let Event::Error(e) = event {
                assert!([1002, 1007, 1009, 1011].contains(&e.close_code()));
            }
        }
        conn.take_transmit();
    }
    conn.handle_timeout(now + Duration::from_secs(3600));
    conn.receive_eof(now + Duration::from_secs(3600));
});
