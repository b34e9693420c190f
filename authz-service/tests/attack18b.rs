//! Second outside review of issue 18: probes against the fixes for the first review's holes
//! (patient attribution in AuditEvents, event and queue size, key-bound tokens). Each table
//! prints every variant tried (`--nocapture`); a row showing a hole fails its assertion, and
//! the tests that show holes are `#[ignore = "hole: ..."]` so the branch stays green.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::type_complexity
)]

mod common;

use std::sync::Arc;

use common::now;
use fhirguard_authz::config::*;
use fhirguard_authz::core::policy::TokenIdentity;
use fhirguard_authz::verify::cache::ByteCache;
use fhirguard_authz::verify::introspection::Introspector;
use serde_json::Value;

use common::probe::{AUD, events};

fn tok(scopes: &str, patient: Option<&str>) -> TokenIdentity {
    common::verified_token(scopes, patient)
}

/// The patients the events name (entity role 1), in order, without repeats.
fn named(events: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in events {
        for x in e["entity"].as_array().unwrap() {
            if x["role"]["code"] == "1" {
                let r = x["what"]["reference"].as_str().unwrap();
                let id = r.trim_start_matches("Patient/").to_string();
                if !out.contains(&id) {
                    out.push(id);
                }
            }
        }
    }
    out
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

fn user() -> Option<TokenIdentity> {
    Some(tok("user/*.cruds", None))
}

fn patient_p1(scopes: &str) -> Option<TokenIdentity> {
    Some(tok(scopes, Some("p1")))
}

/// One attribution row: the request, the token, and the patients a correct event names.
/// `want: None` means "any outcome naming no patient the request did not reach"; the rows
/// list the exact set when the request names its patients by id.
fn attribution_rows(
    rows: &[(
        &str,
        &str,
        &str,
        Option<(&str, &str)>,
        Option<TokenIdentity>,
        &[&str],
    )],
) -> Vec<(String, String, String, bool)> {
    rows.iter()
        .map(|(label, method, path, body, token, want)| {
            let (status, ev) = events(
                method,
                path,
                body.map(|(b, ct)| (b.as_bytes(), ct)),
                token.clone(),
            );
            let got = named(&ev);
            let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
            let ok = status == "400" || status == "lookup" || got == want;
            (
                format!("{label}: {method} {path}"),
                format!("{want:?}"),
                format!("{status} {got:?}"),
                ok,
            )
        })
        .collect()
}

// ------------------------------------------------------------------------------------------
// 1. Patient attribution
// ------------------------------------------------------------------------------------------

/// Spellings and modifiers whose value is not "the patient whose data is read". A correct
/// event names no patient (or, for a narrowed search, only the pin); a wrong one names a
/// patient the request did not reach (`:not` names exactly the one it excluded).
#[test]
fn modifiers_never_make_an_event_name_the_wrong_patient() {
    let rows = attribution_rows(&[
        (
            "not",
            "GET",
            "/fhir/Observation?patient:not=p1",
            None,
            user(),
            &[],
        ),
        (
            "not, reference",
            "GET",
            "/fhir/Observation?subject:not=Patient/p1",
            None,
            user(),
            &[],
        ),
        (
            "_id:not",
            "GET",
            "/fhir/Patient?_id:not=p1",
            None,
            user(),
            &[],
        ),
        (
            "missing",
            "GET",
            "/fhir/Observation?patient:missing=true",
            None,
            user(),
            &[],
        ),
        (
            "_id:missing",
            "GET",
            "/fhir/Patient?_id:missing=false",
            None,
            user(),
            &[],
        ),
        (
            "identifier",
            "GET",
            "/fhir/Observation?patient:identifier=p2",
            None,
            user(),
            &[],
        ),
        (
            "text",
            "GET",
            "/fhir/Observation?patient:text=smith",
            None,
            user(),
            &[],
        ),
        (
            "contains",
            "GET",
            "/fhir/Observation?patient:contains=p",
            None,
            user(),
            &[],
        ),
        (
            "above",
            "GET",
            "/fhir/Observation?patient:above=p2",
            None,
            user(),
            &[],
        ),
        (
            "type modifier other than Patient",
            "GET",
            "/fhir/Observation?patient:Group=g1",
            None,
            user(),
            &[],
        ),
        // A patient-context token, refused: the event must not name p2, whom the request
        // excluded, nor a patient "true".
        (
            "patient ctx, not",
            "GET",
            "/fhir/Observation?patient:not=p2",
            None,
            patient_p1("patient/Observation.rs"),
            &[],
        ),
        (
            "patient ctx, missing",
            "GET",
            "/fhir/Observation?patient:missing=true",
            None,
            patient_p1("patient/Observation.rs"),
            &[],
        ),
        // Conditional criteria with a modifier: the delete hits every Observation except p1's.
        (
            "conditional delete, not",
            "DELETE",
            "/fhir/Observation?patient:not=p1",
            None,
            user(),
            &[],
        ),
        // POSTed search with a modifier.
        (
            "POST _search, not",
            "POST",
            "/fhir/Observation/_search",
            Some(("patient:not=p1", "application/x-www-form-urlencoded")),
            user(),
            &[],
        ),
    ]);
    report("modifiers and wrong patients", &rows);
}

/// Spellings that reach one named patient's data while the event names nobody.
#[test]
fn every_spelling_of_a_patient_reference_is_attributed() {
    let rows = attribution_rows(&[
        (
            "absolute URL at our base",
            "GET",
            "/fhir/Observation?subject=https://ehr.test/fhir/Patient/p2",
            None,
            user(),
            &["p2"],
        ),
        (
            "absolute URL, patient=",
            "GET",
            "/fhir/Observation?patient=https://ehr.test/fhir/Patient/p2",
            None,
            user(),
            &["p2"],
        ),
        (
            "absolute URL, percent-encoded",
            "GET",
            "/fhir/Observation?patient=https%3A%2F%2Fehr.test%2Ffhir%2FPatient%2Fp2",
            None,
            user(),
            &["p2"],
        ),
        (
            "absolute versioned",
            "GET",
            "/fhir/Observation?subject=https://ehr.test/fhir/Patient/p2/_history/1",
            None,
            user(),
            &["p2"],
        ),
        (
            "chain on _id",
            "GET",
            "/fhir/Observation?patient._id=p2",
            None,
            user(),
            &["p2"],
        ),
        (
            "typed chain on _id",
            "GET",
            "/fhir/Observation?subject:Patient._id=p2",
            None,
            user(),
            &["p2"],
        ),
        (
            "batch entry, absolute",
            "POST",
            "/fhir",
            Some((
                r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Observation?subject=https://ehr.test/fhir/Patient/p2"}}]}"#,
                "application/fhir+json",
            )),
            user(),
            &["p2"],
        ),
    ]);
    report("spellings naming nobody", &rows);
}

/// Spellings the fix covers: kept as a passing table.
#[test]
fn attribution_controls() {
    let rows = attribution_rows(&[
        (
            "versioned ref",
            "GET",
            "/fhir/Observation?subject=Patient/p2/_history/1",
            None,
            user(),
            &["p2"],
        ),
        (
            "vread",
            "GET",
            "/fhir/Patient/p2/_history/1",
            None,
            user(),
            &["p2"],
        ),
        (
            "percent-encoded ref",
            "GET",
            "/fhir/Observation?patient=Patient%2Fp2",
            None,
            user(),
            &["p2"],
        ),
        (
            "compartment + other subject",
            "GET",
            "/fhir/Patient/p1/Observation?subject=Patient/p2",
            None,
            user(),
            &["p1", "p2"],
        ),
        (
            "link",
            "GET",
            "/fhir/Patient?link=Patient/p2",
            None,
            user(),
            &["p2"],
        ),
        (
            "_include",
            "GET",
            "/fhir/Observation?patient=p2&_include=Observation:patient",
            None,
            user(),
            &["p2"],
        ),
        (
            "$everything",
            "GET",
            "/fhir/Patient/p2/$everything",
            None,
            user(),
            &["p2"],
        ),
        (
            "POST _search",
            "POST",
            "/fhir/Observation/_search",
            Some(("patient=p2", "application/x-www-form-urlencoded")),
            user(),
            &["p2"],
        ),
        (
            "conditional update criteria",
            "PUT",
            "/fhir/Observation?patient=p2",
            Some((
                r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p2"}}"#,
                "application/fhir+json",
            )),
            user(),
            &["p2"],
        ),
        (
            "forged token, Patient/p2",
            "GET",
            "/fhir/Patient/p2",
            None,
            None,
            &["p2"],
        ),
        (
            "user grant with ctx",
            "GET",
            "/fhir/Observation?code=x",
            None,
            Some(tok("user/*.cruds", Some("p1"))),
            &[],
        ),
        (
            "patient ctx pinned",
            "GET",
            "/fhir/Observation?patient=p1&code=x",
            None,
            patient_p1("patient/Observation.rs"),
            &["p1"],
        ),
        (
            "patient ctx, Patient/p2 refused",
            "GET",
            "/fhir/Patient/p2",
            None,
            patient_p1("patient/Patient.rs"),
            &["p2"],
        ),
        (
            "case variant name",
            "GET",
            "/fhir/Observation?PATIENT=p2",
            None,
            user(),
            &[],
        ),
    ]);
    report("attribution controls", &rows);
}

// ------------------------------------------------------------------------------------------
// 2. Events per request
// ------------------------------------------------------------------------------------------

fn total(ev: &[Value]) -> usize {
    ev.iter().map(|e| e.to_string().len()).sum()
}

/// One request, however large, must cost a bounded number of audit bytes. The byte-bounded
/// queue (64 MiB) only decides what is dropped: a request that alone fills it drops every
/// other client's events (audit blinding) and costs its CPU on the decision path.
#[test]
fn one_request_costs_bounded_audit_bytes() {
    let mut rows = Vec::new();
    let ids: Vec<String> = (0..32).map(|i| format!("p{i}")).collect();
    let pad = "x".repeat(4000);
    // Unauthenticated (forged token, 401): 32 patients and a query at the 4 KiB cut.
    let path = format!("/fhir/Observation?patient={}&code={pad}", ids.join(","));
    let (status, ev) = events("GET", &path, None, None);
    let bytes = total(&ev);
    rows.push((
        format!(
            "forged token, GET 32 patients + 4 KB query ({} B request)",
            path.len()
        ),
        "≤ 64 KiB of events".into(),
        format!("{status}: {} events, {bytes} B", ev.len()),
        bytes <= 64 * 1024,
    ));
    // The same, POSTed as a search (body not counted by Envoy's URL limits).
    let body = format!("patient={}&code={pad}", ids.join(","));
    let (status, ev) = events(
        "POST",
        "/fhir/Observation/_search",
        Some((body.as_bytes(), "application/x-www-form-urlencoded")),
        None,
    );
    let bytes = total(&ev);
    rows.push((
        "forged token, POST _search 32 patients + 4 KB".into(),
        "≤ 64 KiB of events".into(),
        format!("{status}: {} events, {bytes} B", ev.len()),
        bytes <= 64 * 1024,
    ));
    // An allowed batch: every entry names 32 patients (short ids keep entries small).
    let short: Vec<String> = (0..32).map(|i| format!("{i:x}")).collect();
    let entry = format!(
        r#"{{"request":{{"method":"GET","url":"Observation?patient={}"}}}}"#,
        short.join(",")
    );
    let n = 1000;
    let bundle = format!(
        r#"{{"resourceType":"Bundle","type":"batch","entry":[{}]}}"#,
        vec![entry; n].join(",")
    );
    let (status, ev) = events(
        "POST",
        "/fhir",
        Some((bundle.as_bytes(), "application/fhir+json")),
        Some(tok("user/Observation.rs", None)),
    );
    let bytes = total(&ev);
    let per_mib = bytes as f64 * (1_048_576.0 / bundle.len() as f64) / 1_048_576.0;
    rows.push((
        format!(
            "allowed batch, {n} entries × 32 patients ({} B body)",
            bundle.len()
        ),
        "≤ a few MiB of events".into(),
        format!(
            "{status}: {} events, {bytes} B (≈{per_mib:.0} MiB per MiB of body)",
            ev.len()
        ),
        bytes <= 4 << 20,
    ));
    report("audit bytes per request", &rows);
}

/// Client-controlled text in events stays cut at the documented bounds.
#[test]
fn client_text_in_events_is_bounded() {
    let mut rows = Vec::new();
    let long_user = "u".repeat(100_000);
    let mut t = tok("user/*.cruds", None);
    t.subject = long_user.clone();
    t.fhir_user = Some(format!("Patient/{}", "a".repeat(100_000)));
    t.client_id = Some("c".repeat(100_000));
    let (status, ev) = events("GET", "/fhir/Observation?code=x", None, Some(t));
    let size = total(&ev);
    rows.push((
        "100 KB sub, fhirUser, client_id".into(),
        "< 16 KiB".into(),
        format!("{status}: {size} B"),
        size < 16 * 1024,
    ));
    let op = format!("/fhir/Patient/p2/${}", "o".repeat(60_000));
    let (status, ev) = events("POST", &op, Some((b"{}", "application/fhir+json")), None);
    let size = total(&ev);
    rows.push((
        "60 KB operation name".into(),
        "< 16 KiB".into(),
        format!("{status}: {size} B"),
        size < 16 * 1024,
    ));
    let crit = format!("/fhir/Observation?code={}", "z".repeat(60_000));
    let (status, ev) = events("DELETE", &crit, None, user());
    let size = total(&ev);
    rows.push((
        "60 KB conditional-delete criteria".into(),
        "< 16 KiB".into(),
        format!("{status}: {size} B"),
        size < 16 * 1024,
    ));
    report("client text bounded", &rows);
}

// ------------------------------------------------------------------------------------------
// 3. Key-bound tokens
// ------------------------------------------------------------------------------------------

fn judged(body: &str) -> String {
    let cfg = IntrospectionConfig {
        endpoint: "https://as.test/introspect".into(),
        client_id: "fhirguard".into(),
        client_secret: "s".into(),
        client_auth_method: ClientAuthMethod::ClientSecretBasic,
        audiences: vec![AUD.into()],
        max_cache_seconds: 300,
        introspect_jwts: false,
        clock_skew_seconds: 60,
        tls: TlsConfig::default(),
    };
    let i = Introspector::new(&cfg, Arc::new(ByteCache::new(1 << 20)));
    match i.judge(body.as_bytes(), now()) {
        Err(_) => "no verdict".into(),
        Ok(j) => match j.verdict {
            Err(r) => format!("refused ({r:?})"),
            Ok(_) => "active".into(),
        },
    }
}

#[test]
fn key_bound_token_variants_are_refused() {
    let base = format!(
        r#""active":true,"sub":"u","aud":"{AUD}","exp":{}"#,
        now() + 600
    );
    let rows: Vec<(String, String, String, bool)> = [
        (r#""cnf":false"#, "refused"),
        (r#""cnf":"""#, "refused"),
        (r#""cnf":[]"#, "refused"),
        (r#""cnf":0"#, "refused"),
        (r#""cnf":{"jkt":"x"},"token_type":"Bearer""#, "refused"),
        (r#""cnf":{"jkt":"x"},"cnf":null"#, "no verdict"),
        (r#""cnf":null,"cnf":{"jkt":"x"}"#, "no verdict"),
        (r#""token_type":"bearer ""#, "refused"),
        (r#""token_type":" Bearer""#, "refused"),
        (r#""token_type":"""#, "refused"),
        (r#""token_type":"dpop""#, "refused"),
        (r#""token_type":["Bearer"]"#, "refused"),
        (r#""token_type":"Bearer","token_type":"DPoP""#, "no verdict"),
        (r#""token_type":"BEARER""#, "active"),
        (r#""cnf":null"#, "active"),
    ]
    .iter()
    .map(|(extra, want)| {
        let got = judged(&format!("{{{base},{extra}}}"));
        let ok = got.starts_with(want);
        (extra.to_string(), want.to_string(), got, ok)
    })
    .collect();
    report("key-bound tokens (introspection)", &rows);
}
