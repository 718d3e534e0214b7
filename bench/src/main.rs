//! Comparative benchmarks of tether: echo servers of tether, tokio-tungstenite,
//! fastwebsockets and tokio-websockets against a raw TCP echo (and tether behind axum),
//! tether's client against tokio-tungstenite's, handshakes per second, memory per idle
//! connection, broadcast to many connections, and permessage-deflate echo against Node's
//! `ws` and Python's `websockets`.
//!
//! `cargo run --release -p bench --bin bench -- --out docs/benchmarks.md` runs everything
//! and writes the report; see docs/benchmarks.md and `--help`. The same binary also serves
//! as the server, load generator and client processes the orchestrator starts.

mod abuse;
mod args;
mod broadcast;
mod clients;
mod compress;
mod hist;
mod load;
mod micro;
mod proc;
mod report;
mod run;
mod servers;
mod soak;
mod stats;
mod storm;
mod sys;
mod wire;

use std::io::Read as _;
use std::process::ExitCode;

/// Ends the process once standard input closes: children of the orchestrator never outlive
/// it.
pub(crate) fn exit_when_stdin_closes() {
    std::thread::spawn(|| {
        let mut buf = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
}

fn main() -> ExitCode {
    let all: Vec<String> = std::env::args().skip(1).collect();
    let (mode, rest) = match all.first().map(String::as_str) {
        Some(m) if !m.starts_with("--") => (m.to_owned(), &all[1..]),
        _ => ("run".to_owned(), &all[..]),
    };
    let result = args::Args::parse_from(rest).and_then(|args| match mode.as_str() {
        "run" => run::main(&args, rest),
        "server" => servers::main(&args),
        "load" => load::main(&args),
        "client" => clients::main(&args),
        "handshakes" => load::handshakes(&args),
        "idle" => load::idle(&args),
        "broadcast" => broadcast::load(&args),
        "deflate-load" => compress::load(&args),
        "abuse" => abuse::main(&args),
        "abuse-server" => abuse::server(&args),
        "storm" => storm::main(&args),
        "storm-server" => storm::server(&args),
        "storm-clients" => storm::clients(&args),
        "soak" => soak::main(&args),
        "soak-server" => soak::server(&args),
        "soak-clients" => soak::clients(&args),
        "help" => {
            print!("{}", run::HELP);
            Ok(())
        }
        other => Err(std::io::Error::other(format!(
            "unknown mode {other:?}; see `bench --help`"
        ))),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench {mode}: {e}");
            ExitCode::FAILURE
        }
    }
}
