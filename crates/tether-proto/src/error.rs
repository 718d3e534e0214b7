//! Errors of the protocol core.

use std::fmt;

use crate::frame::close_code;

/// A violation of RFC 6455 (or of a configured limit) detected while receiving.
///
/// When the core detects one, it fails the connection: it queues a Close frame with
/// [`ProtocolError::close_code`] and a short reason (never internal details), reports the error
/// once as [`Event::Error`](crate::Event::Error), and asks the driver to close the transport.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// RSV1, RSV2 or RSV3 set without an extension that defines it.
    ReservedBits,
    /// An opcode reserved by RFC 6455 (0x3–0x7, 0xB–0xF).
    UnknownOpcode(u8),
    /// A control frame without FIN.
    FragmentedControl,
    /// A control frame with more than 125 bytes of payload.
    ControlTooLong,
    /// A client sent an unmasked frame (servers require masking).
    UnmaskedFrame,
    /// A server sent a masked frame (clients forbid masking).
    MaskedFrame,
    /// A payload length not in its shortest encoding.
    NonMinimalLength,
    /// A 64-bit payload length with its most significant bit set.
    LengthOverflow,
    /// A continuation frame with no message in progress.
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message is in progress.
    ExpectedContinuation,
    /// A Close frame with a code that may not be sent on the wire.
    InvalidCloseCode(u16),
    /// A Close frame with a one-byte payload.
    InvalidClosePayload,
    /// A text message or close reason that is not valid UTF-8.
    InvalidUtf8,
    /// A frame longer than the configured maximum frame size.
    FrameTooLarge {
        /// The configured limit in bytes.
        max: usize,
    },
    /// A message longer than the configured maximum message size (after decompression).
    MessageTooLarge {
        /// The configured limit in bytes.
        max: usize,
    },
    /// A message split into more fragments than the configured maximum.
    TooManyFragments {
        /// The configured limit.
        max: usize,
    },
    /// A compressed message could not be inflated.
    Compression,
    /// No Pong arrived within the ping timeout after a keepalive Ping.
    KeepaliveTimeout,
    /// The driver's budget for incoming message bytes (shared by many connections) is used
    /// up; the connection fails with 1013 ("try again later") so that the peer backs off.
    /// Never detected by the core itself: a driver reports it with
    /// [`Connection::fail_with`](crate::Connection::fail_with).
    Overloaded,
    /// The driver broke the core's contract (a read callback removed received bytes); the
    /// message in progress is lost. Never caused by the peer.
    Internal,
}

impl ProtocolError {
    /// The close code this error is reported with: 1002, 1007, 1009, 1011 or 1013.
    pub fn close_code(&self) -> u16 {
        match self {
            Self::InvalidUtf8 => close_code::INVALID_PAYLOAD,
            Self::FrameTooLarge { .. }
            | Self::MessageTooLarge { .. }
            | Self::TooManyFragments { .. } => close_code::TOO_BIG,
            Self::KeepaliveTimeout | Self::Internal => close_code::INTERNAL_ERROR,
            Self::Overloaded => close_code::TRY_AGAIN_LATER,
            _ => close_code::PROTOCOL_ERROR,
        }
    }

    /// The reason sent in the Close frame: short, and free of internal details.
    pub fn close_reason(&self) -> &'static str {
        match self {
            Self::InvalidUtf8 => "invalid UTF-8",
            Self::FrameTooLarge { .. } => "frame too big",
            Self::MessageTooLarge { .. } => "message too big",
            Self::TooManyFragments { .. } => "too many fragments",
            Self::KeepaliveTimeout => "keepalive ping timeout",
            Self::Compression => "invalid compressed data",
            Self::Internal => "internal error",
            Self::Overloaded => "try again later",
            _ => "protocol error",
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ReservedBits => f.write_str("reserved bits set without a negotiated extension"),
            Self::UnknownOpcode(op) => write!(f, "reserved opcode {op:#x}"),
            Self::FragmentedControl => f.write_str("fragmented control frame"),
            Self::ControlTooLong => f.write_str("control frame payload over 125 bytes"),
            Self::UnmaskedFrame => f.write_str("client frame is not masked"),
            Self::MaskedFrame => f.write_str("server frame is masked"),
            Self::NonMinimalLength => f.write_str("payload length not in shortest form"),
            Self::LengthOverflow => f.write_str("payload length has its high bit set"),
            Self::UnexpectedContinuation => {
                f.write_str("continuation frame without a message in progress")
            }
            Self::ExpectedContinuation => {
                f.write_str("new data frame while a fragmented message is in progress")
            }
            Self::InvalidCloseCode(c) => write!(f, "invalid close code {c}"),
            Self::InvalidClosePayload => f.write_str("close frame with a one-byte payload"),
            Self::InvalidUtf8 => f.write_str("invalid UTF-8 in text"),
            Self::FrameTooLarge { max } => write!(f, "frame exceeds the limit of {max} bytes"),
            Self::MessageTooLarge { max } => {
                write!(f, "message exceeds the limit of {max} bytes")
            }
            Self::TooManyFragments { max } => {
                write!(f, "message exceeds the limit of {max} fragments")
            }
            Self::Compression => f.write_str("invalid permessage-deflate data"),
            Self::KeepaliveTimeout => f.write_str("no pong received within the ping timeout"),
            Self::Internal => f.write_str("internal error: the driver removed received bytes"),
            Self::Overloaded => f.write_str("the budget for incoming message bytes is used up"),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// Why a command (send, ping, close) was refused. Nothing was queued.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// A Close frame was already sent or the connection failed: no more frames may be sent.
    Closed,
    /// Ping and Pong payloads are limited to 125 bytes.
    ControlTooLong,
    /// The close code may not be sent (valid: 1000–1003, 1007–1014, 3000–4999).
    InvalidCloseCode(u16),
    /// A close reason is limited to 123 bytes.
    ReasonTooLong,
    /// Only text and binary messages can be sent as messages.
    NotData,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Closed => f.write_str("the connection is closing or closed"),
            Self::ControlTooLong => f.write_str("control frame payload over 125 bytes"),
            Self::InvalidCloseCode(c) => write!(f, "close code {c} may not be sent"),
            Self::ReasonTooLong => f.write_str("close reason over 123 bytes"),
            Self::NotData => f.write_str("only text and binary messages can be sent"),
        }
    }
}

impl std::error::Error for SendError {}
