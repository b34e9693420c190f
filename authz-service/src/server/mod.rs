//! The gRPC ext_authz server: the Envoy adapter, gRPC health, Prometheus metrics and the HTTP
//! admin port, around the runtime's executor.

pub mod envoy;
pub mod health;
pub mod http;
pub mod metrics;
