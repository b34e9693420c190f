//! `spec.smartConfiguration` of a `FhirSecurityPolicy`: the SMART discovery document
//! fhirguard serves itself. Its compile lives in [`crate::compile`].

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::Tls;

/// Fetch the issuer's OpenID Provider Metadata (`[issuer]/.well-known/openid-configuration`)
/// for the endpoints not given here. Refreshed like a JWKS; the last good document is kept
/// through an outage.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct OpenIdDiscovery {
    /// How often to refetch (default `1h`, at least `10s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_interval: Option<String>,
    /// Trust for the issuer's HTTPS endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
}

/// fhirguard answers `GET [basePath]/.well-known/smart-configuration` itself (SMART App Launch
/// 2.2) with these endpoints, those found by OpenID discovery, and `capabilities` and
/// `scopes_supported` derived from what fhirguard enforces. Needs bearer tokens
/// (`authentication.jwt` or `authentication.introspection`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SmartConfiguration {
    /// The authorization server's issuer URL (`issuer` in the document).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Take missing endpoints from the issuer's OpenID discovery document (needs `issuer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openid_discovery: Option<OpenIdDiscovery>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_endpoint: Option<String>,
    /// Required unless `openidDiscovery` supplies it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub management_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub introspection_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_endpoint: Option<String>,
    /// The authorization server's capabilities (`launch-ehr`, `launch-standalone`,
    /// `client-public`, `sso-openid-connect`, `context-*`, ...), added to the `permission-*`
    /// capabilities fhirguard derives.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// Scopes added to the derived resource scopes (`openid`, `fhirUser`, `launch/patient`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Default: the issuer's (`authorization_code`, `client_credentials`), else
    /// `authorization_code`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grant_types: Vec<String>,
    /// Default: the issuer's, else `S256`. `plain` is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub code_challenge_methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_endpoint_auth_methods: Vec<String>,
}
