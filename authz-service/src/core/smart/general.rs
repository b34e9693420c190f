//! Type-level scope checks: which permission an interaction needs on which type, operations,
//! and the non-patient (user/system) path.

use super::*;

/// Operations: decided by what the operation is (see [`crate::core::operations`]).
pub(super) fn operation(g: &Grant<'_>, req: &FhirRequest) -> Verdict {
    use OpKind as K;
    let name = op_name(req);
    let rw = if req.writes { Perms::ALL } else { RS };
    match req.op.map(|o| o.kind) {
        None => any_type(
            g,
            Perms::ALL,
            format!(
                "{name} is not one fhirguard knows; it may return or change anything, so it needs a user/ or system/ *.cruds scope (and is never allowed under patient/ scopes)"
            ),
        ),
        // What a server returns for a patient's record is its own choice: HAPI follows every
        // reference recursively (the Patients of co-members, of performers, of links) and
        // applies `_type` only to the first hop; Microsoft's server adds `seealso` patients.
        Some(K::PatientRecord) => any_type(
            g,
            RS,
            format!(
                "{name} returns whatever the server links to the record, other patients' resources included, so it needs a user/ or system/ *.rs scope; under a patient/ scope search the compartment by type instead (Patient/<id>/Observation, ...)"
            ),
        ),
        Some(K::AnyType) => any_type(
            g,
            rw,
            format!(
                "{name} can return resources of any type and of any patient, so it needs a user/ or system/ *.{} scope",
                rw.letters()
            ),
        ),
        Some(K::CrossPatient) => any_type(
            g,
            rw,
            format!(
                "{name} works across patients, so it needs a user/ or system/ *.{} scope",
                rw.letters()
            ),
        ),
        Some(K::Export) => export(g, req),
        Some(K::Search | K::ReadInstance | K::WriteInstance | K::NoPatientData) => general(g, req),
    }
}

/// Operations whose result is not bounded by a type or a patient: only a user/ or system/
/// scope on every type with `perm` allows them.
pub(super) fn any_type(g: &Grant<'_>, perm: Perms, rule: String) -> Verdict {
    let ok = g.scopes.scopes.iter().any(|s| {
        s.context != Context::Patient
            && s.query.is_none()
            && s.resource_type.is_none()
            && s.perms.contains(perm)
    });
    if ok {
        return allow();
    }
    let context = if g.scopes.scopes.iter().any(|s| s.context == Context::System) {
        "system"
    } else {
        "user"
    };
    // An app launched for a patient holds patient/ scopes only: no scope it could hold
    // would allow this, so none is named.
    let patient_app = g.patient.is_some()
        && !g
            .scopes
            .scopes
            .iter()
            .any(|s| s.context != Context::Patient);
    Verdict::Deny(ScopeDenial {
        rule,
        needed: if patient_app {
            None
        } else {
            hint(g, &format!("{context}/*.{}", perm.letters()))
        },
    })
}

/// Why one scope did not allow a request, and whether another scope could.
pub(super) enum Refusal {
    /// A scope of another shape (no filter, more letters) would allow it: hint it.
    Scope(String),
    /// No scope can: another patient, or not provable. No hint.
    Final(String),
}

pub(super) fn general(g: &Grant<'_>, req: &FhirRequest) -> Verdict {
    let perm = needed_permission(req);
    let t = req.resource_type.as_deref();
    let mut refusal: Option<Refusal> = None;
    let mut lookup: Vec<LookupKey> = Vec::new();
    let mut narrow: Option<(String, String)> = None;
    let add_lookup = |key: LookupKey, lookup: &mut Vec<LookupKey>| {
        if !lookup.contains(&key) {
            lookup.push(key);
        }
    };
    for s in g
        .scopes
        .scopes
        .iter()
        .filter(|s| s.perms.contains(perm) && covers_type(s, t))
    {
        let mut needs_lookup = Vec::new();
        if let Some(filter) = &s.query {
            match granular_check(g, req, filter) {
                Check::Allow => {}
                Check::Lookup(key) => needs_lookup.push(key),
                Check::Deny(why) => {
                    refusal.get_or_insert(Refusal::Scope(why));
                    continue;
                }
            }
        }
        // Parameters fhirguard did not see (a POST body cut at Envoy's limit, or not sent)
        // could hold includes, _query or _containedType: only a scope on every type can
        // cover what such a search returns. Patient scopes refuse it in `pinned`.
        if is_search(req)
            && !req.params_complete
            && s.context != Context::Patient
            && !(s.resource_type.is_none() && s.query.is_none() && s.perms.contains(Perms::S))
        {
            refusal.get_or_insert(Refusal::Scope(
                "the search parameters (a POST body) were not visible to fhirguard; without them only a *.s scope covers what the search can return"
                    .into(),
            ));
            continue;
        }
        match s.context {
            Context::User | Context::System if needs_lookup.is_empty() => {
                // A granular scope's filter passed: the allow rests on that parameter (for a
                // search) or on the resource it was checked against.
                let ok = if s.query.is_some() {
                    allow_if_applied(req)
                } else {
                    allow()
                };
                return includes_checked(g, req, ok, None);
            }
            Context::User | Context::System => {
                for k in needs_lookup {
                    add_lookup(k, &mut lookup);
                }
            }
            Context::Patient => {
                let Some(ctx) = g.patient else {
                    refusal.get_or_insert(Refusal::Final(
                        "a patient/ scope grants nothing without a patient context in the token"
                            .into(),
                    ));
                    continue;
                };
                match patient_check(g, req, ctx) {
                    PatientCheck::Allow if needs_lookup.is_empty() => {
                        return includes_checked(g, req, allow_if_applied(req), None);
                    }
                    PatientCheck::Allow => {
                        for k in needs_lookup {
                            add_lookup(k, &mut lookup);
                        }
                    }
                    PatientCheck::Lookup(key) => {
                        add_lookup(key, &mut lookup);
                        for k in needs_lookup {
                            add_lookup(k, &mut lookup);
                        }
                    }
                    PatientCheck::Narrow(k, v) if s.query.is_none() => {
                        narrow.get_or_insert((k, v));
                    }
                    PatientCheck::Narrow(..) => {
                        refusal.get_or_insert(Refusal::Scope(
                            "a search under a granular patient/ scope must carry its filter and name the context patient; it is not narrowed"
                                .into(),
                        ));
                    }
                    PatientCheck::Deny(why) => {
                        refusal.get_or_insert(Refusal::Final(why));
                    }
                }
            }
        }
    }
    if !lookup.is_empty() {
        return Verdict::Lookup(lookup);
    }
    if let Some((k, v)) = narrow {
        let verdict = Verdict::Allow {
            narrow: vec![(k.clone(), v)],
            strict: true,
        };
        return includes_checked(g, req, verdict, Some(&k));
    }
    match refusal {
        Some(Refusal::Final(why)) => deny_without_hint(why),
        Some(Refusal::Scope(why)) => deny(g, req, perm, why),
        None => deny(
            g,
            req,
            perm,
            format!(
                "{} needs scope permission '{}' on {}; {}",
                req.describe(),
                perm.letters(),
                match t {
                    None => "every type (*)",
                    Some(t) if crate::core::definitions::is_resource_type(t) => t,
                    Some(_) => "a type FHIR R4 does not define",
                },
                if g.scopes.scopes.is_empty() {
                    "the token carries no usable resource scope"
                } else {
                    "no granted scope covers it"
                }
            ),
        ),
    }
}
