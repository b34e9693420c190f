#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
//! fhirguard's data plane: the Envoy ext_authz service for FHIR APIs.
//!
//! Layers, from pure to I/O:
//! - [`config`], [`htpasswd`]: the compiled-config format and its validation (no server
//!   dependencies; the operator uses only these).
//! - [`fhir`], [`smart`], [`policy`], [`answer`]: the pure decision core. Plain values in, a
//!   [`policy::Decision`] out.
//! - behind the `server` feature: credential verification ([`basic`], [`jwt`]) with caches
//!   bounded by bytes ([`cache`]), key and token fetching with backoff ([`jwks`], [`oauth`],
//!   [`backoff`]), TLS trust ([`tls`]), the loaded runtime state and hot reload ([`state`],
//!   [`reload`]), the Envoy adapter ([`envoy`]), gRPC health ([`health`]), metrics and the
//!   HTTP port.

pub mod answer;
pub mod compartment;
pub mod config;
pub mod definitions;
pub mod driver;
pub mod fhir;
pub mod granular;
pub mod htpasswd;
pub mod json;
pub mod operations;
pub mod policy;
pub mod smart;

#[cfg(feature = "server")]
pub mod backoff;
#[cfg(feature = "server")]
pub mod basic;
#[cfg(feature = "server")]
pub mod cache;
#[cfg(feature = "server")]
pub mod envoy;
#[cfg(feature = "server")]
pub mod health;
#[cfg(feature = "server")]
pub mod http;
#[cfg(feature = "server")]
pub mod jwks;
#[cfg(feature = "server")]
pub mod jwt;
#[cfg(feature = "server")]
pub mod lookup;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod oauth;
#[cfg(feature = "server")]
pub mod reload;
#[cfg(feature = "server")]
pub mod service;
#[cfg(feature = "server")]
pub mod state;
#[cfg(feature = "server")]
pub mod tls;
