//! The client side of the Autobahn test suite: runs every case of a fuzzing server
//! (`kosoku -m fuzzingserver`), echoing each message, then asks it to write the reports.
//!
//! ```text
//! cargo run --release -p tether --example autobahn_client -- ws://127.0.0.1:9001 tether
//! ```

use tether::ClientBuilder;

async fn echo_case(url: &str) -> Result<(), tether::Error> {
    // The 9.* cases send messages of up to 16 MiB, past the 1 MiB default limit.
    let mut ws = ClientBuilder::new(url)
        .config(tether::Config::default().max_message_size(16 << 20))
        .connect()
        .await?;
    while let Some(msg) = ws.recv().await {
        match msg {
            Ok(msg) => {
                if ws.send(msg).await.is_err() {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    while ws.recv().await.is_some() {}
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), tether::Error> {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:9001".to_owned());
    let agent = args.next().unwrap_or_else(|| "tether".to_owned());
    let base = base.trim_end_matches('/');

    let mut ws = tether::connect(&format!("{base}/getCaseCount")).await?;
    let count: u32 = match ws.recv().await {
        Some(Ok(msg)) => msg
            .as_text()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0),
        _ => 0,
    };
    while ws.recv().await.is_some() {}
    eprintln!("running {count} cases as agent {agent}");

    for case in 1..=count {
        let url = format!("{base}/runCase?case={case}&agent={agent}");
        if let Err(e) = echo_case(&url).await {
            eprintln!("case {case}: {e}");
        }
    }

    let mut ws = tether::connect(&format!("{base}/updateReports?agent={agent}")).await?;
    while ws.recv().await.is_some() {}
    eprintln!("reports updated");
    Ok(())
}
