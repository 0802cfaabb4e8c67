//! The status HTTP port (`status_listen`): `GET /metrics` (Prometheus text
//! format) and `GET /healthz`. Plain HTTP/1.1, one request per connection.
//!
//! Deliberately tiny and bounded: a small request-header limit, a read
//! timeout and a cap on concurrent connections, so a scraper gone wrong
//! cannot hurt the node. It reads node state and never changes it.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::node::Node;

/// Largest request head accepted.
pub const STATUS_REQUEST_BYTES_MAX: usize = 8 * 1024;
/// Time a client has to send its request head.
pub const STATUS_READ_TIMEOUT_MS: u64 = 5_000;
/// Connections served at once; more wait in the accept backlog.
pub const STATUS_CONNECTIONS_MAX: usize = 64;

/// Serves the status port until the task is dropped.
pub async fn serve(node: Arc<Node>, listener: TcpListener) {
    let slots = Arc::new(Semaphore::new(STATUS_CONNECTIONS_MAX));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "status port accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let node = node.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = handle(&node, stream).await {
                tracing::debug!(error = %e, "status request");
            }
        });
    }
}

/// Reads the request head (up to the blank line) within the limits.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            head.extend_from_slice(&buf[..n]);
            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                return Ok(());
            }
            if head.len() > STATUS_REQUEST_BYTES_MAX {
                return Err(std::io::Error::other("request head too large"));
            }
        }
    };
    tokio::time::timeout(Duration::from_millis(STATUS_READ_TIMEOUT_MS), read)
        .await
        .map_err(|_| std::io::Error::other("request head timed out"))??;
    Ok(head)
}

async fn handle(node: &Node, mut stream: TcpStream) -> std::io::Result<()> {
    let head = read_head(&mut stream).await?;
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            crate::metrics::render(node),
        ),
        ("GET", "/healthz") => ("200 OK", "text/plain; charset=utf-8", "ok\n".to_string()),
        ("GET", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: try /metrics\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
