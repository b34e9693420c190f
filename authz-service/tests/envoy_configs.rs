//! The shipped Envoy configurations are valid for the Envoy we test with.

// A test crate of its own: clippy.toml's allow-*-in-tests covers #[test] functions only, and
// here a failed unwrap in a helper is a failed test as well.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;

#[test]
fn example_envoy_configs_validate() {
    let Some(envoy) = common::real_envoy::envoy_bin() else {
        return;
    };
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/envoy");
    let mut checked = Vec::new();
    for name in [
        "sidecar.yaml",
        "gateway.yaml",
        "demo-envoy.yaml",
        "egress-envoy.yaml",
    ] {
        let mut text = std::fs::read_to_string(dir.join(name)).unwrap();
        // Identity headers spelled with underscores must never reach a FHIR server whose
        // framework reads `_` as `-`: every shipped listener refuses them.
        assert_eq!(
            text.matches("http_connection_manager.v3.HttpConnectionManager")
                .count(),
            text.matches("headers_with_underscores_action: REJECT_REQUEST")
                .count(),
            "{name}: every HttpConnectionManager sets headers_with_underscores_action"
        );
        // The egress example names the CA file inside the mounted trust ConfigMap.
        let tmp = tempfile::tempdir().unwrap();
        let ca = tmp.path().join("connection_clinical_partner_ca.pem");
        std::fs::write(&ca, common::TestPki::new().ca_pem).unwrap();
        text = text.replace(
            "/etc/fhirguard/trust/connection_clinical_partner_ca.pem",
            ca.to_str().unwrap(),
        );
        let cfg = tmp.path().join(name);
        std::fs::write(&cfg, text).unwrap();
        let out = std::process::Command::new(&envoy)
            .args(["--mode", "validate", "-c"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name} invalid:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        checked.push(name);
    }
    assert_eq!(checked.len(), 4);
}
