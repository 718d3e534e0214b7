//! The JavaScript client of the resume protocol (`clients/js/tether-resume.mjs`) in headless
//! Chromium against tether's `SessionServer`: the page sends 100 messages over a resumable
//! session, the test resets the connection (through a proxy of its own) once the server has
//! taken the 50th, and the page must get every echo exactly once and in order, with one
//! resume and no loss. Needs Chromium, node and playwright-core, like `browser.rs`.

mod support;

use std::time::Duration;

use support::browser::{require_chromium, run_driver, serve_js_page};
use support::chaos_proxy::{ChaosProxy, Fault};
use tether::session::{SessionServer, SessionServerConfig};
use tether::{Server, ServerConfig};
use tokio::sync::mpsc::unbounded_channel;

const BROWSER_LIMIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_client_resumes_in_chromium_with_nothing_lost_or_repeated() {
    require_chromium();

    // The server echoes, and says when it has taken b50.
    let (taken_tx, mut taken) = unbounded_channel();
    let sessions = SessionServer::new(SessionServerConfig::default(), move |session| {
        let taken_tx = taken_tx.clone();
        async move {
            while let Some(Ok(msg)) = session.recv().await {
                if msg.as_text() == Some("b50") {
                    let _ = taken_tx.send(());
                }
                if session.send(msg).await.is_err() {
                    break;
                }
            }
        }
    });
    let server = Server::bind(
        "127.0.0.1:0",
        sessions.server_config(ServerConfig::default()),
    )
    .await
    .unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.serve(move |ws, _| sessions.serve(ws)));
    let proxy = ChaosProxy::start(addr).await;
    let cutter = proxy.clone();
    tokio::spawn(async move {
        if taken.recv().await.is_some() {
            cutter.fault(Fault::Rst);
        }
    });
    let page_port = serve_js_page("session.html", "/").await;
    let out = run_driver(
        "run.mjs",
        &[
            format!("http://127.0.0.1:{page_port}/"),
            format!("ws://127.0.0.1:{}/", proxy.addr().port()),
        ],
        BROWSER_LIMIT,
    )
    .await;
    let (result, stderr) = (out.result, out.stderr);
    println!("{result}");
    assert_eq!(
        result, r#"{"inOrder":true,"count":100,"opens":[false,true],"lost":null,"ended":"closed"}"#,
        "{stderr}"
    );
    assert_eq!(proxy.accepted(), 2, "one cut, one resume");
}
