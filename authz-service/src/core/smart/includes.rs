//! What a search can reach besides its own type: `_include`, `_revinclude`, chains, `_has`,
//! `_contained`, named queries; each path must provably stay inside the grant.

use super::*;

/// One `_include` / `_revinclude` parameter.
pub(super) struct Include<'a> {
    rev: bool,
    /// `*`, `Type:*` or `:iterate`: can reach any type.
    any: bool,
    source: &'a str,
    param: &'a str,
    target: Option<&'a str>,
}

pub(super) fn is_code(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

pub(super) fn parse_include<'a>(k: &'a str, v: &'a str) -> Option<Result<Include<'a>, String>> {
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
    if !crate::core::definitions::is_resource_type(source)
        || !(param == "*" || is_code(param))
        || target.is_some_and(|t| !crate::core::definitions::is_resource_type(t))
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
pub(super) fn reach_checked(g: &Grant<'_>, req: &FhirRequest) -> Result<(), String> {
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
                if !crate::core::definitions::is_resource_type(source)
                    || !wide(Perms::S, Some(source))
                {
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
                    Some(x) if crate::core::definitions::is_resource_type(x) => vec![x],
                    Some(_) => Vec::new(),
                    None => crate::core::definitions::search_param(t, param)
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
pub(super) fn proven_paths(
    req: &FhirRequest,
    narrowed: Option<&str>,
) -> Vec<&'static [&'static str]> {
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
pub(super) fn provable_include(
    req: &FhirRequest,
    inc: &Include<'_>,
    narrowed: Option<&str>,
) -> Option<Vec<&'static str>> {
    let t = req.resource_type.as_deref()?;
    if inc.any || inc.source != t {
        return None;
    }
    let sp = crate::core::definitions::search_param(inc.source, inc.param)?;
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

pub(super) fn provable_revinclude(
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
    let source = crate::core::definitions::RESOURCE_TYPES
        .iter()
        .find(|t| **t == inc.source)?;
    let sp = crate::core::definitions::search_param(source, inc.param)?;
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
pub(super) fn includes_checked(
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
            let Some(sp) = crate::core::definitions::search_param(inc.source, inc.param)
                .filter(|sp| sp.kind == crate::core::definitions::ParamKind::Reference)
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
