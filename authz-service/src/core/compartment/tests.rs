use super::*;
use serde_json::json;

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
    assert_eq!(
        definitions::PATIENT_COMPARTMENT.len(),
        66,
        "65 types and Patient (R4 4.0.1)"
    );
}

#[test]
fn pins_come_from_the_element_paths() {
    // (type, parameter, pins?)
    let cases = [
        ("Observation", "subject", true),
        ("Observation", "performer", true),
        ("Observation", "patient", true),
        ("Observation", "encounter", false),
        ("Observation", "focus", false),
        ("Condition", "subject", true),
        ("Coverage", "patient", true),
        ("Coverage", "beneficiary", true),
        ("Encounter", "subject", true),
        ("Patient", "_id", true),
        ("Patient", "link", false),
        ("Medication", "subject", false),
        // Provenance's compartment link is `target` (where it is a Patient): `target=Patient/1` pins.
        ("Provenance", "target", true),
        ("Encounter", "patient", true),
        ("SupplyRequest", "subject", true),
        ("SupplyRequest", "requester", false),
        ("Task", "patient", false),
    ];
    for (t, p, want) in cases {
        assert_eq!(is_pin_param(t, p), want, "{t}.{p}");
    }
    assert!(bare_id_means_patient("Observation", "patient"));
    assert!(!bare_id_means_patient("Observation", "subject"));
    assert_eq!(
        single_valued_paths("Observation", "subject"),
        vec![&["subject"][..]]
    );
    assert!(single_valued_paths("Observation", "performer").is_empty());
    assert!(single_valued_paths("Group", "member").is_empty());
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
    assert!(resource_in_compartment(&cond, "7"));
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
    assert_eq!(patient_id_of_reference("Patient/7/_history/3"), Some("7"));
    assert_eq!(patient_id_of_reference("Patient/7/"), None);
    assert_eq!(patient_id_of_reference("Patient//7"), None);
}

#[test]
fn references_are_read_strictly() {
    let contained = vec![
        json!({"resourceType": "Patient", "id": "p"}),
        json!({"resourceType": "Practitioner", "id": "d"}),
    ];
    let cases: &[(Option<&str>, Option<&str>, bool, Ref)] = &[
        (Some("Patient/1"), None, false, Ref::Patient("1")),
        (Some("Patient/1/_history/2"), None, false, Ref::Patient("1")),
        (Some("Patient/1"), Some("Patient"), false, Ref::Patient("1")),
        (Some("Patient/1"), Some("Group"), false, Ref::Unknown),
        (Some("Practitioner/1"), None, false, Ref::Other),
        (Some("Group/1"), None, false, Ref::Other),
        (
            Some("https://x.example/fhir/Patient/1"),
            None,
            false,
            Ref::UnidentifiedPatient,
        ),
        (
            Some("https://x.example/fhir/Patient/1/_history/2"),
            None,
            false,
            Ref::UnidentifiedPatient,
        ),
        (
            Some("https://x.example/fhir/Practitioner/1"),
            None,
            false,
            Ref::Other,
        ),
        (
            Some("Patient?identifier=mrn|456"),
            None,
            false,
            Ref::UnidentifiedPatient,
        ),
        (Some("Practitioner?identifier=x"), None, false, Ref::Other),
        (Some("#p"), None, false, Ref::UnidentifiedPatient),
        (Some("#d"), None, false, Ref::Other),
        (Some("#nope"), None, false, Ref::Unknown),
        (Some("urn:uuid:9b1c"), None, false, Ref::Unknown),
        (Some("patient/1"), None, false, Ref::UnidentifiedPatient),
        (Some("Patient/1/"), None, false, Ref::UnidentifiedPatient),
        (Some("Patient/%31"), None, false, Ref::UnidentifiedPatient),
        (None, None, true, Ref::UnidentifiedPatient),
        (None, Some("Patient"), true, Ref::UnidentifiedPatient),
        (None, Some("Practitioner"), true, Ref::Other),
        (None, None, false, Ref::Other),
    ];
    for (r, t, ident, want) in cases {
        assert_eq!(
            read_reference(*r, *t, *ident, &contained),
            *want,
            "{r:?} {t:?}"
        );
    }
}

/// Writes: every patient reference on the compartment paths must be the context patient.
#[test]
fn ownership_table() {
    let cases: &[(&str, serde_json::Value, Result<(), NotOwned>)] = &[
        (
            "own-subject",
            json!({"resourceType":"Observation","subject":{"reference":"Patient/1"}}),
            Ok(()),
        ),
        (
            "own-performer-only",
            json!({"resourceType":"Observation","performer":[{"reference":"Patient/1"}]}),
            Ok(()),
        ),
        (
            "own-with-practitioner",
            json!({"resourceType":"Observation","subject":{"reference":"Patient/1"},"performer":[{"reference":"Practitioner/9"}]}),
            Ok(()),
        ),
        (
            "subject-other-performer-own",
            json!({"resourceType":"Observation","subject":{"reference":"Patient/2"},"performer":[{"reference":"Patient/1"}]}),
            Err(NotOwned::OtherPatient),
        ),
        (
            "performer-other",
            json!({"resourceType":"Observation","subject":{"reference":"Patient/1"},"performer":[{"reference":"Patient/2"}]}),
            Err(NotOwned::OtherPatient),
        ),
        (
            "conditional-subject",
            json!({"resourceType":"Observation","subject":{"reference":"Patient?identifier=mrn|2"},"performer":[{"reference":"Patient/1"}]}),
            Err(NotOwned::Unidentified),
        ),
        (
            "absolute-subject",
            json!({"resourceType":"Observation","subject":{"reference":"https://x/fhir/Patient/1"}}),
            Err(NotOwned::Unidentified),
        ),
        (
            "logical-subject",
            json!({"resourceType":"Observation","subject":{"identifier":{"system":"mrn","value":"2"}},"performer":[{"reference":"Patient/1"}]}),
            Err(NotOwned::Unidentified),
        ),
        (
            "urn-subject",
            json!({"resourceType":"Observation","subject":{"reference":"urn:uuid:1"},"performer":[{"reference":"Patient/1"}]}),
            Err(NotOwned::Unidentified),
        ),
        (
            "contained-patient",
            json!({"resourceType":"Observation","contained":[{"resourceType":"Patient","id":"x"}],"subject":{"reference":"#x"},"performer":[{"reference":"Patient/1"}]}),
            Err(NotOwned::Unidentified),
        ),
        (
            "no-link",
            json!({"resourceType":"Observation","subject":{"reference":"Group/1"}}),
            Err(NotOwned::NoLink),
        ),
        (
            "focus-other",
            json!({"resourceType":"Observation","subject":{"reference":"Patient/1"},"focus":[{"reference":"Patient/2"}]}),
            Err(NotOwned::ElsewhereOtherPatient),
        ),
        (
            "extension-other",
            json!({"resourceType":"Observation","subject":{"reference":"Patient/1"},"extension":[{"url":"x","valueReference":{"reference":"Patient/2"}}]}),
            Err(NotOwned::ElsewhereOtherPatient),
        ),
        (
            "contained-ref-other",
            json!({"resourceType":"Observation","subject":{"reference":"Patient/1"},"contained":[{"resourceType":"Observation","id":"c","subject":{"reference":"Patient/2"}}]}),
            Err(NotOwned::ElsewhereOtherPatient),
        ),
        (
            "group-member-other",
            json!({"resourceType":"Group","member":[{"entity":{"reference":"Patient/1"}},{"entity":{"reference":"Patient/2"}}]}),
            Err(NotOwned::OtherPatient),
        ),
        (
            "provenance-target-obs",
            json!({"resourceType":"Provenance","target":[{"reference":"Patient/1"},{"reference":"Observation/5"}]}),
            Ok(()),
        ),
        (
            "patient-own",
            json!({"resourceType":"Patient","id":"1"}),
            Ok(()),
        ),
        (
            "patient-link-other",
            json!({"resourceType":"Patient","id":"1","link":[{"other":{"reference":"Patient/2"},"type":"seealso"}]}),
            Err(NotOwned::ElsewhereOtherPatient),
        ),
    ];
    for (name, body, want) in cases {
        let t = body["resourceType"].as_str().unwrap();
        assert_eq!(owned_body(body, t, "1"), *want, "{name}");
    }
}
