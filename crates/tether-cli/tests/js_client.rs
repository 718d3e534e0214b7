//! The JavaScript client of the resume protocol (`clients/js`) under Node's own test runner,
//! against this build's `tether serve --resume`: its round trip, resumes through cut
//! connections with nothing lost or repeated, the spread wait before a reconnect, a lost
//! session, and a server without sessions; and against a scripted WebSocket, the backoff,
//! the close codes and a full replay buffer.
//! Needs `node` (>= 20.10; scripts/test.sh checks for it, as the browser test does).

use std::path::Path;
use std::process::{Command, Stdio};

#[test]
fn javascript_client_passes_its_node_tests_against_tether_serve() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // Each test file by name: Node 21 and later read `--test` arguments as globs (and fail on
    // a bare directory), and Node 20 expands none.
    let mut files: Vec<String> = std::fs::read_dir(root.join("clients/js/test"))
        .expect("clients/js/test")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".test.mjs"))
        .map(|name| format!("clients/js/test/{name}"))
        .collect();
    files.sort();
    let out = Command::new("node")
        .args(["--experimental-websocket", "--test"])
        .args(&files)
        .current_dir(&root)
        .env("TETHER_BIN", env!("CARGO_BIN_EXE_tether"))
        .stdin(Stdio::null())
        .output()
        .expect("node runs (Node.js 20 or later)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "node --test failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // Every test ran and passed: none skipped, none missing.
    assert!(stdout.contains("# pass 14"), "{stdout}");
    assert!(stdout.contains("# fail 0"), "{stdout}");
}
