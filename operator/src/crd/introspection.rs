//! `authentication.introspection` of a `FhirSecurityPolicy`: bearer tokens checked at an RFC
//! 7662 token introspection endpoint (opaque tokens, JWTs of issuers the policy has no JWT
//! provider for, and optionally every JWT, for revocation). Its compile lives in
//! [`crate::compile`].

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::{ClientAuthMethod, SecretKeyRef, Tls};

fn default_max_cache_duration() -> String {
    "5m".into()
}

fn default_clock_skew() -> String {
    "60s".into()
}

/// RFC 7662 token introspection. A bearer token that is a JWT whose `iss` names one of the
/// `jwt.providers` is verified by that provider; every other bearer token (an opaque token, a
/// JWT of another issuer) is sent to this endpoint, and its answer (`active`, `scope`,
/// `patient`, `fhirUser`, `sub`, `client_id`, `aud`, `exp`) is enforced exactly like a verified
/// JWT's claims. Tokens are read from where `jwt.tokenSources` says (without `jwt`: the
/// Authorization header). Answers are cached; while the endpoint cannot be reached, tokens
/// without a cached answer get 503, never an allow.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.clientId) != has(self.clientIdSecretRef)").message("exactly one of clientId and clientIdSecretRef must be set"))]
pub struct Introspection {
    /// The introspection endpoint, an HTTPS URL, e.g.
    /// `https://auth.example.org/oauth2/introspect`.
    #[schemars(regex(pattern = r"^https://"))]
    pub endpoint: String,

    /// The client id fhirguard authenticates with at the endpoint, given literally ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,

    /// ... or read from a Secret key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id_secret_ref: Option<SecretKeyRef>,

    /// The Secret key holding the client secret.
    pub client_secret_ref: SecretKeyRef,

    /// `ClientSecretBasic` (default: HTTP Basic) or `ClientSecretPost` (`client_id` and
    /// `client_secret` in the form body).
    #[serde(default)]
    pub client_auth_method: ClientAuthMethod,

    /// Accepted `aud` values; the endpoint's answer must name at least one (an answer without
    /// `aud` is refused). Usually the FHIR base URL.
    #[schemars(length(min = 1))]
    pub audiences: Vec<String>,

    /// How long an answer is reused at most, e.g. `5m` (default); never past the token's
    /// `exp`. At most `1h`; `0s` asks the endpoint for every request. This bounds how long a
    /// revoked token keeps working. A refusal is reused for at most a minute.
    #[serde(default = "default_max_cache_duration")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h))+$"))]
    pub max_cache_duration: String,

    /// Tolerance for `exp` and `nbf` against this server's clock, e.g. `60s` (default), at
    /// most `10m`.
    #[serde(default = "default_clock_skew")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h))+$"))]
    pub clock_skew: String,

    /// Also introspect JWTs that a `jwt` provider has verified, so that a revoked JWT is
    /// refused before its `exp` (default false: verified JWTs cost no call).
    #[serde(default)]
    pub introspect_jwts: bool,

    /// How the endpoint's certificate is verified (default: public CAs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
}
