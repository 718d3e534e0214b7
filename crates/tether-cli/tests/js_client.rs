//! The JavaScript client of the resume protocol (`clients/js`) under Node's own test runner,
//! against this build's `tether serve --resume`: its round trip, resumes through cut
//! connections with nothing lost or repeated, the spread wait before a reconnect, a lost
//! session, and a server without sessions.
//! Needs `node` (>= 20; scripts/test.sh checks for it, as the browser test does).

use std::path::Path;
use std::process::{Command, Stdio};

#[test]
fn javascript_client_passes_its_node_tests_against_tether_serve() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new("node")
        .args(["--experimental-websocket", "--test", "clients/js/test/"])
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
    assert!(stdout.contains("# pass 6"), "{stdout}");
    assert!(stdout.contains("# fail 0"), "{stdout}");
}
