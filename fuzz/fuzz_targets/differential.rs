//! Differential checks of the two hot loops of the receive path against plain references:
//!
//! * masking: `apply_mask` (eight bytes at a time) against a byte-at-a-time XOR written here
//!   and against `apply_mask_scalar`, whole and over any split of the buffer into pieces
//!   masked one after another with the running offset, at any alignment;
//! * UTF-8: the incremental check (`valid_prefix` per piece, `into_text` at the end, as the
//!   connection runs it) against `std::str::from_utf8` of the whole, over any split; and the
//!   same through a real `Connection`, the text cut into frames (optionally compressed) and
//!   the frames into chunks, where an invalid sequence must fail the connection with 1007 as
//!   soon as the bytes that make it invalid have arrived, and valid text must arrive intact.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;

mod input;
use input::Input;
use tether_proto::bytes::BytesMut;
use tether_proto::frame::{encode_header, MAX_HEADER_LEN};
use tether_proto::fuzz_internals::{into_text, valid_prefix};
use tether_proto::mask::{apply_mask, apply_mask_scalar};
use tether_proto::{
    Config, Connection, DeflateConfig, DeflateParams, Event, OpCode, ProtocolError, Role,
};

/// What only this target reads from the input.
impl Input<'_> {
    /// Up to eight piece sizes, to be fitted to a length with [`fit`].
    fn sizes(&mut self) -> Vec<usize> {
        let pieces = usize::from(self.byte() % 8);
        (0..pieces)
            .map(|_| match self.byte() {
                // Small pieces are the interesting ones: most end inside a character.
                b @ 0..=191 => usize::from(b % 8),
                b => usize::from(b & 63) * 64 + usize::from(self.byte()),
            })
            .collect()
    }

    /// The rest of the input between two runs of up to 16 KiB of valid text (ASCII and
    /// characters of every width), so that what the input decides can lie on either side of
    /// the 8 KiB at which large frames are read in place.
    fn padded_rest(&mut self) -> Vec<u8> {
        let mut pad = || {
            let units = match self.byte() {
                b @ 128.. => usize::from(b - 127) * 12,
                _ => 0,
            };
            "ab\u{e9}\u{2603}\u{1D11E}".repeat(units).into_bytes()
        };
        let (mut out, after) = (pad(), pad());
        out.extend_from_slice(self.rest());
        out.extend_from_slice(&after);
        out
    }
}

/// Bytes in a failure message: the length, and the bytes themselves unless there are many.
struct Short<'a>(&'a [u8]);

impl std::fmt::Display for Short<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.0;
        if b.len() <= 96 {
            write!(f, "{b:?} ({} bytes)", b.len())
        } else {
            let tail = &b[b.len() - 32..];
            write!(f, "{:?} .. {tail:?} ({} bytes)", &b[..32], b.len())
        }
    }
}

/// The sizes, cut short where they pass `total`, and a last piece with whatever is left:
/// pieces that add up to `total` exactly.
fn fit(sizes: &[usize], total: usize) -> Vec<usize> {
    let mut left = total;
    let mut out: Vec<usize> = sizes
        .iter()
        .map(|&s| {
            let s = s.min(left);
            left -= s;
            s
        })
        .collect();
    out.push(left);
    out
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input { data };
    match input.byte() % 3 {
        0 => masking(&mut input),
        1 => utf8_pieces(&mut input),
        _ => utf8_connection(&mut input),
    }
});

/// What masking must produce: byte `i` of a piece that starts `offset` bytes into the payload
/// is XORed with key byte `(offset + i) % 4`.
fn reference_mask(buf: &[u8], key: [u8; 4], offset: usize) -> Vec<u8> {
    buf.iter()
        .enumerate()
        .map(|(i, b)| b ^ key[(offset % 4 + i % 4) % 4])
        .collect()
}

fn masking(input: &mut Input<'_>) {
    let key = [input.byte(), input.byte(), input.byte(), input.byte()];
    // Any offset, huge ones included: only its remainder mod 4 may matter (and a running
    // offset that wraps past usize::MAX stays in phase, 2^64 being a multiple of 4).
    let offset = match input.byte() {
        b @ 0..=127 => usize::from(b),
        b => usize::MAX - usize::from(b & 7),
    };
    let align = usize::from(input.byte() % 8);
    let sizes = input.sizes();
    let payload = input.rest();
    let expected = reference_mask(payload, key, offset);

    // Whole, at an arbitrary alignment in memory.
    let mut storage = vec![0u8; align + payload.len()];
    let buf = &mut storage[align..];
    buf.copy_from_slice(payload);
    apply_mask(buf, key, offset);
    assert_eq!(buf, &expected[..], "apply_mask, offset {offset}");

    // The scalar loop takes the key already turned to the offset's phase.
    let r = offset % 4;
    let turned = [key[r], key[(r + 1) % 4], key[(r + 2) % 4], key[(r + 3) % 4]];
    let mut scalar = payload.to_vec();
    apply_mask_scalar(&mut scalar, turned);
    assert_eq!(scalar, expected, "apply_mask_scalar");

    // Masking twice restores the input.
    apply_mask(buf, key, offset);
    assert_eq!(buf, payload, "apply_mask is not an involution");

    // Piece by piece with the running offset, as a frame's payload arrives in reads.
    let mut at = 0;
    let mut running = offset;
    for n in fit(&sizes, buf.len()) {
        apply_mask(&mut buf[at..at + n], key, running);
        at += n;
        running = running.wrapping_add(n);
    }
    assert_eq!(buf, &expected[..], "apply_mask over pieces");
}

/// What `std` says of a prefix of text still arriving: `Ok(n)` when the first `n` bytes
/// are valid and the rest (at most 3 bytes) may still become a character, `Err` when it
/// holds an invalid sequence whatever follows.
fn std_prefix(bytes: &[u8]) -> Result<usize, ()> {
    match std::str::from_utf8(bytes) {
        Ok(_) => Ok(bytes.len()),
        Err(e) if e.error_len().is_none() => Ok(e.valid_up_to()),
        Err(_) => Err(()),
    }
}

fn utf8_pieces(input: &mut Input<'_>) {
    let sizes = input.sizes();
    let bytes = &input.padded_rest()[..];
    let sizes = fit(&sizes, bytes.len());
    let whole_ok = std::str::from_utf8(bytes).is_ok();

    // `valid_prefix` alone, on the whole.
    assert_eq!(
        valid_prefix(bytes).ok_or(()),
        std_prefix(bytes),
        "valid_prefix({})",
        Short(bytes)
    );

    // As the connection runs it: bytes arrive in pieces, each check resumes where the last
    // complete character ended, and the whole is confirmed at the end of the message.
    let mut buf = Vec::with_capacity(bytes.len());
    let mut checked = 0;
    let mut at = 0;
    for size in sizes {
        buf.extend_from_slice(&bytes[at..at + size]);
        at += size;
        let ours = valid_prefix(&buf[checked..]).map(|n| checked + n);
        match (ours, std_prefix(&buf)) {
            (Some(n), Ok(m)) => {
                assert_eq!(n, m, "valid prefix of {} after {checked}", Short(&buf));
                assert!(buf.len() - n <= 3, "more than a character left unchecked");
                checked = n;
            }
            // Failing fast: exactly when the bytes so far cannot become valid.
            (None, Err(())) => {
                assert!(!whole_ok);
                return;
            }
            (ours, theirs) => panic!("{}: incremental {ours:?}, std {theirs:?}", Short(&buf)),
        }
    }
    assert_eq!(at, bytes.len());
    let text = into_text(buf, checked);
    assert_eq!(
        text.is_ok(),
        whole_ok,
        "into_text({}, {checked})",
        Short(bytes)
    );
    if let Ok(text) = text {
        assert_eq!(text.as_bytes(), bytes);
        assert_eq!(text.as_str(), std::str::from_utf8(bytes).unwrap());
    }
}

/// A frame as the peer would send it to `receiver` (masked when the receiver is a server).
fn push_frame(wire: &mut Vec<u8>, fin: bool, b0_bits: u8, payload: &[u8], mask: Option<[u8; 4]>) {
    let mut head = [0u8; MAX_HEADER_LEN];
    // The opcode and RSV1 are patched in below; encode with a placeholder opcode.
    let n = encode_header(
        &mut head,
        fin,
        false,
        OpCode::Continuation,
        mask,
        payload.len() as u64,
    );
    head[0] |= b0_bits;
    wire.extend_from_slice(&head[..n]);
    let start = wire.len();
    wire.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut wire[start..], key, 0);
    }
}

/// The payload of the single unmasked frame `frame` (as a server writes it), and its first
/// byte.
fn frame_payload(frame: &[u8]) -> (u8, &[u8]) {
    let head = match frame[1] & 0x7F {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    assert_eq!(frame[1] & 0x80, 0, "a server's frame is masked");
    (frame[0], &frame[head..])
}

fn utf8_connection(input: &mut Input<'_>) {
    let flags = input.byte();
    let role = if flags & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let compress = flags & 2 != 0;
    let delivery = (flags >> 2) % 3;
    let key = [input.byte(), input.byte(), input.byte(), input.byte()];
    let window = 8 + input.byte() % 8;
    let chunk = usize::from(input.u16() % 600).max(1);
    let frag_sizes = input.sizes();
    let text = &input.padded_rest()[..];
    let whole_ok = std::str::from_utf8(text).is_ok();

    let now = Instant::now();
    let mut conn = Connection::new(role, Config::default(), now);
    let mask = (role == Role::Server).then_some(key);

    // The payload to put in frames: the text itself, or its compressed form (made by a
    // server-role connection, whose frames are unmasked, as a binary message and sent on as
    // text: the receiver cannot tell, and must still check the inflated bytes).
    let params = DeflateParams {
        server_no_context_takeover: true,
        client_no_context_takeover: true,
        server_max_window_bits: window,
        client_max_window_bits: window,
    };
    let mut compressed_payload = None;
    if compress {
        conn.enable_deflate(params, &DeflateConfig::default());
        let mut helper = Connection::new(Role::Server, Config::default(), now);
        helper.enable_deflate(params, &DeflateConfig::default());
        helper
            .send_message(OpCode::Binary, text.to_vec().into(), true)
            .unwrap();
        let frame = helper.take_transmit();
        let (b0, payload) = frame_payload(&frame);
        if b0 & 0x40 != 0 {
            compressed_payload = Some(payload.to_vec());
        }
    }
    let (payload, rsv1) = match &compressed_payload {
        Some(p) => (&p[..], 0x40),
        None => (text, 0),
    };

    // The frames, and for each wire byte how many text bytes have arrived once it has (only
    // meaningful uncompressed, where payload bytes are text bytes).
    let mut wire = Vec::new();
    let mut text_at = Vec::new();
    let sizes = fit(&frag_sizes, payload.len());
    let last = sizes.len() - 1;
    let mut at = 0;
    for (i, size) in sizes.iter().copied().enumerate() {
        let bits = if i == 0 {
            OpCode::Text.as_u8() | rsv1
        } else {
            0
        };
        let before = wire.len();
        push_frame(&mut wire, i == last, bits, &payload[at..at + size], mask);
        let head = wire.len() - before - size;
        text_at.extend(std::iter::repeat_n(at, head));
        text_at.extend((1..=size).map(|k| at + k));
        at += size;
    }

    // The shortest prefix of the text that cannot become valid, if any (a prefix that
    // cannot stays so when it grows, so a binary search finds it).
    let first_invalid = std_prefix(text).is_err().then(|| {
        let (mut lo, mut hi) = (0, text.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if std_prefix(&text[..mid]).is_err() {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        lo
    });

    // Deliver chunk by chunk, checking after each that the connection failed exactly when
    // the text so far became invalid.
    let mut failed = false;
    let mut got = None;
    let mut sent = 0;
    while sent < wire.len() {
        let n = chunk.min(wire.len() - sent);
        let piece = &wire[sent..sent + n];
        match delivery {
            0 => conn.receive(piece, now),
            1 => conn.receive_shared(BytesMut::from(piece), now),
            _ => {
                let mut rest = piece;
                while !rest.is_empty() {
                    let read = conn.read_payload_with(now, |buf, max| {
                        let k = max.min(rest.len());
                        buf.extend_from_slice(&rest[..k]);
                        k
                    });
                    match read {
                        Some(k) => rest = &rest[k..],
                        None => {
                            conn.receive(rest, now);
                            rest = &[];
                        }
                    }
                }
            }
        }
        sent += n;
        while let Some(event) = conn.poll_event() {
            match event {
                Event::Error(e) => {
                    assert_eq!(e, ProtocolError::InvalidUtf8, "{}", Short(text));
                    assert_eq!(e.close_code(), 1007);
                    assert!(!failed && got.is_none());
                    failed = true;
                }
                Event::Text(t) => {
                    assert!(!failed && got.is_none());
                    got = Some(t);
                }
                other => panic!("unexpected event {other:?}"),
            }
        }
        if compressed_payload.is_none() && sent < wire.len() {
            let arrived = text_at[sent - 1];
            let definitely_invalid = first_invalid.is_some_and(|p| arrived >= p);
            assert_eq!(
                failed,
                definitely_invalid,
                "after {arrived} bytes of {}",
                Short(text)
            );
        }
        if failed {
            break;
        }
    }
    match got {
        Some(t) => {
            assert!(whole_ok);
            assert_eq!(t.as_bytes(), text);
        }
        None => {
            assert!(failed, "no event for a complete message {}", Short(text));
            assert!(!whole_ok, "valid text {} refused", Short(text));
        }
    }
}
