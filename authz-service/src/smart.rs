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

/// Decides whether `scopes` allow `req`. `patient` is the token's patient context id.
pub fn authorize(
    scopes: &ScopeSet,
    patient: Option<&str>,
    req: &FhirRequest,
) -> Result<(), ScopeDenial> {
    if matches!(
        req.interaction,
        Interaction::Batch | Interaction::Transaction
    ) {
        // Every entry must pass on its own; a bundle is refused whole if one entry is.
        for (i, e) in req.entries.iter().enumerate() {
            authorize(scopes, patient, e).map_err(|d| ScopeDenial {
                rule: format!("entry[{i}] {}: {}", e.describe(), d.rule),
                needed: d.needed,
            })?;
        }
        return Ok(());
    }
    let perm = match needed_permission(req) {
        Ok(x) => x,
        Err(rule) => {
            return Err(ScopeDenial {
                rule,
                needed: "system/*.cruds".into(),
            });
        }
    };
    let type_name = req.resource_type.as_deref();
    let usable = scopes
        .scopes
        .iter()
        .filter(|s| s.query.is_none() && s.perms.contains(perm))
        .filter(|s| match (&s.resource_type, type_name) {
            (None, _) => true,
            (Some(st), Some(t)) => st == t,
            // Without a type (system search or history), only `*` covers the request.
            (Some(_), None) => false,
        });
    let mut patient_refusal = None;
    for s in usable {
        match s.context {
            Context::User | Context::System => return Ok(()),
            Context::Patient => match patient {
                None => {
                    patient_refusal.get_or_insert_with(|| {
                        "a patient/ scope grants nothing without a patient context in the token"
                            .to_string()
                    });
                }
                Some(ctx) => match in_patient_compartment(req, ctx) {
                    Ok(()) => return Ok(()),
                    Err(why) => {
                        patient_refusal.get_or_insert(why);
                    }
                },
            },
        }
    }
    let context = if patient.is_some() { "patient" } else { "user" };
    let needed = format!("{context}/{}.{}", type_name.unwrap_or("*"), perm.letters());
    Err(ScopeDenial {
        rule: patient_refusal.unwrap_or_else(|| {
            format!(
                "{} needs scope permission '{}' on {}; {}",
                req.describe(),
                perm.letters(),
                type_name.unwrap_or("every type (*)"),
                granted_summary(scopes)
            )
        }),
        needed,
    })
}

fn granted_summary(scopes: &ScopeSet) -> String {
    if scopes.scopes.is_empty() {
        "the token carries no usable resource scope".into()
    } else {
        "no granted scope covers it".into()
    }
}

/// The permission letter an interaction needs (SMART App Launch 2, "Scopes for requesting
/// clinical data"): r for reads by id, s for searches, c/u/d for writes.
fn needed_permission(req: &FhirRequest) -> Result<Perms, String> {
    use Interaction::*;
    let p = match req.interaction {
        Read | VRead | HistoryInstance => Perms::R,
        SearchType | SearchSystem | SearchCompartment | HistoryType | HistorySystem => Perms::S,
        Create => Perms::C,
        Update | Patch => Perms::U,
        Delete => Perms::D,
        // Conditional interactions search first, so they also need s.
        ConditionalCreate => Perms::C.union(Perms::S),
        ConditionalUpdate | ConditionalPatch => Perms::U.union(Perms::S),
        ConditionalDelete => Perms::D.union(Perms::S),
        OperationSystem | OperationType | OperationInstance => {
            if req.writes {
                Perms::ALL
            } else {
                Perms::R.union(Perms::S)
            }
        }
        Capabilities => Perms::R,
        BundleUninspected => {
            return Err(
                "the bundle's body was not sent to fhirguard, so its entries cannot be \
                        checked (enable with_request_body on this route)"
                    .into(),
            );
        }
        Batch | Transaction => Perms::R,
    };
    Ok(p)
}

/// What can be proven from the request alone about the patient compartment. Everything else
/// is refused under a patient scope.
fn in_patient_compartment(req: &FhirRequest, ctx: &str) -> Result<(), String> {
    use Interaction::*;
    let is_patient = req.resource_type.as_deref() == Some("Patient");
    match req.interaction {
        Read | VRead | HistoryInstance | Update | Patch if is_patient => {
            if req.id.as_deref() == Some(ctx) {
                Ok(())
            } else {
                Err("a patient/ scope reaches only the context patient's own Patient resource".into())
            }
        }
        SearchType if is_patient => {
            let ids: Vec<&str> = req
                .params
                .iter()
                .filter(|(k, _)| k == "_id")
                .flat_map(|(_, v)| v.split(','))
                .collect();
            if req.params_complete && !ids.is_empty() && ids.iter().all(|i| *i == ctx) {
                Ok(())
            } else {
                Err("a patient/ scope allows a Patient search only when _id is the context patient".into())
            }
        }
        SearchCompartment => match &req.compartment {
            Some((t, id)) if t == "Patient" && id == ctx => Ok(()),
            _ => Err("a patient/ scope allows compartment searches only in the context patient's compartment".into()),
        },
        _ => Err(format!(
            "{} cannot be proven to stay inside the context patient's compartment",
            req.describe()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::{HttpRequest, classify, normalize_path, split_path};

    fn req(method: &str, rel: &str) -> FhirRequest {
        let (p, q) = split_path(rel);
        let segs = normalize_path(p).unwrap();
        classify(HttpRequest {
            method,
            segments: &segs,
            query: q,
            body: None,
            if_none_exist: None,
        })
        .unwrap()
    }

    #[test]
    fn grammar() {
        let ok = [
            (
                "patient/Observation.rs",
                Context::Patient,
                Some("Observation"),
                "rs",
            ),
            ("user/*.cruds", Context::User, None, "cruds"),
            (
                "system/Patient.read",
                Context::System,
                Some("Patient"),
                "rs",
            ),
            ("user/Patient.write", Context::User, Some("Patient"), "cud"),
            ("user/*.*", Context::User, None, "cruds"),
            (
                "patient/Condition.c",
                Context::Patient,
                Some("Condition"),
                "c",
            ),
            (
                "patient/Condition.cud",
                Context::Patient,
                Some("Condition"),
                "cud",
            ),
        ];
        for (t, ctx, rt, letters) in ok {
            let s = parse_scope(t).unwrap_or_else(|| panic!("{t}"));
            assert_eq!(
                (
                    s.context,
                    s.resource_type.as_deref(),
                    s.perms.letters().as_str()
                ),
                (ctx, rt, letters),
                "{t}"
            );
        }
        let bad = [
            "patient/Observation.sr",
            "patient/Observation.rr",
            "patient/Observation.x",
            "patient/Observation.",
            "Patient/Observation.rs",
            "group/Observation.rs",
            "patient/observation.rs",
            "patient/Observation.READ",
            "patient/Observation.reads",
            "patient/Observation",
            "patient/.rs",
            "patient/Observation.rs?",
            "user/*.rs extra",
        ];
        for t in bad {
            assert!(parse_scope(t).is_none(), "{t} parsed");
        }
        let set = parse_scopes(
            "openid fhirUser launch/patient patient/Observation.rs bogus user/Patient.sr"
                .split(' '),
        );
        assert_eq!(set.scopes.len(), 1);
        assert_eq!(set.ignored, vec!["bogus", "user/Patient.sr"]);
        assert_eq!(
            parse_scope("patient/Observation.rs?category=laboratory")
                .unwrap()
                .query
                .as_deref(),
            Some("category=laboratory")
        );
    }

    fn check(
        scopes: &str,
        patient: Option<&str>,
        method: &str,
        path: &str,
    ) -> Result<(), ScopeDenial> {
        authorize(
            &parse_scopes(scopes.split(' ')),
            patient,
            &req(method, path),
        )
    }

    #[test]
    fn read_and_search_differ() {
        assert!(check("user/Observation.r", None, "GET", "/Observation/1").is_ok());
        assert!(check("user/Observation.r", None, "GET", "/Observation?code=x").is_err());
        assert!(check("user/Observation.s", None, "GET", "/Observation?code=x").is_ok());
        assert!(check("user/Observation.s", None, "GET", "/Observation/1").is_err());
        assert!(check("user/Observation.r", None, "GET", "/Observation/1/_history").is_ok());
        assert!(check("user/Observation.r", None, "GET", "/Observation/_history").is_err());
        assert!(check("user/Observation.s", None, "GET", "/Observation/_history").is_ok());
    }

    #[test]
    fn writes_need_their_letter() {
        assert!(check("user/Observation.c", None, "POST", "/Observation").is_ok());
        assert!(check("user/Observation.rs", None, "POST", "/Observation").is_err());
        assert!(check("user/Observation.u", None, "PUT", "/Observation/1").is_ok());
        assert!(check("user/Observation.u", None, "PATCH", "/Observation/1").is_ok());
        assert!(check("user/Observation.d", None, "DELETE", "/Observation/1").is_ok());
        assert!(
            check("user/Observation.d", None, "DELETE", "/Observation?code=x").is_err(),
            "conditional needs s too"
        );
        assert!(check("user/Observation.ds", None, "DELETE", "/Observation?code=x").is_ok());
        assert!(check("user/Observation.write", None, "PUT", "/Observation/1").is_ok());
    }

    #[test]
    fn system_level_needs_a_wildcard() {
        assert!(
            check(
                "user/Observation.rs user/Patient.rs",
                None,
                "GET",
                "/?_type=Patient"
            )
            .is_err()
        );
        assert!(check("user/*.s", None, "GET", "/?_type=Patient").is_ok());
        assert!(check("system/*.rs", None, "GET", "/_history").is_ok());
    }

    #[test]
    fn patient_scopes_need_a_context_and_stay_in_it() {
        let d = check("patient/Patient.rs", None, "GET", "/Patient/7").unwrap_err();
        assert!(d.rule.contains("without a patient context"), "{}", d.rule);
        assert!(check("patient/Patient.rs", Some("7"), "GET", "/Patient/7").is_ok());
        assert!(check("patient/Patient.rs", Some("7"), "GET", "/Patient/8").is_err());
        assert!(check("patient/Patient.rs", Some("7"), "GET", "/Patient?_id=7").is_ok());
        assert!(check("patient/Patient.rs", Some("7"), "GET", "/Patient?_id=7,8").is_err());
        assert!(check("patient/Patient.rs", Some("7"), "GET", "/Patient?name=x").is_err());
        assert!(
            check(
                "patient/Observation.rs",
                Some("7"),
                "GET",
                "/Patient/7/Observation"
            )
            .is_ok()
        );
        assert!(
            check(
                "patient/Observation.rs",
                Some("7"),
                "GET",
                "/Patient/8/Observation"
            )
            .is_err()
        );
        // Not provable from the request: refused until a compartment check exists.
        assert!(check("patient/Observation.rs", Some("7"), "GET", "/Observation/1").is_err());
        // A patient claim never narrows user scopes.
        assert!(check("user/Observation.rs", Some("7"), "GET", "/Observation/1").is_ok());
    }

    #[test]
    fn denials_name_a_scope_that_would_allow() {
        let d = check("user/Patient.rs", None, "GET", "/Observation?code=x").unwrap_err();
        assert_eq!(d.needed, "user/Observation.s");
        let d = check(
            "patient/Observation.r",
            Some("7"),
            "GET",
            "/Patient/7/Observation",
        )
        .unwrap_err();
        assert_eq!(d.needed, "patient/Observation.s");
    }

    #[test]
    fn granular_and_malformed_scopes_grant_nothing() {
        assert!(
            check(
                "user/Observation.rs?category=laboratory",
                None,
                "GET",
                "/Observation?category=laboratory"
            )
            .is_err()
        );
        assert!(check("user/Observation.sr", None, "GET", "/Observation/1").is_err());
        assert!(
            check(
                "openid fhirUser offline_access",
                None,
                "GET",
                "/Observation/1"
            )
            .is_err()
        );
    }
}
