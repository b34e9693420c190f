//! The watches: untyped stores for both resource kinds, Secret metadata, the trust ConfigMaps,
//! and the tasks that wake the compiler when something that matters changes.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::crd::object::Loaded;
use crate::crd::{FhirConnection, FhirSecurityPolicy};

/// Every resource change matters, but not the individual objects of a (re)list: the store is
/// complete, and worth a compile, only at `InitDone`.
fn any_change<K>(ev: &Event<K>) -> bool {
    !matches!(ev, Event::Init | Event::InitApply(_))
}

pub(super) fn apis<K>(client: &Client, namespaces: &[String]) -> Vec<Api<K>>
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
pub(super) fn drive<K, S>(
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

pub(super) fn watch_kind<K, F>(
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
pub(super) fn watch_dynamic(
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

pub(super) fn policy_resource() -> ApiResource {
    ApiResource::erase::<FhirSecurityPolicy>(&())
}

pub(super) fn connection_resource() -> ApiResource {
    ApiResource::erase::<FhirConnection>(&())
}

pub(super) fn snapshot<K>(stores: &[Store<K>]) -> Vec<K>
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

/// Every object in the stores, read through [`crate::crd::object`]. An object whose metadata cannot even be
/// read is skipped with a warning (the API server does not store such objects).
pub(super) fn loaded<K>(
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
