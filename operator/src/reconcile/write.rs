//! One reconcile: load the referenced Secrets, compile, publish the config Secret and the trust
//! ConfigMaps when their content changed, then bring statuses up to date.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::{PartialObjectMeta, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;

use super::statuses::update_statuses;
use super::watches::loaded;
use super::{Ctx, Error, SecretCache};
use crate::compile::{self, Compiled, Secrets};
use crate::crd::object;
use crate::metrics::{Metrics, ObjectLabels, ResultLabels};
use crate::publish::{self, FIELD_MANAGER, Published};
use crate::status::PublishOutcome;

pub(super) async fn reconcile_once(cx: &Ctx) -> Result<(), Error> {
    let policies = loaded(&cx.policies, object::parse_policy);
    let connections = loaded(&cx.connections, object::parse_connection);
    let referenced = compile::referenced_secrets(&policies, &connections);
    if let Ok(mut r) = cx.referenced.write() {
        r.clone_from(&referenced);
    }
    let secrets = load_secrets(cx, &referenced).await?;
    let compiled = compile::compile(&policies, &connections, &secrets);
    cx.metrics.compiles.inc();
    record_objects(&cx.metrics, &compiled);

    let outcome = publish(cx, &compiled).await;
    let trust = publish_trust(cx, &compiled).await;
    update_statuses(cx, &policies, &connections, &compiled, &outcome, &trust).await;
    match outcome {
        PublishOutcome::Published { .. } if trust.values().all(Result::is_ok) => Ok(()),
        PublishOutcome::Published { .. } => Err(Error::Kube(kube::Error::Service(
            "publishing a trust ConfigMap failed".into(),
        ))),
        PublishOutcome::Failed { .. } => Err(Error::Kube(kube::Error::Service(
            "publishing the config Secret failed".into(),
        ))),
    }
}

/// Brings the trust ConfigMaps in line with the compile: one per namespace whose accepted
/// FhirConnections have a CA bundle, written only when its content differs, and ours deleted
/// where no longer needed. Returns, per namespace that needs one, whether it is in place.
async fn publish_trust(cx: &Ctx, compiled: &Compiled) -> BTreeMap<String, Result<String, String>> {
    let mut results = BTreeMap::new();
    let Some(name) = &cx.settings.trust_configmap else {
        return results;
    };
    let desired = publish::trust_files(compiled);
    let existing: Vec<ConfigMap> = cx
        .trust
        .iter()
        .flat_map(|s| s.state())
        .map(|c| (*c).clone())
        .collect();
    let count = |result: &'static str| {
        cx.metrics
            .trust_publishes
            .get_or_create(&ResultLabels { result })
            .inc();
    };
    for (ns, files) in &desired {
        let target = format!("{ns}/{name}");
        let current = existing
            .iter()
            .find(|c| c.metadata.namespace.as_deref() == Some(ns.as_str()));
        if current.is_some_and(|c| {
            publish::is_our_trust_configmap(c) && publish::configmap_files(c) == *files
        }) {
            results.insert(ns.clone(), Ok(target));
            continue;
        }
        let api: Api<ConfigMap> = Api::namespaced(cx.client.clone(), ns);
        let cm = publish::trust_configmap(ns, name, files);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let applied = match api.patch(name, &params, &Patch::Apply(&cm)).await {
            // Keys another field manager added survive an apply; remove them explicitly.
            Ok(applied) => {
                let stray: serde_json::Map<String, serde_json::Value> =
                    publish::configmap_files(&applied)
                        .into_keys()
                        .filter(|k| !files.contains_key(k))
                        .map(|k| (k, serde_json::Value::Null))
                        .collect();
                if stray.is_empty() {
                    Ok(())
                } else {
                    let patch = serde_json::json!({ "data": stray.clone(), "binaryData": stray });
                    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map(|_| ())
                }
            }
            Err(e) => Err(e),
        };
        match applied {
            Ok(()) => {
                count("written");
                tracing::info!(configmap = %target, files = files.len(), "published CA bundles for egress Envoys");
                results.insert(ns.clone(), Ok(target));
            }
            Err(e) => {
                count("error");
                tracing::error!(configmap = %target, error = %e, "cannot write the trust ConfigMap");
                results.insert(
                    ns.clone(),
                    Err(format!("cannot write ConfigMap {target}: {e}")),
                );
            }
        }
    }
    for c in existing
        .iter()
        .filter(|c| publish::is_our_trust_configmap(c))
    {
        let Some(ns) = c.metadata.namespace.as_deref() else {
            continue;
        };
        if desired.contains_key(ns) {
            continue;
        }
        let api: Api<ConfigMap> = Api::namespaced(cx.client.clone(), ns);
        match api.delete(name, &Default::default()).await {
            Ok(_) => {
                count("deleted");
                tracing::info!(configmap = %format!("{ns}/{name}"), "deleted a trust ConfigMap no connection needs");
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                count("error");
                tracing::warn!(configmap = %format!("{ns}/{name}"), error = %e, "cannot delete a stale trust ConfigMap");
            }
        }
    }
    results
}

fn record_objects(metrics: &Metrics, compiled: &Compiled) {
    metrics.objects.clear();
    for o in compiled.objects.values() {
        let reason = match (o.issues.first(), o.warnings.is_empty()) {
            (Some(i), _) => i.reason.as_str(),
            (None, true) => "Valid",
            (None, false) => "ValidWithWarnings",
        };
        metrics
            .objects
            .get_or_create(&ObjectLabels {
                kind: o.key.kind.as_str(),
                reason,
            })
            .inc();
    }
}

async fn load_secrets(cx: &Ctx, referenced: &BTreeSet<(String, String)>) -> Result<Secrets, Error> {
    let mut out = Secrets::new();
    let current: BTreeMap<(String, String), String> = referenced
        .iter()
        .filter_map(|(ns, name)| {
            let r = ObjectRef::<PartialObjectMeta<Secret>>::new(name).within(ns);
            let meta = cx.secret_meta.iter().find_map(|s| s.get(&r))?;
            Some((
                (ns.clone(), name.clone()),
                meta.metadata.resource_version.clone().unwrap_or_default(),
            ))
        })
        .collect();
    let cached: SecretCache = cx
        .secret_cache
        .lock()
        .map(|c| c.clone())
        .unwrap_or_default();
    let mut fresh = BTreeMap::new();
    for (key, rv) in current {
        if let Some((cached_rv, data)) = cached.get(&key)
            && *cached_rv == rv
        {
            out.insert(key.clone(), data.clone());
            fresh.insert(key, (rv, data.clone()));
            continue;
        }
        let api: Api<Secret> = Api::namespaced(cx.client.clone(), &key.0);
        if let Some(secret) = api.get_opt(&key.1).await? {
            let data = compile::secret_data(&secret);
            let rv = secret.metadata.resource_version.clone().unwrap_or_default();
            out.insert(key.clone(), data.clone());
            fresh.insert(key, (rv, data));
        }
    }
    // Unreferenced Secrets leave the cache at once.
    if let Ok(mut c) = cx.secret_cache.lock() {
        *c = fresh;
    }
    Ok(out)
}

async fn publish(cx: &Ctx, compiled: &Compiled) -> PublishOutcome {
    let s = &cx.settings;
    let api: Api<Secret> = Api::namespaced(cx.client.clone(), &s.output_namespace);
    let target = format!("{}/{}", s.output_namespace, s.output_name);
    let failed = |e: kube::Error, what: &str| {
        cx.metrics
            .publishes
            .get_or_create(&ResultLabels { result: "error" })
            .inc();
        tracing::error!(error = %e, secret = %target, "{what}");
        PublishOutcome::Failed {
            message: format!("{what} {target}: {e}"),
        }
    };
    let existing = match api.get_opt(&s.output_name).await {
        // A deleted Secret is recreated with the next generation, not with 1: the generation
        // is what users match between `status.configGeneration` and the service's logs.
        Ok(e) => e.as_ref().map(Published::of).or_else(|| {
            let last = cx.last_generation.load(Ordering::Relaxed);
            (last > 0).then(|| Published {
                hash: None,
                generation: last,
                data: BTreeMap::new(),
            })
        }),
        Err(e) => return failed(e, "cannot read the config Secret"),
    };
    match publish::plan(
        &s.output_namespace,
        &s.output_name,
        compiled,
        existing.as_ref(),
    ) {
        None => {
            let generation = existing.map_or(0, |e| e.generation);
            cx.last_generation.store(generation, Ordering::Relaxed);
            cx.metrics
                .config_generation
                .set(i64::try_from(generation).unwrap_or(i64::MAX));
            PublishOutcome::Published {
                generation,
                secret: target,
                trust: None,
            }
        }
        Some(_) if !cx.fence.holds() => failed(
            kube::Error::Service(Error::Fenced.into()),
            "not writing the config Secret",
        ),
        Some((secret, generation)) => {
            let params = PatchParams::apply(FIELD_MANAGER).force();
            let applied = match api
                .patch(&s.output_name, &params, &Patch::Apply(&secret))
                .await
            {
                Ok(applied) => remove_stale_files(&api, &s.output_name, applied, compiled).await,
                Err(e) => Err(e),
            };
            match applied {
                Ok(()) => {
                    cx.last_generation.store(generation, Ordering::Relaxed);
                    cx.metrics
                        .publishes
                        .get_or_create(&ResultLabels { result: "written" })
                        .inc();
                    cx.metrics
                        .config_generation
                        .set(i64::try_from(generation).unwrap_or(i64::MAX));
                    tracing::info!(
                        generation,
                        policies = compiled.config.policies.len(),
                        connections = compiled.config.connections.len(),
                        secret = %target,
                        "published compiled config"
                    );
                    PublishOutcome::Published {
                        generation,
                        secret: target,
                        trust: None,
                    }
                }
                Err(e) => failed(e, "cannot write the config Secret"),
            }
        }
    }
}

/// Deletes our-looking keys that an apply left behind because another field manager owns
/// them. A merge patch with `null` removes a key whoever owns it.
async fn remove_stale_files(
    api: &Api<Secret>,
    name: &str,
    applied: Secret,
    compiled: &Compiled,
) -> Result<(), kube::Error> {
    let stale = publish::stale_files(&Published::of(&applied).data, compiled);
    if stale.is_empty() {
        return Ok(());
    }
    tracing::info!(keys = ?stale, "removing stale files another field manager left in the config Secret");
    let data: serde_json::Map<String, serde_json::Value> = stale
        .into_iter()
        .map(|k| (k, serde_json::Value::Null))
        .collect();
    let patch = serde_json::json!({ "data": data });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(|_| ())
}
