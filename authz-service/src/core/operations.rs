//! The FHIR operations fhirguard knows, and what each needs.
//!
//! An operation is a function the server runs, and what it returns is up to its definition:
//! `Patient/123/$everything` returns a whole record, `$graphql` whatever the query walks to,
//! `$match` other patients. A generic "read-only operation on this type" rule therefore cannot
//! be proven to stay inside a scope. Every operation is looked up here by its exact name (FHIR
//! names are case-sensitive; a server that matched `$Everything` loosely would otherwise run
//! `$everything` under rules written for an unknown operation), and one fhirguard does not know
//! needs rights on every type with every permission.

/// What an operation can return or change, which decides the permission it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// One patient's whole record: `Patient/<id>/$everything`, `Patient/<id>/$summary`.
    PatientRecord,
    /// Resources of any type, not bounded by the request (`$graphql`, `$document`,
    /// `Encounter/<id>/$everything`, type-level `Patient/$everything`).
    AnyType,
    /// Bulk data export.
    Export,
    /// A search by another name (`Observation/$lastn`, `$stats`): decided as a search of the type.
    Search,
    /// Reads the instance it is invoked on (`Observation/1/$meta`, `$validate` on an instance).
    ReadInstance,
    /// Changes the instance it is invoked on (`$meta-add`, `$meta-delete`).
    WriteInstance,
    /// Touches no patient's data: terminology and conformance (`$expand`, `$lookup`,
    /// `$validate` of a posted resource, `$versions`, type- and system-level `$meta`).
    NoPatientData,
    /// Reads or compares across patients (`$match`, `$evaluate-measure`, `$apply`, ...).
    CrossPatient,
}

/// Where an operation may be invoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    System,
    Type,
    Instance,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpSpec {
    pub name: &'static str,
    /// Types it is defined on (`&[]`: any type, or none at system level).
    pub types: &'static [&'static str],
    pub levels: &'static [Level],
    pub kind: OpKind,
    /// R4 `affectsState`: invoking it changes stored data, so it must be POSTed.
    pub affects_state: bool,
}

use Level::*;
use OpKind::*;

const ANY: &[&str] = &[];

/// The operations of FHIR R4 (and IPS `$summary`, Bulk Data `$export`) fhirguard decides.
#[rustfmt::skip]
pub const OPERATIONS: &[OpSpec] = &[
    OpSpec { name: "everything", types: &["Patient"], levels: &[Instance], kind: PatientRecord, affects_state: false },
    OpSpec { name: "everything", types: &["Patient", "Encounter"], levels: &[Type, Instance], kind: AnyType, affects_state: false },
    OpSpec { name: "summary", types: &["Patient"], levels: &[Instance], kind: PatientRecord, affects_state: false },
    OpSpec { name: "document", types: &["Composition"], levels: &[Type, Instance], kind: AnyType, affects_state: false },
    OpSpec { name: "graphql", types: ANY, levels: &[System, Instance], kind: AnyType, affects_state: false },
    OpSpec { name: "export", types: &["Patient"], levels: &[Type], kind: Export, affects_state: false },
    OpSpec { name: "export", types: &["Group"], levels: &[Instance], kind: Export, affects_state: false },
    OpSpec { name: "export", types: ANY, levels: &[System], kind: Export, affects_state: false },
    OpSpec { name: "lastn", types: &["Observation"], levels: &[Type], kind: Search, affects_state: false },
    OpSpec { name: "stats", types: &["Observation"], levels: &[Type], kind: Search, affects_state: false },
    OpSpec { name: "meta", types: ANY, levels: &[Instance], kind: ReadInstance, affects_state: false },
    OpSpec { name: "meta", types: ANY, levels: &[System, Type], kind: NoPatientData, affects_state: false },
    OpSpec { name: "meta-add", types: ANY, levels: &[Instance], kind: WriteInstance, affects_state: true },
    OpSpec { name: "meta-delete", types: ANY, levels: &[Instance], kind: WriteInstance, affects_state: true },
    OpSpec { name: "validate", types: ANY, levels: &[Instance], kind: ReadInstance, affects_state: false },
    OpSpec { name: "validate", types: ANY, levels: &[Type], kind: NoPatientData, affects_state: false },
    OpSpec { name: "expand", types: &["ValueSet"], levels: &[Type, Instance], kind: NoPatientData, affects_state: false },
    OpSpec { name: "validate-code", types: &["ValueSet", "CodeSystem"], levels: &[Type, Instance], kind: NoPatientData, affects_state: false },
    OpSpec { name: "lookup", types: &["CodeSystem"], levels: &[Type], kind: NoPatientData, affects_state: false },
    OpSpec { name: "subsumes", types: &["CodeSystem"], levels: &[Type, Instance], kind: NoPatientData, affects_state: false },
    OpSpec { name: "translate", types: &["ConceptMap"], levels: &[Type, Instance], kind: NoPatientData, affects_state: false },
    OpSpec { name: "closure", types: ANY, levels: &[System], kind: NoPatientData, affects_state: true },
    OpSpec { name: "versions", types: ANY, levels: &[System], kind: NoPatientData, affects_state: false },
    OpSpec { name: "conforms", types: &["CapabilityStatement"], levels: &[Type], kind: NoPatientData, affects_state: false },
    OpSpec { name: "implements", types: &["CapabilityStatement"], levels: &[Type, Instance], kind: NoPatientData, affects_state: false },
    OpSpec { name: "subset", types: &["CapabilityStatement"], levels: &[Type, Instance], kind: NoPatientData, affects_state: false },
    OpSpec { name: "snapshot", types: &["StructureDefinition"], levels: &[Type, Instance], kind: NoPatientData, affects_state: false },
    OpSpec { name: "questionnaire", types: &["StructureDefinition"], levels: &[Type, Instance], kind: NoPatientData, affects_state: false },
    OpSpec { name: "match", types: &["Patient"], levels: &[Type], kind: CrossPatient, affects_state: false },
    OpSpec { name: "evaluate-measure", types: &["Measure"], levels: &[Type, Instance], kind: CrossPatient, affects_state: false },
    OpSpec { name: "data-requirements", types: &["Library", "Measure"], levels: &[Instance], kind: NoPatientData, affects_state: false },
    OpSpec { name: "collect-data", types: &["Measure"], levels: &[Type, Instance], kind: CrossPatient, affects_state: false },
    OpSpec { name: "care-gaps", types: &["Measure"], levels: &[Type], kind: CrossPatient, affects_state: false },
    OpSpec { name: "submit-data", types: &["Measure"], levels: &[Type, Instance], kind: CrossPatient, affects_state: true },
    OpSpec { name: "apply", types: &["PlanDefinition", "ActivityDefinition"], levels: &[Instance], kind: CrossPatient, affects_state: false },
    OpSpec { name: "populate", types: &["Questionnaire"], levels: &[Type, Instance], kind: CrossPatient, affects_state: false },
    OpSpec { name: "process-message", types: ANY, levels: &[System], kind: CrossPatient, affects_state: true },
    OpSpec { name: "find", types: &["MessageHeader"], levels: &[Type], kind: CrossPatient, affects_state: false },
    OpSpec { name: "transform", types: &["StructureMap"], levels: &[Type, Instance], kind: NoPatientData, affects_state: false },
    OpSpec { name: "convert", types: ANY, levels: &[System], kind: NoPatientData, affects_state: false },
];

/// The spec of `$name` invoked at `level` on `resource_type`, when fhirguard knows it.
pub fn lookup(name: &str, level: Level, resource_type: Option<&str>) -> Option<&'static OpSpec> {
    OPERATIONS.iter().find(|o| {
        o.name == name
            && o.levels.contains(&level)
            && match (level, resource_type) {
                (System, _) => true,
                (_, Some(t)) => o.types.is_empty() || o.types.contains(&t),
                (_, None) => false,
            }
    })
}

fn folded(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '-' && *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

/// A known operation name that `name` is a different spelling of (`Everything`,
/// `meta_add`, `EVERYTHING`), if any.
pub fn respelling_of(name: &str) -> Option<&'static str> {
    let f = folded(name);
    OPERATIONS
        .iter()
        .find(|o| o.name != name && folded(o.name) == f)
        .map(|o| o.name)
        .filter(|known| {
            !OPERATIONS
                .iter()
                .any(|o| o.name == name && o.name != *known)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_names_and_levels() {
        assert_eq!(
            lookup("everything", Instance, Some("Patient")).map(|o| o.kind),
            Some(PatientRecord)
        );
        assert_eq!(
            lookup("everything", Type, Some("Patient")).map(|o| o.kind),
            Some(AnyType)
        );
        assert_eq!(
            lookup("everything", Instance, Some("Encounter")).map(|o| o.kind),
            Some(AnyType)
        );
        assert!(lookup("everything", Instance, Some("Observation")).is_none());
        assert!(lookup("Everything", Instance, Some("Patient")).is_none());
        assert_eq!(
            lookup("meta", System, None).map(|o| o.kind),
            Some(NoPatientData)
        );
        assert_eq!(
            lookup("meta", Instance, Some("Observation")).map(|o| o.kind),
            Some(ReadInstance)
        );
        assert!(lookup("meta-add", Type, Some("Observation")).is_none());
        assert!(lookup("lastn", Type, Some("Observation")).is_some());
        assert!(lookup("lastn", Type, Some("Condition")).is_none());
    }

    #[test]
    fn respellings_are_recognised() {
        for (given, known) in [
            ("Everything", Some("everything")),
            ("EVERYTHING", Some("everything")),
            ("everyThing", Some("everything")),
            ("meta_add", Some("meta-add")),
            ("metaadd", Some("meta-add")),
            ("Meta-Add", Some("meta-add")),
            ("GraphQL", Some("graphql")),
            ("everything", None),
            ("meta", None),
            ("reindex", None),
        ] {
            assert_eq!(respelling_of(given), known, "{given}");
        }
    }

    #[test]
    fn state_changing_operations_are_marked() {
        for name in [
            "meta-add",
            "meta-delete",
            "closure",
            "process-message",
            "submit-data",
        ] {
            assert!(
                OPERATIONS.iter().any(|o| o.name == name && o.affects_state),
                "{name}"
            );
        }
    }
}
