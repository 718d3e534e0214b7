//! The `tether` command: `connect` (a WebSocket client for people and scripts), `serve` (an
//! echo or broadcast server) and `demo` (the reconnect policy at work, offline).
//!
//! Exit status: 0 on success, 1 for a fatal connection error, 2 for a usage error.
#![forbid(unsafe_code)]

mod args;
mod connect;
mod demo;
mod input;
mod output;
mod resume;
mod serve;

use clap::Parser;

use crate::args::{Cli, Command};

/// Exit status: success.
const EXIT_OK: i32 = 0;
/// Exit status: a fatal connection error, or `--max-attempts` exhausted.
const EXIT_FATAL: i32 = 1;
/// Exit status: bad flags or arguments; nothing was attempted.
const EXIT_USAGE: i32 = 2;
/// Exit status: interrupted by Ctrl-C (128 + SIGINT, as shells report it).
const EXIT_INTERRUPTED: i32 = 130;

fn main() {
    // clap exits with 2 on bad flags, and with 0 after --help and --version.
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tether: cannot start the async runtime: {e}");
            std::process::exit(EXIT_FATAL);
        }
    };
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Connect(args) => connect::run(*args).await,
            Command::Serve(args) => serve::run(args).await,
            Command::Demo => demo::run().await,
        }
    });
    // Exit without dropping the runtime: a blocking read of standard input may still be in
    // progress on its thread pool, and dropping the runtime would wait for it.
    output::exit(code);
}
