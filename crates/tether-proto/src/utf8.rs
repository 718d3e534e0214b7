//! UTF-8 checks for text messages, and [`Utf8Bytes`]. The one module of this crate with
//! `unsafe`: reading bytes that were validated once (by simdutf8, several times faster than
//! the standard library's check on non-ASCII text) as `str` without validating them again.
#![allow(unsafe_code)]

use bytes::Bytes;

/// Length of the longest prefix of `bytes` that is valid UTF-8 or may become valid once more
/// bytes arrive; `None` if `bytes` contains an invalid sequence. Used on text still arriving,
/// so that invalid text fails fast.
pub fn valid_prefix(bytes: &[u8]) -> Option<usize> {
    match simdutf8::compat::from_utf8(bytes) {
        Ok(_) => Some(bytes.len()),
        Err(e) if e.error_len().is_none() => Some(e.valid_up_to()),
        Err(_) => None,
    }
}

/// The bytes as text if they are valid UTF-8. `checked` bytes at the start are known to be
/// valid already (from [`valid_prefix`]) and are not checked again.
pub fn into_text(bytes: Vec<u8>, checked: usize) -> Result<Utf8Bytes, Vec<u8>> {
    let start = checked.min(bytes.len());
    // A character split at `start` was left out of `checked` by `valid_prefix`, so the rest
    // begins on a character boundary and can be validated on its own.
    if simdutf8::basic::from_utf8(&bytes[start..]).is_err() {
        return Err(bytes);
    }
    // `bytes[..start]` was validated by `valid_prefix` (which never counts an incomplete
    // trailing sequence) and `bytes[start..]` just now by simdutf8; a concatenation of valid
    // UTF-8 strings is valid UTF-8. `Bytes::from(Vec)` keeps the allocation: no copy.
    Ok(Utf8Bytes(Bytes::from(bytes)))
}

/// Text whose bytes are shared, not copied: a [`Bytes`] known to hold valid UTF-8.
///
/// Cloning it, or slicing a received message out of a larger buffer, costs a reference count,
/// not a copy; [`as_str`](Self::as_str) costs nothing (the bytes were validated once, when the
/// value was made). Build one from a `String` or `&'static str` (no copy), from a `&str`
/// (one copy), or from `Bytes` with [`Utf8Bytes::try_from`] (validated).
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Utf8Bytes(Bytes);

impl Utf8Bytes {
    /// Text from a string constant, without copying it.
    pub const fn from_static(text: &'static str) -> Self {
        Self(Bytes::from_static(text.as_bytes()))
    }

    /// The text.
    #[inline]
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor of `Utf8Bytes` validates its bytes or takes them from a
        // `str`/`String`, and the bytes of a `Bytes` never change.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    /// The bytes of the text.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The shared bytes, for code that takes `Bytes` (no copy).
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for the empty text.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::ops::Deref for Utf8Bytes {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Utf8Bytes {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<[u8]> for Utf8Bytes {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl std::borrow::Borrow<str> for Utf8Bytes {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for Utf8Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for Utf8Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<String> for Utf8Bytes {
    fn from(text: String) -> Self {
        Self(Bytes::from(text))
    }
}

impl From<&str> for Utf8Bytes {
    fn from(text: &str) -> Self {
        Self(Bytes::copy_from_slice(text.as_bytes()))
    }
}

impl From<&String> for Utf8Bytes {
    fn from(text: &String) -> Self {
        Self::from(text.as_str())
    }
}

impl From<Utf8Bytes> for Bytes {
    fn from(text: Utf8Bytes) -> Self {
        text.0
    }
}

impl From<Utf8Bytes> for String {
    fn from(text: Utf8Bytes) -> Self {
        text.as_str().to_owned()
    }
}

impl TryFrom<Bytes> for Utf8Bytes {
    type Error = std::str::Utf8Error;
    /// Validates `bytes` (with simdutf8) and keeps them shared.
    fn try_from(bytes: Bytes) -> Result<Self, Self::Error> {
        match simdutf8::basic::from_utf8(&bytes) {
            Ok(_) => Ok(Self(bytes)),
            // The slow check, only to build the standard error type.
            Err(_) => std::str::from_utf8(&bytes).map(|_| Self(bytes.clone())),
        }
    }
}

impl TryFrom<Vec<u8>> for Utf8Bytes {
    type Error = std::string::FromUtf8Error;
    fn try_from(bytes: Vec<u8>) -> Result<Self, Self::Error> {
        String::from_utf8(bytes).map(Self::from)
    }
}

impl PartialEq<str> for Utf8Bytes {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Utf8Bytes {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Utf8Bytes {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<Utf8Bytes> for str {
    fn eq(&self, other: &Utf8Bytes) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Utf8Bytes> for &str {
    fn eq(&self, other: &Utf8Bytes) -> bool {
        *self == other.as_str()
    }
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
            let ours = into_text(bytes.clone(), checked);
            prop_assert_eq!(ours.is_ok(), std_ok);
            if let Ok(s) = ours {
                prop_assert_eq!(s.as_bytes(), &bytes[..]);
                prop_assert_eq!(Utf8Bytes::try_from(Bytes::from(bytes.clone())).unwrap(), s);
            } else {
                prop_assert!(Utf8Bytes::try_from(Bytes::from(bytes.clone())).is_err());
            }
        }

        #[test]
        fn valid_text_split_anywhere(text in "\\PC{0,40}", cut in 0usize..200) {
            let bytes = text.as_bytes();
            let cut = cut.min(bytes.len());
            let checked = valid_prefix(&bytes[..cut]).unwrap();
            prop_assert!(checked <= cut && cut - checked <= 3);
            let got = into_text(bytes.to_vec(), checked).unwrap();
            prop_assert_eq!(got.as_str(), text);
        }
    }

    #[test]
    fn invalid_sequences() {
        assert_eq!(valid_prefix(b"ab\xE2\x82"), Some(2));
        assert_eq!(valid_prefix(b"ab\xFF"), None);
        assert_eq!(valid_prefix(b"\xED\xA0\x80"), None); // surrogate
        assert!(into_text(b"ab\xE2\x82".to_vec(), 2).is_err());
        assert!(into_text(b"\xC0\xAF".to_vec(), 0).is_err()); // overlong
    }
}
