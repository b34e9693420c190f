//! The gRPC ext_authz server: the Envoy adapter, the service that runs Checks, gRPC health,
//! Prometheus metrics and the HTTP admin port.

pub mod envoy;
pub mod health;
pub mod http;
pub mod metrics;
pub mod service;
