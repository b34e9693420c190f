//! Step 3 of a Check: from the verified identity and the classified request, decide (or name
//! the stored resources the decision needs first).

use super::*;

/// The permission an `access` list gives a user: the first rule naming the user or `*`.
/// An empty list gives everybody ReadWrite.
pub fn basic_permission(rules: &[crate::config::AccessRule], user: &str) -> Option<Permission> {
    if rules.is_empty() {
        return Some(Permission::ReadWrite);
    }
    rules
        .iter()
        .find(|r| r.users.iter().any(|u| u == user || u == "*"))
        .map(|r| r.permission)
}

/// Step 3's result: a decision, or the compartment lookups it depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Done(Decision),
    /// Look these up through the policy's compartmentLookup connection and call
    /// [`authorize`] again with the answers.
    Lookup(Vec<smart::LookupKey>),
}

/// Step 3: decide from the verified identity. Every presented credential's permissions must
/// allow the request (with both Basic and a token, both must agree).
pub fn authorize(
    p: &PolicyConfig,
    pending: &Pending,
    id: &Identity,
    lookups: Option<&smart::Lookups>,
) -> Step {
    let req = &pending.request;
    let auth = &p.authentication;
    if let (Some(jwt), Some(user), Some(tok)) = (&auth.jwt, &id.basic_user, &id.token)
        && jwt.require_subject_matches_basic_user
        && tok.subject != *user
    {
        return Step::Done(deny(
            Some(p),
            403,
            DenyReason::SubjectMismatch,
            vec![],
            "the token's subject is not the Basic user",
        ));
    }
    if let (Some(user), Some(basic)) = (&id.basic_user, &auth.basic) {
        match basic_permission(&basic.access, user) {
            None => {
                return Step::Done(deny(
                    Some(p),
                    403,
                    DenyReason::UserNotPermitted,
                    vec![],
                    format!("no access rule grants user {user:?} anything"),
                ));
            }
            Some(Permission::Read) if req.writes => {
                return Step::Done(deny(
                    Some(p),
                    403,
                    DenyReason::ReadOnlyUser,
                    vec![],
                    format!(
                        "user {user:?} has Read permission and {} writes{}",
                        req.describe(),
                        if req.interaction == fhir::Interaction::BundleUninspected {
                            " (the bundle's body was not visible, so it counts as writing)"
                        } else {
                            ""
                        }
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    let mut allow = Allow {
        policy: policy_id(p),
        reason: AllowReason::Authenticated,
        subject: id.basic_user.clone(),
        patient: None,
        scopes: None,
        remove_query: vec![],
        set_query: vec![],
        strict_search: false,
        interaction: Some(req.describe()),
        outbound: None,
    };
    if let Some(tok) = &id.token {
        // Whatever verified it (signature or introspection), a claim that cannot travel in a
        // header is not passed on, and the token is not half-used either.
        if let Some(claim) = tok.unprintable_claim() {
            return Step::Done(unauthorized(
                p,
                DenyReason::InvalidToken,
                Some("invalid_token"),
                format!("the token's {claim} claim holds control characters"),
            ));
        }
        let smart_cfg = &p.authorization.smart;
        let grant = smart::Grant {
            scopes: &tok.scopes,
            patient: tok.patient.as_deref(),
            narrow: smart_cfg.patient_search == PatientSearch::Narrow,
            lookup_configured: smart_cfg.compartment_lookup.is_some(),
            lookups,
            reference_data: smart_cfg.reference_data == crate::config::ReferenceData::ReadWithScope,
        };
        let verdict = if smart_cfg.user_scopes == crate::config::UserScopes::ConfineToFhirUser {
            smart::authorize_confined(&grant, tok.fhir_user.as_deref(), req)
        } else {
            smart::authorize(&grant, req)
        };
        match verdict {
            smart::Verdict::Allow { narrow, strict } => {
                allow.set_query = narrow;
                allow.strict_search = strict;
            }
            smart::Verdict::Lookup(l) => return Step::Lookup(l),
            smart::Verdict::Deny(d) => {
                return Step::Done(deny(
                    Some(p),
                    403,
                    DenyReason::InsufficientScope,
                    // RFC 6750 §3: `scope` names what would help; it is left out when no
                    // scope can (another patient's data), and the diagnostics say why.
                    vec![match &d.needed {
                        Some(scope) => format!(
                            r#"Bearer realm="fhir", error="insufficient_scope", scope="{scope}""#
                        ),
                        None => r#"Bearer realm="fhir", error="insufficient_scope""#.to_string(),
                    }],
                    match &d.needed {
                        Some(_) => d.rule,
                        None => format!("{} (no scope grants this)", d.rule),
                    },
                ));
            }
        }
        allow.subject = Some(tok.subject.clone());
        allow.patient = tok.patient.clone();
        allow.scopes = Some(tok.scope_text.clone());
    }
    if pending
        .bearer
        .as_ref()
        .is_some_and(|b| b.source == TokenSource::QueryParameter)
    {
        allow.remove_query.push("access_token".into());
    }
    Step::Done(Decision::Allow(allow))
}
