//! Layer 4, the controller: the only module that holds a Kubernetes client. It watches, runs
//! the pure layers ([`crate::compile`], [`crate::publish`], [`crate::status`]) and writes what
//! they decide. [`lease`] keeps a single replica writing; [`watches`] keeps the stores;
//! [`write`] runs one reconcile (Secrets in, config Secret and trust ConfigMaps out);
//! [`statuses`] writes conditions and Events.
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
mod statuses;
mod watches;
mod write;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{DynamicObject, PartialObjectMeta};
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use lease::{Elector, Fence, LeaseSettings};
use watches::{apis, connection_resource, drive, policy_resource, watch_dynamic, watch_kind};
use write::reconcile_once;

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

/// Aborts the watch tasks when leadership ends.
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

pub(super) type Referenced = Arc<RwLock<BTreeSet<(String, String)>>>;
/// (namespace, name) → (resourceVersion read, key → bytes).
pub(super) type SecretCache = BTreeMap<(String, String), (String, BTreeMap<String, Vec<u8>>)>;

pub(super) struct Ctx {
    pub(super) client: Client,
    pub(super) settings: Settings,
    pub(super) metrics: Arc<Metrics>,
    /// Both kinds are watched untyped and read through [`object`]: a typed watch fails the
    /// whole list on one object it cannot deserialise (say, one written against a newer CRD),
    /// which would silently freeze the config for everyone.
    pub(super) policies: Vec<Store<DynamicObject>>,
    pub(super) connections: Vec<Store<DynamicObject>>,
    pub(super) secret_meta: Vec<Store<PartialObjectMeta<Secret>>>,
    /// The trust ConfigMaps (by name, in every watched namespace) as they are now.
    pub(super) trust: Vec<Store<ConfigMap>>,
    /// Referenced Secrets' data by (namespace, name), with the resourceVersion it was read at.
    pub(super) secret_cache: Mutex<SecretCache>,
    pub(super) referenced: Referenced,
    pub(super) recorder: Recorder,
    /// The generation this leader last published or found, so a deleted Secret does not
    /// restart the count.
    pub(super) last_generation: AtomicU64,
    /// Checked before every write: no write starts once renewals stopped working.
    pub(super) fence: Arc<Fence>,
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
