//! `tether connect URL`: the client, as documented in `docs/cli.md`.
//!
//! The connection source is the library's: one [`ClientBuilder::connect`], or with
//! `--reconnect` the [`Reconnecting`] stream, whose `on_event` callback prints the
//! `connecting`, `retry`, `open` and `fatal` events. Each open connection runs a select loop
//! over incoming messages and input lines until it ends; lines read meanwhile wait in a
//! bounded queue.

use std::sync::Arc;
use std::time::Duration;

use tether::reconnect::{Backoff, Policy};
use tether::{
    ClientBuilder, Config, Error, Message, PeerClose, Reconnecting, TlsConfig, WebSocket,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::args::ConnectArgs;
use crate::input::{self, InputEvent, LineQueue, QUEUE_LIMIT};
use crate::output::Output;
use crate::{EXIT_FATAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE};

/// Where connections come from.
enum Connections {
    /// Without `--reconnect`: one attempt, run in a task so that waiting for it can be
    /// interrupted by input and resumed.
    Once(Option<JoinHandle<tether::Result<WebSocket>>>),
    /// With `--reconnect`: the library's stream of connections.
    Reconnecting(Reconnecting),
}

impl Connections {
    /// The next connection, or the fatal error, or `None` when there are no more.
    /// Cancel-safe: the attempt in progress goes on and a later call picks it up.
    async fn next(&mut self) -> Option<tether::Result<WebSocket>> {
        match self {
            Self::Once(slot) => {
                let handle = slot.as_mut()?;
                let result = handle.await;
                *slot = None;
                Some(result.unwrap_or_else(|e| Err(Error::Other(Box::new(e)))))
            }
            Self::Reconnecting(stream) => stream.next().await,
        }
    }
}

/// Why an open connection's loop ended.
enum End {
    /// End of input: we closed the connection.
    Input,
    /// Ctrl-C: we closed the connection.
    Interrupted,
    /// The server closed it, or it broke.
    Peer,
}

/// Runs `tether connect`; returns the exit status.
pub(crate) async fn run(args: ConnectArgs) -> i32 {
    let builder = match client_builder(&args) {
        Ok(b) => b,
        Err(message) => {
            eprintln!("tether connect: {message}");
            return EXIT_USAGE;
        }
    };
    let out = Arc::new(Output::new(args.json));
    if args.resume {
        return crate::resume::run(&args, builder, policy(&args), out).await;
    }
    let mut connections = if args.reconnect {
        let events = out.clone();
        let stream = builder
            .reconnecting()
            .policy(policy(&args))
            .on_event(move |event| events.reconnect_event(event))
            .stream();
        Connections::Reconnecting(stream)
    } else {
        let events = out.clone();
        Connections::Once(Some(tokio::spawn(async move {
            events.connecting(1, builder.url());
            let result = builder.connect().await;
            match &result {
                Ok(ws) => events.open(1, ws.subprotocol()),
                Err(e) => events.fatal(1, e),
            }
            result
        })))
    };
    let mut session = Session {
        out,
        input: input::start(),
        input_done: false,
        input_closed: false,
        queue: LineQueue::new(QUEUE_LIMIT),
        echo: args.echo,
        close_timeout: args.close_timeout,
    };
    loop {
        // Wait for a connection; meanwhile, queue what is typed.
        let next = loop {
            tokio::select! {
                next = connections.next() => break next,
                event = session.input.recv(), if !session.input_closed => match event {
                    Some(InputEvent::Line(line)) => session.enqueue(line),
                    Some(InputEvent::Interrupt) => return EXIT_INTERRUPTED,
                    // End of input: still open the connection, deliver the queue, then close.
                    Some(InputEvent::Eof) => session.input_done = true,
                    None => session.input_closed = true,
                },
            }
        };
        let ws = match next {
            Some(Ok(ws)) => ws,
            // The fatal event was printed by whoever made the attempt.
            Some(Err(_)) | None => return EXIT_FATAL,
        };
        let (end, closed) = session.run_connection(ws).await;
        session
            .out
            .closed(closed.code, &closed.reason, closed.error.as_ref());
        match end {
            End::Input => return EXIT_OK,
            End::Interrupted => return EXIT_INTERRUPTED,
            End::Peer if !args.reconnect => return EXIT_OK,
            End::Peer => {}
        }
    }
}

/// The client settings from the flags.
fn client_builder(args: &ConnectArgs) -> Result<ClientBuilder, String> {
    let mut config = Config::default()
        .ping_interval(nonzero(args.ping_interval))
        .ping_timeout(nonzero(args.ping_timeout))
        .close_timeout(args.close_timeout);
    if let Some(max) = args.max_size {
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        // A frame cannot be larger than the largest message.
        config = config.max_message_size(max).max_frame_size(max);
    }
    if args.no_compression {
        // permessage-deflate is offered by default.
        config = config.compression(None);
    }
    let mut builder = ClientBuilder::new(args.url.as_str())
        .open_timeout(args.open_timeout)
        .config(config);
    for (name, value) in &args.headers {
        builder = builder.header(name, value);
    }
    for protocol in &args.subprotocols {
        builder = builder.subprotocol(protocol);
    }
    let mut tls = TlsConfig::default();
    if let Some(path) = &args.ca {
        tls = tls
            .add_ca_file(path)
            .map_err(|e| format!("--ca {}: {e}", path.display()))?;
    }
    if args.insecure {
        tls = tls.danger_accept_invalid_certs();
    }
    if let Some(proxy) = &args.proxy {
        builder = builder.proxy(proxy);
    } else if args.no_proxy {
        builder = builder.no_proxy();
    }
    if let Some(path) = &args.unix {
        builder = builder.unix_socket(path);
    }
    Ok(builder.tls(tls))
}

/// The reconnect policy from the flags; what no flag sets keeps the library's default.
fn policy(args: &ConnectArgs) -> Policy {
    let backoff = Backoff {
        initial: args.backoff_initial,
        min: args.backoff_min,
        factor: args.backoff_factor,
        max: args.backoff_max,
        ..Backoff::default()
    };
    let mut policy = Policy::default()
        .backoff(backoff)
        .reconnect_delay(args.reconnect_delay)
        .max_attempts(args.max_attempts);
    if let Some(uptime) = args.min_uptime {
        policy = policy.min_uptime(uptime);
    }
    // Later rules win in the library: --fatal-on is added last, so it wins over --retry-on.
    for &status in &args.retry_on {
        policy = policy.retry_on_status(status);
    }
    for &status in &args.fatal_on {
        policy = policy.fatal_on_status(status);
    }
    policy
}

/// `None` for zero (switched off).
fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

/// The state that lives across connections.
struct Session {
    out: Arc<Output>,
    input: mpsc::Receiver<InputEvent>,
    /// End of input was read (Ctrl-C may still arrive).
    input_done: bool,
    /// The input channel is closed: nothing more can arrive.
    input_closed: bool,
    queue: LineQueue,
    echo: bool,
    close_timeout: Duration,
}

impl Session {
    /// Queues a line read while no connection is open.
    fn enqueue(&mut self, line: String) {
        if let Some(dropped) = self.queue.push(line) {
            self.out.warning(&format!(
                "not connected and {QUEUE_LIMIT} lines are queued: dropped the oldest ({dropped:?})"
            ));
        }
    }

    /// Runs one open connection until it ends; returns why, and how it closed.
    async fn run_connection(&mut self, mut ws: WebSocket) -> (End, Closed) {
        // First what was typed while disconnected, in order.
        while let Some(line) = self.queue.pop() {
            if ws.send(line.clone()).await.is_err() {
                // Closed already: keep the line for the next connection.
                self.queue.push_front(line);
                break;
            }
        }
        if self.input_done && self.queue.is_empty() {
            return self.close(ws, End::Input, None).await;
        }
        let mut error = None;
        loop {
            tokio::select! {
                received = ws.recv() => match received {
                    Some(Ok(msg)) => {
                        self.out.message(&msg);
                        if self.echo {
                            let _ = ws.send(msg).await;
                        }
                    }
                    // The connection is closing; the next recv returns None.
                    Some(Err(e)) => error = Some(e),
                    None => return (End::Peer, Closed::of(&ws, error)),
                },
                event = self.input.recv(), if !self.input_closed => match event {
                    Some(InputEvent::Line(line)) => {
                        if ws.send(Message::text(line.as_str())).await.is_err() {
                            // The connection is going away: the line waits for the next one.
                            self.enqueue(line);
                        }
                    }
                    Some(InputEvent::Interrupt) => {
                        self.input_done = true;
                        return self.close(ws, End::Interrupted, error).await;
                    }
                    None => self.input_closed = true,
                    Some(InputEvent::Eof) => {
                        self.input_done = true;
                        if self.queue.is_empty() {
                            return self.close(ws, End::Input, error).await;
                        }
                        // Lines whose send failed wait for the next connection: let this one
                        // end, then deliver them.
                    }
                },
            }
        }
    }

    /// The closing handshake with 1000. At end of input, first a ping round trip makes sure
    /// the server has seen everything sent, so that replies to the last lines are not cut
    /// off by our Close. Messages that arrive before the server's Close frame are printed.
    /// Each step is bounded by the close timeout. Ctrl-C (`end` is then
    /// [`End::Interrupted`]) skips the ping; a further Ctrl-C stops waiting.
    async fn close(&mut self, mut ws: WebSocket, end: End, error: Option<Error>) -> (End, Closed) {
        let mut end = end;
        let mut error = error;
        let mut hurry = false;
        if matches!(end, End::Input) {
            let barrier = tokio::time::timeout(self.close_timeout, ws.ping());
            if self.unless_interrupted(barrier).await.is_none() {
                end = End::Interrupted;
                hurry = true;
            }
        }
        // `WebSocket::close` discards what arrives meanwhile; the split halves do not: the
        // sender starts the handshake and the receiver delivers messages until it is done.
        let (mut sender, mut receiver) = ws.split();
        if hurry {
            // Say goodbye without waiting for the answer.
            let _ = tokio::time::timeout(Duration::from_secs(1), sender.close(1000, "")).await;
        } else {
            let out = self.out.clone();
            let errors = &mut error;
            let drain = async {
                let _ = sender.close(1000, "").await;
                while let Some(received) = receiver.recv().await {
                    match received {
                        Ok(msg) => out.message(&msg),
                        Err(e) => *errors = Some(e),
                    }
                }
            };
            // The library bounds the handshake by the close timeout; the margin covers the
            // transport shutdown after it.
            let limit = self.close_timeout + Duration::from_secs(1);
            if self
                .unless_interrupted(tokio::time::timeout(limit, drain))
                .await
                .is_none()
            {
                end = End::Interrupted;
            }
        }
        let code = receiver.close_code();
        let closed = Closed {
            // 1005: the server's Close frame had no status code.
            code: (code != tether::close_code::NO_STATUS).then_some(code),
            reason: receiver.peer_close().reason().to_owned(),
            error,
        };
        (end, closed)
    }

    /// Runs `work` unless Ctrl-C comes first (then `None`).
    async fn unless_interrupted<T>(
        &mut self,
        work: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                done = &mut work => return Some(done),
                event = self.input.recv(), if !self.input_closed => match event {
                    Some(InputEvent::Interrupt) => return None,
                    Some(_) => {}
                    None => self.input_closed = true,
                },
            }
        }
    }
}

/// How a connection closed, for the `closed` event.
struct Closed {
    /// The peer's close code, 1006 without a closing handshake, `None` when its Close frame
    /// had no status code.
    code: Option<u16>,
    /// The peer's close reason.
    reason: String,
    /// The error that ended the connection, if any.
    error: Option<Error>,
}

impl Closed {
    fn of(ws: &WebSocket, error: Option<Error>) -> Self {
        let (code, reason) = match ws.peer_close() {
            PeerClose::Frame(frame) => (Some(frame.code), frame.reason.clone()),
            PeerClose::NoStatus => (None, String::new()),
            PeerClose::NotReceived => (Some(ws.close_code()), String::new()),
        };
        Self {
            code,
            reason,
            error,
        }
    }
}
