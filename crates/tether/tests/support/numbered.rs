//! Numbered test messages: message `n` of a side is `{side}{n}`, text for odd numbers and
//! binary for even ones, so that a test checks order, count and kind at once.

use tether::Message;

/// Message `n` of a side: text for odd numbers, binary for even ones.
pub(crate) fn message(side: char, n: u64) -> Message {
    let text = format!("{side}{n}");
    if n % 2 == 1 {
        Message::text(text)
    } else {
        Message::binary(text.into_bytes())
    }
}

/// The number of a message from `side`, checking its kind.
pub(crate) fn number(side: char, msg: &Message) -> u64 {
    let text = std::str::from_utf8(msg.as_bytes()).unwrap();
    let n: u64 = text
        .strip_prefix(side)
        .unwrap_or_else(|| panic!("message {text:?} is not from {side}"))
        .parse()
        .unwrap();
    assert_eq!(
        msg.is_text(),
        n % 2 == 1,
        "message {n} arrived as the wrong kind"
    );
    n
}
