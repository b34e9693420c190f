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

use crate::config::{Combine, PatientSearch, Permission, PolicyConfig, TokenSource, host_name};
use crate::core::fhir::{self, FhirRequest, RequestError};
use crate::core::smart;

mod authorize;
mod prepare;

pub use authorize::*;
pub use prepare::*;

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
    /// The introspection endpoint says the token is not active (revoked, expired, unknown).
    InactiveToken,
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
    pub const ALL: [DenyReason; 16] = [
        DenyReason::NoPolicy,
        DenyReason::MalformedRequest,
        DenyReason::MissingCredentials,
        DenyReason::MalformedCredentials,
        DenyReason::UnsupportedScheme,
        DenyReason::InvalidBasic,
        DenyReason::InvalidToken,
        DenyReason::ExpiredToken,
        DenyReason::InactiveToken,
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
            DenyReason::InactiveToken => "inactive_token",
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
    /// fhirguard answered with the policy's SMART discovery document.
    SmartConfiguration,
}

impl AllowReason {
    pub const ALL: [AllowReason; 5] = [
        AllowReason::PublicPath,
        AllowReason::UnauthenticatedAccess,
        AllowReason::Authenticated,
        AllowReason::Outbound,
        AllowReason::SmartConfiguration,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AllowReason::PublicPath => "public_path",
            AllowReason::UnauthenticatedAccess => "unauthenticated_access",
            AllowReason::Authenticated => "authenticated",
            AllowReason::Outbound => "outbound",
            AllowReason::SmartConfiguration => "smart_configuration",
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

/// fhirguard answers the request itself; nothing goes upstream. (Envoy: a denied response
/// whose status is 200.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Respond {
    pub policy: String,
    pub reason: AllowReason,
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow(Allow),
    Deny(Deny),
    Respond(Respond),
}

impl Decision {
    /// The request goes upstream.
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }

    pub fn reason_label(&self) -> &'static str {
        match self {
            Decision::Allow(a) => a.reason.as_str(),
            Decision::Deny(d) => d.reason.as_str(),
            Decision::Respond(r) => r.reason.as_str(),
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Decision::Allow(_) => 200,
            Decision::Deny(d) => d.status,
            Decision::Respond(r) => r.status,
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
    pub headers: &'a [(&'a str, &'a str)],
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
    /// The client application (`client_id`, else `azp`), for audit records.
    pub client_id: Option<String>,
}

impl TokenIdentity {
    /// The first claim that fhirguard copies into an identity header and that holds a
    /// control character (CR/LF would become a header line of its own on HTTP/1).
    pub fn unprintable_claim(&self) -> Option<&'static str> {
        let bad = |s: &str| s.chars().any(char::is_control);
        [
            ("sub", Some(self.subject.as_str())),
            ("scope", Some(self.scope_text.as_str())),
            ("patient", self.patient.as_deref()),
            ("fhirUser", self.fhir_user.as_deref()),
        ]
        .into_iter()
        .find_map(|(name, v)| v.is_some_and(bad).then_some(name))
    }
}

/// Step 2's result: who the caller proved to be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub basic_user: Option<String>,
    /// Shared with the verified-token cache: a cached decision copies nothing.
    pub token: Option<std::sync::Arc<TokenIdentity>>,
}

fn policy_id(p: &PolicyConfig) -> String {
    format!("{}/{}", p.namespace, p.name)
}

/// How many segments `base_path` has, when they are a prefix of `segments`.
fn base_prefix(base_path: &str, segments: &[String]) -> Option<usize> {
    let mut n = 0;
    for b in base_path.split('/').filter(|s| !s.is_empty()) {
        if segments.get(n).is_none_or(|a| a != b) {
            return None;
        }
        n += 1;
    }
    Some(n)
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
    let host = host_name(host);
    let mut best: Option<(usize, (bool, usize))> = None;
    for (i, p) in policies.iter().enumerate() {
        let specific = !p.hosts.is_empty();
        if specific
            && !p
                .hosts
                .iter()
                .any(|h| host_name(h).eq_ignore_ascii_case(host))
        {
            continue;
        }
        let Some(base) = base_prefix(&p.base_path, segments) else {
            continue;
        };
        let rank = (specific, base);
        if best.is_none_or(|(_, r)| rank > r) {
            best = Some((i, rank));
        }
    }
    best.map(|(i, _)| i)
}

fn challenges(p: &PolicyConfig) -> Vec<String> {
    let mut out = Vec::new();
    if p.authentication.jwt.is_some() || p.authentication.introspection.is_some() {
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

#[cfg(test)]
mod tests;
