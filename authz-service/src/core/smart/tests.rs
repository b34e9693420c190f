//! SMART App Launch 2.x enforcement, table-driven. Each row names the rule it checks; the
//! expectations are taken from the SMART App Launch 2.2 scope rules, the FHIR R4 Patient
//! CompartmentDefinition and fhirguard's documented choices (docs/smart.md).

use super::*;
use crate::core::fhir::{Body, HttpRequest, classify, normalize_path, split_path};

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Want {
    Allow,
    /// Allowed, and the allow rests on the search parameters: upstream gets
    /// `Prefer: handling=strict`.
    Strict,
    Deny,
    Lookup,
    /// Allowed with this `k=v` query parameter set upstream.
    Narrow(&'static str),
}
use Want::*;

/// (rule, scopes, patient context, "METHOD /path?query", JSON body, expected)
type Row = (
    &'static str,
    &'static str,
    Option<&'static str>,
    &'static str,
    Option<&'static str>,
    Want,
);

fn request(line: &str, body: Option<&str>) -> FhirRequest {
    let (method, target) = line.split_once(' ').unwrap();
    let (path, query) = split_path(target);
    let segs = normalize_path(path).unwrap();
    classify(HttpRequest {
        method,
        segments: &segs,
        query,
        body: body.map(|b| Body {
            bytes: b.as_bytes(),
            // JSON Patch bodies go with their own media type.
            content_type: Some(if b.starts_with('[') {
                "application/json-patch+json"
            } else {
                "application/fhir+json"
            }),
        }),
        if_none_exist: None,
    })
    .unwrap_or_else(|e| panic!("{line}: {e}"))
}

fn stored() -> Lookups {
    let mut m = Lookups::new();
    // The same answers whether fetched for a read or (fresh) for a write.
    let mut put = |t: &str, id: &str, version: Option<&str>, s: Stored| {
        for for_write in [false, true] {
            m.insert(
                LookupKey {
                    resource_type: t.to_string(),
                    id: id.to_string(),
                    version: version.map(str::to_string),
                    for_write,
                },
                s.clone(),
            );
        }
    };
    let found = |v: serde_json::Value| Stored::Found(std::sync::Arc::new(v));
    let obs = |id: &str, subject: &str| {
        found(serde_json::json!({"resourceType": "Observation", "id": id,
            "subject": {"reference": subject}}))
    };
    put("Observation", "o1", None, obs("o1", "Patient/p1"));
    put("Observation", "o2", None, obs("o2", "Patient/p2"));
    put("Observation", "gone", None, Stored::NotFound);
    put("Observation", "deleted", None, Stored::Gone);
    // o3 is p1's Observation that p2 performed: readable by p1, not p1's alone to change.
    put(
        "Observation",
        "o3",
        None,
        found(
            serde_json::json!({"resourceType": "Observation", "id": "o3",
            "subject": {"reference": "Patient/p1"}, "performer": [{"reference": "Patient/p2"}]}),
        ),
    );
    // ov moved from p2 (version 1) to p1 (version 2, current).
    put("Observation", "ov", None, obs("ov", "Patient/p1"));
    put("Observation", "ov", Some("1"), obs("ov", "Patient/p2"));
    put("Observation", "ov", Some("2"), obs("ov", "Patient/p1"));
    put("Observation", "o1", Some("1"), obs("o1", "Patient/p1"));
    put(
        "Condition",
        "c1",
        None,
        found(
            serde_json::json!({"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"}}),
        ),
    );
    put(
        "Encounter",
        "e1",
        None,
        found(
            serde_json::json!({"resourceType": "Encounter", "id": "e1", "subject": {"reference": "Patient/p1"}}),
        ),
    );
    put(
        "Encounter",
        "e2",
        None,
        found(serde_json::json!({"resourceType": "Encounter", "id": "e2"})),
    );
    m
}

fn run(rows: &[Row], narrow: bool, lookup_configured: bool, lookups: Option<&Lookups>) -> usize {
    run_with(
        rows,
        narrow,
        lookup_configured,
        lookups,
        &Settings::default(),
    )
}

/// The contested rules' settings (`userScopes`, `referenceData`).
#[derive(Default)]
struct Settings {
    reference_data: bool,
    /// `userScopes: ConfineToFhirUser`, with this `fhirUser` claim.
    confine: Option<Option<&'static str>>,
}

fn run_with(
    rows: &[Row],
    narrow: bool,
    lookup_configured: bool,
    lookups: Option<&Lookups>,
    settings: &Settings,
) -> usize {
    let mut failures = Vec::new();
    for (rule, scopes, patient, line, body, want) in rows {
        let set = parse_scopes(scopes.split(' '));
        let g = Grant {
            scopes: &set,
            patient: *patient,
            narrow,
            lookup_configured,
            lookups,
            reference_data: settings.reference_data,
        };
        let req = request(line, *body);
        let got = match settings.confine {
            Some(fhir_user) => authorize_confined(&g, fhir_user, &req),
            None => authorize(&g, &req),
        };
        let ok = match (want, &got) {
            (Allow, Verdict::Allow { narrow, strict }) => narrow.is_empty() && !strict,
            (Strict, Verdict::Allow { narrow, strict }) => narrow.is_empty() && *strict,
            (Narrow(kv), Verdict::Allow { narrow, strict }) => {
                let (k, v) = kv.split_once('=').unwrap();
                *strict && narrow == &vec![(k.to_string(), v.to_string())]
            }
            (Deny, Verdict::Deny(_)) | (Lookup, Verdict::Lookup(_)) => true,
            _ => false,
        };
        if !ok {
            failures.push(format!(
                "rule {rule}: {scopes:?} patient={patient:?} {line}: wanted {want:?}, got {got:?}"
            ));
        }
        if let Verdict::Deny(d) = &got {
            assert!(!d.rule.is_empty(), "rule {rule}: a denial names its rule");
            if let Some(needed) = &d.needed {
                assert!(
                    !scopes.split(' ').any(|s| s == needed),
                    "rule {rule}: the hint {needed} is a scope the token already holds"
                );
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    rows.len()
}

const OBS_P1: &str = r#"{"resourceType":"Observation","subject":{"reference":"Patient/p1"}}"#;
const OBS_P2: &str = r#"{"resourceType":"Observation","subject":{"reference":"Patient/p2"}}"#;
const OBS_ABS: &str = r#"{"resourceType":"Observation","subject":{"reference":"https://other.example/fhir/Patient/p1"}}"#;
const OBS_O1_P1: &str =
    r#"{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p1"}}"#;
const OBS_O1_P2: &str =
    r#"{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p2"}}"#;
const OBS_NEW_P1: &str =
    r#"{"resourceType":"Observation","id":"new","subject":{"reference":"Patient/p1"}}"#;
const OBS_PERFORMER_P1: &str = r#"{"resourceType":"Observation","subject":{"reference":"Group/g"},"performer":[{"reference":"Patient/p1"}]}"#;
const COND_P1: &str = r#"{"resourceType":"Condition","subject":{"reference":"Patient/p1"}}"#;
const PAT_P1: &str = r#"{"resourceType":"Patient","id":"p1"}"#;
const PAT_NEW: &str = r#"{"resourceType":"Patient"}"#;
const MED: &str = r#"{"resourceType":"Medication"}"#;
const ENC_P1: &str = r#"{"resourceType":"Encounter","subject":{"reference":"Patient/p1"}}"#;
/// FHIRPath Patch: replace Patient.name.
const PATCH_NAME: &str = r#"{"resourceType":"Parameters","parameter":[{"name":"operation","part":[{"name":"type","valueCode":"replace"},{"name":"path","valueString":"Patient.name"},{"name":"value","valueHumanName":{"family":"X"}}]}]}"#;

#[rustfmt::skip]
const ROWS: &[Row] = &[
    // --- permissions per interaction (user/ scopes: no patient restriction) ---
    ("perm.read-needs-r", "user/Observation.r", None, "GET /Observation/o9", None, Allow),
    ("perm.read-needs-r", "user/Observation.s", None, "GET /Observation/o9", None, Deny),
    ("perm.vread-needs-r", "user/Observation.r", None, "GET /Observation/o9/_history/2", None, Allow),
    ("perm.vread-needs-r", "user/Observation.s", None, "GET /Observation/o9/_history/2", None, Deny),
    ("perm.search-needs-s", "user/Observation.s", None, "GET /Observation?code=x", None, Allow),
    ("perm.search-needs-s", "user/Observation.r", None, "GET /Observation?code=x", None, Deny),
    ("perm.post-search-needs-s", "user/Observation.s", None, "POST /Observation/_search", Some(""), Allow),
    ("perm.history-instance-needs-r", "user/Observation.r", None, "GET /Observation/o9/_history", None, Allow),
    ("perm.history-instance-needs-r", "user/Observation.s", None, "GET /Observation/o9/_history", None, Deny),
    ("perm.history-type-needs-s", "user/Observation.s", None, "GET /Observation/_history", None, Allow),
    ("perm.history-type-needs-s", "user/Observation.r", None, "GET /Observation/_history", None, Deny),
    ("perm.create-needs-c", "user/Observation.c", None, "POST /Observation", Some(OBS_P1), Allow),
    ("perm.create-needs-c", "user/Observation.rus", None, "POST /Observation", Some(OBS_P1), Deny),
    ("perm.update-needs-u", "user/Observation.u", None, "PUT /Observation/o1", Some(OBS_O1_P1), Allow),
    ("perm.update-needs-u", "user/Observation.crds", None, "PUT /Observation/o1", Some(OBS_O1_P1), Deny),
    ("perm.patch-needs-u", "user/Observation.u", None, "PATCH /Observation/o1", None, Allow),
    ("perm.patch-needs-u", "user/Observation.cd", None, "PATCH /Observation/o1", None, Deny),
    ("perm.delete-needs-d", "user/Observation.d", None, "DELETE /Observation/o1", None, Allow),
    ("perm.delete-needs-d", "user/Observation.cru", None, "DELETE /Observation/o1", None, Deny),
    // Conditional interactions take the permission of what they do (an update that matches
    // nothing creates, so it needs c too).
    ("perm.conditional-update-needs-cu", "user/Observation.cu", None, "PUT /Observation?identifier=a|b", Some(OBS_P1), Allow),
    ("perm.conditional-update-needs-cu", "user/Observation.us", None, "PUT /Observation?identifier=a|b", Some(OBS_P1), Deny),
    ("perm.conditional-update-needs-cu", "user/Observation.u", None, "PUT /Observation?identifier=a|b", Some(OBS_P1), Deny),
    ("perm.conditional-delete-needs-d", "user/Observation.d", None, "DELETE /Observation?identifier=a|b", None, Allow),
    ("perm.conditional-delete-needs-d", "user/Observation.rs", None, "DELETE /Observation?identifier=a|b", None, Deny),
    ("perm.conditional-patch-needs-u", "user/Observation.u", None, "PATCH /Observation?identifier=a|b", None, Allow),
    ("perm.conditional-patch-needs-u", "user/Observation.s", None, "PATCH /Observation?identifier=a|b", None, Deny),
    ("perm.conditional-create-needs-cs", "user/Observation.c", None, "POST /Observation", Some(OBS_P1), Allow),
    ("perm.system-search-needs-wildcard", "user/Observation.s user/Patient.s", None, "GET /?_type=Observation", None, Deny),
    ("perm.system-search-needs-wildcard", "user/*.s", None, "GET /?_type=Observation", None, Allow),
    ("perm.system-history-needs-wildcard", "user/Observation.rs", None, "GET /_history", None, Deny),
    ("perm.system-history-needs-wildcard", "system/*.s", None, "GET /_history", None, Allow),
    ("perm.post-system-search-needs-wildcard", "user/*.s", None, "POST /_search", Some(""), Allow),
    ("perm.capabilities-need-nothing", "openid", None, "GET /metadata", None, Allow),
    ("perm.read-only-operation-needs-rs", "user/ValueSet.rs", None, "POST /ValueSet/$expand", None, Allow),
    ("perm.read-only-operation-needs-rs", "user/ValueSet.r", None, "POST /ValueSet/$expand", None, Deny),
    ("perm.writing-operation-needs-cruds", "user/Patient.rs", None, "POST /Patient/p1/$meta-add", None, Deny),
    ("perm.writing-operation-needs-cruds", "user/Patient.cruds", None, "POST /Patient/p1/$meta-add", None, Allow),
    ("perm.get-operation-is-read", "user/Observation.rs", None, "GET /Observation/$lastn?code=x", None, Allow),
    ("perm.system-operation-needs-wildcard", "user/Observation.cruds", None, "POST /$reindex", None, Deny),
    ("perm.system-operation-needs-wildcard", "system/*.cruds", None, "POST /$reindex", None, Allow),
    // --- v1 scopes map to v2 ---
    ("v1.read-is-rs", "user/Observation.read", None, "GET /Observation/o9", None, Allow),
    ("v1.read-is-rs", "user/Observation.read", None, "GET /Observation?code=x", None, Allow),
    ("v1.read-is-not-write", "user/Observation.read", None, "DELETE /Observation/o9", None, Deny),
    ("v1.write-is-cud", "user/Observation.write", None, "PUT /Observation/o1", Some(OBS_O1_P1), Allow),
    ("v1.write-is-cud", "user/Observation.write", None, "POST /Observation", Some(OBS_P1), Allow),
    ("v1.write-is-cud", "user/Observation.write", None, "DELETE /Observation/o9", None, Allow),
    ("v1.write-is-not-read", "user/Observation.write", None, "GET /Observation/o9", None, Deny),
    ("v1.star-is-cruds", "user/Observation.*", None, "GET /Observation?code=x", None, Allow),
    ("v1.star-is-cruds", "user/Observation.*", None, "DELETE /Observation/o9", None, Allow),
    ("v1.wildcard-type", "user/*.read", None, "GET /Condition/c9", None, Allow),
    // --- the grant is a union; the type must match ---
    ("scopes.union", "user/Observation.r user/Observation.s", None, "GET /Observation?code=x", None, Allow),
    ("scopes.union", "user/Observation.r user/Condition.s", None, "GET /Condition?code=x", None, Allow),
    ("scopes.type-must-match", "user/Condition.rs", None, "GET /Observation/o9", None, Deny),
    ("scopes.wildcard-type", "user/*.rs", None, "GET /Observation/o9", None, Allow),
    ("scopes.system-context", "system/Observation.rs", None, "GET /Observation/o9", None, Allow),
    ("scopes.non-resource-grant-nothing", "openid fhirUser launch launch/patient offline_access online_access", None, "GET /Observation/o9", None, Deny),
    ("scopes.no-scopes", "", None, "GET /Observation/o9", None, Deny),
    // --- malformed tokens are ignored, never partially honoured ---
    ("malformed.wrong-order", "user/Observation.sr", None, "GET /Observation/o9", None, Deny),
    ("malformed.repeated-letter", "user/Observation.rrs", None, "GET /Observation/o9", None, Deny),
    ("malformed.unknown-letter", "user/Observation.rx", None, "GET /Observation/o9", None, Deny),
    ("malformed.unknown-prefix", "group/Observation.rs", None, "GET /Observation/o9", None, Deny),
    ("malformed.case-sensitive-prefix", "User/Observation.rs", None, "GET /Observation/o9", None, Deny),
    ("malformed.case-sensitive-type", "user/observation.rs", None, "GET /Observation/o9", None, Deny),
    ("malformed.case-sensitive-perms", "user/Observation.READ", None, "GET /Observation/o9", None, Deny),
    ("malformed.prefix-of-longer-token", "user/Observation.reads", None, "GET /Observation/o9", None, Deny),
    ("malformed.prefix-of-longer-token", "user/Observation.rs_extra", None, "GET /Observation/o9", None, Deny),
    ("malformed.no-permissions", "user/Observation", None, "GET /Observation/o9", None, Deny),
    ("malformed.empty-query", "user/Observation.rs?", None, "GET /Observation?code=x", None, Deny),
    ("malformed.others-still-count", "user/Observation.sr user/Observation.r", None, "GET /Observation/o9", None, Allow),
    // --- patient context ---
    ("patient.scope-needs-context", "patient/Patient.rs", None, "GET /Patient/p1", None, Deny),
    ("patient.scope-needs-context", "patient/*.rs", None, "GET /Patient/p1", None, Deny),
    ("patient.own-patient-read", "patient/Patient.r", Some("p1"), "GET /Patient/p1", None, Allow),
    ("patient.other-patient-read", "patient/Patient.r", Some("p1"), "GET /Patient/p2", None, Deny),
    ("patient.own-patient-vread", "patient/Patient.r", Some("p1"), "GET /Patient/p1/_history/3", None, Allow),
    ("patient.own-patient-history", "patient/Patient.r", Some("p1"), "GET /Patient/p1/_history", None, Allow),
    ("patient.other-patient-history", "patient/Patient.r", Some("p1"), "GET /Patient/p2/_history", None, Deny),
    ("patient.never-narrows-user", "user/Observation.rs", Some("p1"), "GET /Observation?code=x", None, Allow),
    ("patient.never-narrows-user", "user/Patient.r", Some("p1"), "GET /Patient/p2", None, Allow),
    ("patient.never-narrows-system", "system/*.rs", Some("p1"), "GET /Observation/o2", None, Allow),
    ("patient.user-and-patient-union", "patient/Observation.rs user/Condition.rs", Some("p1"), "GET /Condition?code=x", None, Allow),
    // Strict handling only where the allow rests on parameters: a user/ search may see every
    // match anyway, and a read by id has no parameters to ignore.
    ("strict.not-for-user-search", "user/Observation.rs", None, "GET /Observation?code=x&unknown-param=y", None, Allow),
    ("strict.not-for-own-patient-read", "patient/Patient.r", Some("p1"), "GET /Patient/p1", None, Allow),
    ("strict.not-for-create", "patient/Observation.c", Some("p1"), "POST /Observation", Some(r#"{"resourceType":"Observation","subject":{"reference":"Patient/p1"}}"#), Allow),
    ("strict.for-pinned-search-with-other-params", "patient/Observation.rs", Some("p1"), "GET /Observation?patient=p1&code=x", None, Strict),
    ("patient.wildcard-type", "patient/*.rs", Some("p1"), "GET /Observation?subject=Patient/p1", None, Strict),
    ("patient.outside-compartment", "patient/Medication.rs", Some("p1"), "GET /Medication/m1", None, Deny),
    ("patient.outside-compartment", "patient/Practitioner.rs", Some("p1"), "GET /Practitioner?name=x", None, Deny),
    ("patient.outside-compartment", "patient/*.rs", Some("p1"), "GET /Organization/o1", None, Deny),
    ("patient.system-search", "patient/*.rs", Some("p1"), "GET /?_type=Observation", None, Deny),
    ("patient.system-history", "patient/*.rs", Some("p1"), "GET /_history", None, Deny),
    ("patient.type-history", "patient/Observation.rs", Some("p1"), "GET /Observation/_history", None, Deny),
    // --- patient-scoped searches must be pinned to the context patient ---
    ("compartment.pinned-subject", "patient/Observation.rs", Some("p1"), "GET /Observation?subject=Patient/p1", None, Strict),
    ("compartment.pinned-subject-encoded", "patient/Observation.rs", Some("p1"), "GET /Observation?subject=Patient%2Fp1&code=x", None, Strict),
    ("compartment.pinned-performer", "patient/Observation.rs", Some("p1"), "GET /Observation?performer=Patient/p1", None, Strict),
    ("compartment.pinned-patient-param", "patient/Condition.rs", Some("p1"), "GET /Condition?patient=p1", None, Strict),
    ("compartment.pinned-patient-param-ref", "patient/Condition.rs", Some("p1"), "GET /Condition?patient=Patient/p1", None, Strict),
    ("compartment.pinned-asserter", "patient/Condition.rs", Some("p1"), "GET /Condition?asserter=Patient/p1", None, Strict),
    ("compartment.pinned-encounter", "patient/Encounter.rs", Some("p1"), "GET /Encounter?patient=p1&date=ge2020", None, Strict),
    ("compartment.pinned-medicationrequest", "patient/MedicationRequest.rs", Some("p1"), "GET /MedicationRequest?subject=Patient/p1", None, Strict),
    ("compartment.pinned-coverage", "patient/Coverage.rs", Some("p1"), "GET /Coverage?beneficiary=Patient/p1", None, Strict),
    ("compartment.pinned-allergy-recorder", "patient/AllergyIntolerance.rs", Some("p1"), "GET /AllergyIntolerance?recorder=Patient/p1", None, Strict),
    ("compartment.pinned-type-modifier", "patient/Observation.rs", Some("p1"), "GET /Observation?subject:Patient=p1", None, Strict),
    ("compartment.clinical-patient-param", "patient/Observation.rs", Some("p1"), "GET /Observation?patient=p1", None, Strict),
    ("compartment.clinical-patient-param-reference", "patient/DiagnosticReport.rs", Some("p1"), "GET /DiagnosticReport?patient=Patient/p1&code=x", None, Strict),
    ("compartment.clinical-patient-param-other", "patient/Observation.rs", Some("p1"), "GET /Observation?patient=p2", None, Deny),
    ("compartment.clinical-patient-param-missing-modifier", "patient/Observation.rs", Some("p1"), "GET /Observation?patient:missing=true", None, Deny),
    // Coverage's `patient` is Coverage.beneficiary, a compartment element: it pins (R4 definitions).
    ("compartment.patient-param-from-the-definitions", "patient/Coverage.rs", Some("p1"), "GET /Coverage?patient=p1", None, Strict),
    ("compartment.param-outside-the-compartment-elements", "patient/Coverage.rs", Some("p1"), "GET /Coverage?payor=Patient/p1", None, Strict),
    ("compartment.non-pin-reference-param", "patient/Observation.rs", Some("p1"), "GET /Observation?focus=Patient/p1", None, Deny),
    ("compartment.pinned-repeated", "patient/Observation.rs", Some("p1"), "GET /Observation?subject=Patient/p1&subject=p1x", None, Deny),
    ("compartment.pinned-list-all-ctx", "patient/Observation.rs", Some("p1"), "GET /Observation?subject=Patient/p1,Patient/p1", None, Strict),
    ("compartment.unpinned", "patient/Observation.rs", Some("p1"), "GET /Observation?code=x", None, Deny),
    ("compartment.unpinned-empty", "patient/Observation.rs", Some("p1"), "GET /Observation", None, Deny),
    ("compartment.non-compartment-param", "patient/Observation.rs", Some("p1"), "GET /Observation?encounter=Encounter/e1", None, Deny),
    ("compartment.other-patient", "patient/Observation.rs", Some("p1"), "GET /Observation?subject=Patient/p2", None, Deny),
    ("compartment.list-with-other", "patient/Observation.rs", Some("p1"), "GET /Observation?subject=Patient/p1,Patient/p2", None, Deny),
    ("compartment.other-param-other-patient", "patient/Observation.rs", Some("p1"), "GET /Observation?subject=Patient/p1&performer=Patient/p2", None, Deny),
    ("compartment.missing-modifier", "patient/Observation.rs", Some("p1"), "GET /Observation?subject:missing=true", None, Deny),
    ("compartment.missing-with-pin", "patient/Observation.rs", Some("p1"), "GET /Observation?subject=Patient/p1&performer:missing=true", None, Deny),
    ("compartment.identifier-modifier", "patient/Observation.rs", Some("p1"), "GET /Observation?subject:identifier=mrn|1", None, Deny),
    ("compartment.chained", "patient/Observation.rs", Some("p1"), "GET /Observation?subject.name=smith", None, Deny),
    ("compartment.chained-with-pin", "patient/Observation.rs", Some("p1"), "GET /Observation?subject=Patient/p1&subject.name=x", None, Deny),
    ("compartment.chained-typed", "patient/Observation.rs", Some("p1"), "GET /Observation?subject:Patient.name=x", None, Deny),
    ("compartment.has", "patient/Observation.rs", Some("p1"), "GET /Observation?subject=Patient/p1&_has:Observation:part-of:code=x", None, Deny),
    ("compartment.has-on-patient", "patient/Patient.rs", Some("p1"), "GET /Patient?_id=p1&_has:Observation:patient:code=x", None, Deny),
    ("compartment.named-query", "patient/Observation.rs", Some("p1"), "GET /Observation?subject=Patient/p1&_query=everything", None, Deny),
    ("compartment.bare-id-ambiguous-subject", "patient/Observation.rs", Some("p1"), "GET /Observation?subject=p1", None, Deny),
    ("compartment.absolute-reference", "patient/Observation.rs", Some("p1"), "GET /Observation?subject=https://other.example/fhir/Patient/p1", None, Deny),
    ("compartment.versioned-reference", "patient/Observation.rs", Some("p1"), "GET /Observation?subject=Patient/p1/_history/1", None, Deny),
    ("compartment.group-reference", "patient/Observation.rs", Some("p1"), "GET /Observation?subject=Group/p1", None, Deny),
    ("compartment.post-search-pinned", "patient/Observation.rs", Some("p1"), "POST /Observation/_search", None, Deny),
    ("compartment.url", "patient/Observation.rs", Some("p1"), "GET /Patient/p1/Observation", None, Strict),
    ("compartment.url-with-params", "patient/Observation.rs", Some("p1"), "GET /Patient/p1/Observation?code=x", None, Strict),
    ("compartment.url-other-patient", "patient/Observation.rs", Some("p1"), "GET /Patient/p2/Observation", None, Deny),
    // The compartment holds the other Patients that link to the context patient.
    ("compartment.url-all-types-needs-type-list", "patient/*.rs", Some("p1"), "GET /Patient/p1/*", None, Deny),
    ("compartment.url-all-types-listed", "patient/*.rs", Some("p1"), "GET /Patient/p1/*?_type=Observation,Condition", None, Strict),
    ("compartment.url-all-types-listing-patient", "patient/*.rs", Some("p1"), "GET /Patient/p1/*?_type=Observation,Patient", None, Deny),
    ("compartment.url-type-patient", "patient/Patient.rs", Some("p1"), "GET /Patient/p1/Patient", None, Deny),
    ("compartment.url-all-types-needs-wildcard", "patient/Observation.rs", Some("p1"), "GET /Patient/p1/*", None, Deny),
    ("compartment.url-other-compartment", "patient/Observation.rs", Some("p1"), "GET /Encounter/e1/Observation", None, Deny),
    ("compartment.url-needs-s", "patient/Observation.r", Some("p1"), "GET /Patient/p1/Observation", None, Deny),
    ("compartment.url-user-scope", "user/Observation.rs", None, "GET /Encounter/e1/Observation", None, Allow),
    // --- Patient?_id= ---
    ("patient-search.id-is-context", "patient/Patient.rs", Some("p1"), "GET /Patient?_id=p1", None, Strict),
    ("patient-search.id-with-other-params", "patient/Patient.rs", Some("p1"), "GET /Patient?_id=p1&name=x", None, Strict),
    ("patient-search.id-other", "patient/Patient.rs", Some("p1"), "GET /Patient?_id=p2", None, Deny),
    ("patient-search.id-list-with-other", "patient/Patient.rs", Some("p1"), "GET /Patient?_id=p1,p2", None, Deny),
    ("patient-search.no-id", "patient/Patient.rs", Some("p1"), "GET /Patient?name=smith", None, Deny),
    ("patient-search.id-modifier", "patient/Patient.rs", Some("p1"), "GET /Patient?_id:missing=false", None, Deny),
    ("patient-search.link-is-not-id", "patient/Patient.rs", Some("p1"), "GET /Patient?link=Patient/p1", None, Deny),
    // --- _include / _revinclude ---
    ("include.target-covered", "user/Observation.rs user/Practitioner.rs", None, "GET /Observation?code=x&_include=Observation:performer:Practitioner", None, Allow),
    ("include.target-not-covered", "user/Observation.rs", None, "GET /Observation?code=x&_include=Observation:performer:Practitioner", None, Deny),
    ("include.no-target-type-needs-every-target", "user/Observation.rs user/Practitioner.rs", None, "GET /Observation?code=x&_include=Observation:performer", None, Deny),
    // The target types of Observation.performer come from the R4 SearchParameter.
    ("include.no-target-type-every-target-covered", "user/Observation.rs user/Practitioner.rs user/PractitionerRole.rs user/Organization.rs user/CareTeam.rs user/Patient.rs user/RelatedPerson.rs", None, "GET /Observation?code=x&_include=Observation:performer", None, Allow),
    ("include.encounter-patient-target", "user/Encounter.rs user/Patient.rs", None, "GET /Encounter?date=ge2020&_include=Encounter:patient", None, Allow),
    ("include.no-target-type-wildcard", "user/*.rs", None, "GET /Observation?code=x&_include=Observation:performer", None, Allow),
    ("include.star", "user/Observation.rs user/Patient.rs", None, "GET /Observation?code=x&_include=*", None, Deny),
    ("include.iterate-needs-wildcard", "user/Observation.rs user/Practitioner.rs", None, "GET /Observation?code=x&_include:iterate=Observation:performer:Practitioner", None, Deny),
    ("include.patient-scope-covered", "patient/Observation.rs patient/Patient.rs", Some("p1"), "GET /Observation?subject=Patient/p1&_include=Observation:subject:Patient", None, Strict),
    ("include.patient-scope-not-covered", "patient/Observation.rs", Some("p1"), "GET /Observation?subject=Patient/p1&_include=Observation:subject:Patient", None, Deny),
    ("include.granular-scope-does-not-cover", "user/Observation.rs user/Practitioner.rs?active=true", None, "GET /Observation?code=x&_include=Observation:performer:Practitioner", None, Deny),
    ("revinclude.source-covered", "user/Patient.rs user/Provenance.rs", None, "GET /Patient?name=x&_revinclude=Provenance:target", None, Allow),
    ("revinclude.source-not-covered", "user/Patient.rs", None, "GET /Patient?name=x&_revinclude=Provenance:target", None, Deny),
    // Provenance:target is not a compartment link of the Observations it targets: refused.
    ("revinclude.patient-scope-through-non-compartment-param", "patient/Observation.rs patient/Provenance.rs", Some("p1"), "GET /Observation?subject=Patient/p1&_revinclude=Provenance:target", None, Deny),
    // --- reads, updates and deletes by id depend on the stored resource ---
    ("lookup.read-in-compartment", "patient/Observation.rs", Some("p1"), "GET /Observation/o1", None, Allow),
    ("lookup.read-other-compartment", "patient/Observation.rs", Some("p1"), "GET /Observation/o2", None, Deny),
    ("lookup.read-nothing-stored", "patient/Observation.rs", Some("p1"), "GET /Observation/gone", None, Deny),
    ("lookup.read-unknown-asks", "patient/Observation.rs", Some("p1"), "GET /Observation/o77", None, Lookup),
    ("lookup.vread-in-compartment", "patient/Observation.rs", Some("p1"), "GET /Observation/o1/_history/1", None, Allow),
    ("lookup.vread-asks-for-that-version", "patient/Observation.rs", Some("p1"), "GET /Observation/o1/_history/7", None, Lookup),
    ("lookup.history-instance", "patient/Observation.rs", Some("p1"), "GET /Observation/o2/_history", None, Deny),
    ("lookup.condition", "patient/Condition.rs", Some("p1"), "GET /Condition/c1", None, Allow),
    ("lookup.encounter", "patient/Encounter.r", Some("p1"), "GET /Encounter/e1", None, Allow),
    ("lookup.stored-in-no-compartment", "patient/Encounter.r", Some("p1"), "GET /Encounter/e2", None, Deny),
    ("lookup.other-context", "patient/Observation.rs", Some("p2"), "GET /Observation/o2", None, Allow),
    ("lookup.other-context", "patient/Observation.rs", Some("p2"), "GET /Observation/o1", None, Deny),
    ("lookup.delete-in-compartment", "patient/Observation.d", Some("p1"), "DELETE /Observation/o1", None, Allow),
    ("lookup.delete-other", "patient/Observation.d", Some("p1"), "DELETE /Observation/o2", None, Deny),
    ("lookup.delete-nothing-stored", "patient/Observation.d", Some("p1"), "DELETE /Observation/gone", None, Deny),
    ("lookup.delete-own-patient", "patient/Patient.d", Some("p1"), "DELETE /Patient/p1", None, Allow),
    ("lookup.delete-other-patient", "patient/Patient.d", Some("p1"), "DELETE /Patient/p2", None, Deny),
    ("lookup.user-scope-needs-none", "user/Observation.r", Some("p1"), "GET /Observation/o2", None, Allow),
    ("lookup.instance-operation", "patient/Observation.rs", Some("p1"), "GET /Observation/o1/$meta", None, Allow),
    ("lookup.instance-operation-other", "patient/Observation.rs", Some("p1"), "GET /Observation/o2/$meta", None, Deny),
    // --- bodies of creates and updates under patient scopes ---
    ("body.create-references-context", "patient/Observation.c", Some("p1"), "POST /Observation", Some(OBS_P1), Allow),
    ("body.create-via-other-compartment-param", "patient/Observation.c", Some("p1"), "POST /Observation", Some(OBS_PERFORMER_P1), Allow),
    ("body.create-other-patient", "patient/Observation.c", Some("p1"), "POST /Observation", Some(OBS_P2), Deny),
    ("body.create-absolute-reference", "patient/Observation.c", Some("p1"), "POST /Observation", Some(OBS_ABS), Deny),
    ("body.create-condition", "patient/Condition.c", Some("p1"), "POST /Condition", Some(COND_P1), Allow),
    ("body.create-no-body", "patient/Observation.c", Some("p1"), "POST /Observation", None, Deny),
    ("body.create-patient-needs-user", "patient/Patient.c", Some("p1"), "POST /Patient", Some(PAT_NEW), Deny),
    ("body.create-patient-user", "user/Patient.c", None, "POST /Patient", Some(PAT_NEW), Allow),
    ("body.create-patient-system", "system/Patient.c", None, "POST /Patient", Some(PAT_NEW), Allow),
    ("body.create-outside-compartment", "patient/Medication.c", Some("p1"), "POST /Medication", Some(MED), Deny),
    ("body.update-in-compartment", "patient/Observation.u", Some("p1"), "PUT /Observation/o1", Some(OBS_O1_P1), Allow),
    ("body.update-moves-to-other", "patient/Observation.u", Some("p1"), "PUT /Observation/o1", Some(OBS_O1_P2), Deny),
    ("body.update-stored-elsewhere", "patient/Observation.u", Some("p2"), "PUT /Observation/o1", Some(r#"{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p2"}}"#), Deny),
    ("body.update-id-mismatch", "patient/Observation.u", Some("p1"), "PUT /Observation/o1", Some(OBS_NEW_P1), Deny),
    ("body.update-no-id", "patient/Observation.u", Some("p1"), "PUT /Observation/o1", Some(OBS_P1), Deny),
    ("body.upsert-new-resource", "patient/Observation.u", Some("p1"), "PUT /Observation/gone", Some(r#"{"resourceType":"Observation","id":"gone","subject":{"reference":"Patient/p1"}}"#), Allow),
    ("body.update-unknown-asks", "patient/Observation.u", Some("p1"), "PUT /Observation/new", Some(OBS_NEW_P1), Lookup),
    ("body.update-own-patient", "patient/Patient.u", Some("p1"), "PUT /Patient/p1", Some(PAT_P1), Allow),
    ("body.update-own-patient-id-mismatch", "patient/Patient.u", Some("p1"), "PUT /Patient/p1", Some(r#"{"resourceType":"Patient","id":"p2"}"#), Deny),
    ("body.update-other-patient", "patient/Patient.u", Some("p1"), "PUT /Patient/p2", Some(r#"{"resourceType":"Patient","id":"p2"}"#), Deny),
    ("body.patch-own-patient", "patient/Patient.u", Some("p1"), "PATCH /Patient/p1", Some(PATCH_NAME), Allow),
    ("body.patch-own-patient-unseen", "patient/Patient.u", Some("p1"), "PATCH /Patient/p1", None, Deny),
    ("body.patch-not-provable", "patient/Observation.u", Some("p1"), "PATCH /Observation/o1", None, Deny),
    // --- conditional interactions under patient scopes ---
    // Conditional writes only on types linked to patients through their subject alone
    // (Observation also links through performer, so a match could be another patient's).
    ("conditional.update-pinned-shared-type", "patient/Observation.cu", Some("p1"), "PUT /Observation?subject=Patient/p1&identifier=a|b", Some(OBS_P1), Deny),
    ("conditional.update-pinned", "patient/Encounter.cu", Some("p1"), "PUT /Encounter?patient=p1&identifier=a|b", Some(ENC_P1), Strict),
    ("conditional.update-pinned-body-id", "patient/Encounter.cu", Some("p1"), "PUT /Encounter?patient=p1&identifier=a|b", Some(r#"{"resourceType":"Encounter","id":"e2","subject":{"reference":"Patient/p1"}}"#), Deny),
    ("conditional.update-pinned-needs-c", "patient/Observation.us", Some("p1"), "PUT /Observation?subject=Patient/p1&identifier=a|b", Some(OBS_P1), Deny),
    ("conditional.update-unpinned", "patient/Observation.cu", Some("p1"), "PUT /Observation?identifier=a|b", Some(OBS_P1), Deny),
    ("conditional.update-body-elsewhere", "patient/Observation.cu", Some("p1"), "PUT /Observation?subject=Patient/p1&identifier=a|b", Some(OBS_P2), Deny),
    ("conditional.update-criteria-other", "patient/Observation.cu", Some("p1"), "PUT /Observation?subject=Patient/p2", Some(OBS_P1), Deny),
    ("conditional.delete-pinned-shared-type", "patient/Observation.d", Some("p1"), "DELETE /Observation?subject=Patient/p1&code=x", None, Deny),
    ("conditional.delete-pinned", "patient/MedicationRequest.d", Some("p1"), "DELETE /MedicationRequest?subject=Patient/p1&status=draft", None, Strict),
    ("conditional.delete-pinned-patient-param", "patient/DiagnosticReport.d", Some("p1"), "DELETE /DiagnosticReport?patient=p1&code=x", None, Strict),
    ("conditional.delete-unpinned", "patient/Observation.ds", Some("p1"), "DELETE /Observation?code=x", None, Deny),
    ("conditional.delete-other", "patient/Observation.ds", Some("p1"), "DELETE /Observation?subject=Patient/p2", None, Deny),
    ("conditional.patch-refused", "patient/Observation.us", Some("p1"), "PATCH /Observation?subject=Patient/p1", None, Deny),
    ("conditional.patient-update-pinned", "patient/Patient.cu", Some("p1"), "PUT /Patient?_id=p1", Some(PAT_P1), Strict),
    // --- granular (v2 query) scopes ---
    ("granular.search-with-filter", "user/Observation.rs?category=laboratory", None, "GET /Observation?category=laboratory", None, Strict),
    ("granular.search-with-filter-and-more", "user/Observation.rs?category=laboratory", None, "GET /Observation?category=laboratory&code=x", None, Strict),
    ("granular.search-without-filter", "user/Observation.rs?category=laboratory", None, "GET /Observation?code=x", None, Deny),
    ("granular.search-other-value", "user/Observation.rs?category=laboratory", None, "GET /Observation?category=vital-signs", None, Deny),
    ("granular.search-widened-list", "user/Observation.rs?category=laboratory", None, "GET /Observation?category=laboratory,vital-signs", None, Deny),
    ("granular.search-repeated-other", "user/Observation.rs?category=laboratory", None, "GET /Observation?category=laboratory&category=vital-signs", None, Deny),
    ("granular.system-value", "user/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory", None, "GET /Observation?category=http://terminology.hl7.org/CodeSystem/observation-category%7Claboratory", None, Strict),
    ("granular.read-by-id-unprovable", "user/Observation.rs?category=laboratory", None, "GET /Observation/o1", None, Deny),
    ("granular.write-unprovable", "user/Observation.cud?category=laboratory", None, "POST /Observation", Some(OBS_P1), Deny),
    ("granular.patient-needs-pin-too", "patient/Observation.rs?category=laboratory", Some("p1"), "GET /Observation?category=laboratory", None, Deny),
    ("granular.patient-pinned", "patient/Observation.rs?category=laboratory", Some("p1"), "GET /Observation?category=laboratory&subject=Patient/p1", None, Strict),
    ("granular.union-with-plain", "user/Observation.rs?category=laboratory user/Observation.r", None, "GET /Observation/o1", None, Allow),
    // --- $everything ---
    // A server's $everything follows references past the compartment (HAPI: recursively;
    // Microsoft: seealso patients): never under patient/ scopes.
    ("everything.own-patient-wildcard", "patient/*.rs", Some("p1"), "GET /Patient/p1/$everything", None, Deny),
    ("everything.own-patient-post", "patient/*.rs", Some("p1"), "POST /Patient/p1/$everything", None, Deny),
    ("everything.other-patient", "patient/*.rs", Some("p1"), "GET /Patient/p2/$everything", None, Deny),
    ("everything.type-level", "patient/*.rs", Some("p1"), "GET /Patient/$everything", None, Deny),
    ("everything.type-level-user", "user/*.rs", None, "GET /Patient/$everything", None, Allow),
    ("everything.needs-wildcard", "patient/Observation.rs patient/Patient.rs", Some("p1"), "GET /Patient/p1/$everything", None, Deny),
    ("everything.types-listed-do-not-bound-it", "patient/Observation.rs patient/Patient.rs", Some("p1"), "GET /Patient/p1/$everything?_type=Observation,Patient", None, Deny),
    ("everything.user-types-listed-do-not-bound-it", "user/Observation.rs user/Patient.rs", None, "GET /Patient/p1/$everything?_type=Observation,Patient", None, Deny),
    ("everything.types-listed-not-covered", "patient/Observation.rs", Some("p1"), "GET /Patient/p1/$everything?_type=Observation,Condition", None, Deny),
    ("everything.needs-rs", "patient/*.r", Some("p1"), "GET /Patient/p1/$everything", None, Deny),
    ("everything.user-any-patient", "user/*.rs", None, "GET /Patient/p2/$everything", None, Allow),
    ("everything.user-despite-context", "user/*.rs", Some("p1"), "GET /Patient/p2/$everything", None, Allow),
    ("everything.no-context", "patient/*.rs", None, "GET /Patient/p1/$everything", None, Deny),
    // --- bulk $export needs system/ scopes ---
    ("export.system-wildcard", "system/*.rs", None, "GET /$export", None, Allow),
    ("export.system-wildcard-group", "system/*.rs", None, "GET /Group/g1/$export", None, Allow),
    ("export.system-wildcard-patient", "system/*.rs", None, "GET /Patient/$export", None, Allow),
    ("export.user-refused", "user/*.rs", None, "GET /$export", None, Deny),
    ("export.patient-refused", "patient/*.rs", Some("p1"), "GET /Patient/$export", None, Deny),
    ("export.types-listed", "system/Observation.rs system/Patient.rs", None, "GET /$export?_type=Observation,Patient", None, Allow),
    ("export.types-listed-not-covered", "system/Observation.rs", None, "GET /$export?_type=Observation,Patient", None, Deny),
    ("export.typed-needs-types", "system/Observation.rs", None, "GET /$export", None, Deny),
    ("export.needs-rs", "system/*.r", None, "GET /$export", None, Deny),
    // --- batch and transaction: every entry decides; one refusal refuses the bundle ---
    ("bundle.all-entries-pass", "patient/Observation.rs patient/Patient.r", Some("p1"), "POST /",
        Some(r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Patient/p1"}},{"request":{"method":"GET","url":"Observation?subject=Patient/p1"}}]}"#), Strict),
    ("bundle.one-entry-fails", "patient/Observation.rs patient/Patient.r", Some("p1"), "POST /",
        Some(r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Patient/p1"}},{"request":{"method":"GET","url":"Patient/p2"}}]}"#), Deny),
    ("bundle.transaction-create-other", "patient/Observation.c", Some("p1"), "POST /",
        Some(r#"{"resourceType":"Bundle","type":"transaction","entry":[{"resource":{"resourceType":"Observation","subject":{"reference":"Patient/p1"}},"request":{"method":"POST","url":"Observation"}},{"resource":{"resourceType":"Observation","subject":{"reference":"Patient/p2"}},"request":{"method":"POST","url":"Observation"}}]}"#), Deny),
    ("bundle.transaction-creates", "patient/Observation.c patient/Condition.c", Some("p1"), "POST /",
        Some(r#"{"resourceType":"Bundle","type":"transaction","entry":[{"resource":{"resourceType":"Observation","subject":{"reference":"Patient/p1"}},"request":{"method":"POST","url":"Observation"}},{"resource":{"resourceType":"Condition","subject":{"reference":"Patient/p1"}},"request":{"method":"POST","url":"Condition"}}]}"#), Allow),
    ("bundle.entry-needs-scope", "user/Observation.rs", None, "POST /",
        Some(r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Observation/o1"}},{"request":{"method":"DELETE","url":"Observation/o1"}}]}"#), Deny),
    ("bundle.entry-lookups", "patient/Observation.rs", Some("p1"), "POST /",
        Some(r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Observation/o1"}},{"request":{"method":"GET","url":"Observation/o55"}}]}"#), Lookup),
    ("bundle.entry-lookup-answered", "patient/Observation.rs", Some("p1"), "POST /",
        Some(r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Observation/o1"}},{"request":{"method":"GET","url":"Observation/o2"}}]}"#), Deny),
    ("bundle.empty", "user/Observation.rs", None, "POST /", Some(r#"{"resourceType":"Bundle","type":"batch"}"#), Allow),
    ("bundle.uninspected", "user/*.cruds", None, "POST /", None, Deny),
];

#[test]
fn smart_rules_table() {
    assert_eq!(run(ROWS, false, true, Some(&stored())), ROWS.len());
}

/// `patientSearch: Narrow`: an unpinned patient-scoped search is narrowed to the context
/// patient with Envoy's query rewrite instead of being refused; everything else is unchanged.
#[rustfmt::skip]
const NARROW_ROWS: &[Row] = &[
    ("narrow.unpinned-observation", "patient/Observation.rs", Some("p1"), "GET /Observation?code=x", None, Narrow("subject=Patient/p1")),
    ("narrow.unpinned-condition-prefers-patient", "patient/Condition.rs", Some("p1"), "GET /Condition", None, Narrow("patient=Patient/p1")),
    ("narrow.unpinned-patient", "patient/Patient.rs", Some("p1"), "GET /Patient?name=x", None, Narrow("_id=p1")),
    ("narrow.unpinned-coverage", "patient/Coverage.rs", Some("p1"), "GET /Coverage", None, Narrow("policy-holder=Patient/p1")),
    ("narrow.pinned-unchanged", "patient/Observation.rs", Some("p1"), "GET /Observation?subject=Patient/p1", None, Strict),
    ("narrow.other-patient-still-refused", "patient/Observation.rs", Some("p1"), "GET /Observation?subject=Patient/p2", None, Deny),
    ("narrow.chained-still-refused", "patient/Observation.rs", Some("p1"), "GET /Observation?subject.name=x", None, Deny),
    ("narrow.has-still-refused", "patient/Observation.rs", Some("p1"), "GET /Observation?_has:Observation:part-of:code=x", None, Deny),
    ("narrow.unseen-post-body-refused", "patient/Observation.rs", Some("p1"), "POST /Observation/_search", None, Deny),
    ("narrow.outside-compartment", "patient/Medication.rs", Some("p1"), "GET /Medication", None, Deny),
    ("narrow.user-scope-not-narrowed", "user/Observation.rs", Some("p1"), "GET /Observation?code=x", None, Allow),
    ("narrow.include-still-checked", "patient/Observation.rs", Some("p1"), "GET /Observation?_include=Observation:performer:Practitioner", None, Deny),
    ("narrow.not-in-bundles", "patient/Observation.rs", Some("p1"), "POST /",
        Some(r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Observation?code=x"}}]}"#), Deny),
    ("narrow.conditional-delete-not-narrowed", "patient/Observation.ds", Some("p1"), "DELETE /Observation?code=x", None, Deny),
];

#[test]
fn narrowing_table() {
    assert_eq!(
        run(NARROW_ROWS, true, true, Some(&stored())),
        NARROW_ROWS.len()
    );
}

/// Without `compartmentLookup`, a patient-scoped read, update or delete by id of anything but
/// the context Patient is refused.
#[rustfmt::skip]
const NO_LOOKUP_ROWS: &[Row] = &[
    ("no-lookup.read-refused", "patient/Observation.rs", Some("p1"), "GET /Observation/o1", None, Deny),
    ("no-lookup.delete-refused", "patient/Observation.d", Some("p1"), "DELETE /Observation/o1", None, Deny),
    ("no-lookup.update-refused", "patient/Observation.u", Some("p1"), "PUT /Observation/o1", Some(OBS_O1_P1), Deny),
    ("no-lookup.own-patient-fine", "patient/Patient.r", Some("p1"), "GET /Patient/p1", None, Allow),
    ("no-lookup.search-fine", "patient/Observation.rs", Some("p1"), "GET /Observation?subject=Patient/p1", None, Strict),
    ("no-lookup.create-fine", "patient/Observation.c", Some("p1"), "POST /Observation", Some(OBS_P1), Allow),
    ("no-lookup.user-fine", "user/Observation.rs", None, "GET /Observation/o1", None, Allow),
];

#[test]
fn without_compartment_lookup_table() {
    assert_eq!(
        run(NO_LOOKUP_ROWS, false, false, None),
        NO_LOOKUP_ROWS.len()
    );
}

#[test]
fn first_round_asks_for_lookups_and_second_decides() {
    let set = parse_scopes(["patient/Observation.rs"]);
    let req = request("GET /Observation/o1", None);
    let g = Grant {
        scopes: &set,
        patient: Some("p1"),
        narrow: false,
        lookup_configured: true,
        lookups: None,
        reference_data: false,
    };
    assert_eq!(
        authorize(&g, &req),
        Verdict::Lookup(vec![LookupKey::current("Observation", "o1")])
    );
    let answers = stored();
    let g = Grant {
        lookups: Some(&answers),
        reference_data: false,
        ..g
    };
    assert_eq!(
        authorize(&g, &req),
        Verdict::Allow {
            narrow: vec![],
            strict: false
        }
    );
}

#[test]
fn denials_name_a_scope_that_would_allow() {
    let cases = [
        (
            "user/Patient.rs",
            None,
            "GET /Observation?code=x",
            "user/Observation.s",
        ),
        (
            "patient/Observation.r",
            Some("p1"),
            "GET /Patient/p1/Observation",
            "patient/Observation.s",
        ),
        (
            "user/Observation.rs",
            None,
            "DELETE /Observation/o1",
            "user/Observation.d",
        ),
        ("user/*.rs", None, "GET /$export", "system/*.rs"),
        (
            "user/Observation.rs",
            None,
            "GET /Patient/p1/$everything",
            "user/*.rs",
        ),
    ];
    for (scopes, patient, line, want) in cases {
        let set = parse_scopes(scopes.split(' '));
        let g = Grant {
            scopes: &set,
            patient,
            narrow: false,
            lookup_configured: true,
            lookups: None,
            reference_data: false,
        };
        let Verdict::Deny(d) = authorize(&g, &request(line, None)) else {
            panic!("{line}")
        };
        assert_eq!(d.needed.as_deref(), Some(want), "{line}");
    }
}

type Parsed = (Context, Option<&'static str>, &'static str);

/// Scope grammar, token by token: (token, parses as (context, type, letters) or not).
#[rustfmt::skip]
const GRAMMAR: &[(&str, Option<Parsed>)] = &[
    ("patient/Observation.rs", Some((Context::Patient, Some("Observation"), "rs"))),
    ("user/*.cruds", Some((Context::User, None, "cruds"))),
    ("system/Patient.read", Some((Context::System, Some("Patient"), "rs"))),
    ("user/Patient.write", Some((Context::User, Some("Patient"), "cud"))),
    ("user/*.*", Some((Context::User, None, "cruds"))),
    ("patient/Condition.c", Some((Context::Patient, Some("Condition"), "c"))),
    ("patient/Condition.cud", Some((Context::Patient, Some("Condition"), "cud"))),
    ("patient/Condition.crus", Some((Context::Patient, Some("Condition"), "crus"))),
    ("patient/Condition.ds", Some((Context::Patient, Some("Condition"), "ds"))),
    ("system/*.s", Some((Context::System, None, "s"))),
    ("patient/Observation.sr", None),
    ("patient/Observation.rr", None),
    ("patient/Observation.x", None),
    ("patient/Observation.", None),
    ("Patient/Observation.rs", None),
    ("group/Observation.rs", None),
    ("patient/observation.rs", None),
    ("patient/Observation.READ", None),
    ("patient/Observation.reads", None),
    ("patient/Observation", None),
    ("patient/.rs", None),
    ("patient/Observation.rs?", None),
    ("patient/Obs-ervation.rs", None),
    ("patient//Observation.rs", None),
    ("patient/Observation.rs.rs", None),
    ("openid", None),
    ("launch/patient", None),
];

#[test]
fn grammar_table() {
    for (token, want) in GRAMMAR {
        let got =
            parse_scope(token).map(|s| (s.context, s.resource_type.clone(), s.perms.letters()));
        let want = want.map(|(c, t, l)| (c, t.map(str::to_string), l.to_string()));
        assert_eq!(got, want, "{token}");
    }
    let set = parse_scopes(
        "openid fhirUser launch/patient patient/Observation.rs bogus user/Patient.sr".split(' '),
    );
    assert_eq!(set.scopes.len(), 1);
    assert_eq!(
        set.ignored,
        vec!["bogus", "user/Patient.sr"],
        "malformed tokens are listed, non-resource ones are not"
    );
    let granular = parse_scope("patient/Observation.rs?category=laboratory").unwrap();
    assert_eq!(granular.query.as_deref(), Some("category=laboratory"));
}

#[test]
fn the_tables_hold_at_least_two_hundred_cases() {
    assert!(ROWS.len() + NARROW_ROWS.len() + NO_LOOKUP_ROWS.len() + GRAMMAR.len() >= 200);
}

// ------------------------------------------------------------------------------------------
// Isolation: no request from a patient-scoped app reaches another patient's data. Each class
// below is a way past a pin, a body check or a lookup that earlier rules let through; the rows
// are variants of the class, not single examples.

const OBS_SUBJECT_P2_PERFORMER_P1: &str = r#"{"resourceType":"Observation","subject":{"reference":"Patient/p2"},"performer":[{"reference":"Patient/p1"}]}"#;
const OBS_P1_PERFORMER_P2: &str = r#"{"resourceType":"Observation","subject":{"reference":"Patient/p1"},"performer":[{"reference":"Patient/p2"}]}"#;
const OBS_CONDITIONAL_SUBJECT: &str = r#"{"resourceType":"Observation","subject":{"reference":"Patient?identifier=mrn|456"},"performer":[{"reference":"Patient/p1"}]}"#;
const OBS_LOGICAL_SUBJECT: &str = r#"{"resourceType":"Observation","subject":{"identifier":{"system":"mrn","value":"456"}},"performer":[{"reference":"Patient/p1"}]}"#;
const OBS_URN_SUBJECT: &str = r#"{"resourceType":"Observation","subject":{"reference":"urn:uuid:2f1c"},"performer":[{"reference":"Patient/p1"}]}"#;
const OBS_CONTAINED_SUBJECT: &str = r##"{"resourceType":"Observation","contained":[{"resourceType":"Patient","id":"x"}],"subject":{"reference":"#x"},"performer":[{"reference":"Patient/p1"}]}"##;
const OBS_FOCUS_P2: &str = r#"{"resourceType":"Observation","subject":{"reference":"Patient/p1"},"focus":[{"reference":"Patient/p2"}]}"#;
const OBS_EXTENSION_P2: &str = r#"{"resourceType":"Observation","subject":{"reference":"Patient/p1"},"extension":[{"url":"http://x","valueReference":{"reference":"Patient/p2"}}]}"#;
const OBS_TYPED_SUBJECT_MISMATCH: &str =
    r#"{"resourceType":"Observation","subject":{"reference":"Patient/p1","type":"Group"}}"#;
const OBS_GROUP_SUBJECT_PERFORMER_P1: &str = r#"{"resourceType":"Observation","subject":{"reference":"Group/g"},"performer":[{"reference":"Patient/p1"}]}"#;
const OBS_O1_PERFORMER_P2: &str = r#"{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p1"},"performer":[{"reference":"Patient/p2"}]}"#;
const OBS_O3_P1: &str =
    r#"{"resourceType":"Observation","id":"o3","subject":{"reference":"Patient/p1"}}"#;
const OBS_DELETED_P1: &str =
    r#"{"resourceType":"Observation","id":"deleted","subject":{"reference":"Patient/p1"}}"#;
const PAT_P1_LINK_P2: &str = r#"{"resourceType":"Patient","id":"p1","link":[{"other":{"reference":"Patient/p2"},"type":"seealso"}]}"#;
const PATCH_LINK: &str = r#"{"resourceType":"Parameters","parameter":[{"name":"operation","part":[{"name":"type","valueCode":"add"},{"name":"path","valueString":"Patient"},{"name":"name","valueString":"link"},{"name":"value","part":[{"name":"other","valueReference":{"reference":"Patient/p2"}}]}]}]}"#;
const PATCH_META: &str = r#"{"resourceType":"Parameters","parameter":[{"name":"operation","part":[{"name":"type","valueCode":"replace"},{"name":"path","valueString":"Patient.meta"},{"name":"value","valueMeta":{"security":[]}}]}]}"#;
const PATCH_REF_P2: &str = r#"{"resourceType":"Parameters","parameter":[{"name":"operation","part":[{"name":"type","valueCode":"replace"},{"name":"path","valueString":"Patient.generalPractitioner"},{"name":"value","valueReference":{"reference":"Patient/p2"}}]}]}"#;
const PATCH_UNREADABLE_PATH: &str = r#"{"resourceType":"Parameters","parameter":[{"name":"operation","part":[{"name":"type","valueCode":"delete"},{"name":"path","valueString":"Patient.descendants().where(true)"}]}]}"#;
const EVERYTHING_TYPES_OTHER: &str = r#"{"resourceType":"Parameters","parameter":[{"name":"_type","valueString":"Condition,MedicationRequest"}]}"#;
const EVERYTHING_TYPES_OBS: &str =
    r#"{"resourceType":"Parameters","parameter":[{"name":"_type","valueString":"Observation"}]}"#;
const EXPORT_TYPES_TWO: &str = r#"{"resourceType":"Parameters","parameter":[{"name":"_type","valueString":"Observation,Patient"}]}"#;
const EXPORT_TYPES_OBS: &str =
    r#"{"resourceType":"Parameters","parameter":[{"name":"_type","valueCode":"Observation"}]}"#;
const EMPTY_PARAMETERS: &str = r#"{"resourceType":"Parameters"}"#;

const JSON_PATCH_GP_P2: &str =
    r#"[{"op":"replace","path":"/generalPractitioner/0/reference","value":"Patient/p2"}]"#;
const JSON_PATCH_GP_CONDITIONAL: &str = r#"[{"op":"replace","path":"/generalPractitioner/0/reference","value":"Practitioner?identifier=x"}]"#;
const JSON_PATCH_GP_PRACTITIONER: &str =
    r#"[{"op":"replace","path":"/generalPractitioner/0/reference","value":"Practitioner/d1"}]"#;

fn tx(entries: &[&str]) -> String {
    format!(
        r#"{{"resourceType":"Bundle","type":"transaction","entry":[{}]}}"#,
        entries.join(",")
    )
}

#[rustfmt::skip]
const ISOLATION_ROWS: &[Row] = &[
    // --- 1. included resources stay in the compartment ---
    ("iso.include.group-co-members", "patient/Group.rs patient/Patient.rs", Some("p1"), "GET /Group?member=Patient/p1&_include=Group:member:Patient", None, Deny),
    ("iso.include.group-co-members-untyped", "patient/*.rs", Some("p1"), "GET /Group?member=Patient/p1&_include=Group:member", None, Deny),
    ("iso.include.through-non-pin-reference", "patient/Observation.rs patient/Patient.rs", Some("p1"), "GET /Observation?subject=Patient/p1&_include=Observation:performer:Patient", None, Deny),
    ("iso.include.through-multi-valued-pin", "patient/*.rs", Some("p1"), "GET /Observation?performer=Patient/p1&_include=Observation:performer", None, Deny),
    ("iso.include.through-multi-valued-pin-typed", "patient/*.rs", Some("p1"), "GET /Observation?performer=Patient/p1&_include=Observation:performer:Patient", None, Deny),
    ("iso.include.other-element-than-the-pin", "patient/*.rs", Some("p1"), "GET /Observation?performer=Patient/p1&_include=Observation:subject", None, Deny),
    ("iso.include.non-compartment-reference", "patient/*.rs", Some("p1"), "GET /Observation?subject=Patient/p1&_include=Observation:encounter", None, Deny),
    ("iso.include.has-member", "patient/*.rs", Some("p1"), "GET /Observation?subject=Patient/p1&_include=Observation:has-member", None, Deny),
    ("iso.include.wildcard", "patient/*.rs", Some("p1"), "GET /Observation?subject=Patient/p1&_include=*", None, Deny),
    ("iso.include.type-wildcard", "patient/*.rs", Some("p1"), "GET /Observation?subject=Patient/p1&_include=Observation:*", None, Deny),
    ("iso.include.iterate", "patient/*.rs", Some("p1"), "GET /Observation?subject=Patient/p1&_include:iterate=Observation:subject", None, Deny),
    ("iso.include.recurse", "patient/*.rs", Some("p1"), "GET /Observation?subject=Patient/p1&_include:recurse=Observation:subject", None, Deny),
    ("iso.include.unknown-modifier", "patient/*.rs", Some("p1"), "GET /Observation?subject=Patient/p1&_include:missing=Observation:subject", None, Deny),
    ("iso.include.source-other-than-search", "patient/*.rs", Some("p1"), "GET /Observation?subject=Patient/p1&_include=Condition:subject", None, Deny),
    ("iso.include.malformed", "patient/*.rs", Some("p1"), "GET /Observation?subject=Patient/p1&_include=Observation", None, Deny),
    ("iso.include.compartment-url-two-links", "patient/*.rs", Some("p1"), "GET /Patient/p1/Observation?_include=Observation:subject", None, Deny),
    ("iso.include.patient-general-practitioner", "patient/*.rs", Some("p1"), "GET /Patient?_id=p1&_include=Patient:general-practitioner", None, Deny),
    ("iso.include.patient-link", "patient/*.rs", Some("p1"), "GET /Patient?_id=p1&_include=Patient:link", None, Deny),
    ("iso.include.patient-organization", "patient/*.rs", Some("p1"), "GET /Patient?_id=p1&_include=Patient:organization", None, Deny),
    ("iso.include.in-a-bundle-entry", "patient/*.rs", Some("p1"), "POST /",
        Some(r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Observation?subject=Patient/p1&_include=Observation:performer"}}]}"#), Deny),
    // What stays provable: the pinned single-valued reference itself, and revincludes from the
    // context Patient through a compartment link of their source.
    ("iso.include.pinned-subject", "patient/*.rs", Some("p1"), "GET /Observation?subject=Patient/p1&_include=Observation:subject", None, Strict),
    ("iso.include.pinned-subject-typed", "patient/Observation.rs patient/Patient.r", Some("p1"), "GET /Observation?subject=Patient/p1&_include=Observation:subject:Patient", None, Strict),
    ("iso.include.pinned-by-patient-param", "patient/*.rs", Some("p1"), "GET /Observation?patient=p1&_include=Observation:subject", None, Strict),
    ("iso.include.pinned-patient-include-patient", "patient/*.rs", Some("p1"), "GET /Observation?patient=p1&_include=Observation:patient", None, Strict),
    ("iso.include.compartment-url-single-link", "patient/*.rs", Some("p1"), "GET /Patient/p1/Encounter?_include=Encounter:subject", None, Strict),
    ("iso.include.user-scope-covers-reference-data", "patient/Observation.rs user/Practitioner.rs", Some("p1"), "GET /Observation?subject=Patient/p1&_include=Observation:performer:Practitioner", None, Strict),
    ("iso.revinclude.non-compartment-param", "patient/*.rs", Some("p1"), "GET /Patient?_id=p1&_revinclude=Observation:focus", None, Deny),
    ("iso.revinclude.encounter-of-other-type", "patient/*.rs", Some("p1"), "GET /Encounter?patient=p1&_revinclude=Observation:encounter", None, Deny),
    ("iso.revinclude.provenance-of-observations", "patient/*.rs", Some("p1"), "GET /Observation?subject=Patient/p1&_revinclude=Provenance:target", None, Deny),
    ("iso.revinclude.from-unpinned-patient-search", "patient/*.rs", Some("p1"), "GET /Patient?name=x&_id=p1&_revinclude=Observation:subject&_revinclude=Observation:focus", None, Deny),
    ("iso.revinclude.wildcard", "patient/*.rs", Some("p1"), "GET /Patient?_id=p1&_revinclude=*", None, Deny),
    ("iso.revinclude.iterate", "patient/*.rs", Some("p1"), "GET /Patient?_id=p1&_revinclude:iterate=Observation:subject", None, Deny),
    ("iso.revinclude.target-not-patient", "patient/*.rs", Some("p1"), "GET /Patient?_id=p1&_revinclude=Observation:subject:Group", None, Deny),
    ("iso.revinclude.scope-must-cover-source", "patient/Patient.rs", Some("p1"), "GET /Patient?_id=p1&_revinclude=Observation:subject", None, Deny),
    ("iso.revinclude.subject", "patient/*.rs", Some("p1"), "GET /Patient?_id=p1&_revinclude=Observation:subject", None, Strict),
    ("iso.revinclude.performer", "patient/*.rs", Some("p1"), "GET /Patient?_id=p1&_revinclude=Observation:performer", None, Strict),
    ("iso.revinclude.patient-param", "patient/Patient.rs patient/Observation.rs", Some("p1"), "GET /Patient?_id=p1&_revinclude=Observation:patient", None, Strict),
    ("iso.revinclude.provenance-of-the-patient", "patient/Patient.rs patient/Provenance.rs", Some("p1"), "GET /Patient?_id=p1&_revinclude=Provenance:target", None, Strict),
    // --- 2. writes: every patient reference on the compartment paths is the context patient ---
    ("iso.write.create-other-subject-own-performer", "patient/Observation.c", Some("p1"), "POST /Observation", Some(OBS_SUBJECT_P2_PERFORMER_P1), Deny),
    ("iso.write.create-own-subject-other-performer", "patient/Observation.c", Some("p1"), "POST /Observation", Some(OBS_P1_PERFORMER_P2), Deny),
    ("iso.write.create-conditional-reference", "patient/Observation.c", Some("p1"), "POST /Observation", Some(OBS_CONDITIONAL_SUBJECT), Deny),
    ("iso.write.create-logical-reference", "patient/Observation.c", Some("p1"), "POST /Observation", Some(OBS_LOGICAL_SUBJECT), Deny),
    ("iso.write.create-urn-reference", "patient/Observation.c", Some("p1"), "POST /Observation", Some(OBS_URN_SUBJECT), Deny),
    ("iso.write.create-contained-patient", "patient/Observation.c", Some("p1"), "POST /Observation", Some(OBS_CONTAINED_SUBJECT), Deny),
    ("iso.write.create-focus-other-patient", "patient/Observation.c", Some("p1"), "POST /Observation", Some(OBS_FOCUS_P2), Deny),
    ("iso.write.create-extension-other-patient", "patient/Observation.c", Some("p1"), "POST /Observation", Some(OBS_EXTENSION_P2), Deny),
    ("iso.write.create-type-disagrees", "patient/Observation.c", Some("p1"), "POST /Observation", Some(OBS_TYPED_SUBJECT_MISMATCH), Deny),
    ("iso.write.create-group-subject-own-performer", "patient/Observation.c", Some("p1"), "POST /Observation", Some(OBS_GROUP_SUBJECT_PERFORMER_P1), Allow),
    ("iso.write.update-adds-other-performer", "patient/Observation.u", Some("p1"), "PUT /Observation/o1", Some(OBS_O1_PERFORMER_P2), Deny),
    ("iso.write.update-stored-shared-with-other", "patient/Observation.u", Some("p1"), "PUT /Observation/o3", Some(OBS_O3_P1), Deny),
    ("iso.write.delete-stored-shared-with-other", "patient/Observation.d", Some("p1"), "DELETE /Observation/o3", None, Deny),
    ("iso.write.read-stored-shared-is-fine", "patient/Observation.r", Some("p1"), "GET /Observation/o3", None, Allow),
    ("iso.write.update-own-patient-linking-other", "patient/Patient.u", Some("p1"), "PUT /Patient/p1", Some(PAT_P1_LINK_P2), Deny),
    ("iso.write.conditional-update-performer-pin", "patient/Observation.us", Some("p1"), "PUT /Observation?performer=Patient/p1", Some(OBS_P1), Deny),
    ("iso.write.conditional-delete-performer-pin", "patient/Observation.ds", Some("p1"), "DELETE /Observation?performer=Patient/p1", None, Deny),
    ("iso.write.conditional-delete-asserter-pin", "patient/Condition.ds", Some("p1"), "DELETE /Condition?asserter=Patient/p1", None, Deny),
    ("iso.write.conditional-delete-multi-valued-patient", "patient/Appointment.ds", Some("p1"), "DELETE /Appointment?patient=p1", None, Deny),
    ("iso.write.conditional-delete-group", "patient/Group.ds", Some("p1"), "DELETE /Group?member=Patient/p1", None, Deny),
    ("iso.write.conditional-delete-subject-pin-shared-type", "patient/Observation.ds", Some("p1"), "DELETE /Observation?patient=p1&code=x", None, Deny),
    ("iso.write.conditional-delete-condition-asserted-by-others", "patient/Condition.ds", Some("p1"), "DELETE /Condition?patient=p1", None, Deny),
    ("iso.write.conditional-delete-single-link-type", "patient/Immunization.ds", Some("p1"), "DELETE /Immunization?patient=p1&status=entered-in-error", None, Strict),
    ("iso.write.conditional-update-body-other-performer", "patient/Observation.us", Some("p1"), "PUT /Observation?subject=Patient/p1", Some(OBS_P1_PERFORMER_P2), Deny),
    ("iso.write.patch-own-patient-link", "patient/Patient.u", Some("p1"), "PATCH /Patient/p1", Some(PATCH_LINK), Deny),
    ("iso.write.patch-own-patient-meta", "patient/Patient.u", Some("p1"), "PATCH /Patient/p1", Some(PATCH_META), Deny),
    ("iso.write.patch-own-patient-value-names-other", "patient/Patient.u", Some("p1"), "PATCH /Patient/p1", Some(PATCH_REF_P2), Deny),
    ("iso.write.patch-own-patient-unreadable-path", "patient/Patient.u", Some("p1"), "PATCH /Patient/p1", Some(PATCH_UNREADABLE_PATH), Deny),
    ("iso.write.patch-other-patient", "patient/Patient.u", Some("p1"), "PATCH /Patient/p2", Some(PATCH_NAME), Deny),
    // --- 3. operations: an explicit list, exact names, rights on every type they can return ---
    ("iso.op.graphql-with-patient-scope", "patient/Patient.rs", Some("p1"), "GET /Patient/p1/$graphql?query=x", None, Deny),
    ("iso.op.graphql-with-patient-wildcard", "patient/*.rs", Some("p1"), "GET /Patient/p1/$graphql?query=x", None, Deny),
    ("iso.op.graphql-with-user-type-scope", "user/Patient.rs", None, "GET /Patient/p2/$graphql?query=x", None, Deny),
    ("iso.op.graphql-with-user-wildcard", "user/*.rs", None, "GET /Patient/p2/$graphql?query=x", None, Allow),
    ("iso.op.graphql-system-level", "user/*.rs", None, "GET /$graphql?query=x", None, Allow),
    ("iso.op.graphql-post-may-mutate", "user/*.rs", None, "POST /$graphql", Some(EMPTY_PARAMETERS), Deny),
    ("iso.op.graphql-post-with-cruds", "user/*.cruds", None, "POST /$graphql", Some(EMPTY_PARAMETERS), Allow),
    ("iso.op.graphql-get-mutation", "user/*.rs", None, "GET /$graphql?query=mutation%20%7B%7D", None, Deny),
    ("iso.op.summary-needs-every-type", "patient/Patient.rs", Some("p1"), "GET /Patient/p1/$summary", None, Deny),
    ("iso.op.summary-own", "patient/*.rs", Some("p1"), "GET /Patient/p1/$summary", None, Deny),
    ("iso.op.summary-user", "user/*.rs", None, "GET /Patient/p1/$summary", None, Allow),
    ("iso.op.summary-other", "patient/*.rs", Some("p1"), "GET /Patient/p2/$summary", None, Deny),
    ("iso.op.everything-encounter", "patient/*.rs", Some("p1"), "GET /Encounter/e1/$everything", None, Deny),
    ("iso.op.everything-encounter-user", "user/*.rs", None, "GET /Encounter/e1/$everything", None, Allow),
    ("iso.op.document-patient-scope", "patient/*.rs", Some("p1"), "GET /Composition/c1/$document", None, Deny),
    ("iso.op.document-user", "user/*.rs", None, "GET /Composition/c1/$document", None, Allow),
    ("iso.op.unknown-under-patient", "patient/*.cruds", Some("p1"), "GET /Patient/p1/$foo", None, Deny),
    ("iso.op.unknown-with-type-scope", "user/Observation.cruds", None, "GET /Observation/$foo", None, Deny),
    ("iso.op.unknown-with-rs-wildcard", "user/*.rs", None, "GET /Observation/$foo", None, Deny),
    ("iso.op.unknown-with-cruds-wildcard", "user/*.cruds", None, "GET /Observation/$foo", None, Allow),
    ("iso.op.match-with-type-scope", "user/Patient.rs", None, "POST /Patient/$match", Some(EMPTY_PARAMETERS), Deny),
    ("iso.op.match-with-wildcard", "user/*.rs", None, "POST /Patient/$match", Some(EMPTY_PARAMETERS), Allow),
    ("iso.op.match-patient-scope", "patient/*.rs", Some("p1"), "POST /Patient/$match", Some(EMPTY_PARAMETERS), Deny),
    ("iso.op.evaluate-measure-patient-scope", "patient/*.rs", Some("p1"), "GET /Measure/m1/$evaluate-measure?subject=Patient/p1", None, Deny),
    ("iso.op.expand-patient-scope", "patient/*.rs", Some("p1"), "GET /ValueSet/$expand?url=x", None, Deny),
    ("iso.op.meta-type-level-patient-scope", "patient/*.rs", Some("p1"), "GET /Observation/$meta", None, Deny),
    ("iso.op.meta-system-level-patient-scope", "patient/*.rs", Some("p1"), "GET /$meta", None, Deny),
    ("iso.op.meta-add-patient-scope", "patient/*.cruds", Some("p1"), "POST /Observation/o1/$meta-add", Some(EMPTY_PARAMETERS), Deny),
    ("iso.op.meta-instance-other", "patient/*.rs", Some("p1"), "GET /Observation/o2/$meta", None, Deny),
    ("iso.op.validate-instance", "patient/Observation.rs", Some("p1"), "GET /Observation/o1/$validate", None, Allow),
    ("iso.op.validate-instance-other", "patient/Observation.rs", Some("p1"), "GET /Observation/o2/$validate", None, Deny),
    ("iso.op.lastn-pinned", "patient/Observation.rs", Some("p1"), "GET /Observation/$lastn?patient=p1&category=vital-signs", None, Strict),
    ("iso.op.lastn-unpinned", "patient/Observation.rs", Some("p1"), "GET /Observation/$lastn?category=vital-signs", None, Deny),
    ("iso.op.lastn-other", "patient/Observation.rs", Some("p1"), "GET /Observation/$lastn?patient=p2", None, Deny),
    ("iso.op.stats-pinned", "patient/Observation.rs", Some("p1"), "GET /Observation/$stats?subject=Patient/p1&code=x", None, Strict),
    ("iso.op.export-patient-scope", "patient/*.rs", Some("p1"), "GET /Group/g1/$export", None, Deny),
    // --- 4. POSTed operation bodies are read ---
    ("iso.body.everything-types-from-body", "patient/Observation.rs patient/Patient.rs", Some("p1"), "POST /Patient/p1/$everything", Some(EVERYTHING_TYPES_OTHER), Deny),
    ("iso.body.everything-types-from-body-covered", "patient/Observation.rs patient/Patient.rs", Some("p1"), "POST /Patient/p1/$everything", Some(EVERYTHING_TYPES_OBS), Deny),
    ("iso.body.everything-body-unseen", "patient/Observation.rs patient/Patient.rs", Some("p1"), "POST /Patient/p1/$everything?_type=Observation", None, Deny),
    ("iso.body.everything-body-unseen-wildcard", "patient/*.rs", Some("p1"), "POST /Patient/p1/$everything", None, Deny),
    ("iso.body.everything-user-wildcard", "user/*.rs", None, "POST /Patient/p1/$everything", None, Allow),
    ("iso.body.export-types-from-body", "system/Observation.rs", None, "POST /$export", Some(EXPORT_TYPES_TWO), Deny),
    ("iso.body.export-types-from-body-covered", "system/Observation.rs", None, "POST /$export", Some(EXPORT_TYPES_OBS), Allow),
    ("iso.body.export-body-unseen", "system/Observation.rs", None, "POST /$export?_type=Observation", None, Deny),
    // --- 5. history: the version asked for, and no overwriting of deleted resources ---
    ("iso.history.vread-old-version-of-other-patient", "patient/Observation.rs", Some("p1"), "GET /Observation/ov/_history/1", None, Deny),
    ("iso.history.vread-own-version", "patient/Observation.rs", Some("p1"), "GET /Observation/ov/_history/2", None, Allow),
    ("iso.history.vread-unknown-version-asks", "patient/Observation.rs", Some("p1"), "GET /Observation/ov/_history/3", None, Lookup),
    ("iso.history.instance-history-refused", "patient/Observation.rs", Some("p1"), "GET /Observation/ov/_history", None, Deny),
    ("iso.history.instance-history-own-current", "patient/Observation.rs", Some("p1"), "GET /Observation/o1/_history", None, Deny),
    ("iso.history.own-patient-history", "patient/Patient.rs", Some("p1"), "GET /Patient/p1/_history", None, Allow),
    ("iso.history.upsert-over-deleted", "patient/Observation.u", Some("p1"), "PUT /Observation/deleted", Some(OBS_DELETED_P1), Deny),
    ("iso.history.read-deleted", "patient/Observation.r", Some("p1"), "GET /Observation/deleted", None, Deny),
    ("iso.history.delete-deleted", "patient/Observation.d", Some("p1"), "DELETE /Observation/deleted", None, Deny),
    ("iso.history.type-history", "patient/*.rs", Some("p1"), "GET /Observation/_history?_since=2020", None, Deny),
    // --- found by the attack review ---
    ("review.everything-mdm-expansion", "patient/*.rs", Some("p1"), "GET /Patient/p1/$everything?_mdm=true", None, Deny),
    ("review.revinclude-patient-link", "patient/Patient.rs", Some("p1"), "GET /Patient?_id=p1&_revinclude=Patient:link", None, Deny),
    ("review.conditional-reference-to-foreign-resource", "patient/Observation.c", Some("p1"), "POST /Observation",
        Some(r#"{"resourceType":"Observation","subject":{"reference":"Patient/p1"},"hasMember":[{"reference":"Observation?subject=Patient/p2&code=http://loinc.org|1234-5"}]}"#), Deny),
    ("review.conditional-reference-practitioner", "patient/Observation.c", Some("p1"), "POST /Observation",
        Some(r#"{"resourceType":"Observation","subject":{"reference":"Patient/p1"},"performer":[{"reference":"Practitioner?identifier=npi|1"}]}"#), Deny),
    // A reference by id to a resource the app cannot read is written, but never followed for
    // it: includes, $everything and $graphql that would follow it are refused.
    ("review.reference-to-unreadable-resource", "patient/*.cruds", Some("p1"), "POST /DiagnosticReport",
        Some(r#"{"resourceType":"DiagnosticReport","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/p1"},"result":[{"reference":"Observation/o2"}]}"#), Allow),
    ("review.follow-it-by-include", "patient/*.rs", Some("p1"), "GET /DiagnosticReport?patient=p1&_include=DiagnosticReport:result", None, Deny),
    ("review.conditional-update-shared", "patient/Observation.cu", Some("p1"), "PUT /Observation?patient=p1&_id=o3", Some(OBS_P1), Deny),
    ("review.conditional-delete-shared", "patient/Observation.d", Some("p1"), "DELETE /Observation?subject=Patient/p1&_id=o3", None, Deny),
    ("review.conditional-update-body-id", "patient/Encounter.cu", Some("p1"), "PUT /Encounter?patient=p1&identifier=urn:x|nomatch",
        Some(r#"{"resourceType":"Encounter","id":"e2","subject":{"reference":"Patient/p1"}}"#), Deny),
    ("review.user-post-search-unseen-body", "user/Observation.rs", None, "POST /Observation/_search", None, Deny),
    ("review.user-wildcard-post-search-unseen-body", "user/*.rs", None, "POST /Observation/_search", None, Allow),
    ("review.user-type-operation-unseen-body", "user/Observation.rs", None, "POST /Observation/$lastn", None, Deny),
    ("review.user-contained-container", "user/Observation.rs", None, "GET /Observation?code=x&_contained=true&_containedType=container", None, Deny),
    ("review.user-contained-false", "user/Observation.rs", None, "GET /Observation?code=x&_contained=false", None, Allow),
    ("review.user-named-query", "user/Observation.rs", None, "GET /Observation?_query=anything", None, Deny),
    ("review.user-wildcard-named-query", "user/*.rs", None, "GET /Observation?_query=anything", None, Allow),
    ("review.granular-named-query", "user/Observation.rs?category=laboratory", None, "GET /Observation?category=laboratory&_query=anything", None, Deny),
    ("review.granular-contained-container", "user/Observation.rs?category=laboratory", None, "GET /Observation?category=laboratory&_contained=true&_containedType=container", None, Deny),
    ("review.user-has-oracle", "user/Patient.rs", None, "GET /Patient?_has:Observation:patient:code=hiv", None, Deny),
    ("review.user-has-covered", "user/Patient.rs user/Observation.s", None, "GET /Patient?_has:Observation:patient:code=hiv", None, Allow),
    ("review.json-patch-bare-reference", "patient/Patient.u", Some("p1"), "PATCH /Patient/p1", Some(JSON_PATCH_GP_P2), Deny),
    ("review.json-patch-bare-conditional-reference", "patient/Patient.u", Some("p1"), "PATCH /Patient/p1", Some(JSON_PATCH_GP_CONDITIONAL), Deny),
    ("review.json-patch-bare-reference-practitioner", "patient/Patient.u", Some("p1"), "PATCH /Patient/p1", Some(JSON_PATCH_GP_PRACTITIONER), Allow),
    // --- search parameters that reach past the pin ---
    ("iso.search.contained-container", "patient/Observation.rs", Some("p1"), "GET /Observation?subject=Patient/p1&_containedType=container", None, Deny),
    ("iso.search.contained-true", "patient/Observation.rs", Some("p1"), "GET /Observation?subject=Patient/p1&_contained=true", None, Deny),
    ("iso.search.contained-false-is-fine", "patient/Observation.rs", Some("p1"), "GET /Observation?subject=Patient/p1&_contained=false", None, Strict),
    ("iso.search.compartment-url-with-has", "patient/Observation.rs", Some("p1"), "GET /Patient/p1/Observation?_has:Observation:part-of:code=x", None, Deny),
    ("iso.search.compartment-url-with-chain", "patient/Observation.rs", Some("p1"), "GET /Patient/p1/Observation?performer.name=x", None, Deny),
];

#[test]
fn isolation_table() {
    let mut rows: Vec<Row> = ISOLATION_ROWS.to_vec();
    // Transactions carry every write class through their entries.
    let entry = |resource: &str, method: &str, url: &str| {
        format!(r#"{{"resource":{resource},"request":{{"method":"{method}","url":"{url}"}}}}"#)
    };
    let bodies: Vec<(&'static str, String)> = vec![
        (
            "iso.tx.create-other-subject",
            tx(&[&entry(OBS_SUBJECT_P2_PERFORMER_P1, "POST", "Observation")]),
        ),
        (
            "iso.tx.create-conditional-reference",
            tx(&[&entry(OBS_CONDITIONAL_SUBJECT, "POST", "Observation")]),
        ),
        (
            "iso.tx.conditional-update-performer-pin",
            tx(&[&entry(OBS_P1, "PUT", "Observation?performer=Patient/p1")]),
        ),
        (
            "iso.tx.update-shared",
            tx(&[&entry(OBS_O3_P1, "PUT", "Observation/o3")]),
        ),
        (
            "iso.tx.upsert-over-deleted",
            tx(&[&entry(OBS_DELETED_P1, "PUT", "Observation/deleted")]),
        ),
        (
            "iso.tx.delete-performer-pin",
            tx(&[r#"{"request":{"method":"DELETE","url":"Observation?performer=Patient/p1"}}"#]),
        ),
        (
            "iso.tx.vread-old-version",
            tx(&[r#"{"request":{"method":"GET","url":"Observation/ov/_history/1"}}"#]),
        ),
        (
            "iso.tx.graphql",
            tx(&[r#"{"request":{"method":"GET","url":"Patient/p1/$graphql?query=x"}}"#]),
        ),
    ];
    let leaked: &'static [(&'static str, String)] = Box::leak(bodies.into_boxed_slice());
    for (rule, body) in leaked {
        rows.push((
            rule,
            "patient/*.cruds",
            Some("p1"),
            "POST /",
            Some(body.as_str()),
            Deny,
        ));
    }
    assert_eq!(run(&rows, false, true, Some(&stored())), rows.len());
}

#[rustfmt::skip]
const ISOLATION_NARROW_ROWS: &[Row] = &[
    ("iso.narrow.include-through-the-narrowing-param", "patient/*.rs", Some("p1"), "GET /Observation?code=x&_include=Observation:subject", None, Narrow("subject=Patient/p1")),
    ("iso.narrow.include-through-another-param", "patient/*.rs", Some("p1"), "GET /Observation?code=x&_include=Observation:performer", None, Deny),
    ("iso.narrow.revinclude-from-narrowed-patient", "patient/*.rs", Some("p1"), "GET /Patient?name=x&_revinclude=Observation:subject", None, Narrow("_id=p1")),
];

#[test]
fn isolation_with_narrowing_table() {
    assert_eq!(
        run(ISOLATION_NARROW_ROWS, true, true, Some(&stored())),
        ISOLATION_NARROW_ROWS.len()
    );
}

/// Denials say which rule refused without repeating the request's values: a parameter value
/// can be another patient's id, and the rule goes into the decision log.
#[test]
fn denials_never_repeat_request_values() {
    let secret = "zz9secret";
    let lines = [
        format!("GET /Observation?subject=Patient/{secret}"),
        format!("GET /Observation?subject:identifier={secret}"),
        format!("GET /Observation?subject=Patient/p1&_include=Observation:{secret}"),
        format!("GET /Observation?subject=Patient/p1&_include=Observation:performer:{secret}"),
        format!("GET /Observation?patient=p1&subject.name={secret}"),
        format!("GET /Patient/{secret}"),
        format!("GET /Patient/{secret}/$everything"),
        format!("GET /Patient/{secret}/Observation"),
        format!("GET /Observation?_has:Observation:part-of:code={secret}"),
        format!("GET /Observation/$lastn?patient={secret}"),
    ];
    let set = parse_scopes(["patient/Observation.rs", "patient/Patient.rs"]);
    let g = Grant {
        scopes: &set,
        patient: Some("p1"),
        narrow: false,
        lookup_configured: true,
        lookups: Some(&stored()),
        reference_data: false,
    };
    for line in &lines {
        match authorize(&g, &request(line, None)) {
            Verdict::Deny(d) => {
                assert!(!d.rule.contains(secret), "{line}: {}", d.rule);
                assert!(
                    !d.needed.as_deref().unwrap_or("").contains(secret),
                    "{line}: {:?}",
                    d.needed
                );
            }
            other => panic!("{line}: {other:?}"),
        }
    }
}

// ------------------------------------------------------------------------------------------
// Precision: allow what the scopes grant.

const OBS_LAB_P1: &str = r#"{"resourceType":"Observation","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory"}]}],"subject":{"reference":"Patient/p1"}}"#;
const OBS_VITAL_P1: &str = r#"{"resourceType":"Observation","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs"}]}],"subject":{"reference":"Patient/p1"}}"#;
const OBS_LAB1_P1: &str = r#"{"resourceType":"Observation","id":"lab1","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory"}]}],"subject":{"reference":"Patient/p1"}}"#;
const OBS_LAB1_VITAL: &str = r#"{"resourceType":"Observation","id":"lab1","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs"}]}],"subject":{"reference":"Patient/p1"}}"#;
const OBS_VIT1_LAB: &str = r#"{"resourceType":"Observation","id":"vit1","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory"}]}],"subject":{"reference":"Patient/p1"}}"#;
const JSON_PATCH_STATUS: &str = r#"[{"op":"replace","path":"/status","value":"amended"}]"#;
const FP_PATCH_DR_STATUS: &str = r#"{"resourceType":"Parameters","parameter":[{"name":"operation","part":[{"name":"type","valueCode":"replace"},{"name":"path","valueString":"DiagnosticReport.status"},{"name":"value","valueCode":"amended"}]}]}"#;
const FP_PATCH_STATUS: &str = r#"{"resourceType":"Parameters","parameter":[{"name":"operation","part":[{"name":"type","valueCode":"replace"},{"name":"path","valueString":"Observation.status"},{"name":"value","valueCode":"amended"}]}]}"#;
const FP_PATCH_SUBJECT_OTHER: &str = r#"{"resourceType":"Parameters","parameter":[{"name":"operation","part":[{"name":"type","valueCode":"replace"},{"name":"path","valueString":"Observation.subject"},{"name":"value","valueReference":{"reference":"Patient/p2"}}]}]}"#;
const FP_PATCH_SUBJECT_OWN: &str = r#"{"resourceType":"Parameters","parameter":[{"name":"operation","part":[{"name":"type","valueCode":"replace"},{"name":"path","valueString":"Observation.subject"},{"name":"value","valueReference":{"reference":"Patient/p1"}}]}]}"#;
const FP_PATCH_PERFORMER_PRACTITIONER: &str = r#"{"resourceType":"Parameters","parameter":[{"name":"operation","part":[{"name":"type","valueCode":"add"},{"name":"path","valueString":"Observation"},{"name":"name","valueString":"performer"},{"name":"value","valueReference":{"reference":"Practitioner/d1"}}]}]}"#;
const FP_PATCH_DELETE_SUBJECT: &str = r#"{"resourceType":"Parameters","parameter":[{"name":"operation","part":[{"name":"type","valueCode":"delete"},{"name":"path","valueString":"Observation.subject"}]}]}"#;
const FP_PATCH_META: &str = r#"{"resourceType":"Parameters","parameter":[{"name":"operation","part":[{"name":"type","valueCode":"replace"},{"name":"path","valueString":"Observation.meta"},{"name":"value","valueMeta":{}}]}]}"#;
const FP_PATCH_NOTE_NAMES_OTHER: &str = r#"{"resourceType":"Parameters","parameter":[{"name":"operation","part":[{"name":"type","valueCode":"add"},{"name":"path","valueString":"Observation"},{"name":"name","valueString":"focus"},{"name":"value","valueReference":{"reference":"Patient/p2"}}]}]}"#;
const FP_PATCH_CATEGORY: &str = r#"{"resourceType":"Parameters","parameter":[{"name":"operation","part":[{"name":"type","valueCode":"replace"},{"name":"path","valueString":"Observation.category"},{"name":"value","valueCodeableConcept":{"text":"x"}}]}]}"#;

fn precision_stored() -> Lookups {
    let mut m = stored();
    let found = |v: &str| Stored::Found(std::sync::Arc::new(serde_json::from_str(v).unwrap()));
    for for_write in [false, true] {
        let key = |id: &str| LookupKey {
            for_write,
            ..LookupKey::current("Observation", id)
        };
        m.insert(key("lab1"), found(OBS_LAB1_P1));
        m.insert(
            key("vit1"),
            found(&OBS_LAB1_VITAL.replace("\"lab1\"", "\"vit1\"")),
        );
    }
    m.insert(
        LookupKey {
            version: Some("1".into()),
            ..LookupKey::current("Observation", "lab1")
        },
        found(OBS_LAB1_VITAL),
    );
    m
}

const LAB_SCOPE: &str = "user/Observation.cruds?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory";
const LAB_PATIENT_SCOPE: &str = "patient/Observation.cruds?category=laboratory";

#[rustfmt::skip]
const PRECISION_ROWS: &[Row] = &[
    // --- granular scopes beyond searches (filter evaluated on the stored resource or body) ---
    ("granular.read-stored-matches", LAB_SCOPE, None, "GET /Observation/lab1", None, Allow),
    ("granular.read-stored-does-not-match", LAB_SCOPE, None, "GET /Observation/vit1", None, Deny),
    ("granular.read-unknown-asks", LAB_SCOPE, None, "GET /Observation/o77", None, Lookup),
    ("granular.vread-that-version", LAB_SCOPE, None, "GET /Observation/lab1/_history/1", None, Deny),
    ("granular.history-instance", LAB_SCOPE, None, "GET /Observation/lab1/_history", None, Deny),
    ("granular.create-body-matches", LAB_SCOPE, None, "POST /Observation", Some(OBS_LAB_P1), Allow),
    ("granular.create-body-does-not-match", LAB_SCOPE, None, "POST /Observation", Some(OBS_VITAL_P1), Deny),
    ("granular.create-body-unseen", LAB_SCOPE, None, "POST /Observation", None, Deny),
    ("granular.update-both-match", LAB_SCOPE, None, "PUT /Observation/lab1", Some(OBS_LAB1_P1), Allow),
    ("granular.update-body-leaves-filter", LAB_SCOPE, None, "PUT /Observation/lab1", Some(OBS_LAB1_VITAL), Deny),
    ("granular.update-stored-outside-filter", LAB_SCOPE, None, "PUT /Observation/vit1", Some(OBS_VIT1_LAB), Deny),
    ("granular.upsert-new", LAB_SCOPE, None, "PUT /Observation/gone", Some(r#"{"resourceType":"Observation","id":"gone","category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory"}]}]}"#), Allow),
    ("granular.delete-stored-matches", LAB_SCOPE, None, "DELETE /Observation/lab1", None, Allow),
    ("granular.delete-stored-does-not-match", LAB_SCOPE, None, "DELETE /Observation/vit1", None, Deny),
    ("granular.patch-away-from-filter", LAB_SCOPE, None, "PATCH /Observation/lab1", Some(FP_PATCH_STATUS), Allow),
    ("granular.patch-changes-filter-element", LAB_SCOPE, None, "PATCH /Observation/lab1", Some(FP_PATCH_CATEGORY), Deny),
    ("granular.conditional-delete-carries-filter", LAB_SCOPE, None, "DELETE /Observation?category=http://terminology.hl7.org/CodeSystem/observation-category%7Claboratory&code=x", None, Strict),
    ("granular.conditional-delete-without-filter", LAB_SCOPE, None, "DELETE /Observation?code=x", None, Deny),
    ("granular.unevaluable-filter-by-id", "user/Observation.rs?date=ge2020", None, "GET /Observation/lab1", None, Deny),
    ("granular.unevaluable-filter-search-carried", "user/Observation.rs?date=ge2020", None, "GET /Observation?date=ge2020", None, Strict),
    ("granular.patient-read-both", LAB_PATIENT_SCOPE, Some("p1"), "GET /Observation/lab1", None, Allow),
    ("granular.patient-read-filter-fails", LAB_PATIENT_SCOPE, Some("p1"), "GET /Observation/vit1", None, Deny),
    ("granular.patient-read-compartment-fails", LAB_PATIENT_SCOPE, Some("p2"), "GET /Observation/lab1", None, Deny),
    ("granular.patient-create-both", LAB_PATIENT_SCOPE, Some("p1"), "POST /Observation", Some(OBS_LAB_P1), Allow),
    ("granular.patient-create-other-patient", LAB_PATIENT_SCOPE, Some("p2"), "POST /Observation", Some(OBS_LAB_P1), Deny),
    ("granular.union-with-plain-read", "user/Observation.rs?category=laboratory user/Observation.r", None, "GET /Observation/vit1", None, Allow),
    // --- PATCH under u: changes away from the patient links are fine ---
    ("patch.json-patch-status", "patient/Observation.u", Some("p1"), "PATCH /Observation/o1", Some(JSON_PATCH_STATUS), Allow),
    ("patch.fhirpath-status", "patient/Observation.u", Some("p1"), "PATCH /Observation/o1", Some(FP_PATCH_STATUS), Allow),
    ("patch.stored-other-patient", "patient/Observation.u", Some("p1"), "PATCH /Observation/o2", Some(FP_PATCH_STATUS), Deny),
    ("patch.stored-shared", "patient/Observation.u", Some("p1"), "PATCH /Observation/o3", Some(FP_PATCH_STATUS), Deny),
    ("patch.subject-to-other", "patient/Observation.u", Some("p1"), "PATCH /Observation/o1", Some(FP_PATCH_SUBJECT_OTHER), Deny),
    ("patch.subject-to-context", "patient/Observation.u", Some("p1"), "PATCH /Observation/o1", Some(FP_PATCH_SUBJECT_OWN), Allow),
    ("patch.performer-practitioner", "patient/Observation.u", Some("p1"), "PATCH /Observation/o1", Some(FP_PATCH_PERFORMER_PRACTITIONER), Deny),
    ("patch.remove-subject", "patient/Observation.u", Some("p1"), "PATCH /Observation/o1", Some(FP_PATCH_DELETE_SUBJECT), Deny),
    ("patch.meta", "patient/Observation.u", Some("p1"), "PATCH /Observation/o1", Some(FP_PATCH_META), Deny),
    ("patch.value-names-other", "patient/Observation.u", Some("p1"), "PATCH /Observation/o1", Some(FP_PATCH_NOTE_NAMES_OTHER), Deny),
    ("patch.unseen-body", "patient/Observation.u", Some("p1"), "PATCH /Observation/o1", None, Deny),
    ("patch.outside-compartment", "patient/Medication.u", Some("p1"), "PATCH /Medication/m1", Some(FP_PATCH_STATUS), Deny),
    ("patch.conditional-pinned-shared-type", "patient/Observation.u", Some("p1"), "PATCH /Observation?patient=p1&code=x", Some(FP_PATCH_STATUS), Deny),
    ("patch.conditional-pinned", "patient/DiagnosticReport.u", Some("p1"), "PATCH /DiagnosticReport?patient=p1&code=x", Some(FP_PATCH_DR_STATUS), Strict),
    ("patch.conditional-performer-pin", "patient/Observation.u", Some("p1"), "PATCH /Observation?performer=Patient/p1", Some(FP_PATCH_STATUS), Deny),
    ("patch.needs-u", "patient/Observation.rs", Some("p1"), "PATCH /Observation/o1", Some(FP_PATCH_STATUS), Deny),
];

#[test]
fn precision_table() {
    let mut failures = Vec::new();
    let lookups = precision_stored();
    for (rule, scopes, patient, line, body, want) in PRECISION_ROWS {
        let set = parse_scopes(scopes.split(' '));
        let g = Grant {
            scopes: &set,
            patient: *patient,
            narrow: false,
            lookup_configured: true,
            lookups: Some(&lookups),
            reference_data: false,
        };
        let req = request(line, *body);
        let got = authorize(&g, &req);
        let ok = match (want, &got) {
            (Allow, Verdict::Allow { narrow, strict }) => narrow.is_empty() && !strict,
            (Strict, Verdict::Allow { narrow, strict }) => narrow.is_empty() && *strict,
            (Deny, Verdict::Deny(_)) | (Lookup, Verdict::Lookup(_)) => true,
            _ => false,
        };
        if !ok {
            failures.push(format!(
                "rule {rule}: {scopes:?} {patient:?} {line}: wanted {want:?}, got {got:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The `scope=` hint names a scope the token does not hold that would allow the request, and
/// is left out when none could (another patient's data, something unprovable).
#[test]
fn scope_hints_help() {
    // (scopes, patient, request, hint)
    let cases: &[(&str, Option<&str>, &str, Option<&str>)] = &[
        ("patient/Patient.r", Some("p1"), "GET /Patient/p2", None),
        (
            "patient/Patient.rs",
            Some("p1"),
            "GET /Patient?_id=p2",
            None,
        ),
        (
            "patient/Observation.rs",
            Some("p1"),
            "GET /Observation?subject=Patient/p2",
            None,
        ),
        (
            "patient/Observation.rs",
            Some("p1"),
            "GET /Observation/o2",
            None,
        ),
        (
            "patient/*.rs",
            Some("p1"),
            "GET /Patient/p2/$everything",
            None,
        ),
        (
            "patient/Observation.rs",
            Some("p1"),
            "GET /Observation/ov/_history",
            None,
        ),
        (
            "patient/*.rs",
            Some("p1"),
            "GET /Group?member=Patient/p1&_include=Group:member:Patient",
            None,
        ),
        (
            "patient/Patient.r",
            Some("p1"),
            "GET /Observation?subject=Patient/p1",
            Some("patient/Observation.s"),
        ),
        (
            "patient/Observation.r",
            Some("p1"),
            "GET /Patient/p1/Observation",
            Some("patient/Observation.s"),
        ),
        (
            "patient/Observation.rs",
            Some("p1"),
            "GET /Patient/p1/$everything",
            None,
        ),
        (
            "user/Patient.rs",
            None,
            "GET /Observation?code=x",
            Some("user/Observation.s"),
        ),
        (
            "user/Observation.rs",
            None,
            "DELETE /Observation/o1",
            Some("user/Observation.d"),
        ),
        ("user/*.rs", None, "GET /$export", Some("system/*.rs")),
        (
            "system/Observation.rs",
            None,
            "GET /Patient/p1",
            Some("system/Patient.r"),
        ),
        (
            "user/Observation.rs?category=laboratory",
            None,
            "GET /Observation?code=x",
            Some("user/Observation.s"),
        ),
        (
            "user/Observation.rs",
            None,
            "GET /Observation/$foo",
            Some("user/*.cruds"),
        ),
        ("user/*.cruds", None, "POST /$export", Some("system/*.rs")),
    ];
    let lookups = stored();
    for (scopes, patient, line, want) in cases {
        let set = parse_scopes(scopes.split(' '));
        let g = Grant {
            scopes: &set,
            patient: *patient,
            narrow: false,
            lookup_configured: true,
            lookups: Some(&lookups),
            reference_data: false,
        };
        let Verdict::Deny(d) = authorize(&g, &request(line, None)) else {
            panic!("{scopes} {line} was not refused")
        };
        assert_eq!(d.needed.as_deref(), *want, "{scopes} {line}: {}", d.rule);
    }
}

// ------------------------------------------------------------------------------------------
// The contested rules, each with both settings.

/// (rule, scopes, patient, request, body, want with the default, want with the other value)
type TwoSettings = (
    &'static str,
    &'static str,
    Option<&'static str>,
    &'static str,
    Option<&'static str>,
    Want,
    Want,
);
/// (rule, scopes, fhirUser, request, want Unrestricted, want ConfineToFhirUser)
type UserScopeRow = (
    &'static str,
    &'static str,
    Option<&'static str>,
    &'static str,
    Want,
    Want,
);

#[rustfmt::skip]
const REFERENCE_DATA_ROWS: &[TwoSettings] = &[
    // (rule, scopes, patient, request, body, with Deny (default), with ReadWithScope)
    ("refdata.read-medication", "patient/Medication.rs", Some("p1"), "GET /Medication/m1", None, Deny, Allow),
    ("refdata.read-practitioner-wildcard", "patient/*.rs", Some("p1"), "GET /Practitioner/d1", None, Deny, Allow),
    ("refdata.search-organization", "patient/Organization.s", Some("p1"), "GET /Organization?name=x", None, Deny, Strict),
    ("refdata.search-needs-s", "patient/Organization.r", Some("p1"), "GET /Organization?name=x", None, Deny, Deny),
    ("refdata.never-write", "patient/Medication.cruds", Some("p1"), "POST /Medication", Some(MED), Deny, Deny),
    ("refdata.never-delete", "patient/Medication.cruds", Some("p1"), "DELETE /Medication/m1", None, Deny, Deny),
    ("refdata.type-must-match", "patient/Medication.rs", Some("p1"), "GET /Practitioner/d1", None, Deny, Deny),
    ("refdata.has-reaches-records", "patient/*.rs", Some("p1"), "GET /Medication?_has:MedicationRequest:medication:subject=Patient/p2", None, Deny, Deny),
    ("refdata.revinclude-reaches-records", "patient/*.rs", Some("p1"), "GET /Medication?code=x&_revinclude=MedicationRequest:medication", None, Deny, Deny),
    ("refdata.us-core-medication-include", "patient/MedicationRequest.rs patient/Medication.rs", Some("p1"), "GET /MedicationRequest?patient=p1&_include=MedicationRequest:medication", None, Deny, Strict),
    ("refdata.include-wildcard", "patient/*.rs", Some("p1"), "GET /MedicationRequest?patient=p1&_include=MedicationRequest:requester", None, Deny, Deny),
    ("refdata.include-practitioner", "patient/*.rs", Some("p1"), "GET /Encounter?patient=p1&_include=Encounter:practitioner", None, Deny, Strict),
    ("refdata.include-iterate", "patient/*.rs", Some("p1"), "GET /MedicationRequest?patient=p1&_include:iterate=MedicationRequest:medication", None, Deny, Deny),
    ("refdata.terminology", "patient/ValueSet.rs", Some("p1"), "GET /ValueSet/$expand?url=x", None, Deny, Strict),
    ("refdata.compartment-types-unchanged", "patient/Observation.rs", Some("p1"), "GET /Observation?code=x", None, Deny, Deny),
    ("refdata.user-unaffected", "user/Medication.rs", None, "GET /Medication/m1", None, Allow, Allow),
];

#[test]
fn reference_data_setting_table() {
    for (setting, pick) in [(false, 0), (true, 1)] {
        let rows: Vec<Row> = REFERENCE_DATA_ROWS
            .iter()
            .map(|(rule, scopes, patient, line, body, deny, with)| {
                (
                    *rule,
                    *scopes,
                    *patient,
                    *line,
                    *body,
                    if pick == 0 { *deny } else { *with },
                )
            })
            .collect();
        let settings = Settings {
            reference_data: setting,
            ..Settings::default()
        };
        assert_eq!(
            run_with(&rows, false, true, Some(&stored()), &settings),
            rows.len()
        );
    }
}

/// (rule, scopes, fhirUser, request, with Unrestricted, with ConfineToFhirUser)
#[rustfmt::skip]
const USER_SCOPE_ROWS: &[UserScopeRow] = &[
    ("user.patient-user-own-record", "user/Observation.rs", Some("Patient/p1"), "GET /Observation?subject=Patient/p1", Allow, Strict),
    ("user.patient-user-other-record", "user/Observation.rs", Some("Patient/p1"), "GET /Observation?subject=Patient/p2", Allow, Deny),
    ("user.patient-user-unpinned", "user/Observation.rs", Some("Patient/p1"), "GET /Observation?code=x", Allow, Deny),
    ("user.patient-user-absolute-claim", "user/Patient.r", Some("https://ehr.example/fhir/Patient/p1"), "GET /Patient/p2", Allow, Deny),
    ("user.patient-user-own-patient", "user/Patient.r", Some("https://ehr.example/fhir/Patient/p1"), "GET /Patient/p1", Allow, Allow),
    ("user.patient-user-stored-other", "user/Observation.r", Some("Patient/p1"), "GET /Observation/o2", Allow, Deny),
    ("user.patient-user-stored-own", "user/Observation.r", Some("Patient/p1"), "GET /Observation/o1", Allow, Allow),
    ("user.practitioner-unrestricted", "user/Observation.rs", Some("Practitioner/d1"), "GET /Observation?code=x", Allow, Allow),
    ("user.practitioner-role-unrestricted", "user/Observation.rs", Some("PractitionerRole/r1"), "GET /Observation?code=x", Allow, Allow),
    ("user.related-person-unrestricted", "user/Observation.rs", Some("RelatedPerson/x"), "GET /Observation?code=x", Allow, Allow),
    ("user.no-fhir-user", "user/Observation.rs", None, "GET /Observation?code=x", Allow, Deny),
    ("user.organization-is-no-user", "user/Observation.rs", Some("Organization/o1"), "GET /Observation?code=x", Allow, Deny),
    ("user.device-is-no-user", "user/Observation.rs", Some("Device/d1"), "GET /Observation?code=x", Allow, Deny),
    ("user.malformed-claim", "user/Observation.rs", Some("not a reference"), "GET /Observation?code=x", Allow, Deny),
    ("user.system-unaffected", "system/Observation.rs", None, "GET /Observation?code=x", Allow, Allow),
];

#[test]
fn user_scopes_setting_table() {
    for confine in [false, true] {
        for (rule, scopes, fhir_user, line, unrestricted, confined) in USER_SCOPE_ROWS {
            let rows: Vec<Row> = vec![(
                rule,
                scopes,
                None,
                line,
                None,
                if confine { *confined } else { *unrestricted },
            )];
            let settings = Settings {
                confine: confine.then_some(*fhir_user),
                ..Settings::default()
            };
            assert_eq!(run_with(&rows, false, true, Some(&stored()), &settings), 1);
        }
    }
}

mod review2;
