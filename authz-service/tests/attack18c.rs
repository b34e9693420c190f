//! Third outside review of issue 18: probes against the AuditEvent patient attribution
//! (`patients_of`, `Names::param`/`absolute`/`request`, lookup-based naming, `per_patient`,
//! the 64-event cap). Rows already in attack18.rs / attack18b.rs are not repeated. Each table
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

use fhirguard_authz::core::policy::TokenIdentity;
use fhirguard_authz::core::smart::{LookupKey, Stored};
use serde_json::{Value, json};

use common::probe::{events, run};

fn tok(scopes: &str, patient: Option<&str>) -> TokenIdentity {
    common::verified_token(scopes, patient)
}

fn user() -> Option<TokenIdentity> {
    Some(tok("user/*.cruds", None))
}

/// The patients one event names (entity role 1), `Patient/` stripped.
fn named_in(e: &Value) -> Vec<String> {
    e["entity"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["role"]["code"] == "1")
        .map(|x| {
            x["what"]["reference"]
                .as_str()
                .unwrap()
                .trim_start_matches("Patient/")
                .to_string()
        })
        .collect()
}

/// The patients the events name, in order, without repeats.
fn named(events: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for e in events {
        for id in named_in(e) {
            if !out.contains(&id) {
                out.push(id);
            }
        }
    }
    out
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn total(ev: &[Value]) -> usize {
    ev.iter().map(|e| e.to_string().len()).sum()
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

/// Rows `(label, method, path, body, token, want)`; `want` is the exact set of names (a
/// 400 or a pending lookup counts as fine).
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
            let ok = status == "400"
                || status == "lookup"
                || sorted(got.clone()) == sorted(want.clone());
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
// 1. Absolute URL spellings (`Names::absolute`)
// ------------------------------------------------------------------------------------------

/// Controls: spellings of this server's Patient/p2 that are named as `Patient/p2`, and other
/// servers' patients named by URL.
#[test]
fn absolute_url_controls() {
    let rows = attribution_rows(&[
        (
            "host case",
            "GET",
            "/fhir/Observation?subject=https://EHR.TEST/fhir/Patient/p2",
            None,
            user(),
            &["p2"],
        ),
        (
            "default port",
            "GET",
            "/fhir/Observation?subject=https://ehr.test:443/fhir/Patient/p2",
            None,
            user(),
            &["p2"],
        ),
        (
            "trailing dot",
            "GET",
            "/fhir/Observation?subject=https://ehr.test./fhir/Patient/p2",
            None,
            user(),
            &["p2"],
        ),
        (
            "http",
            "GET",
            "/fhir/Observation?subject=http://ehr.test/fhir/Patient/p2",
            None,
            user(),
            &["p2"],
        ),
        (
            "other base /fhir2",
            "GET",
            "/fhir/Observation?subject=https://ehr.test/fhir2/Patient/p2",
            None,
            user(),
            &["https://ehr.test/fhir2/Patient/p2"],
        ),
        (
            "userinfo names the real host",
            "GET",
            "/fhir/Observation?subject=https://ehr.test@evil.test/fhir/Patient/p2",
            None,
            user(),
            // The server is evil.test; the userinfo is not part of its identity.
            &["https://evil.test/fhir/Patient/p2"],
        ),
        (
            "Patient twice, other server",
            "GET",
            "/fhir/Observation?subject=https://o.test/Patient/p9/x/Patient/p2",
            None,
            user(),
            &["https://o.test/Patient/p9/x/Patient/p2"],
        ),
        (
            "_id multi on Patient",
            "GET",
            "/fhir/Patient?_id=p2,p3",
            None,
            user(),
            &["p2", "p3"],
        ),
        (
            "chain ._id with :Patient, several",
            "GET",
            "/fhir/Observation?subject:Patient._id=p2,p3",
            None,
            user(),
            &["p2", "p3"],
        ),
        (
            "chain ._id:not",
            "GET",
            "/fhir/Observation?subject._id:not=p2",
            None,
            user(),
            &[],
        ),
        (
            "chain ._id deeper",
            "GET",
            "/fhir/Observation?subject:Patient.organization._id=o2",
            None,
            user(),
            &[],
        ),
    ]);
    report("absolute URL controls", &rows);
}

/// Spellings of a reference to this server's Patient/p2 (or to another server's) that the
/// audit names wrongly or not at all.
#[test]
fn absolute_url_spellings_name_the_patient() {
    let long = format!(
        "/fhir/Observation?patient=https://other.test/{}/Patient/p2",
        "a".repeat(300)
    );
    let rows = attribution_rows(&[
        // userinfo on our own host: the same server, the same Patient/p2.
        (
            "userinfo on our host",
            "GET",
            "/fhir/Observation?subject=https://evil@ehr.test/fhir/Patient/p2",
            None,
            user(),
            &["p2"],
        ),
        // URL schemes are case-insensitive (RFC 3986 3.1).
        (
            "scheme upper case",
            "GET",
            "/fhir/Observation?patient=HTTPS://ehr.test/fhir/Patient/p2",
            None,
            user(),
            &["p2"],
        ),
        (
            "dot segment",
            "GET",
            "/fhir/Observation?subject=https://ehr.test/fhir/./Patient/p2",
            None,
            user(),
            &["p2"],
        ),
        (
            "dot-dot into base",
            "GET",
            "/fhir/Observation?subject=https://ehr.test/x/../fhir/Patient/p2",
            None,
            user(),
            &["p2"],
        ),
        (
            "encoded query in value",
            "GET",
            "/fhir/Observation?subject=https://ehr.test/fhir/Patient/p2%3F_format%3Djson",
            None,
            user(),
            &["p2"],
        ),
        (
            "fragment, other server",
            "GET",
            "/fhir/Observation?subject=https://o.test/fhir/Patient/p2%23x",
            None,
            user(),
            &["https://o.test/fhir/Patient/p2"],
        ),
        // Not a Patient reference at all: the URL of an Observation under another
        // server's patient compartment path.
        (
            "Observation URL under /Patient/",
            "GET",
            "/fhir/Observation?subject=https://o.test/fhir/Patient/p2/Observation/o1",
            None,
            user(),
            &[],
        ),
    ]);
    report("absolute URL spellings", &rows);
    // A very long base of another server: named, by a reference cut to a bounded length.
    let (_, ev) = events("GET", &long, None, user());
    let got = named(&ev);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("https://other.test/") && got[0].ends_with("/Patient/p2"),
        "{got:?}"
    );
    assert!(got[0].len() < 400, "{}", got[0].len());
}

// ------------------------------------------------------------------------------------------
// 2. Parameters on an interaction by id (`Names::request` walks `r.params` for every
//    interaction)
// ------------------------------------------------------------------------------------------

/// A read/update/delete by id with a patient-looking query parameter: the server ignores
/// the parameter (or rejects it); the event must not name the parameter's patient as if its
/// data were read.
/// (Controls: the classifier refuses these with 400, so no event names the parameter.)
#[test]
fn parameters_on_an_interaction_by_id_name_nobody() {
    let rows = attribution_rows(&[
        (
            "read by id, patient=",
            "GET",
            "/fhir/Observation/o1?patient=p1",
            None,
            user(),
            &[],
        ),
        (
            "read by id, subject=",
            "GET",
            "/fhir/Observation/o1?subject=Patient/p1",
            None,
            user(),
            &[],
        ),
        (
            "Patient read, _id=",
            "GET",
            "/fhir/Patient/p2?_id=p1",
            None,
            user(),
            &["p2"],
        ),
        (
            "vread, patient=",
            "GET",
            "/fhir/Observation/o1/_history/1?patient=p1",
            None,
            user(),
            &[],
        ),
        (
            "history-instance, patient=",
            "GET",
            "/fhir/Observation/o1/_history?patient=p1",
            None,
            user(),
            &[],
        ),
        (
            "delete by id, patient=",
            "DELETE",
            "/fhir/Observation/o1?patient=p1",
            None,
            user(),
            &[],
        ),
        (
            "update by id, patient=",
            "PUT",
            "/fhir/Observation/o1?patient=p1",
            Some((
                r#"{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p2"}}"#,
                "application/fhir+json",
            )),
            user(),
            &["p2"],
        ),
    ]);
    report("parameters on interactions by id", &rows);
}

// ------------------------------------------------------------------------------------------
// 3. Lookup-based naming
// ------------------------------------------------------------------------------------------

fn obs(id: &str, subject: &str, performer: Option<&str>) -> Stored {
    let mut v = json!({"resourceType": "Observation", "id": id, "status": "final",
        "code": {"text": "x"}, "subject": {"reference": format!("Patient/{subject}")}});
    if let Some(p) = performer {
        v["performer"] = json!([{"reference": format!("Patient/{p}")}]);
    }
    Stored::Found(Arc::new(v))
}

/// Requests by id decided on lookups where the stored resource's patient must be named.
#[test]
fn lookups_name_the_patient_reached_for() {
    let p1 = || Some(tok("patient/Observation.cruds", Some("p1")));
    let stored_p2 = |_: &LookupKey| obs("o1", "p2", None);
    let mut rows = Vec::new();
    let cases: Vec<(&str, &str, &str, Option<&str>, &[&str])> = vec![
        (
            "control: plain read",
            "GET",
            "/fhir/Observation/o1",
            None,
            &["p2"],
        ),
        (
            "update moving p2's record to p1",
            "PUT",
            "/fhir/Observation/o1",
            Some(
                r#"{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p1"}}"#,
            ),
            &["p1", "p2"],
        ),
    ];
    for (label, method, path, body, want) in cases {
        let (status, ev) = run(
            method,
            path,
            body.map(|b| (b.as_bytes(), "application/fhir+json")),
            p1(),
            Some(&stored_p2),
        );
        let got = named(&ev);
        let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        let ok = want.iter().all(|w| got.contains(w)) && got.iter().all(|g| want.contains(g));
        rows.push((
            format!("{label}: {method} {path} (stored: p2's)"),
            format!("{want:?}"),
            format!("{status} {got:?}"),
            ok,
        ));
    }
    report("lookups: the patient reached for", &rows);
}

/// An allowed batch decided on lookups: each entry's event names that entry's stored
/// resource's patients, not every lookup of the bundle.
#[test]
fn batch_entries_do_not_share_lookups() {
    let answer = |k: &LookupKey| match k.id.as_str() {
        "o1" => obs("o1", "p1", None),
        _ => obs(&k.id, "p1", Some("p3")),
    };
    let bundle = r#"{"resourceType":"Bundle","type":"batch","entry":[
        {"request":{"method":"GET","url":"Observation/o1"}},
        {"request":{"method":"GET","url":"Observation/o2"}}]}"#;
    let (status, ev) = run(
        "POST",
        "/fhir",
        Some((bundle.as_bytes(), "application/fhir+json")),
        Some(tok("patient/Observation.rs", Some("p1"))),
        Some(&answer),
    );
    let mut rows = Vec::new();
    // An allowed entry naming two patients has an event per patient: compare the union of
    // the patients named by the events about each resource.
    let mut by_what: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for e in &ev {
        let what = e["entity"][0]["what"]["reference"]
            .as_str()
            .unwrap_or("(bundle)")
            .to_string();
        by_what.entry(what).or_default().extend(named_in(e));
    }
    for (what, got) in by_what {
        let got = sorted(got);
        let want: Vec<String> = match what.as_str() {
            "Observation/o1" => vec!["p1".into()],
            "Observation/o2" => vec!["p1".into(), "p3".into()],
            _ => got.clone(),
        };
        rows.push((
            format!("batch GET o1 (p1) + GET o2 (p1, performer p3), event for {what}"),
            format!("{want:?}"),
            format!("{status} {got:?}"),
            got == want,
        ));
    }
    report("batch entries and lookups", &rows);
}

/// Lookups answered with something other than the resource asked for (a misbehaving or
/// hostile upstream): the decision and the event must not follow the answer's claims.
#[test]
fn lookups_answered_with_the_wrong_resource() {
    let mut rows = Vec::new();
    let cases: Vec<(&str, Value)> = vec![
        ("a Patient", json!({"resourceType": "Patient", "id": "p1"})),
        (
            "another Observation id",
            json!({"resourceType": "Observation", "id": "o9", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/p1"}}),
        ),
        (
            "a searchset Bundle",
            json!({"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {"resourceType": "Observation", "id": "o1", "subject": {"reference": "Patient/p1"}}}]}),
        ),
        (
            "no resourceType",
            json!({"id": "o1", "subject": {"reference": "Patient/p1"}}),
        ),
    ];
    for (label, v) in cases {
        let answer = move |_: &LookupKey| Stored::Found(Arc::new(v.clone()));
        let (status, ev) = run(
            "GET",
            "/fhir/Observation/o1",
            None,
            Some(tok("patient/Observation.rs", Some("p1"))),
            Some(&answer),
        );
        let got = named(&ev);
        rows.push((
            format!("GET Observation/o1 answered with {label}"),
            "refused (not 200)".into(),
            format!("{status} {got:?}"),
            status != "200",
        ));
    }
    report("lookups answered with the wrong resource", &rows);
}

// ------------------------------------------------------------------------------------------
// 4. Refusals and the patient cap
// ------------------------------------------------------------------------------------------

/// A refused bundle is one event; it must still name the patients its entries reached for.
#[test]
fn refused_bundles_name_the_patients_reached_for() {
    let bundle = r#"{"resourceType":"Bundle","type":"batch","entry":[
        {"request":{"method":"GET","url":"Patient/p2"}},
        {"request":{"method":"GET","url":"Observation?patient=p3"}}]}"#;
    let rows = attribution_rows(&[
        (
            "forged token",
            "POST",
            "/fhir",
            Some((bundle, "application/fhir+json")),
            None,
            &["p2", "p3"],
        ),
        (
            "patient ctx p1",
            "POST",
            "/fhir",
            Some((bundle, "application/fhir+json")),
            Some(tok("patient/*.rs", Some("p1"))),
            &["p2", "p3"],
        ),
    ]);
    report("refused bundles", &rows);
}

/// More than 32 patients: the ones past the cap are dropped without a word, so a client
/// puts 32 decoys before the patient it wants.
#[test]
fn patients_past_the_cap_are_not_hidden() {
    let decoys: Vec<String> = (0..32).map(|i| format!("x{i}")).collect();
    let path = format!("/fhir/Patient?_id={},p2", decoys.join(","));
    let mut rows = Vec::new();
    for (label, token) in [("user grant (allowed)", user()), ("forged token", None)] {
        let (status, ev) = events("GET", &path, None, token);
        let got = named(&ev);
        let text = serde_json::to_string(&ev).unwrap();
        let ok = got.contains(&"p2".to_string()) || text.contains("not recorded");
        rows.push((
            format!("{label}: GET Patient?_id=<32 decoys>,p2"),
            "p2 named, or the event says patients were left out".into(),
            format!(
                "{status}: {} events, p2 named: {}, omission noted: {}",
                ev.len(),
                got.contains(&"p2".to_string()),
                text.contains("not recorded")
            ),
            ok,
        ));
    }
    report("the patient cap", &rows);
}

// ------------------------------------------------------------------------------------------
// 5. Audit bytes per request
// ------------------------------------------------------------------------------------------

/// The largest audit cost one request can buy: 32 absolute references at the 256-byte base
/// limit and a query at the 4 KiB cut, as a GET and as a batch of such entries.
#[test]
fn audit_bytes_per_request_with_long_absolute_references() {
    let mut rows = Vec::new();
    let base = format!("https://o.test/{}", "b".repeat(240));
    let refs: Vec<String> = (0..32)
        .map(|i| format!("{base}/Patient/{}{i:02}", "q".repeat(60)))
        .collect();
    let path = format!("/fhir/Observation?subject={}", refs.join(","));
    let (status, ev) = events("GET", &path, None, user());
    let bytes = total(&ev);
    rows.push((
        format!("GET, 32 long absolute refs ({} B request)", path.len()),
        "≤ 64 events, ≤ 1 MiB".into(),
        format!(
            "{status}: {} events, {bytes} B (×{:.0})",
            ev.len(),
            bytes as f64 / path.len() as f64
        ),
        ev.len() <= 64 && bytes <= 1 << 20,
    ));
    let entry = format!(
        r#"{{"request":{{"method":"GET","url":"Observation?subject={}"}}}}"#,
        refs.join(",").replace("://", "%3A%2F%2F")
    );
    let bundle = format!(
        r#"{{"resourceType":"Bundle","type":"batch","entry":[{}]}}"#,
        vec![entry; 64].join(",")
    );
    let (status, ev) = events(
        "POST",
        "/fhir",
        Some((bundle.as_bytes(), "application/fhir+json")),
        user(),
    );
    let bytes = total(&ev);
    rows.push((
        format!("batch of 64 such entries ({} B body)", bundle.len()),
        "≤ 64 events, ≤ 4 MiB".into(),
        format!(
            "{status}: {} events, {bytes} B (×{:.1}) {}",
            ev.len(),
            bytes as f64 / bundle.len() as f64,
            ev[0]["outcomeDesc"].as_str().unwrap_or("")
        ),
        ev.len() <= 64 && bytes <= 4 << 20,
    ));
    report("audit bytes per request", &rows);
}
