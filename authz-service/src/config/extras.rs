//! Per-policy settings beside authentication and authorization: the audit trail (IHE BALP
//! AuditEvents) and the SMART discovery document fhirguard serves itself.

use serde::{Deserialize, Serialize};

use super::{TlsConfig, is_default};

/// Which decisions become AuditEvents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum AuditRecord {
    /// Every refusal, and every allowed interaction that touches resources of the Patient
    /// compartment (or whose types cannot be known: system searches, batches, operations).
    #[default]
    PatientDataAndRefusals,
    /// Refusals only.
    Refusals,
    /// Every decision of the policy, public paths included.
    All,
}

/// Where and which AuditEvents a policy records. Exactly one destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditConfig {
    #[serde(default)]
    pub record: AuditRecord,
    /// NDJSON (one AuditEvent a line) on the service's standard output.
    #[serde(default, skip_serializing_if = "is_default")]
    pub stdout: bool,
    /// NDJSON appended to this absolute path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// `namespace/name` of a connection: Bundles of AuditEvents POSTed to its base URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
    /// Events waiting for the writer; beyond this they are dropped (and counted).
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
    /// At most this many events in one Bundle (or one write).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
}

pub fn default_queue_size() -> usize {
    10_000
}

pub fn default_batch_size() -> usize {
    100
}

pub const MAX_AUDIT_QUEUE: usize = 1_000_000;
pub const MAX_AUDIT_BATCH: usize = 1_000;

/// The SMART discovery document (`[base]/.well-known/smart-configuration`) fhirguard answers
/// itself. Endpoints named here win over those found by OpenID discovery.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SmartConfigurationConfig {
    /// The authorization server's issuer; also where OpenID discovery looks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Fetch `[issuer]/.well-known/openid-configuration` and take what is not given here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openid_discovery: Option<OpenIdDiscovery>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_endpoint: Option<String>,
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
    /// Capabilities of the authorization server (launch modes, client types, ...), added to
    /// those fhirguard derives from what the policy enforces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// Scopes added to the derived ones (`openid`, `fhirUser`, `launch/patient`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Default: the issuer's, else `authorization_code`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grant_types: Vec<String>,
    /// Default: the issuer's, else `S256`. `plain` is never published.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub code_challenge_methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_endpoint_auth_methods: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OpenIdDiscovery {
    #[serde(default = "default_discovery_refresh")]
    pub refresh_interval_seconds: u64,
    #[serde(default)]
    pub tls: TlsConfig,
}

fn default_discovery_refresh() -> u64 {
    3600
}
