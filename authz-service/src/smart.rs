//! SMART-on-FHIR scopes (App Launch 2.x, with v1 scopes mapped to v2).
//!
//! Grammar: `(patient|user|system)/(Type|*).(perms)[?query]` where perms is `read`, `write`,
//! `*` (v1) or a non-empty subsequence of `cruds` in that order (v2). Matching is
//! case-sensitive and whole-token; a malformed token grants nothing and is reported.
//!
//! Enforcement here is the type-level part of SMART: which permission letter an interaction
//! needs and on which type. Patient scopes grant only what is provably inside the context
//! patient's compartment; what cannot be proven from the request is refused (fail closed).
//! Granular scopes (with a `?query`) grant nothing yet, because honouring one requires
//! proving that the request stays inside its filter.

use crate::fhir::{FhirRequest, Interaction};

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
pub struct Perms(u8);

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
    /// Which rule refused, for the OperationOutcome and the log.
    pub rule: String,
    /// A scope that would have allowed the request, for `WWW-Authenticate`.
    pub needed: String,
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

/// What is stored under a `Type/id`, as far as the patient compartment is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// The resource exists; these are the patients whose compartment it is in.
    Found(Vec<String>),
    NotFound,
}

/// Answers of compartment lookups, keyed by (type, id).
pub type Lookups = std::collections::HashMap<(String, String), Stored>;

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
    /// The decision depends on stored resources: look these `(type, id)` up, then ask again.
    Lookup(Vec<(String, String)>),
    Deny(ScopeDenial),
}

fn allow() -> Verdict {
    Verdict::Allow {
        narrow: Vec::new(),
        strict: false,
    }
}

/// An allow that holds only if the server applies every search parameter of `req`: searches
/// and conditional interactions, and operations that carry parameters.
fn allow_if_applied(req: &FhirRequest) -> Verdict {
    use Interaction::*;
    let searches = match req.interaction {
        OperationSystem | OperationType | OperationInstance => !req.params.is_empty(),
        _ => needed_permission(req).contains(Perms::S),
    };
    Verdict::Allow {
        narrow: Vec::new(),
        strict: searches,
    }
}

/// What a patient-context check says about one request.
enum PatientCheck {
    Allow,
    Narrow(String, String),
    Lookup(String, String),
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
        OperationSystem | OperationType | OperationInstance
            if req.operation.as_deref() == Some("everything") =>
        {
            everything(g, req)
        }
        OperationSystem | OperationType | OperationInstance
            if req.operation.as_deref() == Some("export") =>
        {
            export(g, req)
        }
        _ => general(g, req),
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

fn needed_scope(g: &Grant<'_>, req: &FhirRequest, perm: Perms) -> String {
    let context = if g.patient.is_some() {
        "patient"
    } else {
        "user"
    };
    format!(
        "{context}/{}.{}",
        req.resource_type.as_deref().unwrap_or("*"),
        perm.letters()
    )
}

fn deny(g: &Grant<'_>, req: &FhirRequest, perm: Perms, rule: impl Into<String>) -> Verdict {
    Verdict::Deny(ScopeDenial {
        rule: rule.into(),
        needed: needed_scope(g, req, perm),
    })
}

/// The permission letters an interaction needs (SMART App Launch 2, "Scopes for requesting
/// clinical data"): r for reads by id, s for searches, c/u/d for writes.
fn needed_permission(req: &FhirRequest) -> Perms {
    use Interaction::*;
    match req.interaction {
        Read | VRead | HistoryInstance => Perms::R,
        SearchType | SearchSystem | SearchCompartment | HistoryType | HistorySystem => Perms::S,
        Create => Perms::C,
        Update | Patch => Perms::U,
        Delete => Perms::D,
        // Conditional interactions search first, so they also need s.
        ConditionalCreate => Perms::C.union(Perms::S),
        ConditionalUpdate | ConditionalPatch => Perms::U.union(Perms::S),
        ConditionalDelete => Perms::D.union(Perms::S),
        OperationSystem | OperationType | OperationInstance if req.writes => Perms::ALL,
        OperationSystem | OperationType | OperationInstance => Perms::R.union(Perms::S),
        Capabilities | Batch | Transaction | BundleUninspected => Perms::R,
    }
}

fn is_search(req: &FhirRequest) -> bool {
    matches!(
        req.interaction,
        Interaction::SearchType | Interaction::SearchSystem | Interaction::SearchCompartment
    )
}

fn covers_type(scope: &Scope, t: Option<&str>) -> bool {
    match (&scope.resource_type, t) {
        (None, _) => true,
        (Some(st), Some(t)) => st == t,
        // Without a type (system search or history), only `*` covers the request.
        (Some(_), None) => false,
    }
}

fn general(g: &Grant<'_>, req: &FhirRequest) -> Verdict {
    let perm = needed_permission(req);
    let t = req.resource_type.as_deref();
    let mut refusal: Option<String> = None;
    let mut lookup: Option<Verdict> = None;
    let mut narrow: Option<Verdict> = None;
    for s in g
        .scopes
        .scopes
        .iter()
        .filter(|s| s.perms.contains(perm) && covers_type(s, t))
    {
        if let Some(filter) = &s.query
            && !(is_search(req)
                && req.params_complete
                && granular_filter_holds(filter, &req.params))
        {
            {
                refusal.get_or_insert_with(|| {
                    format!(
                        "the granular scope {}/{}.{}?{filter} allows only searches that carry exactly that filter",
                        s.context.as_str(),
                        t.unwrap_or("*"),
                        s.perms.letters()
                    )
                });
                continue;
            }
        }
        match s.context {
            // A granular scope's filter passed above: the allow rests on that parameter.
            Context::User | Context::System if s.query.is_some() => {
                return includes_checked(g, req, allow_if_applied(req));
            }
            Context::User | Context::System => return includes_checked(g, req, allow()),
            Context::Patient => {
                let Some(ctx) = g.patient else {
                    refusal.get_or_insert_with(|| {
                        "a patient/ scope grants nothing without a patient context in the token"
                            .into()
                    });
                    continue;
                };
                match patient_check(g, req, ctx) {
                    PatientCheck::Allow => {
                        return includes_checked(g, req, allow_if_applied(req));
                    }
                    PatientCheck::Lookup(t, id) => {
                        lookup.get_or_insert(Verdict::Lookup(vec![(t, id)]));
                    }
                    PatientCheck::Narrow(k, v) => {
                        narrow.get_or_insert(Verdict::Allow {
                            narrow: vec![(k, v)],
                            strict: true,
                        });
                    }
                    PatientCheck::Deny(why) => {
                        refusal.get_or_insert(why);
                    }
                }
            }
        }
    }
    if let Some(l) = lookup {
        return l;
    }
    if let Some(n) = narrow {
        return includes_checked(g, req, n);
    }
    let rule = refusal.unwrap_or_else(|| {
        format!(
            "{} needs scope permission '{}' on {}; {}",
            req.describe(),
            perm.letters(),
            t.unwrap_or("every type (*)"),
            if g.scopes.scopes.is_empty() {
                "the token carries no usable resource scope"
            } else {
                "no granted scope covers it"
            }
        )
    });
    deny(g, req, perm, rule)
}

/// A granular scope's filter holds when every one of its parameters is present in the
/// search with exactly the scope's value (every comma-separated alternative included).
fn granular_filter_holds(filter: &str, params: &[(String, String)]) -> bool {
    let Ok(wanted) = crate::fhir::parse_query(filter) else {
        return false;
    };
    wanted.iter().all(|(k, v)| {
        let mut seen = false;
        for (_, pv) in params.iter().filter(|(pk, _)| pk == k) {
            if pv.split(',').any(|alt| alt != v) {
                return false;
            }
            seen = true;
        }
        seen
    })
}

/// `_include` and `_revinclude` pull in resources of other types; each must be covered by a
/// scope that may read or search that type.
fn includes_checked(g: &Grant<'_>, req: &FhirRequest, ok: Verdict) -> Verdict {
    for (k, v) in &req.params {
        let (base, modifier) = k
            .split_once(':')
            .map_or((k.as_str(), None), |(b, m)| (b, Some(m)));
        let included: Option<&str> = match base {
            "_include" => {
                let parts: Vec<&str> = v.split(':').collect();
                if v == "*" || modifier.is_some() {
                    None
                } else {
                    parts.get(2).copied().or(Some("*"))
                }
            }
            "_revinclude" => {
                if v == "*" || modifier.is_some() {
                    None
                } else {
                    v.split(':').next()
                }
            }
            _ => continue,
        };
        // `*`, `:iterate` and an include without a target type can reach any type.
        let target = included.filter(|t| *t != "*");
        let covered = g.scopes.scopes.iter().any(|s| {
            s.query.is_none()
                && (s.perms.contains(Perms::R) || s.perms.contains(Perms::S))
                && match (&s.resource_type, target) {
                    (None, _) => true,
                    (Some(st), Some(t)) => st == t,
                    (Some(_), None) => false,
                }
        });
        if !covered {
            return deny(
                g,
                req,
                Perms::R.union(Perms::S),
                format!(
                    "{k}={v} can return {} resources, which no granted scope covers",
                    target.unwrap_or("any type of")
                ),
            );
        }
    }
    ok
}

fn patient_check(g: &Grant<'_>, req: &FhirRequest, ctx: &str) -> PatientCheck {
    use crate::compartment;
    use Interaction::*;
    let t = req.resource_type.as_deref().unwrap_or("");
    let is_patient = t == "Patient";
    let in_table = compartment::in_compartment_table(t);
    let own_patient = is_patient && req.id.as_deref() == Some(ctx);
    let outside = || {
        PatientCheck::Deny(format!(
            "{t} is not in the patient compartment, so a patient/ scope cannot reach it"
        ))
    };
    let lookup = |verb: &str| -> PatientCheck {
        let id = req.id.clone().unwrap_or_default();
        if !g.lookup_configured {
            return PatientCheck::Deny(format!(
                "{verb} {t}/<id> under a patient/ scope depends on the stored resource, and this policy has no compartmentLookup"
            ));
        }
        match g.lookups.and_then(|l| l.get(&(t.to_string(), id.clone()))) {
            None => PatientCheck::Lookup(t.to_string(), id),
            Some(Stored::Found(patients)) if patients.iter().any(|p| p == ctx) => {
                PatientCheck::Allow
            }
            Some(Stored::Found(_)) => PatientCheck::Deny(format!(
                "the stored {t} is not in the context patient's compartment"
            )),
            Some(Stored::NotFound) if req.interaction == Update => PatientCheck::Allow,
            Some(Stored::NotFound) => {
                PatientCheck::Deny(format!("nothing is stored under that {t} id"))
            }
        }
    };
    match req.interaction {
        Read | VRead | HistoryInstance if is_patient => {
            if own_patient { PatientCheck::Allow } else { PatientCheck::Deny("a patient/ scope reaches only the context patient's own Patient resource".into()) }
        }
        Read | VRead | HistoryInstance if in_table => lookup("reading"),
        Read | VRead | HistoryInstance => outside(),
        Delete if is_patient => {
            if own_patient { PatientCheck::Allow } else { PatientCheck::Deny("a patient/ scope reaches only the context patient's own Patient resource".into()) }
        }
        Delete if in_table => lookup("deleting"),
        Patch if own_patient => PatientCheck::Allow,
        Patch | ConditionalPatch => PatientCheck::Deny("a patch cannot be proven to keep the resource in the context patient's compartment; use update".into()),
        Update => {
            if !is_patient && !in_table {
                return outside();
            }
            if is_patient && !own_patient {
                return PatientCheck::Deny("a patient/ scope reaches only the context patient's own Patient resource".into());
            }
            if let Err(why) = body_in_compartment(req, t, ctx, true) {
                return PatientCheck::Deny(why);
            }
            if is_patient { PatientCheck::Allow } else { lookup("updating") }
        }
        Create | ConditionalCreate => {
            if is_patient {
                return PatientCheck::Deny("creating a Patient needs a user/ or system/ scope".into());
            }
            if !in_table {
                return outside();
            }
            if let Err(why) = body_in_compartment(req, t, ctx, false) {
                return PatientCheck::Deny(why);
            }
            if req.interaction == ConditionalCreate {
                return match pinned(t, &req.params, req.params_complete, ctx) {
                    Pinned::Yes => PatientCheck::Allow,
                    Pinned::No => PatientCheck::Deny("the If-None-Exist criteria must name the context patient".into()),
                    Pinned::Refused(why) => PatientCheck::Deny(why),
                };
            }
            PatientCheck::Allow
        }
        ConditionalUpdate | ConditionalDelete => {
            if !is_patient && !in_table {
                return outside();
            }
            match pinned(t, &req.params, req.params_complete, ctx) {
                Pinned::Yes => {}
                Pinned::No => return PatientCheck::Deny("conditional criteria must name the context patient".into()),
                Pinned::Refused(why) => return PatientCheck::Deny(why),
            }
            if req.interaction == ConditionalUpdate
                && let Err(why) = body_in_compartment(req, t, ctx, false)
            {
                return PatientCheck::Deny(why);
            }
            PatientCheck::Allow
        }
        SearchType => {
            if !is_patient && !in_table {
                return outside();
            }
            match pinned(t, &req.params, req.params_complete, ctx) {
                Pinned::Yes => PatientCheck::Allow,
                Pinned::Refused(why) => PatientCheck::Deny(why),
                Pinned::No if g.narrow && req.params_complete => {
                    if is_patient {
                        PatientCheck::Narrow("_id".into(), ctx.to_string())
                    } else {
                        match compartment::narrowing_param(t) {
                            Some(p) => PatientCheck::Narrow(p.to_string(), format!("Patient/{ctx}")),
                            None => outside(),
                        }
                    }
                }
                Pinned::No => PatientCheck::Deny(format!(
                    "a patient-scoped search must be limited to the context patient ({})",
                    if is_patient { "_id".to_string() } else { compartment::params(t).join(", ") }
                )),
            }
        }
        SearchCompartment => match &req.compartment {
            Some((ct, id)) if ct == "Patient" && id == ctx => {
                if req.resource_type.is_none() || is_patient || in_table { PatientCheck::Allow } else { outside() }
            }
            Some((ct, _)) if ct == "Patient" => PatientCheck::Deny("the compartment search names another patient".into()),
            _ => PatientCheck::Deny("under a patient/ scope only the context patient's compartment can be searched".into()),
        },
        OperationInstance if own_patient => PatientCheck::Allow,
        OperationInstance if in_table && !req.writes => lookup("running an operation on"),
        _ => PatientCheck::Deny(format!("{} cannot be limited to the context patient", req.describe())),
    }
}

/// Checks the body of a create or update under a patient scope.
fn body_in_compartment(
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
    if crate::compartment::resource_in_compartment(body, ctx) {
        Ok(())
    } else {
        Err(format!(
            "the {t} does not reference the context patient through {}",
            if t == "Patient" {
                "its id".to_string()
            } else {
                crate::compartment::params(t).join(", ")
            }
        ))
    }
}

enum Pinned {
    Yes,
    No,
    Refused(String),
}

/// Whether search parameters pin a search to the context patient: some compartment parameter
/// is present and every value of every compartment parameter is the context patient.
fn pinned(t: &str, params: &[(String, String)], complete: bool, ctx: &str) -> Pinned {
    if !complete {
        return Pinned::Refused(
            "the search parameters (a POST _search body) were not visible to fhirguard".into(),
        );
    }
    let compartment_params = crate::compartment::pin_params(t);
    let mut found = false;
    for (k, v) in params {
        let (base, modifier) = k
            .split_once(':')
            .map_or((k.as_str(), None), |(b, m)| (b, Some(m)));
        if base == "_has" {
            return Pinned::Refused(
                "_has reaches across patients and is not allowed under a patient/ scope".into(),
            );
        }
        if base.contains('.') {
            return Pinned::Refused(format!(
                "chained parameter {k} is not allowed under a patient/ scope"
            ));
        }
        if base == "_query" {
            return Pinned::Refused(
                "named queries (_query) are not allowed under a patient/ scope".into(),
            );
        }
        let is_pin = if t == "Patient" {
            base == "_id"
        } else {
            compartment_params.contains(&base)
        };
        if !is_pin {
            continue;
        }
        match modifier {
            None => {}
            Some("Patient") if t != "Patient" => {}
            Some("missing") => {
                return Pinned::Refused(format!("{k} is not allowed under a patient/ scope"));
            }
            Some(m) => {
                return Pinned::Refused(format!(
                    "the :{m} modifier on {base} is not allowed under a patient/ scope"
                ));
            }
        }
        let bare_ok = t == "Patient" || base == "patient" || modifier == Some("Patient");
        for item in v.split(',') {
            let names_ctx = crate::compartment::patient_id_of_reference(item) == Some(ctx)
                && !item.contains("/_history/")
                || (bare_ok && item == ctx);
            if !names_ctx {
                return Pinned::Refused(format!(
                    "{base} names something other than the context patient"
                ));
            }
        }
        found = true;
    }
    if found { Pinned::Yes } else { Pinned::No }
}

/// `$everything`: the context patient's own record only; needs `*.rs` or read on every
/// `_type` listed.
fn everything(g: &Grant<'_>, req: &FhirRequest) -> Verdict {
    let rs = Perms::R.union(Perms::S);
    if req.interaction != Interaction::OperationInstance
        || req.resource_type.as_deref() != Some("Patient")
    {
        let ok = g.scopes.scopes.iter().any(|s| {
            s.query.is_none()
                && s.context != Context::Patient
                && s.resource_type.is_none()
                && s.perms.contains(rs)
        });
        return if ok {
            allow()
        } else {
            deny(
                g,
                req,
                rs,
                "$everything across patients needs a user/ or system/ *.rs scope",
            )
        };
    }
    let id = req.id.as_deref().unwrap_or("");
    let usable = |s: &&Scope| -> bool {
        s.query.is_none()
            && s.perms.contains(rs)
            && match s.context {
                Context::Patient => g.patient == Some(id),
                _ => true,
            }
    };
    if g.scopes
        .scopes
        .iter()
        .filter(usable)
        .any(|s| s.resource_type.is_none())
    {
        return allow();
    }
    let types = listed_types(req);
    if !types.is_empty()
        && types.iter().all(|t| {
            g.scopes
                .scopes
                .iter()
                .filter(usable)
                .any(|s| s.resource_type.as_deref() == Some(t))
        })
    {
        return allow();
    }
    let why = if g.patient.is_some_and(|p| p != id)
        && !g
            .scopes
            .scopes
            .iter()
            .any(|s| s.context != Context::Patient)
    {
        "$everything under a patient/ scope is allowed only for the context patient".to_string()
    } else {
        "$everything needs a *.rs scope, or rs on every type listed in _type".to_string()
    };
    Verdict::Deny(ScopeDenial {
        rule: why,
        needed: format!(
            "{}/*.rs",
            if g.patient.is_some() {
                "patient"
            } else {
                "user"
            }
        ),
    })
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
    let rs = Perms::R.union(Perms::S);
    let system = |t: Option<&str>| {
        g.scopes.scopes.iter().any(|s| {
            s.context == Context::System
                && s.query.is_none()
                && s.perms.contains(rs)
                && (s.resource_type.is_none() || s.resource_type.as_deref() == t)
        })
    };
    let types = listed_types(req);
    let ok = system(None) || (!types.is_empty() && types.iter().all(|t| system(Some(t))));
    if ok {
        allow()
    } else {
        Verdict::Deny(ScopeDenial {
            rule: "bulk $export needs system/ scopes: system/*.rs, or rs on every type listed in _type".into(),
            needed: "system/*.rs".into(),
        })
    }
}

#[cfg(test)]
mod tests;
