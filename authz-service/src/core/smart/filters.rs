//! Granular scopes (`?query` filters): whether a request provably stays inside the filter.

use super::*;

/// What a check against one scope says: allowed, needs a stored resource first, or refused.
pub(super) enum Check {
    Allow,
    Lookup(LookupKey),
    Deny(String),
}

/// Whether a granular scope's filter holds for the request: a search must carry the filter; a
/// read, update, delete or patch by id needs the stored resource to match it (that version for
/// a vread); a create or update needs the body to match it; conditional writes need criteria
/// that carry it.
pub(super) fn granular_check(g: &Grant<'_>, req: &FhirRequest, filter: &str) -> Check {
    use Interaction::*;
    let t = req.resource_type.as_deref().unwrap_or("");
    if let Err(e) = crate::core::granular::check(t, filter) {
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
        match crate::core::granular::matches(res, t, filter) {
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
            let touched = patch_touches(req, &crate::core::granular::elements(t, filter));
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
                && let Some(el) = patch_touches(req, &crate::core::granular::elements(t, filter))
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
pub(super) fn same_element(name: &str, root: &str) -> bool {
    name == root
        || name
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase()))
}

/// The first element among `elements` that a patch changes (or `"an element"` when a
/// patch's target cannot be read or its body was not visible).
pub(super) fn patch_touches(req: &FhirRequest, elements: &[&str]) -> Option<String> {
    use crate::core::fhir::PatchBody;
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
pub(super) fn granular_filter_holds(t: &str, filter: &str, params: &[(String, String)]) -> bool {
    let Ok(wanted) = crate::core::fhir::parse_query(filter) else {
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
            && crate::core::definitions::search_param(t, code)
                .is_some_and(|sp| sp.kind == crate::core::definitions::ParamKind::Token);
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
