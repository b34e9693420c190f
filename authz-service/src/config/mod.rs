//! The compiled configuration: the contract between `fhirguard-operator` (which writes it) and
//! `fhirguard-authz` (which serves it).
//!
//! A config directory holds `config.json` (this format) plus the CA bundle files that TLS
//! settings name by `caFile`. Everything the service needs is inside the directory, so it never
//! talks to the Kubernetes API. The format is versioned ([`FORMAT_VERSION`]); unknown fields are
//! rejected so that an operator newer than the service fails loudly instead of being half-read.
//!
//! Durations are plain integer seconds here; the CRDs' human forms (`60s`, `10m`) are parsed by
//! the operator with [`parse_duration`].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

mod extras;
pub mod htpasswd;
mod problem;
mod validate;

pub use extras::*;
pub use problem::*;
pub use validate::*;

/// The file inside the config directory that holds [`CompiledConfig`] as JSON.
pub const CONFIG_FILE: &str = "config.json";
/// The only format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// The whole compiled configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CompiledConfig {
    /// Format version; must equal [`FORMAT_VERSION`].
    pub version: u32,
    /// Incremented by the operator on every published change; exported as a metric and used to
    /// key caches, so that nothing decided under an old config is reused under a new one.
    pub generation: u64,
    /// Inbound protection: who may do what on a FHIR server behind Envoy.
    #[serde(default)]
    pub policies: Vec<PolicyConfig>,
    /// Outbound connections to FHIR servers run by others.
    #[serde(default)]
    pub connections: Vec<ConnectionConfig>,
}

/// One `FhirSecurityPolicy`, compiled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyConfig {
    pub namespace: String,
    pub name: String,
    /// Hosts compared with `:authority` (port ignored, case-insensitive). Empty means any host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// FHIR base path, e.g. `/fhir/r4`. Interactions are classified relative to it.
    pub base_path: String,
    /// Paths relative to `basePath` that GET/HEAD may reach without credentials.
    #[serde(default = "default_public_paths")]
    pub public_paths: Vec<String>,
    /// Development switch: allow every request. Logged as a warning at every load.
    #[serde(default)]
    pub unauthenticated_access: bool,
    #[serde(default)]
    pub authentication: AuthenticationConfig,
    #[serde(default)]
    pub authorization: AuthorizationConfig,
    /// IHE BALP AuditEvents of this policy's decisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditConfig>,
    /// Serve `[base]/.well-known/smart-configuration` from fhirguard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smart_configuration: Option<SmartConfigurationConfig>,
}

/// The public paths a policy gets when it names none.
pub fn default_public_paths() -> Vec<String> {
    vec![
        "/metadata".into(),
        "/.well-known/smart-configuration".into(),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Combine {
    /// One valid credential suffices.
    #[default]
    AnyOf,
    /// Basic and a bearer token (from the `access_token` query parameter) must both be valid.
    AllOf,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthenticationConfig {
    #[serde(default)]
    pub combine: Combine,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtConfig>,
    /// Bearer tokens that no JWT provider claims, checked at an RFC 7662 endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introspection: Option<IntrospectionConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BasicConfig {
    /// The htpasswd file's content (`user:hash` lines).
    pub htpasswd: String,
    /// First matching rule wins. Empty: every valid user has ReadWrite.
    #[serde(default)]
    pub access: Vec<AccessRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessRule {
    /// User names, or `*` for every user.
    pub users: Vec<String>,
    pub permission: Permission,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Permission {
    /// Every interaction that writes nothing.
    Read,
    ReadWrite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`.
    Header,
    /// The `access_token` query parameter (removed before the request goes upstream).
    QueryParameter,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtConfig {
    #[serde(default = "default_token_sources")]
    pub token_sources: Vec<TokenSource>,
    #[serde(default)]
    pub require_subject_matches_basic_user: bool,
    pub providers: Vec<ProviderConfig>,
}

fn default_token_sources() -> Vec<TokenSource> {
    vec![TokenSource::Header]
}

/// Signature algorithms a provider may use. Only asymmetric algorithms exist here on purpose:
/// keys come from a public JWKS, and accepting HMAC would let anyone who can read the public
/// key mint tokens (the classic algorithm-confusion attack). `none` is not representable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Algorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Algorithm {
    pub const ALL: [Algorithm; 9] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    pub fn parse(s: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderConfig {
    /// Unique within the policy; used in logs and metrics.
    pub name: String,
    /// Compared exactly with the token's `iss`.
    pub issuer: String,
    /// The token's `aud` must contain at least one of these.
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    #[serde(default = "default_clock_skew")]
    pub clock_skew_seconds: u64,
    pub jwks: JwksConfig,
    #[serde(default)]
    pub claims: ClaimNames,
}

fn default_clock_skew() -> u64 {
    60
}

/// Where the provider's keys come from: exactly one of `uri` and `document`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwksConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default = "default_refresh_interval")]
    pub refresh_interval_seconds: u64,
    #[serde(default)]
    pub tls: TlsConfig,
    /// A JWKS document given inline (from a Secret), as JSON text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<String>,
}

fn default_refresh_interval() -> u64 {
    600
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimNames {
    #[serde(default = "claim_scope")]
    pub scope: String,
    #[serde(default = "claim_patient")]
    pub patient: String,
    #[serde(default = "claim_fhir_user")]
    pub fhir_user: String,
    #[serde(default = "claim_subject")]
    pub subject: String,
}

fn claim_scope() -> String {
    "scope".into()
}
fn claim_patient() -> String {
    "patient".into()
}
fn claim_fhir_user() -> String {
    "fhirUser".into()
}
fn claim_subject() -> String {
    "sub".into()
}

impl Default for ClaimNames {
    fn default() -> Self {
        ClaimNames {
            scope: claim_scope(),
            patient: claim_patient(),
            fhir_user: claim_fhir_user(),
            subject: claim_subject(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum TlsMode {
    /// Accept any certificate. For development only.
    SkipVerification,
    /// The public (Mozilla) root certificates.
    #[default]
    DefaultBundle,
    /// Only the CA certificates in `caFile`.
    CustomBundle,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsConfig {
    #[serde(default)]
    pub mode: TlsMode,
    /// File name (no directories) of a PEM CA bundle inside the config directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationConfig {
    #[serde(default)]
    pub smart: SmartConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SmartConfig {
    #[serde(default)]
    pub patient_search: PatientSearch,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compartment_lookup: Option<CompartmentLookup>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub user_scopes: UserScopes,
    #[serde(default, skip_serializing_if = "is_default")]
    pub reference_data: ReferenceData,
}

pub(crate) fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PatientSearch {
    #[default]
    Reject,
    Narrow,
}

/// What a `user/` scope reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum UserScopes {
    /// Every resource of the scoped types (SMART leaves the user's own permissions to the
    /// server).
    #[default]
    Unrestricted,
    /// A user whose `fhirUser` is a Patient is held to that patient's compartment, exactly as
    /// a patient context; a token without `fhirUser`, or naming a type that is no user, gets
    /// nothing from its `user/` scopes.
    ConfineToFhirUser,
}

/// Whether `patient/` scopes reach types outside the patient compartment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ReferenceData {
    /// Never: Medication, Practitioner, Organization, Location, ... need `user/` scopes.
    #[default]
    Deny,
    /// Reads and searches (never writes) of such types when a `patient/` scope names the type
    /// or `*`.
    ReadWithScope,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CompartmentLookup {
    /// `namespace/name` of a connection in this config.
    pub connection: String,
}

/// One `FhirConnection`, compiled, with its Secret values resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionConfig {
    pub namespace: String,
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub auth: ConnectionAuth,
    #[serde(default)]
    pub tls: TlsConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionAuth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicCredentials>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth: Option<OAuthConfig>,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BasicCredentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for BasicCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ClientAuthMethod {
    #[default]
    ClientSecretBasic,
    ClientSecretPost,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OAuthConfig {
    pub token_url: String,
    pub client_id: String,
    pub client_secret: String,
    #[serde(default)]
    pub client_auth_method: ClientAuthMethod,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    #[serde(default)]
    pub extra_params: BTreeMap<String, String>,
}

impl std::fmt::Debug for OAuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthConfig")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// RFC 7662 token introspection for one policy, with the client secret resolved.
///
/// Routing: a bearer token that is a JWT whose (unverified) `iss` names one of the policy's
/// JWT providers is verified by that provider; every other bearer token (opaque, or a JWT of
/// another issuer) is sent here. With `introspectJwts`, a JWT that its provider verified is
/// introspected as well, so that a revoked JWT is refused before its `exp`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IntrospectionConfig {
    /// The introspection endpoint (https).
    pub endpoint: String,
    pub client_id: String,
    pub client_secret: String,
    #[serde(default)]
    pub client_auth_method: ClientAuthMethod,
    /// The response's `aud` must contain at least one of these.
    pub audiences: Vec<String>,
    /// An answer is reused until the token's `exp` or for this long, whichever comes first.
    #[serde(default = "default_max_cache_seconds")]
    pub max_cache_seconds: u64,
    #[serde(default)]
    pub introspect_jwts: bool,
    #[serde(default = "default_clock_skew")]
    pub clock_skew_seconds: u64,
    #[serde(default)]
    pub tls: TlsConfig,
}

pub fn default_max_cache_seconds() -> u64 {
    300
}

impl std::fmt::Debug for IntrospectionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntrospectionConfig")
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("client_auth_method", &self.client_auth_method)
            .field("audiences", &self.audiences)
            .field("max_cache_seconds", &self.max_cache_seconds)
            .field("introspect_jwts", &self.introspect_jwts)
            .finish_non_exhaustive()
    }
}

impl CompiledConfig {
    /// An empty config of the current format.
    pub fn empty(generation: u64) -> Self {
        CompiledConfig {
            version: FORMAT_VERSION,
            generation,
            policies: Vec::new(),
            connections: Vec::new(),
        }
    }

    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Canonical JSON: the operator writes exactly this, so equal configs are equal bytes.
    pub fn to_json(&self) -> String {
        // Serialising plain structs with String keys cannot fail.
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// The CA bundle files that TLS settings name; they must exist beside `config.json`.
    pub fn ca_files(&self) -> BTreeSet<&str> {
        let policy_tls = self.policies.iter().flat_map(|p| {
            p.authentication
                .jwt
                .iter()
                .flat_map(|j| j.providers.iter().map(|pr| &pr.jwks.tls))
        });
        let introspection_tls = self
            .policies
            .iter()
            .filter_map(|p| p.authentication.introspection.as_ref().map(|i| &i.tls));
        let discovery_tls = self.policies.iter().filter_map(|p| {
            p.smart_configuration
                .as_ref()
                .and_then(|s| s.openid_discovery.as_ref())
                .map(|d| &d.tls)
        });
        policy_tls
            .chain(introspection_tls)
            .chain(discovery_tls)
            .chain(self.connections.iter().map(|c| &c.tls))
            .filter_map(|t| t.ca_file.as_deref())
            .collect()
    }
}

#[cfg(test)]
mod tests;
