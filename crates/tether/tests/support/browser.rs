//! Headless Chromium for the browser tests: the prerequisites, a static page server on
//! 127.0.0.1, and running a node driver script (in `tests/browser`) that prints
//! `BROWSER Chromium N` and `RESULT {json}`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// `tests/browser`: the driver scripts, pages and `node_modules`.
pub(crate) fn assets() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Fails the test, naming what is missing, unless Chromium ($TETHER_CHROMIUM or Debian's
/// /usr/bin/chromium) and playwright-core are there.
pub(crate) fn require_chromium() {
    let chromium = std::env::var_os("TETHER_CHROMIUM")
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    let playwright = assets().join("node_modules/playwright-core/package.json");
    assert!(
        chromium.is_file() && playwright.is_file(),
        "the browser test needs Chromium ({}) and playwright-core ({}): run \
         `bash scripts/test.sh`, which installs both",
        chromium.display(),
        playwright.display()
    );
}

/// Serves the test page `page` (from [`assets`]) at `path`, and the JavaScript client of the
/// resume protocol (`clients/js/tether-resume.mjs`) at `/tether-resume.mjs`; returns the port.
pub(crate) async fn serve_js_page(page: &str, path: &'static str) -> u16 {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let html = std::fs::read(assets().join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
    let module =
        std::fs::read(root.join("clients/js/tether-resume.mjs")).expect("tether-resume.mjs");
    serve_files(vec![
        (path, "text/html; charset=utf-8", html),
        (
            "/tether-resume.mjs",
            "text/javascript; charset=utf-8",
            module,
        ),
    ])
    .await
}

/// Serves each `(path, content type, body)` over HTTP/1.1 on 127.0.0.1 (404 for anything
/// else), one request per connection; returns the port.
pub(crate) async fn serve_files(files: Vec<(&'static str, &'static str, Vec<u8>)>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("local_addr").port();
    let files = std::sync::Arc::new(files);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let files = files.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 2048];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 << 10 {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let found = files
                    .iter()
                    .find(|(path, _, _)| head.starts_with(format!("GET {path} ").as_bytes()));
                let (status, kind, body) = match found {
                    Some((_, kind, body)) => ("200 OK", *kind, body.clone()),
                    None => ("404 Not Found", "text/plain", b"not found\n".to_vec()),
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
                     Cache-Control: no-store\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = tcp.write_all(response.as_bytes()).await;
                let _ = tcp.write_all(&body).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    port
}

/// What a driver script printed.
pub(crate) struct DriverOutput {
    /// The `RESULT` JSON.
    pub(crate) result: String,
    /// The `BROWSER` line, if any.
    pub(crate) browser: String,
    pub(crate) stderr: String,
    pub(crate) success: bool,
}

/// Runs `node tests/browser/SCRIPT ARGS…` within `limit`; fails the test if it prints no
/// `RESULT` line.
pub(crate) async fn run_driver(script: &str, args: &[String], limit: Duration) -> DriverOutput {
    let mut node = tokio::process::Command::new("node");
    node.arg(assets().join(script))
        .args(args)
        .current_dir(assets())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(limit, node.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("cannot run node: {e}"),
        Err(_) => panic!("node {script} did not finish within {limit:?}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let line = |prefix: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::to_owned)
    };
    let Some(result) = line("RESULT ") else {
        panic!(
            "{script} printed no RESULT line ({}).\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status
        );
    };
    DriverOutput {
        result,
        browser: line("BROWSER ").unwrap_or_else(|| "browser version unknown".to_owned()),
        stderr,
        success: out.status.success(),
    }
}
