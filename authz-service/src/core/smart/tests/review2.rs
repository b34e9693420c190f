//! Rows from the second attack review of the isolation rules. Every row states the answer a
//! secure authorizer must give; a request refused as malformed (400) counts as refused. The
//! over-blocking rows are legitimate requests that must be allowed.
//!
//! Servers named in comments were checked against their source where it matters:
//! - HAPI FHIR `BaseTransactionProcessor`: a bundle entry with `request.method = POST` is a
//!   create of `entry.resource`, whatever `request.url` says (the DAO comes from the
//!   resource's class; newer versions only check that the URL *starts* with some resource
//!   type), and a PATCH entry's conditional URL is taken from `request.ifMatch`
//!   (`toMatchUrl`), which the DAO's `patch` prefers over the id in the URL.
//! - HAPI `CascadingDeleteInterceptor` reads `_cascade` from the request for every delete,
//!   conditional ones included, and `MatchUrlService` ignores unknown `_` parameters in match
//!   URLs, so `_cascade=delete` does not disturb the criteria.
//! - HAPI conditional create returns the matching resource (200, `Prefer: return=
//!   representation` is its default) when `If-None-Exist` matches.

use super::super::*;
use crate::core::fhir::{Body, HttpRequest, classify, normalize_path, split_path};

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Want {
    /// Must be refused.
    Deny,
    /// Must be allowed (over-blocking rows).
    Allowed,
}
use Want::*;

/// (rule, scopes, patient context, "METHOD /path?query", body, If-None-Exist, expected)
type Row = (
    &'static str,
    &'static str,
    Option<&'static str>,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    Want,
);

fn request(line: &str, body: Option<&str>, if_none_exist: Option<&str>) -> Option<FhirRequest> {
    let (method, target) = line.split_once(' ').unwrap();
    let (path, query) = split_path(target);
    let segs = normalize_path(path).unwrap();
    classify(HttpRequest {
        method,
        segments: &segs,
        query,
        body: body.map(|b| Body {
            bytes: b.as_bytes(),
            content_type: Some(if b.starts_with('[') {
                "application/json-patch+json"
            } else {
                "application/fhir+json"
            }),
        }),
        if_none_exist,
    })
    .ok()
}

fn found(v: &str) -> Stored {
    Stored::Found(std::sync::Arc::new(serde_json::from_str(v).unwrap()))
}

/// Stored resources, the same whether fetched for a read or (fresh) for a write.
fn stored() -> Lookups {
    let mut m = Lookups::new();
    let mut put = |t: &str, id: &str, s: Stored| {
        for for_write in [false, true] {
            m.insert(
                LookupKey {
                    for_write,
                    ..LookupKey::current(t, id)
                },
                s.clone(),
            );
        }
    };
    put(
        "Observation",
        "o1",
        found(r#"{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p1"}}"#),
    );
    put(
        "Observation",
        "o2",
        found(r#"{"resourceType":"Observation","id":"o2","subject":{"reference":"Patient/p2"}}"#),
    );
    // p1's Observation whose focus is p2 (e.g. a fetal or family observation).
    put(
        "Observation",
        "o4",
        found(
            r#"{"resourceType":"Observation","id":"o4","subject":{"reference":"Patient/p1"},"focus":[{"reference":"Patient/p2"}]}"#,
        ),
    );
    put("Observation", "lab1", found(&obs_cat("lab1", "laboratory")));
    put(
        "Observation",
        "vit1",
        found(&obs_cat("vit1", "vital-signs")),
    );
    put(
        "Observation",
        "eie1",
        found(
            r#"{"resourceType":"Observation","id":"eie1","status":"entered-in-error","subject":{"reference":"Patient/p1"}}"#,
        ),
    );
    // A clinical note: the DocumentReference is p1's and the Binary names it as its
    // securityContext; b2's securityContext is p2's document.
    put(
        "DocumentReference",
        "d1",
        found(
            r#"{"resourceType":"DocumentReference","id":"d1","status":"current","subject":{"reference":"Patient/p1"}}"#,
        ),
    );
    put(
        "DocumentReference",
        "d2",
        found(
            r#"{"resourceType":"DocumentReference","id":"d2","status":"current","subject":{"reference":"Patient/p2"}}"#,
        ),
    );
    put(
        "Binary",
        "b1",
        found(
            r#"{"resourceType":"Binary","id":"b1","contentType":"text/plain","securityContext":{"reference":"DocumentReference/d1"}}"#,
        ),
    );
    put(
        "Binary",
        "b2",
        found(
            r#"{"resourceType":"Binary","id":"b2","contentType":"text/plain","securityContext":{"reference":"DocumentReference/d2"}}"#,
        ),
    );
    put(
        "Binary",
        "b3",
        found(r#"{"resourceType":"Binary","id":"b3","contentType":"text/plain"}"#),
    );
    put(
        "MedicationRequest",
        "med1",
        found(
            r#"{"resourceType":"MedicationRequest","id":"med1","status":"active","intent":"order","medicationCodeableConcept":{"coding":[{"system":"http://www.nlm.nih.gov/research/umls/rxnorm","code":"1049502"}]},"subject":{"reference":"Patient/p1"}}"#,
        ),
    );
    m
}

fn obs_cat(id: &str, cat: &str) -> String {
    format!(
        r#"{{"resourceType":"Observation","id":"{id}","status":"final","category":[{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"{cat}"}}]}}],"subject":{{"reference":"Patient/p1"}}}}"#
    )
}

const LAB: &str = "user/Observation.cruds?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory";
const LAB_BODY: &str = r#"{"resourceType":"Observation","status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory"}]}],"code":{"text":"x"},"subject":{"reference":"Patient/p1"}}"#;
const LAB_BODY_ID_VIT1: &str = r#"{"resourceType":"Observation","id":"vit1","status":"final","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory"}]}],"code":{"text":"x"},"subject":{"reference":"Patient/p1"}}"#;
/// An Observation in p2's chart: what a p1 app must never be able to create.
const OBS_FOR_P2: &str = r#"{"resourceType":"Observation","status":"final","code":{"text":"forged"},"subject":{"reference":"Patient/p2"}}"#;
const PATIENT_BODY: &str = r#"{"resourceType":"Patient","name":[{"family":"Forged"}]}"#;
const CONDITION_LAB_P1: &str = r#"{"resourceType":"Condition","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory"}]}],"subject":{"reference":"Patient/p1"}}"#;
/// JSON Patch `[{"op":"replace","path":"/status","value":"amended"}]`, base64, as a Binary.
const BINARY_PATCH_STATUS: &str = r#"{"resourceType":"Binary","contentType":"application/json-patch+json","data":"W3sib3AiOiJyZXBsYWNlIiwicGF0aCI6Ii9zdGF0dXMiLCJ2YWx1ZSI6ImFtZW5kZWQifV0="}"#;
const RX: &str =
    "user/MedicationRequest.rus?code=http://www.nlm.nih.gov/research/umls/rxnorm|1049502";
const FP_REPLACE_MEDICATION: &str = r#"{"resourceType":"Parameters","parameter":[{"name":"operation","part":[{"name":"type","valueCode":"replace"},{"name":"path","valueString":"MedicationRequest.medication"},{"name":"value","valueCodeableConcept":{"coding":[{"system":"http://www.nlm.nih.gov/research/umls/rxnorm","code":"999999"}]}}]}]}"#;
const JP_ADD_MEDICATION_REFERENCE: &str =
    r#"[{"op":"add","path":"/medicationReference","value":{"reference":"Medication/m9"}}]"#;
/// `category` whose `coding` is an object instead of an array: HAPI's lenient parser reads it
/// as one Coding (it reports `incorrectJsonType` and goes on); fhirguard sees no coding.
const OBS_SOCIAL_CODING_OBJECT: &str = r#"{"resourceType":"Observation","status":"final","category":[{"coding":{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"social-history"}}],"code":{"text":"x"},"subject":{"reference":"Patient/p1"}}"#;

fn bundle(kind: &str, entries: &[String]) -> String {
    format!(
        r#"{{"resourceType":"Bundle","type":"{kind}","entry":[{}]}}"#,
        entries.join(",")
    )
}

fn entry(method: &str, url: &str, resource: Option<&str>, extra: &str) -> String {
    match resource {
        Some(r) => {
            format!(r#"{{"resource":{r},"request":{{"method":"{method}","url":"{url}"{extra}}}}}"#)
        }
        None => format!(r#"{{"request":{{"method":"{method}","url":"{url}"{extra}}}}}"#),
    }
}

fn run(rows: &[Row]) {
    let lookups = stored();
    let mut failures = Vec::new();
    for (rule, scopes, patient, line, body, ine, want) in rows {
        let set = parse_scopes(scopes.split(' '));
        let g = Grant {
            scopes: &set,
            patient: *patient,
            narrow: false,
            lookup_configured: true,
            lookups: Some(&lookups),
            reference_data: false,
        };
        // Refused as malformed (400) before any rule: refused.
        let got = match request(line, *body, *ine) {
            Some(req) => authorize(&g, &req),
            None => Verdict::Deny(ScopeDenial {
                rule: "400".into(),
                needed: None,
            }),
        };
        let ok = matches!(
            (want, &got),
            (Deny, Verdict::Deny(_)) | (Allowed, Verdict::Allow { .. })
        );
        if !ok {
            failures.push(format!(
                "rule {rule}: {scopes:?} patient={patient:?} {line}: must be {want:?}, got {got:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows open:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

/// Rows whose body is built at run time (bundles).
type OwnedRow = (
    &'static str,
    &'static str,
    Option<&'static str>,
    &'static str,
    String,
    Want,
);

fn run_owned(rows: Vec<OwnedRow>) {
    // The table type holds `&'static str`; tests may leak their few bodies.
    let table: Vec<Row> = rows
        .into_iter()
        .map(|(rule, scopes, patient, line, body, want)| {
            let body: &'static str = Box::leak(body.into_boxed_str());
            (rule, scopes, patient, line, Some(body), None, want)
        })
        .collect();
    run(&table);
}

// ------------------------------------------------------------------------------------------
// A. Bundle POST entries: the server creates `entry.resource`, whatever `request.url` names.
//    fhirguard judges the URL (an operation that writes nothing, another type) and never
//    compares the resource's type with it.

#[test]
fn review2_bundle_post_entry_creates_the_body() {
    run_owned(vec![
        // A read-only patient app writes into another patient's chart: the entry is judged as
        // a pinned $lastn search, HAPI creates the Observation for p2.
        (
            "A1.patient-rs-post-entry-lastn-creates-for-p2",
            "patient/Observation.rs",
            Some("p1"),
            "POST /",
            bundle(
                "batch",
                &[entry(
                    "POST",
                    "Observation/$lastn?patient=p1",
                    Some(OBS_FOR_P2),
                    "",
                )],
            ),
            Deny,
        ),
        (
            "A2.patient-r-post-entry-own-meta-creates-for-p2",
            "patient/Patient.r",
            Some("p1"),
            "POST /",
            bundle(
                "transaction",
                &[entry("POST", "Patient/p1/$meta", Some(OBS_FOR_P2), "")],
            ),
            Deny,
        ),
        (
            "A3.patient-r-post-entry-validate-own-observation",
            "patient/Observation.r",
            Some("p1"),
            "POST /",
            bundle(
                "batch",
                &[entry(
                    "POST",
                    "Observation/o1/$validate",
                    Some(OBS_FOR_P2),
                    "",
                )],
            ),
            Deny,
        ),
        // Type scopes: the URL names the granted type, the body is another.
        (
            "A4.user-type-scope-creates-another-type",
            "user/Observation.c",
            None,
            "POST /",
            bundle(
                "transaction",
                &[entry("POST", "Observation", Some(PATIENT_BODY), "")],
            ),
            Deny,
        ),
        (
            "A4b.system-type-scope-creates-another-type",
            "system/Observation.cru",
            None,
            "POST /",
            bundle(
                "batch",
                &[entry("POST", "Observation", Some(PATIENT_BODY), "")],
            ),
            Deny,
        ),
        (
            "A5.granular-scope-creates-another-type-matching-the-filter-paths",
            LAB,
            None,
            "POST /",
            bundle(
                "transaction",
                &[entry("POST", "Observation", Some(CONDITION_LAB_P1), "")],
            ),
            Deny,
        ),
        // A read-only user/ token writes through a read-only operation URL.
        (
            "A6.user-read-only-writes-through-validate",
            "user/*.rs",
            None,
            "POST /",
            bundle(
                "batch",
                &[entry("POST", "Patient/$validate", Some(PATIENT_BODY), "")],
            ),
            Deny,
        ),
        // Patient scopes check the body's type on a plain create: the same must hold for an
        // operation entry whose resource is not a Parameters.
        (
            "A7.patient-create-scope-through-operation-url",
            "patient/Observation.crs",
            Some("p1"),
            "POST /",
            bundle(
                "batch",
                &[entry(
                    "POST",
                    "Observation/$lastn?patient=p1",
                    Some(PATIENT_BODY),
                    "",
                )],
            ),
            Deny,
        ),
    ]);
}

// ------------------------------------------------------------------------------------------
// B. A transaction PATCH entry's `request.ifMatch` is HAPI's conditional URL for the patch, and
//    it wins over the id in `request.url`. fhirguard checks the URL's resource only.

#[test]
fn review2_transaction_patch_if_match_is_a_match_url() {
    let if_match_o2 = r#","ifMatch":"Observation?_id=o2""#;
    let if_match_vit1 = r#","ifMatch":"Observation?_id=vit1""#;
    run_owned(vec![
        (
            "B1.patient-patch-own-url-other-patients-match",
            "patient/Observation.u",
            Some("p1"),
            "POST /",
            bundle(
                "transaction",
                &[entry(
                    "PATCH",
                    "Observation/o1",
                    Some(BINARY_PATCH_STATUS),
                    if_match_o2,
                )],
            ),
            Deny,
        ),
        (
            "B2.granular-patch-matching-url-other-match",
            LAB,
            None,
            "POST /",
            bundle(
                "transaction",
                &[entry(
                    "PATCH",
                    "Observation/lab1",
                    Some(BINARY_PATCH_STATUS),
                    if_match_vit1,
                )],
            ),
            Deny,
        ),
        (
            "B3.batch-too",
            "patient/Observation.u",
            Some("p1"),
            "POST /",
            bundle(
                "batch",
                &[entry(
                    "PATCH",
                    "Observation/o1",
                    Some(BINARY_PATCH_STATUS),
                    if_match_o2,
                )],
            ),
            Deny,
        ),
    ]);
}

// ------------------------------------------------------------------------------------------
// C..L: single requests.

#[rustfmt::skip]
const ROWS: &[Row] = &[
    // --- C. cascading deletes through the conditional form (the by-id form is refused) ---
    ("C1.conditional-delete-own-patient-cascade", "patient/Patient.d", Some("p1"), "DELETE /Patient?_id=p1&_cascade=delete", None, None, Deny),
    ("C2.conditional-delete-single-link-type-cascade", "patient/Immunization.d", Some("p1"), "DELETE /Immunization?patient=p1&_cascade=delete", None, None, Deny),
    ("C3.user-type-scope-cascades-into-other-types", "user/Encounter.d", None, "DELETE /Encounter?_id=e1&_cascade=delete", None, None, Deny),
    ("C4.granular-delete-cascades-outside-filter", LAB, None, "DELETE /Observation?category=http://terminology.hl7.org/CodeSystem/observation-category%7Claboratory&_id=lab1&_cascade=delete", None, None, Deny),
    // --- D. granular conditional create: If-None-Exist is not bound to the filter; a match
    //        is returned to the client ---
    ("D1.granular-conditional-create-reads-any-by-id", LAB, None, "POST /Observation", Some(LAB_BODY), Some("_id=vit1"), Deny),
    ("D2.granular-conditional-create-oracle", LAB, None, "POST /Observation", Some(LAB_BODY), Some("code=http://loinc.org|55277-8&subject=Patient/p2"), Deny),
    // --- E. granular conditional update with a body id: no match => the server writes that
    //        id (the hole closed for patient scopes in round 1) ---
    ("E1.granular-conditional-update-body-id-outside-filter", LAB, None, "PUT /Observation?category=http://terminology.hl7.org/CodeSystem/observation-category%7Claboratory&identifier=urn:x%7Cnomatch", Some(LAB_BODY_ID_VIT1), None, Deny),
    // --- F. granular patch: `elements()` names JSON keys (medicationCodeableConcept), patches
    //        name FHIR elements (MedicationRequest.medication) or the other choice key ---
    ("F1.granular-fhirpath-patch-replaces-choice-element", RX, None, "PATCH /MedicationRequest/med1", Some(FP_REPLACE_MEDICATION), None, Deny),
    ("F2.granular-json-patch-adds-other-choice-key", RX, None, "PATCH /MedicationRequest/med1", Some(JP_ADD_MEDICATION_REFERENCE), None, Deny),
    // --- G. :not filters: whatever fhirguard cannot read counts as "not" ---
    ("G1.not-filter-create-coding-object", "user/Observation.c?category:not=social-history", None, "POST /Observation", Some(OBS_SOCIAL_CODING_OBJECT), None, Deny),
    ("G2.not-filter-system-on-code-reads-excluded", "user/Observation.r?status:not=http://hl7.org/fhir/observation-status|entered-in-error", None, "GET /Observation/eie1", None, None, Deny),
        // An array on a single-valued element: fhirguard matches if any item does; HAPI's
        // lenient parser reports the repetition and keeps the last item.
        (
            "G3.filter-on-single-valued-element-given-as-array",
            "user/Observation.c?status=preliminary",
            None,
            "POST /Observation",
            Some(r#"{"resourceType":"Observation","status":["preliminary","final"],"code":{"text":"x"}}"#),
            None,
            Deny,
        ),
        (
            "G4.code-filter-two-codes-on-single-valued-code",
            "user/Observation.c?code=http://loinc.org|8867-4",
            None,
            "POST /Observation",
            Some(r#"{"resourceType":"Observation","status":"final","code":[{"coding":[{"system":"http://loinc.org","code":"8867-4"}]},{"coding":[{"system":"http://loinc.org","code":"55277-8"}]}]}"#),
            None,
            Deny,
        ),
    // --- H. includes whose target list is empty pass every scope check (vacuous `all`) ---
    ("H1.patient-include-through-untargeted-param", "patient/RequestGroup.rs", Some("p1"), "GET /RequestGroup?subject=Patient/p1&_include=RequestGroup:instantiates-canonical", None, None, Deny),
    ("H2.user-include-through-untargeted-param", "user/RequestGroup.rs", None, "GET /RequestGroup?_include=RequestGroup:instantiates-canonical", None, None, Deny),
    // DeviceUseStatement `patient` is `DeviceUseStatement.subject`, which may be a Group: the
    // R4 target list (Patient) is narrower than the element.
    ("H3.user-include-target-list-narrower-than-element", "user/DeviceUseStatement.rs user/Patient.rs", None, "GET /DeviceUseStatement?_include=DeviceUseStatement:patient", None, None, Deny),
    // --- I. chains are the forward form of the `_has` oracle refused for user/ scopes ---
    ("I1.user-chain-into-unscoped-type", "user/Observation.rs", None, "GET /Observation?subject:Patient.name=Smith", None, None, Deny),
    ("I2.granular-chain-into-unscoped-type", "user/Observation.rs?category=laboratory", None, "GET /Observation?category=laboratory&patient.birthdate=1970-01-01", None, None, Deny),
    // --- J. a compartment URL plus a pin naming someone else: which one a server applies
    //        (merge order of its parameter map) is its choice ---
    ("J1.compartment-url-with-other-subject", "patient/Observation.rs", Some("p1"), "GET /Patient/p1/Observation?subject=Patient/p2", None, None, Deny),
    ("J2.compartment-url-with-other-patient", "patient/Condition.rs", Some("p1"), "GET /Patient/p1/Condition?patient=p2", None, None, Deny),
    // --- K. $stats takes `subject`, `code`, `system`...; `patient`/`category` are not its
    //        parameters and are ignored, so the pin or filter never applies ---
    ("K1.stats-pinned-by-a-non-parameter", "patient/Observation.rs", Some("p1"), "GET /Observation/$stats?patient=p1&code=8867-4&system=http://loinc.org", None, None, Deny),
    ("K2.stats-granular-filter-not-a-parameter", "user/Observation.rs?category=laboratory", None, "GET /Observation/$stats?category=laboratory&code=x&system=y", None, None, Deny),
    // --- L. docs/smart.md: ownership means "no reference anywhere else names another
    //        patient"; the stored-resource check (update/delete) does not look there ---
    ("L1.delete-stored-with-other-patient-in-focus", "patient/Observation.d", Some("p1"), "DELETE /Observation/o4", None, None, Deny),
    ("L2.patch-stored-with-other-patient-in-focus", "patient/Observation.u", Some("p1"), "PATCH /Observation/o4", Some(r#"[{"op":"replace","path":"/status","value":"amended"}]"#), None, Deny),
    // --- N. control parameters respelled inside a Parameters body are not refused (they are
    //        in the query and in forms): `_TYPE` next to `_type` ---
    ("N1.export-body-respelled-type", "system/Observation.rs", None, "POST /$export?_type=Observation", Some(r#"{"resourceType":"Parameters","parameter":[{"name":"_TYPE","valueString":"Patient,Condition"}]}"#), None, Deny),
];

#[test]
fn review2_table() {
    run(ROWS);
}

// ------------------------------------------------------------------------------------------
// M. Refusals repeat request text: a type-shaped segment that is not an R4 type.

#[test]
fn review2_denials_repeat_request_text() {
    let secret = "Zzsecretpatientname";
    let set = parse_scopes(["patient/Observation.rs"]);
    let g = Grant {
        scopes: &set,
        patient: Some("p1"),
        narrow: false,
        lookup_configured: true,
        lookups: None,
        reference_data: false,
    };
    let mut leaks = Vec::new();
    for line in [
        format!("GET /{secret}?x=1"),
        format!("GET /{secret}/abc"),
        format!("GET /Patient/p1/{secret}"),
    ] {
        if let Some(req) = request(&line, None, None)
            && let Verdict::Deny(d) = authorize(&g, &req)
            && (d.rule.contains(secret) || d.needed.as_deref().unwrap_or("").contains(secret))
        {
            leaks.push(format!("{line}: rule {:?}, hint {:?}", d.rule, d.needed));
        }
    }
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));
}

// ------------------------------------------------------------------------------------------
// Over-blocking: legitimate requests that are refused.

#[rustfmt::skip]
const OVERBLOCK: &[Row] = &[
    // A filter with alternatives can never be met: every searched alternative is compared
    // with the whole comma list.
    ("O1.granular-filter-with-alternatives-exact", "user/Observation.rs?category=laboratory,vital-signs", None, "GET /Observation?category=laboratory,vital-signs", None, None, Allowed),
    ("O1b.granular-filter-with-alternatives-one", "user/Observation.rs?category=laboratory,vital-signs", None, "GET /Observation?category=laboratory", None, None, Allowed),
    // A narrower token (system|code where the scope has code) is refused.
    ("O2.granular-request-narrower-with-system", "patient/Observation.rs?category=laboratory", Some("p1"), "GET /Observation?patient=p1&category=http://terminology.hl7.org/CodeSystem/observation-category%7Claboratory", None, None, Allowed),
    // US Core clinical notes: DocumentReference.content.attachment.url points at Binary.
    ("O3.us-core-binary-of-own-document", "patient/DocumentReference.rs patient/Binary.r", Some("p1"), "GET /Binary/b1", None, None, Allowed),
    ("O3.binary-of-another-patients-document", "patient/DocumentReference.rs patient/Binary.r", Some("p1"), "GET /Binary/b2", None, None, Deny),
    ("O3.binary-without-security-context", "patient/*.rs", Some("p1"), "GET /Binary/b3", None, None, Deny),
    ("O3.binary-needs-a-scope-on-binary", "patient/DocumentReference.rs", Some("p1"), "GET /Binary/b1", None, None, Deny),
];

#[test]
fn review2_overblock_table() {
    run(OVERBLOCK);
}
