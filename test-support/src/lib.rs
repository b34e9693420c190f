//! The test harness shared by fhirguard's crates (a dev-dependency only): free loopback ports,
//! child processes with their logs, waiting for a condition, a throwaway PKI, JWT signing keys
//! and JWKS documents, config directories laid out like a mounted Secret, and the discovery
//! of the real binaries the end-to-end tests need (Envoy, helm, kube-apiserver + etcd +
//! kubectl).
//!
//! A missing real binary fails the test that needs it. Only an explicit opt-out turns that
//! into a skip, and the skip is printed past the test harness's output capture; see [`bins`].
// Test code: a failed unwrap here is a failed test, which is what a harness should do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod bins;
pub mod config_dir;
pub mod envoy;
pub mod fhir_stub;
pub mod http;
pub mod jwt;
pub mod pki;
pub mod ports;
pub mod process;
pub mod wait;

use std::path::PathBuf;

/// The workspace root (this crate lives one level below it).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}
