//! HTTP and TCP readiness probes.
//!
//! The HTTP probe is a minimal HTTP/1.1 GET over a tokio `TcpStream`: probes only ever target a
//! local service's health URL over plain HTTP, so a full client (and its TLS and connection pool
//! dependencies) would add build weight for nothing. Bodies are read to the end of the connection
//! (or to its `Content-Length`), with chunked transfer decoding.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::config::{HttpProbe, TcpProbe};

/// A health body is small; a larger answer is cut here rather than read without bound.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Whether a TCP connection to the probe's address is accepted within `limit`.
pub async fn probe_tcp(probe: &TcpProbe, default_port: u16, limit: Duration) -> Result<(), String> {
    let port = probe.port.map(|p| p.get() as u16).unwrap_or(default_port);
    match timeout(limit, TcpStream::connect((probe.host.as_str(), port))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("tcp {}:{port}: {e}", probe.host)),
        Err(_) => Err(format!("tcp {}:{port}: no answer within {} ms", probe.host, limit.as_millis())),
    }
}

/// Whether a GET on the probe's URL answers the expected status (and JSON field) within `limit`.
pub async fn probe_http(probe: &HttpProbe, limit: Duration) -> Result<(), String> {
    let url = &probe.url;
    let (status, body) = match timeout(limit, http_get(&url.host, url.port, &url.path)).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => return Err(format!("GET {url}: {e}")),
        Err(_) => return Err(format!("GET {url}: no answer within {} ms", limit.as_millis())),
    };
    if !probe.expect_status.matches(status) {
        return Err(format!("GET {url}: status {status}, expected {}", probe.expect_status));
    }
    let Some(field) = &probe.json_field else {
        return Ok(());
    };
    let json: Value = match serde_json::from_slice(&body) {
        Ok(json) => json,
        Err(_) if probe.json_field_optional => return Ok(()),
        Err(e) => return Err(format!("GET {url}: body is not JSON: {e}")),
    };
    match field.split('.').try_fold(&json, |v, key| v.get(key)) {
        Some(got) if probe.field_is_ready(got) => Ok(()),
        Some(got) => Err(format!("GET {url}: {field} is {got}")),
        None if probe.json_field_optional => Ok(()),
        None => Err(format!("GET {url}: {field} is nothing")),
    }
}

async fn http_get(host: &str, port: u16, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect((host, port)).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: */*\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 8192];
    // Read until the body is complete rather than only until EOF: a server that keeps the
    // connection open despite `Connection: close` must not turn every probe into a timeout.
    while !response_complete(&raw) && raw.len() < MAX_RESPONSE_BYTES {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..n]);
    }
    parse_response(&raw).ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed HTTP response"))
}

/// Whether `raw` holds a whole response: its head and, when the head says how long the body is
/// (`Content-Length` or chunked), all of the body. Otherwise the body ends at EOF.
fn response_complete(raw: &[u8]) -> bool {
    let Some(head_end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let body = &raw[head_end + 4..];
    for line in head.split("\r\n").skip(1) {
        if let Some(length) = line.strip_prefix("content-length:") {
            return length.trim().parse::<usize>().is_ok_and(|n| body.len() >= n);
        }
        if line.starts_with("transfer-encoding:") && line.contains("chunked") {
            return body.ends_with(b"0\r\n\r\n");
        }
    }
    false
}

/// Splits a raw HTTP/1.x response into its status and (de-chunked) body.
fn parse_response(raw: &[u8]) -> Option<(u16, Vec<u8>)> {
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = lines.any(|l| {
        let lower = l.to_ascii_lowercase();
        lower.starts_with("transfer-encoding:") && lower.contains("chunked")
    });
    let body = &raw[head_end + 4..];
    let body = if chunked { dechunk(body)? } else { body.to_vec() };
    Some((status, body))
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tokio::net::TcpListener;

    /// Serves `response` (a status line, then a body) to every connection on a fresh port.
    async fn serve(response: &'static str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request).await;
                let (status, body) = response.split_once('\n').unwrap();
                let answer = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        port
    }

    fn probe(port: u16, rest: Value) -> HttpProbe {
        let mut spec = json!({ "url": format!("http://127.0.0.1:{port}/health") });
        spec.as_object_mut().unwrap().extend(rest.as_object().unwrap().clone());
        serde_json::from_value(spec).unwrap()
    }

    /// The manifest services' check: a 2xx whose `status` is not a not-ready value, a body
    /// without JSON or without `status` on its status code.
    #[tokio::test]
    async fn ready_and_not_ready_values_a_status_class_and_an_optional_field() {
        let manifest = json!({ "expectStatus": "2xx", "jsonField": "status", "jsonFieldOptional": true,
            "notReadyValues": ["not_ready", "loading", "starting", "initializing"] });
        let limit = Duration::from_secs(2);
        let cases: [(&'static str, bool); 11] = [
            ("200 OK\n{\"status\":\"ok\"}", true),
            ("200 OK\n{\"status\":\"healthy\"}", true),
            ("200 OK\n{\"status\":\"degraded\"}", true),
            ("204 No Content\n", true),
            ("200 OK\nOK", true),
            ("200 OK\n{\"uptime\":3}", true),
            ("200 OK\n{\"status\":\"not_ready\"}", false),
            ("200 OK\n{\"status\":\"Loading\"}", false),
            ("202 Accepted\n{\"status\":\"initializing\"}", false),
            ("503 Service Unavailable\n{\"status\":\"ok\"}", false),
            ("301 Moved\n", false),
        ];
        for (response, ready) in cases {
            let port = serve(response).await;
            let result = probe_http(&probe(port, manifest.clone()), limit).await;
            assert_eq!(result.is_ok(), ready, "{response}: {result:?}");
        }
        let port = serve("200 OK\n{\"status\":\"starting\"}").await;
        let reason = probe_http(&probe(port, manifest.clone()), limit).await.unwrap_err();
        assert_eq!(reason, format!("GET http://127.0.0.1:{port}/health: status is \"starting\""));

        // readyValues: only those; a field that is required is required.
        let strict = json!({ "jsonField": "state.phase", "readyValues": ["ok", "healthy"] });
        for (response, ready) in [
            ("200 OK\n{\"state\":{\"phase\":\"HEALTHY\"}}", true),
            ("200 OK\n{\"state\":{\"phase\":\"degraded\"}}", false),
            ("200 OK\n{\"state\":{}}", false),
            ("200 OK\nOK", false),
        ] {
            let port = serve(response).await;
            assert_eq!(probe_http(&probe(port, strict.clone()), limit).await.is_ok(), ready, "{response}");
        }
    }

    #[test]
    fn parses_plain_and_chunked_responses() {
        let plain =
            b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n\r\n{\"status\":\"not_ready\"}";
        assert_eq!(parse_response(plain), Some((503, b"{\"status\":\"not_ready\"}".to_vec())));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked), Some((200, b"{\"a\":1}".to_vec())));
        assert_eq!(parse_response(b"garbage"), None);
        assert!(!response_complete(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab"));
        assert!(response_complete(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nab"));
        assert!(response_complete(chunked));
        assert!(!response_complete(b"HTTP/1.0 200 OK\r\n\r\nuntil eof"));
    }
}
