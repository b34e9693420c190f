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

use crate::htpasswd;

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

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
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

/// One thing wrong with a config, located well enough for a user to fix it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// `namespace/name` of the object, or `config` for the document itself.
    pub object: String,
    /// Field path inside the object, e.g. `authentication.jwt.providers[0].issuer`.
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.object, self.field, self.message)
    }
}

/// Why a config directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid compiled config: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid config:\n{}", .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
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
        policy_tls
            .chain(self.connections.iter().map(|c| &c.tls))
            .filter_map(|t| t.ca_file.as_deref())
            .collect()
    }

    /// Every problem in the config. An empty list means the service will accept it.
    pub fn validate(&self) -> Vec<Problem> {
        let mut v = Validator::default();
        if self.version != FORMAT_VERSION {
            v.push(
                "config",
                "version",
                format!(
                    "format version {} is not supported (this build reads {FORMAT_VERSION})",
                    self.version
                ),
            );
        }
        let connections: BTreeSet<String> = self
            .connections
            .iter()
            .map(|c| format!("{}/{}", c.namespace, c.name))
            .collect();
        let mut seen = BTreeSet::new();
        let mut claims: BTreeMap<(String, String), String> = BTreeMap::new();
        for p in &self.policies {
            let id = format!("{}/{}", p.namespace, p.name);
            if !seen.insert(id.clone()) {
                v.push(&id, "metadata.name", "two policies have this name".into());
            }
            validate_object_name(&mut v, &id, &p.namespace, &p.name);
            validate_policy(&mut v, &id, p, &connections);
            let hosts: Vec<String> = if p.hosts.is_empty() {
                vec!["*".into()]
            } else {
                p.hosts.iter().map(|h| normalize_host(h)).collect()
            };
            for h in hosts {
                let key = (h.clone(), p.base_path.trim_end_matches('/').to_string());
                if let Some(other) = claims.get(&key) {
                    v.push(
                        &id,
                        "match",
                        format!(
                            "host {h:?} with basePath {:?} is already claimed by {other}",
                            p.base_path
                        ),
                    );
                } else {
                    claims.insert(key, id.clone());
                }
            }
        }
        let mut seen = BTreeSet::new();
        for c in &self.connections {
            let id = format!("{}/{}", c.namespace, c.name);
            if !seen.insert(id.clone()) {
                v.push(
                    &id,
                    "metadata.name",
                    "two connections have this name".into(),
                );
            }
            validate_object_name(&mut v, &id, &c.namespace, &c.name);
            validate_connection(&mut v, &id, c);
        }
        v.problems.sort();
        v.problems
    }
}

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
}

impl Validator {
    fn push(&mut self, object: &str, field: &str, message: String) {
        self.problems.push(Problem {
            object: object.into(),
            field: field.into(),
            message,
        });
    }
}

fn validate_object_name(v: &mut Validator, id: &str, namespace: &str, name: &str) {
    if namespace.is_empty() || name.is_empty() || namespace.contains('/') || name.contains('/') {
        v.push(
            id,
            "metadata",
            "namespace and name must be non-empty and contain no '/'".into(),
        );
    }
}

/// Lower-cases a host and drops a port, as `:authority` is compared.
pub fn normalize_host(host: &str) -> String {
    let h = host.trim().to_ascii_lowercase();
    if h.starts_with('[') {
        // IPv6 literal: [::1]:8080
        return match h.find(']') {
            Some(end) => h[..=end].to_string(),
            None => h,
        };
    }
    match h.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name.to_string(),
        _ => h,
    }
}

/// A path that fhirguard will compare literally must be free of the tricks that make two
/// spellings mean one resource; otherwise a policy could be bypassed by spelling it differently.
fn check_plain_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("must start with '/'".into());
    }
    if path.contains(['?', '#', '%', '\\']) || path.chars().any(|c| c.is_control() || c == ' ') {
        return Err("must not contain '?', '#', '%', '\\', spaces or control characters".into());
    }
    if path.len() > 1 && path.ends_with('/') {
        return Err("must not end with '/'".into());
    }
    if path.contains("//") {
        return Err("must not contain '//'".into());
    }
    if path.split('/').any(|s| s == "." || s == "..") {
        return Err("must not contain '.' or '..' segments".into());
    }
    Ok(())
}

fn validate_policy(v: &mut Validator, id: &str, p: &PolicyConfig, connections: &BTreeSet<String>) {
    if let Err(e) = check_plain_path(&p.base_path) {
        v.push(id, "match.basePath", e);
    }
    for (i, h) in p.hosts.iter().enumerate() {
        let n = normalize_host(h);
        if n.is_empty() || n.contains(['/', ' ', '?', '#', '@']) || n == "*" {
            v.push(
                id,
                &format!("match.hosts[{i}]"),
                format!("{h:?} is not a host name (leave hosts empty to match any host)"),
            );
        }
    }
    for (i, pp) in p.public_paths.iter().enumerate() {
        if let Err(e) = check_plain_path(pp) {
            v.push(id, &format!("publicPaths[{i}]"), e);
        }
    }
    let auth = &p.authentication;
    if auth.basic.is_none() && auth.jwt.is_none() && !p.unauthenticated_access {
        v.push(
            id,
            "authentication",
            "neither basic nor jwt is configured, so no request could ever be authenticated".into(),
        );
    }
    if auth.combine == Combine::AllOf && (auth.basic.is_none() || auth.jwt.is_none()) {
        v.push(
            id,
            "authentication.combine",
            "AllOf needs both basic and jwt to be configured".into(),
        );
    }
    if let Some(basic) = &auth.basic {
        validate_basic(v, id, basic);
    }
    if let Some(jwt) = &auth.jwt {
        if jwt.require_subject_matches_basic_user && auth.combine != Combine::AllOf {
            v.push(
                id,
                "authentication.jwt.requireSubjectMatchesBasicUser",
                "only meaningful with combine: AllOf".into(),
            );
        }
        validate_jwt(v, id, jwt);
    }
    if let Some(lookup) = &p.authorization.smart.compartment_lookup
        && !connections.contains(&lookup.connection)
    {
        v.push(
            id,
            "authorization.smart.compartmentLookup.connectionRef",
            format!("connection {:?} does not exist", lookup.connection),
        );
    }
}

fn validate_basic(v: &mut Validator, id: &str, basic: &BasicConfig) {
    let field = "authentication.basic.htpasswdSecretRef";
    let users = match htpasswd::parse(&basic.htpasswd) {
        Ok(entries) => entries.into_iter().map(|e| e.user).collect::<BTreeSet<_>>(),
        Err(errors) => {
            for e in errors {
                v.push(id, field, e.to_string());
            }
            return;
        }
    };
    if users.is_empty() {
        v.push(id, field, "the htpasswd file holds no users".into());
    }
    for (i, rule) in basic.access.iter().enumerate() {
        if rule.users.is_empty() {
            v.push(
                id,
                &format!("authentication.basic.access[{i}].users"),
                "must name at least one user or \"*\"".into(),
            );
        }
        for u in &rule.users {
            if u != "*" && !users.contains(u) {
                v.push(
                    id,
                    &format!("authentication.basic.access[{i}].users"),
                    format!("user {u:?} is not in the htpasswd file"),
                );
            }
        }
    }
}

fn validate_jwt(v: &mut Validator, id: &str, jwt: &JwtConfig) {
    if jwt.token_sources.is_empty() {
        v.push(
            id,
            "authentication.jwt.tokenSources",
            "must name at least one source".into(),
        );
    }
    if jwt.providers.is_empty() {
        v.push(
            id,
            "authentication.jwt.providers",
            "must list at least one provider".into(),
        );
    }
    let mut names = BTreeSet::new();
    let mut issuers = BTreeSet::new();
    for (i, p) in jwt.providers.iter().enumerate() {
        let f = |s: &str| format!("authentication.jwt.providers[{i}].{s}");
        if p.name.is_empty() || !names.insert(p.name.clone()) {
            v.push(id, &f("name"), "must be non-empty and unique".into());
        }
        if p.issuer.is_empty() {
            v.push(id, &f("issuer"), "must not be empty".into());
        } else if !issuers.insert(p.issuer.clone()) {
            v.push(
                id,
                &f("issuer"),
                format!(
                    "issuer {:?} is used by two providers; tokens could not be told apart",
                    p.issuer
                ),
            );
        }
        if p.audiences.is_empty() || p.audiences.iter().any(|a| a.is_empty()) {
            v.push(
                id,
                &f("audiences"),
                "must list at least one non-empty audience; tokens minted for another service must not be accepted"
                    .into(),
            );
        }
        if p.algorithms.is_empty() {
            v.push(
                id,
                &f("algorithms"),
                "must list at least one algorithm".into(),
            );
        }
        if p.clock_skew_seconds > 600 {
            v.push(id, &f("clockSkew"), "must be at most 10m".into());
        }
        for (name, value) in [
            ("scope", &p.claims.scope),
            ("patient", &p.claims.patient),
            ("fhirUser", &p.claims.fhir_user),
            ("subject", &p.claims.subject),
        ] {
            if value.is_empty() {
                v.push(
                    id,
                    &f(&format!("claims.{name}")),
                    "must not be empty".into(),
                );
            }
        }
        match (&p.jwks.uri, &p.jwks.document) {
            (Some(_), Some(_)) | (None, None) => v.push(
                id,
                &f("jwks"),
                "exactly one of uri and secretRef must be set".into(),
            ),
            (Some(uri), None) => {
                if let Err(e) = check_https_url(uri) {
                    v.push(id, &f("jwks.uri"), e);
                }
                if p.jwks.refresh_interval_seconds < 10 {
                    v.push(
                        id,
                        &f("jwks.refreshInterval"),
                        "must be at least 10s".into(),
                    );
                }
                validate_tls(v, id, &f("jwks.tls"), &p.jwks.tls);
            }
            (None, Some(doc)) => {
                if let Err(e) = check_jwks_document(doc) {
                    v.push(id, &f("jwks.secretRef"), e);
                }
            }
        }
    }
}

/// Structural check of a JWKS document; the server additionally turns every key into a
/// verification key when it loads the config.
pub fn check_jwks_document(doc: &str) -> Result<(), String> {
    let value: serde_json::Value =
        serde_json::from_str(doc).map_err(|e| format!("not a JSON document: {e}"))?;
    let keys = value
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("not a JWKS: no \"keys\" array")?;
    if keys.is_empty() {
        return Err("the JWKS holds no keys".into());
    }
    for (i, k) in keys.iter().enumerate() {
        if k.get("d").is_some() || k.get("k").is_some() {
            return Err(format!(
                "key {i} contains private or symmetric key material; publish only public keys"
            ));
        }
    }
    Ok(())
}

fn validate_tls(v: &mut Validator, id: &str, field: &str, tls: &TlsConfig) {
    match (tls.mode, &tls.ca_file) {
        (TlsMode::CustomBundle, None) => v.push(
            id,
            &format!("{field}.caBundleSecretRef"),
            "required when mode is CustomBundle".into(),
        ),
        (TlsMode::CustomBundle, Some(f)) => {
            if f.is_empty() || f.contains('/') || f.starts_with('.') {
                v.push(
                    id,
                    &format!("{field}.caFile"),
                    format!("{f:?} must be a plain file name inside the config directory"),
                );
            }
        }
        (_, Some(_)) => v.push(
            id,
            &format!("{field}.caBundleSecretRef"),
            "only allowed when mode is CustomBundle".into(),
        ),
        (_, None) => {}
    }
}

fn check_https_url(s: &str) -> Result<url::Url, String> {
    let u = url::Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    if u.scheme() != "https" {
        return Err(format!("{s:?} must use https"));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(format!("{s:?} has no host"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(format!("{s:?} must not carry credentials in the URL"));
    }
    Ok(u)
}

fn validate_connection(v: &mut Validator, id: &str, c: &ConnectionConfig) {
    match url::Url::parse(&c.url) {
        Ok(u) if (u.scheme() == "https" || u.scheme() == "http") && u.host_str().is_some() => {
            if !u.username().is_empty() || u.password().is_some() {
                v.push(id, "url", "must not carry credentials in the URL".into());
            }
        }
        Ok(_) => v.push(
            id,
            "url",
            format!("{:?} must be an http(s) URL with a host", c.url),
        ),
        Err(e) => v.push(id, "url", format!("{:?} is not a URL: {e}", c.url)),
    }
    match (&c.auth.basic, &c.auth.oauth) {
        (Some(_), Some(_)) => v.push(
            id,
            "auth",
            "at most one of basic and oauth: HTTP has one Authorization header".into(),
        ),
        (Some(b), None) => {
            if b.username.is_empty() || b.username.contains(':') {
                v.push(
                    id,
                    "auth.basic.secretRef",
                    "username must be non-empty and contain no ':'".into(),
                );
            }
        }
        (None, Some(o)) => {
            if let Err(e) = check_https_url(&o.token_url) {
                v.push(id, "auth.oauth.tokenUrl", e);
            }
            if o.client_id.is_empty() {
                v.push(id, "auth.oauth.clientId", "must not be empty".into());
            }
            if o.client_secret.is_empty() {
                v.push(
                    id,
                    "auth.oauth.clientSecretRef",
                    "the secret is empty".into(),
                );
            }
        }
        (None, None) => {}
    }
    validate_tls(v, id, "tls", &c.tls);
}

/// Parses the CRDs' duration strings: an integer followed by `s`, `m` or `h`, or several
/// such parts (`1h30m`). Returns seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a duration like 60s, 10m or 1h30m");
    if s.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().map_err(|_| bad())?;
        num.clear();
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(bad()),
        };
        total = n
            .checked_mul(unit)
            .and_then(|x| total.checked_add(x))
            .ok_or_else(bad)?;
    }
    if !num.is_empty() {
        return Err(bad());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BCRYPT: &str = "alice:$2y$05$3bPgAOMbkZ3UxBYuvB/T2.7xI0ag4VDj9gkOHkRyz0.p5Rz8Ru.Ia";

    fn policy(name: &str) -> PolicyConfig {
        PolicyConfig {
            namespace: "clinical".into(),
            name: name.into(),
            hosts: vec!["ehr.example.org".into()],
            base_path: "/fhir/r4".into(),
            public_paths: default_public_paths(),
            unauthenticated_access: false,
            authentication: AuthenticationConfig {
                combine: Combine::AnyOf,
                basic: Some(BasicConfig {
                    htpasswd: format!("{BCRYPT}\n"),
                    access: vec![],
                }),
                jwt: None,
            },
            authorization: AuthorizationConfig::default(),
        }
    }

    fn provider() -> ProviderConfig {
        ProviderConfig {
            name: "idp".into(),
            issuer: "https://idp.example.org".into(),
            audiences: vec!["https://ehr.example.org/fhir/r4".into()],
            algorithms: vec![Algorithm::RS256],
            clock_skew_seconds: 60,
            jwks: JwksConfig {
                uri: Some("https://idp.example.org/jwks".into()),
                refresh_interval_seconds: 600,
                tls: TlsConfig::default(),
                document: None,
            },
            claims: ClaimNames::default(),
        }
    }

    fn with_policy(p: PolicyConfig) -> CompiledConfig {
        CompiledConfig {
            policies: vec![p],
            ..CompiledConfig::empty(1)
        }
    }

    fn fields(c: &CompiledConfig) -> Vec<String> {
        c.validate().into_iter().map(|p| p.field).collect()
    }

    #[test]
    fn a_plain_policy_is_valid_and_round_trips() {
        let c = with_policy(policy("ehr"));
        assert_eq!(c.validate(), vec![]);
        let back = CompiledConfig::from_json(&c.to_json()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn unknown_fields_and_versions_are_refused() {
        let err = CompiledConfig::from_json(r#"{"version":1,"generation":1,"extra":true}"#);
        assert!(err.is_err());
        let c = CompiledConfig::from_json(r#"{"version":2,"generation":1}"#).unwrap();
        assert_eq!(fields(&c), vec!["version"]);
    }

    #[test]
    fn defaults_fill_in_what_the_operator_may_omit() {
        let c = CompiledConfig::from_json(
            r#"{"version":1,"generation":3,"policies":[{"namespace":"a","name":"b","basePath":"/fhir","unauthenticatedAccess":true}]}"#,
        )
        .unwrap();
        let p = &c.policies[0];
        assert_eq!(p.public_paths, default_public_paths());
        assert_eq!(p.authentication.combine, Combine::AnyOf);
        assert_eq!(p.authorization.smart.patient_search, PatientSearch::Reject);
        assert_eq!(c.validate(), vec![]);
    }

    #[test]
    fn base_path_tricks_are_refused() {
        for bad in [
            "fhir",
            "/fhir/",
            "/fhir//r4",
            "/fhir/../r4",
            "/fhir/%2e",
            "/fhir?x",
        ] {
            let mut p = policy("ehr");
            p.base_path = bad.into();
            assert_eq!(fields(&with_policy(p)), vec!["match.basePath"], "{bad}");
        }
    }

    #[test]
    fn two_policies_claiming_one_host_and_base_path_conflict() {
        let mut a = policy("a");
        a.hosts = vec!["EHR.example.org:443".into()];
        let b = policy("b");
        let c = CompiledConfig {
            policies: vec![a, b],
            ..CompiledConfig::empty(1)
        };
        let problems = c.validate();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].object, "clinical/b");
        assert!(problems[0].message.contains("clinical/a"));
    }

    #[test]
    fn missing_authentication_is_refused_unless_unauthenticated() {
        let mut p = policy("ehr");
        p.authentication.basic = None;
        assert_eq!(fields(&with_policy(p.clone())), vec!["authentication"]);
        p.unauthenticated_access = true;
        assert_eq!(fields(&with_policy(p)), Vec::<String>::new());
    }

    #[test]
    fn all_of_needs_both_kinds() {
        let mut p = policy("ehr");
        p.authentication.combine = Combine::AllOf;
        assert_eq!(fields(&with_policy(p)), vec!["authentication.combine"]);
    }

    #[test]
    fn access_rules_must_name_known_users() {
        let mut p = policy("ehr");
        p.authentication.basic.as_mut().unwrap().access = vec![AccessRule {
            users: vec!["alcie".into()],
            permission: Permission::Read,
        }];
        let problems = with_policy(p).validate();
        assert_eq!(problems[0].field, "authentication.basic.access[0].users");
        assert!(problems[0].message.contains("alcie"));
    }

    #[test]
    fn jwt_provider_rules() {
        let mut p = policy("ehr");
        let mut pr = provider();
        pr.audiences.clear();
        pr.jwks.uri = Some("http://idp.example.org/jwks".into());
        pr.jwks.tls.mode = TlsMode::CustomBundle;
        p.authentication.jwt = Some(JwtConfig {
            token_sources: vec![TokenSource::Header],
            require_subject_matches_basic_user: true,
            providers: vec![pr.clone(), pr],
        });
        let f = fields(&with_policy(p));
        for want in [
            "authentication.jwt.requireSubjectMatchesBasicUser",
            "authentication.jwt.providers[0].audiences",
            "authentication.jwt.providers[0].jwks.uri",
            "authentication.jwt.providers[0].jwks.tls.caBundleSecretRef",
            "authentication.jwt.providers[1].name",
            "authentication.jwt.providers[1].issuer",
        ] {
            assert!(f.contains(&want.to_string()), "missing {want} in {f:?}");
        }
    }

    #[test]
    fn jwks_exactly_one_source_and_no_private_keys() {
        let mut p = policy("ehr");
        let mut pr = provider();
        pr.jwks.document = Some(r#"{"keys":[]}"#.into());
        p.authentication.jwt = Some(JwtConfig {
            token_sources: vec![TokenSource::Header],
            require_subject_matches_basic_user: false,
            providers: vec![pr.clone()],
        });
        assert_eq!(
            fields(&with_policy(p.clone())),
            vec!["authentication.jwt.providers[0].jwks"]
        );
        pr.jwks.uri = None;
        pr.jwks.document = Some(r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#.into());
        p.authentication.jwt.as_mut().unwrap().providers = vec![pr];
        let problems = with_policy(p).validate();
        assert!(problems[0].message.contains("symmetric"), "{problems:?}");
    }

    #[test]
    fn connections_are_checked() {
        let c = CompiledConfig {
            connections: vec![ConnectionConfig {
                namespace: "n".into(),
                name: "partner".into(),
                url: "ftp://x".into(),
                auth: ConnectionAuth {
                    basic: Some(BasicCredentials {
                        username: "u".into(),
                        password: "p".into(),
                    }),
                    oauth: Some(OAuthConfig {
                        token_url: "https://t".into(),
                        client_id: "c".into(),
                        client_secret: "s".into(),
                        client_auth_method: ClientAuthMethod::ClientSecretBasic,
                        scopes: vec![],
                        audience: None,
                        extra_params: BTreeMap::new(),
                    }),
                },
                tls: TlsConfig {
                    mode: TlsMode::DefaultBundle,
                    ca_file: Some("ca.pem".into()),
                },
            }],
            ..CompiledConfig::empty(1)
        };
        assert_eq!(fields(&c), vec!["auth", "tls.caBundleSecretRef", "url"]);
        let dbg = format!("{:?}", c.connections[0]);
        assert!(!dbg.contains("\"p\"") && !dbg.contains("\"s\""), "{dbg}");
    }

    #[test]
    fn compartment_lookup_must_name_a_connection() {
        let mut p = policy("ehr");
        p.authorization.smart.compartment_lookup = Some(CompartmentLookup {
            connection: "clinical/missing".into(),
        });
        assert_eq!(
            fields(&with_policy(p)),
            vec!["authorization.smart.compartmentLookup.connectionRef"]
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Ok(60));
        assert_eq!(parse_duration("10m"), Ok(600));
        assert_eq!(parse_duration("1h30m"), Ok(5400));
        for bad in ["", "10", "m", "1d", "-1s", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hosts_normalise() {
        assert_eq!(normalize_host("EHR.Example.org:8443"), "ehr.example.org");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert_eq!(normalize_host("ehr"), "ehr");
    }
}
