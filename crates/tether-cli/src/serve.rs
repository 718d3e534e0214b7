//! `tether serve [ADDR]`: an echo server, or with `--broadcast` a relay to every client.
//!
//! `GET /healthz` answers 200 over plain HTTP, before (and so without) authentication. Ctrl-C
//! or SIGTERM starts the library's graceful shutdown: every connection is closed with 1001.

use std::collections::HashMap;
use std::future::Future;
use std::io::{IsTerminal as _, Write as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use serde_json::{json, Value};
use tether::redis::{RedisStore, RedisTopic};
use tether::session::{Overflow, SessionEvent, SessionHandle, SessionServer, SessionServerConfig};
use tether::{
    HttpResponse, Message, PeerAddr, PreparedMessage, Server, ServerConfig, ShutdownHandle,
    WebSocket,
};
use tokio::sync::mpsc;

use crate::args::ServeArgs;
use crate::output::binary_summary;
use crate::{EXIT_FATAL, EXIT_OK, EXIT_USAGE};

/// Messages waiting for one slow broadcast receiver before further ones are dropped for it.
const BROADCAST_BACKLOG: usize = 256;
/// Most broadcast messages queued for one receiver before they are written out together.
const BROADCAST_BATCH: usize = 64;

/// What each connection runs: a plain echo or relay, or a resumable session.
type BoxedConnection = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Runs `tether serve`; returns the exit status.
pub(crate) async fn run(args: ServeArgs) -> i32 {
    let log = Arc::new(Log::new(args.json));
    // The health check comes first: it must answer without credentials.
    let mut config = ServerConfig::default().process_request(|req| {
        let path = req.path.split('?').next().unwrap_or(req.path);
        (path == "/healthz").then(|| HttpResponse::text(200, "ok\n"))
    });
    if let Some((user, password)) = &args.auth {
        config = config.basic_auth_user("tether", user, password);
    }
    let secure = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => match tether::tls::server_config_from_pem_files(cert, key) {
            Ok(tls) => {
                config = config.tls(tls);
                true
            }
            Err(e) => {
                eprintln!(
                    "tether serve: cannot use --tls-cert {} --tls-key {}: {e}",
                    cert.display(),
                    key.display()
                );
                return EXIT_USAGE;
            }
        },
        _ => false,
    };
    let sessions = if args.resume {
        match session_server(&args, Arc::clone(&log)).await {
            Ok(sessions) => Some(sessions),
            Err(code) => return code,
        }
    } else {
        None
    };
    if let Some(sessions) = &sessions {
        config = sessions.server_config(config);
    }
    let scheme = if secure { "wss" } else { "ws" };
    let bound = match &args.unix {
        Some(path) => Server::bind_unix(path, config).await,
        None => Server::bind(args.addr.as_str(), config).await,
    };
    let server = match bound {
        Ok(s) => s,
        Err(e) => {
            let place = match &args.unix {
                Some(path) => format!("unix:{}", path.display()),
                None => args.addr.clone(),
            };
            eprintln!("tether serve: cannot listen on {place}: {e}");
            return EXIT_FATAL;
        }
    };
    if let Some(path) = &args.unix {
        // Always on stderr, whatever the output mode: scripts wait for this line. The URL is
        // what clients give with `--unix PATH`.
        log.always(&format!("listening on unix:{}", path.display()));
        let url = format!("{scheme}://localhost/");
        let unix = path.display().to_string();
        log.event(json!({"event": "listening", "url": url, "unix": unix}));
    } else {
        let url = match server.local_addr() {
            Ok(addr) => format!("{scheme}://{addr}"),
            Err(e) => {
                eprintln!("tether serve: {e}");
                return EXIT_FATAL;
            }
        };
        // Always on stderr, whatever the output mode: scripts read the port from this line.
        log.always(&format!("listening on {url}"));
        log.event(json!({"event": "listening", "url": url}));
    }
    tokio::spawn(shutdown_on_signal(server.shutdown_handle(), log.clone()));

    let peers: Peers = Arc::default();
    let next_id = Arc::new(AtomicU64::new(0));
    let broadcast = args.broadcast;
    let result = server
        .serve(move |ws, request| -> BoxedConnection {
            let log = log.clone();
            let peer = ws.get_ref().peer_addr().ok();
            log.connection(peer.as_ref(), &request.path);
            if let Some(sessions) = &sessions {
                // The session's future owns the connection: nothing else keeps a slot for
                // it while it runs.
                let serving = sessions.serve(ws);
                return Box::pin(async move {
                    serving.await;
                    log.event(json!({"event": "closed", "peer": peer.map(|p| p.to_string())}));
                });
            }
            let peers = peers.clone();
            let id = next_id.fetch_add(1, Ordering::Relaxed);
            Box::pin(async move {
                let mut ws = ws;
                if broadcast {
                    relay(&mut ws, id, &peers, &log).await;
                } else {
                    echo(&mut ws, &log).await;
                }
                log.closed(peer.as_ref(), &ws);
            })
        })
        .await;
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("tether serve: {e}");
            EXIT_FATAL
        }
    }
}

/// The sessions of `serve --resume`: each session echoes, or relays to every session
/// (`--broadcast`), for as long as it lives, across its client's reconnects.
fn session_server(
    args: &ServeArgs,
    log: Arc<Log>,
) -> impl Future<Output = Result<SessionServer, i32>> {
    let store = args.session_store.clone();
    let mut config = SessionServerConfig::default();
    if let Some(ttl) = args.session_ttl {
        config.ttl = ttl;
    }
    let outboxes: Outboxes = Arc::default();
    let broadcast = args.broadcast;
    if broadcast {
        // One away client must not hold the broadcast back: when its buffer is full, its
        // session ends (it is told `overflow` when it comes back).
        config.overflow = Overflow::End;
    }
    let events = Arc::clone(&log);
    let status = Arc::clone(&log);
    let next_id = Arc::new(AtomicU64::new(0));
    let handler = move |session: SessionHandle| {
        let log = Arc::clone(&log);
        let outboxes = Arc::clone(&outboxes);
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        async move {
            if broadcast {
                relay_session(session, id, &outboxes, &log).await;
            } else {
                // Each batch of lines and its echoes are recorded together (with a shared
                // store), so that every line is echoed exactly once even when this process
                // dies mid-way: a batch not yet answered is answered by the process the
                // client resumes on.
                while let Some(Ok(lines)) = session.recv_requests(64).await {
                    for line in &lines {
                        log.message(line);
                    }
                    if session.reply(lines).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    async move {
        let sessions = match &store {
            None => SessionServer::new(config, handler),
            Some(url) if broadcast => {
                // The broadcast goes through a topic in the same Redis, to every process.
                let (store, topic) = match RedisStore::open(url)
                    .and_then(|s| Ok((s, RedisTopic::open(url, "broadcast")?)))
                {
                    Ok(both) => both,
                    Err(e) => {
                        eprintln!("tether serve: cannot use --session-store {url}: {e}");
                        return Err(EXIT_USAGE);
                    }
                };
                warn_if_away(&store, url, &status).await;
                let log = Arc::clone(&status);
                SessionServer::with_store(config, Arc::new(store), move |session| {
                    let (topic, log) = (topic.clone(), Arc::clone(&log));
                    async move {
                        if let Err(e) = topic.relay_observing(&session, |m| log.message(m)).await {
                            log.status(&format!("a session left the broadcast: {e}"));
                        }
                    }
                })
            }
            Some(url) => {
                let store = RedisStore::open(url).map_err(|e| {
                    eprintln!("tether serve: cannot use --session-store {url}: {e}");
                    EXIT_USAGE
                })?;
                warn_if_away(&store, url, &status).await;
                SessionServer::with_store(config, Arc::new(store), handler)
            }
        };
        Ok(sessions.on_event(move |event| events.session(event)))
    }
}

/// Redis may come later: until it answers, new sessions are refused with 1011 (clients
/// retry) and plain clients are served. Says so when it does not answer now.
async fn warn_if_away(store: &RedisStore, url: &str, log: &Log) {
    if let Err(e) = store.ping().await {
        log.status(&format!(
            "session store {url} does not answer yet ({e}); sessions wait for it"
        ));
    }
}

/// Where `--broadcast --resume` queues messages for each session, in order.
type Outboxes = Arc<Mutex<HashMap<u64, mpsc::Sender<Message>>>>;

/// Relays every message of this session to every session, and delivers what others relay.
async fn relay_session(session: SessionHandle, id: u64, outboxes: &Outboxes, log: &Log) {
    let (tx, mut outbox) = mpsc::channel(BROADCAST_BACKLOG * 16);
    outboxes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, tx);
    let sender = session.sender();
    // Delivery to this session runs on its own, so that waiting for its acknowledgements
    // never holds up what it sends.
    let delivery = tokio::spawn(async move {
        while let Some(msg) = outbox.recv().await {
            if sender.send(msg).await.is_err() {
                break;
            }
        }
    });
    while let Some(Ok(msg)) = session.recv().await {
        log.message(&msg);
        let targets: Vec<_> = outboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for target in targets {
            if let Err(mpsc::error::TrySendError::Full(_)) = target.try_send(msg.clone()) {
                log.status("a slow session missed a broadcast message");
            }
        }
    }
    outboxes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    delivery.abort();
}

/// Waits for Ctrl-C or SIGTERM, then shuts the server down gracefully.
async fn shutdown_on_signal(handle: ShutdownHandle, log: Arc<Log>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    log.status("shutting down: closing every connection with 1001");
    log.event(json!({"event": "shutdown"}));
    handle.shutdown();
}

/// Sends every message back to its sender.
async fn echo(ws: &mut WebSocket, log: &Log) {
    while let Some(received) = ws.recv().await {
        match received {
            Ok(msg) => {
                log.message(&msg);
                // A failed send means the connection is closing (the client's Close may have
                // arrived with its last messages): keep receiving to finish the handshake.
                let _ = ws.send(msg).await;
            }
            // The connection is closing; recv returns None next.
            Err(e) => log.status(&format!("connection error: {e}")),
        }
    }
}

/// The outboxes of the clients connected in `--broadcast` mode.
type Peers = Arc<Mutex<HashMap<u64, mpsc::Sender<PreparedMessage>>>>;

/// Relays every message from this client to all clients (itself included), and what others
/// send to this client. Each message is prepared once (framed, and compressed once for every
/// receiver that agreed on the same deflate parameters); what waits for a receiver is queued
/// and written out together.
async fn relay(ws: &mut WebSocket, id: u64, peers: &Peers, log: &Log) {
    let (tx, mut outbox) = mpsc::channel(BROADCAST_BACKLOG);
    lock(peers).insert(id, tx);
    loop {
        tokio::select! {
            received = ws.recv() => match received {
                Some(Ok(msg)) => {
                    log.message(&msg);
                    let prepared = PreparedMessage::from(msg);
                    let targets: Vec<_> = lock(peers).values().cloned().collect();
                    for target in targets {
                        // A client that does not keep up loses messages instead of slowing
                        // everyone down.
                        if let Err(mpsc::error::TrySendError::Full(_)) = target.try_send(prepared.clone()) {
                            log.status("a slow client missed a broadcast message");
                        }
                    }
                }
                Some(Err(e)) => log.status(&format!("connection error: {e}")),
                None => break,
            },
            Some(first) = outbox.recv() => {
                if send_batch(ws, first, &mut outbox).await.is_err() {
                    break;
                }
            }
        }
    }
    lock(peers).remove(&id);
    // Finish the closing handshake if sending failed first.
    while ws.recv().await.is_some() {}
}

/// Queues `first` and whatever else already waits in `outbox` (up to [`BROADCAST_BATCH`]),
/// then writes them out at once.
async fn send_batch(
    ws: &mut WebSocket,
    first: PreparedMessage,
    outbox: &mut mpsc::Receiver<PreparedMessage>,
) -> tether::Result<()> {
    ws.feed_prepared(&first).await?;
    for _ in 1..BROADCAST_BATCH {
        match outbox.try_recv() {
            Ok(next) => ws.feed_prepared(&next).await?,
            Err(_) => break,
        }
    }
    ws.flush().await
}

fn lock(peers: &Peers) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::Sender<PreparedMessage>>> {
    // The map stays consistent whatever panicked while holding the lock.
    peers.lock().unwrap_or_else(|e| e.into_inner())
}

/// The server's log: status lines on stderr (dim on a terminal), JSON events on stdout with
/// `--json`.
#[derive(Debug)]
struct Log {
    json: bool,
    dim: bool,
}

impl Log {
    fn new(json: bool) -> Self {
        let dim = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        Self { json, dim }
    }

    /// A status line on stderr, in every mode.
    fn always(&self, text: &str) {
        let mut err = std::io::stderr().lock();
        if self.dim {
            let _ = writeln!(err, "\x1b[2m{text}\x1b[0m");
        } else {
            let _ = writeln!(err, "{text}");
        }
    }

    /// A status line on stderr, without `--json`.
    fn status(&self, text: &str) {
        if !self.json {
            self.always(text);
        }
    }

    /// A JSON event on stdout, with `--json`.
    fn event(&self, value: Value) {
        if self.json {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{value}");
            let _ = out.flush();
        }
    }

    fn connection(&self, peer: Option<&PeerAddr>, path: &str) {
        let peer = peer.map(|p| p.to_string());
        self.event(json!({"event": "connection", "peer": peer, "path": path}));
        self.status(&format!(
            "connection from {} to {path}",
            peer.as_deref().unwrap_or("?")
        ));
    }

    fn message(&self, msg: &Message) {
        let (kind, data) = match msg {
            Message::Text(t) => ("text", t.to_string()),
            Message::Binary(b) => (
                "binary",
                base64::engine::general_purpose::STANDARD.encode(b),
            ),
        };
        self.event(json!({"event": "message", "kind": kind, "data": data}));
        if !self.json {
            match msg {
                Message::Text(t) => self.status(&format!("< {t}")),
                Message::Binary(b) => self.status(&format!("< {}", binary_summary(b))),
            }
        }
    }

    fn session(&self, event: &SessionEvent<'_>) {
        let (state, id, replayed) = match event {
            SessionEvent::Connected { id, replayed } => ("connected", id, Some(*replayed)),
            SessionEvent::Resumed { id, replayed } => ("resumed", id, Some(*replayed)),
            SessionEvent::Disconnected { id, .. } => ("disconnected", id, None),
            SessionEvent::Ended { id, .. } => ("ended", id, None),
            _ => return,
        };
        let id = id.to_string();
        self.event(json!({"event": "session", "state": state, "id": id, "replayed": replayed}));
        self.status(&format!("session {id} {state}"));
    }

    fn closed(&self, peer: Option<&PeerAddr>, ws: &WebSocket) {
        let peer = peer.map(|p| p.to_string());
        let code = ws.close_code();
        self.event(json!({"event": "closed", "peer": peer, "code": code}));
        self.status(&format!(
            "{} closed {code}",
            peer.as_deref().unwrap_or("connection")
        ));
    }
}
