//! Writing what [`crate::status`] decides: each object's conditions (a merge patch of the
//! status subresource, only when it differs) and an Event per condition that changed.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType};

use super::Ctx;
use super::watches::{connection_resource, policy_resource};
use crate::compile::{self, Compiled, Kind};
use crate::crd::object::Loaded;
use crate::crd::{FhirConnection, FhirSecurityPolicy};
use crate::metrics::ResultLabels;
use crate::status::{self, PublishOutcome};

fn now() -> Time {
    // Kubernetes stores condition times with second precision; using the same precision here
    // keeps a freshly written status equal to what is read back.
    let t = Timestamp::now();
    Time(Timestamp::from_second(t.as_second()).unwrap_or(t))
}

pub(super) async fn update_statuses(
    cx: &Ctx,
    policies: &[Loaded<FhirSecurityPolicy>],
    connections: &[Loaded<FhirConnection>],
    compiled: &Compiled,
    outcome: &PublishOutcome,
    trust: &BTreeMap<String, Result<String, String>>,
) {
    let now = now();
    let policy_ar = policy_resource();
    let connection_ar = connection_resource();
    let all = policies
        .iter()
        .map(|p| {
            (
                Kind::FhirSecurityPolicy,
                &p.meta,
                p.status.as_ref(),
                &policy_ar,
            )
        })
        .chain(connections.iter().map(|c| {
            (
                Kind::FhirConnection,
                &c.meta,
                c.status.as_ref(),
                &connection_ar,
            )
        }));
    for (kind, meta, status, ar) in all {
        let key = compile::ObjectKey {
            kind,
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        };
        if let Some(result) = compiled.objects.get(&key) {
            let own = object_outcome(&key, compiled, outcome, trust);
            apply_status(cx, ar, meta, status, result, &own, &now).await;
        }
    }
}

/// The publish outcome as one object sees it: a connection whose CA bundle goes to a trust
/// ConfigMap is only Ready once that ConfigMap is in place too, and says where it is.
fn object_outcome(
    key: &compile::ObjectKey,
    compiled: &Compiled,
    outcome: &PublishOutcome,
    trust: &BTreeMap<String, Result<String, String>>,
) -> PublishOutcome {
    let has_bundle =
        key.kind == Kind::FhirConnection
            && compiled.config.connections.iter().any(|c| {
                c.namespace == key.namespace && c.name == key.name && c.tls.ca_file.is_some()
            });
    match (
        outcome,
        has_bundle.then(|| trust.get(&key.namespace)).flatten(),
    ) {
        (
            PublishOutcome::Published {
                generation, secret, ..
            },
            Some(Ok(cm)),
        ) => PublishOutcome::Published {
            generation: *generation,
            secret: secret.clone(),
            trust: Some(cm.clone()),
        },
        (PublishOutcome::Published { .. }, Some(Err(e))) => {
            PublishOutcome::Failed { message: e.clone() }
        }
        _ => outcome.clone(),
    }
}

async fn apply_status(
    cx: &Ctx,
    ar: &ApiResource,
    meta: &kube::api::ObjectMeta,
    current: Option<&crate::crd::ObjectStatus>,
    result: &compile::ObjectResult,
    outcome: &PublishOutcome,
    now: &Time,
) {
    let desired = status::desired(result, outcome, current, now);
    if !status::differs(current, &desired) || !cx.fence.holds() {
        return;
    }
    let patch = serde_json::json!({ "status": desired });
    let api: Api<DynamicObject> =
        Api::namespaced_with(cx.client.clone(), &result.key.namespace, ar);
    match api
        .patch_status(
            &result.key.name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => {
            cx.metrics
                .status_updates
                .get_or_create(&ResultLabels { result: "written" })
                .inc();
        }
        Err(e) => {
            cx.metrics
                .status_updates
                .get_or_create(&ResultLabels { result: "error" })
                .inc();
            // NotFound: deleted since the snapshot; nothing to report on.
            if !matches!(&e, kube::Error::Api(s) if s.code == 404) {
                tracing::warn!(error = %e, object = %result.key, "status update failed");
            }
            return;
        }
    }
    let reference = ObjectReference {
        api_version: Some(ar.api_version.clone()),
        kind: Some(ar.kind.clone()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        ..ObjectReference::default()
    };
    for ev in status::transitions(current, &desired) {
        let event = KubeEvent {
            type_: if ev.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: ev.reason,
            note: Some(ev.note),
            action: "Compile".into(),
            secondary: None,
        };
        if let Err(e) = cx.recorder.publish(&event, &reference).await {
            tracing::warn!(error = %e, object = %result.key, "could not record an event");
        }
    }
}
