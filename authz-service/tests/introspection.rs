//! RFC 7662 token introspection against a local HTTPS introspection endpoint signed by a test
//! CA (real HTTP on 127.0.0.1): verdicts, SMART decisions from the answer, routing between
//! JWT providers and introspection, the cache and single flight, outages, the bounded cache,
//! the client authentication on the wire, and secrets kept out of logs and diagnostics.

// A test crate of its own: clippy.toml's allow-*-in-tests covers #[test] functions only, and
// here a failed unwrap in a helper is a failed test as well.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use common::{ConfigDir, SigningKey, TestPki, init, jwks_doc, metric, now};
use fhirguard_authz::config::*;
use fhirguard_authz::core::driver::Outcome;
use fhirguard_authz::core::policy::{Decision, DenyReason, Request};
use fhirguard_authz::runtime::executor::{Executor, Options};
use fhirguard_authz::runtime::introspect::IntrospectionOptions;
use fhirguard_authz::runtime::reload;
use fhirguard_authz::server::metrics::Metrics;
use fhirguard_authz::verify::cache::Budget;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const SECRET: &str = "intro-s3cret-never-logged";
const CLIENT: &str = "fhirguard";
const AUD: &str = "https://ehr.test/fhir/r4";
const JWT_ISSUER: &str = "https://idp.test";
const CA_FILE: &str = "as-ca.pem";

/// How the endpoint behaves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Answer,
    /// Accepts the connection and closes it without a word.
    Down,
    /// `500`.
    Fail,
    /// `401`: fhirguard's client credentials are refused.
    Unauthorized,
}

/// A local introspection endpoint: answers per token from `answers` (unknown tokens are
/// inactive), after `delay`; counts the calls and keeps every request it received.
struct IntrospectionServer {
    addr: SocketAddr,
    answers: Arc<Mutex<HashMap<String, serde_json::Value>>>,
    calls: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<(String, String)>>>,
    mode: Arc<Mutex<Mode>>,
    delay: Arc<Mutex<Duration>>,
}

async fn read_request<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Option<(String, String)> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length").then_some(v)
                })
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&got[end + 4..end + 4 + len]).to_string();
                return Some((head, body));
            }
        }
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

impl IntrospectionServer {
    async fn start(pki: &TestPki) -> IntrospectionServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = IntrospectionServer {
            addr: listener.local_addr().unwrap(),
            answers: Arc::default(),
            calls: Arc::default(),
            requests: Arc::default(),
            mode: Arc::new(Mutex::new(Mode::Answer)),
            delay: Arc::default(),
        };
        let acceptor = pki.acceptor();
        let (answers, calls, requests, mode, delay) = (
            server.answers.clone(),
            server.calls.clone(),
            server.requests.clone(),
            server.mode.clone(),
            server.delay.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, answers, calls, requests, mode, delay) = (
                    acceptor.clone(),
                    answers.clone(),
                    calls.clone(),
                    requests.clone(),
                    mode.clone(),
                    delay.clone(),
                );
                tokio::spawn(async move {
                    let current = *mode.lock().unwrap();
                    if current == Mode::Down {
                        calls.fetch_add(1, Ordering::SeqCst);
                        return; // dropped: connection closed before TLS
                    }
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    // One request per connection (`connection: close`): every call is counted
                    // once, whatever the mode.
                    if let Some((head, body)) = read_request(&mut tls).await {
                        calls.fetch_add(1, Ordering::SeqCst);
                        requests.lock().unwrap().push((head, body.clone()));
                        let wait = *delay.lock().unwrap();
                        tokio::time::sleep(wait).await;
                        let token = form_urlencoded::parse(body.as_bytes())
                            .find(|(k, _)| k == "token")
                            .map(|(_, v)| v.into_owned())
                            .unwrap_or_default();
                        let (status, answer) = match *mode.lock().unwrap() {
                            Mode::Fail => (500, r#"{"error":"server_error"}"#.to_string()),
                            Mode::Unauthorized => {
                                (401, r#"{"error":"invalid_client"}"#.to_string())
                            }
                            _ => (
                                200,
                                answers
                                    .lock()
                                    .unwrap()
                                    .get(&token)
                                    .cloned()
                                    .unwrap_or(serde_json::json!({"active": false}))
                                    .to_string(),
                            ),
                        };
                        let resp = format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                            answer.len()
                        );
                        let _ = tls.write_all(resp.as_bytes()).await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        server
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/oauth2/introspect", self.addr.port())
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn answer(&self, token: &str, body: serde_json::Value) {
        self.answers.lock().unwrap().insert(token.into(), body);
    }

    fn set_mode(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }
}

/// An active answer with SMART claims.
fn active(scope: &str, patient: Option<&str>) -> serde_json::Value {
    let mut v = serde_json::json!({
        "active": true, "scope": scope, "sub": "user-1", "client_id": "app-1",
        "aud": AUD, "exp": now() + 3600, "fhirUser": "Practitioner/d1",
    });
    if let Some(p) = patient {
        v["patient"] = p.into();
    }
    v
}

fn introspection(endpoint: &str, method: ClientAuthMethod) -> IntrospectionConfig {
    IntrospectionConfig {
        endpoint: endpoint.into(),
        client_id: CLIENT.into(),
        client_secret: SECRET.into(),
        client_auth_method: method,
        audiences: vec![AUD.into()],
        max_cache_seconds: 300,
        introspect_jwts: false,
        clock_skew_seconds: 5,
        tls: TlsConfig {
            mode: TlsMode::CustomBundle,
            ca_file: Some(CA_FILE.into()),
        },
    }
}

fn policy(intro: IntrospectionConfig, jwks: Option<&str>) -> PolicyConfig {
    PolicyConfig {
        audit: None,
        smart_configuration: None,
        namespace: "clinical".into(),
        name: "ehr".into(),
        hosts: vec![],
        base_path: "/fhir/r4".into(),
        public_paths: default_public_paths(),
        unauthenticated_access: false,
        authentication: AuthenticationConfig {
            combine: Combine::AnyOf,
            basic: None,
            jwt: jwks.map(|doc| JwtConfig {
                token_sources: vec![TokenSource::Header],
                require_subject_matches_basic_user: false,
                providers: vec![ProviderConfig {
                    name: "idp".into(),
                    issuer: JWT_ISSUER.into(),
                    audiences: vec![AUD.into()],
                    algorithms: vec![Algorithm::ES256],
                    clock_skew_seconds: 5,
                    jwks: JwksConfig {
                        uri: None,
                        refresh_interval_seconds: 600,
                        tls: TlsConfig::default(),
                        document: Some(doc.into()),
                    },
                    claims: ClaimNames::default(),
                }],
            }),
            introspection: Some(intro),
        },
        authorization: AuthorizationConfig::default(),
    }
}

struct Stack {
    pki: TestPki,
    server: IntrospectionServer,
    _dir: ConfigDir,
    ex: Arc<Executor>,
    metrics: Arc<Metrics>,
}

fn fast() -> IntrospectionOptions {
    IntrospectionOptions {
        min_retry: Duration::from_millis(300),
        max_retry: Duration::from_millis(600),
        request_timeout: Duration::from_secs(2),
    }
}

async fn stack_with(make: impl FnOnce(&str) -> PolicyConfig, options: Options) -> Stack {
    init();
    let pki = TestPki::new();
    let server = IntrospectionServer::start(&pki).await;
    let dir = ConfigDir::new();
    let config = CompiledConfig {
        policies: vec![make(&server.url())],
        ..CompiledConfig::empty(1)
    };
    assert_eq!(config.validate(), vec![]);
    let json = config.to_json();
    dir.publish(&[(CONFIG_FILE, json.as_str()), (CA_FILE, pki.ca_pem.as_str())]);
    let metrics = Arc::new(Metrics::new());
    let ex = Arc::new(Executor::new(metrics.clone(), options));
    reload::reload_now(&ex, dir.path()).expect("config loads");
    Stack {
        pki,
        server,
        _dir: dir,
        ex,
        metrics,
    }
}

async fn stack() -> Stack {
    stack_with(
        |url| {
            policy(
                introspection(url, ClientAuthMethod::ClientSecretBasic),
                None,
            )
        },
        Options {
            introspection: fast(),
            ..Options::default()
        },
    )
    .await
}

/// What a request with `Authorization: Bearer <token>` comes to.
async fn check(ex: &Executor, method: &str, path: &str, token: &str) -> Outcome {
    let auth = format!("Bearer {token}");
    let req = Request {
        method,
        host: "ehr.test",
        path,
        authorization: Some(&auth),
        if_none_exist: None,
        headers: &[],
        body: None,
        policy_ref: None,
    };
    ex.check(&req).await.outcome
}

/// (status, reason) of a decision; 200 for an allow, 503 for undecidable.
fn verdict(o: &Outcome) -> (u16, Option<DenyReason>) {
    match o {
        Outcome::Decided(Decision::Allow(_)) => (200, None),
        Outcome::Decided(Decision::Deny(d)) => (d.status, Some(d.reason)),
        Outcome::Decided(Decision::Respond(r)) => panic!("unexpected own answer {r:?}"),
        Outcome::Unavailable(_) => (503, None),
    }
}

#[tokio::test]
async fn active_inactive_expired_and_foreign_tokens() {
    let s = stack().await;
    s.server.answer(
        "opaque-ok",
        active("patient/Observation.rs", Some("Patient/p1")),
    );
    let mut expired = active("patient/Observation.rs", Some("p1"));
    expired["exp"] = (now() - 600).into();
    s.server.answer("opaque-expired", expired);
    let mut foreign = active("patient/Observation.rs", Some("p1"));
    foreign["aud"] = "https://other.test/fhir".into();
    s.server.answer("opaque-foreign", foreign);
    let mut no_aud = active("patient/Observation.rs", Some("p1"));
    no_aud.as_object_mut().unwrap().remove("aud");
    s.server.answer("opaque-no-aud", no_aud);

    let o = check(&s.ex, "GET", "/fhir/r4/Observation?patient=p1", "opaque-ok").await;
    let Outcome::Decided(Decision::Allow(a)) = &o else {
        panic!("{o:?}")
    };
    assert_eq!(a.subject.as_deref(), Some("user-1"));
    assert_eq!(a.patient.as_deref(), Some("p1"));
    assert_eq!(a.scopes.as_deref(), Some("patient/Observation.rs"));

    for (token, reason) in [
        ("opaque-revoked", DenyReason::InactiveToken),
        ("opaque-expired", DenyReason::ExpiredToken),
        ("opaque-foreign", DenyReason::InvalidToken),
        ("opaque-no-aud", DenyReason::InvalidToken),
    ] {
        let o = check(&s.ex, "GET", "/fhir/r4/Observation?patient=p1", token).await;
        let Outcome::Decided(Decision::Deny(d)) = &o else {
            panic!("{token}: {o:?}")
        };
        assert_eq!(
            (d.status, d.reason),
            (401, reason),
            "{token}: {}",
            d.diagnostics
        );
        assert_eq!(d.www_authenticate.len(), 1, "{token}");
        assert!(
            d.www_authenticate[0].starts_with(r#"Bearer realm="fhir", error="invalid_token""#),
            "{token}: {:?}",
            d.www_authenticate
        );
    }
    let m = s.metrics.encode();
    assert_eq!(
        metric(
            &m,
            r#"fhirguard_introspection_requests_total{policy="clinical/ehr",result="active"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            r#"fhirguard_introspection_requests_total{policy="clinical/ehr",result="inactive"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            r#"fhirguard_introspection_requests_total{policy="clinical/ehr",result="refused"}"#
        ),
        Some(3.0)
    );
    assert!(m.contains(
        r#"fhirguard_introspection_request_duration_seconds_count{policy="clinical/ehr"} 5"#
    ));
    assert!(m.contains(r#"reason="inactive_token""#), "{m}");
}

/// The same claims as a signed JWT and as an introspection answer: every request gets the
/// same decision, so SMART enforcement does not depend on the kind of token.
#[tokio::test]
async fn smart_decisions_are_the_same_for_introspected_and_jwt_tokens() {
    let key = SigningKey::new("k1");
    let doc = jwks_doc(&[&key]);
    let s = stack_with(
        |url| {
            policy(
                introspection(url, ClientAuthMethod::ClientSecretBasic),
                Some(&doc),
            )
        },
        Options {
            introspection: fast(),
            ..Options::default()
        },
    )
    .await;
    let grants: &[(&str, Option<&str>)] = &[
        ("patient/Observation.rs patient/Patient.r", Some("p1")),
        ("patient/*.cruds", Some("p1")),
        ("user/Observation.rs", None),
        ("patient/Observation.rs", None),
        ("system/*.rs", None),
        ("launch/patient openid", Some("p1")),
    ];
    let requests = [
        ("GET", "/fhir/r4/Observation?patient=p1"),
        ("GET", "/fhir/r4/Observation?patient=p2"),
        ("GET", "/fhir/r4/Observation?code=1234"),
        ("GET", "/fhir/r4/Patient/p1"),
        ("GET", "/fhir/r4/Patient/p2"),
        ("DELETE", "/fhir/r4/Patient/p1"),
        ("GET", "/fhir/r4/Condition?subject=Patient/p1"),
        ("GET", "/fhir/r4/Observation/o1"),
        ("GET", "/fhir/r4/Medication/m1"),
    ];
    let mut allowed = 0;
    for (i, (scope, patient)) in grants.iter().enumerate() {
        let opaque = format!("opaque-{i}");
        s.server.answer(&opaque, active(scope, *patient));
        let mut claims = serde_json::json!({
            "iss": JWT_ISSUER, "aud": AUD, "sub": "user-1", "scope": scope,
            "exp": now() + 3600, "fhirUser": "Practitioner/d1",
        });
        if let Some(p) = patient {
            claims["patient"] = (*p).into();
        }
        let jwt = key.sign(&claims);
        for (method, path) in requests {
            let by_jwt = check(&s.ex, method, path, &jwt).await;
            let by_introspection = check(&s.ex, method, path, &opaque).await;
            assert_eq!(
                verdict(&by_jwt),
                verdict(&by_introspection),
                "{scope} {method} {path}: {by_jwt:?} vs {by_introspection:?}"
            );
            if let (Outcome::Decided(Decision::Allow(a)), Outcome::Decided(Decision::Allow(b))) =
                (&by_jwt, &by_introspection)
            {
                allowed += 1;
                assert_eq!(
                    (&a.subject, &a.patient, &a.scopes, &a.set_query),
                    (&b.subject, &b.patient, &b.scopes, &b.set_query)
                );
            }
        }
    }
    assert!(allowed >= 5, "the table exercises allows too ({allowed})");
    // Each opaque token was introspected once; the JWTs never.
    assert_eq!(s.server.calls(), grants.len());
}

#[tokio::test]
async fn routing_by_issuer_and_revocation_of_jwts() {
    let key = SigningKey::new("k1");
    let doc = jwks_doc(&[&key]);
    let claims = |iss: &str| {
        serde_json::json!({"iss": iss, "aud": AUD, "sub": "user-1",
            "scope": "patient/Observation.rs", "patient": "p1", "exp": now() + 3600})
    };
    let path = "/fhir/r4/Observation?patient=p1";
    let s = stack_with(
        |url| {
            policy(
                introspection(url, ClientAuthMethod::ClientSecretBasic),
                Some(&doc),
            )
        },
        Options {
            introspection: fast(),
            ..Options::default()
        },
    )
    .await;
    // A JWT of the provider's issuer: verified locally, no call.
    let jwt = key.sign(&claims(JWT_ISSUER));
    assert_eq!(verdict(&check(&s.ex, "GET", path, &jwt).await).0, 200);
    // A badly signed JWT of that issuer is refused by the JWT verifier, also no call.
    let forged = SigningKey::new("k1").sign(&claims(JWT_ISSUER));
    assert_eq!(verdict(&check(&s.ex, "GET", path, &forged).await).0, 401);
    assert_eq!(s.server.calls(), 0);
    // A JWT of another issuer goes to introspection (which knows it).
    let other = key.sign(&claims("https://other-as.test"));
    s.server
        .answer(&other, active("patient/Observation.rs", Some("p1")));
    assert_eq!(verdict(&check(&s.ex, "GET", path, &other).await).0, 200);
    assert_eq!(s.server.calls(), 1);

    // introspectJwts: a verified JWT is introspected as well, and refused once revoked.
    let s = stack_with(
        |url| {
            let mut i = introspection(url, ClientAuthMethod::ClientSecretBasic);
            i.introspect_jwts = true;
            policy(i, Some(&doc))
        },
        Options {
            introspection: fast(),
            ..Options::default()
        },
    )
    .await;
    let jwt = key.sign(&claims(JWT_ISSUER));
    // Unknown to the endpoint: inactive, so revoked.
    let o = check(&s.ex, "GET", path, &jwt).await;
    assert_eq!(verdict(&o), (401, Some(DenyReason::InactiveToken)));
    let jwt2 = key.sign(
        &serde_json::json!({"iss": JWT_ISSUER, "aud": AUD, "sub": "user-1",
        "scope": "patient/Observation.rs", "patient": "p1", "exp": now() + 3601}),
    );
    // The endpoint's claims do not replace the signed ones: it may say less.
    s.server.answer(
        &jwt2,
        serde_json::json!({"active": true, "aud": AUD, "sub": "x"}),
    );
    let o = check(&s.ex, "GET", path, &jwt2).await;
    let Outcome::Decided(Decision::Allow(a)) = &o else {
        panic!("{o:?}")
    };
    assert_eq!(
        (a.subject.as_deref(), a.patient.as_deref()),
        (Some("user-1"), Some("p1"))
    );
    assert_eq!(s.server.calls(), 2);
    // A forged JWT is refused before anyone is asked.
    let forged = SigningKey::new("k1").sign(&claims(JWT_ISSUER));
    assert_eq!(verdict(&check(&s.ex, "GET", path, &forged).await).0, 401);
    assert_eq!(s.server.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_for_100_concurrent_checks_then_the_cache() {
    let s = stack().await;
    s.server
        .answer("hot", active("patient/Observation.rs", Some("p1")));
    *s.server.delay.lock().unwrap() = Duration::from_millis(300);
    let path = "/fhir/r4/Observation?patient=p1";
    let checks = (0..100).map(|_| {
        let ex = s.ex.clone();
        tokio::spawn(async move { verdict(&check(&ex, "GET", path, "hot").await).0 })
    });
    for c in futures::future::join_all(checks).await {
        assert_eq!(c.unwrap(), 200);
    }
    assert_eq!(
        s.server.calls(),
        1,
        "single flight: one call for 100 checks"
    );
    for _ in 0..50 {
        assert_eq!(verdict(&check(&s.ex, "GET", path, "hot").await).0, 200);
    }
    assert_eq!(s.server.calls(), 1, "answered from the cache");
    let m = s.metrics.encode();
    let shared = metric(
        &m,
        r#"fhirguard_introspection_reused_total{policy="clinical/ehr",result="shared"}"#,
    )
    .unwrap_or(0.0);
    let cached = metric(
        &m,
        r#"fhirguard_introspection_reused_total{policy="clinical/ehr",result="cache"}"#,
    )
    .unwrap_or(0.0);
    assert_eq!(shared + cached, 149.0, "{m}");
    assert!(shared >= 1.0);
    // Inactive answers are reused too (for at most a minute): a retrying client costs
    // nothing.
    *s.server.delay.lock().unwrap() = Duration::ZERO;
    for _ in 0..5 {
        assert_eq!(verdict(&check(&s.ex, "GET", path, "junk").await).0, 401);
    }
    assert_eq!(s.server.calls(), 2);
}

#[tokio::test]
async fn answers_are_cached_until_exp_or_the_maximum() {
    let s = stack_with(
        |url| {
            let mut i = introspection(url, ClientAuthMethod::ClientSecretBasic);
            i.max_cache_seconds = 2;
            i.clock_skew_seconds = 0;
            policy(i, None)
        },
        Options {
            introspection: fast(),
            ..Options::default()
        },
    )
    .await;
    let path = "/fhir/r4/Observation?patient=p1";
    s.server
        .answer("t", active("patient/Observation.rs", Some("p1")));
    assert_eq!(verdict(&check(&s.ex, "GET", path, "t").await).0, 200);
    assert_eq!(verdict(&check(&s.ex, "GET", path, "t").await).0, 200);
    assert_eq!(s.server.calls(), 1);
    // Revoked at the server: within maxCache the answer stands, after it the revocation counts.
    s.server.answer("t", serde_json::json!({"active": false}));
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(
        verdict(&check(&s.ex, "GET", path, "t").await),
        (401, Some(DenyReason::InactiveToken))
    );
    assert_eq!(s.server.calls(), 2);
}

#[tokio::test]
async fn an_outage_never_allows_and_does_not_become_a_call_storm() {
    let s = stack().await;
    let path = "/fhir/r4/Observation?patient=p1";
    s.server
        .answer("cached", active("patient/Observation.rs", Some("p1")));
    s.server
        .answer("new", active("patient/Observation.rs", Some("p1")));
    assert_eq!(verdict(&check(&s.ex, "GET", path, "cached").await).0, 200);
    for mode in [Mode::Down, Mode::Fail] {
        s.server.set_mode(mode);
        // Let any backoff of the previous round end.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let before = s.server.calls();
        // A cached answer still decides.
        assert_eq!(verdict(&check(&s.ex, "GET", path, "cached").await).0, 200);
        // Uncached tokens are undecidable (503), never allowed; 50 of them within the backoff
        // step cost one call.
        for i in 0..50 {
            let token = if i % 2 == 0 {
                "new".to_string()
            } else {
                format!("other-{i}")
            };
            let o = check(&s.ex, "GET", path, &token).await;
            assert_eq!(verdict(&o).0, 503, "{o:?}");
        }
        assert_eq!(s.server.calls() - before, 1, "one call, then backoff");
    }
    let m = s.metrics.encode();
    assert!(
        metric(
            &m,
            r#"fhirguard_introspection_requests_total{policy="clinical/ehr",result="unreachable"}"#
        )
        .is_some(),
        "{m}"
    );
    assert!(
        metric(
            &m,
            r#"fhirguard_introspection_requests_total{policy="clinical/ehr",result="http_5xx"}"#
        )
        .is_some()
    );
    // The endpoint returns: within one backoff step tokens work again.
    s.server.set_mode(Mode::Answer);
    common::eventually(
        "introspection works again",
        Duration::from_secs(3),
        async || verdict(&check(&s.ex, "GET", path, "new").await).0 == 200,
    )
    .await;
}

#[tokio::test]
async fn the_cache_stays_within_its_budget() {
    let budget = Budget {
        introspection: 256 * 1024,
        ..Budget::from_mib(8)
    };
    let s = stack_with(
        |url| {
            policy(
                introspection(url, ClientAuthMethod::ClientSecretBasic),
                None,
            )
        },
        Options {
            introspection: fast(),
            cache: budget,
            ..Options::default()
        },
    )
    .await;
    // Tokens with many scopes: each verdict weighs a few KiB.
    let scopes: Vec<String> = (0..10).map(|i| format!("patient/Type{i}.rs")).collect();
    let scope = format!("patient/Observation.rs {}", scopes.join(" "));
    for i in 0..400 {
        s.server
            .answer(&format!("t{i}"), active(&scope, Some("p1")));
    }
    let path = "/fhir/r4/Observation?patient=p1";
    for i in 0..400 {
        assert_eq!(
            verdict(&check(&s.ex, "GET", path, &format!("t{i}")).await).0,
            200
        );
    }
    let (entries, bytes) = s.ex.shared.caches.introspection.usage();
    assert!(
        bytes <= budget.introspection,
        "{bytes} > {}",
        budget.introspection
    );
    assert!(entries > 10 && entries < 400, "{entries} entries");
    let m = s.metrics.encode();
    assert!(
        metric(
            &m,
            r#"fhirguard_cache_evictions_total{cache="introspection"}"#
        )
        .is_some_and(|v| v > 0.0),
        "{m}"
    );
}

#[tokio::test]
async fn client_secret_basic_and_post_on_the_wire() {
    for method in [
        ClientAuthMethod::ClientSecretBasic,
        ClientAuthMethod::ClientSecretPost,
    ] {
        let s = stack_with(
            |url| policy(introspection(url, method), None),
            Options {
                introspection: fast(),
                ..Options::default()
            },
        )
        .await;
        // A token with characters that need form encoding.
        let token = "a+b/c=d&e";
        check(&s.ex, "GET", "/fhir/r4/Observation?patient=p1", token).await;
        let (head, body) = s.server.requests.lock().unwrap()[0].clone();
        assert!(
            head.starts_with("POST /oauth2/introspect HTTP/1.1"),
            "{head}"
        );
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
        };
        assert_eq!(
            header("content-type").as_deref(),
            Some("application/x-www-form-urlencoded")
        );
        let form: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
        assert!(form.contains(&("token".into(), token.into())), "{body}");
        assert!(form.contains(&("token_type_hint".into(), "access_token".into())));
        match method {
            ClientAuthMethod::ClientSecretBasic => {
                let expected =
                    base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT}:{SECRET}"));
                assert_eq!(header("authorization"), Some(format!("Basic {expected}")));
                assert!(
                    !body.contains(SECRET) && !body.contains("client_id"),
                    "{body}"
                );
            }
            ClientAuthMethod::ClientSecretPost => {
                assert_eq!(header("authorization"), None);
                assert!(form.contains(&("client_id".into(), CLIENT.into())));
                assert!(form.contains(&("client_secret".into(), SECRET.into())));
            }
        }
        drop(s.pki);
    }
}

/// A writer that keeps everything logged.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn secrets_and_tokens_never_reach_logs_or_diagnostics() {
    let logs = Captured::default();
    let writer = logs.clone();
    // Thread-local, and the runtime is single-threaded: every log line of this test (and of
    // the tasks it starts) lands here, at every level up to debug.
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || writer.clone())
            .finish(),
    );
    let s = stack().await;
    let token = "opaque-token-value-9f8e7d";
    let path = "/fhir/r4/Observation?patient=p1";
    let mut said = Vec::new();
    s.server
        .answer(token, active("patient/Observation.rs", Some("p1")));
    said.push(format!("{:?}", check(&s.ex, "GET", path, token).await));
    said.push(format!(
        "{:?}",
        check(&s.ex, "GET", path, "other-secret-token").await
    ));
    for mode in [Mode::Unauthorized, Mode::Fail, Mode::Down] {
        s.server.set_mode(mode);
        tokio::time::sleep(Duration::from_millis(700)).await;
        said.push(format!(
            "{:?}",
            check(&s.ex, "GET", path, &format!("{token}-{}", said.len())).await
        ));
    }
    let rt = s.ex.runtime().unwrap();
    said.push(format!("{:?}", rt.config));
    said.push(format!("{:?}", rt.policies[0].introspection));
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("token introspection failed"),
        "the outage was logged: {logs}"
    );
    assert!(said.iter().any(|s| s.contains("HTTP 401")), "{said:?}");
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT}:{SECRET}"));
    for text in said.iter().chain([&logs]) {
        for secret in [SECRET, basic.as_str(), token, "other-secret-token"] {
            assert!(!text.contains(secret), "{secret:?} leaked into: {text}");
        }
    }
}

/// Client → real Envoy (ext_authz over gRPC, fail closed) → fhirguard-authz → the local
/// introspection endpoint; allowed requests reach an echo upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tokens_through_real_envoy() {
    use common::real_envoy::{envoy_bin, start_envoy};
    let Some(bin) = envoy_bin() else { return };
    init();
    let pki = TestPki::new();
    let server = IntrospectionServer::start(&pki).await;
    let dir = ConfigDir::new();
    let config = CompiledConfig {
        policies: vec![policy(
            introspection(&server.url(), ClientAuthMethod::ClientSecretPost),
            None,
        )],
        ..CompiledConfig::empty(1)
    };
    let json = config.to_json();
    dir.publish(&[(CONFIG_FILE, json.as_str()), (CA_FILE, pki.ca_pem.as_str())]);
    let svc = common::start_service(dir.path(), Duration::from_secs(60)).await;
    assert!(svc.service.is_ready());
    let upstream = common::start_echo_upstream().await;
    let envoy = start_envoy(&bin, svc.grpc, upstream).await;
    let http = reqwest::Client::new();
    let get = async |path: &str, token: &str| {
        let resp = http
            .get(format!("http://127.0.0.1:{}{path}", envoy.port))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        (status, headers, resp.text().await.unwrap())
    };
    server.answer(
        "opaque-e2e",
        active("patient/Observation.rs", Some("Patient/p1")),
    );

    let (st, _, body) = get("/fhir/r4/Observation?patient=p1", "opaque-e2e").await;
    assert_eq!(st, 200, "{body}");
    let up: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(up["headers"]["x-fhirguard-subject"], "user-1");
    assert_eq!(up["headers"]["x-fhirguard-patient"], "p1");
    assert_eq!(
        up["headers"]["x-fhirguard-scopes"],
        "patient/Observation.rs"
    );

    // Another patient's data: 403 insufficient_scope, decided from the introspected claims.
    let (st, h, body) = get("/fhir/r4/Observation?patient=p2", "opaque-e2e").await;
    assert_eq!(st, 403, "{body}");
    assert!(
        h["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("insufficient_scope")
    );

    // Not active: 401 invalid_token with an OperationOutcome.
    let (st, h, body) = get("/fhir/r4/Observation?patient=p1", "opaque-revoked").await;
    assert_eq!(st, 401, "{body}");
    assert!(
        h["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with(r#"Bearer realm="fhir", error="invalid_token""#)
    );
    assert!(body.contains("OperationOutcome"), "{body}");
    assert_eq!(server.calls(), 2, "the first token's answer was cached");

    // The endpoint goes away: the cached token still works, a new one gets 503 from Envoy.
    server.set_mode(Mode::Down);
    let (st, _, _) = get("/fhir/r4/Observation?patient=p1", "opaque-e2e").await;
    assert_eq!(st, 200);
    server.answer("opaque-new", active("patient/Observation.rs", Some("p1")));
    let (st, _, body) = get("/fhir/r4/Observation?patient=p1", "opaque-new").await;
    assert_eq!(st, 503, "{body}");
    drop(envoy);
}
