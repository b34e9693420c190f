//! The HTTP port: `/healthz` (process alive), `/readyz` (a valid config is loaded) and
//! `/metrics` (Prometheus text format).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::service::Service;

pub fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(service)
}

async fn readyz(State(s): State<Arc<Service>>) -> impl IntoResponse {
    match s.runtime() {
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

async fn metrics(State(s): State<Arc<Service>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}
