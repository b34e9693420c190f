//! Golden AuditEvents: one request per interaction kind goes through the core's Check driver
//! (verification answered by the test) and `core::audit`, with a fixed time and decision id;
//! the AuditEvent is compared with `tests/golden/audit/NAME.json` and checked against the
//! required elements of the IHE BALP 1.1.3 RESTful profiles, written out below from the
//! published profiles (Read, PatientRead, Query, PatientQuery, Create, PatientCreate, Update,
//! PatientUpdate, Delete, PatientDelete; refusals follow the same pattern with a failure
//! outcome, as BALP's notes on failures ask). A request naming several patients yields one
//! event per patient, and an allowed batch one more event per entry (`NAME.N.json`), each
//! checked against its own interaction's profile.
//!
//! After a deliberate change, `FHIRGUARD_BLESS=1 cargo test --test audit_golden` rewrites the
//! files; review the diff like code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use fhirguard_authz::config::*;
use fhirguard_authz::core::audit::{PROFILE_BASE, audit_events, wanted};
use fhirguard_authz::core::driver::{Check, Next, Outcome, TokenFailure};
use fhirguard_authz::core::fhir::Body;
use fhirguard_authz::core::policy::{Decision, Request, TokenIdentity};
use serde_json::{Value, json};

/// The decision id `common::audit_facts` gives every event.
const DECISION_ID: &str = "0123456789abcdef0123456789abcdef";

fn policy() -> PolicyConfig {
    let mut p: PolicyConfig = serde_json::from_value(json!({
        "namespace": "clinical", "name": "ehr", "hosts": ["ehr.example.org"],
        "basePath": "/fhir",
        "authentication": {"jwt": {"providers": [{
            "name": "idp", "issuer": "https://idp.example.org", "audiences": ["ehr"],
            "algorithms": ["RS256"], "jwks": {"uri": "https://idp.example.org/jwks"}}]}},
        "audit": {"record": "All", "stdout": true},
    }))
    .unwrap();
    p.authorization.smart.patient_search = PatientSearch::Reject;
    p
}

fn token(scopes: &str, patient: Option<&str>) -> TokenIdentity {
    common::verified_token(scopes, patient)
}

struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    body: Option<&'static str>,
    content_type: Option<&'static str>,
    token: Option<TokenIdentity>,
    /// BALP profile the event must follow, and the expected subtype/action/outcome.
    profile: Option<&'static str>,
    subtype: &'static str,
    action: &'static str,
    outcome: &'static str,
    /// The verifier cannot decide (keys unobtainable): no decision, 503.
    undecidable: bool,
    /// The events after the first, each as (profile, subtype, action): one per further
    /// patient the request names, or one per entry of an allowed bundle.
    more: &'static [(Option<&'static str>, &'static str, &'static str)],
}

fn cases() -> Vec<Case> {
    let all = || Some(token("user/*.cruds", None));
    let c = |name, method, path, body, profile, subtype, action| Case {
        name,
        method,
        path,
        body,
        content_type: body.map(|_| "application/fhir+json"),
        token: all(),
        profile,
        subtype,
        action,
        outcome: "0",
        undecidable: false,
        more: &[],
    };
    vec![
        c(
            "read",
            "GET",
            "/fhir/Patient/p1",
            None,
            Some("PatientRead"),
            "read",
            "R",
        ),
        c(
            "read-no-patient",
            "GET",
            "/fhir/Medication/m1",
            None,
            Some("Read"),
            "read",
            "R",
        ),
        c(
            "vread",
            "GET",
            "/fhir/Patient/p1/_history/3",
            None,
            Some("PatientRead"),
            "vread",
            "R",
        ),
        c(
            "search",
            "GET",
            "/fhir/Observation?patient=p1&code=8867-4",
            None,
            Some("PatientQuery"),
            "search",
            "E",
        ),
        c(
            "search-no-patient",
            "GET",
            "/fhir/Medication?code=abc",
            None,
            Some("Query"),
            "search",
            "E",
        ),
        c(
            "create",
            "POST",
            "/fhir/Observation",
            Some(
                r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p1"}}"#,
            ),
            Some("PatientCreate"),
            "create",
            "C",
        ),
        c(
            "update",
            "PUT",
            "/fhir/Patient/p1",
            Some(r#"{"resourceType":"Patient","id":"p1"}"#),
            Some("PatientUpdate"),
            "update",
            "U",
        ),
        Case {
            content_type: Some("application/json-patch+json"),
            ..c(
                "patch",
                "PATCH",
                "/fhir/Patient/p1",
                Some(r#"[{"op":"replace","path":"/active","value":false}]"#),
                None,
                "patch",
                "U",
            )
        },
        c(
            "delete",
            "DELETE",
            "/fhir/Patient/p1",
            None,
            Some("PatientDelete"),
            "delete",
            "D",
        ),
        c(
            "operation",
            "GET",
            "/fhir/Patient/p1/$everything",
            None,
            None,
            "operation",
            "E",
        ),
        Case {
            token: None,
            outcome: "4",
            ..c(
                "refusal-401",
                "GET",
                "/fhir/Patient/p1",
                None,
                None,
                "read",
                "R",
            )
        },
        Case {
            token: Some(token("patient/Observation.rs", Some("p1"))),
            outcome: "4",
            ..c(
                "refusal-403",
                "DELETE",
                "/fhir/Patient/p1",
                None,
                None,
                "delete",
                "D",
            )
        },
        Case {
            // A user-level grant with a launch context: the event names the patient read,
            // not the context patient.
            token: Some(token("user/*.cruds", Some("p1"))),
            ..c(
                "read-other-patient",
                "GET",
                "/fhir/Patient/p2",
                None,
                Some("PatientRead"),
                "read",
                "R",
            )
        },
        Case {
            // Refused: the patient reached for, not the token's own.
            token: Some(token("patient/Observation.rs", Some("p1"))),
            outcome: "4",
            ..c(
                "refusal-other-patient",
                "GET",
                "/fhir/Observation?patient=p2",
                None,
                None,
                "search",
                "E",
            )
        },
        Case {
            more: &[(Some("PatientQuery"), "search", "E")],
            ..c(
                "search-two-patients",
                "GET",
                "/fhir/Observation?subject=Patient/a1,Patient/a2",
                None,
                Some("PatientQuery"),
                "search",
                "E",
            )
        },
        Case {
            outcome: "8",
            undecidable: true,
            ..c(
                "no-decision-503",
                "GET",
                "/fhir/Patient/p1",
                None,
                None,
                "read",
                "R",
            )
        },
        Case {
            more: &[
                (Some("PatientQuery"), "search", "E"),
                (Some("PatientCreate"), "create", "C"),
                (Some("PatientRead"), "read", "R"),
                // Conditional: the deleted resources are not known, so no Delete profile.
                (None, "delete", "D"),
            ],
            ..c(
                "batch",
                "POST",
                "/fhir",
                Some(
                    r#"{"resourceType":"Bundle","type":"batch","entry":[
                    {"request":{"method":"GET","url":"Observation?patient=p1&code=8867-4"}},
                    {"request":{"method":"POST","url":"Observation"},"resource":{"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p2"}}},
                    {"request":{"method":"GET","url":"Patient/p3"}},
                    {"request":{"method":"GET","url":"Medication/m1"}},
                    {"request":{"method":"DELETE","url":"Condition?patient=p4&code=x"}}]}"#,
                ),
                None,
                "batch",
                "E",
            )
        },
    ]
}

fn decide(config: &CompiledConfig, case: &Case) -> Vec<Value> {
    let (events, all) = run_with(config, case, |outcome, request| {
        assert!(
            wanted(AuditRecord::PatientDataAndRefusals, outcome, request)
                || case.name == "read-no-patient"
                || case.name == "search-no-patient",
            "{}",
            case.name
        );
        match (case.outcome, outcome) {
            ("0", Outcome::Decided(Decision::Allow(_)))
            | ("4", Outcome::Decided(Decision::Deny(_)))
            | ("8", Outcome::Unavailable(_)) => {}
            _ => panic!("{}: unexpected outcome {outcome:?}", case.name),
        }
    });
    // Under `All` every entry has its event; under the default only those touching patient
    // data (the Medication read is left out).
    assert_eq!(
        all.len(),
        events.len() + usize::from(case.name == "batch"),
        "{}",
        case.name
    );
    events
}

/// A case through the driver (the verifier answered by the test: the case's token, a forged
/// one when it has none, or no keys when undecidable), `inspect`ed, then its events under
/// the default `record` and under `All`.
fn run_with(
    config: &CompiledConfig,
    case: &Case,
    inspect: impl FnOnce(&Outcome, Option<&fhirguard_authz::core::fhir::FhirRequest>),
) -> (Vec<Value>, Vec<Value>) {
    let auth = case.token.as_ref().map(|_| "Bearer opaque-test-token");
    let headers: Vec<(&str, &str)> = case
        .content_type
        .map(|ct| vec![("content-type", ct)])
        .unwrap_or_default();
    let req = Request {
        method: case.method,
        host: "ehr.example.org",
        path: case.path,
        authorization: auth,
        if_none_exist: None,
        headers: &headers,
        body: case.body.map(|b| Body {
            bytes: b.as_bytes(),
            content_type: case.content_type,
        }),
        policy_ref: None,
    };
    let mut check = Check::new(config, &req);
    if let Next::Need(_) = check.next() {
        let answer = match (&case.token, case.undecidable) {
            (_, true) => Err(TokenFailure::Undecidable(
                "no signing keys could be obtained".into(),
            )),
            (Some(t), false) => Ok(Arc::new(t.clone())),
            (None, false) => Err(TokenFailure::Invalid(
                fhirguard_authz::core::policy::DenyReason::InvalidToken,
                "forged".into(),
            )),
        };
        check.token_verified(answer);
    }
    let outcome = check.outcome().expect("a finished check");
    inspect(outcome, check.request());
    let facts = common::audit_facts(
        config,
        &check,
        case.method,
        "ehr.example.org",
        case.path,
        Some("10.1.2.3"),
    );
    (
        audit_events(&facts, AuditRecord::PatientDataAndRefusals),
        audit_events(&facts, AuditRecord::All),
    )
}

/// The expectations for event `i` of a case: the case itself, then its more.
fn expected(case: &Case, i: usize) -> Case {
    let (profile, subtype, action) = if i == 0 {
        (case.profile, case.subtype, case.action)
    } else {
        case.more[i - 1]
    };
    Case {
        name: case.name,
        method: case.method,
        path: case.path,
        body: case.body,
        content_type: case.content_type,
        token: case.token.clone(),
        profile,
        subtype,
        action,
        outcome: case.outcome,
        undecidable: case.undecidable,
        more: &[],
    }
}

fn codings(v: &Value) -> Vec<(String, String)> {
    let list = v
        .get("coding")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_else(|| vec![v.clone()]);
    list.iter()
        .map(|c| {
            (
                c["system"].as_str().unwrap_or("").to_string(),
                c["code"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn has_coding(v: &Value, system: &str, code: &str) -> bool {
    codings(v).iter().any(|(s, c)| s == system && c == code)
}

fn entity<'a>(e: &'a Value, type_code: &str, role_code: &str) -> Option<&'a Value> {
    e["entity"].as_array()?.iter().find(|x| {
        has_coding(
            &x["type"],
            "http://terminology.hl7.org/CodeSystem/audit-entity-type",
            type_code,
        ) && has_coding(
            &x["role"],
            "http://terminology.hl7.org/CodeSystem/object-role",
            role_code,
        )
    })
}

fn agent<'a>(e: &'a Value, system: &str, code: &str) -> Option<&'a Value> {
    e["agent"]
        .as_array()?
        .iter()
        .find(|a| has_coding(&a["type"], system, code))
}

/// The BALP 1.1.3 required elements (and FHIR R4 AuditEvent's own) for one event.
fn balp_problems(e: &Value, case: &Case) -> Vec<String> {
    let mut p = Vec::new();
    let mut need = |ok: bool, what: &str| {
        if !ok {
            p.push(what.to_string());
        }
    };
    need(e["resourceType"] == "AuditEvent", "resourceType AuditEvent");
    // Every BALP RESTful profile: type rest, a restful-interaction subtype, action, recorded,
    // outcome, the client (Source Role ID) and server (Destination Role ID) agents with `who`,
    // and a source with an observer of type Application Server.
    need(
        has_coding(
            &e["type"],
            "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "rest",
        ),
        "type audit-event-type#rest",
    );
    need(
        e["subtype"].as_array().is_some_and(|s| {
            s.iter()
                .any(|c| has_coding(c, "http://hl7.org/fhir/restful-interaction", case.subtype))
        }),
        "subtype restful-interaction",
    );
    need(e["action"] == case.action, "action");
    need(
        e["recorded"]
            .as_str()
            .is_some_and(|r| r.ends_with('Z') && r.len() == 24),
        "recorded instant",
    );
    need(e["outcome"] == case.outcome, "outcome");
    let dcm = "http://dicom.nema.org/resources/ontology/DCM";
    for (code, name) in [("110153", "client"), ("110152", "server")] {
        match agent(e, dcm, code) {
            None => need(false, &format!("agent:{name} ({code})")),
            Some(a) => {
                need(a.get("who").is_some(), &format!("agent:{name}.who"));
                need(
                    a.get("requestor").and_then(Value::as_bool).is_some(),
                    &format!("agent:{name}.requestor"),
                );
            }
        }
    }
    need(
        e["agent"]
            .as_array()
            .is_some_and(|a| a.iter().all(|x| x.get("requestor").is_some())),
        "agent.requestor (R4 1..1)",
    );
    need(e["source"]["observer"].is_object(), "source.observer");
    need(
        e["source"]["type"].as_array().is_some_and(|t| {
            t.iter().any(|c| {
                has_coding(
                    c,
                    "http://terminology.hl7.org/CodeSystem/security-source-type",
                    "4",
                )
            })
        }),
        "source.type Application Server",
    );
    // The decision id as BALP's X-Request-Id transaction entity.
    need(
        e["entity"].as_array().is_some_and(|l| {
            l.iter().any(|x| {
                x["what"]["identifier"]["value"] == DECISION_ID
                    && has_coding(
                        &x["type"],
                        "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType",
                        "XrequestId",
                    )
            })
        }),
        "entity:transaction with the decision id",
    );
    let profile = e["meta"]["profile"][0].as_str().map(str::to_string);
    match case.profile {
        Some(name) => need(
            profile.as_deref() == Some(&format!("{PROFILE_BASE}{name}")),
            "meta.profile names the BALP profile",
        ),
        None => need(profile.is_none(), "no BALP success profile claimed"),
    }
    let patient_profile = case.profile.is_some_and(|n| n.starts_with("Patient"));
    if patient_profile {
        // Patient* profiles: entity:patient 1..1, type Person, role Patient, what Patient/...
        need(
            entity(e, "1", "1").is_some_and(|x| {
                x["what"]["reference"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("Patient/"))
            }),
            "entity:patient",
        );
    }
    match case.profile.map(|n| n.trim_start_matches("Patient")) {
        Some("Read") | Some("Update") | Some("Delete") => need(
            entity(e, "2", "4").is_some_and(|x| x["what"]["reference"].is_string()),
            "entity:data with what.reference",
        ),
        Some("Create") => need(entity(e, "2", "4").is_some(), "entity:data"),
        Some("Query") => {
            // entity:query 1..1: type System Object, role Query, the raw request base64.
            let q = entity(e, "2", "24");
            need(q.is_some(), "entity:query");
            if let Some(q) = q {
                let decoded = q["query"]
                    .as_str()
                    .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                    .and_then(|b| String::from_utf8(b).ok());
                need(
                    decoded
                        .as_deref()
                        .is_some_and(|d| d.starts_with("GET /fhir/")),
                    "entity:query.query is the base64 request",
                );
            }
        }
        _ => {}
    }
    if case.outcome != "0" {
        need(e["outcomeDesc"].is_string(), "outcomeDesc on a refusal");
    }
    if case.subtype != "search" {
        need(
            entity(e, "2", "24").is_none(),
            "no query entity outside searches",
        );
    }
    need(
        !e.to_string().contains("opaque-test-token"),
        "no token in the event",
    );
    p
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/audit")
}

#[test]
fn audit_events_follow_balp_and_match_the_golden_files() {
    let config = CompiledConfig {
        version: FORMAT_VERSION,
        generation: 1,
        policies: vec![policy()],
        connections: vec![],
    };
    assert!(config.validate().is_empty(), "{:?}", config.validate());
    let bless = std::env::var("FHIRGUARD_BLESS").as_deref() == Ok("1");
    let mut failures = Vec::new();
    for case in cases() {
        let events = decide(&config, &case);
        assert_eq!(events.len(), 1 + case.more.len(), "{}", case.name);
        for (i, event) in events.iter().enumerate() {
            let want = expected(&case, i);
            let problems = balp_problems(event, &want);
            if !problems.is_empty() {
                failures.push(format!("{} event {i}: {problems:?}\n{event:#}", case.name));
            }
            let name = match i {
                0 => format!("{}.json", case.name),
                i => format!("{}.{i}.json", case.name),
            };
            compare(&dir().join(name), event, bless, &mut failures);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn compare(path: &Path, event: &Value, bless: bool, failures: &mut Vec<String>) {
    let text = serde_json::to_string_pretty(event).unwrap() + "\n";
    if bless {
        std::fs::write(path, &text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e} (FHIRGUARD_BLESS=1 writes it)", path.display()));
    if want != text {
        failures.push(format!("{} differs:\n{text}", path.display()));
    }
}

#[test]
fn the_checker_rejects_events_missing_required_elements() {
    let config = CompiledConfig {
        version: FORMAT_VERSION,
        generation: 1,
        policies: vec![policy()],
        connections: vec![],
    };
    let case = &cases()[3];
    let good = decide(&config, case).remove(0);
    assert!(balp_problems(&good, case).is_empty());
    for (pointer, label) in [
        ("/type", "type"),
        ("/agent/0", "agent:client"),
        ("/source/observer", "source.observer"),
        ("/entity/0", "entity:query"),
    ] {
        let mut bad = good.clone();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        match bad.pointer_mut(parent).unwrap() {
            Value::Object(m) => {
                m.remove(key);
            }
            Value::Array(a) => {
                a.remove(key.parse().unwrap());
            }
            _ => unreachable!(),
        }
        assert!(
            !balp_problems(&bad, case).is_empty(),
            "removing {label} went unnoticed"
        );
    }
}

/// The patients an event names, for a request under a user-level grant (no launch context)
/// or the token given: every spelling that names a patient, and none that does not.
#[test]
fn events_name_the_patients_the_request_names_in_every_spelling() {
    let config = CompiledConfig {
        version: FORMAT_VERSION,
        generation: 1,
        policies: vec![policy()],
        connections: vec![],
    };
    let user = || Some(token("user/*.cruds", None));
    let rows: &[(&str, &str, Option<TokenIdentity>, &[&str])] = &[
        (
            "GET",
            "/fhir/Observation?subject:Patient=p3",
            user(),
            &["p3"],
        ),
        (
            "GET",
            "/fhir/Observation?patient:Patient=p11",
            user(),
            &["p11"],
        ),
        ("GET", "/fhir/Patient?_id=p4", user(), &["p4"]),
        ("GET", "/fhir/Patient?_id=p4,p5", user(), &["p4", "p5"]),
        (
            "GET",
            "/fhir/Observation?patient=Patient/p6",
            user(),
            &["p6"],
        ),
        ("GET", "/fhir/Observation?patient=p7", user(), &["p7"]),
        (
            "GET",
            "/fhir/Observation?performer=Patient/p10",
            user(),
            &["p10"],
        ),
        ("GET", "/fhir/Patient/p9/Observation", user(), &["p9"]),
        ("GET", "/fhir/Patient/p9/_history/2", user(), &["p9"]),
        (
            "GET",
            "/fhir/Encounter?patient=p12&subject=Patient/p13",
            user(),
            &["p12", "p13"],
        ),
        // A bare id on a parameter that also targets Group, Device, ...: not a patient.
        ("GET", "/fhir/Observation?subject=p8", user(), &[]),
        // Chains and other parameters name no patient id.
        ("GET", "/fhir/Observation?subject.name=Smith", user(), &[]),
        ("GET", "/fhir/Observation?code=Patient-x", user(), &[]),
        ("GET", "/fhir/Medication/m1", user(), &[]),
        // A user-level grant: the launch context is not what was read.
        (
            "GET",
            "/fhir/Observation?code=x",
            Some(token("user/*.cruds", Some("p1"))),
            &[],
        ),
        // Patient-context scopes only, and the decision confined the read to p1.
        (
            "GET",
            "/fhir/Observation?patient=p1",
            Some(token("patient/Observation.rs", Some("p1"))),
            &["p1"],
        ),
        // Refused: the patient reached for.
        (
            "GET",
            "/fhir/Patient/p2",
            Some(token("patient/Observation.rs", Some("p1"))),
            &["p2"],
        ),
    ];
    let mut failures = Vec::new();
    for (method, path, tok, want) in rows {
        let case = Case {
            name: "row",
            method,
            path,
            body: None,
            content_type: None,
            token: tok.clone(),
            profile: None,
            subtype: "",
            action: "",
            outcome: "",
            undecidable: false,
            more: &[],
        };
        let events = run(&config, &case);
        let named: Vec<String> = events
            .iter()
            .flat_map(|e| {
                e["entity"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|x| x["role"]["code"] == "1")
                    .map(|x| x["what"]["reference"].as_str().unwrap().to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        let want: Vec<String> = want.iter().map(|p| format!("Patient/{p}")).collect();
        if named != want {
            failures.push(format!("{method} {path}: {named:?}, want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A client cannot make an AuditEvent as large as its request: the query (plain and base64)
/// and conditional criteria are cut, however long the request, refused or not.
#[test]
fn events_stay_small_whatever_the_request() {
    let config = CompiledConfig {
        version: FORMAT_VERSION,
        generation: 1,
        policies: vec![policy()],
        connections: vec![],
    };
    // Case holds 'static text; a test may leak these.
    let long: &'static str = format!("/fhir/Observation?code={}", "x".repeat(60_000)).leak();
    let form: &'static str = format!("code={}", "y".repeat(500_000)).leak();
    for (method, path, body, tok) in [
        ("GET", long, None, Some(token("user/*.cruds", None))),
        (
            "GET",
            long,
            None,
            Some(token("patient/Patient.rs", Some("p1"))),
        ),
        (
            "POST",
            "/fhir/Observation/_search",
            Some(form),
            Some(token("user/*.cruds", None)),
        ),
        ("GET", long, None, None),
    ] {
        let case = Case {
            name: "big",
            method,
            path,
            body,
            content_type: body.map(|_| "application/x-www-form-urlencoded"),
            token: tok,
            profile: None,
            subtype: "",
            action: "",
            outcome: "",
            undecidable: false,
            more: &[],
        };
        for e in run(&config, &case) {
            let size = e.to_string().len();
            assert!(size < 16 * 1024, "{method} {}: {size} bytes", &path[..30]);
        }
    }
}

/// The events for a case under `All`, whatever the outcome.
fn run(config: &CompiledConfig, case: &Case) -> Vec<Value> {
    run_with(config, case, |_, _| {}).1
}

/// The golden policy with compartment lookups through a connection.
fn lookup_config() -> CompiledConfig {
    let mut p = policy();
    p.authorization.smart.compartment_lookup = Some(CompartmentLookup {
        connection: "clinical/ehr-internal".into(),
    });
    let config = CompiledConfig {
        version: FORMAT_VERSION,
        generation: 1,
        policies: vec![p],
        connections: vec![ConnectionConfig {
            namespace: "clinical".into(),
            name: "ehr-internal".into(),
            url: "https://ehr.example.org/fhir".into(),
            auth: ConnectionAuth::default(),
            tls: TlsConfig::default(),
        }],
    };
    assert!(config.validate().is_empty(), "{:?}", config.validate());
    config
}

/// A request under a `patient/` token for p1 whose lookups are answered with `stored`: the
/// status it gets, and the patient references each of its events names.
fn decided_by_lookup(
    method: &str,
    path: &str,
    body: Option<&str>,
    scopes: &str,
    stored: &Value,
) -> (u16, Vec<Vec<String>>) {
    use fhirguard_authz::core::driver::Need;
    use fhirguard_authz::core::smart::Stored;
    let config = lookup_config();
    let headers = [("content-type", "application/fhir+json")];
    let req = Request {
        method,
        host: "ehr.example.org",
        path,
        authorization: Some("Bearer opaque-test-token"),
        if_none_exist: None,
        headers: if body.is_some() { &headers } else { &[] },
        body: body.map(|b| Body {
            bytes: b.as_bytes(),
            content_type: Some("application/fhir+json"),
        }),
        policy_ref: None,
    };
    let mut check = Check::new(&config, &req);
    check.token_verified(Ok(Arc::new(token(scopes, Some("p1")))));
    let Next::Need(Need::Lookups { keys, .. }) = check.next() else {
        panic!("{:?}", check.next());
    };
    let answers = keys
        .iter()
        .cloned()
        .map(|k| (k, Ok(Stored::Found(Arc::new(stored.clone())))))
        .collect();
    check.lookups_done(answers);
    let outcome = check.outcome().expect("decided");
    let status = match outcome {
        Outcome::Decided(Decision::Allow(_)) => 200,
        Outcome::Decided(Decision::Deny(d)) => d.status,
        other => panic!("{other:?}"),
    };
    let events = audit_events(
        &common::audit_facts(&config, &check, method, "ehr.example.org", path, None),
        AuditRecord::All,
    );
    let named = events
        .iter()
        .map(|e| {
            e["entity"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|x| x["role"]["code"] == "1")
                .filter_map(|x| x["what"]["reference"].as_str().map(str::to_string))
                .collect()
        })
        .collect();
    (status, named)
}

/// A read by id decided on the stored resource names the patients the resource belongs to,
/// for an allow and for a refusal alike (the patient whose data was reached for), not only
/// the token's context patient.
#[test]
fn reads_decided_by_lookups_name_the_stored_resources_patients() {
    let mine = json!({"resourceType": "Observation", "id": "o1",
        "subject": {"reference": "Patient/p1"}, "performer": [{"reference": "Patient/p3"}]});
    let theirs = json!({"resourceType": "Observation", "id": "o1",
        "subject": {"reference": "Patient/p2"}});
    let read = |stored| {
        decided_by_lookup(
            "GET",
            "/fhir/Observation/o1",
            None,
            "patient/Observation.rs",
            stored,
        )
    };
    // Allowed: an event per patient.
    assert_eq!(
        read(&mine),
        (
            200,
            vec![vec!["Patient/p1".into()], vec!["Patient/p3".into()]]
        )
    );
    // Refused: one event, the patient reached for.
    assert_eq!(read(&theirs), (403, vec![vec!["Patient/p2".into()]]));
}

/// An update by id names the patients of the body and of the stored resource it replaces:
/// refused when the stored one is another patient's, and that patient is named.
#[test]
fn updates_decided_by_lookups_name_the_stored_and_the_written_patients() {
    let body = r#"{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p1"}}"#;
    let stored = json!({"resourceType": "Observation", "id": "o1",
        "subject": {"reference": "Patient/p2"}});
    assert_eq!(
        decided_by_lookup(
            "PUT",
            "/fhir/Observation/o1",
            Some(body),
            "patient/Observation.cruds",
            &stored
        ),
        (403, vec![vec!["Patient/p1".into(), "Patient/p2".into()]])
    );
}
