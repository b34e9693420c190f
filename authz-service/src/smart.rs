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
//! writes of resources that match it ([`crate::granular`]).

use std::sync::Arc;

use crate::compartment;
use crate::fhir::{FhirRequest, Interaction};
use crate::operations::OpKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Context {
    Patient,
    User,
    System,
}

impl Context {
    pub fn as_str(self) -> &'static str {
        match self {
            Context::Patient => "patient",
            Context::User => "user",
            Context::System => "system",
        }
    }
}

/// The v2 permission letters as a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Perms(pub(crate) u8);

impl Perms {
    pub const C: Perms = Perms(1);
    pub const R: Perms = Perms(2);
    pub const U: Perms = Perms(4);
    pub const D: Perms = Perms(8);
    pub const S: Perms = Perms(16);
    pub const ALL: Perms = Perms(31);

    pub fn contains(self, other: Perms) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn union(self, other: Perms) -> Perms {
        Perms(self.0 | other.0)
    }

    /// `cruds` order, only the letters present.
    pub fn letters(self) -> String {
        [
            (Perms::C, 'c'),
            (Perms::R, 'r'),
            (Perms::U, 'u'),
            (Perms::D, 'd'),
            (Perms::S, 's'),
        ]
        .iter()
        .filter(|(p, _)| self.contains(*p))
        .map(|(_, c)| *c)
        .collect()
    }

    fn parse(s: &str) -> Option<Perms> {
        match s {
            "read" => return Some(Perms::R.union(Perms::S)),
            "write" => return Some(Perms::C.union(Perms::U).union(Perms::D)),
            "*" => return Some(Perms::ALL),
            "" => return None,
            _ => {}
        }
        // v2: letters strictly in c, r, u, d, s order, each at most once.
        let order = "cruds";
        let mut last: Option<usize> = None;
        let mut out = Perms::default();
        for ch in s.chars() {
            let pos = order.find(ch)?;
            if last.is_some_and(|l| pos <= l) {
                return None;
            }
            last = Some(pos);
            out = out.union(Perms(1 << pos));
        }
        Some(out)
    }
}

/// One resource scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub context: Context,
    /// `None` for `*`.
    pub resource_type: Option<String>,
    pub perms: Perms,
    /// The granular filter of a v2 scope (`category=...`), if any.
    pub query: Option<String>,
}

/// Scopes that are part of SMART but grant no resource access.
const NON_RESOURCE_SCOPES: &[&str] = &[
    "openid",
    "fhirUser",
    "profile",
    "launch",
    "launch/patient",
    "launch/encounter",
    "offline_access",
    "online_access",
];

/// The result of reading a token's scopes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeSet {
    pub scopes: Vec<Scope>,
    /// Tokens that are neither resource scopes nor known non-resource scopes; they grant nothing.
    pub ignored: Vec<String>,
}

/// Parses one scope token.
pub fn parse_scope(token: &str) -> Option<Scope> {
    let (context, rest) = token.split_once('/')?;
    let context = match context {
        "patient" => Context::Patient,
        "user" => Context::User,
        "system" => Context::System,
        _ => return None,
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) if !q.is_empty() => (r, Some(q.to_string())),
        Some(_) => return None,
        None => (rest, None),
    };
    let (rt, perms) = rest.rsplit_once('.')?;
    let resource_type = if rt == "*" {
        None
    } else if !rt.is_empty()
        && rt.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && rt.chars().all(|c| c.is_ascii_alphabetic())
    {
        Some(rt.to_string())
    } else {
        return None;
    };
    let perms = Perms::parse(perms)?;
    if query.is_some() && matches!(perms, p if p == Perms::ALL && rt == "*") {
        // `*.cruds?x` is not meaningful; refuse rather than guess.
        return None;
    }
    Some(Scope {
        context,
        resource_type,
        perms,
        query,
    })
}

/// Reads a space-separated scope string (or the items of an array claim).
pub fn parse_scopes<'a>(tokens: impl IntoIterator<Item = &'a str>) -> ScopeSet {
    let mut out = ScopeSet::default();
    for t in tokens {
        if t.is_empty() {
            continue;
        }
        match parse_scope(t) {
            Some(s) => out.scopes.push(s),
            None if NON_RESOURCE_SCOPES.contains(&t) => {}
            None => out.ignored.push(t.to_string()),
        }
    }
    out
}

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

/// A patient id from the context claim: `abc` or `Patient/abc`.
pub fn context_patient_id(claim: &str) -> Option<&str> {
    let id = claim.strip_prefix("Patient/").unwrap_or(claim);
    (!id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'))
    .then_some(id)
}

/// A stored resource a decision depends on: the current version, or one version (vread).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LookupKey {
    pub resource_type: String,
    pub id: String,
    pub version: Option<String>,
    /// The answer decides a write: it must be fetched now, never taken from a cache (a
    /// resource moved to another patient, or created under an id that was empty a moment
    /// ago, must not be written on the strength of an old answer).
    pub for_write: bool,
}

impl LookupKey {
    pub fn current(resource_type: &str, id: &str) -> Self {
        LookupKey {
            resource_type: resource_type.to_string(),
            id: id.to_string(),
            version: None,
            for_write: false,
        }
    }

    /// The current version, fetched fresh because a write depends on it.
    pub fn for_write(resource_type: &str, id: &str) -> Self {
        LookupKey {
            for_write: true,
            ..Self::current(resource_type, id)
        }
    }

    /// The same resource as a read would ask for it (the key fresh answers are cached under).
    pub fn read(&self) -> Self {
        LookupKey {
            for_write: false,
            ..self.clone()
        }
    }

    /// The path to fetch, relative to the server's base.
    pub fn path(&self) -> String {
        match &self.version {
            None => format!("{}/{}", self.resource_type, self.id),
            Some(v) => format!("{}/{}/_history/{v}", self.resource_type, self.id),
        }
    }
}

/// What is stored under a lookup key.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    Found(Arc<serde_json::Value>),
    /// 404: nothing was ever stored there (as far as the server says).
    NotFound,
    /// 410: something was stored and deleted. It existed, and whose it was is unknown: not
    /// free to overwrite.
    Gone,
}

/// Answers of compartment lookups.
pub type Lookups = std::collections::HashMap<LookupKey, Stored>;

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
    (crate::definitions::is_resource_type(t) && context_patient_id(id).is_some()).then_some((t, id))
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
        .is_some_and(|t| !crate::definitions::is_resource_type(t))
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

/// Operations: decided by what the operation is (see [`crate::operations`]).
fn operation(g: &Grant<'_>, req: &FhirRequest) -> Verdict {
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
fn any_type(g: &Grant<'_>, perm: Perms, rule: String) -> Verdict {
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
enum Refusal {
    /// A scope of another shape (no filter, more letters) would allow it: hint it.
    Scope(String),
    /// No scope can: another patient, or not provable. No hint.
    Final(String),
}

fn general(g: &Grant<'_>, req: &FhirRequest) -> Verdict {
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
                    Some(t) if crate::definitions::is_resource_type(t) => t,
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

/// What a check against one scope says: allowed, needs a stored resource first, or refused.
enum Check {
    Allow,
    Lookup(LookupKey),
    Deny(String),
}

/// Whether a granular scope's filter holds for the request: a search must carry the filter; a
/// read, update, delete or patch by id needs the stored resource to match it (that version for
/// a vread); a create or update needs the body to match it; conditional writes need criteria
/// that carry it.
fn granular_check(g: &Grant<'_>, req: &FhirRequest, filter: &str) -> Check {
    use Interaction::*;
    let t = req.resource_type.as_deref().unwrap_or("");
    if let Err(e) = crate::granular::check(t, filter) {
        // A filter fhirguard cannot evaluate never grants anything but searches carrying it.
        if !is_search(req) {
            return Check::Deny(format!(
                "the granular scope's filter cannot be checked against a resource: {e}"
            ));
        }
    }
    let carried = || {
        req.params_complete
            && granular_filter_holds(
                req.resource_type.as_deref().unwrap_or(""),
                filter,
                &req.params,
            )
    };
    let resource_matches = |res: &serde_json::Value, what: &str| -> Result<(), String> {
        match crate::granular::matches(res, t, filter) {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!("{what} does not match the granular scope's filter")),
            Err(e) => Err(format!(
                "the granular scope's filter cannot be checked against a resource: {e}"
            )),
        }
    };
    let id = req.id.as_deref().unwrap_or("");
    let stored = |key: LookupKey, upsert: bool| -> Check {
        if !g.lookup_configured {
            return Check::Deny(format!(
                "a granular scope allows {} only when the stored resource can be checked, and this policy has no compartmentLookup",
                req.describe()
            ));
        }
        match g.lookups.and_then(|l| l.get(&key)) {
            None => Check::Lookup(key),
            Some(Stored::Found(res)) => match resource_matches(res, &format!("the stored {t}")) {
                Ok(()) => Check::Allow,
                Err(why) => Check::Deny(why),
            },
            Some(Stored::NotFound) if upsert => Check::Allow,
            Some(_) => Check::Deny(format!("nothing readable is stored under that {t} id")),
        }
    };
    let body = || -> Result<(), String> {
        match &req.resource {
            Some(res) => resource_matches(res, "the body"),
            None => Err("the body was not visible as JSON, so the granular scope's filter cannot be checked".into()),
        }
    };
    match req.interaction {
        // `$stats` takes none of the search parameters a filter is made of.
        _ if req.op.is_some_and(|o| o.name == "stats") => Check::Deny(
            "$stats cannot carry a granular scope's filter (it takes no search parameters)".into(),
        ),
        _ if is_search(req) => {
            if carried() {
                Check::Allow
            } else {
                Check::Deny("a search under a granular scope must carry exactly its filter".into())
            }
        }
        Read => stored(LookupKey::current(t, id), false),
        VRead => stored(
            LookupKey {
                resource_type: t.to_string(),
                id: id.to_string(),
                version: req.version_id.clone(),
                for_write: false,
            },
            false,
        ),
        Delete => stored(LookupKey::for_write(t, id), false),
        Create => match body() {
            Ok(()) => Check::Allow,
            Err(why) => Check::Deny(why),
        },
        // A match is returned instead of created: the criteria must stay inside the filter.
        ConditionalCreate => match body() {
            Ok(()) if carried() => Check::Allow,
            Ok(()) => Check::Deny(
                "If-None-Exist under a granular scope must carry exactly its filter (a match is returned to the client)".into(),
            ),
            Err(why) => Check::Deny(why),
        },
        Update => match body() {
            Ok(()) => stored(LookupKey::for_write(t, id), true),
            Err(why) => Check::Deny(why),
        },
        Patch => {
            let touched = patch_touches(req, &crate::granular::elements(t, filter));
            match touched {
                Some(el) => Check::Deny(format!(
                    "the patch changes {el}, which the granular scope's filter is about"
                )),
                None => stored(LookupKey::for_write(t, id), false),
            }
        }
        ConditionalUpdate | ConditionalDelete | ConditionalPatch => {
            if !carried() {
                return Check::Deny(
                    "conditional criteria under a granular scope must carry exactly its filter"
                        .into(),
                );
            }
            if req.interaction == ConditionalUpdate {
                if let Err(why) = body() {
                    return Check::Deny(why);
                }
                // With no match the server writes to the body's id, which the filter never saw.
                if req.resource.as_ref().is_some_and(|b| b.get("id").is_some()) {
                    return Check::Deny(
                        "a conditional update under a granular scope may not carry an id in its body".into(),
                    );
                }
            }
            if req.interaction == ConditionalPatch
                && let Some(el) = patch_touches(req, &crate::granular::elements(t, filter))
            {
                return Check::Deny(format!(
                    "the patch changes {el}, which the granular scope's filter is about"
                ));
            }
            Check::Allow
        }
        OperationInstance if req.op.is_some_and(|o| o.kind == OpKind::ReadInstance) => {
            stored(LookupKey::current(t, id), false)
        }
        _ => Check::Deny(format!(
            "{} cannot be checked against a granular scope's filter",
            req.describe()
        )),
    }
}

/// Whether a patched element name (`medication`, `medicationReference`,
/// `medicationCodeableConcept`) is the FHIR element `root` (`medication`): a choice element
/// has one JSON spelling per type.
fn same_element(name: &str, root: &str) -> bool {
    name == root
        || name
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase()))
}

/// The first element among `elements` that a patch changes (or `"an element"` when a
/// patch's target cannot be read or its body was not visible).
fn patch_touches(req: &FhirRequest, elements: &[&str]) -> Option<String> {
    use crate::fhir::PatchBody;
    let Some(PatchBody::Ops(ops)) = &req.patch else {
        return Some("an element it does not show (the patch body was not visible)".into());
    };
    for op in ops.iter().filter(|o| o.op != "test") {
        for el in [op.element.as_deref(), op.from_element.as_deref()] {
            match el {
                Some(e) if elements.iter().any(|root| same_element(e, root)) => {
                    return Some(e.to_string());
                }
                None if op.from_element.is_none() && op.element.is_none() => {
                    return Some("an element it does not name".into());
                }
                _ => {}
            }
        }
    }
    None
}

/// A granular scope's filter holds for a search when every one of its parameters is present
/// and every value the search gives it stays inside the filter's values: each alternative
/// (comma-separated) of the search is one of the filter's alternatives, or a narrower token
/// (`system|code` inside a filter of `code`, any `code` of `system|`). Repeating the parameter
/// only narrows further (FHIR ANDs repeats).
fn granular_filter_holds(t: &str, filter: &str, params: &[(String, String)]) -> bool {
    let Ok(wanted) = crate::fhir::parse_query(filter) else {
        return false;
    };
    let alternatives = |v: &str| -> Vec<String> {
        // FHIR escapes separators with `\`; such a value is compared whole (never wider).
        if v.contains('\\') {
            vec![v.to_string()]
        } else {
            v.split(',').map(str::to_string).collect()
        }
    };
    wanted.iter().all(|(k, v)| {
        let code = k.split(':').next().unwrap_or(k);
        let token = k == code
            && crate::definitions::search_param(t, code)
                .is_some_and(|sp| sp.kind == crate::definitions::ParamKind::Token);
        let allowed = alternatives(v);
        let inside = |alt: &str| {
            allowed.iter().any(|f| {
                alt == f
                    || (token
                        && match (alt.split_once('|'), f.split_once('|')) {
                            // `sys|code` inside `code` (any system).
                            (Some((_, c)), None) => c == f,
                            // `sys|code` inside `sys|` (any code of the system).
                            (Some((s, c)), Some((fs, ""))) => s == fs && !c.is_empty(),
                            _ => false,
                        })
            })
        };
        let mut seen = false;
        for (_, pv) in params.iter().filter(|(pk, _)| pk == k) {
            if !alternatives(pv).iter().all(|alt| inside(alt)) {
                return false;
            }
            seen = true;
        }
        seen
    })
}

/// One `_include` / `_revinclude` parameter.
struct Include<'a> {
    rev: bool,
    /// `*`, `Type:*` or `:iterate`: can reach any type.
    any: bool,
    source: &'a str,
    param: &'a str,
    target: Option<&'a str>,
}

fn is_code(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn parse_include<'a>(k: &'a str, v: &'a str) -> Option<Result<Include<'a>, String>> {
    let (base, modifier) = k.split_once(':').map_or((k, None), |(b, m)| (b, Some(m)));
    let rev = match base {
        "_include" => false,
        "_revinclude" => true,
        _ => return None,
    };
    let iterate = match modifier {
        None => false,
        Some("iterate" | "recurse") => true,
        Some(_) => {
            return Some(Err(format!("{base} takes no modifier other than :iterate")));
        }
    };
    if v == "*" {
        return Some(Ok(Include {
            rev,
            any: true,
            source: "",
            param: "",
            target: None,
        }));
    }
    let parts: Vec<&str> = v.split(':').collect();
    let (source, param, target) = match parts.as_slice() {
        [s, p] => (*s, *p, None),
        [s, p, t] => (*s, *p, Some(*t)),
        _ => {
            return Some(Err(format!(
                "{base} needs the form Type:parameter[:TargetType]"
            )));
        }
    };
    if !crate::definitions::is_resource_type(source)
        || !(param == "*" || is_code(param))
        || target.is_some_and(|t| !crate::definitions::is_resource_type(t))
    {
        return Some(Err(format!(
            "{base} names a type or parameter that FHIR R4 does not define"
        )));
    }
    Some(Ok(Include {
        rev,
        any: iterate || param == "*",
        source,
        param,
        target,
    }))
}

/// Search parameters that reach past the searched type, checked for every scope (under
/// patient scopes `pinned` refuses them outright): `_query` (a named query returns anything),
/// `_contained`/`_containedType` (containers of any type), and `_has:Type:...` (an oracle on
/// `Type`). The first two need a scope on every type; `_has` one that may search `Type`.
fn reach_checked(g: &Grant<'_>, req: &FhirRequest) -> Result<(), String> {
    if !is_search(req) {
        return Ok(());
    }
    let wide = |perm: Perms, t: Option<&str>| {
        g.scopes.scopes.iter().any(|s| {
            s.context != Context::Patient
                && s.query.is_none()
                && s.perms.contains(perm)
                && covers_type(s, t)
        })
    };
    for (k, v) in &req.params {
        let base = k.split(':').next().unwrap_or(k);
        match base {
            "_query" if !wide(Perms::S, None) => {
                return Err("named queries (_query) can return anything: they need a user/ or system/ *.s scope".into());
            }
            "_containedType" | "_contained"
                if (base == "_containedType" || v != "false") && !wide(Perms::S, None) =>
            {
                return Err("_contained and _containedType return contained resources or their containers, of any type: they need a user/ or system/ *.s scope".into());
            }
            "_has" => {
                let source = k.split(':').nth(1).unwrap_or("");
                if !crate::definitions::is_resource_type(source) || !wide(Perms::S, Some(source)) {
                    return Err("_has searches another type: it needs a user/ or system/ scope that may search that type".into());
                }
            }
            // A chain searches the resources its reference points to: the forward form of
            // `_has`, and an oracle on them without a scope that may search them.
            _ if k.contains('.') => {
                let link = k.split('.').next().unwrap_or("");
                let (param, typed) = link
                    .split_once(':')
                    .map_or((link, None), |(p, t)| (p, Some(t)));
                let t = req.resource_type.as_deref().unwrap_or("");
                let targets: Vec<&str> = match typed {
                    Some(x) if crate::definitions::is_resource_type(x) => vec![x],
                    Some(_) => Vec::new(),
                    None => crate::definitions::search_param(t, param)
                        .map(|sp| sp.targets.to_vec())
                        .unwrap_or_default(),
                };
                let covered = if targets.is_empty() {
                    wide(Perms::S, None)
                } else {
                    targets.iter().all(|x| wide(Perms::S, Some(x)))
                };
                if !covered {
                    return Err("a chained parameter searches the resources its reference points to: it needs a user/ or system/ scope that may search every type it can reach".into());
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The single-valued element paths a patient-scoped search proves to hold exactly the
/// context patient's reference (see [`compartment::single_valued_paths`]).
fn proven_paths(req: &FhirRequest, narrowed: Option<&str>) -> Vec<&'static [&'static str]> {
    let Some(t) = req.resource_type.as_deref() else {
        return Vec::new();
    };
    let mut out: Vec<&'static [&'static str]> = Vec::new();
    match req.interaction {
        Interaction::SearchType => {
            // `pinned` has already refused any pin parameter naming someone else.
            for (k, _) in &req.params {
                let base = k.split(':').next().unwrap_or(k);
                if compartment::is_pin_param(t, base) {
                    out.extend(compartment::single_valued_paths(t, base));
                }
            }
            if let Some(k) = narrowed {
                out.extend(compartment::single_valued_paths(t, k));
            }
        }
        Interaction::SearchCompartment => {
            // Membership is by any compartment path: only a type with exactly one, single-
            // valued, proves what that element holds.
            let paths = compartment::compartment_paths(t);
            if let [only] = paths.as_slice()
                && !only.multi
            {
                out.push(only.keys);
            }
        }
        _ => {}
    }
    out
}

/// Whether every resource an include can return is provably in the context patient's
/// compartment, and which types it returns then.
fn provable_include(
    req: &FhirRequest,
    inc: &Include<'_>,
    narrowed: Option<&str>,
) -> Option<Vec<&'static str>> {
    let t = req.resource_type.as_deref()?;
    if inc.any || inc.source != t {
        return None;
    }
    let sp = crate::definitions::search_param(inc.source, inc.param)?;
    if sp.paths.is_empty() {
        return None;
    }
    if !inc.rev {
        // Following a reference that the pin proves to be exactly the context patient.
        let proven = proven_paths(req, narrowed);
        let all_proven = sp
            .paths
            .iter()
            .all(|p| !p.multi && proven.contains(&p.keys));
        return all_proven.then(|| vec!["Patient"]);
    }
    None
}

fn provable_revinclude(
    req: &FhirRequest,
    inc: &Include<'_>,
    narrowed: Option<&str>,
    ctx: &str,
) -> Option<Vec<&'static str>> {
    if inc.any || !inc.rev || req.resource_type.as_deref() != Some("Patient") {
        return None;
    }
    // The primary results must be only the context Patient.
    let only_ctx = match req.interaction {
        Interaction::SearchType => {
            narrowed == Some("_id")
                || req
                    .params
                    .iter()
                    .any(|(k, v)| k == "_id" && v.split(',').all(|id| id == ctx))
        }
        _ => false,
    };
    // `Patient:link` would return the other Patients that link to this one.
    if !only_ctx || inc.target.is_some_and(|t| t != "Patient") || inc.source == "Patient" {
        return None;
    }
    let source = crate::definitions::RESOURCE_TYPES
        .iter()
        .find(|t| **t == inc.source)?;
    let sp = crate::definitions::search_param(source, inc.param)?;
    let paths = compartment::compartment_paths(source);
    let through_compartment = !sp.paths.is_empty()
        && sp
            .paths
            .iter()
            .all(|p| paths.iter().any(|c| c.keys == p.keys));
    through_compartment.then(|| vec![*source])
}

/// `_include` and `_revinclude` pull in other resources. Each must be covered: by a user/ or
/// system/ scope on every type it can return, or — under a patient/ scope — only when every
/// resource it can return is provably in the context patient's compartment (an `_include`
/// following the very reference the search is pinned by, on a single-valued element; a
/// `_revinclude` from `Patient?_id=<context>` through a compartment parameter of its source).
fn includes_checked(
    g: &Grant<'_>,
    req: &FhirRequest,
    ok: Verdict,
    narrowed: Option<&str>,
) -> Verdict {
    if let Err(why) = reach_checked(g, req) {
        return deny(g, req, RS, why);
    }
    for (k, v) in &req.params {
        let inc = match parse_include(k, v) {
            None => continue,
            Some(Err(why)) => return deny(g, req, RS, why),
            Some(Ok(inc)) => inc,
        };
        let label = if inc.rev { "_revinclude" } else { "_include" };
        // The types the include can return, from the R4 definitions.
        let targets: Option<Vec<&str>> = if inc.any {
            None
        } else if inc.rev {
            Some(vec![inc.source])
        } else {
            let Some(sp) = crate::definitions::search_param(inc.source, inc.param)
                .filter(|sp| sp.kind == crate::definitions::ParamKind::Reference)
            else {
                return deny(
                    g,
                    req,
                    RS,
                    format!(
                        "{label} names a parameter that is not a reference search parameter of {}",
                        inc.source
                    ),
                );
            };
            match inc.target {
                Some(t) if !sp.targets.contains(&t) => {
                    return deny(
                        g,
                        req,
                        RS,
                        format!(
                            "{label}: {t} is not a target type of {}:{}",
                            inc.source, inc.param
                        ),
                    );
                }
                Some(t) => Some(vec![t]),
                // No known target types: the include can return anything.
                None if sp.targets.is_empty() => None,
                None => Some(sp.targets.to_vec()),
            }
        };
        let by_user = |types: &Option<Vec<&str>>| -> bool {
            let covers = |t: Option<&str>| {
                g.scopes.scopes.iter().any(|s| {
                    s.context != Context::Patient
                        && s.query.is_none()
                        && (s.perms.contains(Perms::R) || s.perms.contains(Perms::S))
                        && covers_type(s, t)
                })
            };
            match types {
                None => covers(None),
                Some(ts) => ts.iter().all(|t| covers(Some(t))),
            }
        };
        if by_user(&targets) {
            continue;
        }
        // Reference data (types no patient's compartment holds) under patient/ scopes.
        let reference_only = g.reference_data
            && g.patient.is_some()
            && targets.as_ref().is_some_and(|ts| {
                ts.iter()
                    .all(|t| *t != "Patient" && !compartment::in_compartment_table(t))
                    && ts.iter().all(|t| {
                        g.scopes.scopes.iter().any(|s| {
                            s.context == Context::Patient
                                && s.query.is_none()
                                && (s.perms.contains(Perms::R) || s.perms.contains(Perms::S))
                                && covers_type(s, Some(t))
                        })
                    })
            });
        if reference_only {
            continue;
        }
        let by_patient = g.patient.and_then(|ctx| {
            let types = if inc.rev {
                provable_revinclude(req, &inc, narrowed, ctx)
            } else {
                provable_include(req, &inc, narrowed)
            }?;
            types
                .iter()
                .all(|t| {
                    g.scopes.scopes.iter().any(|s| {
                        s.context == Context::Patient
                            && s.query.is_none()
                            && (s.perms.contains(Perms::R) || s.perms.contains(Perms::S))
                            && covers_type(s, Some(t))
                    })
                })
                .then_some(())
        });
        if by_patient.is_some() {
            continue;
        }
        let patient_only = g.patient.is_some()
            && !g
                .scopes
                .scopes
                .iter()
                .any(|s| s.context != Context::Patient);
        let why = if inc.any {
            format!(
                "{label}=* and :iterate can return resources of any type{}; they need a user/ or system/ *.rs scope",
                if patient_only {
                    " and of any patient"
                } else {
                    ""
                }
            )
        } else if patient_only {
            if inc.rev {
                format!(
                    "{label} can return resources outside the context patient's compartment: under a patient/ scope a _revinclude must start from Patient?_id=<context patient> and go through a compartment parameter of its source type"
                )
            } else {
                format!(
                    "{label} can return resources outside the context patient's compartment: under a patient/ scope an _include must follow the single-valued reference the search is pinned to the context patient by, and the scopes must cover Patient"
                )
            }
        } else {
            format!(
                "{label} can return {} resources, which no granted scope covers",
                targets
                    .map(|ts| ts.join(", "))
                    .unwrap_or_else(|| "any type of".into())
            )
        };
        return deny(g, req, RS, why);
    }
    ok
}

fn lookup_state<'a>(
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

fn other_patient() -> PatientCheck {
    PatientCheck::Deny(
        "a patient/ scope reaches only the context patient's own Patient resource".into(),
    )
}

/// A Binary under a patient/ scope: readable when its `securityContext` is the context
/// Patient or a resource in the context patient's compartment (US Core clinical notes keep
/// their content in Binary, referenced from a DocumentReference). Two lookups: the Binary,
/// then what its securityContext names.
fn check_binary(g: &Grant<'_>, req: &FhirRequest, ctx: &str) -> PatientCheck {
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
fn check_read(g: &Grant<'_>, key: LookupKey, t: &str, ctx: &str, verb: &str) -> PatientCheck {
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
fn check_write(
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
fn patch_stays_in_compartment(req: &FhirRequest, t: &str, ctx: &str) -> Result<(), String> {
    use crate::fhir::PatchBody;
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

fn collect_reference_strings<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
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
fn body_owned(req: &FhirRequest, t: &str, ctx: &str, id_must_match: bool) -> Result<(), String> {
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

fn patient_check(g: &Grant<'_>, req: &FhirRequest, ctx: &str) -> PatientCheck {
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
fn conditional_pin(req: &FhirRequest, t: &str, ctx: &str) -> PatientCheck {
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
fn compartment_search(req: &FhirRequest, ctx: &str) -> PatientCheck {
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

fn search_check(
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

enum Pinned {
    /// Pinned; the pin parameters present.
    Yes(Vec<String>),
    No,
    Refused(String),
}

/// Parameters that reach outside whatever the search is pinned to, refused under patient scopes.
fn refused_search_params(params: &[(String, String)]) -> Result<(), String> {
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
fn pinned(t: &str, params: &[(String, String)], complete: bool, ctx: &str) -> Pinned {
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
