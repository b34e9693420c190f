#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
//! fhirguard's data plane: the Envoy ext_authz service for FHIR APIs.
//!
//! Layers, from pure to I/O:
//! - [`config`]: the compiled-config format and its validation (no server dependencies; the
//!   operator uses only this).
//! - [`core`]: the pure decision core. Plain values in, a [`core::policy::Decision`] out.
//! - behind the `server` feature: credential verification ([`verify`]), key and token fetching,
//!   lookups and the loaded runtime state ([`runtime`]), and the gRPC service with its metrics
//!   and HTTP port ([`server`]).

pub mod config;
pub mod core;

#[cfg(feature = "server")]
pub mod runtime;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod verify;
