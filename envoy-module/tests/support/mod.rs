//! Test support: the module's `.so`, a real Envoy (through `ENVOY_BIN` or `.venv/bin/envoy`),
//! an echo upstream, a raw HTTP/1.1 client, and the gRPC service for the comparison.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fhirguard_authz::observe::Ignore;
use fhirguard_authz::runtime::executor::{Executor, Options};
use fhirguard_authz::runtime::reload;
use fhirguard_authz::server::envoy::EnvoyAuthz;
use test_support::fhir_stub::{FhirStub, start_fhir_stub};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Envoy, found and reported the way every e2e test finds it (fails when missing unless
/// FHIRGUARD_SKIP_MISSING / FHIRGUARD_SKIP_ENVOY opts out, with a loud SKIPPED line).
#[track_caller]
pub fn envoy_bin() -> Option<PathBuf> {
    test_support::bins::envoy()
}

/// The real Envoy executable behind the PyPI wrapper script (for `nm`).
pub fn envoy_executable(bin: &Path) -> PathBuf {
    let venv = bin.parent().and_then(Path::parent).map(Path::to_path_buf);
    if let Some(venv) = venv {
        for entry in std::fs::read_dir(venv.join("lib"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let p = entry.path().join("site-packages/envoy/_bin/envoy");
            if p.exists() {
                return p;
            }
        }
    }
    bin.to_path_buf()
}

/// The directory holding `libfhirguard_envoy_module.so`, built by this `cargo test` run (the
/// library is a dependency of the test, so cargo built it first, next to this executable).
pub fn module_dir() -> PathBuf {
    const NAME: &str = "libfhirguard_envoy_module.so";
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap().to_path_buf();
    for dir in [deps.clone(), deps.join("..")] {
        if dir.join(NAME).exists() {
            return dir;
        }
    }
    // Not next to the test (an unusual cargo layout): build it.
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "-p", "fhirguard-envoy-module"])
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cargo build -p fhirguard-envoy-module failed"
    );
    let dir = deps.join("..");
    assert!(dir.join(NAME).exists(), "{NAME} not found after building");
    dir
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Envoy {
    child: Child,
    pub admin: u16,
    pub dir: tempfile::TempDir,
}

impl Envoy {
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn eventually(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Starts Envoy with `yaml` (whose admin port is `admin`) and the module on its search path.
pub async fn run_envoy(bin: &Path, yaml: &str, admin: u16, extra_args: &[&str]) -> Envoy {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("envoy.yaml");
    std::fs::write(&cfg, yaml).unwrap();
    let log = std::fs::File::create(dir.path().join("envoy.log")).unwrap();
    let child = Command::new(bin)
        .args([
            "-c",
            cfg.to_str().unwrap(),
            "--concurrency",
            "1",
            "--base-id",
        ])
        .arg(admin.to_string())
        .args(extra_args)
        .env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", module_dir())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting envoy");
    let envoy = Envoy { child, admin, dir };
    let start = Instant::now();
    loop {
        if let Ok(r) = get_status(admin, "/ready").await
            && r == 200
        {
            return envoy;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "envoy did not become ready:\n{}",
            envoy.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn get_status(port: u16, path: &str) -> std::io::Result<u16> {
    let r = send(
        port,
        &format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").into_bytes(),
    )
    .await?;
    Ok(r.status)
}

pub use test_support::envoy::static_cluster as cluster;

/// The module's HTTP filter entry for `config_dir`.
pub fn module_filter(config_dir: &Path, extra: &str) -> String {
    let json = format!(r#"{{"config_dir": "{}"{extra}}}"#, config_dir.display());
    format!(
        r#"
          - name: envoy.filters.http.dynamic_modules
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config: {{name: fhirguard_envoy_module}}
              filter_name: fhirguard
              filter_config:
                "@type": type.googleapis.com/google.protobuf.StringValue
                value: '{json}'"#
    )
}

pub fn ext_authz_filter() -> &'static str {
    r#"
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: false
              status_on_error: {code: 503}
              with_request_body: {max_request_bytes: 1048576, allow_partial_message: true, pack_as_bytes: true}
              grpc_service:
                envoy_grpc: {cluster_name: authz}
                timeout: 5s"#
}

pub const ROUTER: &str = r#"
          - name: envoy.filters.http.router
            typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}"#;

/// A listener on `port` with `routes` (YAML list at route level) and `filters`.
pub fn listener(name: &str, port: u16, routes: &str, filters: &str) -> String {
    format!(
        r#"
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:{routes}
          http_filters:{filters}{ROUTER}"#
    )
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// One raw HTTP/1.1 exchange (`Connection: close` is added), read to the end.
pub async fn send(port: u16, raw: &[u8]) -> std::io::Result<Response> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.write_all(raw).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("timeout"))??;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {text:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: body.to_string(),
    })
}

/// Builds a request: `headers` as given (names keep their spelling), a body with its length.
pub fn request(
    method: &str,
    path: &str,
    host: &str,
    headers: &[(String, String)],
    body: &str,
) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n");
    let mut has_length = false;
    for (k, v) in headers {
        has_length |= k.eq_ignore_ascii_case("content-length");
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() && !has_length {
        out.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.into_bytes()
}

/// An HTTP/1.1 upstream answering 200 with a JSON echo `{method, path, headers, body}`.
pub async fn start_echo() -> SocketAddr {
    start_stub(HashMap::new()).await
}

/// [`start_echo`], except that GETs of a path in `resources` get that body (a FHIR read).
pub async fn start_stub(resources: HashMap<String, String>) -> SocketAddr {
    let stub = FhirStub::default();
    for (path, body) in resources {
        stub.put(&path, 200, &body);
    }
    start_fhir_stub(stub).await
}

/// The ext_authz gRPC service on a free port, reading `dir`.
pub async fn start_grpc_service(dir: &Path) -> SocketAddr {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let executor = Arc::new(Executor::new(Arc::new(Ignore), Options::default()));
    let _ = reload::reload_now(&executor, dir);
    std::mem::forget(reload::watch(
        executor.clone(),
        dir.to_path_buf(),
        Duration::from_secs(1),
    ));
    let incoming = tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap())
        .unwrap()
        .with_nodelay(Some(true));
    let addr = incoming.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EnvoyAuthz::new(executor).into_server())
            .serve_with_incoming(incoming),
    );
    addr
}
