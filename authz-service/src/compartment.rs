//! The FHIR R4 (4.0.1) Patient compartment: which resource types belong to a patient, through
//! which search parameters, and where each parameter's reference sits in the resource.
//!
//! The parameter names come from CompartmentDefinition/patient; the element paths from the
//! R4 SearchParameter expressions of those parameters (`Condition.patient` is
//! `Condition.subject`, `Appointment.actor` is `Appointment.participant.actor`, ...). Where an
//! expression filters by type (`where(resolve() is Patient)`), only references of the form
//! `Patient/<id>` ever match here, which is the same restriction.
//!
//! Against the R4 ballot (3.5.0) definition, R4 4.0.1 adds CoverageEligibilityResponse
//! (`patient`), MolecularSequence (`patient`), `author` on DocumentManifest (replacing
//! `agent`) and DocumentReference, and drops the ballot-only ItemInstance and UserSession.

/// (resource type, [(search parameter, element path)]). Paths are dot-separated; arrays are
/// traversed at every step.
pub const PATIENT_COMPARTMENT: &[(&str, &[(&str, &str)])] = &[
    ("Account", &[("subject", "subject")]),
    ("AdverseEvent", &[("subject", "subject")]),
    (
        "AllergyIntolerance",
        &[
            ("patient", "patient"),
            ("recorder", "recorder"),
            ("asserter", "asserter"),
        ],
    ),
    ("Appointment", &[("actor", "participant.actor")]),
    ("AppointmentResponse", &[("actor", "actor")]),
    (
        "AuditEvent",
        &[("patient", "agent.who"), ("patient", "entity.what")],
    ),
    ("Basic", &[("patient", "subject"), ("author", "author")]),
    ("BodyStructure", &[("patient", "patient")]),
    (
        "CarePlan",
        &[
            ("patient", "subject"),
            ("performer", "activity.detail.performer"),
        ],
    ),
    (
        "CareTeam",
        &[
            ("patient", "subject"),
            ("participant", "participant.member"),
        ],
    ),
    ("ChargeItem", &[("subject", "subject")]),
    ("Claim", &[("patient", "patient"), ("payee", "payee.party")]),
    ("ClaimResponse", &[("patient", "patient")]),
    ("ClinicalImpression", &[("subject", "subject")]),
    (
        "Communication",
        &[
            ("subject", "subject"),
            ("sender", "sender"),
            ("recipient", "recipient"),
        ],
    ),
    (
        "CommunicationRequest",
        &[
            ("subject", "subject"),
            ("sender", "sender"),
            ("recipient", "recipient"),
            ("requester", "requester"),
        ],
    ),
    (
        "Composition",
        &[
            ("subject", "subject"),
            ("author", "author"),
            ("attester", "attester.party"),
        ],
    ),
    (
        "Condition",
        &[("patient", "subject"), ("asserter", "asserter")],
    ),
    ("Consent", &[("patient", "patient")]),
    (
        "Coverage",
        &[
            ("policy-holder", "policyHolder"),
            ("subscriber", "subscriber"),
            ("beneficiary", "beneficiary"),
            ("payor", "payor"),
        ],
    ),
    ("CoverageEligibilityRequest", &[("patient", "patient")]),
    ("CoverageEligibilityResponse", &[("patient", "patient")]),
    ("DetectedIssue", &[("patient", "patient")]),
    (
        "DeviceRequest",
        &[("subject", "subject"), ("performer", "performer")],
    ),
    ("DeviceUseStatement", &[("subject", "subject")]),
    ("DiagnosticReport", &[("subject", "subject")]),
    (
        "DocumentManifest",
        &[
            ("subject", "subject"),
            ("author", "author"),
            ("recipient", "recipient"),
        ],
    ),
    (
        "DocumentReference",
        &[("subject", "subject"), ("author", "author")],
    ),
    ("Encounter", &[("patient", "subject")]),
    ("EnrollmentRequest", &[("subject", "candidate")]),
    ("EpisodeOfCare", &[("patient", "patient")]),
    (
        "ExplanationOfBenefit",
        &[("patient", "patient"), ("payee", "payee.party")],
    ),
    ("FamilyMemberHistory", &[("patient", "patient")]),
    ("Flag", &[("patient", "subject")]),
    ("Goal", &[("patient", "subject")]),
    ("Group", &[("member", "member.entity")]),
    ("ImagingStudy", &[("patient", "subject")]),
    ("Immunization", &[("patient", "patient")]),
    ("ImmunizationEvaluation", &[("patient", "patient")]),
    ("ImmunizationRecommendation", &[("patient", "patient")]),
    (
        "Invoice",
        &[
            ("subject", "subject"),
            ("patient", "subject"),
            ("recipient", "recipient"),
        ],
    ),
    ("List", &[("subject", "subject"), ("source", "source")]),
    ("MeasureReport", &[("patient", "subject")]),
    ("Media", &[("subject", "subject")]),
    (
        "MedicationAdministration",
        &[
            ("patient", "subject"),
            ("performer", "performer.actor"),
            ("subject", "subject"),
        ],
    ),
    (
        "MedicationDispense",
        &[
            ("subject", "subject"),
            ("patient", "subject"),
            ("receiver", "receiver"),
        ],
    ),
    ("MedicationRequest", &[("subject", "subject")]),
    ("MedicationStatement", &[("subject", "subject")]),
    ("MolecularSequence", &[("patient", "patient")]),
    ("NutritionOrder", &[("patient", "patient")]),
    (
        "Observation",
        &[("subject", "subject"), ("performer", "performer")],
    ),
    ("Patient", &[("link", "link.other")]),
    ("Person", &[("patient", "link.target")]),
    (
        "Procedure",
        &[("patient", "subject"), ("performer", "performer.actor")],
    ),
    ("Provenance", &[("patient", "target")]),
    (
        "QuestionnaireResponse",
        &[("subject", "subject"), ("author", "author")],
    ),
    ("RelatedPerson", &[("patient", "patient")]),
    (
        "RequestGroup",
        &[
            ("subject", "subject"),
            ("participant", "action.participant"),
        ],
    ),
    ("ResearchSubject", &[("individual", "individual")]),
    ("RiskAssessment", &[("subject", "subject")]),
    ("Schedule", &[("actor", "actor")]),
    (
        "ServiceRequest",
        &[("subject", "subject"), ("performer", "performer")],
    ),
    ("Specimen", &[("subject", "subject")]),
    ("SupplyDelivery", &[("patient", "patient")]),
    ("SupplyRequest", &[("requester", "requester")]),
    ("VisionPrescription", &[("patient", "patient")]),
];

fn entry(resource_type: &str) -> Option<&'static [(&'static str, &'static str)]> {
    PATIENT_COMPARTMENT
        .binary_search_by(|(t, _)| t.cmp(&resource_type))
        .ok()
        .map(|i| PATIENT_COMPARTMENT[i].1)
}

/// Whether a resource type can be in a patient's compartment at all.
pub fn in_compartment_table(resource_type: &str) -> bool {
    entry(resource_type).is_some()
}

/// The search parameters that link a type to the patient (deduplicated, in table order).
pub fn params(resource_type: &str) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for (p, _) in entry(resource_type).unwrap_or(&[]) {
        if !out.contains(p) {
            out.push(p);
        }
    }
    out
}

/// Types with R4's shared `clinical-patient` search parameter (`patient`): the Patient-only
/// form of the element their compartment membership goes through (for Observation,
/// `Observation.subject.where(resolve() is Patient)`). Searching `patient=X` on them is pinned
/// exactly as `subject=Patient/X` is, and is what most clients send.
const CLINICAL_PATIENT: &[&str] = &[
    "AllergyIntolerance",
    "CarePlan",
    "CareTeam",
    "ClinicalImpression",
    "Composition",
    "Condition",
    "Consent",
    "DetectedIssue",
    "DeviceRequest",
    "DeviceUseStatement",
    "DiagnosticReport",
    "DocumentManifest",
    "DocumentReference",
    "Encounter",
    "EpisodeOfCare",
    "FamilyMemberHistory",
    "Flag",
    "Goal",
    "ImagingStudy",
    "Immunization",
    "List",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationRequest",
    "MedicationStatement",
    "NutritionOrder",
    "Observation",
    "Procedure",
    "RiskAssessment",
    "ServiceRequest",
    "SupplyDelivery",
    "VisionPrescription",
];

/// Search parameters that pin a search of `resource_type` to one patient: the compartment
/// parameters, plus `patient` where R4 defines it as the Patient-only form of one of them.
pub fn pin_params(resource_type: &str) -> Vec<&'static str> {
    let mut out = params(resource_type);
    if CLINICAL_PATIENT.contains(&resource_type) && !out.contains(&"patient") {
        out.push("patient");
    }
    out
}

/// The parameter used to narrow an unpinned search: the table's first one, except that the
/// parameter named `patient` is preferred where it exists (it only matches patients).
pub fn narrowing_param(resource_type: &str) -> Option<&'static str> {
    let ps = params(resource_type);
    ps.iter().find(|p| **p == "patient").or(ps.first()).copied()
}

/// Every reference string at a dot path, traversing arrays at each step.
fn references_at<'a>(value: &'a serde_json::Value, path: &str, out: &mut Vec<&'a str>) {
    match path.split_once('.') {
        None => collect(value.get(path), out),
        Some((head, rest)) => match value.get(head) {
            Some(serde_json::Value::Array(items)) => {
                for i in items {
                    references_at(i, rest, out);
                }
            }
            Some(v @ serde_json::Value::Object(_)) => references_at(v, rest, out),
            _ => {}
        },
    }
}

fn collect<'a>(v: Option<&'a serde_json::Value>, out: &mut Vec<&'a str>) {
    match v {
        Some(serde_json::Value::Array(items)) => {
            for i in items {
                collect(Some(i), out);
            }
        }
        Some(obj @ serde_json::Value::Object(_)) => {
            if let Some(r) = obj.get("reference").and_then(|r| r.as_str()) {
                out.push(r);
            }
        }
        _ => {}
    }
}

/// The patient ids a reference string names, when it is a relative `Patient/<id>` (optionally
/// versioned). Absolute URLs never count: fhirguard cannot tell this server's base from
/// another server's, and a reference to another server's patient is not this patient.
pub fn patient_id_of_reference(reference: &str) -> Option<&str> {
    let rest = reference.strip_prefix("Patient/")?;
    let id = rest.split('/').next()?;
    let tail = &rest[id.len()..];
    (!id.is_empty() && (tail.is_empty() || tail.starts_with("/_history/"))).then_some(id)
}

/// The patients whose compartment a resource is in (a Patient is in its own).
pub fn patients_of(resource: &serde_json::Value) -> Vec<String> {
    let Some(rt) = resource.get("resourceType").and_then(|t| t.as_str()) else {
        return Vec::new();
    };
    if rt == "Patient" {
        return resource
            .get("id")
            .and_then(|i| i.as_str())
            .map(|i| vec![i.to_string()])
            .unwrap_or_default();
    }
    let Some(paths) = entry(rt) else {
        return Vec::new();
    };
    let mut refs = Vec::new();
    for (_, path) in paths {
        references_at(resource, path, &mut refs);
    }
    let mut out: Vec<String> = refs
        .into_iter()
        .filter_map(patient_id_of_reference)
        .map(str::to_string)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Whether a resource (a body being written, or the stored one) is in `patient`'s compartment.
pub fn resource_in_compartment(resource: &serde_json::Value, patient: &str) -> bool {
    patients_of(resource).iter().any(|p| p == patient)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_table_is_sorted_and_every_type_names_parameters() {
        for w in PATIENT_COMPARTMENT.windows(2) {
            assert!(w[0].0 < w[1].0, "{} before {}", w[0].0, w[1].0);
        }
        assert_eq!(PATIENT_COMPARTMENT.len(), 66);
        for (t, ps) in PATIENT_COMPARTMENT {
            assert!(!ps.is_empty(), "{t}");
        }
    }

    /// Spot checks against CompartmentDefinition/patient (R4).
    #[test]
    fn compartment_parameters_per_type() {
        let cases: &[(&str, &[&str])] = &[
            ("Observation", &["subject", "performer"]),
            ("Condition", &["patient", "asserter"]),
            ("AllergyIntolerance", &["patient", "recorder", "asserter"]),
            ("Encounter", &["patient"]),
            ("MedicationRequest", &["subject"]),
            (
                "MedicationAdministration",
                &["patient", "performer", "subject"],
            ),
            (
                "Coverage",
                &["policy-holder", "subscriber", "beneficiary", "payor"],
            ),
            ("Group", &["member"]),
            ("ResearchSubject", &["individual"]),
            ("Appointment", &["actor"]),
            ("DocumentReference", &["subject", "author"]),
            ("Provenance", &["patient"]),
            ("AuditEvent", &["patient"]),
        ];
        for (t, want) in cases {
            assert_eq!(params(t), *want, "{t}");
        }
        for outside in [
            "Medication",
            "Practitioner",
            "Organization",
            "Location",
            "ValueSet",
            "Task",
            "Device",
            "Binary",
        ] {
            assert!(!in_compartment_table(outside), "{outside}");
        }
        assert_eq!(narrowing_param("Condition"), Some("patient"));
        assert_eq!(narrowing_param("Observation"), Some("subject"));
    }

    #[test]
    fn membership_follows_the_element_paths() {
        let obs = json!({"resourceType": "Observation", "subject": {"reference": "Patient/7"}});
        assert!(resource_in_compartment(&obs, "7"));
        assert!(!resource_in_compartment(&obs, "8"));
        let perf = json!({"resourceType": "Observation", "subject": {"reference": "Group/1"},
            "performer": [{"reference": "Practitioner/1"}, {"reference": "Patient/7/_history/2"}]});
        assert!(resource_in_compartment(&perf, "7"));
        let appt = json!({"resourceType": "Appointment", "participant": [{"actor": {"reference": "Patient/7"}}]});
        assert!(resource_in_compartment(&appt, "7"));
        let cond = json!({"resourceType": "Condition", "subject": {"reference": "Patient/7"}});
        assert!(
            resource_in_compartment(&cond, "7"),
            "Condition.patient is Condition.subject"
        );
        let abs = json!({"resourceType": "Observation", "subject": {"reference": "https://other.example/fhir/Patient/7"}});
        assert!(
            !resource_in_compartment(&abs, "7"),
            "absolute references never count"
        );
        let pat = json!({"resourceType": "Patient", "id": "7"});
        assert!(resource_in_compartment(&pat, "7"));
        let med = json!({"resourceType": "Medication", "id": "7"});
        assert!(!resource_in_compartment(&med, "7"));
        let tricky = json!({"resourceType": "Observation", "subject": {"reference": "Patient/7x"}});
        assert!(!resource_in_compartment(&tricky, "7"));
        assert_eq!(patient_id_of_reference("Patient/7/extra"), None);
    }
}
