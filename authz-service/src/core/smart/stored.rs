//! Patient scopes on single resources: reads, writes, patches and Binary checked against the
//! stored resource (asked of the host as a lookup) and the body.

use super::*;

pub(super) fn lookup_state<'a>(
    g: &Grant<'a>,
    key: LookupKey,
    verb: &str,
    t: &str,
) -> Result<&'a Stored, PatientCheck> {
    if !g.lookup_configured {
        return Err(PatientCheck::Deny(format!(
            "{verb} {t}/<id> under a patient/ scope depends on the stored resource, and this policy has no compartmentLookup"
        )));
    }
    match g.lookups.and_then(|l| l.get(&key)) {
        None => Err(PatientCheck::Lookup(key)),
        Some(s) => Ok(s),
    }
}

pub(super) fn other_patient() -> PatientCheck {
    PatientCheck::Deny(
        "a patient/ scope reaches only the context patient's own Patient resource".into(),
    )
}

/// A Binary under a patient/ scope: readable when its `securityContext` is the context
/// Patient or a resource in the context patient's compartment (US Core clinical notes keep
/// their content in Binary, referenced from a DocumentReference). Two lookups: the Binary,
/// then what its securityContext names.
pub(super) fn check_binary(g: &Grant<'_>, req: &FhirRequest, ctx: &str) -> PatientCheck {
    let key = LookupKey {
        version: req.version_id.clone(),
        ..LookupKey::current("Binary", req.id.as_deref().unwrap_or(""))
    };
    let binary = match lookup_state(g, key, "reading", "Binary") {
        Err(c) => return c,
        Ok(Stored::Found(res)) => res,
        Ok(_) => {
            return PatientCheck::Deny("nothing readable is stored under that Binary id".into());
        }
    };
    let reference = binary
        .pointer("/securityContext/reference")
        .and_then(|r| r.as_str());
    let no_context = || {
        PatientCheck::Deny(
            "a Binary is readable under a patient/ scope only when its securityContext is the context patient or a resource in the patient's compartment".into(),
        )
    };
    match compartment::read_reference(reference, None, false, &[]) {
        compartment::Ref::Patient(id) if id == ctx => PatientCheck::Allow,
        compartment::Ref::Other => {
            let Some((t, id)) = reference.and_then(|r| r.split_once('/')) else {
                return no_context();
            };
            if !compartment::in_compartment_table(t) || t == "Patient" || id.contains('/') {
                return no_context();
            }
            check_read(
                g,
                LookupKey::current(t, id),
                t,
                ctx,
                "reading the securityContext of a Binary,",
            )
        }
        _ => no_context(),
    }
}

/// Reads: the stored resource (that version, for a vread) must be in the compartment.
pub(super) fn check_read(
    g: &Grant<'_>,
    key: LookupKey,
    t: &str,
    ctx: &str,
    verb: &str,
) -> PatientCheck {
    match lookup_state(g, key, verb, t) {
        Err(c) => c,
        Ok(Stored::Found(res)) if compartment::resource_in_compartment(res, ctx) => {
            PatientCheck::Allow
        }
        Ok(Stored::Found(_)) => PatientCheck::Deny(format!(
            "the stored {t} is not in the context patient's compartment"
        )),
        Ok(Stored::NotFound | Stored::Gone) => {
            PatientCheck::Deny(format!("nothing readable is stored under that {t} id"))
        }
    }
}

/// Writes to a stored resource: it must be the context patient's (every patient reference on
/// its compartment paths the context patient). `upsert` allows a write where nothing was ever
/// stored; a deleted resource (410) is never free to overwrite.
pub(super) fn check_write(
    g: &Grant<'_>,
    t: &str,
    id: &str,
    ctx: &str,
    verb: &str,
    upsert: bool,
) -> PatientCheck {
    match lookup_state(g, LookupKey::for_write(t, id), verb, t) {
        Err(c) => c,
        Ok(Stored::Found(res)) => match compartment::owned_stored(res, t, ctx).and_then(|()| {
            if compartment::names_other_patient(res, ctx) {
                Err(compartment::NotOwned::ElsewhereOtherPatient)
            } else {
                Ok(())
            }
        }) {
            Ok(()) => PatientCheck::Allow,
            Err(why) => PatientCheck::Deny(format!(
                "the stored {t} cannot be changed: {}",
                why.explain(t)
            )),
        },
        Ok(Stored::NotFound) if upsert => PatientCheck::Allow,
        Ok(Stored::NotFound) => PatientCheck::Deny(format!("nothing is stored under that {t} id")),
        Ok(Stored::Gone) => PatientCheck::Deny(format!(
            "a {t} was stored under that id and deleted; whose it was cannot be checked, so it cannot be {verb} under a patient/ scope"
        )),
    }
}

/// Whether a patch under a patient scope keeps the resource the context patient's: no
/// operation touches `id`, `meta` or what contains other resources, and an operation on an
/// element that links the resource to patients may only set references to the context patient
/// there. Values elsewhere may not name another patient. Refusals name the operation and the
/// element.
pub(super) fn patch_stays_in_compartment(
    req: &FhirRequest,
    t: &str,
    ctx: &str,
) -> Result<(), String> {
    use crate::core::fhir::PatchBody;
    let Some(PatchBody::Ops(ops)) = &req.patch else {
        return Err(
            "the patch body was not visible as a JSON Patch or FHIRPath Patch, so it cannot be checked"
                .into(),
        );
    };
    // Patient links to other patients through `link`; there is nothing to set it to.
    let (linking, settable): (Vec<&str>, bool) = if t == "Patient" {
        (vec!["link"], false)
    } else {
        (
            compartment::compartment_paths(t)
                .iter()
                .map(|p| p.root)
                .collect(),
            true,
        )
    };
    let sets_only_ctx = |v: &serde_json::Value| -> bool {
        match v {
            serde_json::Value::String(r) => compartment::patient_id_of_reference(r) == Some(ctx),
            other => {
                let mut refs = Vec::new();
                collect_reference_strings(other, &mut refs);
                !refs.is_empty()
                    && refs
                        .iter()
                        .all(|r| compartment::patient_id_of_reference(r) == Some(ctx))
            }
        }
    };
    for (i, op) in ops.iter().enumerate() {
        if op.op == "test" {
            continue;
        }
        let Some(target) = op.element.as_deref() else {
            return Err(format!(
                "patch operation {i} ({}): its target element cannot be read",
                op.op
            ));
        };
        for el in std::iter::once(target).chain(op.from_element.as_deref()) {
            if matches!(
                el,
                "id" | "meta" | "resourceType" | "contained" | "implicitRules"
            ) {
                return Err(format!(
                    "patch operation {i} ({} {el}): {el} may not be changed under a patient/ scope",
                    op.op
                ));
            }
        }
        if op
            .from_element
            .as_deref()
            .is_some_and(|f| linking.iter().any(|root| same_element(f, root)))
        {
            return Err(format!(
                "patch operation {i} ({} from {}): moving or copying a patient link is not allowed under a patient/ scope",
                op.op,
                op.from_element.as_deref().unwrap_or("")
            ));
        }
        if linking.iter().any(|root| same_element(target, root)) {
            let sets_ctx = settable
                && matches!(op.op.as_str(), "add" | "replace" | "insert")
                && op.value.as_ref().is_some_and(sets_only_ctx);
            if !sets_ctx {
                return Err(format!(
                    "patch operation {i} ({} {target}): {target} links the {t} to patients, and under a patient/ scope a patch may only set it to the context patient",
                    op.op
                ));
            }
        }
        // A pointer that ends in `/reference` writes a reference string itself.
        let bare_reference = match (&op.value, op.to_reference) {
            (Some(serde_json::Value::String(r)), true) => Some(r.as_str()),
            _ => None,
        };
        if bare_reference.is_some_and(|r| r.contains('?'))
            || op
                .value
                .as_ref()
                .is_some_and(compartment::has_conditional_reference)
        {
            return Err(format!(
                "patch operation {i} ({} {target}): conditional references are resolved by the server with its own rights and are not allowed under a patient/ scope",
                op.op
            ));
        }
        let bare_names_other = bare_reference.is_some_and(|r| {
            matches!(
                compartment::read_reference(Some(r), None, false, &[]),
                compartment::Ref::Patient(id) if id != ctx
            ) || compartment::read_reference(Some(r), None, false, &[])
                == compartment::Ref::UnidentifiedPatient
        });
        if bare_names_other
            || op
                .value
                .as_ref()
                .is_some_and(|v| compartment::names_other_patient(v, ctx))
        {
            return Err(format!(
                "patch operation {i} ({} {target}): the value references a patient other than the context patient",
                op.op
            ));
        }
    }
    Ok(())
}

pub(super) fn collect_reference_strings<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
    match v {
        serde_json::Value::Object(o) => {
            if let Some(serde_json::Value::String(r)) = o.get("reference") {
                out.push(r);
            }
            for (k, x) in o {
                if k != "reference" {
                    collect_reference_strings(x, out);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_reference_strings(x, out)),
        _ => {}
    }
}

/// Checks the body of a create or update under a patient scope: ownership (see
/// [`compartment::owned_body`]).
pub(super) fn body_owned(
    req: &FhirRequest,
    t: &str,
    ctx: &str,
    id_must_match: bool,
) -> Result<(), String> {
    let Some(body) = &req.resource else {
        return Err(
            "the resource body was not visible to fhirguard as JSON, so it cannot be checked"
                .into(),
        );
    };
    if body.get("resourceType").and_then(|v| v.as_str()) != Some(t) {
        return Err(format!("the body is not a {t}"));
    }
    if id_must_match && body.get("id").and_then(|v| v.as_str()) != req.id.as_deref() {
        return Err("the body's id does not match the id in the URL".into());
    }
    compartment::owned_body(body, t, ctx).map_err(|e| e.explain(t))
}
