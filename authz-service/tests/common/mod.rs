//! Shared test harness: a throwaway CA, an HTTPS JWKS endpoint signed by it, token minting,
//! a Kubernetes-style config directory, an echo upstream, and the service itself, all on
//! 127.0.0.1.
#![allow(dead_code)]

pub mod https;
pub mod real_envoy;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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

pub const ISSUER: &str = "https://idp.test";
pub const AUDIENCE: &str = "https://ehr.test/fhir/r4";

pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn")
        .with_test_writer()
        .try_init();
}

/// A CA and a server certificate for 127.0.0.1 and localhost.
pub struct TestPki {
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

impl TestPki {
    pub fn new() -> TestPki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fhirguard test CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        TestPki {
            ca_pem: ca.pem(),
            server_cert_pem: cert.pem(),
            server_key_pem: key.serialize_pem(),
        }
    }

    /// A self-signed certificate (no CA), for SkipVerification/DefaultBundle tests.
    pub fn self_signed() -> TestPki {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestPki {
            ca_pem: String::new(),
            server_cert_pem: cert.pem(),
            server_key_pem: key.serialize_pem(),
        }
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        use rustls::pki_types::pem::PemObject;
        let certs: Vec<_> =
            rustls::pki_types::CertificateDer::pem_slice_iter(self.server_cert_pem.as_bytes())
                .map(|c| c.unwrap())
                .collect();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(self.server_key_pem.as_bytes())
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

/// An ES256 signing key with its public JWK.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub pem: String,
    pub jwk: serde_json::Value,
}

impl SigningKey {
    pub fn new(kid: &str) -> SigningKey {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = kp.public_key_raw(); // 0x04 || x || y
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        SigningKey {
            kid: kid.to_string(),
            pem: kp.serialize_pem(),
            jwk: serde_json::json!({
                "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
                "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
            }),
        }
    }

    pub fn sign(&self, claims: &serde_json::Value) -> String {
        self.sign_as(&self.kid, claims)
    }

    /// Signs a payload given as JSON text, so that a test can send what serde_json would
    /// never produce (repeated members).
    pub fn sign_raw(&self, payload: &str) -> String {
        use base64::Engine as _;
        let b64 = |s: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let header = format!(r#"{{"alg":"ES256","typ":"JWT","kid":"{}"}}"#, self.kid);
        let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
        let key = jsonwebtoken::EncodingKey::from_ec_pem(self.pem.as_bytes()).unwrap();
        let sig =
            jsonwebtoken::crypto::sign(input.as_bytes(), &key, jsonwebtoken::Algorithm::ES256)
                .unwrap();
        format!("{input}.{sig}")
    }

    /// Signs with this key but names another kid (a forged signature for a known kid).
    pub fn sign_as(&self, kid: &str, claims: &serde_json::Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(kid.to_string());
        let key = jsonwebtoken::EncodingKey::from_ec_pem(self.pem.as_bytes()).unwrap();
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }
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

pub fn jwks_doc(keys: &[&SigningKey]) -> String {
    serde_json::json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
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

/// A config directory laid out like a mounted Secret: files are symlinks through `..data`,
/// and an update swaps `..data` atomically.
pub struct ConfigDir {
    pub dir: tempfile::TempDir,
    version: AtomicUsize,
}

impl ConfigDir {
    pub fn new() -> ConfigDir {
        ConfigDir {
            dir: tempfile::tempdir().unwrap(),
            version: AtomicUsize::new(0),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Publishes files the way the kubelet does.
    pub fn publish(&self, files: &[(&str, &str)]) {
        let v = self.version.fetch_add(1, Ordering::SeqCst);
        let ts = format!("..2026_11_23_{v:04}");
        let ts_dir = self.path().join(&ts);
        std::fs::create_dir(&ts_dir).unwrap();
        for (name, content) in files {
            std::fs::write(ts_dir.join(name), content).unwrap();
        }
        let tmp = self.path().join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&ts, &tmp).unwrap();
        std::fs::rename(&tmp, self.path().join("..data")).unwrap();
        for (name, _) in files {
            let link = self.path().join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(PathBuf::from("..data").join(name), &link).unwrap();
            }
        }
    }

    pub fn publish_config(&self, config: &CompiledConfig, ca_pem: Option<&str>) {
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
                    buf.drain(..head_end + len);
                    let mut parts = request_line.split(' ');
                    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                    stub.seen.lock().unwrap().push(
                        serde_json::json!({"method": method, "path": path, "headers": headers.clone()}),
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
                            serde_json::json!({"method": method, "path": path, "headers": headers})
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

pub fn basic(user: &str, pw: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
    )
}

/// Polls until `f` is true or the deadline passes.
pub async fn eventually(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
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
