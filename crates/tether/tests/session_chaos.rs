//! The chaos test of resumable sessions: a proxy of the test's own breaks the connection
//! every 50–500 ms — by RST, by FIN, in the middle of a frame, in the middle of the opening
//! (HTTP or resume) handshake, and by silently dropping everything (keepalive must notice) —
//! while client and server each send 20,000 numbered messages, the server also while the
//! client is away. Each side must take exactly 1..=20,000, in order; at least 30 resumes must
//! have happened; no session may be lost. Run with and without permessage-deflate.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::chaos_proxy::{Breaks, Chaos, ChaosProxy};
use support::numbered::{message, number};
use support::session_client::Client;
use tether::session::{SessionHandle, SessionServer, SessionServerConfig};
use tether::{Config, Message, Server, ServerConfig};
use tokio::sync::mpsc;
use tokio::time::timeout;

const MESSAGES: u64 = 20_000;
/// Messages each side sends per tick, and the tick: the run lasts about 16 s, long enough
/// for well over 30 cuts.
const BATCH: u64 = 10;
const TICK: Duration = Duration::from_millis(8);
const MIN_RESUMES: u64 = 30;
/// Bounds the whole run, so that a bug fails the test instead of hanging it.
const GUARD: Duration = Duration::from_secs(120);

/// Sends 1..=MESSAGES, paced.
async fn send_all(send: impl Fn(Message) -> tokio::task::JoinHandle<bool>, side: char) {
    let mut ticker = tokio::time::interval(TICK);
    let mut n = 1;
    while n <= MESSAGES {
        ticker.tick().await;
        for _ in 0..BATCH {
            if n > MESSAGES {
                break;
            }
            assert!(send(message(side, n)).await.unwrap(), "send {n} failed");
            n += 1;
        }
    }
}

/// Takes messages until all arrived, asserting each is the next one.
async fn take_all(session: &SessionHandle, side: char) -> u64 {
    let mut expected = 1;
    while expected <= MESSAGES {
        match session.recv().await {
            Some(Ok(msg)) => {
                assert_eq!(number(side, &msg), expected, "in order, exactly once");
                expected += 1;
            }
            other => panic!("session broke after {} messages: {other:?}", expected - 1),
        }
    }
    expected - 1
}

fn keepalive(compression: bool) -> Config {
    let config = Config::default()
        .ping_interval(Some(Duration::from_millis(100)))
        .ping_timeout(Some(Duration::from_millis(200)));
    if compression {
        config
    } else {
        config.compression(None)
    }
}

async fn run(compression: bool) {
    // The server: takes the client's numbers and sends its own, paced, whatever the state
    // of the connection; reports what it took.
    let (taken_tx, mut taken_rx) = mpsc::unbounded_channel();
    // Server messages whose send returned while no connection carried the session.
    let sent_away = Arc::new(AtomicU64::new(0));
    let away = Arc::clone(&sent_away);
    let sessions = SessionServer::new(SessionServerConfig::default(), move |session| {
        let taken_tx = taken_tx.clone();
        let away = Arc::clone(&away);
        async move {
            let sender = session.sender();
            let sending = tokio::spawn(async move {
                send_all(
                    |m| {
                        let sender = sender.clone();
                        let away = Arc::clone(&away);
                        tokio::spawn(async move {
                            let sent = sender.send(m).await.is_ok();
                            if sent && !sender.is_connected() {
                                away.fetch_add(1, Ordering::Relaxed);
                            }
                            sent
                        })
                    },
                    's',
                )
                .await;
            });
            let taken = take_all(&session, 'c').await;
            sending.await.unwrap();
            // The client closes once it has everything: the session ends.
            assert!(
                session.recv().await.is_none(),
                "nothing after the last message"
            );
            taken_tx.send(taken).unwrap();
        }
    });
    let server_config =
        sessions.server_config(ServerConfig::default().config(keepalive(compression)));
    let server = Server::bind("127.0.0.1:0", server_config).await.unwrap();
    let server_addr = server.local_addr().unwrap();
    let serving = sessions.clone();
    tokio::spawn(server.serve(move |ws, _| serving.serve(ws)));
    let proxy = ChaosProxy::start(server_addr).await;

    // The client.
    let client = Client::start(proxy.addr(), keepalive(compression), Duration::from_secs(1));
    let (session, resumes, lost) = (&client.session, &client.resumes, &client.lost);

    // The chaos: a random fault every 50–500 ms until both sides are done.
    let (chaos, cuts) = proxy.break_at_random(Chaos::Everything);

    let sender = session.sender();
    let client_sending = tokio::spawn(async move {
        send_all(
            |m| {
                let sender = sender.clone();
                tokio::spawn(async move { sender.send(m).await.is_ok() })
            },
            'c',
        )
        .await;
    });
    let client_taken = timeout(GUARD, take_all(session, 's'))
        .await
        .expect("the client did not receive everything in time");
    timeout(GUARD, client_sending).await.unwrap().unwrap();
    chaos.abort();
    timeout(GUARD, session.close()).await.unwrap().unwrap();
    let server_taken = timeout(GUARD, taken_rx.recv()).await.unwrap().unwrap();

    let resumes = resumes.load(Ordering::Relaxed);
    let kinds = cuts.each();
    let sent_away = sent_away.load(Ordering::Relaxed);
    println!(
        "compression {compression}: client took {client_taken}, server took {server_taken}, \
         {} faults ({}), {resumes} resumes, {sent_away} server messages sent while the client \
         was away, {} connections through the proxy",
        cuts.total(),
        Breaks::KINDS
            .iter()
            .zip(kinds)
            .map(|(kind, n)| format!("{kind} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        proxy.accepted()
    );
    assert_eq!(client_taken, MESSAGES);
    assert_eq!(server_taken, MESSAGES);
    assert_eq!(lost.load(Ordering::Relaxed), 0, "no session lost");
    assert!(resumes >= MIN_RESUMES, "only {resumes} resumes");
    for (kind, n) in Breaks::KINDS.iter().zip(kinds) {
        assert!(n > 0, "no {kind} fault happened: {kinds:?}");
    }
    assert!(
        sent_away > 0,
        "the server never sent while the client was away"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_lost_repeated_or_reordered_through_random_cuts() {
    run(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_lost_repeated_or_reordered_through_random_cuts_with_compression() {
    run(true).await;
}
