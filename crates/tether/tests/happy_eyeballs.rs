//! Happy Eyeballs (RFC 8305) through the client: a name whose first address blackholes and
//! whose second works connects through the second, one stagger delay in, instead of waiting
//! out the open timeout. The name's addresses come from `ClientBuilder::resolve`, on two
//! loopback addresses with the same port. (The exact timing of the race is proven on the
//! paused clock in `happy.rs`'s unit tests; here the proof is that the connection is made at
//! all while the first address never answers.)

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tether::{ClientBuilder, Message, Server, ServerConfig};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Far below the open timeout: a client that waited for the blackhole would not make it.
const GUARD: Duration = Duration::from_secs(20);
const OPEN_TIMEOUT: Duration = Duration::from_secs(120);

/// A listener on `addr` whose accept queue is full, so that the kernel drops new SYNs and
/// a connect to it hangs (Linux, without `tcp_abort_on_overflow`). Proven before use: a
/// connect must fail to finish in 200 ms. Returns the listener and the queued connections,
/// to keep them open.
async fn blackhole(addr: SocketAddr) -> (tokio::net::TcpListener, Vec<TcpStream>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(addr).unwrap();
    let listener = socket.listen(1).unwrap();
    let mut queued = Vec::new();
    for _ in 0..16 {
        match timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(stream) => queued.push(stream.unwrap()),
            Err(_) => return (listener, queued),
        }
    }
    panic!("{addr}: 16 connects to a listen(1) socket all completed: no blackhole here");
}

#[tokio::test]
async fn a_name_whose_first_address_blackholes_connects_through_the_second() {
    let good: IpAddr = [127, 0, 0, 1].into();
    let hole: IpAddr = [127, 0, 0, 2].into();
    let server = Server::bind((good, 0), ServerConfig::default())
        .await
        .unwrap();
    let port = server.local_addr().unwrap().port();
    let _hole = blackhole(SocketAddr::new(hole, port)).await;
    let (hosts, mut host_seen) = mpsc::unbounded_channel();
    tokio::spawn(server.serve(move |mut ws, request| {
        let _ = hosts.send(request.header("host").map(str::to_owned));
        async move {
            while let Some(Ok(msg)) = ws.recv().await {
                if ws.send(msg).await.is_err() {
                    break;
                }
            }
        }
    }));

    let mut ws = timeout(
        GUARD,
        ClientBuilder::new(format!("ws://echo.test:{port}/"))
            // A later call for the same name, whatever its case, replaces an earlier one
            // (127.0.0.9 has nothing listening: it would be refused).
            .resolve("echo.test", [[127, 0, 0, 9].into()])
            .resolve("ECHO.test", [hole, good])
            .happy_eyeballs_delay(Duration::from_millis(100))
            .open_timeout(OPEN_TIMEOUT)
            .no_proxy()
            .connect(),
    )
    .await
    .expect("connected through the second address, not after the open timeout")
    .expect("connected");
    assert_eq!(
        host_seen.recv().await.unwrap().as_deref(),
        Some(format!("echo.test:{port}").as_str()),
        "the request still names the host"
    );
    ws.send(Message::text("eyeballs")).await.unwrap();
    let echo = timeout(GUARD, ws.recv()).await.unwrap().unwrap().unwrap();
    assert_eq!(echo, Message::text("eyeballs"));
    ws.close(1000, "").await.unwrap();
}

#[tokio::test]
async fn a_name_given_no_working_address_fails_with_every_address_named() {
    // Nothing listens on either address (ports from listeners that were closed again).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let error = ClientBuilder::new(format!("ws://down.test:{port}/"))
        .resolve("down.test", [[127, 0, 0, 3].into(), [127, 0, 0, 1].into()])
        .no_proxy()
        .connect()
        .await
        .expect_err("nothing listens");
    let message = error.to_string();
    for addr in [format!("127.0.0.3:{port}"), format!("127.0.0.1:{port}")] {
        assert!(message.contains(&addr), "{addr} in {message}");
    }
    assert_eq!(error.kind(), tether::ErrorKind::Io, "{error:?}");
}
