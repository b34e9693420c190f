//! fhirguard's data plane: the decision core and the hosts that run it.
//!
//! Layers, from pure to I/O (see ARCHITECTURE.md for who may import whom):
//! - [`config`]: the compiled-config format and its validation. No feature needed; the
//!   operator links only this.
//! - [`core`]: the pure decision core: FHIR classification, SMART, policy steps, the Check
//!   driver ([`core::driver::Check`]) and the answers. Plain values in, a decision out; the
//!   driver asks its host for slow work instead of doing it.
//! - [`observe`]: the trait through which the layers below a host report (metrics, stats).
//! - [`verify`] (feature `verify`): JWT and htpasswd verification and the byte-bounded caches;
//!   CPU only, no async runtime.
//! - [`runtime`] (feature `runtime`): the Check executor, config loading and hot reload, key
//!   and OAuth token fetching, compartment lookups (tokio, reqwest).
//! - [`server`] (feature `server`, the default): the Envoy ext_authz gRPC adapter, gRPC
//!   health, Prometheus metrics and the HTTP admin port.

pub mod config;
pub mod core;
pub mod observe;

#[cfg(feature = "runtime")]
pub mod runtime;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "verify")]
pub mod verify;
