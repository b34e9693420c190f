//! Reading the answers of servers fhirguard calls (JWKS and OpenID discovery endpoints, token
//! and introspection endpoints, the FHIR server for compartment lookups).
//!
//! Every body is read chunk by chunk against a limit: a `Content-Length` over it is refused
//! before reading, and a body without one (chunked, or a server that lies) is cut off as soon
//! as it passes the limit. A misbehaving or hostile endpoint can then cost at most the limit
//! in memory, never whatever it streams until the client's timeout.

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    Read(String),
}

/// The whole body of `resp`, at most `max` bytes.
pub async fn read_bounded(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, BodyError> {
    if resp.content_length().is_some_and(|l| l > max as u64) {
        return Err(BodyError::TooLarge(max));
    }
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                if body.len() + c.len() > max {
                    return Err(BodyError::TooLarge(max));
                }
                body.extend_from_slice(&c);
            }
            Ok(None) => return Ok(body),
            // Without the URL: a lookup's URL names the resource, and with it a patient.
            Err(e) => return Err(BodyError::Read(error_chain(&e.without_url()))),
        }
    }
}

/// An error with its causes (reqwest's top-level message hides certificate errors, for one).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers every request with `head` and then, when `endless`, chunks of
    /// 1 KiB until the client goes away.
    async fn server(head: &'static str, endless: bool) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = tcp.read(&mut buf).await;
                    if tcp.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let chunk = format!("400\r\n{}\r\n", "x".repeat(1024));
                    while endless && tcp.write_all(chunk.as_bytes()).await.is_ok() {}
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn bodies_are_cut_at_the_limit() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::new();
        // Chunked without end: refused once past the limit, not read until a timeout.
        let endless = server(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            true,
        )
        .await;
        let resp = client
            .get(format!("http://{endless}/"))
            .send()
            .await
            .unwrap();
        let r = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            read_bounded(resp, 64 * 1024),
        )
        .await
        .unwrap();
        assert!(matches!(r, Err(BodyError::TooLarge(65536))), "{r:?}");
        // A declared length over the limit: refused before reading.
        let declared = server(
            "HTTP/1.1 200 OK\r\ncontent-length: 999999999\r\n\r\n",
            false,
        )
        .await;
        let resp = client
            .get(format!("http://{declared}/"))
            .send()
            .await
            .unwrap();
        assert!(matches!(
            read_bounded(resp, 1024).await,
            Err(BodyError::TooLarge(1024))
        ));
        // Within the limit: whole.
        let small = server("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", false).await;
        let resp = client.get(format!("http://{small}/")).send().await.unwrap();
        assert_eq!(read_bounded(resp, 5).await.unwrap(), b"hello");
    }
}
