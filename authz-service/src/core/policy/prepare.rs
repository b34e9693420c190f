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
    if let Some(why) = smuggled_header(req) {
        return Err(deny(
            Some(p),
            400,
            DenyReason::MalformedRequest,
            vec![],
            why,
        ));
    }
    let Some(base) = base_prefix(&p.base_path, &segments) else {
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
    };
    let rel = &segments[base..];

    if matches!(req.method, "GET" | "HEAD")
        && p.public_paths.iter().any(|pp| is_joined_path(pp, rel))
    {
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

/// Headers fhirguard reads for its decision, whose other spellings a CGI, WSGI or Rack stack
/// reads as the same header (`If_None_Exist` becomes `HTTP_IF_NONE_EXIST`): a request that
/// spells one differently would be judged without it and served with it.
const READ_HEADERS: &[(&str, &str, &str)] = &[(
    "if-none-exist",
    "If-None-Exist",
    "conditional-create criteria",
)];

/// Compared the way CGI, WSGI and Rack stacks read names: case-insensitive, `_` as `-`.
fn same_header(k: &str, h: &str) -> bool {
    k.len() == h.len()
        && k.bytes().zip(h.bytes()).all(|(a, b)| {
            let a = a.to_ascii_lowercase();
            a == b || (a == b'_' && b == b'-')
        })
}

pub(super) fn method_override(headers: &[(&str, &str)]) -> Option<(&'static str, &'static str)> {
    headers.iter().find_map(|(k, _)| {
        REFUSED_HEADERS
            .iter()
            .copied()
            .find(|(h, _)| same_header(k, h))
    })
}

/// A header the server could read differently from fhirguard: a method override or cascade
/// (in any spelling), a header fhirguard reads sent under another spelling, an
/// `If-None-Exist` that may be two lines (servers read the first, fhirguard would see them
/// joined), or a body on a method that has none in FHIR (some stacks read form parameters from
/// any body, and fhirguard judges only the URL of a GET).
fn smuggled_header(req: &Request<'_>) -> Option<String> {
    if let Some((name, what)) = method_override(req.headers) {
        return Some(format!(
            "the {name} header ({what}) is not accepted: it would make the server do something fhirguard did not judge"
        ));
    }
    for (k, _) in req.headers {
        if let Some((_, h, what)) = READ_HEADERS
            .iter()
            .find(|(h, _, _)| same_header(k, h) && k.contains('_'))
        {
            return Some(format!(
                "the header {k:?} is read by some servers as {h} ({what}); send it as {h}"
            ));
        }
    }
    if req.if_none_exist.is_some_and(|v| v.contains(',')) {
        return Some(
            "If-None-Exist must be one header line without commas: two lines reach fhirguard joined by a comma, and servers read only the first"
                .into(),
        );
    }
    if matches!(req.method, "GET" | "HEAD" | "DELETE") {
        let header = |name: &str| {
            req.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim())
        };
        let announced = header("content-length").is_some_and(|v| v != "0")
            || header("transfer-encoding").is_some();
        let seen = req.body.as_ref().is_some_and(|b| !b.bytes.is_empty());
        if announced || seen {
            return Some(format!(
                "a {} request must not carry a body: some servers read parameters from it, and fhirguard judges only the URL",
                req.method
            ));
        }
    }
    None
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

/// Whether `path` is exactly `/` followed by `segments` joined with `/` (what a public path
/// entry names), compared without building the joined string on every GET.
fn is_joined_path<S: AsRef<str>>(path: &str, segments: &[S]) -> bool {
    let Some(mut rest) = path.strip_prefix('/') else {
        return false;
    };
    for (i, seg) in segments.iter().enumerate() {
        if i > 0 {
            let Some(r) = rest.strip_prefix('/') else {
                return false;
            };
            rest = r;
        }
        let Some(r) = rest.strip_prefix(seg.as_ref()) else {
            return false;
        };
        rest = r;
    }
    rest.is_empty()
}

#[cfg(test)]
mod joined_path_tests {
    use super::is_joined_path;

    #[test]
    fn equals_the_joined_string_in_every_shape() {
        let cases: &[(&str, &[&str])] = &[
            ("/", &[]),
            ("/metadata", &["metadata"]),
            ("/metadata/", &["metadata"]),
            (
                "/.well-known/smart-configuration",
                &[".well-known", "smart-configuration"],
            ),
            ("/.well-known", &[".well-known", "smart-configuration"]),
            ("metadata", &["metadata"]),
            ("/metadataX", &["metadata"]),
            ("/meta", &["metadata"]),
            ("//", &["", ""]),
            ("/a/b", &["a/b"]),
            ("", &[]),
        ];
        for (path, segments) in cases {
            let joined = format!("/{}", segments.join("/"));
            assert_eq!(
                is_joined_path(path, segments),
                *path == joined,
                "{path:?} vs {segments:?}"
            );
        }
    }
}
