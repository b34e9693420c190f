//! Check against a real HTTPS JWKS endpoint on 127.0.0.1. The Checks call the service's
//! Envoy adapter directly (`server::envoy::check`, what the gRPC method runs), without a
//! socket; one test proves the gRPC transport itself: Check over TCP and grpc.health.v1.

// A test crate of its own: clippy.toml's allow-*-in-tests covers #[test] functions only, and
// here a failed unwrap in a helper is a failed test as well.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use fhirguard_authz::runtime::executor::Executor;
use fhirguard_authz::server::{envoy, health};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

struct Call<'a> {
    method: &'a str,
    path: &'a str,
    headers: Vec<(&'a str, String)>,
}

fn get(path: &str) -> Call<'_> {
    Call {
        method: "GET",
        path,
        headers: vec![],
    }
}

impl<'a> Call<'a> {
    fn auth(mut self, v: String) -> Self {
        self.headers.push(("authorization", v));
        self
    }
    fn bearer(self, t: &str) -> Self {
        self.auth(format!("Bearer {t}"))
    }
    fn header(mut self, k: &'a str, v: &str) -> Self {
        self.headers.push((k, v.to_string()));
        self
    }
}

fn request(call: Call<'_>) -> CheckRequest {
    let headers: HashMap<String, String> = call
        .headers
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    method: call.method.into(),
                    path: call.path.into(),
                    host: "ehr.test".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// Check as the gRPC method runs it, without the transport.
async fn check(service: &Executor, call: Call<'_>) -> Result<CheckResponse, tonic::Status> {
    envoy::check(service, &request(call))
        .await
        .map(|r| r.into_inner())
}

/// Check through a tonic client over TCP.
async fn check_over_tcp(
    grpc: std::net::SocketAddr,
    call: Call<'_>,
) -> Result<CheckResponse, tonic::Status> {
    let mut client = AuthorizationClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    client.check(request(call)).await.map(|r| r.into_inner())
}

/// (status, headers, body) of a decided Check; 200 for allow.
fn view(r: &CheckResponse) -> (u16, Vec<(String, String)>, String) {
    match r.http_response.as_ref().unwrap() {
        HttpResponse::OkResponse(ok) => (
            200,
            ok.headers
                .iter()
                .map(|h| h.header.clone().unwrap())
                .map(|h| (h.key, h.value))
                .collect(),
            String::new(),
        ),
        HttpResponse::DeniedResponse(d) => (
            d.status.unwrap().code as u16,
            d.headers
                .iter()
                .map(|h| h.header.clone().unwrap())
                .map(|h| (h.key, h.value))
                .collect(),
            d.body.clone(),
        ),
        other => panic!("unexpected {other:?}"),
    }
}

fn hdr<'a>(h: &'a [(String, String)], k: &str) -> Option<&'a str> {
    h.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.as_str())
}

async fn stack() -> IdpStack {
    IdpStack::start(Duration::from_secs(60)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_config_means_unavailable_never_allow() {
    init();
    let dir = ConfigDir::new();
    let svc = start_service(dir.path(), Duration::from_secs(60)).await;
    let err = check(&svc.service, get("/fhir/r4/metadata"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    let ready = reqwest::get(format!("http://{}/readyz", svc.http))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let health = reqwest::get(format!("http://{}/healthz", svc.http))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

async fn health(grpc: std::net::SocketAddr, service: &str) -> ServingStatus {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap();
    answer.into_inner().status()
}

/// The gRPC transport itself, which the direct calls above skip: Envoy's Check over TCP gets
/// the adapter's answers (a decided deny, an allow with its headers, UNAVAILABLE as a gRPC
/// status), and grpc.health.v1 on the same port follows readiness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_health_over_the_grpc_transport() {
    init();
    let empty = ConfigDir::new();
    let svc = start_service(empty.path(), Duration::from_secs(60)).await;
    let err = check_over_tcp(svc.grpc, get("/fhir/r4/metadata"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    for name in ["", health::AUTHORIZATION_SERVICE] {
        eventually(
            &format!("health {name:?} NOT_SERVING without a config"),
            Duration::from_secs(5),
            async || health(svc.grpc, name).await == ServingStatus::NotServing,
        )
        .await;
    }

    let s = stack().await;
    let r = check_over_tcp(s.svc.grpc, get("/fhir/r4/Patient/1"))
        .await
        .unwrap();
    let (status, headers, body) = view(&r);
    assert_eq!(status, 401);
    assert_eq!(hdr(&headers, "content-type"), Some("application/fhir+json"));
    let oo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(oo["issue"][0]["code"], "login");
    let r = check_over_tcp(
        s.svc.grpc,
        get("/fhir/r4/Patient/1").auth(basic("alice", "alice-pw")),
    )
    .await
    .unwrap();
    let (status, headers, _) = view(&r);
    assert_eq!(status, 200);
    assert_eq!(hdr(&headers, "x-fhirguard-subject"), Some("alice"));
    for name in ["", health::AUTHORIZATION_SERVICE] {
        eventually(
            &format!("health {name:?} SERVING with a config"),
            Duration::from_secs(5),
            async || health(s.svc.grpc, name).await == ServingStatus::Serving,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_answers() {
    let s = stack().await;
    let g = &s.svc.service;

    let r = check(g, get("/fhir/r4/Patient/1")).await.unwrap();
    let (status, headers, body) = view(&r);
    assert_eq!(status, 401);
    let www: Vec<_> = headers
        .iter()
        .filter(|(k, _)| k == "www-authenticate")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(www, vec![r#"Bearer realm="fhir""#, r#"Basic realm="fhir""#]);
    assert_eq!(hdr(&headers, "content-type"), Some("application/fhir+json"));
    let id = hdr(&headers, "x-fhirguard-decision-id").unwrap();
    assert_eq!(id.len(), 32);
    let oo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert_eq!(oo["issue"][0]["code"], "login");

    let r = check(
        g,
        get("/fhir/r4/Patient/1")
            .auth(basic("alice", "alice-pw"))
            .header("x-fhirguard-subject", "admin")
            .header("x-fhirguard-patient", "p9"),
    )
    .await
    .unwrap();
    let (status, headers, _) = view(&r);
    assert_eq!(status, 200);
    assert_eq!(hdr(&headers, "x-fhirguard-subject"), Some("alice"));
    let Some(HttpResponse::OkResponse(ok)) = &r.http_response else {
        panic!()
    };
    // Every spelling (`-` or `_` at each separator) of each identity header fhirguard does
    // not set is dropped, seen or not; the ones it sets are overwritten instead.
    let removed = &ok.headers_to_remove;
    for name in [
        "x-fhirguard-patient",
        "x-fhirguard-scopes",
        "x_fhirguard_patient",
        "x-fhirguard_scopes",
        "x_fhirguard_subject",
        "x_fhirguard_decision_id",
    ] {
        assert!(
            removed.iter().any(|r| r == name),
            "{name} is not removed: {removed:?}"
        );
    }
    for kept in ["x-fhirguard-subject", "x-fhirguard-decision-id"] {
        assert!(
            !removed.iter().any(|r| r == kept),
            "{kept} is set, not removed"
        );
    }

    let r = check(g, get("/fhir/r4/Patient/1").auth(basic("alice", "wrong")))
        .await
        .unwrap();
    assert_eq!(view(&r).0, 401);
    let r = check(
        g,
        get("/fhir/r4/Patient/1").auth(basic("nobody", "alice-pw")),
    )
    .await
    .unwrap();
    assert_eq!(view(&r).0, 401);

    let del = Call {
        method: "DELETE",
        path: "/fhir/r4/Patient/1",
        headers: vec![],
    };
    let r = check(g, del.auth(basic("bob", "bob-pw"))).await.unwrap();
    let (status, _, body) = view(&r);
    assert_eq!(status, 403);
    assert!(
        body.contains("\"forbidden\"") && body.contains("Read permission"),
        "{body}"
    );
    let r = check(g, get("/fhir/r4/Patient/1").auth(basic("bob", "bob-pw")))
        .await
        .unwrap();
    assert_eq!(view(&r).0, 200);

    // The second check of the same credentials is served from the cache.
    let m = s.svc.metrics().await;
    assert!(
        metric(
            &m,
            r#"fhirguard_cache_lookups_total{cache="basic",result="hit"}"#
        )
        .unwrap_or(0.0)
            >= 0.0
    );
    assert!(m.contains(r#"fhirguard_decisions_total{policy="clinical/ehr",result="deny",reason="read_only_user"} 1"#), "{m}");
    assert!(m.contains("fhirguard_config_generation 1"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_wrong_passwords_is_refused_and_real_users_still_get_in() {
    let s = stack().await;
    // Password checks are bounded to a few at a time; the rest queue. Every attempt must still
    // get its own correct answer: queueing never turns into an allow or an UNAVAILABLE.
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..48 {
        let g = s.svc.service.clone();
        calls.spawn(async move {
            let (user, pw, want) = match i % 8 {
                0 => ("alice", "alice-pw".to_string(), 200),
                4 => ("bob", "bob-pw".to_string(), 200),
                _ => ("alice", format!("guess-{i}"), 401),
            };
            let r = check(&g, get("/fhir/r4/Patient/1").auth(basic(user, &pw))).await;
            (i, r.map(|r| view(&r).0), want)
        });
    }
    while let Some(joined) = calls.join_next().await {
        let (i, got, want) = joined.unwrap();
        assert_eq!(got.unwrap(), want, "attempt {i}");
    }
    let m = s.svc.metrics().await;
    assert_eq!(
        metric(&m, "fhirguard_password_checks_waiting"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"fhirguard_decisions_total{policy="clinical/ehr",result="deny",reason="invalid_basic"}"#
        ),
        Some(36.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_verified_strictly() {
    let s = stack().await;
    let g = &s.svc.service;
    let good = s
        .key
        .sign(&claims("dr-who", "user/Patient.rs launch openid"));
    let r = check(g, get("/fhir/r4/Patient/1").bearer(&good))
        .await
        .unwrap();
    let (status, headers, _) = view(&r);
    assert_eq!(status, 200, "{r:?}");
    assert_eq!(hdr(&headers, "x-fhirguard-subject"), Some("dr-who"));
    assert_eq!(
        hdr(&headers, "x-fhirguard-scopes"),
        Some("user/Patient.rs launch openid")
    );

    let mut c = claims("dr-who", "user/Patient.rs");
    c["exp"] = serde_json::json!(now() - 60);
    let cases = vec![
        ("expired", s.key.sign(&c), "expired"),
        (
            "wrong audience",
            s.key.sign(&{
                let mut c = claims("x", "user/*.rs");
                c["aud"] = "other".into();
                c
            }),
            "audience",
        ),
        (
            "wrong issuer",
            s.key.sign(&{
                let mut c = claims("x", "user/*.rs");
                c["iss"] = "https://evil".into();
                c
            }),
            "issuer",
        ),
        (
            "no subject",
            s.key.sign(&{
                let mut c = claims("x", "user/*.rs");
                c.as_object_mut().unwrap().remove("sub");
                c
            }),
            "sub",
        ),
        (
            "bad signature",
            SigningKey::new("other").sign_as("k1", &claims("x", "user/*.rs")),
            "signature",
        ),
        ("garbage", "abc.def.ghi".to_string(), "well-formed"),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64url(r#"{"alg":"none","kid":"k1"}"#),
                b64url(&claims("x", "user/*.rs").to_string())
            ),
            "well-formed",
        ),
        (
            "HS256 with the public key",
            hs256_with_public_key(&s.key),
            "algorithm",
        ),
        (
            "jku header",
            with_header(&s.key, r#","jku":"https://evil/jwks""#),
            "jku",
        ),
        (
            "embedded jwk",
            with_header(&s.key, r#","jwk":{"kty":"EC"}"#),
            "jwk",
        ),
        (
            "crit header",
            with_header(&s.key, r#","crit":["exp"]"#),
            "crit",
        ),
    ];
    for (name, token, want) in cases {
        let r = check(g, get("/fhir/r4/Patient/1").bearer(&token))
            .await
            .unwrap();
        let (status, headers, body) = view(&r);
        assert_eq!(status, 401, "{name}: {body}");
        let www = hdr(&headers, "www-authenticate").unwrap();
        assert!(
            www.starts_with(r#"Bearer realm="fhir", error="invalid_token""#),
            "{name}: {www}"
        );
        assert!(body.contains(want), "{name}: {body} should mention {want}");
    }

    // Scopes: a search needs s, and the challenge names a scope that would do.
    let r = check(g, get("/fhir/r4/Observation?code=x").bearer(&good))
        .await
        .unwrap();
    let (status, headers, body) = view(&r);
    assert_eq!(status, 403);
    assert_eq!(
        hdr(&headers, "www-authenticate"),
        Some(r#"Bearer realm="fhir", error="insufficient_scope", scope="user/Observation.s""#)
    );
    assert!(body.contains("forbidden"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_refetches_and_last_good_keys_survive_an_outage() {
    let s = stack().await;
    let g = &s.svc.service;
    let t = s.key.sign(&claims("a", "user/*.rs"));
    assert_eq!(
        view(
            &check(g, get("/fhir/r4/Patient/1").bearer(&t))
                .await
                .unwrap()
        )
        .0,
        200
    );

    // The IdP rotates to k2: the first token with k2 triggers a refetch.
    let k2 = SigningKey::new("k2");
    *s.jwks.doc.lock().unwrap() = jwks_doc(&[&s.key, &k2]);
    let before = s.jwks.hits.load(Ordering::SeqCst);
    let t2 = k2.sign(&claims("b", "user/*.rs"));
    assert_eq!(
        view(
            &check(g, get("/fhir/r4/Patient/1").bearer(&t2))
                .await
                .unwrap()
        )
        .0,
        200
    );
    assert_eq!(s.jwks.hits.load(Ordering::SeqCst), before + 1);

    // Random kids cannot make us hammer the IdP: at most one refetch per interval (500 ms in
    // these tests), counted against the time the 20 checks really took on a busy machine.
    let strangers: Vec<String> = (0..20)
        .map(|i| SigningKey::new(&format!("r{i}")).sign(&claims("c", "user/*.rs")))
        .collect();
    let hits = s.jwks.hits.load(Ordering::SeqCst);
    let started = std::time::Instant::now();
    for t in &strangers {
        let (status, _, body) = view(&check(g, get("/fhir/r4/Patient/1").bearer(t)).await.unwrap());
        assert_eq!(status, 401);
        assert!(body.contains("does not publish"), "{body}");
    }
    let intervals = (started.elapsed().as_millis() / 500) as usize;
    let refetches = s.jwks.hits.load(Ordering::SeqCst) - hits;
    assert!(
        refetches <= 1 + intervals,
        "{refetches} refetches for 20 unknown key ids in {intervals} refetch intervals: not rate-limited"
    );

    // The JWKS endpoint goes down: fresh tokens signed with known keys still work.
    s.jwks.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let unknown = SigningKey::new("k3").sign(&claims("d", "user/*.rs"));
    assert_eq!(
        view(
            &check(g, get("/fhir/r4/Patient/1").bearer(&unknown))
                .await
                .unwrap()
        )
        .0,
        401
    );
    let fresh = s.key.sign(&claims("e", "user/*.rs"));
    assert_eq!(
        view(
            &check(g, get("/fhir/r4/Patient/1").bearer(&fresh))
                .await
                .unwrap()
        )
        .0,
        200
    );
    let m = s.svc.metrics().await;
    assert!(
        m.contains(r#"fhirguard_jwks_stale{source="clinical/ehr/idp"} 1"#),
        "{m}"
    );
    assert!(
        metric(
            &m,
            r#"fhirguard_jwks_fetches_total{source="clinical/ehr/idp",result="failure"}"#
        )
        .unwrap()
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawn_key_stops_a_cached_token_at_the_next_key_refresh() {
    let s = stack().await;
    let g = &s.svc.service;
    let status = async |token: &str| {
        view(
            &check(g, get("/fhir/r4/Patient/1").bearer(token))
                .await
                .unwrap(),
        )
        .0
    };
    // A long-lived token is verified once and then answered from the cache.
    let t = s.key.sign(&claims("a", "user/*.rs"));
    assert_eq!(status(&t).await, 200);
    assert_eq!(status(&t).await, 200);

    // The IdP withdraws k1 (compromised) and publishes k2. The first k2 token refetches the
    // keys; from then on the cached k1 verdict must not be honoured any more.
    let k2 = SigningKey::new("k2");
    *s.jwks.doc.lock().unwrap() = jwks_doc(&[&k2]);
    assert_eq!(status(&k2.sign(&claims("b", "user/*.rs"))).await, 200);
    let (code, _, body) = view(
        &check(g, get("/fhir/r4/Patient/1").bearer(&t))
            .await
            .unwrap(),
    );
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("does not publish"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_never_obtained_means_unavailable() {
    init();
    let pki = TestPki::new();
    let key = SigningKey::new("k1");
    let jwks = JwksServer::start(&pki, jwks_doc(&[&key])).await;
    jwks.down.store(true, Ordering::SeqCst);
    let dir = ConfigDir::new();
    dir.publish_config(&standard_config(1, &jwks.uri(), ""), Some(&pki.ca_pem));
    let svc = start_service(dir.path(), Duration::from_secs(60)).await;
    let t = key.sign(&claims("a", "user/*.rs"));
    let err = check(&svc.service, get("/fhir/r4/Patient/1").bearer(&t))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    // Basic still decides: the outage only affects tokens.
    let r = check(
        &svc.service,
        get("/fhir/r4/Patient/1").auth(basic("alice", "alice-pw")),
    )
    .await
    .unwrap();
    assert_eq!(view(&r).0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_server_outside_the_custom_bundle_is_not_trusted() {
    init();
    let pki = TestPki::new();
    let other_ca = TestPki::new();
    let key = SigningKey::new("k1");
    let jwks = JwksServer::start(&pki, jwks_doc(&[&key])).await;
    let dir = ConfigDir::new();
    // The config trusts a different CA than the one that signed the JWKS server.
    dir.publish_config(&standard_config(1, &jwks.uri(), ""), Some(&other_ca.ca_pem));
    let svc = start_service(dir.path(), Duration::from_secs(60)).await;
    let t = key.sign(&claims("a", "user/*.rs"));
    let err = check(&svc.service, get("/fhir/r4/Patient/1").bearer(&t))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(
        err.message().contains("certificate") || err.message().contains("Unknown"),
        "{}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_valid_configs_and_keeps_the_last_good_one() {
    let s = stack().await;
    let g = &s.svc.service;
    let carol = || get("/fhir/r4/Patient/1").auth(basic("carol", "carol-pw"));
    assert_eq!(view(&check(g, carol()).await.unwrap()).0, 401);

    let cfg = standard_config(2, &s.jwks.uri(), &bcrypt_line("carol", "carol-pw"));
    s.dir.publish_config(&cfg, Some(&s.pki.ca_pem));
    assert_eq!(
        fhirguard_authz::runtime::reload::reload_now(&s.svc.service, s.dir.path()).unwrap(),
        fhirguard_authz::runtime::reload::ReloadOutcome::Loaded { generation: 2 }
    );
    assert_eq!(view(&check(g, carol()).await.unwrap()).0, 200);
    assert_eq!(
        fhirguard_authz::runtime::reload::reload_now(&s.svc.service, s.dir.path()).unwrap(),
        fhirguard_authz::runtime::reload::ReloadOutcome::Unchanged
    );

    // An invalid config (a plain-text password) is refused; generation 2 stays.
    let mut bad = standard_config(3, &s.jwks.uri(), "");
    bad.policies[0]
        .authentication
        .basic
        .as_mut()
        .unwrap()
        .htpasswd
        .push_str("mallory:plaintext\n");
    s.dir.publish_config(&bad, Some(&s.pki.ca_pem));
    let err =
        fhirguard_authz::runtime::reload::reload_now(&s.svc.service, s.dir.path()).unwrap_err();
    assert!(err.to_string().contains("plain text"), "{err}");
    assert_eq!(view(&check(g, carol()).await.unwrap()).0, 200);
    // Unparsable JSON as well.
    s.dir
        .publish(&[("config.json", "{not json"), ("idp-ca.pem", &s.pki.ca_pem)]);
    assert!(fhirguard_authz::runtime::reload::reload_now(&s.svc.service, s.dir.path()).is_err());
    assert_eq!(view(&check(g, carol()).await.unwrap()).0, 200);
    let m = s.svc.metrics().await;
    assert!(m.contains("fhirguard_config_generation 2"), "{m}");
    assert!(
        metric(&m, r#"fhirguard_config_reloads_total{result="invalid"}"#).unwrap() >= 2.0,
        "{m}"
    );
}

fn b64url(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

/// The classic confusion attack: HS256 keyed with the public key's bytes.
fn hs256_with_public_key(key: &SigningKey) -> String {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some(key.kid.clone());
    let secret = key.jwk.to_string();
    jsonwebtoken::encode(
        &h,
        &claims("x", "user/*.rs"),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A correctly signed token whose header carries an extra member.
fn with_header(key: &SigningKey, extra: &str) -> String {
    let header = format!(r#"{{"alg":"ES256","kid":"{}"{extra}}}"#, key.kid);
    let signing_input = format!(
        "{}.{}",
        b64url(&header),
        b64url(&claims("x", "user/*.rs").to_string())
    );
    // Sign the custom input with the real key via jsonwebtoken's crypto.
    let enc = jsonwebtoken::EncodingKey::from_ec_pem(key.pem.as_bytes()).unwrap();
    let sig = jsonwebtoken::crypto::sign(
        signing_input.as_bytes(),
        &enc,
        jsonwebtoken::Algorithm::ES256,
    )
    .unwrap();
    let _ = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!("{signing_input}.{sig}")
}
