//! `FhirSecurityPolicy`: who may do what to a FHIR server that fhirguard protects.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    Audit, HtpasswdSecretRef, Introspection, JwksSecretRef, LocalObjectRef, ObjectStatus,
    SmartConfiguration, Tls,
};
/// Who may do what to a FHIR server that fhirguard protects.
///
/// Envoy's ext_authz filter asks fhirguard about every request; the policy for a request is
/// chosen by the route's context extension `fhirguard.dev/policy: <namespace>/<name>`, or else
/// by `match.hosts` and `match.basePath`.
// Several printer columns share `type_ = "string"`; that is not a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "fhirguard.dev",
    version = "v1alpha1",
    kind = "FhirSecurityPolicy",
    plural = "fhirsecuritypolicies",
    singular = "fhirsecuritypolicy",
    shortname = "fsp",
    shortname = "fhirpolicy",
    category = "fhirguard",
    namespaced,
    status = "ObjectStatus",
    doc = "FhirSecurityPolicy decides who may do what to a FHIR server behind Envoy: Basic Auth users, JWT bearer tokens and SMART-on-FHIR scopes with patient context.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct FhirSecurityPolicySpec {
    /// Which requests this policy governs.
    #[serde(rename = "match")]
    pub match_: PolicyMatch,

    /// Paths, relative to `match.basePath`, that GET and HEAD may reach without credentials.
    /// Defaults to the capability statement and SMART discovery document:
    /// `["/metadata", "/.well-known/smart-configuration"]`. Set `[]` to require credentials
    /// everywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_paths: Option<Vec<String>>,

    /// Development switch: when true, EVERY request is allowed without credentials (like IRIS
    /// "Allow Unauthenticated Access"). The policy's status carries a warning while it is on.
    /// Never enable this for a server that holds real patient data.
    #[serde(default)]
    pub unauthenticated_access: bool,

    /// How callers prove who they are.
    #[serde(default)]
    pub authentication: Authentication,

    /// What authenticated callers may do beyond the Basic access rules: SMART-on-FHIR scope and
    /// patient-context enforcement for bearer tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Authorization>,

    /// IHE BALP AuditEvents of this policy's decisions (off when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<Audit>,

    /// Serve the SMART discovery document `[basePath]/.well-known/smart-configuration` from
    /// fhirguard (when absent the path stays a public path passed to the server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smart_configuration: Option<SmartConfiguration>,
}

/// Selects requests by `:authority` and path.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyMatch {
    /// Host names compared with the request's `:authority`, case-insensitively and ignoring
    /// any port. Empty (the default) matches any host. Two policies may not claim the same host
    /// and base path; the older one keeps it and the newer one is not accepted.
    #[serde(default)]
    pub hosts: Vec<String>,

    /// The FHIR base path, e.g. `/fhir/r4`. FHIR interactions are classified relative to it;
    /// requests outside it are not governed by this policy.
    #[schemars(regex(pattern = r"^/"))]
    pub base_path: String,
}

/// How credentials combine.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Combine {
    /// One valid credential (Basic or bearer token) suffices.
    #[default]
    AnyOf,
    /// Basic AND a bearer token must both be presented and valid. The token then comes from the
    /// `access_token` query parameter, since the Authorization header carries Basic.
    AllOf,
}

/// Credentials accepted by the policy. At least one of `basic`, `jwt` and `introspection` must
/// be set (unless `unauthenticatedAccess` is true).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.combine != 'AllOf' || (has(self.basic) && (has(self.jwt) || has(self.introspection)))").message("combine: AllOf needs basic and one of jwt and introspection"))]
pub struct Authentication {
    /// `AnyOf` (default): one valid credential suffices. `AllOf`: Basic and a bearer token must
    /// both be valid.
    #[serde(default)]
    pub combine: Combine,

    /// HTTP Basic Auth against an htpasswd file kept in a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicAuth>,

    /// OAuth2 / OpenID Connect bearer tokens (JWT), verified against the providers' keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtAuth>,

    /// Bearer tokens checked at an RFC 7662 token introspection endpoint: opaque tokens, JWTs
    /// of issuers no `jwt` provider names, and (with `introspectJwts`) verified JWTs too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introspection: Option<Introspection>,
}

/// HTTP Basic Auth.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BasicAuth {
    /// The Secret key holding an htpasswd file: one `user:hash` per line. Accepted hashes are
    /// bcrypt (`htpasswd -B`: `$2a$`/`$2b$`/`$2y$`), SHA-512-crypt (`$6$`) and argon2id (PHC
    /// string). Unsalted `{SHA}`, MD5 (`$apr1$`) and plain text are refused. bcrypt reads
    /// only 72 bytes, so against a bcrypt entry a password of 72 bytes or more is refused
    /// (use argon2id for longer ones). `key` defaults to `htpasswd`.
    pub htpasswd_secret_ref: HtpasswdSecretRef,

    /// Optional per-user permissions, checked in order; the first rule naming the user (or
    /// `"*"`) applies, and a user no rule names is refused. Without rules every valid user has
    /// ReadWrite.
    #[serde(default)]
    pub access: Vec<AccessRule>,
}

/// Permissions for a set of Basic users.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AccessRule {
    /// User names from the htpasswd file, or `"*"` for every user.
    #[schemars(length(min = 1))]
    pub users: Vec<String>,
    /// `Read`: every interaction that writes nothing (read, vread, search, history, capabilities,
    /// read-only operations). `ReadWrite`: everything.
    pub permission: Permission,
}

/// What a Basic user may do.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permission {
    /// Only interactions that change nothing.
    Read,
    /// Every interaction.
    ReadWrite,
}

/// Where bearer tokens are looked for.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`.
    Header,
    /// The `access_token` query parameter (removed before the request goes upstream).
    QueryParameter,
}

fn default_token_sources() -> Vec<TokenSource> {
    vec![TokenSource::Header]
}

/// JWT bearer token verification.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JwtAuth {
    /// Where tokens are read from: `Header` (default) and/or `QueryParameter`.
    #[serde(default = "default_token_sources")]
    pub token_sources: Vec<TokenSource>,

    /// With `combine: AllOf`: the token's subject claim must equal the Basic user name.
    #[serde(default)]
    pub require_subject_matches_basic_user: bool,

    /// Token issuers. A token is verified by the provider whose `issuer` equals its `iss` claim.
    #[schemars(length(min = 1))]
    pub providers: Vec<JwtProvider>,
}

/// Signature algorithms a provider may use. Only asymmetric algorithms: `none` and HMAC are
/// never accepted, whatever the token says.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
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

fn default_algorithms() -> Vec<Algorithm> {
    vec![Algorithm::RS256, Algorithm::ES256]
}

fn default_clock_skew() -> String {
    "60s".into()
}

/// One token issuer (an OAuth2 authorization server or OpenID provider).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JwtProvider {
    /// A name for this provider, unique within the policy; used in logs and metrics.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,

    /// The exact `iss` claim this provider's tokens carry.
    #[schemars(length(min = 1))]
    pub issuer: String,

    /// Accepted `aud` values; a token must name at least one. Usually the FHIR base URL.
    #[schemars(length(min = 1))]
    pub audiences: Vec<String>,

    /// Allowed signature algorithms (default `[RS256, ES256]`).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<Algorithm>,

    /// Tolerance for `exp`, `nbf` and `iat` against this server's clock, e.g. `60s` (default),
    /// at most `10m`.
    #[serde(default = "default_clock_skew")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h))+$"))]
    pub clock_skew: String,

    /// Where the provider's public keys come from.
    pub jwks: Jwks,

    /// Claim names, for providers that do not use the SMART defaults.
    #[serde(default)]
    pub claims: Claims,
}

fn default_refresh_interval() -> String {
    "10m".into()
}

/// The provider's JSON Web Key Set: exactly one of `uri` and `secretRef`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.uri) != has(self.secretRef)").message("exactly one of uri and secretRef must be set"))]
pub struct Jwks {
    /// HTTPS URL of the JWKS document, e.g. `https://idp.example.org/.well-known/jwks.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,

    /// How often the JWKS is fetched again, e.g. `10m` (default), at least `10s`. A token naming
    /// an unknown key id also triggers a (rate-limited) refetch, so key rotation needs no wait.
    #[serde(default = "default_refresh_interval")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h))+$"))]
    pub refresh_interval: String,

    /// How the JWKS endpoint's certificate is verified (default: public CAs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,

    /// A Secret key holding the JWKS document itself, for issuers without a reachable endpoint.
    /// `key` defaults to `jwks.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<JwksSecretRef>,
}

fn claim(s: &str) -> String {
    s.into()
}
fn claim_scope() -> String {
    claim("scope")
}
fn claim_patient() -> String {
    claim("patient")
}
fn claim_fhir_user() -> String {
    claim("fhirUser")
}
fn claim_subject() -> String {
    claim("sub")
}

/// Names of the claims fhirguard reads from a token.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Claims {
    /// Space-separated SMART scopes (default `scope`).
    #[serde(default = "claim_scope")]
    pub scope: String,
    /// The patient context: a Patient id (default `patient`).
    #[serde(default = "claim_patient")]
    pub patient: String,
    /// The user's FHIR resource, e.g. `Practitioner/123` (default `fhirUser`).
    #[serde(default = "claim_fhir_user")]
    pub fhir_user: String,
    /// The caller's identity, forwarded as `x-fhirguard-subject` (default `sub`).
    #[serde(default = "claim_subject")]
    pub subject: String,
}

impl Default for Claims {
    fn default() -> Self {
        Claims {
            scope: claim_scope(),
            patient: claim_patient(),
            fhir_user: claim_fhir_user(),
            subject: claim_subject(),
        }
    }
}

/// Authorization beyond authentication.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    /// SMART-on-FHIR scope and patient-context enforcement for bearer tokens.
    #[serde(default)]
    pub smart: Smart,
}

/// What happens to a patient-scoped search that does not name the context patient.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PatientSearch {
    /// Refuse it with 403.
    #[default]
    Reject,
    /// Let it through with the patient parameter added by Envoy's query rewrite.
    Narrow,
}

/// SMART-on-FHIR enforcement settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Smart {
    /// `Reject` (default) or `Narrow` a patient-scoped search that lacks the context patient.
    #[serde(default)]
    pub patient_search: PatientSearch,

    /// How to check that a read, update or delete by id under a `patient/` scope touches the
    /// context patient's compartment: fhirguard reads the resource through this FhirConnection
    /// (to the protected server itself). Without it such requests are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compartment_lookup: Option<CompartmentLookup>,

    /// What a `user/` scope reaches. `Unrestricted` (default): every resource of the scoped
    /// types, as SMART leaves the user's own permissions to the FHIR server.
    /// `ConfineToFhirUser`: a token whose `fhirUser` is a Patient is held to that patient's
    /// compartment exactly like a patient context (as Microsoft's FHIR server and FHIR Works on
    /// AWS do); a token without `fhirUser`, or one naming a type that is no user (e.g.
    /// Organization), gets nothing from its `user/` scopes. Practitioner, PractitionerRole,
    /// RelatedPerson and Person users are not restricted.
    #[serde(default)]
    pub user_scopes: UserScopes,

    /// Whether `patient/` scopes reach types outside the patient compartment (Medication,
    /// Practitioner, Organization, Location, ...). `Deny` (default): never; grant them with
    /// `user/` scopes. `ReadWithScope`: reads and searches (never writes) when a `patient/`
    /// scope names the type or `*`, including `_include`s that only return such types (US
    /// Core's `MedicationRequest:medication`).
    #[serde(default)]
    pub reference_data: ReferenceData,
}

/// What a `user/` scope reaches.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum UserScopes {
    /// Every resource of the scoped types.
    #[default]
    Unrestricted,
    /// A Patient user is held to its own compartment; a token without a user gets nothing.
    ConfineToFhirUser,
}

/// Whether `patient/` scopes reach types outside the patient compartment.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReferenceData {
    /// Never.
    #[default]
    Deny,
    /// Reads and searches when a `patient/` scope names the type or `*`.
    ReadWithScope,
}

/// Compartment lookups through a connection.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CompartmentLookup {
    /// A FhirConnection in this policy's namespace.
    pub connection_ref: LocalObjectRef,
}
