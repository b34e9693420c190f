//! fhirguard behind real Envoy configured the way the meshes configure ext_authz, so that
//! docs/mesh.md's claims are measured, not assumed:
//!
//! - **Istio** (an `AuthorizationPolicy` with action `CUSTOM` and a
//!   `meshConfig.extensionProviders[].envoyExtAuthzGrpc` provider) puts, in the server
//!   workload's inbound sidecar, an RBAC filter in shadow mode that marks the requests the
//!   policy's rules match, then the ext_authz filter enabled only for marked requests
//!   (`filter_enabled_metadata`), with no per-route context extensions, a 600 s gRPC timeout,
//!   `status_on_error` only if `statusOnError` is set, the body only with
//!   `includeRequestBodyInCheck`, and the mesh's default path normalisation (`BASE`:
//!   `normalize_path`, no slash merging, escaped slashes kept).
//! - **Envoy Gateway** (a `SecurityPolicy` with `extAuth.grpc.backendRefs`) adds one ext_authz
//!   filter per policy, disabled in the listener and enabled on the policy's routes (optionally
//!   with `contextExtensions`), a 10 s timeout, no `status_on_error`, the body with
//!   `bodyToExtAuth.maxRequestBytes` (no partial bodies: larger ones get 413), and the gateway's
//!   defaults: `normalize_path`, merged slashes, escaped slashes unescaped and redirected.
//!
//! Policies are chosen by host and basePath (Istio cannot name one per route): every in-mesh
//! spelling of a Service's host (`svc`, `svc.ns`, `svc.ns.svc`, the FQDN, each with and without
//! port) reaches the right policy when the policy lists it, and nothing else does.

// A test crate of its own: clippy.toml's allow-*-in-tests covers #[test] functions only, and
// here a failed unwrap in a helper is a failed test as well.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::real_envoy::{Envoy, envoy_bin, free_port, run_envoy};
use common::*;
use fhirguard_authz::config::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const EHR: [&str; 4] = [
    "ehr-fhir",
    "ehr-fhir.clinical",
    "ehr-fhir.clinical.svc",
    "ehr-fhir.clinical.svc.cluster.local",
];
const COHORT: [&str; 4] = [
    "cohort-fhir",
    "cohort-fhir.research",
    "cohort-fhir.research.svc",
    "cohort-fhir.research.svc.cluster.local",
];
/// A SMART app's scopes in the body checks: read and search Observations, create them.
const OBS: &str = "patient/Observation.rs patient/Observation.c";

fn policy(
    ns: &str,
    name: &str,
    hosts: &[&str],
    base: &str,
    users: &[(&str, Permission)],
    jwks_uri: Option<&str>,
) -> PolicyConfig {
    let htpasswd: Vec<String> = users
        .iter()
        .map(|(u, _)| bcrypt_line(u, &format!("{u}-pw")))
        .collect();
    PolicyConfig {
        audit: None,
        smart_configuration: None,
        namespace: ns.into(),
        name: name.into(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        base_path: base.into(),
        public_paths: default_public_paths(),
        unauthenticated_access: false,
        authentication: AuthenticationConfig {
            introspection: None,
            combine: Combine::AnyOf,
            basic: Some(BasicConfig {
                htpasswd: htpasswd.join("\n"),
                access: users
                    .iter()
                    .map(|(u, p)| AccessRule {
                        users: vec![u.to_string()],
                        permission: *p,
                    })
                    .collect(),
            }),
            jwt: jwks_uri.map(|uri| JwtConfig {
                token_sources: vec![TokenSource::Header],
                require_subject_matches_basic_user: false,
                providers: vec![ProviderConfig {
                    name: "idp".into(),
                    issuer: ISSUER.into(),
                    audiences: vec![AUDIENCE.into()],
                    algorithms: vec![Algorithm::ES256],
                    clock_skew_seconds: 5,
                    jwks: JwksConfig {
                        uri: Some(uri.into()),
                        refresh_interval_seconds: 600,
                        tls: TlsConfig {
                            mode: TlsMode::CustomBundle,
                            ca_file: Some("idp-ca.pem".into()),
                        },
                        document: None,
                    },
                    claims: ClaimNames::default(),
                }],
            }),
        },
        authorization: AuthorizationConfig::default(),
    }
}

/// fhirguard with the mesh policies, an IdP for SMART tokens, and an echo upstream.
struct Mesh {
    key: SigningKey,
    svc: RunningService,
    upstream: SocketAddr,
    _jwks: JwksServer,
    _dir: ConfigDir,
}

impl Mesh {
    async fn start() -> Mesh {
        init();
        let pki = TestPki::new();
        let key = SigningKey::new("k1");
        let jwks = JwksServer::start(&pki, jwks_doc(&[&key])).await;
        let uri = jwks.uri();
        use Permission::{Read, ReadWrite};
        let config = CompiledConfig {
            version: FORMAT_VERSION,
            generation: 1,
            policies: vec![
                policy(
                    "clinical",
                    "ehr",
                    &EHR,
                    "/fhir/r4",
                    &[("alice", ReadWrite), ("bob", Read)],
                    Some(&uri),
                ),
                policy(
                    "clinical",
                    "ehr-r5",
                    &EHR,
                    "/fhir/r5",
                    &[("dave", ReadWrite)],
                    None,
                ),
                policy(
                    "research",
                    "cohort",
                    &COHORT,
                    "/fhir/r4",
                    &[("carol", Read)],
                    None,
                ),
                // Lists only the FQDN: the shorter in-mesh spellings reach no policy.
                policy(
                    "billing",
                    "claims",
                    &["claims-fhir.billing.svc.cluster.local"],
                    "/fhir",
                    &[("erin", ReadWrite)],
                    None,
                ),
                policy(
                    "gateway",
                    "ehr",
                    &["ehr.hospital.example"],
                    "/fhir/r4",
                    &[("alice", ReadWrite), ("bob", Read)],
                    Some(&uri),
                ),
                policy(
                    "gateway",
                    "research",
                    &["research.hospital.example"],
                    "/fhir",
                    &[("carol", Read)],
                    None,
                ),
            ],
            connections: vec![],
        };
        assert_eq!(config.validate(), vec![], "the mesh test config is valid");
        let dir = ConfigDir::new();
        dir.publish_config(&config, Some(&pki.ca_pem));
        let svc = start_service(dir.path(), Duration::from_secs(60)).await;
        let upstream = start_echo_upstream().await;
        Mesh {
            key,
            svc,
            upstream,
            _jwks: jwks,
            _dir: dir,
        }
    }

    fn token(&self, patient: &str) -> String {
        let mut c = claims("app", OBS);
        c["patient"] = patient.into();
        format!("Bearer {}", self.key.sign(&c))
    }
}

fn cluster(name: &str, addr: SocketAddr, http2: bool) -> String {
    let proto = if http2 {
        "\n    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: {http2_protocol_options: {}}"
    } else {
        ""
    };
    format!(
        "\n  - name: \"{name}\"\n    type: STATIC\n    connect_timeout: 1s{proto}\n    load_assignment:\n      cluster_name: \"{name}\"\n      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}}}]}}]",
        addr.port()
    )
}

/// How an Istio mesh was set up: the provider's `statusOnError` and
/// `includeRequestBodyInCheck`, and the paths the CUSTOM policy's rules match (`None`: the
/// recommended `rules: [{}]`, every request).
struct Istio {
    status_on_error: Option<u16>,
    body: Option<(u32, bool)>,
    rule_path_prefix: Option<&'static str>,
}

/// The recipe in docs/mesh.md: fail closed with 503, whole bodies up to 1 MiB (413 beyond),
/// every request of the workload.
const ISTIO_RECIPE: Istio = Istio {
    status_on_error: Some(503),
    body: Some((1_048_576, false)),
    rule_path_prefix: None,
};

/// The server workload's inbound sidecar, as istiod generates it for a CUSTOM policy.
async fn istio_sidecar(bin: &Path, mesh: &Mesh, grpc: SocketAddr, o: &Istio) -> Envoy {
    let (port, admin) = (free_port(), free_port());
    let authz_cluster = "outbound|9001||fhirguard-authz.fhirguard-system.svc.cluster.local";
    let permission = match o.rule_path_prefix {
        None => "{any: true}".to_string(),
        Some(p) => format!("{{url_path: {{path: {{prefix: \"{p}\"}}}}}}"),
    };
    let status = o
        .status_on_error
        .map(|s| format!("\n              status_on_error: {{code: {s}}}"))
        .unwrap_or_default();
    let body = o
        .body
        .map(|(max, partial)| {
            format!(
                "\n              with_request_body: {{max_request_bytes: {max}, allow_partial_message: {partial}, pack_as_bytes: true}}"
            )
        })
        .unwrap_or_default();
    let yaml = format!(
        r#"
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: virtualInbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound_0.0.0.0_8080
          # meshConfig.pathNormalization: BASE, the default.
          normalize_path: true
          merge_slashes: false
          path_with_escaped_slashes_action: KEEP_UNCHANGED
          route_config:
            name: "inbound|8080||"
            virtual_hosts:
            - name: "inbound|http|8080"
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: "inbound|8080||", timeout: 0s}}
          http_filters:
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              shadow_rules:
                action: DENY
                policies:
                  "istio-ext-authz-ns[clinical]-policy[ehr-fhir]-rule[0]":
                    permissions: [{permission}]
                    principals: [{{any: true}}]
              shadow_rules_stat_prefix: istio_ext_authz_
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: false{status}{body}
              grpc_service:
                envoy_grpc:
                  cluster_name: "{authz_cluster}"
                  authority: "outbound_.9001_._.fhirguard-authz.fhirguard-system.svc.cluster.local"
                timeout: 600s
              filter_enabled_metadata:
                filter: envoy.filters.http.rbac
                path: [{{key: istio_ext_authz_shadow_effective_policy_id}}]
                value: {{string_match: {{prefix: istio-ext-authz}}}}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:{app}{authz}
"#,
        app = cluster("inbound|8080||", mesh.upstream, false),
        authz = cluster(authz_cluster, grpc, true),
    );
    run_envoy(bin, yaml, port, admin).await
}

/// An Envoy Gateway proxy with three SecurityPolicies (one per HTTPRoute): `gateway/ehr` and
/// `gateway/research` chosen by host and basePath, and `gateway/named` whose route names the
/// policy with `contextExtensions`.
async fn envoy_gateway(
    bin: &Path,
    mesh: &Mesh,
    grpc: SocketAddr,
    max_body: u32,
    headers_to_ext_auth: &[&str],
) -> Envoy {
    let (port, admin) = (free_port(), free_port());
    let authz_cluster = "securitypolicy/gateway/fhirguard-authz/0";
    let allowed = if headers_to_ext_auth.is_empty() {
        String::new()
    } else {
        let patterns: Vec<String> = headers_to_ext_auth
            .iter()
            .map(|h| format!("{{exact: \"{h}\", ignore_case: true}}"))
            .collect();
        format!(
            "\n              allowed_headers: {{patterns: [{}]}}",
            patterns.join(", ")
        )
    };
    let filter = |policy: &str| {
        format!(
            r#"
          - name: envoy.filters.http.ext_authz/securitypolicy/gateway/{policy}
            disabled: true
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3{allowed}
              with_request_body: {{max_request_bytes: {max_body}}}
              grpc_service:
                envoy_grpc: {{cluster_name: "{authz_cluster}", authority: "fhirguard-authz.fhirguard-system:9001"}}
                timeout: 10s"#
        )
    };
    let vhost = |policy: &str, host: &str, extensions: &str| {
        format!(
            r#"
            - name: gateway/{policy}
              domains: ["{host}", "{host}:*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: backend}}
                typed_per_filter_config:
                  envoy.filters.http.ext_authz/securitypolicy/gateway/{policy}:
                    "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig
                    config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                      check_settings: {{context_extensions: {{{extensions}}}}}"#
        )
    };
    let yaml = format!(
        r#"
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
  - name: default/eg/http
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: http-10080
          # The gateway's defaults (ClientTrafficPolicy path settings left unset).
          normalize_path: true
          merge_slashes: true
          path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT
          route_config:
            name: default/eg/http
            virtual_hosts:{ehr}{research}{named}
          http_filters:{f1}{f2}{f3}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:{backend}{authz}
"#,
        ehr = vhost("ehr", "ehr.hospital.example", ""),
        research = vhost("research", "research.hospital.example", ""),
        named = vhost(
            "named",
            "named.hospital.example",
            "\"fhirguard.dev/policy\": gateway/research"
        ),
        f1 = filter("ehr"),
        f2 = filter("research"),
        f3 = filter("named"),
        backend = cluster("backend", mesh.upstream, false),
        authz = cluster(authz_cluster, grpc, true),
    );
    run_envoy(bin, yaml, port, admin).await
}

/// One answer, read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// What the echo upstream received, when the request got through.
    fn upstream(&self) -> Option<serde_json::Value> {
        serde_json::from_str::<serde_json::Value>(&self.body)
            .ok()
            .filter(|v| v.get("method").is_some())
    }
}

/// A raw HTTP/1.1 request: the path goes out byte for byte (an HTTP client library would
/// resolve `..` or re-encode before Envoy ever saw it) and the Host header is exactly `host`.
async fn raw(
    port: u16,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Answer {
    raw_paced(port, method, host, path, headers, body, None).await
}

/// Like [`raw`], with the body sent in two parts: the first `pause_after` bytes, a pause, then
/// the rest (how a slow client, or an attacker, can make Envoy's buffer fill exactly).
#[allow(clippy::too_many_arguments)]
async fn raw_paced(
    port: u16,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    pause_after: Option<usize>,
) -> Answer {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("content-length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    if let Some(b) = body {
        // Envoy may answer (413) before the whole body is read; that is an answer too.
        match pause_after {
            Some(n) if n < b.len() => {
                let _ = s.write_all(&b[..n]).await;
                let _ = s.flush().await;
                tokio::time::sleep(Duration::from_millis(300)).await;
                let _ = s.write_all(&b[n..]).await;
            }
            _ => {
                let _ = s.write_all(b).await;
            }
        }
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf)).await;
    parse_answer(&buf, &format!("{method} {path}"))
}

fn parse_answer(buf: &[u8], what: &str) -> Answer {
    let text = String::from_utf8_lossy(buf).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer to {what}: {text:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// A chunked upload (no Content-Length) that pauses after the first `first` bytes of `body`.
async fn chunked_paced(
    port: u16,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    first: usize,
) -> Answer {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\ntransfer-encoding: chunked\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let (a, b) = body.split_at(first.min(body.len()));
    let _ = s.write_all(req.as_bytes()).await;
    let _ = s.write_all(format!("{:x}\r\n", a.len()).as_bytes()).await;
    let _ = s.write_all(a).await;
    let _ = s.write_all(b"\r\n").await;
    let _ = s.flush().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = s.write_all(format!("{:x}\r\n", b.len()).as_bytes()).await;
    let _ = s.write_all(b).await;
    let _ = s.write_all(b"\r\n0\r\n\r\n").await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf)).await;
    parse_answer(&buf, "chunked POST")
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn transaction(second: &str) -> String {
    format!(
        r#"{{"resourceType":"Bundle","type":"transaction","entry":[{{"request":{{"method":"GET","url":"Patient/1"}}}},{{"request":{{"method":"{second}","url":"Patient/2"}}}}]}}"#
    )
}

fn observation(patient: &str, padding: usize) -> String {
    format!(
        r#"{{"resourceType":"Observation","subject":{{"reference":"Patient/{patient}"}},"note":[{{"text":"{}"}}]}}"#,
        "x".repeat(padding)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_picks_the_policy_by_every_in_mesh_host_spelling_and_base_path() {
    let Some(bin) = envoy_bin() else { return };
    let mesh = Mesh::start().await;
    let envoy = istio_sidecar(&bin, &mesh, mesh.svc.grpc, &ISTIO_RECIPE).await;
    let get = async |host: &str, path: &str, user: &str| {
        raw(
            envoy.port,
            "GET",
            host,
            path,
            &[("authorization", &basic(user, &format!("{user}-pw")))],
            None,
        )
        .await
    };
    let mut failures = Vec::new();
    let mut check = |what: String, a: &Answer, want: u16, subject: Option<&str>| {
        let got_subject = a.upstream().and_then(|u| {
            u["headers"]["x-fhirguard-subject"]
                .as_str()
                .map(String::from)
        });
        if a.status != want || got_subject.as_deref() != subject {
            failures.push(format!(
                "{what}: want {want} {subject:?}, got {} {got_subject:?}: {}",
                a.status, a.body
            ));
        }
    };
    for (hosts, owner, stranger) in [(EHR, "alice", "carol"), (COHORT, "carol", "alice")] {
        for h in hosts {
            for host in [h.to_string(), format!("{h}:8080")] {
                let a = get(&host, "/fhir/r4/Patient/1", owner).await;
                check(format!("{host} as {owner}"), &a, 200, Some(owner));
                // The other service's user is unknown here: the policy really is this host's.
                let a = get(&host, "/fhir/r4/Patient/1", stranger).await;
                check(format!("{host} as {stranger}"), &a, 401, None);
            }
        }
    }
    // Same hosts, another basePath: another policy.
    for host in ["ehr-fhir", "ehr-fhir.clinical.svc.cluster.local:8080"] {
        let a = get(host, "/fhir/r5/Patient/1", "dave").await;
        check(format!("{host} r5 as dave"), &a, 200, Some("dave"));
        let a = get(host, "/fhir/r5/Patient/1", "alice").await;
        check(format!("{host} r5 as alice"), &a, 401, None);
    }
    // Host names compare case-insensitively, as DNS does.
    let a = get("EHR-FHIR.Clinical:8080", "/fhir/r4/Patient/1", "alice").await;
    check("upper case host".into(), &a, 200, Some("alice"));
    // A policy that lists only the FQDN is not found through the shorter spellings: refused,
    // never let through.
    let a = get(
        "claims-fhir.billing.svc.cluster.local:8080",
        "/fhir/Claim/1",
        "erin",
    )
    .await;
    check("claims FQDN".into(), &a, 200, Some("erin"));
    let mut unmatched = Vec::new();
    for host in [
        "claims-fhir",
        "claims-fhir.billing:8080",
        "claims-fhir.billing.svc",
    ] {
        let a = get(host, "/fhir/Claim/1", "erin").await;
        check(format!("{host} (not listed)"), &a, 403, None);
        if !a
            .body
            .contains("no FhirSecurityPolicy matches this host and path")
        {
            unmatched.push(format!("{host}: {}", a.body));
        }
    }
    failures.extend(unmatched);
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_forwards_bodies_within_the_limit_and_normalises_paths_the_way_fhirguard_judges() {
    let Some(bin) = envoy_bin() else { return };
    let mesh = Mesh::start().await;
    let envoy = istio_sidecar(&bin, &mesh, mesh.svc.grpc, &ISTIO_RECIPE).await;
    let host = "ehr-fhir.clinical:8080";
    let bob = basic("bob", "bob-pw");
    let post = async |path: &str, auth: &str, body: &str| {
        raw(
            envoy.port,
            "POST",
            host,
            path,
            &[
                ("authorization", auth),
                ("content-type", "application/fhir+json"),
            ],
            Some(body.as_bytes()),
        )
        .await
    };

    // Bodies reach fhirguard: a Read user's batch of reads passes, a transaction that deletes
    // does not; a SMART app may create only in its own patient's compartment.
    let batch = transaction("GET").replace("transaction", "batch");
    assert_eq!(post("/fhir/r4", &bob, &batch).await.status, 200);
    let a = post("/fhir/r4", &bob, &transaction("DELETE")).await;
    assert_eq!(a.status, 403, "{}", a.body);
    let app = mesh.token("p1");
    let a = post("/fhir/r4/Observation", &app, &observation("p1", 0)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.upstream().unwrap()["headers"]["x-fhirguard-patient"],
        "p1"
    );
    let a = post("/fhir/r4/Observation", &app, &observation("p2", 0)).await;
    assert_eq!(a.status, 403, "{}", a.body);
    // Over maxRequestBytes Envoy answers 413 itself (allowPartialMessage false).
    let big = observation("p1", 1_100_000);
    let a = post("/fhir/r4/Observation", &app, &big).await;
    assert_eq!(a.status, 413, "{}", a.body);
    assert!(a.upstream().is_none());

    // Path normalisation (BASE): Envoy resolves dot-segments and backslashes before the check,
    // so fhirguard judges exactly the path the FHIR server receives; what normalisation keeps
    // (double slashes, encoded slashes) fhirguard refuses.
    let get = async |path: &str| {
        raw(
            envoy.port,
            "GET",
            host,
            path,
            &[("authorization", &bob)],
            None,
        )
        .await
    };
    let a = get("/fhir/r4/Patient/../Observation?code=x").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.upstream().unwrap()["path"], "/fhir/r4/Observation?code=x");
    let a = get("/fhir/r4/Patient/%2e%2e/Observation?code=x").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.upstream().unwrap()["path"], "/fhir/r4/Observation?code=x");
    let a = get("/fhir/r4\\Patient\\1").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.upstream().unwrap()["path"], "/fhir/r4/Patient/1");
    // Climbing out of the base leaves every policy of this host: refused.
    let a = get("/fhir/r4/../../admin").await;
    assert_eq!(a.status, 403, "{}", a.body);
    for trick in [
        "/fhir/r4//Patient/1",
        "/fhir/r4/Patient%2F1",
        "/fhir/r4/Patient%5C1",
        "/fhir/r4/Patient/1;x=y",
    ] {
        let a = get(trick).await;
        assert_eq!(a.status, 400, "{trick}: {}", a.body);
        assert!(a.upstream().is_none(), "{trick} reached the upstream");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_fails_closed_with_the_status_the_provider_sets() {
    let Some(bin) = envoy_bin() else { return };
    let mesh = Mesh::start().await;
    let host = "ehr-fhir.clinical";
    let alice = basic("alice", "alice-pw");
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // statusOnError "503": unreachable fhirguard, and fhirguard without a config yet.
    let envoy = istio_sidecar(&bin, &mesh, dead, &ISTIO_RECIPE).await;
    let a = raw(
        envoy.port,
        "GET",
        host,
        "/fhir/r4/Patient/1",
        &[("authorization", &alice)],
        None,
    )
    .await;
    assert_eq!(a.status, 503, "{}", a.body);
    drop(envoy);
    let empty = ConfigDir::new();
    let undecided = start_service(empty.path(), Duration::from_secs(60)).await;
    let envoy = istio_sidecar(&bin, &mesh, undecided.grpc, &ISTIO_RECIPE).await;
    let a = raw(envoy.port, "GET", host, "/fhir/r4/metadata", &[], None).await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert!(a.upstream().is_none());
    drop(envoy);
    // Without statusOnError Istio leaves Envoy's default: still closed, but 403, which looks
    // like a permission problem. This is why the recipe sets "503".
    let defaults = Istio {
        status_on_error: None,
        body: None,
        rule_path_prefix: None,
    };
    let envoy = istio_sidecar(&bin, &mesh, dead, &defaults).await;
    let a = raw(
        envoy.port,
        "GET",
        host,
        "/fhir/r4/Patient/1",
        &[("authorization", &alice)],
        None,
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(a.upstream().is_none());
    drop(envoy);
    // Without includeRequestBodyInCheck fhirguard never sees bodies: everything that needs
    // one is refused (not guessed), reads still pass.
    let envoy = istio_sidecar(&bin, &mesh, mesh.svc.grpc, &defaults).await;
    let bob = basic("bob", "bob-pw");
    let batch = transaction("GET").replace("transaction", "batch");
    let a = raw(
        envoy.port,
        "POST",
        host,
        "/fhir/r4",
        &[
            ("authorization", &bob),
            ("content-type", "application/fhir+json"),
        ],
        Some(batch.as_bytes()),
    )
    .await;
    assert_ne!(
        a.status, 200,
        "a bundle judged without its body: {}",
        a.body
    );
    assert!(a.upstream().is_none());
    let a = raw(
        envoy.port,
        "POST",
        host,
        "/fhir/r4/Observation",
        &[
            ("authorization", &mesh.token("p1")),
            ("content-type", "application/fhir+json"),
        ],
        Some(observation("p1", 0).as_bytes()),
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.body);
    let a = raw(
        envoy.port,
        "GET",
        host,
        "/fhir/r4/Patient/1",
        &[("authorization", &bob)],
        None,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
}

/// A CUSTOM policy is enforced only on the requests its rules match; the rest never reach
/// fhirguard. Rules written as `paths: ["/fhir/r4/*"]` miss the FHIR base itself, where
/// batches and transactions are posted. The chart renders `rules: [{}]` for that reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_rules_that_miss_a_path_let_it_past_fhirguard() {
    let Some(bin) = envoy_bin() else { return };
    let mesh = Mesh::start().await;
    let narrow = Istio {
        rule_path_prefix: Some("/fhir/r4/"),
        ..ISTIO_RECIPE
    };
    let envoy = istio_sidecar(&bin, &mesh, mesh.svc.grpc, &narrow).await;
    let host = "ehr-fhir";
    let a = raw(envoy.port, "GET", host, "/fhir/r4/Patient/1", &[], None).await;
    assert_eq!(a.status, 401, "matched by the rule: checked");
    let tx = transaction("DELETE");
    let a = raw(
        envoy.port,
        "POST",
        host,
        "/fhir/r4",
        &[("content-type", "application/fhir+json")],
        Some(tx.as_bytes()),
    )
    .await;
    assert_eq!(
        a.status, 200,
        "not matched by the rule: passed unchecked, without any credentials"
    );
    assert_eq!(a.upstream().unwrap()["path"], "/fhir/r4");
    // With the recipe's rules: [{}] the same request is checked.
    let all = istio_sidecar(&bin, &mesh, mesh.svc.grpc, &ISTIO_RECIPE).await;
    let a = raw(
        all.port,
        "POST",
        host,
        "/fhir/r4",
        &[("content-type", "application/fhir+json")],
        Some(tx.as_bytes()),
    )
    .await;
    assert_eq!(a.status, 401, "{}", a.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_gateway_selects_by_host_or_context_extension_and_refuses_what_it_cannot_judge() {
    let Some(bin) = envoy_bin() else { return };
    let mesh = Mesh::start().await;
    let gw = envoy_gateway(&bin, &mesh, mesh.svc.grpc, 1_048_576, &[]).await;
    let as_user = |u: &str| basic(u, &format!("{u}-pw"));
    let get = async |host: &str, path: &str, user: &str| {
        raw(
            gw.port,
            "GET",
            host,
            path,
            &[("authorization", &as_user(user))],
            None,
        )
        .await
    };
    // Host and basePath, with and without the port.
    for host in ["ehr.hospital.example", "ehr.hospital.example:443"] {
        let a = get(host, "/fhir/r4/Patient/1", "alice").await;
        assert_eq!(a.status, 200, "{host}: {}", a.body);
        assert_eq!(
            a.upstream().unwrap()["headers"]["x-fhirguard-subject"],
            "alice"
        );
        assert_eq!(get(host, "/fhir/r4/Patient/1", "carol").await.status, 401);
    }
    assert_eq!(
        get("research.hospital.example", "/fhir/Patient/1", "carol")
            .await
            .status,
        200
    );
    // contextExtensions name the policy: no policy claims this host, the named one decides.
    let a = get("named.hospital.example", "/fhir/Patient/1", "carol").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        get("named.hospital.example", "/fhir/Patient/1", "alice")
            .await
            .status,
        401
    );

    // Bodies: judged within maxRequestBytes; beyond it the gateway answers 413 itself.
    let bob = as_user("bob");
    let post = async |body: &[u8]| {
        raw(
            gw.port,
            "POST",
            "ehr.hospital.example",
            "/fhir/r4",
            &[
                ("authorization", &bob),
                ("content-type", "application/fhir+json"),
            ],
            Some(body),
        )
        .await
    };
    assert_eq!(post(transaction("DELETE").as_bytes()).await.status, 403);
    assert_eq!(
        post(
            transaction("GET")
                .replace("transaction", "batch")
                .as_bytes()
        )
        .await
        .status,
        200
    );
    let big = observation("p1", 1_100_000);
    let a = post(big.as_bytes()).await;
    assert_eq!(a.status, 413);
    assert!(a.upstream().is_none());

    // Path normalisation: merged slashes are judged as merged; an escaped slash is redirected
    // to its unescaped form before any check, so nothing reaches fhirguard or the backend.
    let a = get("ehr.hospital.example", "/fhir/r4//Patient/1", "alice").await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.upstream().unwrap()["path"], "/fhir/r4/Patient/1");
    let a = get("ehr.hospital.example", "/fhir/r4/Patient%2F1", "alice").await;
    assert_eq!(a.status, 307, "{}", a.body);
    assert_eq!(a.header("location"), Some("/fhir/r4/Patient/1"));
    assert!(a.upstream().is_none());

    // headersToExtAuth narrows what fhirguard sees; a forged identity header it never saw is
    // still removed before the request goes upstream.
    drop(gw);
    let narrow = envoy_gateway(
        &bin,
        &mesh,
        mesh.svc.grpc,
        1_048_576,
        &["authorization", "content-type", "content-length"],
    )
    .await;
    let a = raw(
        narrow.port,
        "GET",
        "ehr.hospital.example",
        "/fhir/r4/Patient/1",
        &[
            ("authorization", &as_user("alice")),
            ("x-fhirguard-patient", "p9"),
            ("x-fhirguard-scopes", "user/*.cruds"),
        ],
        None,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let up = a.upstream().unwrap();
    assert_eq!(up["headers"]["x-fhirguard-subject"], "alice");
    assert!(
        up["headers"].get("x-fhirguard-patient").is_none()
            && up["headers"].get("x-fhirguard-scopes").is_none(),
        "forged identity reached the FHIR server: {up}"
    );

    // Envoy Gateway has no status-on-error setting: when fhirguard cannot decide the answer is
    // Envoy's default 403, still closed.
    drop(narrow);
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gw = envoy_gateway(&bin, &mesh, dead, 1_048_576, &[]).await;
    let a = raw(
        gw.port,
        "GET",
        "ehr.hospital.example",
        "/fhir/r4/Patient/1",
        &[("authorization", &as_user("alice"))],
        None,
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(a.upstream().is_none());
}

/// With `allowPartialMessage: true` Envoy sends the first maxRequestBytes of a larger body and
/// should mark it partial, but it decides that by comparing lengths, so a buffer that fills
/// exactly to the limit goes out marked whole. A client that pauses after exactly 1 MiB makes
/// that happen every time. Here the first MiB is a complete, allowed create for the context
/// patient (padded with JSON whitespace) and the rest is more: fhirguard must not judge the
/// first MiB as the whole body. (The recipe avoids partial bodies altogether; this is the
/// second line of defence, through Content-Length.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_at_the_limit_is_never_judged_as_whole() {
    let Some(bin) = envoy_bin() else { return };
    let mesh = Mesh::start().await;
    let max = 1_048_576usize;
    let partial = Istio {
        body: Some((max as u32, true)),
        ..ISTIO_RECIPE
    };
    let envoy = istio_sidecar(&bin, &mesh, mesh.svc.grpc, &partial).await;
    let mut body = observation("p1", 0).into_bytes();
    body.resize(max, b' ');
    body.extend_from_slice(
        b"   trailing data the FHIR server receives but fhirguard must not ignore",
    );
    let app = mesh.token("p1");
    let mut seen = Vec::new();
    for pause in [Some(max), Some(max), None, None] {
        let a = raw_paced(
            envoy.port,
            "POST",
            "ehr-fhir",
            "/fhir/r4/Observation",
            &[
                ("authorization", &app),
                ("content-type", "application/fhir+json"),
            ],
            Some(&body),
            pause,
        )
        .await;
        seen.push((a.status, a.upstream().is_some()));
        assert!(
            a.body.contains("not visible to fhirguard"),
            "{pause:?}: {} {}",
            a.status,
            a.body
        );
    }
    assert_eq!(seen, vec![(403, false); 4]);

    // Without Content-Length (chunked, or HTTP/2 without the header) only Envoy's marker is
    // left, and it is wrong in exactly this case: partial bodies must not be allowed at all.
    // With the recipe (allowPartialMessage false) Envoy never sends one: too large is 413.
    let whole_only = istio_sidecar(&bin, &mesh, mesh.svc.grpc, &ISTIO_RECIPE).await;
    let a = chunked_paced(
        whole_only.port,
        "ehr-fhir",
        "/fhir/r4/Observation",
        &[
            ("authorization", &app),
            ("content-type", "application/fhir+json"),
        ],
        &body,
        max,
    )
    .await;
    assert_eq!(a.status, 413, "{}", a.body);
    assert!(a.upstream().is_none());
}
