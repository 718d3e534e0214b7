//! Masking of frame payloads (RFC 6455 section 5.3).
//!
//! The hot loop works on eight bytes at a time through `u64` XORs, which the compiler turns
//! into SIMD on targets that have it; no `unsafe` is needed for that.

/// XORs `buf` with the 4-byte masking key `key`, as if `buf` started `offset` bytes into the
/// masked payload (only `offset % 4` matters). Applying it twice restores the input.
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let r = offset & 3;
    let key = [
        key[r],
        key[(r + 1) & 3],
        key[(r + 2) & 3],
        key[r.wrapping_add(3) & 3],
    ];
    if buf.len() < 16 {
        apply_mask_scalar(buf, key);
        return;
    }
    let word = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(32);
    for chunk in &mut chunks {
        for lane in chunk.chunks_exact_mut(8) {
            let mut b = [0u8; 8];
            b.copy_from_slice(lane);
            lane.copy_from_slice(&(u64::from_ne_bytes(b) ^ word).to_ne_bytes());
        }
    }
    let rest = chunks.into_remainder();
    let mut lanes = rest.chunks_exact_mut(8);
    for lane in &mut lanes {
        let mut b = [0u8; 8];
        b.copy_from_slice(lane);
        lane.copy_from_slice(&(u64::from_ne_bytes(b) ^ word).to_ne_bytes());
    }
    // Every chunk so far was a multiple of 4 bytes long, so the key phase is unchanged.
    apply_mask_scalar(lanes.into_remainder(), key);
}

/// The byte-at-a-time reference implementation, also used for short tails.
#[inline]
pub fn apply_mask_scalar(buf: &mut [u8], key: [u8; 4]) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reference(buf: &[u8], key: [u8; 4], offset: usize) -> Vec<u8> {
        buf.iter()
            .enumerate()
            .map(|(i, b)| b ^ key[(i + offset) % 4])
            .collect()
    }

    #[test]
    fn rfc_example_hello() {
        // RFC 6455 section 5.7: "Hello" masked with 37 fa 21 3d.
        let mut data = *b"Hello";
        apply_mask(&mut data, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(data, [0x7f, 0x9f, 0x4d, 0x51, 0x58]);
    }

    proptest! {
        #[test]
        fn matches_reference(data in proptest::collection::vec(any::<u8>(), 0..300), key: [u8; 4], offset in 0usize..8) {
            let mut fast = data.clone();
            apply_mask(&mut fast, key, offset);
            prop_assert_eq!(fast, reference(&data, key, offset));
        }

        #[test]
        fn split_masking_equals_whole(data in proptest::collection::vec(any::<u8>(), 0..200), key: [u8; 4], cut in 0usize..200) {
            let cut = cut.min(data.len());
            let mut whole = data.clone();
            apply_mask(&mut whole, key, 0);
            let mut parts = data.clone();
            let (a, b) = parts.split_at_mut(cut);
            apply_mask(a, key, 0);
            apply_mask(b, key, cut);
            prop_assert_eq!(whole, parts);
        }
    }
}
