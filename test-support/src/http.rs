//! Plain HTTP on loopback without a client library, and Prometheus text samples.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A plain HTTP/1.0 GET on 127.0.0.1; `None` when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    get(port, path, "HTTP/1.0")
}

fn get(port: u16, path: &str, version: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} {version}\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split(' ').nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|x| x.1).unwrap_or_default();
    Some((status, body.to_string()))
}

/// The status of an HTTP/1.1 GET (`Connection: close`) on 127.0.0.1, without blocking the async
/// runtime's thread. Envoy's admin port refuses HTTP/1.0 (426), so this is the one to ask it.
pub async fn status_11(port: u16, path: &str) -> Option<u16> {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || get(port, &path, "HTTP/1.1").map(|(status, _)| status))
        .await
        .ok()
        .flatten()
}

/// The value of the first sample line starting with `prefix` (metric name plus labels).
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
