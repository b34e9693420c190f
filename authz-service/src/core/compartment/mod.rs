//! The FHIR R4 Patient compartment, from the generated definitions ([`crate::core::definitions`]):
//! which types belong to a patient, through which search parameters and element paths, and
//! how a reference inside a resource is read.
//!
//! Two different questions are asked of a resource:
//! - **membership** (reads): is it in the patient's compartment? Yes when *any* compartment
//!   path references the patient: that is the CompartmentDefinition's meaning.
//! - **ownership** (writes): may a patient's app write it? Only when it references the context
//!   patient, *every* patient reference on its compartment paths is that patient, and no
//!   reference anywhere in it names another patient. Otherwise `{subject: Patient/456,
//!   performer: [Patient/123]}` would be "in 123's compartment" and writable by 123's app.

use serde_json::Value;

use crate::core::definitions::{self, ElementPath};

/// Whether a resource type can be in a patient's compartment at all.
pub fn in_compartment_table(resource_type: &str) -> bool {
    definitions::compartment_params(resource_type).is_some()
}

/// The search parameters that link a type to the patient, as the CompartmentDefinition lists them.
pub fn params(resource_type: &str) -> Vec<&'static str> {
    definitions::compartment_params(resource_type)
        .map(<[_]>::to_vec)
        .unwrap_or_default()
}

/// Every element path through which `resource_type` is linked to a patient.
pub fn compartment_paths(resource_type: &str) -> Vec<&'static ElementPath> {
    let mut out: Vec<&'static ElementPath> = Vec::new();
    for p in definitions::compartment_params(resource_type).unwrap_or(&[]) {
        if let Some(sp) = definitions::search_param(resource_type, p) {
            for path in sp.paths {
                if !out.iter().any(|o| o.keys == path.keys) {
                    out.push(path);
                }
            }
        }
    }
    out
}

/// Whether search parameter `code` on `resource_type` pins a search to one patient: it is a
/// compartment parameter, or a reference parameter every path of which is a compartment path
/// (R4's `patient` on Observation is `Observation.subject.where(resolve() is Patient)`, the
/// Patient-only form of the compartment parameter `subject`).
pub fn is_pin_param(resource_type: &str, code: &str) -> bool {
    if resource_type == "Patient" {
        return code == "_id";
    }
    let Some(listed) = definitions::compartment_params(resource_type) else {
        return false;
    };
    if listed.contains(&code) {
        return true;
    }
    let Some(sp) = definitions::search_param(resource_type, code) else {
        return false;
    };
    let paths = compartment_paths(resource_type);
    sp.kind == definitions::ParamKind::Reference
        && !sp.paths.is_empty()
        && sp
            .paths
            .iter()
            .all(|p| paths.iter().any(|c| c.keys == p.keys))
}

/// The parameters that pin a search of `resource_type` (for messages and narrowing).
pub fn pin_params(resource_type: &str) -> Vec<&'static str> {
    if resource_type == "Patient" {
        return vec!["_id"];
    }
    let mut out = params(resource_type);
    for sp in definitions::search_params(resource_type) {
        if !out.contains(&sp.code) && is_pin_param(resource_type, sp.code) {
            out.push(sp.code);
        }
    }
    out
}

/// The element that says whose record a resource is: the one behind the type's `patient`
/// search parameter, else behind `subject`, else its only compartment path — when that
/// element holds a single value.
fn subject_element(resource_type: &str) -> Option<&'static [&'static str]> {
    for code in ["patient", "subject"] {
        if is_pin_param(resource_type, code) {
            let sp = definitions::search_param(resource_type, code)?;
            return match sp.paths {
                [p] if !p.multi => Some(p.keys),
                _ => None,
            };
        }
    }
    match compartment_paths(resource_type).as_slice() {
        [p] if !p.multi => Some(p.keys),
        _ => None,
    }
}

/// The pin parameters through which a conditional write can be proven to change only the
/// context patient's own resources: those of the element that says whose the resource is
/// (its subject), and only for types linked to patients through that element alone. A
/// conditional update or delete pinned through `performer` would change other patients'
/// records that merely mention the context patient; one pinned through `subject` on a type
/// that also links through `performer` could still change a resource another patient
/// performed. The by-id forms check the stored resource instead.
pub fn primary_pin_params(resource_type: &str) -> Vec<&'static str> {
    if resource_type == "Patient" {
        return vec!["_id"];
    }
    let Some(subject) = subject_element(resource_type) else {
        return Vec::new();
    };
    if compartment_paths(resource_type).len() != 1 {
        return Vec::new();
    }
    pin_params(resource_type)
        .into_iter()
        .filter(|code| {
            definitions::search_param(resource_type, code)
                .is_some_and(|sp| matches!(sp.paths, [p] if p.keys == subject))
        })
        .collect()
}

/// Whether a bare id (`patient=123` rather than `patient=Patient/123`) can only mean a Patient
/// for this parameter: its only target type is Patient.
pub fn bare_id_means_patient(resource_type: &str, code: &str) -> bool {
    definitions::search_param(resource_type, code).is_some_and(|sp| sp.targets == ["Patient"])
}

/// The parameter used to narrow an unpinned search: the compartment parameter named `patient`
/// where there is one (it only matches patients), else the first compartment parameter.
pub fn narrowing_param(resource_type: &str) -> Option<&'static str> {
    let ps = definitions::compartment_params(resource_type)?;
    ps.iter().find(|p| **p == "patient").or(ps.first()).copied()
}

/// The single-valued element paths that a pinned search parameter proves to hold exactly the
/// patient reference: on a 0..1 element, "a value matches" means "the value is".
pub fn single_valued_paths(resource_type: &str, code: &str) -> Vec<&'static [&'static str]> {
    if resource_type == "Patient" {
        return Vec::new();
    }
    definitions::search_param(resource_type, code)
        .map(|sp| {
            if sp.paths.iter().all(|p| !p.multi) {
                sp.paths.iter().map(|p| p.keys).collect()
            } else {
                Vec::new()
            }
        })
        .unwrap_or_default()
}

/// How fhirguard reads one reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ref<'a> {
    /// A relative `Patient/<id>`, optionally versioned: this server's patient `<id>`.
    Patient(&'a str),
    /// A reference whose target is known not to be a Patient (or that links nothing:
    /// display text only).
    Other,
    /// A reference to a patient fhirguard cannot identify: absolute, conditional
    /// (`Patient?identifier=...`), contained (`#p`), or logical (identifier only).
    UnidentifiedPatient,
    /// Nothing can be said of the target (`urn:uuid:...`, malformed, or a `type` that
    /// disagrees with the reference).
    Unknown,
}

pub fn is_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

/// `Type/id` or `Type/id/_history/vid` → (Type, id).
fn relative(s: &str) -> Option<(&str, &str)> {
    let mut it = s.split('/');
    let t = it.next()?;
    let id = it.next()?;
    match (it.next(), it.next(), it.next()) {
        (None, _, _) => {}
        (Some("_history"), Some(v), None) if is_id(v) => {}
        _ => return None,
    }
    (definitions::is_resource_type(t) && is_id(id)).then_some((t, id))
}

/// Reads the reference string `reference` (the `reference` member of a Reference), with the
/// Reference's `type` member and the resource's contained resources for `#id`.
pub fn read_reference<'a>(
    reference: Option<&'a str>,
    declared_type: Option<&str>,
    has_identifier: bool,
    contained: &[Value],
) -> Ref<'a> {
    let declared = declared_type.map(|t| t.rsplit('/').next().unwrap_or(t));
    let kind = |t: &str| {
        if t == "Patient" {
            Ref::UnidentifiedPatient
        } else {
            Ref::Other
        }
    };
    let Some(r) = reference else {
        // A logical reference names its target by identifier, which a server may resolve.
        return match (has_identifier, declared) {
            (false, _) => Ref::Other,
            (true, Some(t)) if t != "Patient" => Ref::Other,
            (true, _) => Ref::UnidentifiedPatient,
        };
    };
    let (t, found) = if let Some((t, id)) = relative(r) {
        (
            t,
            if t == "Patient" {
                Ref::Patient(id)
            } else {
                Ref::Other
            },
        )
    } else if let Some(local) = r.strip_prefix('#') {
        match contained
            .iter()
            .find(|c| c.get("id").and_then(Value::as_str) == Some(local))
            .and_then(|c| c.get("resourceType").and_then(Value::as_str))
        {
            Some(t) => (t, kind(t)),
            None => return Ref::Unknown,
        }
    } else if let Some((t, _)) = r.split_once('?') {
        if !definitions::is_resource_type(t) {
            return Ref::Unknown;
        }
        (t, kind(t))
    } else if r.contains("://") {
        // Absolute: the type is the segment before the id (or before `_history/<v>`). Whether
        // the URL is this server's base cannot be known, so a Patient is never identified.
        let segs: Vec<&str> = r
            .split(['?', '#'])
            .next()
            .unwrap_or("")
            .split('/')
            .collect();
        let n = segs.len();
        let t = if n >= 4 && segs[n - 2] == "_history" {
            segs[n - 4]
        } else if n >= 2 {
            segs[n - 2]
        } else {
            ""
        };
        if !definitions::is_resource_type(t) {
            return if r.contains("Patient") {
                Ref::UnidentifiedPatient
            } else {
                Ref::Unknown
            };
        }
        (t, kind(t))
    } else if r.to_ascii_lowercase().contains("patient") {
        return Ref::UnidentifiedPatient;
    } else {
        return Ref::Unknown;
    };
    if declared.is_some_and(|d| d != t) {
        return Ref::Unknown;
    }
    found
}

fn read_ref_object<'a>(obj: &'a Value, contained: &[Value]) -> Option<Ref<'a>> {
    let o = obj.as_object()?;
    let reference = o.get("reference").and_then(Value::as_str);
    if reference.is_none() && !o.contains_key("identifier") && !o.contains_key("display") {
        return None;
    }
    Some(read_reference(
        reference,
        o.get("type").and_then(Value::as_str),
        o.contains_key("identifier"),
        contained,
    ))
}

/// Every value at a path of JSON keys, traversing arrays at each step.
pub fn values_at<'a>(value: &'a Value, keys: &[&str], out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => {
            for i in items {
                values_at(i, keys, out);
            }
        }
        _ => match keys.split_first() {
            None => out.push(value),
            Some((k, rest)) => {
                if let Some(v) = value.get(*k) {
                    values_at(v, rest, out);
                }
            }
        },
    }
}

fn contained_of(resource: &Value) -> &[Value] {
    resource
        .get("contained")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// The references on a resource's compartment paths, as read.
fn compartment_refs<'a>(resource: &'a Value, resource_type: &str) -> Vec<Ref<'a>> {
    let contained = contained_of(resource);
    let mut out = Vec::new();
    for path in compartment_paths(resource_type) {
        let mut vals = Vec::new();
        values_at(resource, path.keys, &mut vals);
        for v in vals {
            match read_ref_object(v, contained) {
                // `.where(resolve() is Patient)`: other targets are not links of this path.
                Some(Ref::Other) if path.only_type == Some("Patient") => {}
                Some(r) => out.push(r),
                None => {}
            }
        }
    }
    out
}

/// The patients whose compartment a resource is in (a Patient is in its own).
pub fn patients_of(resource: &Value) -> Vec<String> {
    let Some(rt) = resource.get("resourceType").and_then(Value::as_str) else {
        return Vec::new();
    };
    if rt == "Patient" {
        return resource
            .get("id")
            .and_then(Value::as_str)
            .map(|i| vec![i.to_string()])
            .unwrap_or_default();
    }
    let mut out: Vec<String> = compartment_refs(resource, rt)
        .into_iter()
        .filter_map(|r| match r {
            Ref::Patient(id) => Some(id.to_string()),
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Membership (reads): whether a resource is in `patient`'s compartment.
pub fn resource_in_compartment(resource: &Value, patient: &str) -> bool {
    patients_of(resource).iter().any(|p| p == patient)
}

/// Why a resource is not the context patient's to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotOwned {
    NoLink,
    OtherPatient,
    Unidentified,
    ElsewhereOtherPatient,
    Conditional,
}

impl NotOwned {
    pub fn explain(&self, resource_type: &str) -> String {
        let via = if resource_type == "Patient" {
            "its id".to_string()
        } else {
            pin_list(resource_type)
        };
        match self {
            NotOwned::NoLink => {
                format!("the {resource_type} does not reference the context patient through {via}")
            }
            NotOwned::OtherPatient => format!(
                "the {resource_type} references another patient through {via}; under a patient/ scope every patient reference there must be the context patient"
            ),
            NotOwned::Unidentified => format!(
                "a reference on {via} is not a relative Type/id reference (absolute, conditional, contained, logical or urn references cannot be checked under a patient/ scope)"
            ),
            NotOwned::ElsewhereOtherPatient => {
                format!("the {resource_type} references a patient other than the context patient")
            }
            NotOwned::Conditional => format!(
                "the {resource_type} holds a conditional reference (Type?criteria), which the server resolves with its own rights: not allowed under a patient/ scope"
            ),
        }
    }
}

fn pin_list(resource_type: &str) -> String {
    params(resource_type).join(", ")
}

/// Ownership of a stored resource (updates, deletes, patches): it references the context
/// patient, and every patient reference on its compartment paths is the context patient.
pub fn owned_stored(resource: &Value, resource_type: &str, ctx: &str) -> Result<(), NotOwned> {
    if resource_type == "Patient" {
        return if resource.get("id").and_then(Value::as_str) == Some(ctx) {
            Ok(())
        } else {
            Err(NotOwned::NoLink)
        };
    }
    let mut linked = false;
    for r in compartment_refs(resource, resource_type) {
        match r {
            Ref::Patient(id) if id == ctx => linked = true,
            Ref::Patient(_) => return Err(NotOwned::OtherPatient),
            Ref::Other => {}
            Ref::UnidentifiedPatient | Ref::Unknown => return Err(NotOwned::Unidentified),
        }
    }
    if linked {
        Ok(())
    } else {
        Err(NotOwned::NoLink)
    }
}

/// Ownership of a body being written: as for a stored resource, and in addition no reference
/// anywhere in it (extensions, `focus`, contained resources, ...) names another patient.
pub fn owned_body(resource: &Value, resource_type: &str, ctx: &str) -> Result<(), NotOwned> {
    owned_stored(resource, resource_type, ctx)?;
    if names_other_patient(resource, ctx) {
        return Err(NotOwned::ElsewhereOtherPatient);
    }
    if has_conditional_reference(resource) {
        return Err(NotOwned::Conditional);
    }
    Ok(())
}

/// Whether any reference in `value` is a conditional one (`Observation?subject=...`): the
/// server runs that search with its own rights, so a write carrying one is an oracle on data
/// the writer may not read (it fails unless exactly one resource matches).
pub fn has_conditional_reference(value: &Value) -> bool {
    let mut found = false;
    walk_references(value, &mut |obj| {
        found |= obj
            .get("reference")
            .and_then(Value::as_str)
            .is_some_and(|r| r.contains('?'));
    });
    found
}

/// Whether any reference anywhere in `value` names a patient other than `ctx`, or a patient
/// fhirguard cannot identify.
pub fn names_other_patient(value: &Value, ctx: &str) -> bool {
    let contained = contained_of(value);
    let mut bad = false;
    walk_references(value, &mut |obj| {
        if !bad {
            bad = match read_ref_object(obj, contained) {
                Some(Ref::Patient(id)) => id != ctx,
                Some(Ref::UnidentifiedPatient) => true,
                _ => false,
            };
        }
    });
    bad
}

/// Calls `f` on every object that has a `reference` member, at any depth.
fn walk_references<'a>(v: &'a Value, f: &mut impl FnMut(&'a Value)) {
    match v {
        Value::Object(o) => {
            if o.get("reference").is_some_and(Value::is_string) {
                f(v);
            }
            for child in o.values() {
                walk_references(child, f);
            }
        }
        Value::Array(a) => {
            for child in a {
                walk_references(child, f);
            }
        }
        _ => {}
    }
}

/// The patient id a search value or reference string names, when it is a relative
/// `Patient/<id>` (optionally versioned). Absolute URLs never count.
pub fn patient_id_of_reference(reference: &str) -> Option<&str> {
    match relative(reference) {
        Some(("Patient", id)) => Some(id),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
