//! A real Envoy process for a test: started from a YAML config, ready when its admin port
//! says so, killed when dropped. Its log is kept and shown if it never gets ready.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::http::status_11;
use crate::process::{Proc, tail};

pub struct Envoy {
    pub port: u16,
    // Field order: the process stops before its directory (config, log) is removed.
    pub proc: Proc,
    _dir: tempfile::TempDir,
}

impl Envoy {
    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }
}

/// Starts Envoy with a full YAML config whose listener is `port` and admin `admin`, and waits
/// (up to 30 s) until the admin port answers `/ready` with 200.
pub async fn run_envoy(bin: &Path, yaml: String, port: u16, admin: u16) -> Envoy {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("envoy.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let proc = Proc::spawn(
        "envoy",
        Command::new(bin)
            .arg("-c")
            .arg(&cfg)
            .args(["--concurrency", "1", "--log-level", "warn", "--base-id"])
            // Distinct per instance: Envoys sharing a base id fight over shared memory.
            .arg(port.to_string()),
        dir.path(),
    );
    let envoy = Envoy {
        port,
        proc,
        _dir: dir,
    };
    let start = Instant::now();
    loop {
        if status_11(admin, "/ready").await == Some(200) {
            return envoy;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for: envoy ready\n{}",
            tail(&envoy.log_text(), 40)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A STATIC cluster on 127.0.0.1 (YAML for `static_resources.clusters`), HTTP/2 when `http2`
/// (a gRPC service).
pub fn static_cluster(name: &str, addr: std::net::SocketAddr, http2: bool) -> String {
    let proto = if http2 {
        r#"
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}"#
    } else {
        ""
    };
    format!(
        r#"
  - name: {name}
    type: STATIC
    connect_timeout: 1s{proto}
    load_assignment:
      cluster_name: {name}
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]"#,
        port = addr.port()
    )
}
