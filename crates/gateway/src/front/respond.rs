//! Writing the gateway's own responses on a raw HTTP/1 connection.

use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::http_error::ApiError;

/// Writes `error` as a complete response. `keep_alive` false adds `Connection: close`.
/// Gives up after `timeout` (a client that reads nothing cannot hold the task).
pub async fn write_error<S: AsyncWrite + Unpin>(
    io: &mut S,
    error: &ApiError,
    keep_alive: bool,
    timeout: Duration,
) -> std::io::Result<()> {
    let bytes = render(error, keep_alive);
    let write = async {
        io.write_all(&bytes).await?;
        io.flush().await
    };
    tokio::time::timeout(timeout, write)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// The response bytes: status line, headers, JSON body.
pub fn render(error: &ApiError, keep_alive: bool) -> Vec<u8> {
    let body = error.body();
    let reason = http::StatusCode::from_u16(error.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nCache-Control: no-store\r\n",
        error.status,
        body.len()
    );
    if let Some(secs) = error.retry_after {
        out.push_str(&format!("Retry-After: {}\r\n", secs.max(1)));
    }
    if let Some(allow) = error.allow {
        out.push_str(&format!("Allow: {allow}\r\n"));
    }
    for (name, value) in &error.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&body);
    bytes
}

/// A `204 No Content` (CORS preflights) with `headers`.
pub async fn write_no_content<S: AsyncWrite + Unpin>(
    io: &mut S,
    headers: &[(&'static str, String)],
    keep_alive: bool,
    timeout: Duration,
) -> std::io::Result<()> {
    let mut out = String::from("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    let write = async {
        io.write_all(out.as_bytes()).await?;
        io.flush().await
    };
    tokio::time::timeout(timeout, write)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn renders_status_headers_and_json() {
        let text = String::from_utf8(render(&ApiError::draining(2), false)).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nRetry-After: 2\r\n"));
        assert!(text.contains("\r\nConnection: close\r\n\r\n{\"error\":\"draining\""));
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }
}
