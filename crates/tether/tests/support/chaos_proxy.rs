//! A fault-injecting TCP proxy on 127.0.0.1 for the tests: it forwards bytes between a client
//! and a server and, when told, breaks every connection it carries in one of the ways real
//! networks do.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

/// How the proxy breaks the connections it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Both sides get a TCP reset.
    Rst,
    /// Both sides get an orderly end of stream (FIN).
    Fin,
    /// The next chunk in either direction is forwarded only in part, then both sides are
    /// reset: the receiver holds half a frame.
    MidFrame,
    /// Stop forwarding without closing anything: only keepalive can tell.
    Blackhole,
    /// Forward every chunk, both ways, this long after it was read, in order (a long path);
    /// the end of a stream is passed on after the same delay. Meant to be used alone: after
    /// it, `Rst` and `Fin` act at once (chunks still waiting are lost) and `MidFrame` is not
    /// applied. [`ChaosProxy::break_at_random`] never picks it.
    Delay(Duration),
    /// Keep forwarding one direction and silently drop the bytes of the other (a half-open
    /// connection: one side's packets are lost); only keepalive can tell. As with
    /// [`Fault::Blackhole`], the end of a stream still passes. `client_to_server` names the
    /// direction that keeps flowing. [`ChaosProxy::break_at_random`] never picks it.
    HalfOpen {
        /// True: the client's bytes still reach the server and the server's are dropped;
        /// false: the other way round.
        client_to_server: bool,
    },
}

/// The next connection accepted is reset after `bytes` bytes in the given direction (the
/// opening handshake, or the resume handshake right after it, is cut short).
#[derive(Clone, Copy, Debug)]
pub(crate) struct HandshakeCut {
    /// True: cut the client's bytes (the request, HELLO); false: the server's (101, WELCOME).
    pub(crate) from_client: bool,
    /// Bytes forwarded before the reset.
    pub(crate) bytes: usize,
}

struct Control {
    /// Where new connections go: each to the next in turn (a load balancer), skipping one
    /// that refuses.
    targets: Mutex<Vec<SocketAddr>>,
    turn: AtomicU64,
    /// While set, connections are reset as soon as they are accepted.
    down: std::sync::atomic::AtomicBool,
    conns: Mutex<Vec<watch::Sender<Option<Fault>>>>,
    handshake_cut: Mutex<Option<HandshakeCut>>,
    accepted: AtomicU64,
    /// The accept loop, for [`ChaosProxy::stop`].
    accept_task: Mutex<Option<tokio::task::AbortHandle>>,
    /// See [`ChaosProxy::hard_resets`].
    hard_resets: std::sync::atomic::AtomicBool,
}

/// A running proxy. Dropping it does not stop it; [`ChaosProxy::stop`] or the test's runtime
/// does.
#[derive(Clone)]
pub(crate) struct ChaosProxy {
    addr: SocketAddr,
    control: Arc<Control>,
}

impl ChaosProxy {
    /// Starts a proxy in front of `target`.
    pub(crate) async fn start(target: SocketAddr) -> Self {
        Self::balance(vec![target]).await
    }

    /// Starts a proxy that sends each new connection to the next of `targets` in turn, as a
    /// round-robin load balancer does (one that refuses is skipped).
    pub(crate) async fn balance(targets: Vec<SocketAddr>) -> Self {
        assert!(!targets.is_empty());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let control = Arc::new(Control {
            targets: Mutex::new(targets),
            turn: Default::default(),
            down: Default::default(),
            conns: Default::default(),
            handshake_cut: Default::default(),
            accepted: Default::default(),
            accept_task: Default::default(),
            hard_resets: std::sync::atomic::AtomicBool::new(true),
        });
        let ctl = Arc::clone(&control);
        let accepting = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if ctl.down.load(Ordering::Relaxed) {
                    let _ = client.set_zero_linger();
                    continue;
                }
                let targets = ctl.targets.lock().unwrap().clone();
                let first = ctl.turn.fetch_add(1, Ordering::Relaxed) as usize;
                let mut server = None;
                for i in 0..targets.len() {
                    let target = targets[(first + i) % targets.len()];
                    if let Ok(s) = TcpStream::connect(target).await {
                        server = Some(s);
                        break;
                    }
                }
                let Some(server) = server else {
                    continue;
                };
                ctl.accepted.fetch_add(1, Ordering::Relaxed);
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (fault_tx, fault_rx) = watch::channel(None);
                ctl.conns.lock().unwrap().retain(|c| !c.is_closed());
                ctl.conns.lock().unwrap().push(fault_tx.clone());
                let cut = ctl.handshake_cut.lock().unwrap().take();
                let hard = ctl.hard_resets.load(Ordering::Relaxed);
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                let fault_tx = Arc::new(fault_tx);
                tokio::spawn(pump(
                    client_read,
                    server_write,
                    fault_rx.clone(),
                    Arc::clone(&fault_tx),
                    cut.filter(|c| c.from_client).map(|c| c.bytes),
                    true,
                    hard,
                ));
                tokio::spawn(pump(
                    server_read,
                    client_write,
                    fault_rx,
                    fault_tx,
                    cut.filter(|c| !c.from_client).map(|c| c.bytes),
                    false,
                    hard,
                ));
            }
        });
        *control.accept_task.lock().unwrap() = Some(accepting.abort_handle());
        Self { addr, control }
    }

    /// Stops the proxy: closes its listener (the accept loop ends) and resets every
    /// connection still carried. The proxy's tasks and sockets are gone soon after.
    pub(crate) fn stop(&self) {
        if let Some(task) = self.control.accept_task.lock().unwrap().take() {
            task.abort();
        }
        self.fault(Fault::Rst);
    }

    /// A reset (by [`Fault::Rst`], [`Fault::MidFrame`], a handshake cut or
    /// [`ChaosProxy::stop`]) is an RST alone by default, as from a peer that crashes or a
    /// middlebox that drops the flow. With `hard` unset, connections accepted from now on are
    /// reset after a FIN (dropping tokio's `OwnedWriteHalf` shuts the write side down before
    /// the socket closes with SO_LINGER 0), so the receiver reads an orderly end of stream
    /// and the RST goes unnoticed.
    pub(crate) fn hard_resets(&self, hard: bool) {
        self.control.hard_resets.store(hard, Ordering::Relaxed);
    }

    /// Where clients connect.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Breaks every connection now carried.
    pub(crate) fn fault(&self, fault: Fault) {
        for conn in self.control.conns.lock().unwrap().iter() {
            let _ = conn.send(Some(fault));
        }
    }

    /// Arms a cut of the next connection's opening.
    pub(crate) fn cut_next_handshake(&self, cut: HandshakeCut) {
        *self.control.handshake_cut.lock().unwrap() = Some(cut);
    }

    /// Sends new connections to another server.
    pub(crate) fn retarget(&self, target: SocketAddr) {
        *self.control.targets.lock().unwrap() = vec![target];
    }

    /// While `down`, every new connection is reset at once (the server is unreachable).
    pub(crate) fn set_down(&self, down: bool) {
        self.control.down.store(down, Ordering::Relaxed);
    }

    /// Connections accepted so far.
    pub(crate) fn accepted(&self) -> u64 {
        self.control.accepted.load(Ordering::Relaxed)
    }
}

fn reset(w: &OwnedWriteHalf) {
    let _ = AsRef::<TcpStream>::as_ref(w).set_zero_linger();
}

/// Resets the connection `w` writes to once its read half is dropped too; `hard`: without
/// shutting the write side down first (see [`ChaosProxy::hard_resets`]).
fn reset_and_drop(w: OwnedWriteHalf, hard: bool) {
    reset(&w);
    if hard {
        w.forget();
    }
}

/// Forwards one direction (`client_to_server` says which) until the source ends or a fault
/// says otherwise.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut fault: watch::Receiver<Option<Fault>>,
    all: Arc<watch::Sender<Option<Fault>>>,
    mut cut_after: Option<usize>,
    client_to_server: bool,
    hard: bool,
) {
    let mut buf = vec![0u8; 16 << 10];
    let mut blackholed = false;
    // Fault::Delay: the delay, the chunks read and not yet due (in order), and when the end
    // of the source, once read, is due.
    let mut delay: Option<Duration> = None;
    let mut due: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut end_due: Option<Instant> = None;
    loop {
        let next_due = due.front().map(|(at, _)| *at).or(end_due);
        tokio::select! {
            read = from.read(&mut buf), if end_due.is_none() => {
                let n = match read {
                    Ok(0) | Err(_) => {
                        if let Some(d) = delay {
                            end_due = Some(Instant::now() + d);
                            continue;
                        }
                        let _ = to.shutdown().await;
                        return;
                    }
                    Ok(n) => n,
                };
                if blackholed {
                    continue;
                }
                if let Some(d) = delay {
                    due.push_back((Instant::now() + d, buf[..n].to_vec()));
                    continue;
                }
                let mid_frame = *fault.borrow() == Some(Fault::MidFrame);
                if let Some(left) = cut_after {
                    let k = left.min(n);
                    let _ = to.write_all(&buf[..k]).await;
                    if k < n || left == n {
                        reset_and_drop(to, hard);
                        let _ = all.send(Some(Fault::Rst));
                        return;
                    }
                    cut_after = Some(left - k);
                    continue;
                }
                if mid_frame && n >= 2 {
                    let _ = to.write_all(&buf[..n / 2]).await;
                    reset_and_drop(to, hard);
                    let _ = all.send(Some(Fault::Rst));
                    return;
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)),
                if next_due.is_some() =>
            {
                let now = Instant::now();
                while due.front().is_some_and(|(at, _)| *at <= now) {
                    let Some((_, chunk)) = due.pop_front() else { break };
                    if to.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
                if due.is_empty() && end_due.is_some_and(|at| at <= now) {
                    let _ = to.shutdown().await;
                    return;
                }
            }
            changed = fault.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = *fault.borrow_and_update();
                match now {
                    Some(Fault::Rst) => {
                        reset_and_drop(to, hard);
                        return;
                    }
                    Some(Fault::Fin) => {
                        let _ = to.shutdown().await;
                        return;
                    }
                    Some(Fault::Blackhole) => blackholed = true,
                    Some(Fault::Delay(d)) => delay = Some(d),
                    Some(Fault::HalfOpen { client_to_server: flowing }) => {
                        if flowing != client_to_server {
                            blackholed = true;
                        }
                    }
                    Some(Fault::MidFrame) | None => {}
                }
            }
        }
    }
}

/// What [`ChaosProxy::break_at_random`] does to the connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Chaos {
    /// Only resets.
    Resets,
    /// Resets, FINs and cuts in the middle of a frame.
    Cuts,
    /// All of those, blackholes (only keepalive notices), and opening handshakes cut short.
    Everything,
}

/// How many breaks of each kind [`ChaosProxy::break_at_random`] made: RST, FIN, mid-frame,
/// blackhole, opening handshake cut short (in that order).
#[derive(Debug, Default)]
pub(crate) struct Breaks([AtomicU64; 5]);

impl Breaks {
    pub(crate) const KINDS: [&'static str; 5] =
        ["rst", "fin", "mid-frame", "blackhole", "handshake cut"];

    /// All the breaks made.
    pub(crate) fn total(&self) -> u64 {
        self.0.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The breaks of each kind, in the order of [`Breaks::KINDS`].
    pub(crate) fn each(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed))
    }
}

impl ChaosProxy {
    /// Breaks every connection carried every 50–500 ms, in the ways `chaos` names, until the
    /// task is aborted; counts the breaks of each kind.
    pub(crate) fn break_at_random(
        &self,
        chaos: Chaos,
    ) -> (tokio::task::JoinHandle<()>, Arc<Breaks>) {
        use rand::Rng as _;
        let proxy = self.clone();
        let breaks = Arc::new(Breaks::default());
        let counted = Arc::clone(&breaks);
        let kinds = match chaos {
            Chaos::Resets => 1,
            Chaos::Cuts => 3,
            Chaos::Everything => 5,
        };
        let task = tokio::spawn(async move {
            loop {
                let (wait, pick, from_client, bytes) = {
                    let mut rng = rand::rng();
                    (
                        rng.random_range(50..=500),
                        rng.random_range(0..kinds),
                        rng.random_bool(0.5),
                        rng.random_range(1..200),
                    )
                };
                tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
                match pick {
                    0 => proxy.fault(Fault::Rst),
                    1 => proxy.fault(Fault::Fin),
                    2 => proxy.fault(Fault::MidFrame),
                    3 => proxy.fault(Fault::Blackhole),
                    _ => {
                        proxy.cut_next_handshake(HandshakeCut { from_client, bytes });
                        proxy.fault(Fault::Rst);
                    }
                }
                counted.0[pick].fetch_add(1, Ordering::Relaxed);
            }
        });
        (task, breaks)
    }
}
