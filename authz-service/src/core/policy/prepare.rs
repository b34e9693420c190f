//! Step 1 of a Check: choose the policy, refuse method overrides and malformed requests,
//! classify, and pull the presented credentials out of the request.

use super::*;

/// Step 1. `Err` carries the final decision when no verification is needed.
// A refusal is the common, cheap path here; returning it by value (one move) beats boxing it.
#[allow(clippy::result_large_err)]
pub fn prepare(policies: &[PolicyConfig], req: &Request<'_>) -> Result<Pending, Decision> {
    let (raw_path, raw_query) = fhir::split_path(req.path);
    let segments = fhir::normalize_path(raw_path).map_err(|e| request_error(None, &e))?;
    let Some(index) = select_policy(policies, req.policy_ref, req.host, &segments) else {
        let why = match req.policy_ref {
            Some(r) => format!("the route names policy {r:?}, which is not configured"),
            None => "no FhirSecurityPolicy matches this host and path".into(),
        };
        return Err(deny(None, 403, DenyReason::NoPolicy, vec![], why));
    };
    let p = &policies[index];
    if let Some((name, what)) = method_override(req.headers) {
        return Err(deny(
            Some(p),
            400,
            DenyReason::MalformedRequest,
            vec![],
            format!(
                "the {name} header ({what}) is not accepted: it would make the server do something fhirguard did not judge"
            ),
        ));
    }
    let base = base_segments(&p.base_path);
    if segments.len() < base.len() || segments.iter().zip(&base).any(|(a, b)| a != b) {
        return Err(deny(
            Some(p),
            403,
            DenyReason::NoPolicy,
            vec![],
            format!(
                "the path is outside the policy's basePath {:?}",
                p.base_path
            ),
        ));
    }
    let rel = &segments[base.len()..];

    if matches!(req.method, "GET" | "HEAD") {
        let rel_path = format!("/{}", rel.join("/"));
        if p.public_paths.contains(&rel_path) {
            // A token sent along is not needed here and must not reach the server's logs. It
            // is found by the classification's parser, in every spelling; only the literal one
            // can be removed by Envoy, any other is refused.
            let tokens = match raw_query {
                Some(q) => fhir::query_tokens(q).map_err(|e| request_error(Some(p), &e))?,
                None => Vec::new(),
            };
            if tokens.iter().any(|t| !t.plain) {
                return Err(deny(
                    Some(p),
                    400,
                    DenyReason::MalformedCredentials,
                    vec![],
                    "the token parameter must be spelled exactly access_token",
                ));
            }
            let remove_query = if tokens.is_empty() {
                vec![]
            } else {
                vec!["access_token".to_string()]
            };
            return Err(Decision::Allow(Allow {
                policy: policy_id(p),
                reason: AllowReason::PublicPath,
                subject: None,
                patient: None,
                scopes: None,
                remove_query,
                set_query: vec![],
                strict_search: false,
                interaction: None,
                outbound: None,
            }));
        }
    }

    let request = fhir::classify(fhir::HttpRequest {
        method: req.method,
        segments: rel,
        query: raw_query,
        body: req.body,
        if_none_exist: req.if_none_exist,
    })
    .map_err(|e| request_error(Some(p), &e))?;

    if p.unauthenticated_access {
        return Err(Decision::Allow(Allow {
            policy: policy_id(p),
            reason: AllowReason::UnauthenticatedAccess,
            subject: None,
            patient: None,
            scopes: None,
            remove_query: vec![],
            set_query: vec![],
            strict_search: false,
            interaction: Some(request.describe()),
            outbound: None,
        }));
    }

    let (basic, header_bearer) = parse_authorization(p, req.authorization)?;
    // The one query parser (classification's, which decodes names) finds every spelling.
    let query_tokens = &request.access_tokens;
    let auth = &p.authentication;
    let jwt = auth.jwt.as_ref();
    let query_allowed = auth.combine == Combine::AllOf
        || jwt.is_some_and(|j| j.token_sources.contains(&TokenSource::QueryParameter));
    // `jwt.tokenSources` says where tokens come from; a policy with introspection alone
    // takes them from the Authorization header.
    let header_allowed = auth.combine == Combine::AnyOf
        && match jwt {
            Some(j) => j.token_sources.contains(&TokenSource::Header),
            None => auth.introspection.is_some(),
        };

    let bad_request = |msg: &str| {
        let mut d = unauthorized(
            p,
            DenyReason::MalformedCredentials,
            Some("invalid_request"),
            msg,
        );
        if let Decision::Deny(d) = &mut d {
            d.status = 400;
        }
        d
    };
    if query_tokens.len() > 1 {
        return Err(bad_request("more than one access_token query parameter"));
    }
    let query_bearer = match query_tokens.first() {
        None => None,
        Some(_) if !query_allowed => {
            // Refused rather than ignored: passing it on would leak the token to the server's logs.
            return Err(bad_request(
                "this policy does not accept tokens in the access_token query parameter",
            ));
        }
        Some(t) if !t.plain => {
            // Envoy removes the parameter by its literal name; another spelling would travel on.
            return Err(bad_request(
                "the token parameter must be spelled exactly access_token",
            ));
        }
        Some(t) => Some(BearerCredential {
            token: t.value.clone(),
            source: TokenSource::QueryParameter,
        }),
    };
    if header_bearer.is_some() && query_bearer.is_some() {
        // RFC 6750 §2: a client must not use more than one method to send the token.
        return Err(bad_request(
            "a token was sent both in the Authorization header and in the query",
        ));
    }
    if header_bearer.is_some() && !header_allowed {
        let why = if auth.combine == Combine::AllOf {
            "with combine: AllOf the Authorization header carries Basic credentials and the token goes in the access_token query parameter"
        } else {
            "this policy does not accept bearer tokens in the Authorization header"
        };
        return Err(unauthorized(p, DenyReason::UnsupportedScheme, None, why));
    }
    if basic.is_some() && auth.basic.is_none() {
        return Err(unauthorized(
            p,
            DenyReason::UnsupportedScheme,
            None,
            "this policy does not accept Basic credentials",
        ));
    }
    let bearer = header_bearer.or(query_bearer);
    match auth.combine {
        Combine::AnyOf if basic.is_none() && bearer.is_none() => {
            return Err(unauthorized(
                p,
                DenyReason::MissingCredentials,
                None,
                "credentials are required",
            ));
        }
        Combine::AllOf if basic.is_none() || bearer.is_none() => {
            let missing = match (basic.is_none(), bearer.is_none()) {
                (true, true) => {
                    "Basic credentials and a bearer token (access_token query parameter) are"
                }
                (true, false) => "Basic credentials are",
                _ => "a bearer token in the access_token query parameter is",
            };
            return Err(unauthorized(
                p,
                DenyReason::MissingCredentials,
                None,
                format!("{missing} required"),
            ));
        }
        _ => {}
    }
    Ok(Pending {
        policy_index: index,
        request,
        basic,
        bearer,
    })
}

/// Headers that change what a server does beyond what fhirguard judged: method overrides
/// turn an allowed POST or GET into a DELETE or PUT; HAPI's `X-Cascade: delete` deletes every
/// resource that references the target, other patients' included. Matched in every spelling a
/// server could read as the same name (case, `_` for `-`).
pub(super) const REFUSED_HEADERS: &[(&str, &str)] = &[
    ("x-http-method-override", "a method override"),
    ("x-http-method", "a method override"),
    ("x-method-override", "a method override"),
    ("x-cascade", "a cascading delete"),
];

pub(super) fn method_override(headers: &[(&str, &str)]) -> Option<(&'static str, &'static str)> {
    // Compared the way CGI, WSGI and Rack stacks read names: case-insensitive, `_` as `-`.
    let same = |k: &str, h: &str| {
        k.len() == h.len()
            && k.bytes().zip(h.bytes()).all(|(a, b)| {
                let a = a.to_ascii_lowercase();
                a == b || (a == b'_' && b == b'-')
            })
    };
    headers
        .iter()
        .find_map(|(k, _)| REFUSED_HEADERS.iter().copied().find(|(h, _)| same(k, h)))
}

pub(super) type Parsed = (Option<BasicCredential>, Option<BearerCredential>);

#[allow(clippy::result_large_err)]
pub(super) fn parse_authorization(
    p: &PolicyConfig,
    header: Option<&str>,
) -> Result<Parsed, Decision> {
    let Some(h) = header else {
        return Ok((None, None));
    };
    let (scheme, value) = h.trim().split_once(' ').unwrap_or((h.trim(), ""));
    let value = value.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let malformed = || {
            unauthorized(
                p,
                DenyReason::MalformedCredentials,
                None,
                "malformed Basic credentials",
            )
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(value)
            .map_err(|_| malformed())?;
        let text = String::from_utf8(bytes).map_err(|_| malformed())?;
        let (user, password) = text.split_once(':').ok_or_else(malformed)?;
        if user.is_empty() {
            return Err(malformed());
        }
        Ok((
            Some(BasicCredential {
                user: user.to_string(),
                password: password.to_string(),
            }),
            None,
        ))
    } else if scheme.eq_ignore_ascii_case("bearer") {
        if value.is_empty() || value.contains(' ') {
            return Err(unauthorized(
                p,
                DenyReason::MalformedCredentials,
                Some("invalid_request"),
                "malformed bearer token",
            ));
        }
        Ok((
            None,
            Some(BearerCredential {
                token: value.to_string(),
                source: TokenSource::Header,
            }),
        ))
    } else {
        Err(unauthorized(
            p,
            DenyReason::UnsupportedScheme,
            None,
            "the Authorization scheme is not supported; use Basic or Bearer",
        ))
    }
}
