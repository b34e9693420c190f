//! A stand-in FHIR server on loopback: stored answers for GETs of known paths (what a
//! compartment lookup reads), a JSON echo of every other request (what an upstream behind
//! Envoy received), and a record of everything that arrived.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What a FHIR stub holds: path → (status, body) for GETs, and what it saw.
#[derive(Clone, Default)]
pub struct FhirStub {
    pub resources: Arc<Mutex<std::collections::HashMap<String, (u16, String)>>>,
    /// Authorization headers of the GETs that hit a stored path.
    pub lookups: Arc<Mutex<Vec<String>>>,
    /// Every request that arrived, as `{method, path, headers}` (lookups included).
    pub seen: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl FhirStub {
    pub fn put(&self, path: &str, status: u16, body: &str) {
        self.resources
            .lock()
            .unwrap()
            .insert(path.to_string(), (status, body.to_string()));
    }
}

/// An HTTP/1.1 server: GETs of stored paths get the stored answer (a stand-in for a FHIR
/// server's read), every other request a 200 JSON echo of what arrived.
pub async fn start_fhir_stub(stub: FhirStub) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let stub = stub.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 8192];
                loop {
                    // Read one request head (and body by content-length), answer, repeat.
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let mut lines = head.split("\r\n");
                    let request_line = lines.next().unwrap_or("").to_string();
                    let mut headers = serde_json::Map::new();
                    let mut len = 0usize;
                    for l in lines {
                        if let Some((k, v)) = l.split_once(':') {
                            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
                            if k == "content-length" {
                                len = v.parse().unwrap_or(0);
                            }
                            headers.insert(k, serde_json::Value::String(v));
                        }
                    }
                    while buf.len() < head_end + len {
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body_json: serde_json::Value =
                        serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or_default();
                    let body_text =
                        String::from_utf8_lossy(&buf[head_end..head_end + len]).to_string();
                    buf.drain(..head_end + len);
                    let mut parts = request_line.split(' ');
                    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                    stub.seen.lock().unwrap().push(
                        serde_json::json!({"method": method, "path": path, "headers": headers.clone(), "body": body_json}),
                    );
                    let stored = (method == "GET")
                        .then(|| stub.resources.lock().unwrap().get(path).cloned())
                        .flatten();
                    let (status, body) = match stored {
                        Some(answer) => {
                            let auth = headers
                                .get("authorization")
                                .and_then(|v| v.as_str())
                                .unwrap_or("")
                                .to_string();
                            stub.lookups.lock().unwrap().push(auth);
                            answer
                        }
                        None => (
                            200,
                            serde_json::json!({"method": method, "path": path, "headers": headers, "body": body_text})
                                .to_string(),
                        ),
                    };
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if tcp.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}
