//! Opening handshake (RFC 6455 section 4), both roles.
