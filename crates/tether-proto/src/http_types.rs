//! Conversions between the handshake's own types and the `http` crate's (feature `http`).
//!
//! The handshake keeps its own [`Headers`], [`Request`] and [`Response`]: they hold what came
//! over the wire as it came (the peer's header case and order, repeated headers, values that
//! are not UTF-8, the truncated body prefix of a rejected upgrade), which the `http` types
//! normalise away, and the core stays free of dependencies it does not need. Code that speaks
//! `http` converts at the edge, in one call.

use bytes::Bytes;

use crate::handshake::{Request, Response};
use crate::http::Headers;

impl From<&::http::HeaderMap> for Headers {
    /// Every entry of the map, repeated names as separate entries, in the map's order.
    fn from(map: &::http::HeaderMap) -> Self {
        let mut headers = Self::new();
        for (name, value) in map {
            headers.push(name.as_str(), value.as_bytes());
        }
        headers
    }
}

impl From<::http::HeaderMap> for Headers {
    fn from(map: ::http::HeaderMap) -> Self {
        Self::from(&map)
    }
}

impl Headers {
    /// The headers as an `http::HeaderMap`, repeated names kept. An entry whose name is not
    /// an HTTP token or whose value holds a byte HTTP forbids (none do when they came from
    /// tether's parser) is left out.
    pub fn to_header_map(&self) -> ::http::HeaderMap {
        let mut map = ::http::HeaderMap::with_capacity(self.len());
        for h in self {
            let name = ::http::HeaderName::from_bytes(h.name.as_bytes());
            let value = ::http::HeaderValue::from_bytes(&h.value);
            if let (Ok(name), Ok(value)) = (name, value) {
                map.append(name, value);
            }
        }
        map
    }
}

impl From<&Headers> for ::http::HeaderMap {
    fn from(headers: &Headers) -> Self {
        headers.to_header_map()
    }
}

impl Response {
    /// The response as an `http::Response` whose body is the kept body prefix (see
    /// [`Response::body_truncated`]).
    pub fn to_http(&self) -> ::http::Response<Bytes> {
        http_response(
            self.status,
            &self.headers,
            Bytes::copy_from_slice(&self.body),
        )
    }
}

impl From<Response> for ::http::Response<Bytes> {
    fn from(response: Response) -> Self {
        http_response(
            response.status,
            &response.headers,
            Bytes::from(response.body),
        )
    }
}

fn http_response(status: u16, headers: &Headers, body: Bytes) -> ::http::Response<Bytes> {
    let mut response = ::http::Response::new(body);
    // The parser accepts three-digit status codes only, all of which `StatusCode` takes.
    *response.status_mut() =
        ::http::StatusCode::from_u16(status).unwrap_or(::http::StatusCode::INTERNAL_SERVER_ERROR);
    *response.headers_mut() = headers.to_header_map();
    response
}

impl Request {
    /// The upgrade request as an `http::Request` (method, target as URI, HTTP/1.1, headers),
    /// for routing or authentication code written against `http`. Fails only when the target
    /// is not a URI the `http` crate accepts.
    pub fn to_http(&self) -> Result<::http::Request<()>, ::http::Error> {
        let mut request = ::http::Request::builder()
            .method(self.method.as_str())
            .uri(self.path.as_str())
            .version(::http::Version::HTTP_11)
            .body(())?;
        *request.headers_mut() = self.headers.to_header_map();
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::{validate_request, ClientHandshake, ClientRequest, HeadLimits};

    fn upgrade_headers() -> Headers {
        let mut h = Headers::new();
        h.push("Host", "example.com");
        h.push("Upgrade", "websocket");
        h.push("Connection", "Upgrade");
        h.push("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==");
        h.push("Sec-WebSocket-Version", "13");
        h.push("Sec-WebSocket-Protocol", "chat");
        h.push("Sec-WebSocket-Protocol", "superchat");
        h.push("X-Raw", b"caf\xe9".to_vec());
        h
    }

    #[test]
    fn headers_round_trip_through_a_header_map_with_repeats_and_raw_bytes() {
        let headers = upgrade_headers();
        let map = headers.to_header_map();
        assert_eq!(map.len(), headers.len());
        let protocols: Vec<_> = map.get_all("sec-websocket-protocol").iter().collect();
        assert_eq!(protocols, ["chat", "superchat"]);
        assert_eq!(map["x-raw"].as_bytes(), b"caf\xe9");
        let back = Headers::from(&map);
        assert_eq!(back.len(), headers.len());
        assert_eq!(back.get("x-raw"), Some(&b"caf\xe9"[..]));
        assert_eq!(
            back.get_all("Sec-WebSocket-Protocol").collect::<Vec<_>>(),
            [&b"chat"[..], b"superchat"]
        );
    }

    #[test]
    fn invalid_entries_are_left_out_of_a_header_map() {
        let mut headers = Headers::new();
        headers.push("bad name", "x");
        headers.push("Good", "ok");
        headers.push("Line", "a\nb");
        let map = headers.to_header_map();
        assert_eq!(map.len(), 1);
        assert_eq!(map["good"], "ok");
    }

    #[test]
    fn request_converts_to_an_http_request() {
        let request = validate_request("GET", "/chat?room=1", true, upgrade_headers()).unwrap();
        let http = request.to_http().unwrap();
        assert_eq!(http.method(), ::http::Method::GET);
        assert_eq!(http.uri().path(), "/chat");
        assert_eq!(http.uri().query(), Some("room=1"));
        assert_eq!(http.version(), ::http::Version::HTTP_11);
        assert_eq!(
            http.headers()["sec-websocket-key"],
            "dGhlIHNhbXBsZSBub25jZQ=="
        );
    }

    #[test]
    fn rejected_handshake_response_converts_with_status_headers_and_body() {
        let request = ClientRequest {
            host: "example.com".into(),
            ..ClientRequest::default()
        };
        let mut client = ClientHandshake::try_new(
            &request,
            crate::handshake::generate_key(),
            HeadLimits::default(),
        )
        .unwrap();
        let answer = b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"x\"\r\n\
            Content-Length: 5\r\n\r\nnope\n";
        let response = match client.receive(answer) {
            Err(crate::handshake::HandshakeError::Status(response)) => response,
            other => panic!("a 401 is a status error, got {other:?}"),
        };
        let http = response.to_http();
        assert_eq!(http.status(), ::http::StatusCode::UNAUTHORIZED);
        assert_eq!(http.headers()["www-authenticate"], "Basic realm=\"x\"");
        assert_eq!(&http.body()[..], b"nope\n");
        let owned: ::http::Response<Bytes> = response.into();
        assert_eq!(owned.status(), 401);
        assert_eq!(&owned.body()[..], b"nope\n");
    }
}
