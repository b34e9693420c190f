//! BALP AuditEvents and the SMART discovery document end to end: client → real Envoy →
//! fhirguard-authz → a FHIR stub, with the AuditEvent Bundles POSTed through a FhirConnection
//! to a second FHIR stub, and OpenID discovery fetched from a local HTTPS issuer (refreshed
//! every 10 s, the shortest interval allowed, so this test takes about half a minute).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::real_envoy::*;
use common::*;
use fhirguard_authz::config::*;
use fhirguard_authz::core::discovery::smart_2_2_problems;
use serde_json::{Value, json};

fn audit_connection(addr: std::net::SocketAddr) -> ConnectionConfig {
    ConnectionConfig {
        namespace: "clinical".into(),
        name: "audit-repo".into(),
        url: format!("http://127.0.0.1:{}/fhir/audit", addr.port()),
        auth: ConnectionAuth {
            basic: Some(BasicCredentials {
                username: "auditor".into(),
                password: "audit-pw".into(),
            }),
            oauth: None,
        },
        tls: TlsConfig::default(),
    }
}

fn policy(jwks: &str, issuer_url: &str) -> PolicyConfig {
    let mut p = smart_policy("ehr", "smart.test", jwks, true);
    p.audit = Some(AuditConfig {
        record: AuditRecord::PatientDataAndRefusals,
        stdout: false,
        file: None,
        connection: Some("clinical/audit-repo".into()),
        queue_size: 1000,
        batch_size: 10,
    });
    p.smart_configuration = Some(SmartConfigurationConfig {
        issuer: Some(issuer_url.into()),
        openid_discovery: Some(OpenIdDiscovery {
            refresh_interval_seconds: 10,
            tls: TlsConfig {
                mode: TlsMode::CustomBundle,
                ca_file: Some("idp-ca.pem".into()),
            },
        }),
        capabilities: vec!["launch-standalone".into(), "client-public".into()],
        scopes: vec!["launch/patient".into()],
        ..Default::default()
    });
    p
}

fn metadata(issuer: &str, token_endpoint: &str) -> String {
    json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": token_endpoint,
        "jwks_uri": format!("{issuer}/jwks"),
        "grant_types_supported": ["authorization_code", "client_credentials", "implicit"],
        "code_challenge_methods_supported": ["S256", "plain"],
        "scopes_supported": ["openid", "fhirUser", "patient/*.read"],
    })
    .to_string()
}

fn events(stub: &FhirStub) -> Vec<Value> {
    let seen = stub.seen.lock().unwrap().clone();
    seen.iter()
        .filter(|r| r["method"] == "POST" && r["path"] == "/fhir/audit")
        .filter_map(|r| r.get("body").cloned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_bundles_and_discovery_through_real_envoy() {
    let Some(bin) = envoy_bin() else { return };
    init();
    let pki = TestPki::new();
    let key = SigningKey::new("k1");
    let jwks = jwks_doc(&[&key]);
    // The issuer serves its OpenID metadata (the stub answers any path with the document).
    let idp = JwksServer::start(&pki, String::new()).await;
    let issuer = format!("https://127.0.0.1:{}", idp.addr.port());
    *idp.doc.lock().unwrap() = metadata(&issuer, &format!("{issuer}/token"));

    let upstream = FhirStub::default();
    let upstream_addr = start_fhir_stub(upstream.clone()).await;
    let audit_repo = FhirStub::default();
    let audit_addr = start_fhir_stub(audit_repo.clone()).await;
    let config = CompiledConfig {
        version: FORMAT_VERSION,
        generation: 1,
        policies: vec![policy(&jwks, &issuer)],
        connections: vec![audit_connection(audit_addr)],
    };
    assert!(config.validate().is_empty(), "{:?}", config.validate());
    let dir = ConfigDir::new();
    dir.publish_config(&config, Some(&pki.ca_pem));
    let svc = start_service(dir.path(), Duration::from_secs(60)).await;
    assert!(svc.service.is_ready());
    let envoy = start_envoy(&bin, svc.grpc, upstream_addr).await;
    let http = reqwest::Client::new();
    let url = |p: &str| format!("http://127.0.0.1:{}{p}", envoy.port);

    // --- Discovery: answered by fhirguard through Envoy, never reaching the server.
    let resp = http
        .get(url("/fhir/r4/.well-known/smart-configuration"))
        .header("host", "smart.test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers().get("x-fhirguard-decision-id").is_some());
    assert_eq!(resp.headers()["content-type"], "application/json");
    let doc: Value = resp.json().await.unwrap();
    assert!(
        smart_2_2_problems(&doc).is_empty(),
        "{doc:#}: {:?}",
        smart_2_2_problems(&doc)
    );
    assert_eq!(doc["issuer"], issuer.as_str());
    assert_eq!(doc["token_endpoint"], format!("{issuer}/token"));
    assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(
        doc["grant_types_supported"],
        json!(["authorization_code", "client_credentials"])
    );
    let caps: Vec<&str> = doc["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for c in [
        "launch-standalone",
        "client-public",
        "permission-v2",
        "permission-patient",
    ] {
        assert!(caps.contains(&c), "{c} missing from {caps:?}");
    }
    assert!(
        !upstream
            .seen
            .lock()
            .unwrap()
            .iter()
            .any(|r| r["path"].as_str().unwrap_or("").contains("well-known")),
        "the discovery request must not reach the server"
    );

    // Refreshed: a changed token endpoint shows within a few refresh intervals.
    *idp.doc.lock().unwrap() = metadata(&issuer, &format!("{issuer}/token2"));
    eventually(
        "the refreshed discovery document",
        Duration::from_secs(20),
        async || {
            let doc: Value = http
                .get(url("/fhir/r4/.well-known/smart-configuration"))
                .header("host", "smart.test")
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            doc["token_endpoint"] == format!("{issuer}/token2")
        },
    )
    .await;
    // Outage: the last good document stays in force.
    idp.down.store(true, Ordering::SeqCst);
    let hits = idp.hits.load(Ordering::SeqCst);
    eventually("a failed refresh", Duration::from_secs(20), async || {
        idp.hits.load(Ordering::SeqCst) > hits
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let resp = http
        .get(url("/fhir/r4/.well-known/smart-configuration"))
        .header("host", "smart.test")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let doc: Value = resp.json().await.unwrap();
    assert_eq!(doc["token_endpoint"], format!("{issuer}/token2"));
    assert!(
        svc.metrics()
            .await
            .contains("fhirguard_openid_discovery_stale{source=\"clinical/ehr\"} 1")
    );

    // --- Audit: an allowed patient read, a refusal, a search; each tied to its decision id.
    let mut c = claims("dr-who", "patient/Observation.rs");
    c["patient"] = "p1".into();
    c["client_id"] = "chart-app".into();
    let token = format!("Bearer {}", key.sign(&c));
    let read = http
        .get(url("/fhir/r4/Observation?subject=Patient/p1"))
        .header("host", "smart.test")
        .header("authorization", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status().as_u16(), 200);
    let read_id = read.headers()["x-fhirguard-decision-id"]
        .to_str()
        .unwrap()
        .to_string();
    let denied = http
        .delete(url("/fhir/r4/Patient/p2"))
        .header("host", "smart.test")
        .header("authorization", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status().as_u16(), 403);
    let denied_id = denied.headers()["x-fhirguard-decision-id"]
        .to_str()
        .unwrap()
        .to_string();
    let anonymous = http
        .get(url("/fhir/r4/Patient/p3"))
        .header("host", "smart.test")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);

    eventually(
        "three AuditEvents at the audit repository",
        Duration::from_secs(10),
        async || {
            events(&audit_repo)
                .iter()
                .map(|b| b["entry"].as_array().map_or(0, Vec::len))
                .sum::<usize>()
                >= 3
        },
    )
    .await;
    let seen = audit_repo.seen.lock().unwrap().clone();
    let post = seen.iter().find(|r| r["method"] == "POST").unwrap();
    assert!(
        post["headers"]["authorization"]
            .as_str()
            .unwrap()
            .starts_with("Basic "),
        "the audit connection's credential is used"
    );
    assert_eq!(post["headers"]["content-type"], "application/fhir+json");
    let all: Vec<Value> = events(&audit_repo)
        .iter()
        .flat_map(|b| {
            assert_eq!(b["resourceType"], "Bundle");
            assert_eq!(b["type"], "batch");
            b["entry"].as_array().unwrap().clone()
        })
        .collect();
    let by_id = |id: &str| {
        all.iter()
            .map(|e| &e["resource"])
            .find(|r| {
                r["entity"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x["what"]["identifier"]["value"] == id)
            })
            .cloned()
            .unwrap_or_else(|| panic!("no AuditEvent for decision {id}"))
    };
    let search = by_id(&read_id);
    assert_eq!(search["subtype"][0]["code"], "search");
    assert_eq!(search["outcome"], "0");
    assert_eq!(search["action"], "E");
    let text = search.to_string();
    assert!(text.contains("Patient/p1") && text.contains("chart-app") && text.contains("dr-who"));
    assert!(!text.contains(&token[7..]), "no token in AuditEvents");
    let refusal = by_id(&denied_id);
    assert_eq!(refusal["outcome"], "4");
    assert_eq!(refusal["subtype"][0]["code"], "delete");
    assert!(all.iter().any(|e| {
        e["resource"]["outcomeDesc"]
            .as_str()
            .is_some_and(|d| d.starts_with("HTTP 401"))
    }));
    let m = svc.metrics().await;
    assert!(
        metric(&m, "fhirguard_audit_events_total{sink=\"connection:clinical/audit-repo\",result=\"written\"}").unwrap_or(0.0) >= 3.0,
        "{m}"
    );
}
