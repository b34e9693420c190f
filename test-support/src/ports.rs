//! Loopback ports.

/// A port that was free on 127.0.0.1 a moment ago (for processes that must be told a port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
