//! The `http` crate's types at tether's edges: a client opened from `&str`, `String`,
//! `url::Url`, `http::Uri` or an `http::Request<()>` (whose headers are added to the
//! handshake's, never replacing them), a hook that reads the request as `http::Request` and
//! answers with an `http::Response`, and a rejected handshake's response as `http::Response`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tether::{ClientBuilder, Error, HttpResponse, Server, ServerConfig};
use tokio::time::timeout;

/// Bounds every wait, so that a bug fails the test instead of hanging it.
const GUARD: Duration = Duration::from_secs(20);

/// An echo server that records the headers of every upgrade request, and answers
/// `/private` with a 401 built as an `http::Response` by a hook that reads the request as
/// an `http::Request`.
async fn recording_server() -> (String, Arc<Mutex<Vec<http::Request<()>>>>) {
    let seen: Arc<Mutex<Vec<http::Request<()>>>> = Arc::default();
    let hook_seen = seen.clone();
    let config = ServerConfig::default()
        .subprotocol("v2.feed")
        .process_request(move |req| {
            let request = req.to_http().expect("a valid request target");
            let private = request.uri().path() == "/private";
            hook_seen.lock().unwrap().push(request);
            private.then(|| {
                http::Response::builder()
                    .status(401)
                    .header("WWW-Authenticate", "Bearer realm=\"feed\"")
                    .body("token required\n")
                    .unwrap()
                    .into()
            })
        });
    let server = Server::bind("127.0.0.1:0", config).await.unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.serve(|mut ws, _| async move {
        while let Some(Ok(msg)) = ws.recv().await {
            if ws.send(msg).await.is_err() {
                break;
            }
        }
    }));
    (format!("ws://{addr}"), seen)
}

async fn echo_once(builder: ClientBuilder) -> tether::WebSocket {
    let mut ws = timeout(GUARD, builder.connect()).await.unwrap().unwrap();
    ws.send("ping").await.unwrap();
    let reply = timeout(GUARD, ws.recv()).await.unwrap().unwrap().unwrap();
    assert_eq!(reply.as_text(), Some("ping"));
    ws
}

#[tokio::test]
async fn client_opens_from_every_url_type() {
    let (base, seen) = recording_server().await;
    let url = format!("{base}/from?x=1");
    let parsed = url::Url::parse(&url).unwrap();
    let uri: http::Uri = url.parse().unwrap();
    echo_once(ClientBuilder::new(url.as_str())).await;
    echo_once(ClientBuilder::new(url.clone())).await;
    echo_once(ClientBuilder::new(&url)).await;
    echo_once(ClientBuilder::new(parsed.clone())).await;
    echo_once(ClientBuilder::new(&parsed)).await;
    echo_once(ClientBuilder::new(uri.clone())).await;
    echo_once(ClientBuilder::new(&uri)).await;
    let mut ws = timeout(GUARD, tether::connect(uri)).await.unwrap().unwrap();
    ws.close(1000, "").await.unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 8);
    for request in seen.iter() {
        assert_eq!(request.uri(), "/from?x=1");
        assert_eq!(request.method(), http::Method::GET);
    }
}

#[tokio::test]
async fn request_headers_are_added_and_never_replace_the_handshake() {
    let (base, seen) = recording_server().await;
    // Built by hand the way other libraries ask for: with handshake headers of its own, which
    // would break the upgrade if they replaced tether's.
    let request = http::Request::builder()
        .uri(format!("{base}/feed"))
        .header("Host", "wrong.example")
        .header("Upgrade", "h2c")
        .header("Connection", "close")
        .header("Sec-WebSocket-Key", "not a key")
        .header("Sec-WebSocket-Version", "8")
        .header("Sec-WebSocket-Extensions", "x-unknown")
        .header("Sec-WebSocket-Protocol", "v1.feed, v2.feed")
        .header("Origin", "https://app.example")
        .header("User-Agent", "feed-bot/3")
        .header("Authorization", "Bearer t0ken")
        .header("X-Trace", "a")
        .header("X-Trace", "b")
        .body(())
        .unwrap();
    let ws = echo_once(ClientBuilder::new(&request)).await;
    assert_eq!(
        ws.subprotocol(),
        Some("v2.feed"),
        "offered from the request"
    );
    assert!(ws.extensions().unwrap().contains("permessage-deflate"));

    let seen = seen.lock().unwrap();
    let headers = seen[0].headers();
    let host = base.trim_start_matches("ws://");
    assert_eq!(headers["host"], host);
    assert_eq!(headers["upgrade"], "websocket");
    assert_eq!(headers["sec-websocket-version"], "13");
    assert_eq!(headers.get_all("sec-websocket-key").iter().count(), 1);
    assert_ne!(headers["sec-websocket-key"], "not a key");
    let extensions = headers["sec-websocket-extensions"].to_str().unwrap();
    assert!(extensions.starts_with("permessage-deflate"), "{extensions}");
    assert_eq!(headers["sec-websocket-protocol"], "v1.feed, v2.feed");
    assert_eq!(headers["origin"], "https://app.example");
    assert_eq!(headers["user-agent"], "feed-bot/3");
    assert_eq!(headers["authorization"], "Bearer t0ken");
    let traces: Vec<_> = headers.get_all("x-trace").iter().collect();
    assert_eq!(traces, ["a", "b"]);
}

#[tokio::test]
async fn a_request_header_that_is_not_text_fails_before_connecting() {
    let request = http::Request::builder()
        // Nothing listens here: the error must come before any connection attempt.
        .uri("ws://127.0.0.1:9/")
        .header(
            "X-Bytes",
            http::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
        )
        .body(())
        .unwrap();
    let err = ClientBuilder::new(request).connect().await.unwrap_err();
    match err {
        Error::InvalidUri(reason) => assert!(reason.contains("x-bytes"), "{reason}"),
        other => panic!("expected InvalidUri, got {other:?}"),
    }
}

#[tokio::test]
async fn hook_answers_with_an_http_response_and_the_client_sees_it_as_one() {
    let (base, _) = recording_server().await;
    let err = timeout(GUARD, tether::connect(format!("{base}/private")))
        .await
        .unwrap()
        .unwrap_err();
    let response = err.response().expect("the 401 is kept").to_http();
    assert_eq!(response.status(), http::StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer realm=\"feed\""
    );
    assert_eq!(&response.body()[..], b"token required\n");
}

#[test]
fn http_response_converts_both_ways() {
    let ours = HttpResponse::text(503, "busy\n").header("Retry-After", "7");
    let theirs = ours.clone().into_http();
    assert_eq!(theirs.status(), 503);
    assert_eq!(theirs.headers()["retry-after"], "7");
    assert_eq!(
        theirs.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    assert_eq!(&theirs.body()[..], b"busy\n");
    let back = HttpResponse::from(theirs);
    assert_eq!((back.status, &back.body), (ours.status, &ours.body));
    // The `http` crate spells names in lower case.
    let lower: Vec<_> = ours
        .headers
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
        .collect();
    assert_eq!(back.headers, lower);
}
