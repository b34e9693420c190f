//! `FhirSecurityPolicy` fields for the audit trail (`spec.audit`) and the SMART discovery
//! document (`spec.smartConfiguration`), and their compilation into the service's config.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::crd::{LocalObjectRef, Tls};

/// Which decisions are recorded.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AuditRecord {
    /// Every refusal, and every allowed access to resources of the Patient compartment
    /// (and to interactions whose types are unknown beforehand: system searches, batches,
    /// operations). The default.
    #[default]
    PatientDataAndRefusals,
    /// Refusals only.
    Refusals,
    /// Every decision, public paths included.
    All,
}

/// IHE BALP AuditEvents (FHIR R4) for this policy's decisions, tied to the decision id.
/// Exactly one destination: `stdout`, `file` or `connectionRef`. Recording never delays or
/// changes a decision: a full queue drops events and counts them in
/// `fhirguard_audit_events_total{result="dropped_queue_full"}`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.stdout) && self.stdout ? 1 : 0) + (has(self.file) ? 1 : 0) + (has(self.connectionRef) ? 1 : 0) == 1").message("exactly one of stdout, file and connectionRef must be set"))]
pub struct Audit {
    /// `PatientDataAndRefusals` (default), `Refusals` or `All`.
    #[serde(default)]
    pub record: AuditRecord,
    /// Write NDJSON (one AuditEvent a line) to the service's standard output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<bool>,
    /// Append NDJSON to this absolute path inside the authz-service container (mount a volume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// POST Bundles of AuditEvents to the base URL of this FhirConnection (its credentials
    /// and TLS trust), retried with backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_ref: Option<LocalObjectRef>,
    /// Events waiting to be written (default 10000); beyond it they are dropped and counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub queue_size: Option<u32>,
    /// At most this many events per write or Bundle (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub batch_size: Option<u32>,
}

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
/// `scopes_supported` derived from what fhirguard enforces. Needs `authentication.jwt`.
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
