//! The authz-service's test harness: an HTTPS JWKS endpoint signed by a throwaway CA, token
//! claims, the standard configs, an echo upstream, a FHIR stub, and the service itself, all on
//! 127.0.0.1. What the operator's tests need as well (ports, processes, waiting, the test PKI,
//! signing keys, config directories, real binaries) lives in the `fhirguard-test-support`
//! crate and is re-exported here.
// Each test crate uses its own subset of the harness.
#![allow(dead_code, unused_imports)]

pub mod https;
pub mod probe;
pub mod real_envoy;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use fhirguard_authz::config::*;
use fhirguard_authz::runtime::executor::{Executor, Options};
use fhirguard_authz::runtime::jwks::JwksOptions;
use fhirguard_authz::server::metrics::Metrics;
use fhirguard_authz::{runtime::reload, server::envoy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub use test_support::config_dir::ConfigDir;
pub use test_support::fhir_stub::{FhirStub, start_fhir_stub};
pub use test_support::http::metric;
pub use test_support::jwt::{SigningKey, jwks_doc};
pub use test_support::pki::TestPki;
pub use test_support::wait::eventually;

pub const ISSUER: &str = "https://idp.test";
pub const AUDIENCE: &str = "https://ehr.test/fhir/r4";

pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_test_writer()
        .try_init();
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims of a valid token; tests change what they need.
pub fn claims(sub: &str, scope: &str) -> serde_json::Value {
    serde_json::json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "scope": scope,
        "exp": now() + 600, "iat": now(), "jti": format!("{}", rand_u64()),
    })
}

pub fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    rand::fill(&mut b);
    u64::from_le_bytes(b)
}

/// An HTTPS JWKS endpoint whose document can be swapped and which can be taken down.
pub struct JwksServer {
    pub addr: SocketAddr,
    pub doc: Arc<Mutex<String>>,
    pub down: Arc<AtomicBool>,
    pub hits: Arc<AtomicUsize>,
}

impl JwksServer {
    pub async fn start(pki: &TestPki, doc: String) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let doc = Arc::new(Mutex::new(doc));
        let down = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(AtomicUsize::new(0));
        let acceptor = pki.acceptor();
        let (d, dn, h) = (doc.clone(), down.clone(), hits.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, d, dn, h) = (acceptor.clone(), d.clone(), dn.clone(), h.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = vec![0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    h.fetch_add(1, Ordering::SeqCst);
                    let resp = if dn.load(Ordering::SeqCst) {
                        "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_string()
                    } else {
                        let body = d.lock().unwrap().clone();
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    };
                    let _ = tls.write_all(resp.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        JwksServer {
            addr,
            doc,
            down,
            hits,
        }
    }

    pub fn uri(&self) -> String {
        format!("https://127.0.0.1:{}/jwks.json", self.addr.port())
    }
}

/// Publishes a compiled config (and the IdP CA file the standard config names).
pub trait PublishConfig {
    fn publish_config(&self, config: &CompiledConfig, ca_pem: Option<&str>);
}

impl PublishConfig for ConfigDir {
    fn publish_config(&self, config: &CompiledConfig, ca_pem: Option<&str>) {
        let json = config.to_json();
        let mut files = vec![(CONFIG_FILE, json.as_str())];
        if let Some(ca) = ca_pem {
            files.push(("idp-ca.pem", ca));
        }
        self.publish(&files);
    }
}

pub fn bcrypt_line(user: &str, pw: &str) -> String {
    format!("{user}:{}", bcrypt::hash(pw, 4).unwrap())
}

/// The config most tests use: Basic users alice (ReadWrite) and bob (Read), and one JWT
/// provider whose JWKS comes over HTTPS with the test CA.
pub fn standard_config(generation: u64, jwks_uri: &str, extra_users: &str) -> CompiledConfig {
    let htpasswd = format!(
        "{}\n{}\n{extra_users}",
        bcrypt_line("alice", "alice-pw"),
        bcrypt_line("bob", "bob-pw")
    );
    let ehr = PolicyConfig {
        audit: None,
        smart_configuration: None,
        namespace: "clinical".into(),
        name: "ehr".into(),
        hosts: vec![],
        base_path: "/fhir/r4".into(),
        public_paths: default_public_paths(),
        unauthenticated_access: false,
        authentication: AuthenticationConfig {
            introspection: None,
            combine: Combine::AnyOf,
            basic: Some(BasicConfig {
                htpasswd,
                access: vec![
                    AccessRule {
                        users: vec!["bob".into()],
                        permission: Permission::Read,
                    },
                    AccessRule {
                        users: vec!["*".into()],
                        permission: Permission::ReadWrite,
                    },
                ],
            }),
            jwt: Some(JwtConfig {
                token_sources: vec![TokenSource::Header, TokenSource::QueryParameter],
                require_subject_matches_basic_user: false,
                providers: vec![ProviderConfig {
                    name: "idp".into(),
                    issuer: ISSUER.into(),
                    audiences: vec![AUDIENCE.into()],
                    algorithms: vec![Algorithm::ES256, Algorithm::RS256],
                    clock_skew_seconds: 5,
                    jwks: JwksConfig {
                        uri: Some(jwks_uri.into()),
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
    };
    CompiledConfig {
        version: FORMAT_VERSION,
        generation,
        policies: vec![ehr],
        connections: vec![],
    }
}

/// The service running on 127.0.0.1 with its gRPC and HTTP ports.
pub struct RunningService {
    pub service: Arc<Executor>,
    pub metrics: Arc<Metrics>,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
}

impl RunningService {
    /// The Prometheus text from the service's HTTP port.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.http))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

pub async fn start_service(dir: &Path, poll: Duration) -> RunningService {
    let metrics = Arc::new(Metrics::new());
    let options = JwksOptions {
        min_refetch_interval: Duration::from_millis(500),
        retry_after_failure: Duration::from_millis(200),
        max_retry: Duration::from_secs(1),
    };
    let oauth = fhirguard_authz::runtime::oauth::OAuthOptions {
        min_retry: Duration::from_millis(200),
        max_retry: Duration::from_secs(1),
        ..Default::default()
    };
    let observer: Arc<dyn fhirguard_authz::observe::Observer> = metrics.clone();
    let service = Arc::new(Executor::new(
        observer,
        Options {
            jwks: options,
            oauth,
            ..Options::default()
        },
    ));
    let _ = reload::reload_now(&service, dir);
    let watch = reload::watch(service.clone(), dir.to_path_buf(), poll);
    std::mem::forget(watch);
    let incoming = tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap())
        .unwrap()
        .with_nodelay(Some(true));
    let grpc = incoming.local_addr().unwrap();
    let svc = envoy::EnvoyAuthz::new(service.clone()).into_server();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(fhirguard_authz::server::health::server(&service))
            .add_service(svc)
            .serve_with_incoming(incoming),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap();
    let router = fhirguard_authz::server::http::router(service.clone(), metrics.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    RunningService {
        service,
        metrics,
        grpc,
        http,
    }
}

/// An HTTP/1.1 upstream that answers 200 with a JSON echo of what it received.
pub async fn start_echo_upstream() -> SocketAddr {
    start_fhir_stub(FhirStub::default()).await
}

/// The facts of a finished check for `core::audit`, with the decision id, time and observer
/// the golden AuditEvents were written with.
pub fn audit_facts<'a>(
    config: &'a fhirguard_authz::config::CompiledConfig,
    check: &'a fhirguard_authz::core::driver::Check<'_>,
    method: &'a str,
    host: &'a str,
    path: &'a str,
    source_address: Option<&'a str>,
) -> fhirguard_authz::core::audit::AuditFacts<'a> {
    fhirguard_authz::core::audit::AuditFacts {
        policy: &config.policies[check.policy_index().unwrap_or(0)],
        method,
        host,
        path,
        source_address,
        request: check.request(),
        identity: check.identity(),
        lookups: check.lookups(),
        outcome: check.outcome().expect("a finished check"),
        decision_id: "0123456789abcdef0123456789abcdef",
        // 2026-12-01T19:53:23.007Z
        recorded_unix_ms: 1_796_154_803_007,
        observer: "fhirguard-authz-0",
    }
}

/// A verified token's identity as the core receives it (subject `dr-who`, `fhirUser`
/// `Practitioner/pr1`, client `chart-app`), for tests that answer the driver themselves.
pub fn verified_token(
    scopes: &str,
    patient: Option<&str>,
) -> fhirguard_authz::core::policy::TokenIdentity {
    fhirguard_authz::core::policy::TokenIdentity {
        provider: "idp".into(),
        subject: "dr-who".into(),
        scopes: fhirguard_authz::core::smart::parse_scopes(scopes.split(' ')),
        scope_text: scopes.into(),
        patient: patient.map(str::to_string),
        fhir_user: Some("Practitioner/pr1".into()),
        client_id: Some("chart-app".into()),
    }
}

pub fn basic(user: &str, pw: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
    )
}

/// The stack most tests start from: a test CA, a signing key published by an HTTPS JWKS
/// endpoint signed by that CA, the standard config, and the service serving it.
pub struct IdpStack {
    pub pki: TestPki,
    pub key: SigningKey,
    pub jwks: JwksServer,
    pub dir: ConfigDir,
    pub svc: RunningService,
}

impl IdpStack {
    pub async fn start(poll: Duration) -> IdpStack {
        init();
        let pki = TestPki::new();
        let key = SigningKey::new("k1");
        let jwks = JwksServer::start(&pki, jwks_doc(&[&key])).await;
        let dir = ConfigDir::new();
        dir.publish_config(&standard_config(1, &jwks.uri(), ""), Some(&pki.ca_pem));
        let svc = start_service(dir.path(), poll).await;
        IdpStack {
            pki,
            key,
            jwks,
            dir,
            svc,
        }
    }
}

/// A SMART policy for `host` whose tokens are checked against the inline `jwks`; with `narrow`,
/// unpinned patient searches are narrowed and there is no compartment lookup, otherwise
/// lookups go through the connection `clinical/ehr-internal`.
pub fn smart_policy(name: &str, host: &str, jwks: &str, narrow: bool) -> PolicyConfig {
    PolicyConfig {
        audit: None,
        smart_configuration: None,
        namespace: "clinical".into(),
        name: name.into(),
        hosts: vec![host.into()],
        base_path: "/fhir/r4".into(),
        public_paths: default_public_paths(),
        unauthenticated_access: false,
        authentication: AuthenticationConfig {
            introspection: None,
            combine: Combine::AnyOf,
            basic: None,
            jwt: Some(JwtConfig {
                token_sources: vec![TokenSource::Header],
                require_subject_matches_basic_user: false,
                providers: vec![ProviderConfig {
                    name: "idp".into(),
                    issuer: ISSUER.into(),
                    audiences: vec![AUDIENCE.into()],
                    algorithms: vec![Algorithm::ES256],
                    clock_skew_seconds: 5,
                    jwks: JwksConfig {
                        uri: None,
                        refresh_interval_seconds: 600,
                        tls: TlsConfig::default(),
                        document: Some(jwks.into()),
                    },
                    claims: ClaimNames::default(),
                }],
            }),
        },
        authorization: AuthorizationConfig {
            smart: SmartConfig {
                patient_search: if narrow {
                    PatientSearch::Narrow
                } else {
                    PatientSearch::Reject
                },
                compartment_lookup: (!narrow).then(|| CompartmentLookup {
                    connection: "clinical/ehr-internal".into(),
                }),
                ..SmartConfig::default()
            },
        },
    }
}
