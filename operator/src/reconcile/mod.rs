//! The controller: the only module that holds a Kubernetes client.
//!
//! The output is one config Secret compiled from *all* resources, so rather than reconciling
//! objects one by one (kube's `Controller`), every change of a watched object triggers one
//! global recompile (debounced), like Envoy Gateway's translator. A recompile publishes the
//! Secret only when its content hash changed, then brings each object's status and Events up to
//! date. Nothing is compiled before every watch has listed its objects: an early compile would
//! publish a config missing policies that simply had not arrived yet.
//!
//! Secrets are watched as metadata only; the data of a Secret is fetched (and cached by
//! resourceVersion) only while a resource references it, so the operator never holds every
//! Secret of a namespace in memory and only referenced keys reach the output.

pub mod lease;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ApiResource, DynamicObject, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::compile::{self, Compiled, Kind, Secrets};
use crate::crd::{FhirConnection, FhirSecurityPolicy};
use crate::metrics::{Metrics, ObjectLabels, ResultLabels};
use crate::object::{self, Loaded};
use crate::output::{self, FIELD_MANAGER, Published};
use crate::status::{self, PublishOutcome};
use lease::{Elector, Fence, LeaseSettings};

#[derive(Debug, Clone)]
pub struct Settings {
    /// Namespaces whose resources and Secrets are watched; empty means all namespaces.
    pub namespaces: Vec<String>,
    /// Where the compiled config Secret is published.
    pub output_namespace: String,
    pub output_name: String,
    /// Name of the per-namespace ConfigMap with the FhirConnections' CA bundles for egress
    /// Envoys; `None` publishes none.
    pub trust_configmap: Option<String>,
    pub lease: LeaseSettings,
    /// Changes arriving within this window are compiled together.
    pub debounce: Duration,
    /// Recompile at least this often, as a safety net for missed events.
    pub resync: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("lost the leader lease; stepped down so that a single replica writes")]
    LostLease,
    #[error("not writing: this replica's hold on the leader lease has run out")]
    Fenced,
}

/// Campaigns for the lease and leads while holding it, until `shutdown` resolves (then it
/// releases the lease). A lost lease (the API server unreachable past the renew deadline, or
/// another replica holding it) means stepping down and campaigning again, in this process.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    tokio::pin!(shutdown);
    let lease_api = || Api::namespaced(client.clone(), &settings.lease.namespace);
    let mut elector = Elector::new(lease_api(), settings.lease.clone());
    tracing::info!(identity = %settings.lease.identity, lease = %format!("{}/{}", settings.lease.namespace, settings.lease.name), "waiting for the leader lease");
    loop {
        if !campaign(&mut elector, &settings.lease, &metrics, &mut shutdown).await {
            return Ok(());
        }
        tracing::info!(identity = %settings.lease.identity, "acquired the leader lease");
        metrics.leader.set(1);
        metrics.leadership_change("acquired");
        let fence = Arc::new(Fence::default());
        fence.extend_to(Instant::now() + settings.lease.renew_deadline());
        let (lost_tx, lost_rx) = watch::channel(false);
        let renewer = tokio::spawn(renew(elector, lost_tx, fence.clone()));
        let result = lead(
            client.clone(),
            &settings,
            &metrics,
            fence.clone(),
            lost_rx,
            &mut shutdown,
        )
        .await;
        fence.revoke();
        metrics.leader.set(0);
        renewer.abort();
        // The renewer owned the elector; a fresh one with the same identity carries on.
        elector = Elector::new(lease_api(), settings.lease.clone());
        match result {
            Err(Error::LostLease) => {
                metrics.leadership_change("lost");
                metrics.set_readiness(false, "stepped down after losing the leader lease");
                tracing::warn!(
                    identity = %settings.lease.identity,
                    "lost the leader lease; stepped down (watches and writes stopped), campaigning again"
                );
            }
            other => {
                elector.release().await;
                tracing::info!("released the leader lease");
                return other;
            }
        }
    }
}

/// Tries for the lease until it is ours (true) or `shutdown` resolves (false). Readiness says
/// whether this replica can reach the API server: a standby that can is ready (it has nothing
/// to do until it leads); one that has not checked the lease successfully for a renew
/// deadline is not.
async fn campaign(
    elector: &mut Elector,
    lease: &LeaseSettings,
    metrics: &Metrics,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> bool {
    let mut last_ok: Option<Instant> = None;
    let started = Instant::now();
    loop {
        // A hung API server must not stall the campaign (or the readiness it reports).
        let attempt = tokio::time::timeout(
            lease.retry.max(Duration::from_secs(1)),
            elector.try_acquire_or_renew(),
        )
        .await;
        match attempt {
            Ok(Ok(true)) => return true,
            Ok(Ok(false)) => {
                last_ok = Some(Instant::now());
                let leader = elector.holder().unwrap_or("nobody").to_string();
                metrics.set_readiness(true, format!("standby; {leader} holds the leader lease"));
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "lease check failed"),
            Err(_) => tracing::warn!("lease check timed out"),
        }
        let since = last_ok.unwrap_or(started).elapsed();
        if since > lease.renew_deadline() {
            metrics.set_readiness(
                false,
                format!(
                    "cannot reach the Kubernetes API: no lease check succeeded for {}s",
                    since.as_secs()
                ),
            );
        }
        tokio::select! {
            _ = shutdown.as_mut() => return false,
            _ = tokio::time::sleep(lease.retry) => {}
        }
    }
}

/// Keeps the lease; signals `lost` when it could not be renewed within the deadline. Each
/// attempt is bounded by the time left, so an API server that hangs (rather than refusing)
/// cannot keep this replica leading past the deadline.
async fn renew(mut elector: Elector, lost: watch::Sender<bool>, fence: Arc<Fence>) {
    let deadline = elector.settings().renew_deadline();
    let retry = elector.settings().retry;
    let mut last = Instant::now();
    loop {
        tokio::time::sleep(retry.min(deadline.saturating_sub(last.elapsed()))).await;
        let left = deadline.saturating_sub(last.elapsed());
        if left.is_zero() {
            tracing::error!("could not renew the lease within {deadline:?}");
            fence.revoke();
            let _ = lost.send(true);
            return;
        }
        let started = Instant::now();
        match tokio::time::timeout(left, elector.try_acquire_or_renew()).await {
            Ok(Ok(true)) => {
                // Measured from before the request: the lease's renewTime is no later.
                last = started;
                fence.extend_to(started + deadline);
            }
            Ok(Ok(false)) => {
                tracing::error!("another replica holds the lease");
                fence.revoke();
                let _ = lost.send(true);
                return;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "lease renewal failed"),
            Err(_) => tracing::warn!("lease renewal timed out"),
        }
    }
}

/// Every resource change matters, but not the individual objects of a (re)list: the store is
/// complete, and worth a compile, only at `InitDone`.
fn any_change<K>(ev: &Event<K>) -> bool {
    !matches!(ev, Event::Init | Event::InitApply(_))
}

/// Aborts the watch tasks when leadership ends.
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

type Referenced = Arc<RwLock<BTreeSet<(String, String)>>>;
/// (namespace, name) → (resourceVersion read, key → bytes).
type SecretCache = BTreeMap<(String, String), (String, BTreeMap<String, Vec<u8>>)>;

struct Ctx {
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    /// Both kinds are watched untyped and read through [`object`]: a typed watch fails the
    /// whole list on one object it cannot deserialise (say, one written against a newer CRD),
    /// which would silently freeze the config for everyone.
    policies: Vec<Store<DynamicObject>>,
    connections: Vec<Store<DynamicObject>>,
    secret_meta: Vec<Store<PartialObjectMeta<Secret>>>,
    /// The trust ConfigMaps (by name, in every watched namespace) as they are now.
    trust: Vec<Store<ConfigMap>>,
    /// Referenced Secrets' data by (namespace, name), with the resourceVersion it was read at.
    secret_cache: Mutex<SecretCache>,
    referenced: Referenced,
    recorder: Recorder,
    /// The generation this leader last published or found, so a deleted Secret does not
    /// restart the count.
    last_generation: AtomicU64,
    /// Checked before every write: no write starts once renewals stopped working.
    fence: Arc<Fence>,
}

fn apis<K>(client: &Client, namespaces: &[String]) -> Vec<Api<K>>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    if namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    }
}

/// Drives a reflector stream in a task, waking the compiler when `interesting` says so.
fn drive<K, S>(
    stream: S,
    notify: Arc<Notify>,
    interesting: impl Fn(&Event<K>) -> bool + Send + 'static,
) -> JoinHandle<()>
where
    K: Send + 'static,
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(ev) => {
                    if interesting(&ev) {
                        notify.notify_one();
                    }
                }
                Err(e) => tracing::warn!(error = %e, "watch error; retrying with backoff"),
            }
        }
    })
}

fn watch_kind<K, F>(
    client: &Client,
    namespaces: &[String],
    notify: &Arc<Notify>,
    tasks: &mut Vec<JoinHandle<()>>,
    interesting: F,
) -> Vec<Store<K>>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    F: Fn(&Event<K>) -> bool + Clone + Send + 'static,
{
    apis::<K>(client, namespaces)
        .into_iter()
        .map(|api| {
            let (store, writer) = reflector::store();
            let stream = reflector::reflector(
                writer,
                watcher::watcher(api, watcher::Config::default()).default_backoff(),
            );
            tasks.push(drive(stream, notify.clone(), interesting.clone()));
            store
        })
        .collect()
}

/// Like [`watch_kind`], for a custom resource watched as [`DynamicObject`]s.
fn watch_dynamic(
    client: &Client,
    namespaces: &[String],
    ar: &ApiResource,
    notify: &Arc<Notify>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Vec<Store<DynamicObject>> {
    let apis: Vec<Api<DynamicObject>> = if namespaces.is_empty() {
        vec![Api::all_with(client.clone(), ar)]
    } else {
        namespaces
            .iter()
            .map(|ns| Api::namespaced_with(client.clone(), ns, ar))
            .collect()
    };
    apis.into_iter()
        .map(|api| {
            let writer = reflector::store::Writer::new(ar.clone());
            let store = writer.as_reader();
            let stream = reflector::reflector(
                writer,
                watcher::watcher(api, watcher::Config::default()).default_backoff(),
            );
            tasks.push(drive(stream, notify.clone(), any_change::<DynamicObject>));
            store
        })
        .collect()
}

fn policy_resource() -> ApiResource {
    ApiResource::erase::<FhirSecurityPolicy>(&())
}

fn connection_resource() -> ApiResource {
    ApiResource::erase::<FhirConnection>(&())
}

async fn lead(
    client: Client,
    settings: &Settings,
    metrics: &Arc<Metrics>,
    fence: Arc<Fence>,
    mut lost: watch::Receiver<bool>,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<(), Error> {
    metrics.set_readiness(false, "leading; watches not synced yet");
    let notify = Arc::new(Notify::new());
    let referenced: Referenced = Arc::default();
    let mut tasks = Vec::new();
    // Resource changes always matter; a Secret change only when a resource references it.
    let policies = watch_dynamic(
        &client,
        &settings.namespaces,
        &policy_resource(),
        &notify,
        &mut tasks,
    );
    let connections = watch_dynamic(
        &client,
        &settings.namespaces,
        &connection_resource(),
        &notify,
        &mut tasks,
    );
    let refs = referenced.clone();
    let secret_meta = watch_kind::<PartialObjectMeta<Secret>, _>(
        &client,
        &settings.namespaces,
        &notify,
        &mut tasks,
        move |ev: &Event<PartialObjectMeta<Secret>>| match ev {
            Event::Apply(s) | Event::Delete(s) => {
                let key = (s.namespace().unwrap_or_default(), s.name_any());
                refs.read().map(|r| r.contains(&key)).unwrap_or(true)
            }
            Event::InitDone => true,
            Event::Init | Event::InitApply(_) => false,
        },
    );
    // The published Secret itself: an edit or a deletion by someone else is put back at once
    // rather than at the next resync. Our own writes come back here too and compile to "no
    // change", which costs one GET.
    let output_api: Api<PartialObjectMeta<Secret>> =
        Api::namespaced(client.clone(), &settings.output_namespace);
    let by_name =
        watcher::Config::default().fields(&format!("metadata.name={}", settings.output_name));
    tasks.push(drive(
        watcher::watcher(output_api, by_name).default_backoff(),
        notify.clone(),
        |ev: &Event<PartialObjectMeta<Secret>>| matches!(ev, Event::Apply(_) | Event::Delete(_)),
    ));
    // The trust ConfigMaps, by name: to know which exist (and delete those no longer needed)
    // and to put back hand edits at once.
    let mut trust = Vec::new();
    if let Some(name) = &settings.trust_configmap {
        let by_name = watcher::Config::default().fields(&format!("metadata.name={name}"));
        for api in apis::<ConfigMap>(&client, &settings.namespaces) {
            let (store, writer) = reflector::store();
            let stream = reflector::reflector(
                writer,
                watcher::watcher(api, by_name.clone()).default_backoff(),
            );
            tasks.push(drive(stream, notify.clone(), |ev: &Event<ConfigMap>| {
                matches!(ev, Event::Apply(_) | Event::Delete(_))
            }));
            trust.push(store);
        }
    }
    let _tasks = Tasks(tasks);

    let cx = Ctx {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "fhirguard-operator".into(),
                instance: Some(settings.lease.identity.clone()),
            },
        ),
        client,
        settings: settings.clone(),
        metrics: metrics.clone(),
        policies,
        connections,
        secret_meta,
        trust,
        secret_cache: Mutex::default(),
        referenced,
        last_generation: AtomicU64::new(0),
        fence,
    };

    let synced = async {
        for s in &cx.policies {
            s.wait_until_ready().await.ok();
        }
        for s in &cx.connections {
            s.wait_until_ready().await.ok();
        }
        for s in &cx.secret_meta {
            s.wait_until_ready().await.ok();
        }
        for s in &cx.trust {
            s.wait_until_ready().await.ok();
        }
    };
    tokio::select! {
        _ = synced => {}
        _ = shutdown.as_mut() => return Ok(()),
        _ = lost.changed() => return Err(Error::LostLease),
    }
    metrics.set_readiness(true, "leading");
    tracing::info!("watches synced; compiling");

    let mut failures: u32 = 0;
    loop {
        // A reconcile stuck on a hung API server is abandoned as soon as the lease is lost.
        let outcome = tokio::select! {
            r = reconcile_once(&cx) => r,
            _ = lost.changed() => return Err(Error::LostLease),
        };
        let delay = match outcome {
            Ok(()) => {
                failures = 0;
                None
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let backoff = Duration::from_millis(500u64.saturating_mul(1 << failures.min(7)));
                tracing::warn!(error = %e, retry_in = ?backoff, "reconcile failed");
                Some(backoff)
            }
        };
        let wait = delay.unwrap_or(settings.resync);
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.as_mut() => return Ok(()),
            _ = lost.changed() => return Err(Error::LostLease),
        }
        // Let a burst of changes (kubectl apply -f dir/) land before compiling.
        tokio::select! {
            _ = tokio::time::sleep(settings.debounce) => {}
            _ = shutdown.as_mut() => return Ok(()),
            _ = lost.changed() => return Err(Error::LostLease),
        }
    }
}

fn snapshot<K>(stores: &[Store<K>]) -> Vec<K>
where
    K: reflector::Lookup + Clone,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    stores
        .iter()
        .flat_map(|s| s.state())
        .map(|k| (*k).clone())
        .collect()
}

/// Every object in the stores, read through [`object`]. An object whose metadata cannot even be
/// read is skipped with a warning (the API server does not store such objects).
fn loaded<K>(
    stores: &[Store<DynamicObject>],
    parse: fn(&serde_json::Value) -> Result<Loaded<K>, String>,
) -> Vec<Loaded<K>> {
    snapshot(stores)
        .iter()
        .filter_map(|d| {
            let doc = serde_json::to_value(d).ok()?;
            parse(&doc)
                .map_err(
                    |e| tracing::warn!(object = %d.name_any(), error = %e, "unreadable object"),
                )
                .ok()
        })
        .collect()
}

async fn reconcile_once(cx: &Ctx) -> Result<(), Error> {
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
    let desired = output::trust_files(compiled);
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
            output::is_our_trust_configmap(c) && output::configmap_files(c) == *files
        }) {
            results.insert(ns.clone(), Ok(target));
            continue;
        }
        let api: Api<ConfigMap> = Api::namespaced(cx.client.clone(), ns);
        let cm = output::trust_configmap(ns, name, files);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let applied = match api.patch(name, &params, &Patch::Apply(&cm)).await {
            // Keys another field manager added survive an apply; remove them explicitly.
            Ok(applied) => {
                let stray: serde_json::Map<String, serde_json::Value> =
                    output::configmap_files(&applied)
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
        .filter(|c| output::is_our_trust_configmap(c))
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
            let data = crate::render::secret_data(&secret);
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
    match output::plan(
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
    let stale = output::stale_files(&Published::of(&applied).data, compiled);
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

fn now() -> Time {
    // Kubernetes stores condition times with second precision; using the same precision here
    // keeps a freshly written status equal to what is read back.
    let t = Timestamp::now();
    Time(Timestamp::from_second(t.as_second()).unwrap_or(t))
}

async fn update_statuses(
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
