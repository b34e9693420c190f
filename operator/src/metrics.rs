//! Operator metrics and the HTTP port (`/healthz`, `/readyz`, `/metrics`). Labels are bounded:
//! kinds and reasons are enums. Imports nothing from the other layers; [`crate::reconcile`]
//! records into it.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectLabels {
    pub kind: &'static str,
    /// `Valid`, `ValidWithWarnings`, or the reason it was not accepted.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChangeLabels {
    /// `acquired` or `lost`.
    pub change: &'static str,
}

pub struct Metrics {
    registry: Registry,
    /// 1 while this replica holds the lease.
    pub leader: Gauge,
    pub compiles: Counter,
    /// Writes of the config Secret, by result.
    pub publishes: Family<ResultLabels, Counter>,
    /// Status subresource writes, by result.
    pub status_updates: Family<ResultLabels, Counter>,
    /// Writes and deletions of the trust ConfigMaps, by result (`written`, `deleted`, `error`).
    pub trust_publishes: Family<ResultLabels, Counter>,
    /// The generation in the published config.
    pub config_generation: Gauge,
    /// Objects by kind and verdict, as of the last compile.
    pub objects: Family<ObjectLabels, Gauge>,
    /// Times this process took the lease, and lost it (stepped down to campaign again).
    pub leadership_changes: Family<ChangeLabels, Counter>,
    /// What `/readyz` answers: ready or not, and why.
    readiness: Mutex<(bool, String)>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("fhirguard_operator");
        let leader = Gauge::default();
        let compiles = Counter::default();
        let publishes = Family::<ResultLabels, Counter>::default();
        let status_updates = Family::<ResultLabels, Counter>::default();
        let trust_publishes = Family::<ResultLabels, Counter>::default();
        let config_generation = Gauge::default();
        let objects = Family::<ObjectLabels, Gauge>::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        registry.register(
            "compiles",
            "Compilations of the resources into a config",
            compiles.clone(),
        );
        registry.register(
            "config_publishes",
            "Writes of the config Secret by result (unchanged content is not written)",
            publishes.clone(),
        );
        registry.register(
            "status_updates",
            "Status subresource writes by result",
            status_updates.clone(),
        );
        registry.register(
            "trust_publishes",
            "Writes and deletions of the per-namespace trust ConfigMaps (CA bundles for egress Envoys) by result",
            trust_publishes.clone(),
        );
        registry.register(
            "config_generation",
            "Generation of the published compiled config",
            config_generation.clone(),
        );
        registry.register(
            "objects",
            "Resources by kind and by the reason of their Accepted condition",
            objects.clone(),
        );
        let leadership_changes = Family::<ChangeLabels, Counter>::default();
        registry.register(
            "leadership_changes",
            "Leader lease acquired, or lost (the replica stepped down and campaigns again)",
            leadership_changes.clone(),
        );
        Metrics {
            registry,
            leader,
            compiles,
            publishes,
            status_updates,
            trust_publishes,
            config_generation,
            objects,
            leadership_changes,
            readiness: Mutex::new((false, "starting".into())),
        }
    }

    /// Sets what `/readyz` answers; `why` says which state the replica is in.
    pub fn set_readiness(&self, ready: bool, why: impl Into<String>) {
        if let Ok(mut r) = self.readiness.lock() {
            *r = (ready, why.into());
        }
    }

    pub fn readiness(&self) -> (bool, String) {
        self.readiness
            .lock()
            .map(|r| r.clone())
            .unwrap_or((false, "readiness unknown".into()))
    }

    pub fn leadership_change(&self, change: &'static str) {
        self.leadership_changes
            .get_or_create(&ChangeLabels { change })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(encode))
        .with_state(metrics)
}

async fn readyz(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    match m.readiness() {
        (true, why) => (StatusCode::OK, format!("ready: {why}\n")),
        (false, why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn encode(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
}
