//! Patient scopes: the per-interaction proof that a request stays inside the context patient's
//! compartment, and searches pinned to that patient.

use super::*;

pub(super) fn patient_check(g: &Grant<'_>, req: &FhirRequest, ctx: &str) -> PatientCheck {
    use Interaction::*;
    use OpKind as K;
    let t = req.resource_type.as_deref().unwrap_or("");
    let is_patient = t == "Patient";
    let in_table = compartment::in_compartment_table(t);
    let id = req.id.as_deref().unwrap_or("");
    let own_patient = is_patient && id == ctx;
    let outside = || {
        PatientCheck::Deny(format!(
            "{t} is not in the patient compartment, so a patient/ scope cannot reach it"
        ))
    };
    match req.interaction {
        Read | VRead | HistoryInstance if is_patient => {
            if own_patient {
                PatientCheck::Allow
            } else {
                other_patient()
            }
        }
        Read if in_table => check_read(g, LookupKey::current(t, id), t, ctx, "reading"),
        VRead if in_table => {
            // The version asked for, not the current one: a resource can move between
            // patients, and its old versions stay readable.
            let key = LookupKey {
                resource_type: t.to_string(),
                id: id.to_string(),
                version: req.version_id.clone(),
                for_write: false,
            };
            check_read(g, key, t, ctx, "reading a version of")
        }
        HistoryInstance if in_table => PatientCheck::Deny(format!(
            "instance history returns every version of the {t}, and only the current one can be checked; read the resource, or one version by id"
        )),
        // A Binary (a document's content, say) says whose it is through securityContext.
        Read | VRead if t == "Binary" => check_binary(g, req, ctx),
        // Reference data holds no patient's data: readable where the policy says so.
        Read | VRead if g.reference_data && !in_table => PatientCheck::Allow,
        Read | VRead | HistoryInstance => outside(),
        Delete if is_patient => {
            if own_patient {
                PatientCheck::Allow
            } else {
                other_patient()
            }
        }
        Delete if in_table => check_write(g, t, id, ctx, "deleted", false),
        Delete => outside(),
        Patch if is_patient && !own_patient => other_patient(),
        Patch if own_patient => match patch_stays_in_compartment(req, t, ctx) {
            Ok(()) => PatientCheck::Allow,
            Err(why) => PatientCheck::Deny(why),
        },
        Patch if in_table => match patch_stays_in_compartment(req, t, ctx) {
            Ok(()) => check_write(g, t, id, ctx, "patched", false),
            Err(why) => PatientCheck::Deny(why),
        },
        Patch => outside(),
        ConditionalPatch => {
            if !in_table {
                return outside();
            }
            if let Err(why) = patch_stays_in_compartment(req, t, ctx) {
                return PatientCheck::Deny(why);
            }
            conditional_pin(req, t, ctx)
        }
        Update => {
            if !in_table {
                return outside();
            }
            if is_patient && !own_patient {
                return other_patient();
            }
            if let Err(why) = body_owned(req, t, ctx, true) {
                return PatientCheck::Deny(why);
            }
            if is_patient {
                PatientCheck::Allow
            } else {
                check_write(g, t, id, ctx, "overwritten", true)
            }
        }
        Create | ConditionalCreate => {
            if is_patient {
                return PatientCheck::Deny(
                    "creating a Patient needs a user/ or system/ scope".into(),
                );
            }
            if !in_table {
                return outside();
            }
            if let Err(why) = body_owned(req, t, ctx, false) {
                return PatientCheck::Deny(why);
            }
            if req.interaction == ConditionalCreate {
                // A match is returned to the client: the criteria must keep it in the compartment.
                return match pinned(t, &req.params, req.params_complete, ctx) {
                    Pinned::Yes(_) => PatientCheck::Allow,
                    Pinned::No => PatientCheck::Deny(
                        "the If-None-Exist criteria must name the context patient".into(),
                    ),
                    Pinned::Refused(why) => PatientCheck::Deny(why),
                };
            }
            PatientCheck::Allow
        }
        ConditionalUpdate | ConditionalDelete => {
            if !in_table {
                return outside();
            }
            if req.interaction == ConditionalUpdate {
                if let Err(why) = body_owned(req, t, ctx, false) {
                    return PatientCheck::Deny(why);
                }
                // With no match and an id in the body the server updates (or creates) that
                // id: another patient's resource, on the strength of criteria naming this one.
                let body_id = req
                    .resource
                    .as_ref()
                    .and_then(|b| b.get("id"))
                    .map(|i| i.as_str());
                // Only the context Patient may be named: criteria `_id=<ctx>` and body id <ctx>
                // can write nothing else.
                if body_id.is_some() && !(is_patient && body_id == Some(Some(ctx))) {
                    return PatientCheck::Deny(
                        "a conditional update under a patient/ scope may not carry an id in its body (with no match the server would write to that id); update by id instead"
                            .into(),
                    );
                }
            }
            conditional_pin(req, t, ctx)
        }
        SearchType => search_check(g, req, t, ctx, g.narrow),
        SearchCompartment => match &req.compartment {
            Some((ct, cid)) if ct == "Patient" && cid == ctx => {
                if let Err(why) = refused_search_params(&req.params) {
                    return PatientCheck::Deny(why);
                }
                // A pin naming someone else next to the compartment: a server that merged
                // the compartment into its parameters could answer for that one.
                if let Some(t) = req.resource_type.as_deref()
                    && let Pinned::Refused(why) = pinned(t, &req.params, req.params_complete, ctx)
                {
                    return PatientCheck::Deny(why);
                }
                compartment_search(req, ctx)
            }
            Some((ct, _)) if ct == "Patient" => {
                PatientCheck::Deny("the compartment search names another patient".into())
            }
            _ => PatientCheck::Deny(
                "under a patient/ scope only the context patient's compartment can be searched"
                    .into(),
            ),
        },
        // `$stats` is no search: of the pins, it takes only `subject` (`patient=` would be
        // ignored, and the statistics cover every patient).
        OperationType if req.op.is_some_and(|o| o.name == "stats") => {
            let subjects: Vec<&str> = req
                .params
                .iter()
                .filter(|(k, _)| k == "subject")
                .map(|(_, v)| v.as_str())
                .collect();
            if !subjects.is_empty()
                && subjects.iter().all(|v| {
                    v.split(',')
                        .all(|x| compartment::patient_id_of_reference(x) == Some(ctx))
                })
                && refused_search_params(&req.params).is_ok()
            {
                PatientCheck::Allow
            } else {
                PatientCheck::Deny(
                    "$stats under a patient/ scope must name the context patient in its subject parameter".into(),
                )
            }
        }
        OperationType if req.op.is_some_and(|o| o.kind == K::Search) => {
            search_check(g, req, t, ctx, false)
        }
        OperationInstance if req.op.is_some_and(|o| o.kind == K::ReadInstance) => {
            if own_patient {
                PatientCheck::Allow
            } else if is_patient {
                other_patient()
            } else if in_table {
                check_read(
                    g,
                    LookupKey::current(t, id),
                    t,
                    ctx,
                    "running an operation on",
                )
            } else {
                outside()
            }
        }
        OperationSystem | OperationType | OperationInstance
            if req.op.is_some_and(|o| o.kind == K::NoPatientData)
                && g.reference_data
                && !in_table
                && !req.writes =>
        {
            PatientCheck::Allow
        }
        OperationSystem | OperationType | OperationInstance
            if req.op.is_some_and(|o| o.kind == K::NoPatientData) =>
        {
            PatientCheck::Deny(format!(
                "{} touches no patient's data and is not reachable with a patient/ scope; it needs a user/ or system/ scope",
                op_name(req)
            ))
        }
        _ => PatientCheck::Deny(format!(
            "{} cannot be limited to the context patient",
            req.describe()
        )),
    }
}

/// Conditional writes must be pinned through the element that says whose the resource is.
pub(super) fn conditional_pin(req: &FhirRequest, t: &str, ctx: &str) -> PatientCheck {
    let primary = compartment::primary_pin_params(t);
    match pinned(t, &req.params, req.params_complete, ctx) {
        Pinned::Yes(pins) if pins.iter().any(|p| primary.contains(&p.as_str())) => {
            PatientCheck::Allow
        }
        Pinned::Yes(_) | Pinned::No if primary.is_empty() => PatientCheck::Deny(format!(
            "a conditional write of {t} under a patient/ scope cannot be limited to the context patient's own resources: {t} links to patients through {} ({}), and criteria cannot show that none of them is another patient; write by id instead",
            compartment::params(t).join(", "),
            "the resource's id is checked against the stored resource"
        )),
        Pinned::Yes(_) | Pinned::No => PatientCheck::Deny(format!(
            "a conditional write under a patient/ scope must name the context patient through {} (the element that says whose the {t} is)",
            primary.join(" or ")
        )),
        Pinned::Refused(why) => PatientCheck::Deny(why),
    }
}

/// `Patient/<ctx>/Type` and `Patient/<ctx>/*`. The compartment holds other Patients (those
/// that link to the context patient), which a patient/ scope may not read: `Patient` is never
/// searched this way, and `*` only with a `_type` that lists compartment types other than
/// Patient.
pub(super) fn compartment_search(req: &FhirRequest, ctx: &str) -> PatientCheck {
    let _ = ctx;
    match req.resource_type.as_deref() {
        Some("Patient") => PatientCheck::Deny(
            "Patient/<id>/Patient returns the other Patients that link to the context patient; read Patient/<id> instead"
                .into(),
        ),
        Some(t) if compartment::in_compartment_table(t) => PatientCheck::Allow,
        Some(t) => PatientCheck::Deny(format!(
            "{t} is not in the patient compartment, so a patient/ scope cannot reach it"
        )),
        None => {
            let types = listed_types(req);
            if !req.params_complete {
                return PatientCheck::Deny(
                    "the search parameters (a POST body) were not visible to fhirguard".into(),
                );
            }
            if types.is_empty()
                || types
                    .iter()
                    .any(|t| *t == "Patient" || !compartment::in_compartment_table(t))
            {
                return PatientCheck::Deny(
                    "Patient/<id>/* under a patient/ scope needs a _type listing compartment types other than Patient (the compartment holds other Patients that link to this one)"
                        .into(),
                );
            }
            PatientCheck::Allow
        }
    }
}

pub(super) fn search_check(
    g: &Grant<'_>,
    req: &FhirRequest,
    t: &str,
    ctx: &str,
    narrow: bool,
) -> PatientCheck {
    let is_patient = t == "Patient";
    if !is_patient && !compartment::in_compartment_table(t) {
        if g.reference_data {
            // No pin is needed, but nothing may reach from the reference data into patients'
            // records (`Medication?_has:MedicationRequest:medication:subject=...`).
            return match refused_search_params(&req.params) {
                Ok(()) if req.params_complete => PatientCheck::Allow,
                Ok(()) => PatientCheck::Deny(
                    "the search parameters (a POST body) were not visible to fhirguard".into(),
                ),
                Err(why) => PatientCheck::Deny(why),
            };
        }
        return PatientCheck::Deny(format!(
            "{t} is not in the patient compartment, so a patient/ scope cannot reach it (a policy may allow reading such reference data: referenceData: ReadWithScope)"
        ));
    }
    let _ = g;
    match pinned(t, &req.params, req.params_complete, ctx) {
        Pinned::Yes(_) => PatientCheck::Allow,
        Pinned::Refused(why) => PatientCheck::Deny(why),
        Pinned::No if narrow && req.params_complete => {
            if is_patient {
                PatientCheck::Narrow("_id".into(), ctx.to_string())
            } else {
                match compartment::narrowing_param(t) {
                    Some(p) => PatientCheck::Narrow(p.to_string(), format!("Patient/{ctx}")),
                    None => PatientCheck::Deny(format!("{t} cannot be narrowed to a patient")),
                }
            }
        }
        Pinned::No => PatientCheck::Deny(format!(
            "a patient-scoped search must be limited to the context patient ({})",
            compartment::pin_params(t).join(", ")
        )),
    }
}

pub(super) enum Pinned {
    /// Pinned; the pin parameters present.
    Yes(Vec<String>),
    No,
    Refused(String),
}

/// Parameters that reach outside whatever the search is pinned to, refused under patient scopes.
pub(super) fn refused_search_params(params: &[(String, String)]) -> Result<(), String> {
    for (k, v) in params {
        let (base, _) = k.split_once(':').unwrap_or((k.as_str(), ""));
        let refused = match base {
            "_has" => Some("_has reaches across patients"),
            "_query" => Some("named queries (_query) can search anything"),
            // `_containedType=container` returns the resources that contain a match, whoever
            // they belong to; `_contained=true` returns contained resources as results.
            "_containedType" => {
                Some("_containedType can return resources that merely contain a match")
            }
            "_contained" if v != "false" => {
                Some("_contained can return resources that merely contain a match")
            }
            _ if base.contains('.') => Some("chained parameters reach other resources"),
            _ => None,
        };
        if let Some(why) = refused {
            return Err(format!("{why}, and is not allowed under a patient/ scope"));
        }
    }
    Ok(())
}

/// Whether search parameters pin a search to the context patient: some pin parameter is
/// present and every value of every pin parameter is the context patient.
pub(super) fn pinned(t: &str, params: &[(String, String)], complete: bool, ctx: &str) -> Pinned {
    if !complete {
        return Pinned::Refused(
            "the search parameters (a POST body) were not visible to fhirguard".into(),
        );
    }
    if let Err(why) = refused_search_params(params) {
        return Pinned::Refused(why);
    }
    let mut found = Vec::new();
    for (k, v) in params {
        let (base, modifier) = k
            .split_once(':')
            .map_or((k.as_str(), None), |(b, m)| (b, Some(m)));
        if !compartment::is_pin_param(t, base) {
            continue;
        }
        match modifier {
            None => {}
            Some("Patient") if t != "Patient" => {}
            Some(_) => {
                return Pinned::Refused(format!(
                    "a modifier on {base} is not allowed under a patient/ scope (only :Patient)"
                ));
            }
        }
        let bare_ok = t == "Patient"
            || modifier == Some("Patient")
            || compartment::bare_id_means_patient(t, base);
        for item in v.split(',') {
            let names_ctx = compartment::patient_id_of_reference(item) == Some(ctx)
                && !item.contains("/_history/")
                || (bare_ok && item == ctx);
            if !names_ctx {
                return Pinned::Refused(format!(
                    "{base} names something other than the context patient"
                ));
            }
        }
        found.push(base.to_string());
    }
    if found.is_empty() {
        Pinned::No
    } else {
        Pinned::Yes(found)
    }
}
