//! Real Envoy for end-to-end tests: found through `ENVOY_BIN`, else `<workspace>/.venv/bin/envoy`.
//! When it is missing the tests say so and pass, unless `FHIRGUARD_REQUIRE_ENVOY=1` (CI sets
//! it), which turns a missing Envoy into a failure.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::eventually;

pub fn envoy_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("ENVOY_BIN") {
        return Some(PathBuf::from(p));
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/envoy");
    if p.exists() {
        return Some(p);
    }
    if std::env::var("FHIRGUARD_REQUIRE_ENVOY").as_deref() == Ok("1") {
        panic!(
            "Envoy is required (FHIRGUARD_REQUIRE_ENVOY=1) but neither ENVOY_BIN nor .venv/bin/envoy exists"
        );
    }
    eprintln!("SKIPPED: no Envoy binary (set ENVOY_BIN or run scripts/setup-envoy.sh)");
    None
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
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cluster(name: &str, addr: SocketAddr, http2: bool) -> String {
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

pub async fn start_envoy(bin: &PathBuf, grpc: SocketAddr, upstream: SocketAddr) -> Envoy {
    start_envoy_with(bin, grpc, upstream, "").await
}

/// [`start_envoy`] with extra HttpConnectionManager settings (YAML lines at its indentation).
pub async fn start_envoy_with(
    bin: &PathBuf,
    grpc: SocketAddr,
    upstream: SocketAddr,
    hcm_extra: &str,
) -> Envoy {
    let port = free_port();
    let admin = free_port();
    let yaml = format!(
        r#"
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: ingress
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress{hcm_extra}
          route_config:
            virtual_hosts:
            - name: named
              domains: ["named.test"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: upstream}}
              typed_per_filter_config:
                envoy.filters.http.ext_authz:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                  check_settings:
                    context_extensions: {{"fhirguard.dev/policy": "clinical/ehr"}}
            - name: misnamed
              domains: ["misnamed.test"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: upstream}}
              typed_per_filter_config:
                envoy.filters.http.ext_authz:
                  "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                  check_settings:
                    context_extensions: {{"fhirguard.dev/policy": "clinical/missing"}}
            - name: fhir
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: upstream}}
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: false
              status_on_error: {{code: 503}}
              with_request_body: {{max_request_bytes: 1048576, allow_partial_message: true, pack_as_bytes: true}}
              grpc_service:
                envoy_grpc: {{cluster_name: authz}}
                timeout: 5s
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:{authz}{up}
"#,
        authz = cluster("authz", grpc, true),
        up = cluster("upstream", upstream, false),
    );
    run_envoy(bin, yaml, port, admin).await
}

/// Starts Envoy with a full YAML config whose listener is `port` and admin `admin`.
pub async fn run_envoy(bin: &PathBuf, yaml: String, port: u16, admin: u16) -> Envoy {
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
            "--log-level",
            "warn",
            "--base-id",
        ])
        .arg(format!("{}", port))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting envoy");
    let envoy = Envoy {
        child,
        port,
        _dir: dir,
    };
    let client = reqwest::Client::new();
    eventually("envoy ready", Duration::from_secs(30), async || {
        client
            .get(format!("http://127.0.0.1:{admin}/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    envoy
}
