//! UTF-8 checks for text messages. The one module of this crate with `unsafe`: turning bytes
//! that were just validated (by simdutf8, several times faster than the standard library's
//! check on non-ASCII text) into a `String` without validating them a second time.
#![allow(unsafe_code)]

/// Length of the longest prefix of `bytes` that is valid UTF-8 or may become valid once more
/// bytes arrive; `None` if `bytes` contains an invalid sequence. Used on text still arriving,
/// so that invalid text fails fast.
pub(crate) fn valid_prefix(bytes: &[u8]) -> Option<usize> {
    match simdutf8::compat::from_utf8(bytes) {
        Ok(_) => Some(bytes.len()),
        Err(e) if e.error_len().is_none() => Some(e.valid_up_to()),
        Err(_) => None,
    }
}

/// The bytes as a `String` if they are valid UTF-8. `checked` bytes at the start are known
/// to be valid already (from [`valid_prefix`]) and are not checked again.
pub(crate) fn into_string(bytes: Vec<u8>, checked: usize) -> Result<String, Vec<u8>> {
    let start = checked.min(bytes.len());
    // A character split at `start` was left out of `checked` by `valid_prefix`, so the rest
    // begins on a character boundary and can be validated on its own.
    if simdutf8::basic::from_utf8(&bytes[start..]).is_err() {
        return Err(bytes);
    }
    // SAFETY: `bytes[..start]` was validated by `valid_prefix` (which never counts an
    // incomplete trailing sequence) and `bytes[start..]` just now by simdutf8; a
    // concatenation of valid UTF-8 strings is valid UTF-8.
    Ok(unsafe { String::from_utf8_unchecked(bytes) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn agrees_with_the_standard_library(bytes in proptest::collection::vec(any::<u8>(), 0..64), cut in 0usize..64) {
            let std_ok = std::str::from_utf8(&bytes).is_ok();
            let cut = cut.min(bytes.len());
            // Check a prefix incrementally, as the connection does, then the whole.
            let checked = valid_prefix(&bytes[..cut]).unwrap_or(0);
            let ours = into_string(bytes.clone(), checked);
            prop_assert_eq!(ours.is_ok(), std_ok);
            if let Ok(s) = ours {
                prop_assert_eq!(s.as_bytes(), &bytes[..]);
            }
        }

        #[test]
        fn valid_text_split_anywhere(text in "\\PC{0,40}", cut in 0usize..200) {
            let bytes = text.as_bytes();
            let cut = cut.min(bytes.len());
            let checked = valid_prefix(&bytes[..cut]).unwrap();
            prop_assert!(checked <= cut && cut - checked <= 3);
            prop_assert_eq!(into_string(bytes.to_vec(), checked).unwrap(), text);
        }
    }

    #[test]
    fn invalid_sequences() {
        assert_eq!(valid_prefix(b"ab\xE2\x82"), Some(2));
        assert_eq!(valid_prefix(b"ab\xFF"), None);
        assert_eq!(valid_prefix(b"\xED\xA0\x80"), None); // surrogate
        assert!(into_string(b"ab\xE2\x82".to_vec(), 2).is_err());
        assert!(into_string(b"\xC0\xAF".to_vec(), 0).is_err()); // overlong
    }
}
