//! The two custom resources, `FhirSecurityPolicy` and `FhirConnection` (group `fhirguard.dev`,
//! version `v1alpha1`). Field names are part of the contract (docs/reference.md); doc comments
//! here become the `kubectl explain` text, so they are written for the people applying these
//! objects.
//!
//! Cross-field rules are expressed twice: as CEL `x-kubernetes-validations` (rejected at apply
//! time on API servers that evaluate CEL, Kubernetes >= 1.25) and in [`crate::compile`], which
//! enforces the same rules for older servers that silently drop CEL from schemas.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "fhirguard.dev";

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
    pub introspection: Option<crate::introspection::Introspection>,
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

/// How workloads reach a FHIR server that someone else runs: the credentials fhirguard injects
/// into outbound requests and how the server's TLS certificate is trusted.
///
/// An Envoy route names the connection with the context extension
/// `fhirguard.dev/connection: <namespace>/<name>`; fhirguard then sets the request's
/// Authorization header (Basic, or Bearer with an OAuth2 client-credentials token it keeps
/// fresh).
// Several printer columns share `type_ = "string"`; that is not a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "fhirguard.dev",
    version = "v1alpha1",
    kind = "FhirConnection",
    plural = "fhirconnections",
    singular = "fhirconnection",
    shortname = "fconn",
    category = "fhirguard",
    namespaced,
    status = "ObjectStatus",
    doc = "FhirConnection describes how workloads reach another organisation's FHIR server: the credentials fhirguard injects (Basic or OAuth2 client credentials) and how its TLS certificate is trusted.",
    printcolumn(name = "URL", type_ = "string", json_path = ".spec.url"),
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
pub struct FhirConnectionSpec {
    /// The FHIR base URL, e.g. `https://partner.example.org/fhir/r4`.
    #[schemars(regex(pattern = r"^https?://"))]
    pub url: String,

    /// Credentials injected into outbound requests: at most one of `basic` and `oauth`, since
    /// HTTP has one Authorization header. Without it requests are forwarded without credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<ConnectionAuth>,

    /// How the server's certificate (and the token endpoint's) is verified. Default: public CAs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
}

/// Outbound credentials.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.basic) && has(self.oauth))").message("at most one of basic and oauth: HTTP has one Authorization header"))]
pub struct ConnectionAuth {
    /// HTTP Basic credentials from a Secret with the keys `username` and `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<ConnectionBasic>,

    /// An OAuth2 client (client-credentials grant, RFC 6749 section 4.4). Tokens are fetched,
    /// cached and refreshed before they expire (and at least hourly) with no further settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth: Option<OAuthClient>,
}

/// Basic credentials for a connection.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionBasic {
    /// A Secret in this namespace with the keys `username` and `password`.
    pub secret_ref: LocalObjectRef,
}

/// How the client authenticates to the token endpoint.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ClientAuthMethod {
    /// HTTP Basic with the client id and secret (RFC 6749 section 2.3.1; the default).
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
}

/// An OAuth2 client-credentials client.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.clientId) != has(self.clientIdSecretRef)").message("exactly one of clientId and clientIdSecretRef must be set"))]
pub struct OAuthClient {
    /// The token endpoint, an HTTPS URL.
    #[schemars(regex(pattern = r"^https://"))]
    pub token_url: String,

    /// The client id, given literally ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,

    /// ... or read from a Secret key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id_secret_ref: Option<SecretKeyRef>,

    /// The Secret key holding the client secret.
    pub client_secret_ref: SecretKeyRef,

    /// `ClientSecretBasic` (default) or `ClientSecretPost`.
    #[serde(default)]
    pub client_auth_method: ClientAuthMethod,

    /// Scopes to request, e.g. `["system/*.rs"]`.
    #[serde(default)]
    pub scopes: Vec<String>,

    /// Sent as the `audience` form parameter when set (some servers require it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,

    /// More form parameters for the token request, e.g. `resource`.
    #[serde(default)]
    pub extra_params: BTreeMap<String, String>,
}

/// How a server certificate is verified.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// Accept any certificate. Development only: anyone on the path can impersonate the server.
    SkipVerification,
    /// The public (Mozilla) certificate authorities.
    #[default]
    DefaultBundle,
    /// Only the CA certificates in `caBundleSecretRef`.
    CustomBundle,
}

/// TLS trust.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode == 'CustomBundle' ? has(self.caBundleSecretRef) : !has(self.caBundleSecretRef)").message("caBundleSecretRef is required for mode CustomBundle and only allowed with it"))]
pub struct Tls {
    /// `SkipVerification`, `DefaultBundle` (default) or `CustomBundle`.
    #[serde(default)]
    pub mode: TlsMode,

    /// With `CustomBundle`: a Secret key holding PEM CA certificates. `key` defaults to `ca.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_secret_ref: Option<CaBundleSecretRef>,
}

macro_rules! secret_key_ref {
    ($name:ident, $default_fn:ident, $default_fn_name:literal, $default:literal, $doc:literal) => {
        #[doc = $doc]
        #[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
        #[serde(rename_all = "camelCase")]
        pub struct $name {
            /// The Secret's name.
            #[schemars(length(min = 1))]
            pub name: String,
            #[doc = concat!("The key inside the Secret (default `", $default, "`).")]
            #[serde(default = $default_fn_name)]
            pub key: String,
            /// Must be empty or this object's own namespace: references never cross namespaces.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub namespace: Option<String>,
        }

        fn $default_fn() -> String {
            $default.into()
        }
    };
}

secret_key_ref!(
    HtpasswdSecretRef,
    default_htpasswd_key,
    "default_htpasswd_key",
    "htpasswd",
    "A key in a Secret in this object's namespace."
);
secret_key_ref!(
    JwksSecretRef,
    default_jwks_key,
    "default_jwks_key",
    "jwks.json",
    "A key in a Secret in this object's namespace."
);
secret_key_ref!(
    CaBundleSecretRef,
    default_ca_key,
    "default_ca_key",
    "ca.crt",
    "A key in a Secret in this object's namespace."
);

/// A key in a Secret in this object's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// The key inside the Secret.
    #[schemars(length(min = 1))]
    pub key: String,
    /// Must be empty or this object's own namespace: references never cross namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// An object in this object's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LocalObjectRef {
    /// The object's name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Must be empty or this object's own namespace: references never cross namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Observed state, written by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStatus {
    /// The `metadata.generation` the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Accepted`: the spec is valid and every reference resolved (reason `Valid`, or why not).
    /// `Ready`: the object is part of the configuration published to the authz-service
    /// (reason `ConfigPublished`, or why not).
    #[serde(default)]
    pub conditions: Vec<Condition>,

    /// The generation of the compiled configuration that last included this object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_generation: Option<i64>,
}

/// Each CRD as `(file name in crds/, YAML document)`.
pub fn crd_documents() -> Result<Vec<(String, String)>, serde_saphyr::ser::Error> {
    use kube::CustomResourceExt;
    [FhirSecurityPolicy::crd(), FhirConnection::crd()]
        .into_iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            Ok((format!("{name}.yaml"), serde_saphyr::to_string(&crd)?))
        })
        .collect()
}

/// Both CRDs as one multi-document YAML stream, exactly what `fhirguard-operator crds` prints;
/// the files in `crds/` are these documents one per file.
pub fn crds_yaml() -> Result<String, serde_saphyr::ser::Error> {
    let mut out = String::new();
    for (_, doc) in crd_documents()? {
        out.push_str("---\n");
        out.push_str(&doc);
    }
    Ok(out)
}
