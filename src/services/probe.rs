//! HTTP and TCP readiness probes.
//!
//! The HTTP probe is a minimal HTTP/1.1 GET over a tokio `TcpStream`: probes only ever target a
//! local service's health URL over plain HTTP, so a full client (and its TLS and connection pool
//! dependencies) would add build weight for nothing. Bodies are read to the end of the connection
//! (`Connection: close`), with chunked transfer decoding.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::config::{HttpProbe, TcpProbe};

/// A health body is small; a larger answer is cut here rather than read without bound.
const MAX_RESPONSE_BYTES: u64 = 1 << 20;

/// Whether a TCP connection to the probe's address is accepted within `limit`.
pub async fn probe_tcp(probe: &TcpProbe, default_port: u16, limit: Duration) -> Result<(), String> {
    let port = probe.port.map(|p| p.get() as u16).unwrap_or(default_port);
    match timeout(limit, TcpStream::connect((probe.host.as_str(), port))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("tcp {}:{port}: {e}", probe.host)),
        Err(_) => Err(format!(
            "tcp {}:{port}: no answer within {} ms",
            probe.host,
            limit.as_millis()
        )),
    }
}

/// Whether a GET on the probe's URL answers the expected status (and JSON field) within `limit`.
pub async fn probe_http(probe: &HttpProbe, limit: Duration) -> Result<(), String> {
    let url = &probe.url;
    let (status, body) = match timeout(limit, http_get(&url.host, url.port, &url.path)).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => return Err(format!("GET {url}: {e}")),
        Err(_) => {
            return Err(format!(
                "GET {url}: no answer within {} ms",
                limit.as_millis()
            ))
        }
    };
    if status != probe.expect_status.get() as u16 {
        return Err(format!(
            "GET {url}: status {status}, expected {}",
            probe.expect_status.get()
        ));
    }
    let Some(field) = &probe.json_field else {
        return Ok(());
    };
    let json: Value =
        serde_json::from_slice(&body).map_err(|e| format!("GET {url}: body is not JSON: {e}"))?;
    let found = field.split('.').try_fold(&json, |v, key| v.get(key));
    let ok = match (&probe.json_value, found) {
        (Some(want), Some(got)) => got == want,
        (None, Some(got)) => !matches!(got, Value::Null | Value::Bool(false)),
        (_, None) => false,
    };
    if ok {
        Ok(())
    } else {
        let got = found.map_or("nothing".to_string(), Value::to_string);
        Err(format!("GET {url}: {field} is {got}"))
    }
}

async fn http_get(host: &str, port: u16, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect((host, port)).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE_BYTES)
        .read_to_end(&mut raw)
        .await?;
    parse_response(&raw).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed HTTP response")
    })
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
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
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

    #[test]
    fn parses_plain_and_chunked_responses() {
        let plain = b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n\r\n{\"status\":\"not_ready\"}";
        assert_eq!(
            parse_response(plain),
            Some((503, b"{\"status\":\"not_ready\"}".to_vec()))
        );
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked), Some((200, b"{\"a\":1}".to_vec())));
        assert_eq!(parse_response(b"garbage"), None);
    }
}
