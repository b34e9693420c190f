//! Outside review of the issue-18 features (introspection, BALP audit, SMART discovery):
//! probes written by an outside reviewer, kept as regression tests after the holes they found
//! were closed (H1 patient attribution, H2 event size, H3 key-bound tokens, H4 503s not
//! audited, H5 patient spellings, H6 issuer match). Each table prints every variant tried
//! (`--nocapture`); a row showing a hole fails its assertion.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::type_complexity
)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use common::{ConfigDir, TestPki, init, now};
use fhirguard_authz::config::*;
use fhirguard_authz::core::audit::{audit_events, patients_of};
use fhirguard_authz::core::driver::{
    Check, Need, Next, Outcome, TokenFailure, TokenRoute, route_token,
};
use fhirguard_authz::core::fhir::Body;
use fhirguard_authz::core::policy::{Decision, DenyReason, Request, TokenIdentity};
use fhirguard_authz::runtime::discovery::{DiscoveryOptions, DiscoveryRegistry};
use fhirguard_authz::runtime::executor::{Executor, Options};
use fhirguard_authz::runtime::introspect::IntrospectionOptions;
use fhirguard_authz::runtime::reload;
use fhirguard_authz::verify::cache::ByteCache;
use fhirguard_authz::verify::introspection::Introspector;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const AUD: &str = "https://ehr.test/fhir";
const SECRET: &str = "atk18-client-secret";
const TOKEN: &str = "atk18-SECRET-TOKEN-VALUE";
const CA_FILE: &str = "ca.pem";

// ------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------

fn intro_cfg(endpoint: &str, tls: TlsConfig) -> IntrospectionConfig {
    IntrospectionConfig {
        endpoint: endpoint.into(),
        client_id: "fhirguard".into(),
        client_secret: SECRET.into(),
        client_auth_method: ClientAuthMethod::ClientSecretBasic,
        audiences: vec![AUD.into()],
        max_cache_seconds: 300,
        introspect_jwts: false,
        clock_skew_seconds: 60,
        tls,
    }
}

fn custom_ca() -> TlsConfig {
    TlsConfig {
        mode: TlsMode::CustomBundle,
        ca_file: Some(CA_FILE.into()),
    }
}

fn jwt_with(payload: &str) -> String {
    let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!("{}.{}.sig", enc(r#"{"alg":"ES256"}"#), enc(payload))
}

/// A policy: JWT provider `https://idp.test` (inline JWKS), introspection, query tokens.
fn policy_json(extra: Value) -> PolicyConfig {
    let mut v = json!({
        "namespace": "clinical", "name": "ehr", "hosts": ["ehr.test"], "basePath": "/fhir",
        "authentication": {
            "jwt": {"tokenSources": ["Header", "QueryParameter"], "providers": [{
                "name": "idp", "issuer": "https://idp.test", "audiences": [AUD],
                "algorithms": ["ES256"], "jwks": {"uri": "https://idp.test/jwks"}}]},
        },
        "audit": {"record": "PatientDataAndRefusals", "stdout": true},
    });
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, x) in e {
            o.insert(k.clone(), x.clone());
        }
    }
    serde_json::from_value(v).unwrap()
}

fn compiled(p: PolicyConfig) -> CompiledConfig {
    let c = CompiledConfig {
        policies: vec![p],
        ..CompiledConfig::empty(1)
    };
    assert_eq!(c.validate(), vec![]);
    c
}

fn tok(scopes: &str, patient: Option<&str>) -> TokenIdentity {
    common::verified_token(scopes, patient)
}

/// Runs a request through the driver (token answered with `token` when asked; lookups are
/// not answered) and builds its AuditEvent. `None` when the check did not end in a decision.
#[allow(clippy::too_many_arguments)]
fn decide_and_audit(
    config: &CompiledConfig,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    body: Option<(&[u8], &str)>,
    token: Option<TokenIdentity>,
) -> (String, Option<Value>, Option<String>) {
    let req = Request {
        method,
        host: "ehr.test",
        path,
        authorization,
        if_none_exist: None,
        headers: &[],
        body: body.map(|(bytes, ct)| Body {
            bytes,
            content_type: Some(ct),
        }),
        policy_ref: None,
    };
    let mut check = Check::new(config, &req);
    match check.next() {
        Next::Need(Need::Token { .. }) | Next::Need(Need::Introspect { .. }) => {
            // No token given: the credential is forged (401 invalid_token).
            let t = token.map(Arc::new).ok_or_else(|| {
                TokenFailure::Invalid(DenyReason::InvalidToken, "signature invalid".into())
            });
            if matches!(check.next(), Next::Need(Need::Token { .. })) {
                check.token_verified(t);
            } else {
                check.token_introspected(t);
            }
        }
        _ => {}
    }
    let Some(Outcome::Decided(decision)) = check.outcome() else {
        return (format!("{:?}", check.next()), None, None);
    };
    let label = match decision {
        Decision::Allow(_) => "200".to_string(),
        Decision::Deny(d) => d.status.to_string(),
        Decision::Respond(r) => format!("respond {}", r.status),
    };
    let facts = common::audit_facts(config, &check, method, "ehr.test", path, Some("10.0.0.9"));
    // Every patient named gets an event of its own: all of them, comma-joined.
    let named: Vec<String> = patients_of(&facts)
        .iter()
        .map(|r| r.strip_prefix("Patient/").unwrap_or(r).to_string())
        .collect();
    let patient = (!named.is_empty()).then(|| named.join(","));
    let event = audit_events(&facts, AuditRecord::All).into_iter().next();
    (label, event, patient)
}

/// A one-shot HTTPS responder on 127.0.0.1 answering every connection with `response`.
async fn responder(pki: &TestPki, response: Vec<u8>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = pki.acceptor();
    let response = Arc::new(response);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, response) = (acceptor.clone(), response.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 16 * 1024];
                let mut got = Vec::new();
                // Read the head and (small) body; the answer does not depend on them.
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tokio::time::timeout(Duration::from_millis(50), tls.read(&mut buf)).await;
                let _ = tls.write_all(&response).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

fn http(status: &str, extra_headers: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{extra_headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn active_body(extra: Value) -> Value {
    let mut v = json!({"active": true, "sub": "u1", "client_id": "app", "aud": AUD,
        "scope": "user/*.rs", "exp": now() + 3600});
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, x) in e {
            o.insert(k.clone(), x.clone());
        }
    }
    v
}

/// An executor on a config whose only policy introspects at `endpoint` and audits to a
/// file in the config dir. Returns the executor, the dir (kept alive) and the audit path.
async fn intro_executor(
    pki: &TestPki,
    endpoint: &str,
    tls: TlsConfig,
) -> (Arc<Executor>, ConfigDir, std::path::PathBuf) {
    let dir = ConfigDir::new();
    let audit = dir.path().join("audit.ndjson");
    let mut p = policy_json(json!({
        "audit": {"record": "PatientDataAndRefusals", "file": audit.to_str().unwrap()},
    }));
    p.authentication.jwt = None;
    p.authentication.introspection = Some(intro_cfg(endpoint, tls));
    let config = compiled(p);
    dir.publish(&[
        (CONFIG_FILE, config.to_json().as_str()),
        (CA_FILE, pki.ca_pem.as_str()),
    ]);
    let ex = Arc::new(Executor::new(
        Arc::new(fhirguard_authz::observe::Ignore),
        Options {
            introspection: IntrospectionOptions {
                min_retry: Duration::from_millis(100),
                max_retry: Duration::from_millis(200),
                request_timeout: Duration::from_secs(2),
            },
            ..Options::default()
        },
    ));
    reload::reload_now(&ex, dir.path()).expect("config loads");
    (ex, dir, audit)
}

async fn bearer_check(ex: &Executor, path: &str, token: &str) -> Outcome {
    let auth = format!("Bearer {token}");
    let req = Request {
        method: "GET",
        host: "ehr.test",
        path,
        authorization: Some(&auth),
        if_none_exist: None,
        headers: &[],
        body: None,
        policy_ref: None,
    };
    ex.check_from(&req, Some("10.0.0.9")).await.outcome
}

fn status_of(o: &Outcome) -> u16 {
    match o {
        Outcome::Decided(Decision::Allow(_)) => 200,
        Outcome::Decided(Decision::Deny(d)) => d.status,
        Outcome::Decided(Decision::Respond(r)) => r.status,
        Outcome::Unavailable(_) => 503,
    }
}

/// Prints the table and fails listing the rows whose observation is not the secure one.
fn report(title: &str, rows: &[(String, String, String, bool)]) {
    println!("\n== {title}");
    println!("| variant | expected | observed | ok |");
    for (v, want, got, ok) in rows {
        println!(
            "| {v} | {want} | {got} | {} |",
            if *ok { "yes" } else { "HOLE" }
        );
    }
    let bad: Vec<&String> = rows.iter().filter(|r| !r.3).map(|r| &r.0).collect();
    assert!(bad.is_empty(), "{title}: holes in {bad:?}");
}

// ------------------------------------------------------------------------------------------
// 1. Introspection: response parsing
// ------------------------------------------------------------------------------------------

/// What `judge` makes of an answer: "no verdict" (503), "refused" (401) or "active".
fn judged(body: &[u8]) -> String {
    let i = Introspector::new(
        &intro_cfg("https://as.test/introspect", TlsConfig::default()),
        Arc::new(ByteCache::new(1 << 20)),
    );
    match i.judge(body, now()) {
        Err(_) => "no verdict".into(),
        Ok(j) => match j.verdict {
            Err(r) => format!("refused ({r:?})"),
            Ok(id) => format!("active (patient {:?}, subject {})", id.patient, id.subject),
        },
    }
}

#[test]
fn introspection_answers_are_read_strictly() {
    let n = now();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "active as string",
            r#"{"active":"true","sub":"u","aud":"https://ehr.test/fhir"}"#.into(),
            "no verdict",
        ),
        (
            "active missing",
            json!({"sub": "u", "aud": AUD}).to_string(),
            "no verdict",
        ),
        (
            "active 1",
            json!({"active": 1, "sub": "u", "aud": AUD}).to_string(),
            "no verdict",
        ),
        (
            "active twice",
            r#"{"active":false,"active":true,"sub":"u","aud":"https://ehr.test/fhir"}"#.into(),
            "no verdict",
        ),
        (
            "active:false with claims",
            json!({"active": false, "sub": "u", "aud": AUD, "scope": "user/*.rs"}).to_string(),
            "refused",
        ),
        ("array body", "[{\"active\":true}]".into(), "no verdict"),
        (
            "scope as array",
            active_body(json!({"scope": ["user/*.rs"]})).to_string(),
            "refused",
        ),
        (
            "exp in the past",
            active_body(json!({"exp": n - 3600})).to_string(),
            "refused",
        ),
        (
            "exp as string",
            active_body(json!({"exp": (n + 3600).to_string()})).to_string(),
            "refused",
        ),
        (
            "exp negative",
            active_body(json!({"exp": -1})).to_string(),
            "refused",
        ),
        (
            "exp float past",
            active_body(json!({"exp": (n - 3600) as f64 + 0.5})).to_string(),
            "refused",
        ),
        (
            "nbf in the future",
            active_body(json!({"nbf": n + 3600})).to_string(),
            "refused",
        ),
        (
            "aud foreign",
            active_body(json!({"aud": "https://other.test"})).to_string(),
            "refused",
        ),
        (
            "aud absent",
            {
                let mut v = active_body(json!({}));
                v.as_object_mut().unwrap().remove("aud");
                v.to_string()
            },
            "refused",
        ),
        (
            "aud prefix",
            active_body(json!({"aud": "https://ehr.test/fhir/x"})).to_string(),
            "refused",
        ),
        (
            "aud array with number",
            active_body(json!({"aud": [AUD, 7]})).to_string(),
            "refused",
        ),
        (
            "no sub and no client_id",
            {
                let mut v = active_body(json!({}));
                let o = v.as_object_mut().unwrap();
                o.remove("sub");
                o.remove("client_id");
                v.to_string()
            },
            "refused",
        ),
        (
            "sub as number",
            active_body(json!({"sub": 5})).to_string(),
            "refused",
        ),
        (
            "patient two ids",
            active_body(json!({"patient": "p1,p2"})).to_string(),
            "refused",
        ),
        (
            "patient with slash",
            active_body(json!({"patient": "Patient/p1/_history/1"})).to_string(),
            "refused",
        ),
        (
            "patient with space",
            active_body(json!({"patient": "p1 "})).to_string(),
            "refused",
        ),
        (
            "patient query chars",
            active_body(json!({"patient": "p1&patient=p2"})).to_string(),
            "refused",
        ),
        (
            "patient too long",
            active_body(json!({"patient": "a".repeat(65)})).to_string(),
            "refused",
        ),
        (
            "patient as number",
            active_body(json!({"patient": 7})).to_string(),
            "refused",
        ),
        (
            "patient Patient/p1",
            active_body(json!({"patient": "Patient/p1"})).to_string(),
            "active",
        ),
        (
            "patient empty",
            active_body(json!({"patient": ""})).to_string(),
            "refused",
        ),
    ];
    let rows: Vec<_> = cases
        .into_iter()
        .map(|(label, body, want)| {
            let got = judged(body.as_bytes());
            let ok = got.starts_with(want);
            (label.to_string(), want.to_string(), got, ok)
        })
        .collect();
    report("introspection answers", &rows);
}

#[test]
fn sender_constrained_tokens_are_not_accepted_as_bearer() {
    // RFC 9449 §6.2 / RFC 8705 §3.2: when introspection says the token is bound to a key
    // (`cnf`), the resource server must check the proof; fhirguard has no proof to check, so
    // the only secure answer is a refusal. A stolen DPoP token replayed as `Bearer` works.
    let rows: Vec<_> = [
        ("cnf.jkt + token_type DPoP", active_body(json!({"token_type": "DPoP", "cnf": {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}}))),
        ("cnf.x5t#S256 (mTLS-bound)", active_body(json!({"cnf": {"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"}}))),
        ("token_type DPoP alone", active_body(json!({"token_type": "DPoP"}))),
    ]
    .into_iter()
    .map(|(label, body)| {
        let got = judged(body.to_string().as_bytes());
        let ok = got.starts_with("refused");
        (label.to_string(), "refused".to_string(), got, ok)
    })
    .collect();
    report("sender-constrained tokens", &rows);
}

// ------------------------------------------------------------------------------------------
// 2. Introspection: routing
// ------------------------------------------------------------------------------------------

#[test]
fn tokens_are_routed_without_ambiguity() {
    let mut p = policy_json(json!({}));
    p.authentication.introspection = Some(intro_cfg(
        "https://as.test/introspect",
        TlsConfig::default(),
    ));
    let cases: Vec<(&str, String, TokenRoute)> = vec![
        (
            "JWT of the provider",
            jwt_with(r#"{"iss":"https://idp.test"}"#),
            TokenRoute::Jwt,
        ),
        (
            "JWT, iss with trailing slash",
            jwt_with(r#"{"iss":"https://idp.test/"}"#),
            TokenRoute::Introspect,
        ),
        (
            "JWT, iss other case",
            jwt_with(r#"{"iss":"HTTPS://IDP.TEST"}"#),
            TokenRoute::Introspect,
        ),
        (
            "JWT without iss",
            jwt_with(r#"{"sub":"x"}"#),
            TokenRoute::Introspect,
        ),
        (
            "JWT, iss as array",
            jwt_with(r#"{"iss":["https://idp.test"]}"#),
            TokenRoute::Introspect,
        ),
        (
            "JWT, iss twice",
            jwt_with(r#"{"iss":"https://idp.test","iss":"x"}"#),
            TokenRoute::Introspect,
        ),
        (
            "JWE-like 5 parts",
            format!("{}.a.b.c", jwt_with(r#"{"iss":"https://idp.test"}"#)),
            TokenRoute::Introspect,
        ),
        (
            "opaque",
            "2YotnFZFEjr1zCsicMWpAA".into(),
            TokenRoute::Introspect,
        ),
        ("opaque with dots", "a.b.c".into(), TokenRoute::Introspect),
        (
            "padded base64 payload",
            {
                let p = base64::engine::general_purpose::URL_SAFE
                    .encode(r#"{"iss":"https://idp.test"}"#);
                format!("eyJhbGciOiJFUzI1NiJ9.{p}.sig")
            },
            TokenRoute::Introspect,
        ),
    ];
    let rows: Vec<_> = cases
        .into_iter()
        .map(|(label, t, want)| {
            let got = route_token(&p, &t);
            (
                label.to_string(),
                format!("{want:?}"),
                format!("{got:?}"),
                got == want,
            )
        })
        .collect();
    report("token routing", &rows);
}

// ------------------------------------------------------------------------------------------
// 3. Introspection: the HTTP exchange (real HTTPS on 127.0.0.1)
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_exchange_fails_closed() {
    init();
    let pki = TestPki::new();
    let active = active_body(json!({})).to_string();
    let mut rows = Vec::new();

    // A redirect to an endpoint that would say "active" is not followed.
    let target = responder(&pki, http("200 OK", "", &active)).await;
    let redirect = responder(
        &pki,
        http(
            "302 Found",
            &format!("location: https://127.0.0.1:{target}/introspect\r\n"),
            "",
        ),
    )
    .await;
    // An answer above the size bound (64 KiB), otherwise active.
    let mut big = active_body(json!({}));
    big["pad"] = json!("x".repeat(100 * 1024));
    let oversized = responder(&pki, http("200 OK", "", &big.to_string())).await;
    // The right answer from a server the trust setting does not cover.
    let untrusted = TestPki::new();
    let foreign = responder(&untrusted, http("200 OK", "", &active)).await;
    // 401 to fhirguard's own credentials.
    let unauthorized = responder(&pki, http("401 Unauthorized", "", "{}")).await;
    // 200 with an HTML body.
    let html = responder(&pki, http("200 OK", "", "<html>ok</html>")).await;

    for (label, port, tls) in [
        ("302 to an active answer", redirect, custom_ca()),
        ("active answer > 64 KiB", oversized, custom_ca()),
        ("active answer, cert of another CA", foreign, custom_ca()),
        (
            "active answer, cert not in public roots (DefaultBundle)",
            target,
            TlsConfig::default(),
        ),
        ("401 to our client credentials", unauthorized, custom_ca()),
        ("200 with non-JSON", html, custom_ca()),
    ] {
        let url = format!("https://127.0.0.1:{port}/introspect");
        let (ex, _dir, _) = intro_executor(&pki, &url, tls).await;
        let o = bearer_check(&ex, "/fhir/Observation?code=x", TOKEN).await;
        let why = match &o {
            Outcome::Unavailable(w) => w.clone(),
            _ => String::new(),
        };
        let leaks = why.contains(TOKEN) || why.contains(SECRET);
        rows.push((
            label.to_string(),
            "503, no secret in the reason".to_string(),
            format!(
                "{}{}",
                status_of(&o),
                if leaks { " + secret in reason" } else { "" }
            ),
            status_of(&o) == 503 && !leaks,
        ));
    }
    // Control: the target itself with the right trust allows.
    let url = format!("https://127.0.0.1:{target}/introspect");
    let (ex, _dir, _) = intro_executor(&pki, &url, custom_ca()).await;
    let o = bearer_check(&ex, "/fhir/Observation?code=x", TOKEN).await;
    rows.push((
        "control: trusted active answer".into(),
        "200".into(),
        status_of(&o).to_string(),
        status_of(&o) == 200,
    ));
    report("introspection exchange", &rows);
}

// ------------------------------------------------------------------------------------------
// 4. Audit: which patient an event names
// ------------------------------------------------------------------------------------------

fn attribution_rows() -> Vec<(String, String, String, bool)> {
    let config = compiled(policy_json(json!({})));
    let bearer = Some("Bearer opaque-attack");
    let cases: Vec<(&str, &str, &str, TokenIdentity, Option<&str>)> = vec![
        // (label, method, path, token, the patient whose data the request is about)
        (
            "user/ scope + context p1 reads Patient/p2 (allowed)",
            "GET",
            "/fhir/Patient/p2",
            tok("user/Patient.rs launch/patient", Some("p1")),
            Some("p2"),
        ),
        (
            "user/ scope + context p1 searches Observation?patient=p2 (allowed)",
            "GET",
            "/fhir/Observation?patient=p2",
            tok("user/Observation.rs", Some("p1")),
            Some("p2"),
        ),
        (
            "user/ scope + context p1 deletes Patient/p2 (allowed)",
            "DELETE",
            "/fhir/Patient/p2",
            tok("user/Patient.d", Some("p1")),
            Some("p2"),
        ),
        (
            "patient/ scope, context p1, reads Patient/p2 (refused)",
            "GET",
            "/fhir/Patient/p2",
            tok("patient/Patient.rs", Some("p1")),
            Some("p2"),
        ),
        (
            "patient/ scope, context p1, searches Observation?patient=p2 (refused)",
            "GET",
            "/fhir/Observation?patient=p2",
            tok("patient/Observation.rs", Some("p1")),
            Some("p2"),
        ),
        (
            "context p1 reads its own Patient/p1",
            "GET",
            "/fhir/Patient/p1",
            tok("patient/Patient.rs", Some("p1")),
            Some("p1"),
        ),
        (
            "no context: Patient/p2",
            "GET",
            "/fhir/Patient/p2",
            tok("user/*.rs", None),
            Some("p2"),
        ),
        (
            "no context: subject=Patient/1,Patient/2",
            "GET",
            "/fhir/Observation?subject=Patient/1,Patient/2",
            tok("user/*.rs", None),
            Some("1,2"),
        ),
        (
            "no context: patient=1&patient=2",
            "GET",
            "/fhir/Observation?patient=1&patient=2",
            tok("user/*.rs", None),
            Some("1,2"),
        ),
        (
            "no context: patient=1&subject=Patient/2",
            "GET",
            "/fhir/Observation?patient=1&subject=Patient/2",
            tok("user/*.rs", None),
            Some("1,2"),
        ),
        (
            "no context: chained patient.name=x",
            "GET",
            "/fhir/Observation?patient.name=x",
            tok("user/*.rs", None),
            None,
        ),
        (
            "no context: subject=Group/1",
            "GET",
            "/fhir/Observation?subject=Group/1",
            tok("user/*.rs", None),
            None,
        ),
        (
            "no context: patient=Patient/p5",
            "GET",
            "/fhir/Observation?patient=Patient/p5",
            tok("user/*.rs", None),
            Some("p5"),
        ),
        (
            "no context: patient:Patient=p6",
            "GET",
            "/fhir/Observation?patient:Patient=p6",
            tok("user/*.rs", None),
            Some("p6"),
        ),
        (
            "no context: subject:Patient=p3",
            "GET",
            "/fhir/Observation?subject:Patient=p3",
            tok("user/*.rs", None),
            Some("p3"),
        ),
        (
            "no context: Patient?_id=p4",
            "GET",
            "/fhir/Patient?_id=p4",
            tok("user/*.rs", None),
            Some("p4"),
        ),
        (
            "no context: compartment Patient/p7/Observation",
            "GET",
            "/fhir/Patient/p7/Observation",
            tok("user/*.rs", None),
            Some("p7"),
        ),
    ];
    cases
        .into_iter()
        .map(|(label, method, path, t, want)| {
            let (status, _, got) = decide_and_audit(&config, method, path, bearer, None, Some(t));
            let ok = got.as_deref() == want;
            (
                label.to_string(),
                format!("patient {want:?}"),
                format!("{status}, patient {got:?}"),
                ok,
            )
        })
        .collect()
}

#[test]
fn audit_events_name_the_patient_whose_data_it_is() {
    report("audit patient attribution", &attribution_rows());
}

// ------------------------------------------------------------------------------------------
// 5. Audit: secrets never in an AuditEvent
// ------------------------------------------------------------------------------------------

#[test]
fn audit_events_never_carry_tokens() {
    let config = compiled(policy_json(json!({})));
    let form = "application/x-www-form-urlencoded";
    let t = || Some(tok("user/*.rs", None));
    let header = format!("Bearer {TOKEN}");
    let path_q = |q: &str| format!("/fhir/Observation?code=x&{q}");
    let h = Some(header.as_str());
    let cases: Vec<(
        &str,
        &str,
        String,
        Option<String>,
        Option<&str>,
        Option<TokenIdentity>,
    )> = vec![
        (
            "query access_token, allowed search",
            "GET",
            path_q(&format!("access_token={TOKEN}")),
            None,
            None,
            t(),
        ),
        (
            "query access_token, refused search",
            "GET",
            path_q(&format!("access_token={TOKEN}")),
            None,
            None,
            Some(tok("user/Patient.rs", None)),
        ),
        (
            "Access_Token (case)",
            "GET",
            path_q(&format!("Access_Token={TOKEN}")),
            None,
            None,
            t(),
        ),
        (
            "access%5Ftoken (encoded)",
            "GET",
            path_q(&format!("access%5Ftoken={TOKEN}")),
            None,
            None,
            t(),
        ),
        (
            "access_token:exact (modifier)",
            "GET",
            path_q(&format!("access_token:exact={TOKEN}")),
            None,
            None,
            t(),
        ),
        (
            "two access_token",
            "GET",
            path_q(&format!("access_token={TOKEN}&access_token={TOKEN}")),
            None,
            None,
            t(),
        ),
        (
            "header and query token",
            "GET",
            path_q(&format!("access_token={TOKEN}")),
            None,
            h,
            t(),
        ),
        ("header token, search", "GET", path_q("a=b"), None, h, t()),
        (
            "header token, refused search",
            "GET",
            path_q("a=b"),
            None,
            h,
            Some(tok("user/Patient.rs", None)),
        ),
        (
            "POST _search, token in form body",
            "POST",
            "/fhir/Observation/_search".into(),
            Some(format!("code=x&access_token={TOKEN}")),
            h,
            t(),
        ),
        (
            "POST _search, ACCESS_TOKEN in form body",
            "POST",
            "/fhir/Observation/_search".into(),
            Some(format!("code=x&ACCESS_TOKEN={TOKEN}")),
            h,
            t(),
        ),
        (
            "POST _search, token in query, form body",
            "POST",
            format!("/fhir/Observation/_search?access_token={TOKEN}"),
            Some("code=x".into()),
            None,
            t(),
        ),
        (
            "POST _search, no credentials, access%5Ftoken in body",
            "POST",
            "/fhir/Observation/_search".into(),
            Some(format!("code=x&access%5Ftoken={TOKEN}")),
            None,
            None,
        ),
    ];
    let rows: Vec<_> = cases
        .into_iter()
        .map(|(label, method, path, body, auth, token)| {
            let (status, event, _) = decide_and_audit(
                &config,
                method,
                &path,
                auth,
                body.as_deref().map(|b| (b.as_bytes(), form)),
                token,
            );
            let text = event.as_ref().map(Value::to_string).unwrap_or_default();
            let decoded: String = event
                .as_ref()
                .and_then(|e| e["entity"].as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|x| x["query"].as_str())
                .filter_map(|q| base64::engine::general_purpose::STANDARD.decode(q).ok())
                .map(|b| String::from_utf8_lossy(&b).to_string())
                .collect();
            let leaked = text.contains(TOKEN) || decoded.contains(TOKEN);
            (
                label.to_string(),
                "no token in the event".to_string(),
                format!("{status}{}", if leaked { ", token recorded" } else { "" }),
                !leaked,
            )
        })
        .collect();
    report("tokens in AuditEvents", &rows);
}

// ------------------------------------------------------------------------------------------
// 6. Audit: size of one event (the queue is bounded in events, not bytes)
// ------------------------------------------------------------------------------------------

#[test]
fn a_client_cannot_make_a_huge_audit_event() {
    let config = compiled(policy_json(json!({})));
    let form = "application/x-www-form-urlencoded";
    let big_body = format!("code={}", "x".repeat(1024 * 1024 - 5));
    let big_query = format!("/fhir/Observation?code={}", "y".repeat(60 * 1024));
    let bearer = Some("Bearer opaque-attack");
    let bound = 32 * 1024;
    let mut rows = Vec::new();
    for (label, method, path, body, auth, token) in [
        (
            "POST _search, no credentials, 1 MiB form body",
            "POST",
            "/fhir/Observation/_search",
            Some(big_body.as_bytes()),
            None,
            None,
        ),
        (
            "GET search, no credentials, 60 KiB query",
            "GET",
            big_query.as_str(),
            None,
            None,
            None,
        ),
        (
            "POST _search, forged token (401), 1 MiB body",
            "POST",
            "/fhir/Observation/_search",
            Some(big_body.as_bytes()),
            bearer,
            None,
        ),
        (
            "GET search, forged token (401), 60 KiB query",
            "GET",
            big_query.as_str(),
            None,
            bearer,
            None,
        ),
        (
            "POST _search, token without Observation scope (403), 1 MiB body",
            "POST",
            "/fhir/Observation/_search",
            Some(big_body.as_bytes()),
            bearer,
            Some(tok("user/Patient.rs", None)),
        ),
        (
            "GET search, token without Observation scope (403), 60 KiB query",
            "GET",
            big_query.as_str(),
            None,
            bearer,
            Some(tok("user/Patient.rs", None)),
        ),
        (
            "POST _search, allowed token, 1 MiB body",
            "POST",
            "/fhir/Observation/_search",
            Some(big_body.as_bytes()),
            bearer,
            Some(tok("user/*.rs", None)),
        ),
    ] {
        let (status, event, _) =
            decide_and_audit(&config, method, path, auth, body.map(|b| (b, form)), token);
        let size = event.map(|e| e.to_string().len()).unwrap_or(0);
        rows.push((
            label.to_string(),
            format!("event <= {bound} bytes"),
            format!(
                "{status}, event {size} bytes (x default queue 10000 = {} MiB)",
                size * 10_000 / (1024 * 1024)
            ),
            size <= bound,
        ));
    }
    report("AuditEvent size", &rows);
}

// ------------------------------------------------------------------------------------------
// 7. Audit: refusals the service could not decide (503)
// ------------------------------------------------------------------------------------------

async fn audit_lines(path: &std::path::Path) -> Vec<Value> {
    for _ in 0..40 {
        if let Ok(t) = std::fs::read_to_string(path)
            && !t.is_empty()
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let t = std::fs::read_to_string(path).unwrap_or_default();
            return t
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Vec::new()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inactive_token_is_audited_and_never_with_the_token() {
    init();
    let pki = TestPki::new();
    let port = responder(&pki, http("200 OK", "", r#"{"active":false}"#)).await;
    let url = format!("https://127.0.0.1:{port}/introspect");
    let (ex, _dir, audit) = intro_executor(&pki, &url, custom_ca()).await;
    let o = bearer_check(&ex, "/fhir/Patient/p9", TOKEN).await;
    assert_eq!(status_of(&o), 401);
    let lines = audit_lines(&audit).await;
    assert_eq!(lines.len(), 1, "the 401 is recorded");
    assert_eq!(lines[0]["outcome"], "4");
    assert!(!lines[0].to_string().contains(TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_refused_for_an_outage_is_audited() {
    init();
    let pki = TestPki::new();
    // A port nobody listens on: the endpoint is down.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("https://127.0.0.1:{port}/introspect");
    let (ex, _dir, audit) = intro_executor(&pki, &url, custom_ca()).await;
    let o = bearer_check(&ex, "/fhir/Patient/p9", TOKEN).await;
    assert_eq!(status_of(&o), 503);
    let lines = audit_lines(&audit).await;
    assert_eq!(
        lines.len(),
        1,
        "a patient-data request that was refused (503) must leave an AuditEvent (outcome 4/8)"
    );
}

// ------------------------------------------------------------------------------------------
// 8. SMART discovery: which requests get the served document
// ------------------------------------------------------------------------------------------

#[test]
fn only_the_exact_discovery_request_is_answered_and_nothing_else_is_opened() {
    let config = compiled(policy_json(json!({
        "smartConfiguration": {"issuer": "https://idp.test",
            "tokenEndpoint": "https://idp.test/token"},
    })));
    let served = "served";
    let cases: Vec<(&str, &str, &str, &str, &str)> = vec![
        // (label, method, host, path, expected: served | not-allowed | public)
        (
            "exact GET",
            "GET",
            "ehr.test",
            "/fhir/.well-known/smart-configuration",
            served,
        ),
        (
            "HEAD",
            "HEAD",
            "ehr.test",
            "/fhir/.well-known/smart-configuration",
            served,
        ),
        (
            "with a query",
            "GET",
            "ehr.test",
            "/fhir/.well-known/smart-configuration?x=1",
            served,
        ),
        (
            "encoded base segment",
            "GET",
            "ehr.test",
            "/f%68ir/.well-known/smart-configuration",
            served,
        ),
        (
            "POST",
            "POST",
            "ehr.test",
            "/fhir/.well-known/smart-configuration",
            "not-allowed",
        ),
        (
            "PUT",
            "PUT",
            "ehr.test",
            "/fhir/.well-known/smart-configuration",
            "not-allowed",
        ),
        (
            "DELETE",
            "DELETE",
            "ehr.test",
            "/fhir/.well-known/smart-configuration",
            "not-allowed",
        ),
        (
            "double slash",
            "GET",
            "ehr.test",
            "/fhir//.well-known/smart-configuration",
            "not-allowed",
        ),
        (
            "trailing slash",
            "GET",
            "ehr.test",
            "/fhir/.well-known/smart-configuration/",
            "public",
        ),
        (
            "%2e spelling",
            "GET",
            "ehr.test",
            "/fhir/%2ewell-known/smart-configuration",
            "public",
        ),
        (
            "upper case",
            "GET",
            "ehr.test",
            "/fhir/.WELL-KNOWN/smart-configuration",
            "not-allowed",
        ),
        (
            "below a resource",
            "GET",
            "ehr.test",
            "/fhir/Patient/p1/.well-known/smart-configuration",
            "not-allowed",
        ),
        (
            "dot-dot after",
            "GET",
            "ehr.test",
            "/fhir/.well-known/smart-configuration/../Patient/p1",
            "not-allowed",
        ),
        (
            "dot-dot before",
            "GET",
            "ehr.test",
            "/fhir/Patient/../.well-known/smart-configuration",
            "not-allowed",
        ),
        (
            "%2e%2e before",
            "GET",
            "ehr.test",
            "/fhir/Patient/%2e%2e/.well-known/smart-configuration",
            "not-allowed",
        ),
        (
            "%2f inside",
            "GET",
            "ehr.test",
            "/fhir/Patient%2f..%2f.well-known/smart-configuration",
            "not-allowed",
        ),
        (
            "in the query only",
            "GET",
            "ehr.test",
            "/fhir/Patient/p1?x=/.well-known/smart-configuration",
            "not-allowed",
        ),
        (
            "matrix param",
            "GET",
            "ehr.test",
            "/fhir/Patient;/.well-known/smart-configuration",
            "not-allowed",
        ),
        (
            "path below the doc",
            "GET",
            "ehr.test",
            "/fhir/.well-known/smart-configuration/Patient",
            "not-allowed",
        ),
        (
            "other host",
            "GET",
            "evil.test",
            "/fhir/.well-known/smart-configuration",
            "not-allowed",
        ),
        (
            "root, not base",
            "GET",
            "ehr.test",
            "/.well-known/smart-configuration",
            "not-allowed",
        ),
        (
            "base prefix fhirx",
            "GET",
            "ehr.test",
            "/fhirx/.well-known/smart-configuration",
            "not-allowed",
        ),
    ];
    let rows: Vec<_> = cases
        .into_iter()
        .map(|(label, method, host, path, want)| {
            let req = Request {
                method,
                host,
                path,
                authorization: None,
                if_none_exist: None,
                headers: &[],
                body: None,
                policy_ref: None,
            };
            let check = Check::new(&config, &req);
            let got = match check.next() {
                Next::Need(Need::SmartConfiguration { .. }) => "served".to_string(),
                Next::Done(Outcome::Decided(Decision::Allow(a))) => {
                    format!("allow {:?}", a.reason)
                }
                Next::Done(Outcome::Decided(Decision::Deny(d))) => format!("deny {}", d.status),
                other => format!("{other:?}"),
            };
            let ok = match want {
                "served" => got == "served",
                "public" => got == "allow PublicPath" || got == "served" || got.starts_with("deny"),
                _ => got.starts_with("deny"),
            };
            (
                format!("{label}: {method} {host}{path}"),
                want.to_string(),
                got,
                ok,
            )
        })
        .collect();
    report("discovery request matching", &rows);
}

// ------------------------------------------------------------------------------------------
// 9. SMART discovery: the issuer's OpenID metadata fetch
// ------------------------------------------------------------------------------------------

async fn openid_fetch(
    pki: &TestPki,
    response: Vec<u8>,
    issuer_path: &str,
    tls: TlsConfig,
) -> String {
    let port = responder(pki, response).await;
    let dir = ConfigDir::new();
    dir.publish(&[(CA_FILE, pki.ca_pem.as_str())]);
    let registry = DiscoveryRegistry::new(
        DiscoveryOptions::default(),
        Arc::new(fhirguard_authz::observe::Ignore),
    );
    let issuer = format!("https://127.0.0.1:{port}{issuer_path}");
    let d = OpenIdDiscovery {
        refresh_interval_seconds: 3600,
        tls,
    };
    let source = registry.source("atk", &issuer, &d, dir.path()).unwrap();
    match tokio::time::timeout(Duration::from_secs(5), source.metadata()).await {
        Ok(Ok(doc)) => format!("accepted (issuer {})", doc["issuer"]),
        Ok(Err(e)) => format!("refused: {}", e.chars().take(80).collect::<String>()),
        Err(_) => "timeout".into(),
    }
}

/// Serves a document naming `doc_issuer` (`SELF` is replaced by the issuer's own URL) at the
/// issuer and returns what the source makes of it.
async fn openid_case(pki: &TestPki, doc_issuer: &str, tls: TlsConfig, pad: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let own = format!("https://127.0.0.1:{port}");
    let named = doc_issuer.replace("SELF", &own);
    let mut doc = json!({"token_endpoint": "https://idp.test/token"});
    if !named.is_empty() {
        doc["issuer"] = json!(named);
    }
    if pad > 0 {
        doc["pad"] = json!("x".repeat(pad));
    }
    openid_fetch_on(pki, port, http("200 OK", "", &doc.to_string()), &own, tls).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_metadata_is_fetched_safely() {
    init();
    let pki = TestPki::new();
    let mut rows = Vec::new();
    for (label, doc_issuer, tls, want_accept) in [
        ("issuer equal", "SELF", custom_ca(), true),
        ("issuer differs", "https://evil.test", custom_ca(), false),
        (
            "issuer with another port",
            "https://127.0.0.1:1",
            custom_ca(),
            false,
        ),
        ("issuer missing", "", custom_ca(), false),
        (
            "cert not in public roots (DefaultBundle)",
            "SELF",
            TlsConfig::default(),
            false,
        ),
    ] {
        let got = openid_case(&pki, doc_issuer, tls, 0).await;
        let ok = got.starts_with("accepted") == want_accept;
        rows.push((
            label.to_string(),
            if want_accept { "accepted" } else { "refused" }.to_string(),
            got,
            ok,
        ));
    }
    let redirect = http(
        "302 Found",
        "location: https://idp.test/.well-known/openid-configuration\r\n",
        "",
    );
    let got = openid_fetch(&pki, redirect, "", custom_ca()).await;
    rows.push((
        "302 redirect".into(),
        "refused".into(),
        got.clone(),
        got.starts_with("refused"),
    ));
    let got = openid_case(&pki, "SELF", custom_ca(), 300 * 1024).await;
    rows.push((
        "300 KiB document".into(),
        "refused".into(),
        got.clone(),
        got.starts_with("refused"),
    ));
    report("OpenID metadata fetch", &rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_metadata_issuer_must_match_exactly() {
    init();
    let pki = TestPki::new();
    let got = openid_case(&pki, "SELF/", custom_ca(), 0).await;
    let rows = vec![(
        "issuer differs by a trailing slash".to_string(),
        "refused".to_string(),
        got.clone(),
        got.starts_with("refused"),
    )];
    report("OpenID issuer exactness", &rows);
}

/// Like `openid_fetch`, on a port chosen beforehand.
async fn openid_fetch_on(
    pki: &TestPki,
    port: u16,
    response: Vec<u8>,
    issuer: &str,
    tls: TlsConfig,
) -> String {
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let acceptor = pki.acceptor();
    let response = Arc::new(response);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, response) = (acceptor.clone(), response.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 16 * 1024];
                let _ = tls.read(&mut buf).await;
                let _ = tls.write_all(&response).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    let dir = ConfigDir::new();
    dir.publish(&[(CA_FILE, pki.ca_pem.as_str())]);
    let registry = DiscoveryRegistry::new(
        DiscoveryOptions::default(),
        Arc::new(fhirguard_authz::observe::Ignore),
    );
    let d = OpenIdDiscovery {
        refresh_interval_seconds: 3600,
        tls,
    };
    let source = registry.source("atk", issuer, &d, dir.path()).unwrap();
    match tokio::time::timeout(Duration::from_secs(5), source.metadata()).await {
        Ok(Ok(doc)) => format!("accepted (issuer {})", doc["issuer"]),
        Ok(Err(e)) => format!("refused: {}", e.chars().take(80).collect::<String>()),
        Err(_) => "timeout".into(),
    }
}
