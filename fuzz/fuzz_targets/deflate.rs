//! Arbitrary extension headers through both sides of permessage-deflate negotiation; an
//! accepted offer must produce a response the client side accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_proto::DeflateConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for config in [
        DeflateConfig::default(),
        DeflateConfig::low_memory(),
        DeflateConfig::best_compression(),
    ] {
        let _ = config.client_accept(text);
        if let Some((response, params)) = config.server_accept(text) {
            assert!(response.starts_with("permessage-deflate"));
            assert!((8..=15).contains(&params.server_max_window_bits));
            assert!((8..=15).contains(&params.client_max_window_bits));
            // The response must be one the offering client accepts, with the same parameters.
            // A client that asked for nothing and allows any window accepts every valid
            // answer, so it stands in for whichever client made this offer.
            let client = DeflateConfig {
                server_no_context_takeover: false,
                client_no_context_takeover: false,
                server_max_window_bits: 15,
                client_max_window_bits: 15,
                ..DeflateConfig::default()
            };
            assert_eq!(client.client_accept(&response), Ok(params), "{response}");
        }
    }
});
