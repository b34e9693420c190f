//! Small HTTPS servers for outbound tests: an OAuth token endpoint and a FHIR stand-in that
//! echoes what it received (path and Authorization), both behind a test CA.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use test_support::pki::TestPki;

/// Reads one HTTP/1.1 request (head and a content-length body).
async fn read_request<S: tokio::io::AsyncRead + Unpin>(tls: &mut S) -> Option<(String, String)> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                let text = String::from_utf8_lossy(&got).into_owned();
                let (head, body) = text.split_once("\r\n\r\n").unwrap_or_default();
                return Some((head.to_string(), body.to_string()));
            }
        }
        match tls.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// An HTTPS FHIR stand-in: answers 200 with `{"path": ..., "authorization": ...}`.
pub async fn start_https_echo(pki: &TestPki) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = pki.acceptor();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                while let Some((head, _)) = read_request(&mut tls).await {
                    let path = head.split(' ').nth(1).unwrap_or("").to_string();
                    let authorization = head.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("authorization")
                            .then(|| v.trim().to_string())
                    });
                    let body = serde_json::json!({"path": path, "authorization": authorization})
                        .to_string();
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/fhir+json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if tls.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[derive(Clone)]
pub enum Mode {
    Ok { expires_in: u64 },
    Fail { status: u16, body: &'static str },
}

/// A token endpoint: counts requests, records the last one, answers per `mode` after `delay`.
pub struct TokenServer {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub mode: Arc<Mutex<Mode>>,
    pub last: Arc<Mutex<(String, String)>>,
}

impl TokenServer {
    pub async fn start(pki: &TestPki, mode: Mode, delay: Duration) -> TokenServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let mode = Arc::new(Mutex::new(mode));
        let last = Arc::new(Mutex::new((String::new(), String::new())));
        let acceptor = pki.acceptor();
        let (h, m, l) = (hits.clone(), mode.clone(), last.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, h, m, l) = (acceptor.clone(), h.clone(), m.clone(), l.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Some((head, body)) = read_request(&mut tls).await else {
                        return;
                    };
                    let n = h.fetch_add(1, Ordering::SeqCst) + 1;
                    *l.lock().unwrap() = (head, body);
                    tokio::time::sleep(delay).await;
                    let mode = m.lock().unwrap().clone();
                    let (status, body) = match mode {
                        Mode::Ok { expires_in } => (
                            200,
                            format!(
                                r#"{{"access_token":"token-{n}","token_type":"Bearer","expires_in":{expires_in}}}"#
                            ),
                        ),
                        Mode::Fail { status, body } => (status, body.to_string()),
                    };
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(resp.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        TokenServer {
            addr,
            hits,
            mode,
            last,
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/oauth2/token", self.addr.port())
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}
