//! An audit destination that stalls neither blocks nor alters decisions: the queue is bounded,
//! the overflow is dropped and counted, and the decisions are those of the same policy
//! without audit. Patient ids reach the AuditEvents only, never the ordinary log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use fhirguard_authz::config::*;
use fhirguard_authz::core::driver::Outcome;
use fhirguard_authz::core::policy::{Decision, Request};
use fhirguard_authz::runtime::executor::{Executor, Options};
use fhirguard_authz::runtime::reload;
use fhirguard_authz::server::metrics::Metrics;

/// A TCP server that accepts connections and never answers.
async fn stalled_server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    addr
}

fn config(jwks: &str, audit_to: Option<std::net::SocketAddr>) -> CompiledConfig {
    let mut p = smart_policy("ehr", "smart.test", jwks, true);
    let mut connections = vec![];
    if let Some(addr) = audit_to {
        p.audit = Some(AuditConfig {
            record: AuditRecord::All,
            stdout: false,
            file: None,
            connection: Some("clinical/audit".into()),
            queue_size: 5,
            batch_size: 1,
        });
        connections.push(ConnectionConfig {
            namespace: "clinical".into(),
            name: "audit".into(),
            url: format!("http://127.0.0.1:{}/fhir", addr.port()),
            auth: ConnectionAuth::default(),
            tls: TlsConfig::default(),
        });
    }
    CompiledConfig {
        version: FORMAT_VERSION,
        generation: 1,
        policies: vec![p],
        connections,
    }
}

async fn executor(config: &CompiledConfig) -> (Arc<Executor>, Arc<Metrics>, ConfigDir) {
    let metrics = Arc::new(Metrics::new());
    let ex = Arc::new(Executor::new(metrics.clone(), Options::default()));
    let dir = ConfigDir::new();
    dir.publish_config(config, None);
    reload::reload_now(&ex, dir.path()).unwrap();
    (ex, metrics, dir)
}

fn summary(o: &Outcome) -> (String, u16) {
    match o {
        Outcome::Decided(Decision::Allow(a)) => {
            (format!("allow {:?} {:?}", a.reason, a.patient), 200)
        }
        Outcome::Decided(Decision::Deny(d)) => (format!("deny {:?}", d.reason), d.status),
        Outcome::Decided(Decision::Respond(r)) => (format!("respond {:?}", r.reason), r.status),
        Outcome::Unavailable(w) => (format!("unavailable {w}"), 503),
    }
}

/// The log, captured.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_stalled_audit_sink_neither_blocks_nor_alters_decisions() {
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let _ = rustls::crypto::ring::default_provider().install_default();

    let key = SigningKey::new("k1");
    let jwks = jwks_doc(&[&key]);
    let stalled = stalled_server().await;
    let (audited, metrics, _d1) = executor(&config(&jwks, Some(stalled))).await;
    let (plain, _, _d2) = executor(&config(&jwks, None)).await;

    let patient = "patient-7f3e9c";
    let mut c = claims("app", "patient/Observation.rs");
    c["patient"] = patient.into();
    let bearer = format!("Bearer {}", key.sign(&c));
    let paths = [
        format!("/fhir/r4/Observation?subject=Patient/{patient}"),
        format!("/fhir/r4/Patient/{patient}"),
        "/fhir/r4/Observation?code=x".to_string(),
        format!("/fhir/r4/Patient/{patient}/Observation"),
    ];
    let started = Instant::now();
    let n = 60;
    for i in 0..n {
        let path = &paths[i % paths.len()];
        let auth = (i % 5 != 0).then_some(bearer.as_str());
        let req = |auth| Request {
            method: "GET",
            host: "smart.test",
            path,
            authorization: auth,
            if_none_exist: None,
            headers: &[],
            body: None,
            policy_ref: None,
        };
        let a = audited.check(&req(auth)).await;
        let b = plain.check(&req(auth)).await;
        assert_eq!(summary(&a.outcome), summary(&b.outcome), "{path}");
    }
    // Each decision is CPU work only; a sink that holds every write for the HTTP timeout
    // (10 s) would make this take minutes if a decision ever waited for it.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "decisions waited for the audit sink: {:?}",
        started.elapsed()
    );
    let text = metrics.encode();
    let dropped = metric(
        &text,
        "fhirguard_audit_events_total{sink=\"connection:clinical/audit\",result=\"dropped_queue_full\"}",
    )
    .unwrap_or(0.0);
    let queued = metric(
        &text,
        "fhirguard_audit_events_total{sink=\"connection:clinical/audit\",result=\"queued\"}",
    )
    .unwrap_or(0.0);
    assert!(dropped >= (n - 5 - 2) as f64, "dropped {dropped}\n{text}");
    assert_eq!(dropped + queued, n as f64, "{text}");
    let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("audit queue is full"), "{log}");
    assert!(
        log.contains("decision"),
        "the decision log is captured: {log}"
    );
    assert!(
        !log.contains(patient),
        "a patient id reached the ordinary log:\n{log}"
    );
}

/// Every line of an NDJSON audit file, once it holds at least `n`.
async fn lines(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let events: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if events.len() >= n || Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn decision_id(e: &serde_json::Value) -> &str {
    e["entity"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["type"]["code"] == "XrequestId")
        .and_then(|x| x["what"]["identifier"]["value"].as_str())
        .unwrap()
}

/// A check that cannot be decided (503) is a refusal and is recorded (outcome 8, serious
/// failure); an allowed batch is recorded with one event per entry under its decision id.
#[tokio::test(flavor = "current_thread")]
async fn undecided_checks_and_bundle_entries_are_recorded() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let key = SigningKey::new("k1");
    let jwks = jwks_doc(&[&key]);
    let out = ConfigDir::new();
    let file = out.path().join("audit.ndjson");
    let audit = AuditConfig {
        record: AuditRecord::PatientDataAndRefusals,
        stdout: false,
        file: Some(file.display().to_string()),
        connection: None,
        queue_size: 100,
        batch_size: 10,
    };
    let mut ok = smart_policy("ehr", "smart.test", &jwks, true);
    ok.audit = Some(audit.clone());
    // Keys from an endpoint nobody listens on: no verification is possible.
    let mut dead = smart_policy("dead", "dead.test", &jwks, true);
    dead.audit = Some(audit);
    if let Some(jwt) = dead.authentication.jwt.as_mut() {
        jwt.providers[0].jwks.document = None;
        jwt.providers[0].jwks.uri = Some("https://127.0.0.1:9/jwks".into());
    }
    let config = CompiledConfig {
        version: FORMAT_VERSION,
        generation: 1,
        policies: vec![ok, dead],
        connections: vec![],
    };
    assert!(config.validate().is_empty(), "{:?}", config.validate());
    let (ex, _metrics, _dir) = executor(&config).await;

    let mut c = claims("app", "patient/*.rs");
    c["patient"] = "p1".into();
    let bearer = format!("Bearer {}", key.sign(&c));
    let body = br#"{"resourceType":"Bundle","type":"batch","entry":[
        {"request":{"method":"GET","url":"Observation?subject=Patient/p1"}},
        {"request":{"method":"GET","url":"Patient/p1"}}]}"#;
    let headers = [("content-type", "application/fhir+json")];
    let bundle_post = Request {
        method: "POST",
        host: "smart.test",
        path: "/fhir/r4",
        authorization: Some(&bearer),
        if_none_exist: None,
        headers: &headers,
        body: Some(fhirguard_authz::core::fhir::Body {
            bytes: body,
            content_type: Some("application/fhir+json"),
        }),
        policy_ref: None,
    };
    let batch = ex.check(&bundle_post).await;
    assert_eq!(summary(&batch.outcome).1, 200, "{:?}", batch.outcome);
    let undecided = ex
        .check(&Request {
            method: "GET",
            host: "dead.test",
            path: "/fhir/r4/Patient/p1",
            headers: &[],
            body: None,
            ..bundle_post
        })
        .await;
    assert_eq!(
        summary(&undecided.outcome).1,
        503,
        "{:?}",
        undecided.outcome
    );

    let events = lines(&file, 4).await;
    assert_eq!(events.len(), 4, "{events:#?}");
    let of = |subtype: &str| {
        events
            .iter()
            .filter(|e| e["subtype"][0]["code"] == subtype && e["outcome"] == "0")
            .collect::<Vec<_>>()
    };
    let bundle = of("batch");
    assert_eq!(bundle.len(), 1);
    let id = decision_id(bundle[0]);
    assert_eq!(id, batch.decision_id.as_str());
    for subtype in ["search", "read"] {
        let e = of(subtype);
        assert_eq!(e.len(), 1, "{subtype}: {events:#?}");
        assert_eq!(
            decision_id(e[0]),
            id,
            "entries share the bundle's decision id"
        );
        assert!(e[0].to_string().contains("\"Patient/p1\""), "{:#}", e[0]);
    }
    let failed: Vec<_> = events.iter().filter(|e| e["outcome"] == "8").collect();
    assert_eq!(failed.len(), 1, "{events:#?}");
    assert_eq!(decision_id(failed[0]), undecided.decision_id.as_str());
    assert_eq!(failed[0]["source"]["site"], "clinical/dead");
    assert!(
        failed[0]["outcomeDesc"]
            .as_str()
            .unwrap()
            .starts_with("HTTP 503: no decision could be made"),
        "{:#}",
        failed[0]
    );
    assert!(!failed[0].to_string().contains(&bearer[7..]), "no token");
}

/// The queue is bounded in bytes as well as in events: with a destination that never
/// answers, a flood of large events stops being queued at the byte bound (and is counted as
/// dropped), whatever `queueSize` allows.
#[tokio::test(flavor = "current_thread")]
async fn the_queue_is_bounded_in_bytes() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let key = SigningKey::new("k1");
    let jwks = jwks_doc(&[&key]);
    let stalled = stalled_server().await;
    let mut config = config(&jwks, Some(stalled));
    if let Some(a) = config.policies[0].audit.as_mut() {
        a.queue_size = 100_000;
        a.batch_size = 1;
    }
    let metrics = Arc::new(Metrics::new());
    let options = Options {
        audit: fhirguard_authz::runtime::audit::AuditOptions {
            max_queue_bytes: 200_000,
            ..Default::default()
        },
        ..Options::default()
    };
    let ex = Arc::new(Executor::new(metrics.clone(), options));
    let dir = ConfigDir::new();
    dir.publish_config(&config, None);
    reload::reload_now(&ex, dir.path()).unwrap();

    let c = claims("app", "user/Observation.rs");
    let bearer = format!("Bearer {}", key.sign(&c));
    // Each event carries the (cut) query: about 6 KB.
    let path = format!("/fhir/r4/Observation?code={}", "x".repeat(20_000));
    let n = 200;
    for _ in 0..n {
        let o = ex
            .check(&Request {
                method: "GET",
                host: "smart.test",
                path: &path,
                authorization: Some(&bearer),
                if_none_exist: None,
                headers: &[],
                body: None,
                policy_ref: None,
            })
            .await;
        assert_eq!(summary(&o.outcome).1, 200, "{:?}", o.outcome);
    }
    let text = metrics.encode();
    let series = |result: &str| {
        metric(
            &text,
            &format!(
                "fhirguard_audit_events_total{{sink=\"connection:clinical/audit\",result=\"{result}\"}}"
            ),
        )
        .unwrap_or(0.0)
    };
    let (queued, dropped) = (series("queued"), series("dropped_queue_full"));
    assert_eq!(queued + dropped, n as f64, "{text}");
    // 200 000 bytes hold about 30 such events (one more may be with the writer).
    assert!(
        queued < 50.0,
        "queued {queued}: the byte bound did not hold"
    );
    assert!(dropped > 100.0, "dropped {dropped}");
}
