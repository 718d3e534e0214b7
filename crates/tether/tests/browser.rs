//! A real browser against tether's server: headless Chromium (Debian's `chromium` package),
//! driven by `playwright-core` from `tests/browser/node_modules`, opens a WebSocket to a
//! [`Server`] with default settings, so permessage-deflate is negotiated as a browser offers it.
//!
//! The test serves `tests/browser/page.html` over `http://127.0.0.1:PORT/` (so the page may
//! open `ws://`), runs `node tests/browser/run.mjs PAGE_URL WS_URL`, and compares the JSON line
//! it prints exactly with what is expected:
//!
//! * `ws.extensions` in the browser is the header tether answered with (and tether's
//!   [`WebSocket::extensions`](tether::WebSocket::extensions) says the same);
//! * tether sends first, 1 MiB of random bytes and 1 MiB of JSON-like text, which the page
//!   compares with the same content made by the same rule (and reports its FNV-1a hash,
//!   compared here too);
//! * the page sends text (compressible) and binary (random, incompressible) messages of 10 B,
//!   1 KiB, 64 KiB and 1 MiB plus a non-ASCII text, tether echoes them, the page compares
//!   them byte for byte;
//! * the page closes with 1000 and both sides see a clean close.
//!
//! A relay between the browser and tether counts the bytes on the wire, proving that the
//! compressible half of the traffic was compressed in both directions.
//!
//! Nothing here is optional: without Chromium, node or `node_modules` the test fails and says
//! to run `scripts/test.sh`, which installs them. Chromium is never let off the machine (see
//! `run.mjs`).

mod relay;
mod support;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use relay::Relay;
use support::browser::{assets, run_driver, serve_files};
use tether::{CloseFrame, DeflateConfig, Message, PeerClose, Server, ServerConfig};
use tokio::sync::mpsc::unbounded_channel;

/// Debian's Chromium; `TETHER_CHROMIUM` overrides it (run.mjs reads the same variable).
const CHROMIUM: &str = "/usr/bin/chromium";

/// Longest the whole browser run may take (starting Chromium included).
const BROWSER_LIMIT: Duration = Duration::from_secs(180);

/// Message sizes the page sends (the same list as `SIZES` in page.html).
const SIZES: [usize; 4] = [10, 1024, 65536, 1 << 20];

/// What tether sends first: this much random binary, then this much JSON-like text.
const FIRST: usize = 1 << 20;

/// The non-ASCII text the page sends last (the same as `NON_ASCII` in page.html).
fn non_ascii() -> String {
    "héllo wörld, ελληνικά, 中文字符, emoji 🚀🦀✓ ".repeat(1000)
}

// ---------------------------------------------------------------------------------------------
// Message contents, made by the same rules as in page.html
// ---------------------------------------------------------------------------------------------

/// xorshift32 bytes: incompressible.
fn random_bytes(size: usize, seed: u32) -> Vec<u8> {
    let mut x = seed;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// JSON-like lines, repeated and cut to `size` bytes: compressible.
fn json_text(size: usize) -> String {
    let mut s = String::with_capacity(size + 100);
    let mut i = 0u64;
    while s.len() < size {
        let side = if i % 3 == 0 { "sell" } else { "buy" };
        let price = (i * 7919) % 100_003;
        let _ = writeln!(
            s,
            "{{\"seq\":{i},\"symbol\":\"TETH-USD\",\"price\":{price},\"side\":\"{side}\"}}"
        );
        i += 1;
    }
    s.truncate(size);
    s
}

/// 32-bit FNV-1a, as 8 hex digits.
fn fnv1a(bytes: &[u8]) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for &b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

// ---------------------------------------------------------------------------------------------
// Prerequisites
// ---------------------------------------------------------------------------------------------

/// Fails the test, naming what is missing, unless Chromium, node and playwright-core are there.
fn check_prerequisites() {
    let mut missing = Vec::new();
    let chromium = std::env::var_os("TETHER_CHROMIUM")
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from(CHROMIUM), PathBuf::from);
    if !chromium.is_file() {
        missing.push(format!(
            "Chromium at {} (Debian package `chromium`)",
            chromium.display()
        ));
    }
    match std::process::Command::new("node")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => missing.push(format!("a working `node` (node --version: {})", out.status)),
        Err(e) => missing.push(format!("`node` on PATH ({e})")),
    }
    let playwright = assets().join("node_modules/playwright-core/package.json");
    if !playwright.is_file() {
        missing.push(format!(
            "playwright-core in {} (npm ci there)",
            assets().join("node_modules").display()
        ));
    }
    assert!(
        missing.is_empty(),
        "the browser test cannot run: missing {}.\nRun `bash scripts/test.sh`: it installs \
         chromium (apt-get) and playwright-core (npm ci in crates/tether/tests/browser) when \
         they are missing.",
        missing.join("; ")
    );
}

// ---------------------------------------------------------------------------------------------
// The servers: tether, and a tiny HTTP server for the page
// ---------------------------------------------------------------------------------------------

/// What tether's handler saw of the browser's connection.
#[derive(Debug)]
struct Seen {
    /// The browser's `Sec-WebSocket-Extensions` offer.
    offer: Option<String>,
    /// What tether answered ([`tether::WebSocket::extensions`]).
    negotiated: Option<String>,
    /// The first failure of a send or a recv, if any.
    error: Option<String>,
    /// Messages echoed.
    echoed: usize,
    close_frame: PeerClose,
}

/// Serves page.html at `/` (everything else is 404).
async fn page_server() -> u16 {
    let page = std::fs::read(assets().join("page.html")).expect("read tests/browser/page.html");
    serve_files(vec![("/", "text/html; charset=utf-8", page)]).await
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

/// The JSON line run.mjs must print, for tether's answer `extensions`.
fn expected_result(extensions: &str) -> String {
    let first_binary = random_bytes(FIRST, 1);
    let first_text = json_text(FIRST);
    let mut echoes = Vec::new();
    for size in SIZES {
        echoes.push(("text", size));
        echoes.push(("binary", size));
    }
    echoes.push(("text", non_ascii().len()));
    let echoes: Vec<String> = echoes
        .iter()
        .map(|(kind, size)| {
            format!(r#"{{"kind":"{kind}","size":{size},"length":{size},"matches":true}}"#)
        })
        .collect();
    format!(
        concat!(
            r#"{{"extensions":"{ext}","protocol":"","fromServer":["#,
            r#"{{"kind":"binary","length":{len},"fnv1a":"{bin}","matches":true}},"#,
            r#"{{"kind":"text","length":{len},"fnv1a":"{text}","matches":true}}],"#,
            r#""echoes":[{echoes}],"close":{{"code":1000,"reason":"","wasClean":true}}}}"#
        ),
        ext = extensions,
        len = FIRST,
        bin = fnv1a(&first_binary),
        text = fnv1a(first_text.as_bytes()),
        echoes = echoes.join(","),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_exchanges_compressed_messages_with_tether_server() {
    check_prerequisites();

    // tether, with default settings: compression on.
    let server = Server::bind("127.0.0.1:0", ServerConfig::default())
        .await
        .expect("bind");
    let tether_addr = server.local_addr().expect("local_addr");
    let (tx, mut seen) = unbounded_channel();
    let serve = tokio::spawn(server.serve(move |mut ws, request| {
        let tx = tx.clone();
        async move {
            let mut report = Seen {
                offer: request.extensions.clone(),
                negotiated: ws.extensions().map(str::to_owned),
                error: None,
                echoed: 0,
                close_frame: PeerClose::NotReceived,
            };
            let first = [
                Message::binary(random_bytes(FIRST, 1)),
                Message::text(json_text(FIRST)),
            ];
            for msg in first {
                if let Err(e) = ws.send(msg).await {
                    report.error.get_or_insert(format!("send: {e}"));
                }
            }
            while let Some(msg) = ws.recv().await {
                match msg {
                    Ok(msg) => match ws.send(msg).await {
                        Ok(()) => report.echoed += 1,
                        Err(e) => {
                            report.error.get_or_insert(format!("send: {e}"));
                            break;
                        }
                    },
                    Err(e) => {
                        report.error.get_or_insert(format!("recv: {e}"));
                        break;
                    }
                }
            }
            while ws.recv().await.is_some() {}
            report.close_frame = ws.peer_close().clone();
            let _ = tx.send(report);
        }
    }));
    let relay = Relay::start(tether_addr).await;
    let page_port = page_server().await;

    // The browser.
    let page_url = format!("http://127.0.0.1:{page_port}/");
    let ws_url = format!("ws://127.0.0.1:{}/echo", relay.port);
    let out = run_driver("run.mjs", &[page_url, ws_url], BROWSER_LIMIT).await;
    let (result, stderr) = (out.result.clone(), out.stderr.clone());
    eprintln!("{}", out.browser);

    // What tether saw and answered.
    let seen = tokio::time::timeout(Duration::from_secs(30), seen.recv())
        .await
        .expect("tether's handler to finish")
        .expect("tether's handler reported");
    eprintln!("browser offered {:?}", seen.offer);
    eprintln!("tether answered {:?}", seen.negotiated);
    let offer = seen
        .offer
        .as_deref()
        .expect("the browser offered extensions");
    assert!(
        offer.contains("permessage-deflate"),
        "the browser offered {offer:?}"
    );
    let (answer, _) = DeflateConfig::default()
        .server_accept(offer)
        .expect("tether's default settings accept the browser's offer");
    assert_eq!(seen.negotiated.as_deref(), Some(answer.as_str()));
    assert!(answer.starts_with("permessage-deflate"), "{answer}");

    // What the browser saw, compared in one piece.
    assert_eq!(
        result,
        expected_result(&answer),
        "the browser's result differs from the expected one (left: got).\nstderr of run.mjs:\n\
         {stderr}"
    );
    assert!(out.success, "run.mjs failed");
    assert!(
        !stderr.contains("blocked a request off the machine"),
        "the page tried to reach another host:\n{stderr}"
    );

    assert_eq!(seen.error, None, "tether's handler failed");
    assert_eq!(seen.echoed, 2 * SIZES.len() + 1);
    assert_eq!(
        seen.close_frame,
        PeerClose::Frame(CloseFrame {
            code: 1000,
            reason: "browser done".to_owned()
        })
    );

    // Compression on the wire, both ways: the random bytes cannot shrink, the JSON text must
    // shrink well (it does ~20-fold; a quarter leaves room for any reasonable deflate).
    let sent: usize = SIZES.iter().sum();
    let random_up = sent;
    let json_up = sent + non_ascii().len();
    let random_down = FIRST + sent;
    let json_down = FIRST + sent + non_ascii().len();
    let slack = 16 << 10; // handshakes, frame headers, the closing handshake
    let (up, down) = (relay.upstream_bytes(), relay.downstream_bytes());
    eprintln!(
        "on the wire: browser to tether {up} bytes for {} of payload; tether to browser {down} \
         bytes for {} of payload",
        random_up + json_up,
        random_down + json_down
    );
    assert!(
        up < (random_up + json_up / 4 + slack) as u64,
        "the browser's messages were not compressed: {up} bytes on the wire"
    );
    assert!(
        down < (random_down + json_down / 4 + slack) as u64,
        "tether's messages were not compressed: {down} bytes on the wire"
    );
    // The random bytes cannot shrink: all of them went through.
    assert!(up > random_up as u64 && down > random_down as u64);

    serve.abort();
}
