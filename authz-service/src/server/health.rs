//! `grpc.health.v1.Health` on the gRPC port, so that Envoy's active gRPC health checks (and
//! gRPC-aware load balancers) see the same readiness as `/readyz`: SERVING while a config is
//! loaded and the process is not draining for shutdown, NOT_SERVING otherwise.
//!
//! Both the overall status (service name `""`) and `envoy.service.auth.v3.Authorization`
//! follow [`Executor::serving`].

use std::sync::Arc;

use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};

use crate::runtime::executor::Executor;

/// The name Envoy's `grpc_health_check.service_name` can ask for.
pub const AUTHORIZATION_SERVICE: &str = "envoy.service.auth.v3.Authorization";

/// The health service, kept in step with `service` by a task that ends with the process.
pub fn server(service: &Arc<Executor>) -> HealthServer<impl Health> {
    let (reporter, server) = tonic_health::server::health_reporter();
    let mut serving = service.serving();
    tokio::spawn(async move {
        loop {
            let status = if *serving.borrow_and_update() {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            for name in ["", AUTHORIZATION_SERVICE] {
                reporter.set_service_status(name, status).await;
            }
            if serving.changed().await.is_err() {
                return;
            }
        }
    });
    server
}
