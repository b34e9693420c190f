//! fhirguard as an Envoy dynamic module (`libfhirguard_envoy_module.so`): the in-process mode.
//!
//! Envoy's `envoy.filters.http.dynamic_modules` filter loads this library and calls its hooks
//! for every stream. The module runs the same Check executor and decision core as the ext_authz
//! service (`fhirguard_authz::runtime::executor`) and gives the same answers; it only
//! translates between Envoy's stream and the core's values.
//!
//! - [`abi`]: the C ABI (hooks, callbacks); the only module with `unsafe`.
//! - `filter`: a stream's life: request in, decision (inline, or parked on the runtime and
//!   resumed through Envoy's scheduler), answer out.
//! - `host`: the module's tokio runtime and one executor per config directory with hot reload.
//! - `query`: the query rewrite for narrowed searches, as Envoy's ext_authz filter does it.
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

#[allow(unsafe_code)]
pub mod abi;
mod filter;
mod host;
mod query;

pub use filter::{CONNECTION_KEY, METADATA_NAMESPACE, POLICY_KEY};
