//! SMART-on-FHIR scopes (App Launch 2.x, with v1 scopes mapped to v2).
//!
//! Grammar: `(patient|user|system)/(Type|*).(perms)[?query]` where perms is `read`, `write`,
//! `*` (v1) or a non-empty subsequence of `cruds` in that order (v2). Matching is
//! case-sensitive and whole-token; a malformed token grants nothing and is reported.
//!
//! Enforcement here is the type-level part of SMART: which permission letter an interaction
//! needs and on which type. Patient scopes grant only what is provably inside the context
//! patient's compartment; what cannot be proven from the request is refused (fail closed).
//! Granular scopes (with a `?query`) allow searches that carry their filter and reads and
//! writes of resources that match it ([`crate::core::granular`]).

use std::sync::Arc;

use crate::core::compartment;
use crate::core::fhir::{FhirRequest, Interaction};
use crate::core::operations::OpKind;

mod filters;
mod general;
mod includes;
mod lookups;
mod patient;
mod scopes;
mod stored;

use filters::*;
use general::*;
use includes::*;
pub use lookups::*;
use patient::*;
pub use scopes::*;
use stored::*;

/// Why a token's scopes do not allow a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeDenial {
    /// Which rule refused, for the OperationOutcome and the log. Never repeats a value of the
    /// request (a parameter value can be another patient's id).
    pub rule: String,
    /// A scope the token does not hold that would have allowed the request, for
    /// `WWW-Authenticate`; `None` when no scope can help (another patient's data, a request
    /// that cannot be proven to stay in the compartment) or the token already holds it.
    pub needed: Option<String>,
}

/// `candidate` as a hint, unless the token already holds a scope that grants at least as much
/// (then the refusal is not about scopes, and naming one would send the client in circles).
fn hint(g: &Grant<'_>, candidate: &str) -> Option<String> {
    let c = parse_scope(candidate)?;
    let held = g.scopes.scopes.iter().any(|s| {
        s.context == c.context
            && s.query.is_none()
            && s.perms.contains(c.perms)
            && match (&s.resource_type, &c.resource_type) {
                (None, _) => true,
                (Some(a), Some(b)) => a == b,
                (Some(_), None) => false,
            }
    });
    (!held).then(|| candidate.to_string())
}

/// Everything scope evaluation needs besides the request.
#[derive(Debug, Clone, Copy)]
pub struct Grant<'a> {
    pub scopes: &'a ScopeSet,
    /// The context patient's id, when the token has one.
    pub patient: Option<&'a str>,
    /// `patientSearch: Narrow`: an unpinned patient-scoped search is narrowed, not refused.
    pub narrow: bool,
    /// Whether the policy can look stored resources up (`compartmentLookup`).
    pub lookup_configured: bool,
    /// Answers of lookups made so far.
    pub lookups: Option<&'a Lookups>,
    /// `referenceData: ReadWithScope`: patient/ scopes read and search types outside the
    /// patient compartment (Medication, Practitioner, ...).
    pub reference_data: bool,
}

/// The outcome of scope evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed; `narrow` holds query parameters to set upstream (search narrowing). `strict`
    /// says the permission rests on the request's search parameters (a patient/ scope's
    /// compartment pin, a granular scope's filter, or the narrowing itself): a server that
    /// silently ignored one it does not support would answer more than was allowed, so the
    /// request must go upstream with `Prefer: handling=strict`.
    Allow {
        narrow: Vec<(String, String)>,
        strict: bool,
    },
    /// The decision depends on stored resources: look these up, then ask again.
    Lookup(Vec<LookupKey>),
    Deny(ScopeDenial),
}

fn allow() -> Verdict {
    Verdict::Allow {
        narrow: Vec::new(),
        strict: false,
    }
}

const RS: Perms = Perms(Perms::R.0 | Perms::S.0);

/// An allow that holds only if the server applies every search parameter of `req`: searches
/// and conditional interactions, and operations that carry parameters.
fn allow_if_applied(req: &FhirRequest) -> Verdict {
    use Interaction::*;
    let searches = match req.interaction {
        OperationSystem | OperationType | OperationInstance => !req.params.is_empty(),
        ConditionalCreate | ConditionalUpdate | ConditionalPatch | ConditionalDelete => true,
        _ => needed_permission(req).contains(Perms::S),
    };
    Verdict::Allow {
        narrow: Vec::new(),
        strict: searches,
    }
}

/// What a patient-context check says about one request.
enum PatientCheck {
    /// Allowed; the search parameters the decision rests on are these pins.
    Allow,
    Narrow(String, String),
    Lookup(LookupKey),
    Deny(String),
}

/// Decides whether the token's scopes allow `req`.
pub fn authorize(g: &Grant<'_>, req: &FhirRequest) -> Verdict {
    use Interaction::*;
    match req.interaction {
        // The CapabilityStatement describes the server, not anybody's data.
        Capabilities => allow(),
        Batch | Transaction => bundle(g, req),
        BundleUninspected => deny(
            g,
            req,
            Perms::ALL,
            "the bundle's body was not sent to fhirguard, so its entries cannot be checked (enable with_request_body on this route)",
        ),
        OperationSystem | OperationType | OperationInstance => operation(g, req),
        _ => general(g, req),
    }
}

/// The types a `fhirUser` may name for a user who is not confined (SMART App Launch: the
/// user is a Patient, Practitioner, PractitionerRole, RelatedPerson or Person).
const USER_TYPES: &[&str] = &[
    "Practitioner",
    "PractitionerRole",
    "RelatedPerson",
    "Person",
];

/// `Type/id` at the end of a `fhirUser` claim (relative, or an absolute URL).
fn fhir_user_parts(claim: &str) -> Option<(&str, &str)> {
    let mut it = claim.rsplit('/');
    let id = it.next()?;
    let t = it.next()?;
    (crate::core::definitions::is_resource_type(t) && context_patient_id(id).is_some())
        .then_some((t, id))
}

/// `userScopes: ConfineToFhirUser`: `user/` scopes are evaluated as patient scopes for the
/// Patient the `fhirUser` claim names (as Microsoft's FHIR server and FHIR Works on AWS do),
/// pass unchanged for Practitioner-like users, and grant nothing without a user or for a
/// `fhirUser` of another type. `patient/` and `system/` scopes are evaluated as always; the
/// request is allowed when either evaluation allows it.
pub fn authorize_confined(g: &Grant<'_>, fhir_user: Option<&str>, req: &FhirRequest) -> Verdict {
    let (user, rest): (Vec<Scope>, Vec<Scope>) = g
        .scopes
        .scopes
        .iter()
        .cloned()
        .partition(|s| s.context == Context::User);
    if user.is_empty() {
        return authorize(g, req);
    }
    let user_kind = fhir_user.and_then(fhir_user_parts);
    let confined_patient = match user_kind {
        Some(("Patient", id)) => Some(id),
        Some((t, _)) if USER_TYPES.contains(&t) => return authorize(g, req),
        _ => None,
    };
    let others = ScopeSet {
        scopes: rest,
        ignored: Vec::new(),
    };
    let first = authorize(
        &Grant {
            scopes: &others,
            ..*g
        },
        req,
    );
    if matches!(first, Verdict::Allow { .. }) {
        return first;
    }
    let Some(patient) = confined_patient else {
        let why = "userScopes: ConfineToFhirUser: user/ scopes need a fhirUser claim naming a Patient, Practitioner, PractitionerRole, RelatedPerson or Person";
        return match first {
            Verdict::Deny(d) if !others.scopes.is_empty() => Verdict::Deny(d),
            Verdict::Lookup(l) => Verdict::Lookup(l),
            _ => deny_without_hint(why),
        };
    };
    let as_patient = ScopeSet {
        scopes: user
            .into_iter()
            .map(|s| Scope {
                context: Context::Patient,
                ..s
            })
            .collect(),
        ignored: Vec::new(),
    };
    let second = authorize(
        &Grant {
            scopes: &as_patient,
            patient: Some(patient),
            ..*g
        },
        req,
    );
    match (first, second) {
        (_, allowed @ Verdict::Allow { .. }) => allowed,
        (Verdict::Lookup(mut a), Verdict::Lookup(b)) => {
            a.extend(b);
            a.sort();
            a.dedup();
            Verdict::Lookup(a)
        }
        (Verdict::Lookup(a), _) | (_, Verdict::Lookup(a)) => Verdict::Lookup(a),
        (Verdict::Deny(d), _) if !others.scopes.is_empty() => Verdict::Deny(d),
        (_, denied) => denied,
    }
}

fn bundle(g: &Grant<'_>, req: &FhirRequest) -> Verdict {
    let mut lookups = Vec::new();
    let mut strict = false;
    for (i, e) in req.entries.iter().enumerate() {
        match authorize(g, e) {
            Verdict::Allow {
                narrow,
                strict: entry_strict,
            } if narrow.is_empty() => strict |= entry_strict,
            Verdict::Allow { .. } => {
                return Verdict::Deny(ScopeDenial {
                    rule: format!(
                        "entry[{i}] {}: a patient-scoped search inside a bundle must name the context patient (bundle entries cannot be narrowed)",
                        e.describe()
                    ),
                    needed: needed_scope(g, e, Perms::S),
                });
            }
            Verdict::Lookup(l) => lookups.extend(l),
            Verdict::Deny(d) => {
                // A transaction or batch passes only if every entry does: refuse it whole.
                return Verdict::Deny(ScopeDenial {
                    rule: format!("entry[{i}] {}: {}", e.describe(), d.rule),
                    needed: d.needed,
                });
            }
        }
    }
    if lookups.is_empty() {
        // `Prefer` applies to the whole batch or transaction, hence to its searches too.
        Verdict::Allow {
            narrow: Vec::new(),
            strict,
        }
    } else {
        lookups.sort();
        lookups.dedup();
        Verdict::Lookup(lookups)
    }
}

/// The scope that would allow `req` with `perm`, in the context the token works in: patient
/// when it has a patient context, system when it carries system scopes, else user.
fn needed_scope(g: &Grant<'_>, req: &FhirRequest, perm: Perms) -> Option<String> {
    // Only names FHIR defines: a type-shaped path segment is the request's own text.
    if req
        .resource_type
        .as_deref()
        .is_some_and(|t| !crate::core::definitions::is_resource_type(t))
    {
        return None;
    }
    let context = if g.patient.is_some() {
        "patient"
    } else if g.scopes.scopes.iter().any(|s| s.context == Context::System) {
        "system"
    } else {
        "user"
    };
    hint(
        g,
        &format!(
            "{context}/{}.{}",
            req.resource_type.as_deref().unwrap_or("*"),
            perm.letters()
        ),
    )
}

fn deny(g: &Grant<'_>, req: &FhirRequest, perm: Perms, rule: impl Into<String>) -> Verdict {
    Verdict::Deny(ScopeDenial {
        rule: rule.into(),
        needed: needed_scope(g, req, perm),
    })
}

/// A refusal no scope can lift: another patient's data, or something that cannot be proven to
/// stay inside the context patient's compartment.
fn deny_without_hint(rule: impl Into<String>) -> Verdict {
    Verdict::Deny(ScopeDenial {
        rule: rule.into(),
        needed: None,
    })
}

/// The permission letters an interaction needs (SMART App Launch 2, "Scopes for requesting
/// clinical data"): r for reads by id, s for searches, c/u/d for writes.
fn needed_permission(req: &FhirRequest) -> Perms {
    use Interaction::*;
    use OpKind as K;
    match req.interaction {
        Read | VRead | HistoryInstance => Perms::R,
        SearchType | SearchSystem | SearchCompartment | HistoryType | HistorySystem => Perms::S,
        Create => Perms::C,
        Update | Patch => Perms::U,
        Delete => Perms::D,
        // Conditional interactions need the permission of what they do. An update whose
        // criteria match nothing creates, so it needs c as well. A conditional create returns
        // the match when there is one, so its search needs s.
        ConditionalCreate => Perms::C.union(Perms::S),
        ConditionalUpdate => Perms::U.union(Perms::C),
        ConditionalPatch => Perms::U,
        ConditionalDelete => Perms::D,
        OperationSystem | OperationType | OperationInstance => match req.op.map(|o| o.kind) {
            Some(K::Search | K::NoPatientData) => RS,
            Some(K::ReadInstance) => Perms::R,
            Some(K::WriteInstance) => Perms::U,
            _ => Perms::ALL,
        },
        Capabilities | Batch | Transaction | BundleUninspected => Perms::R,
    }
}

fn is_search(req: &FhirRequest) -> bool {
    matches!(
        req.interaction,
        Interaction::SearchType | Interaction::SearchSystem | Interaction::SearchCompartment
    ) || req.op.is_some_and(|o| o.kind == OpKind::Search)
}

fn covers_type(scope: &Scope, t: Option<&str>) -> bool {
    match (&scope.resource_type, t) {
        (None, _) => true,
        (Some(st), Some(t)) => st == t,
        // Without a type (system search or history), only `*` covers the request.
        (Some(_), None) => false,
    }
}

/// The operation's name for a message: only names from fhirguard's table, never a name the
/// request made up.
fn op_name(req: &FhirRequest) -> String {
    match req.op {
        Some(o) => format!("${}", o.name),
        None => "this operation".into(),
    }
}

/// The types a `_type` parameter lists (comma-separated, possibly repeated).
fn listed_types(req: &FhirRequest) -> Vec<&str> {
    req.params
        .iter()
        .filter(|(k, _)| k == "_type")
        .flat_map(|(_, v)| v.split(','))
        .collect()
}

/// Bulk `$export` is for backend services: it needs system/ scopes.
fn export(g: &Grant<'_>, req: &FhirRequest) -> Verdict {
    let system = |t: Option<&str>| {
        g.scopes.scopes.iter().any(|s| {
            s.context == Context::System
                && s.query.is_none()
                && s.perms.contains(RS)
                && (s.resource_type.is_none() || s.resource_type.as_deref() == t)
        })
    };
    let types = listed_types(req);
    let ok = system(None)
        || (req.params_complete && !types.is_empty() && types.iter().all(|t| system(Some(t))));
    if ok {
        allow()
    } else {
        Verdict::Deny(ScopeDenial {
            rule: "bulk $export needs system/ scopes: system/*.rs, or rs on every type listed in _type".into(),
            needed: hint(g, "system/*.rs"),
        })
    }
}

#[cfg(test)]
mod tests;
