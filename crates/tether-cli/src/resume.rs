//! `tether connect --resume`: the same input and output as `connect`, over a resumable
//! session ([`tether::session`]): lines are delivered exactly once and in order across
//! reconnects, and so are the messages received.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use tether::reconnect::ReconnectEvent;
use tether::session::{OnLost, SessionEvent, SessionHandle};
use tether::{ClientBuilder, Error, Message, Policy};

use crate::args::ConnectArgs;
use crate::input::{self, InputEvent};
use crate::output::Output;
use crate::{EXIT_FATAL, EXIT_INTERRUPTED, EXIT_OK};

/// Runs the session until end of input (exit 0 once every line was acknowledged and the
/// session closed), a lost session without --reconnect or a fatal error (exit 1), or Ctrl-C.
pub(crate) async fn run(
    args: &ConnectArgs,
    builder: ClientBuilder,
    policy: Policy,
    out: Arc<Output>,
) -> i32 {
    let attempt = Arc::new(AtomicU32::new(0));
    let (events, attempts) = (Arc::clone(&out), Arc::clone(&attempt));
    let reconnect = builder
        .reconnecting()
        .policy(policy)
        .on_event(move |event| {
            match event {
                // The session reports the opening itself, with what was resumed.
                ReconnectEvent::Open { attempt, .. } => attempts.store(*attempt, Ordering::Relaxed),
                other => events.reconnect_event(other),
            }
        });
    let (events, attempts) = (Arc::clone(&out), Arc::clone(&attempt));
    let session = reconnect
        .session()
        .on_lost(if args.reconnect {
            OnLost::NewSession
        } else {
            OnLost::Fail
        })
        .on_event(move |event| match event {
            SessionEvent::Connected { replayed, .. } => {
                // Nothing is sent *again* on a first connection.
                let _ = replayed;
                events.session_open(attempts.load(Ordering::Relaxed), false, 0)
            }
            SessionEvent::Resumed { replayed, .. } => {
                events.session_open(attempts.load(Ordering::Relaxed), true, *replayed)
            }
            SessionEvent::Disconnected { code, .. } => events.closed(Some(*code), "", None),
            SessionEvent::Lost(lost) => {
                events.session_lost(lost.reason.as_str(), lost.unacknowledged.len())
            }
            _ => {}
        })
        .start();
    let mut input = input::start();
    loop {
        tokio::select! {
            received = session.recv() => {
                if let Some(exit) = take(received, &session, args, &out, &attempt).await {
                    return exit;
                }
            }
            event = input.recv() => match event {
                Some(InputEvent::Line(line)) => {
                    // Waits while the replay buffer is full (backpressure on standard input),
                    // taking what arrives meanwhile: the server makes room only once its
                    // messages are taken, so not taking them would stop both sides.
                    let send = session.send(line);
                    tokio::pin!(send);
                    loop {
                        tokio::select! {
                            sent = &mut send => {
                                if sent.is_err() {
                                    return EXIT_FATAL;
                                }
                                break;
                            }
                            received = session.recv() => {
                                if let Some(exit) =
                                    take(received, &session, args, &out, &attempt).await
                                {
                                    return exit;
                                }
                            }
                        }
                    }
                }
                Some(InputEvent::Interrupt) => return EXIT_INTERRUPTED,
                Some(InputEvent::Eof) | None => return finish(&session, &out, &mut input).await,
            },
        }
    }
}

/// Handles what the session's `recv` returned: prints a message (and sends it back with
/// `--echo`) and returns `None` to go on, or the exit status.
async fn take(
    received: Option<tether::Result<Message>>,
    session: &SessionHandle,
    args: &ConnectArgs,
    out: &Output,
    attempt: &AtomicU32,
) -> Option<i32> {
    match received {
        Some(Ok(msg)) => {
            out.message(&msg);
            if args.echo && session.send(msg).await.is_err() {
                return Some(EXIT_FATAL);
            }
            None
        }
        // Reported by the event; with --reconnect a new session goes on.
        Some(Err(Error::SessionLost(_))) if args.reconnect => None,
        Some(Err(Error::SessionLost(_))) => Some(EXIT_FATAL),
        Some(Err(e)) => {
            // The reconnect loop reported its own fatal errors; the session's (a server
            // without sessions, a broken protocol) are reported here.
            if matches!(e, Error::SessionsNotOffered | Error::Session(_)) {
                out.fatal(attempt.load(Ordering::Relaxed).max(1), &e);
            }
            Some(EXIT_FATAL)
        }
        // The server ended the session (close 1000).
        None => Some(EXIT_OK),
    }
}

/// End of input: waits until the server acknowledged every line (printing what still
/// arrives), then closes the session with 1000.
async fn finish(
    session: &SessionHandle,
    out: &Output,
    input: &mut tokio::sync::mpsc::Receiver<InputEvent>,
) -> i32 {
    let close = session.close();
    tokio::pin!(close);
    loop {
        tokio::select! {
            closed = &mut close => {
                // The session ended; what arrived before the server's Close may still wait
                // (both branches can be ready at once): print it first.
                while let Some(Ok(msg)) = session.recv().await {
                    out.message(&msg);
                }
                out.closed(Some(tether::close_code::NORMAL), "", closed.as_ref().err());
                return if closed.is_ok() { EXIT_OK } else { EXIT_FATAL };
            }
            received = session.recv() => match received {
                Some(Ok(msg)) => out.message(&msg),
                Some(Err(_)) => return EXIT_FATAL,
                // The session ended: our close finished (or the server closed first). The
                // close future is ready either way; report it the same.
                None => {
                    let closed = (&mut close).await;
                    out.closed(Some(tether::close_code::NORMAL), "", closed.as_ref().err());
                    return if closed.is_ok() { EXIT_OK } else { EXIT_FATAL };
                }
            },
            Some(InputEvent::Interrupt) = input.recv() => return EXIT_INTERRUPTED,
        }
    }
}
