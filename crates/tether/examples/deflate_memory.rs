//! Heap bytes per connection with and without permessage-deflate, client and server side.
//!
//! ```text
//! cargo run --release -p tether --example deflate_memory [PAIRS]
//! ```
//!
//! For each setting (compression off, `DeflateConfig::default()`, `low_memory()`,
//! `best_compression()`, the same on both ends) it opens PAIRS (default 100) loopback
//! connections between a tether client and a tether server in this process, measures the heap
//! they hold once open, then again after 10 messages of 1 KiB of JSON-like text each way (the
//! client sends, the server echoes), and prints a markdown table of bytes per connection.
//!
//! The server runs on one thread and the clients on another, each with its own current-thread
//! runtime; a counting global allocator charges every allocation and free to the thread that
//! makes it, so the two sides are told apart. One warm-up connection runs first so that
//! per-thread buffers (the read scratch buffer) are not counted against the connections.
//! Kernel socket buffers are not heap and are not counted.
//!
//! A second table isolates the codec: the heap a compressor and a decompressor hold between
//! messages (context takeover), by window size and zlib memory level, measured on
//! `tether::proto::Connection`s with and without permessage-deflate.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use tether::proto::{Connection, DeflateParams, Event, Role};
use tether::{ClientBuilder, Config, DeflateConfig, Message, Server, ServerConfig, WebSocket};

/// Messages each way per connection.
const MESSAGES: usize = 10;
/// Size of each message.
const MESSAGE_SIZE: usize = 1024;
/// Wait for the other thread to finish what the last exchange started.
const SETTLE: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------------------------
// Counting, per side
// ---------------------------------------------------------------------------------------------

const OTHER: usize = 0;
const CLIENT: usize = 1;
const SERVER: usize = 2;

/// Net heap bytes allocated by threads of each side.
static NET: [AtomicIsize; 3] = [
    AtomicIsize::new(0),
    AtomicIsize::new(0),
    AtomicIsize::new(0),
];

thread_local! {
    /// The side the current thread's allocations are charged to.
    static SIDE: Cell<usize> = const { Cell::new(OTHER) };
}

fn side() -> usize {
    // During thread teardown the slot may be gone: charge such stragglers to OTHER.
    SIDE.try_with(Cell::get).unwrap_or(OTHER)
}

fn charge(delta: isize) {
    NET[side()].fetch_add(delta, Ordering::Relaxed);
}

struct Counting;

// SAFETY: every method forwards to `System` with the arguments it was given, so the
// allocator's contract is `System`'s; the accounting only touches atomics and a const
// thread-local, and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc`'s contract, passed on unchanged.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            charge(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            charge(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` (through this allocator) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        charge(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` was allocated by `System` with `layout`; the caller upholds the rest.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            charge(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Net bytes held by each side now.
fn snapshot() -> [isize; 3] {
    [0, 1, 2].map(|i| NET[i].load(Ordering::SeqCst))
}

// ---------------------------------------------------------------------------------------------
// The measurement
// ---------------------------------------------------------------------------------------------

/// JSON-like text of `MESSAGE_SIZE` bytes, different for every `seq`.
fn message(seq: usize) -> String {
    let mut s = String::with_capacity(MESSAGE_SIZE + 100);
    let mut i = seq * 100;
    while s.len() < MESSAGE_SIZE {
        s.push_str(&format!(
            "{{\"seq\":{i},\"symbol\":\"TETH-USD\",\"price\":{},\"side\":\"buy\"}}\n",
            (i * 7919) % 100_003
        ));
        i += 1;
    }
    s.truncate(MESSAGE_SIZE);
    s
}

/// Sends `MESSAGES` messages on `ws` and takes their echoes.
async fn exchange(ws: &mut WebSocket, first: usize) {
    for seq in first..first + MESSAGES {
        let text = message(seq);
        ws.send(Message::text(text.clone())).await.expect("send");
        match ws.recv().await {
            Some(Ok(Message::Text(echo))) if echo == text => {}
            other => panic!("expected the echo, got {other:?}"),
        }
    }
}

async fn open_client(url: &str, config: &Config) -> WebSocket {
    ClientBuilder::new(url)
        .config(config.clone())
        .connect()
        .await
        .expect("connect")
}

/// Bytes per connection, by side: once open, and after the messages.
struct Row {
    open: [isize; 3],
    after: [isize; 3],
}

fn measure(config: &Config, pairs: usize) -> Row {
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_config = config.clone();
    let server = std::thread::spawn(move || {
        SIDE.with(|s| s.set(SERVER));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let server = Server::bind("127.0.0.1:0", ServerConfig::default().config(server_config))
                .await
                .expect("bind");
            port_tx
                .send(server.local_addr().expect("local_addr").port())
                .expect("send the port");
            let handle = server.shutdown_handle();
            let serving = tokio::spawn(server.serve(|mut ws, _request| async move {
                while let Some(Ok(msg)) = ws.recv().await {
                    if ws.send(msg).await.is_err() {
                        break;
                    }
                }
                while ws.recv().await.is_some() {}
            }));
            let _ = stop_rx.await;
            handle.shutdown();
            let _ = serving.await;
        });
    });
    let port = port_rx.recv().expect("the server's port");

    let client_config = config.clone();
    let client = std::thread::spawn(move || {
        SIDE.with(|s| s.set(CLIENT));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let url = format!("ws://127.0.0.1:{port}/");
            let connect = || open_client(&url, &client_config);

            // Warm-up: per-thread buffers, the server's task set, the runtimes' own growth.
            let mut ws = connect().await;
            exchange(&mut ws, 0).await;
            ws.close(1000, "").await.expect("close");
            drop(ws);
            tokio::time::sleep(SETTLE).await;

            let base = snapshot();
            let mut sockets = Vec::with_capacity(pairs);
            for _ in 0..pairs {
                sockets.push(connect().await);
            }
            tokio::time::sleep(SETTLE).await;
            let open = snapshot();
            for (i, ws) in sockets.iter_mut().enumerate() {
                exchange(ws, i * MESSAGES).await;
            }
            tokio::time::sleep(SETTLE).await;
            let after = snapshot();
            for ws in &mut sockets {
                ws.close(1000, "").await.expect("close");
            }
            let per = |now: [isize; 3]| [0, 1, 2].map(|i| (now[i] - base[i]) / pairs as isize);
            Row {
                open: per(open),
                after: per(after),
            }
        })
    });
    let row = client.join().expect("the client thread");
    let _ = stop_tx.send(());
    server.join().expect("the server thread");
    row
}

/// Runs `make` and returns what it made with the heap bytes that remain allocated for it (on
/// this thread's side).
fn held<T>(make: impl FnOnce() -> T) -> (isize, T) {
    let before = snapshot()[OTHER];
    let made = make();
    (snapshot()[OTHER] - before, made)
}

/// Bytes a compressor and a decompressor keep between messages, for windows of 2^`bits` bytes
/// and zlib memory level `mem_level`: a Connection with permessage-deflate (context takeover
/// both ways) after one message, less one without it after the same message.
fn codec_bytes(bits: u8, mem_level: u8) -> (isize, isize) {
    let params = DeflateParams {
        server_no_context_takeover: false,
        client_no_context_takeover: false,
        server_max_window_bits: bits,
        client_max_window_bits: bits,
    };
    let settings = DeflateConfig {
        mem_level,
        ..DeflateConfig::best_compression()
    };
    let text = message(0);
    let now = std::time::Instant::now();
    let config = || tether::proto::Config::default().ping_interval(None);
    // Sends one message, then keeps the sender (whose output is taken).
    let send = |deflate: bool| {
        let mut tx = Connection::new(Role::Server, config(), now);
        if deflate {
            tx.enable_deflate(params, &settings);
        }
        tx.send_text(&text).expect("send");
        let frame = tx.take_transmit();
        (tx, frame)
    };
    // Receives one message, then keeps the receiver (whose event is taken).
    let receive = |deflate: bool, frame: &[u8]| {
        let mut rx = Connection::new(Role::Client, config(), now);
        if deflate {
            rx.enable_deflate(params, &settings);
        }
        rx.receive(frame, now);
        match rx.poll_event() {
            Some(Event::Text(t)) => assert_eq!(t, text),
            other => panic!("expected the message, got {other:?}"),
        }
        rx
    };
    let (with_tx, (tx, deflated)) = held(|| send(true));
    let (without_tx, (plain_tx, plain)) = held(|| send(false));
    // The frames were counted with their senders: take their buffers out of the sums.
    let compressor =
        (with_tx - deflated.capacity() as isize) - (without_tx - plain.capacity() as isize);
    let (with_rx, rx) = held(|| receive(true, &deflated));
    let (without_rx, plain_rx) = held(|| receive(false, &plain));
    drop((tx, plain_tx, rx, plain_rx));
    (compressor, with_rx - without_rx)
}

fn main() {
    let pairs: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("PAIRS is a number"))
        .unwrap_or(100);
    let settings = [
        ("off", Config::default().compression(None)),
        ("`DeflateConfig::default()`", Config::default()),
        (
            "`DeflateConfig::low_memory()`",
            Config::default().compression(Some(DeflateConfig::low_memory())),
        ),
        (
            "`DeflateConfig::best_compression()`",
            Config::default().compression(Some(DeflateConfig::best_compression())),
        ),
    ];
    println!(
        "Heap bytes per connection, {pairs} loopback pairs; \"after\": after {MESSAGES} \
         messages of {MESSAGE_SIZE} B of JSON-like text each way.\n"
    );
    println!(
        "| compression | client, open | server, open | client, after | server, after | \
         other threads |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, config) in settings {
        let row = measure(&config, pairs);
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            row.open[CLIENT],
            row.open[SERVER],
            row.after[CLIENT],
            row.after[SERVER],
            row.after[OTHER]
        );
    }

    println!(
        "\nThe codec alone: heap a compressor and a decompressor keep between messages (context \
         takeover), after one {MESSAGE_SIZE}-byte message.\n"
    );
    println!("| window bits | mem_level | compressor | decompressor |");
    println!("|---:|---:|---:|---:|");
    for bits in [9, 12, 15] {
        for mem_level in [1, 5, 9] {
            let (compressor, decompressor) = codec_bytes(bits, mem_level);
            println!("| {bits} | {mem_level} | {compressor} | {decompressor} |");
        }
    }
}
