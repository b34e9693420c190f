//! The HTTP port: `/healthz` (process alive), `/readyz` (a valid config is loaded and the
//! process is not draining for shutdown) and `/metrics` (Prometheus text format).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::runtime::executor::Executor;
use crate::server::metrics::Metrics;

/// What the HTTP handlers read.
#[derive(Clone)]
pub struct Admin {
    pub executor: Arc<Executor>,
    pub metrics: Arc<Metrics>,
}

pub fn router(executor: Arc<Executor>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/connections", get(connections))
        .with_state(Admin { executor, metrics })
}

async fn readyz(State(a): State<Admin>) -> impl IntoResponse {
    let s = &a.executor;
    match s.runtime() {
        Some(_) if s.is_draining() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down\n".to_string(),
        ),
        Some(rt) => (
            StatusCode::OK,
            format!("ready: config generation {}\n", rt.config.generation),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no valid config loaded\n".to_string(),
        ),
    }
}

/// Outbound connections and their OAuth token state (never the token itself).
async fn connections(State(a): State<Admin>) -> impl IntoResponse {
    let mut out = Vec::new();
    if let Some(rt) = a.executor.runtime() {
        for c in &rt.config.connections {
            let id = format!("{}/{}", c.namespace, c.name);
            let (auth, token) = match rt.connections.get(&id) {
                Some(crate::runtime::state::Outbound::OAuth(src)) => ("oauth", Some(src.status())),
                _ if c.auth.basic.is_some() => ("basic", None),
                _ => ("none", None),
            };
            out.push(serde_json::json!({
                "connection": id,
                "url": c.url,
                "auth": auth,
                "tls": format!("{:?}", c.tls.mode),
                "caFile": c.tls.ca_file,
                "token": token,
            }));
        }
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string_pretty(&out).unwrap_or_default(),
    )
}

async fn metrics_text(State(a): State<Admin>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        a.metrics.encode(),
    )
}
