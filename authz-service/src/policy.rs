//! The pure decision core.
//!
//! A Check is decided in three steps, and only the middle one does work outside this module:
//! 1. [`prepare`]: choose the policy, normalise and classify the request, let public paths and
//!    the development switch through, and pull the presented credentials out of the request.
//! 2. the service verifies those credentials (password hashes, token signatures) with caches;
//! 3. [`authorize`]: from the verified identity and the classified request, decide.
//!
//! Every outcome is a [`Decision`]; a refusal is a value, never an error.

use base64::Engine as _;

use crate::config::{
    Combine, PatientSearch, Permission, PolicyConfig, TokenSource, normalize_host,
};
use crate::fhir::{self, FhirRequest, RequestError};
use crate::smart;

/// Why a request was refused. Doubles as a low-cardinality metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    NoPolicy,
    MalformedRequest,
    MissingCredentials,
    MalformedCredentials,
    UnsupportedScheme,
    InvalidBasic,
    InvalidToken,
    ExpiredToken,
    UnknownSigningKey,
    SubjectMismatch,
    ReadOnlyUser,
    UserNotPermitted,
    InsufficientScope,
    /// An outbound route names a connection the config does not have.
    UnknownConnection,
    /// An outbound connection's token endpoint is failing and no valid token is left.
    TokenUnavailable,
}

impl DenyReason {
    pub const ALL: [DenyReason; 15] = [
        DenyReason::NoPolicy,
        DenyReason::MalformedRequest,
        DenyReason::MissingCredentials,
        DenyReason::MalformedCredentials,
        DenyReason::UnsupportedScheme,
        DenyReason::InvalidBasic,
        DenyReason::InvalidToken,
        DenyReason::ExpiredToken,
        DenyReason::UnknownSigningKey,
        DenyReason::SubjectMismatch,
        DenyReason::ReadOnlyUser,
        DenyReason::UserNotPermitted,
        DenyReason::InsufficientScope,
        DenyReason::UnknownConnection,
        DenyReason::TokenUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::NoPolicy => "no_policy",
            DenyReason::MalformedRequest => "malformed_request",
            DenyReason::MissingCredentials => "missing_credentials",
            DenyReason::MalformedCredentials => "malformed_credentials",
            DenyReason::UnsupportedScheme => "unsupported_scheme",
            DenyReason::InvalidBasic => "invalid_basic",
            DenyReason::InvalidToken => "invalid_token",
            DenyReason::ExpiredToken => "expired_token",
            DenyReason::UnknownSigningKey => "unknown_signing_key",
            DenyReason::SubjectMismatch => "subject_mismatch",
            DenyReason::ReadOnlyUser => "read_only_user",
            DenyReason::UserNotPermitted => "user_not_permitted",
            DenyReason::InsufficientScope => "insufficient_scope",
            DenyReason::UnknownConnection => "unknown_connection",
            DenyReason::TokenUnavailable => "token_unavailable",
        }
    }
}

/// Why a request was allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AllowReason {
    PublicPath,
    UnauthenticatedAccess,
    Authenticated,
    /// An outbound request through a FhirConnection.
    Outbound,
}

impl AllowReason {
    pub fn as_str(self) -> &'static str {
        match self {
            AllowReason::PublicPath => "public_path",
            AllowReason::UnauthenticatedAccess => "unauthenticated_access",
            AllowReason::Authenticated => "authenticated",
            AllowReason::Outbound => "outbound",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allow {
    pub policy: String,
    pub reason: AllowReason,
    pub subject: Option<String>,
    pub patient: Option<String>,
    /// The granted scopes, space-separated, for `x-fhirguard-scopes`.
    pub scopes: Option<String>,
    /// Query parameters to remove before the request goes upstream (`access_token`).
    pub remove_query: Vec<String>,
    /// Query parameters to set (search narrowing).
    pub set_query: Vec<(String, String)>,
    /// The allow rests on the search parameters: send `Prefer: handling=strict` upstream.
    pub strict_search: bool,
    /// What the request was, for the decision log.
    pub interaction: Option<String>,
    /// Outbound only: what to do with the `Authorization` header.
    pub outbound: Option<OutboundAuth>,
}

/// The `Authorization` header of an outbound request is always ours: set to the connection's
/// credential, or removed when it has none, so a workload's own credential never reaches
/// another organisation's server.
#[derive(Clone, PartialEq, Eq)]
pub enum OutboundAuth {
    Set(String),
    Remove,
}

impl std::fmt::Debug for OutboundAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutboundAuth::Set(_) => f.write_str("Set(<redacted>)"),
            OutboundAuth::Remove => f.write_str("Remove"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deny {
    /// `namespace/name`, when a policy was chosen.
    pub policy: Option<String>,
    pub status: u16,
    pub reason: DenyReason,
    /// Values for `WWW-Authenticate`, one header each.
    pub www_authenticate: Vec<String>,
    /// Which rule refused, in words; goes into the OperationOutcome.
    pub diagnostics: String,
}

impl Deny {
    /// The FHIR OperationOutcome issue code for this refusal.
    pub fn issue_code(&self) -> &'static str {
        match self.status {
            401 => "login",
            403 => "forbidden",
            405 => "not-supported",
            503 => "transient",
            _ => "invalid",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow(Allow),
    Deny(Deny),
}

impl Decision {
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }

    pub fn reason_label(&self) -> &'static str {
        match self {
            Decision::Allow(a) => a.reason.as_str(),
            Decision::Deny(d) => d.reason.as_str(),
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Decision::Allow(_) => 200,
            Decision::Deny(d) => d.status,
        }
    }
}

/// The parts of the HTTP request that decisions use.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    /// `:authority`.
    pub host: &'a str,
    /// `:path`, including the query.
    pub path: &'a str,
    pub authorization: Option<&'a str>,
    pub if_none_exist: Option<&'a str>,
    /// Every request header (lower-cased names), for rules about headers the decision does
    /// not otherwise read (method overrides).
    pub headers: &'a [(String, String)],
    /// `None` when Envoy did not send the body, or sent only part of it.
    pub body: Option<fhir::Body<'a>>,
    /// The `fhirguard.dev/policy` context extension.
    pub policy_ref: Option<&'a str>,
}

/// Username and password from a Basic header. Debug never prints the password.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicCredential {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for BasicCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BasicCredential({:?}, <redacted>)", self.user)
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct BearerCredential {
    pub token: String,
    pub source: TokenSource,
}

impl std::fmt::Debug for BearerCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BearerCredential(<redacted>, {:?})", self.source)
    }
}

/// What step 1 leaves for verification.
#[derive(Debug, Clone)]
pub struct Pending {
    pub policy_index: usize,
    pub request: FhirRequest,
    pub basic: Option<BasicCredential>,
    pub bearer: Option<BearerCredential>,
}

/// The claims fhirguard uses from a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIdentity {
    pub provider: String,
    pub subject: String,
    pub scopes: smart::ScopeSet,
    /// The scope claim as granted, for `x-fhirguard-scopes`.
    pub scope_text: String,
    /// The context patient's id (from `patient`, accepting `Patient/id`).
    pub patient: Option<String>,
    pub fhir_user: Option<String>,
}

/// Step 2's result: who the caller proved to be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub basic_user: Option<String>,
    pub token: Option<TokenIdentity>,
}

fn policy_id(p: &PolicyConfig) -> String {
    format!("{}/{}", p.namespace, p.name)
}

fn base_segments(base_path: &str) -> Vec<&str> {
    base_path.split('/').filter(|s| !s.is_empty()).collect()
}

/// Chooses the policy for a request: the named one when the route names it, else the one
/// whose host matches (a host-specific policy beats a host-less one) with the longest
/// `basePath` that is a segment prefix of the path.
pub fn select_policy(
    policies: &[PolicyConfig],
    policy_ref: Option<&str>,
    host: &str,
    segments: &[String],
) -> Option<usize> {
    if let Some(r) = policy_ref {
        let (ns, name) = r.split_once('/')?;
        return policies
            .iter()
            .position(|p| p.namespace == ns && p.name == name);
    }
    let host = normalize_host(host);
    let mut best: Option<(usize, (bool, usize))> = None;
    for (i, p) in policies.iter().enumerate() {
        let specific = !p.hosts.is_empty();
        if specific && !p.hosts.iter().any(|h| normalize_host(h) == host) {
            continue;
        }
        let base = base_segments(&p.base_path);
        if segments.len() < base.len() || segments.iter().zip(&base).any(|(a, b)| a != b) {
            continue;
        }
        let rank = (specific, base.len());
        if best.is_none_or(|(_, r)| rank > r) {
            best = Some((i, rank));
        }
    }
    best.map(|(i, _)| i)
}

fn challenges(p: &PolicyConfig) -> Vec<String> {
    let mut out = Vec::new();
    if p.authentication.jwt.is_some() {
        out.push(r#"Bearer realm="fhir""#.to_string());
    }
    if p.authentication.basic.is_some() {
        out.push(r#"Basic realm="fhir""#.to_string());
    }
    out
}

fn deny(
    policy: Option<&PolicyConfig>,
    status: u16,
    reason: DenyReason,
    www: Vec<String>,
    diagnostics: impl Into<String>,
) -> Decision {
    Decision::Deny(Deny {
        policy: policy.map(policy_id),
        status,
        reason,
        www_authenticate: www,
        diagnostics: diagnostics.into(),
    })
}

/// A 401 whose challenges offer every scheme the policy accepts.
pub fn unauthorized(
    p: &PolicyConfig,
    reason: DenyReason,
    token_error: Option<&str>,
    diagnostics: impl Into<String>,
) -> Decision {
    let diagnostics = diagnostics.into();
    let mut www = challenges(p);
    if let Some(err) = token_error {
        for c in &mut www {
            if c.starts_with("Bearer") {
                *c = format!(
                    r#"Bearer realm="fhir", error="{err}", error_description="{}""#,
                    diagnostics.replace(['"', '\\'], "'")
                );
            }
        }
    }
    deny(Some(p), 401, reason, www, diagnostics)
}

fn request_error(p: Option<&PolicyConfig>, e: &RequestError) -> Decision {
    deny(
        p,
        e.http_status(),
        DenyReason::MalformedRequest,
        vec![],
        e.to_string(),
    )
}

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
    let header_allowed = auth.combine == Combine::AnyOf
        && jwt.is_some_and(|j| j.token_sources.contains(&TokenSource::Header));

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
const REFUSED_HEADERS: &[(&str, &str)] = &[
    ("x-http-method-override", "a method override"),
    ("x-http-method", "a method override"),
    ("x-method-override", "a method override"),
    ("x-cascade", "a cascading delete"),
];

fn method_override(headers: &[(String, String)]) -> Option<(&'static str, &'static str)> {
    headers.iter().find_map(|(k, _)| {
        let norm = k.to_ascii_lowercase().replace('_', "-");
        REFUSED_HEADERS.iter().copied().find(|(h, _)| *h == norm)
    })
}

type Parsed = (Option<BasicCredential>, Option<BearerCredential>);

#[allow(clippy::result_large_err)]
fn parse_authorization(p: &PolicyConfig, header: Option<&str>) -> Result<Parsed, Decision> {
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

#[cfg(test)]
mod tests;
