//! `spec.audit` of a `FhirSecurityPolicy`: IHE BALP AuditEvents of the policy's decisions.
//! Its compile lives in [`crate::compile`].

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::LocalObjectRef;

/// Which decisions are recorded.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AuditRecord {
    /// Every refusal, and every allowed access to resources of the Patient compartment
    /// (and to interactions whose types are unknown beforehand: system searches, batches,
    /// operations; a batch's or transaction's entries get an event each). A request that
    /// could not be decided (503) counts as a refusal. The default.
    #[default]
    PatientDataAndRefusals,
    /// Refusals only (503s included).
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
    /// `PatientDataAndRefusals` (default): every refusal and every access to patient data;
    /// `Refusals`; or `All`. A request that could not be decided (answered 503) counts as a
    /// refusal; an allowed batch or transaction gets one event more per entry.
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
