//! Real Envoy for end-to-end tests, configured as an ext_authz front of fhirguard. Finding the
//! binary (and failing, or with an explicit opt-out skipping, when it is missing) and running
//! the process are `test_support`'s: see `test_support::bins`.

use std::net::SocketAddr;
use std::path::Path;

pub use test_support::bins::envoy as envoy_bin;
pub use test_support::envoy::{Envoy, run_envoy};
pub use test_support::ports::free_port;

use test_support::envoy::static_cluster as cluster;

pub async fn start_envoy(bin: &Path, grpc: SocketAddr, upstream: SocketAddr) -> Envoy {
    start_envoy_with(bin, grpc, upstream, "").await
}

/// [`start_envoy`] with extra HttpConnectionManager settings (YAML lines at its indentation).
pub async fn start_envoy_with(
    bin: &Path,
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
