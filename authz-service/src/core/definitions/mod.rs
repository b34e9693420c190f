//! FHIR R4 definitions fhirguard decides with, generated from the published R4 4.0.1
//! definitions (`scripts/fhir-r4/gen.py`; the extract it reads is
//! `authz-service/data/fhir-r4.json`, and a test fails when the two disagree).
//!
//! - the Patient CompartmentDefinition: which types a patient's compartment holds and the
//!   search parameters that link each type to the patient;
//! - every reference, token, string and uri SearchParameter: its target types and the element
//!   paths its expression walks, with whether each path can hold more than one value.
//!
//! Rules built on them (pins, includes, write checks, granular filters) are only as strong as
//! these facts, which is why they come from the definitions rather than from memory.

// Generated; rustfmt would reformat it away from what the generator writes.
#[rustfmt::skip]
mod r4;

pub use r4::{PATIENT_COMPARTMENT, RESOURCE_TYPES, SEARCH_PARAMS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    Reference,
    Token,
    String,
    Uri,
}

/// One path of a search parameter's expression, as JSON keys from the resource root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElementPath {
    /// JSON member names; a choice element is already resolved (`valueQuantity`).
    pub keys: &'static [&'static str],
    /// The top-level element as FHIR names it (`value` for `valueQuantity`), which is what a
    /// FHIRPath Patch names and the stem every JSON spelling of a choice element shares.
    pub root: &'static str,
    /// Whether any step can repeat, so that the path can hold more than one value.
    pub multi: bool,
    /// The FHIR type at the end of the path (`Reference`, `CodeableConcept`, `string`, ...).
    pub value_type: &'static str,
    /// `.where(resolve() is T)`: only references to `T` count.
    pub only_type: Option<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchParam {
    pub base: &'static str,
    pub code: &'static str,
    pub kind: ParamKind,
    /// For reference parameters: the types a matching reference can point to (the
    /// parameter's declared targets and those of the elements it reads); empty when any type
    /// can be referenced.
    pub targets: &'static [&'static str],
    /// Empty when the expression is of a form fhirguard does not evaluate.
    pub paths: &'static [ElementPath],
}

/// The definition of search parameter `code` on `base`.
pub fn search_param(base: &str, code: &str) -> Option<&'static SearchParam> {
    SEARCH_PARAMS
        .binary_search_by(|p| (p.base, p.code).cmp(&(base, code)))
        .ok()
        .map(|i| &SEARCH_PARAMS[i])
}

/// Every search parameter defined on `base`.
pub fn search_params(base: &str) -> &'static [SearchParam] {
    let start = SEARCH_PARAMS.partition_point(|p| p.base < base);
    let end = SEARCH_PARAMS.partition_point(|p| p.base <= base);
    &SEARCH_PARAMS[start..end]
}

pub fn is_resource_type(t: &str) -> bool {
    RESOURCE_TYPES.binary_search(&t).is_ok()
}

/// The parameters linking `resource_type` to a patient, or `None` when the type is not in
/// the Patient compartment at all.
pub fn compartment_params(resource_type: &str) -> Option<&'static [&'static str]> {
    PATIENT_COMPARTMENT
        .binary_search_by(|(t, _)| t.cmp(&resource_type))
        .ok()
        .map(|i| PATIENT_COMPARTMENT[i].1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_sorted_for_binary_search() {
        for w in SEARCH_PARAMS.windows(2) {
            assert!((w[0].base, w[0].code) < (w[1].base, w[1].code), "{w:?}");
        }
        for w in PATIENT_COMPARTMENT.windows(2) {
            assert!(w[0].0 < w[1].0);
        }
        for w in RESOURCE_TYPES.windows(2) {
            assert!(w[0] < w[1]);
        }
    }

    #[test]
    fn the_generated_file_matches_the_extract() {
        // The generator is the only writer of r4.rs; this fails when either was edited alone.
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let out = std::process::Command::new("python3")
            .arg(format!("{root}/scripts/fhir-r4/gen.py"))
            .arg("--check")
            .output();
        match out {
            Ok(o) => assert!(
                o.status.success(),
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => panic!("python3 is needed to check the generated FHIR tables: {e}"),
        }
    }

    /// Spot checks against the R4 specification pages, so that a generator bug shows here.
    #[test]
    fn known_definitions() {
        let subject = search_param("Observation", "subject").unwrap();
        assert_eq!(subject.kind, ParamKind::Reference);
        assert_eq!(subject.targets, &["Device", "Group", "Location", "Patient"]);
        assert_eq!(subject.paths.len(), 1);
        assert_eq!(subject.paths[0].keys, &["subject"]);
        assert!(!subject.paths[0].multi, "Observation.subject is 0..1");
        let performer = search_param("Observation", "performer").unwrap();
        assert!(performer.paths[0].multi, "Observation.performer is 0..*");
        let patient = search_param("Observation", "patient").unwrap();
        assert_eq!(patient.targets, &["Patient"]);
        assert_eq!(patient.paths[0].only_type, Some("Patient"));
        let member = search_param("Group", "member").unwrap();
        assert_eq!(member.paths[0].keys, &["member", "entity"]);
        assert!(member.paths[0].multi);
        let audit = search_param("AuditEvent", "patient").unwrap();
        assert_eq!(audit.paths.len(), 2);
        let value = search_param("Observation", "value-concept").unwrap();
        assert_eq!(value.paths[0].keys, &["valueCodeableConcept"]);
        let id = search_param("Patient", "_id").unwrap();
        assert_eq!(id.paths[0].keys, &["id"]);
        assert_eq!(
            compartment_params("Observation"),
            Some(&["subject", "performer"][..])
        );
        assert_eq!(compartment_params("Medication"), None);
        assert_eq!(compartment_params("Patient"), Some(&["link"][..]));
        assert!(is_resource_type("Observation") && !is_resource_type("Resource"));
        assert!(search_params("Observation").len() > 20);
    }
}
