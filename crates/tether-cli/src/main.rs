//! The `tether` command: connect, serve, demo.

fn main() {}
