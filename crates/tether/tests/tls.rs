//! Integration tests of `wss://`: a private CA made with rcgen, certificate verification
//! against it and against the default roots, and the explicit opt-out.

use std::net::SocketAddr;
use std::time::Duration;

mod support;
use support::pki::{make_pki, Pki};
use tether::{ClientBuilder, Error, Message, Server, ServerConfig, TlsConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const GUARD: Duration = Duration::from_secs(10);

/// A TLS echo server on loopback.
async fn tls_echo_server(pki: &Pki) -> SocketAddr {
    let tls = tether::tls::server_config_from_pem(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes())
        .unwrap();
    let server = Server::bind("127.0.0.1:0", ServerConfig::default().tls(tls))
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.serve(|mut ws, _request| async move {
        while let Some(Ok(msg)) = ws.recv().await {
            if ws.send(msg).await.is_err() {
                break;
            }
        }
    }));
    addr
}

fn trusting_ca(pki: &Pki) -> TlsConfig {
    TlsConfig::default()
        .only_added_cas()
        .add_ca_pem(pki.ca_pem.as_bytes())
        .unwrap()
}

async fn round_trip(ws: &mut tether::WebSocket) {
    let big = vec![0x5Au8; 300 << 10];
    for msg in [Message::text("over tls"), Message::binary(big)] {
        ws.send(msg.clone()).await.unwrap();
        match timeout(GUARD, ws.recv()).await.unwrap() {
            Some(Ok(back)) => assert!(back == msg, "the echo differs"),
            other => panic!("expected the echo, got {other:?}"),
        }
    }
    ws.close(1000, "").await.unwrap();
    assert_eq!(ws.close_code(), 1000);
}

#[tokio::test]
async fn wss_round_trip_with_a_private_ca() {
    let pki = make_pki(&["localhost", "127.0.0.1"]);
    let addr = tls_echo_server(&pki).await;
    for url in [
        format!("wss://localhost:{}/", addr.port()),
        format!("wss://127.0.0.1:{}/", addr.port()),
    ] {
        let mut ws = ClientBuilder::new(&url)
            .tls(trusting_ca(&pki))
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert!(matches!(ws.get_ref(), tether::MaybeTlsStream::ClientTls(_)));
        round_trip(&mut ws).await;
    }
}

#[tokio::test]
async fn default_roots_reject_a_private_ca_with_a_certificate_error() {
    let pki = make_pki(&["localhost", "127.0.0.1"]);
    let addr = tls_echo_server(&pki).await;
    let err = tether::connect(&format!("wss://localhost:{}/", addr.port()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Tls(_)), "got {err:?}");
    assert!(err.is_certificate_error(), "got {err:?}");
}

#[tokio::test]
async fn a_certificate_for_another_name_is_a_certificate_error() {
    let pki = make_pki(&["example.invalid"]);
    let addr = tls_echo_server(&pki).await;
    let err = ClientBuilder::new(format!("wss://localhost:{}/", addr.port()))
        .tls(trusting_ca(&pki))
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Tls(_)), "got {err:?}");
    assert!(err.is_certificate_error(), "got {err:?}");
}

#[tokio::test]
async fn a_tls_failure_that_is_not_about_certificates_is_not_a_certificate_error() {
    // A server that answers the ClientHello with plain HTTP.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        tcp.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        let mut sink = Vec::new();
        let _ = tcp.read_to_end(&mut sink).await;
    });
    let err = ClientBuilder::new(format!("wss://localhost:{}/", addr.port()))
        .tls(TlsConfig::default().danger_accept_invalid_certs())
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Tls(_)), "got {err:?}");
    assert!(!err.is_certificate_error(), "got {err:?}");
}

#[tokio::test]
async fn danger_accept_invalid_certs_connects_to_an_untrusted_server() {
    let pki = make_pki(&["example.invalid"]);
    let addr = tls_echo_server(&pki).await;
    let mut ws = ClientBuilder::new(format!("wss://localhost:{}/", addr.port()))
        .tls(TlsConfig::default().danger_accept_invalid_certs())
        .connect()
        .await
        .unwrap();
    round_trip(&mut ws).await;
}

#[test]
fn pem_input_errors_are_reported() {
    let pki = make_pki(&["localhost"]);
    assert!(TlsConfig::default().add_ca_pem(b"not pem").is_err());
    assert!(tether::tls::server_config_from_pem(b"", pki.key_pem.as_bytes()).is_err());
    assert!(tether::tls::server_config_from_pem(pki.cert_pem.as_bytes(), b"").is_err());
}
