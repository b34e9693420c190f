//! Outbound end to end through real Envoy, with the shipped example egress config
//! (`examples/envoy/egress-envoy.yaml`): a workload request without the partner's
//! credentials reaches a local HTTPS FHIR stand-in with the OAuth token fhirguard obtained,
//! and Envoy verifies the upstream TLS against the CA file from the trust object
//! (`fhirguard-operator render --trust-dir`, what the operator publishes as the trust
//! ConfigMap): Envoy is given that directory only, never the config directory with the
//! client secret.

// A test crate of its own: clippy.toml's allow-*-in-tests covers #[test] functions only, and
// here a failed unwrap in a helper is a failed test as well.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::https::{Mode, TokenServer, start_https_echo};
use common::real_envoy::{envoy_bin, free_port, run_envoy};
use common::{TestPki, init, start_service};

/// The operator binary from the same workspace build (`cargo test --workspace` builds it).
fn operator_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|p| p.parent()).unwrap();
    let bin = dir.join("fhirguard-operator");
    assert!(
        bin.exists(),
        "{} missing: run the tests with `cargo test --workspace`",
        bin.display()
    );
    bin
}

fn example_with(grpc: u16, port: u16, admin: u16, stub: u16, trust_dir: &str) -> String {
    let example = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/envoy/egress-envoy.yaml"),
    )
    .unwrap();
    let replaced = example
        .replace("port_value: 10001", &format!("port_value: {port}"))
        .replace("port_value: 9902", &format!("port_value: {admin}"))
        .replace("port_value: 9001", &format!("port_value: {grpc}"))
        .replace("port_value: 443", &format!("port_value: {stub}"))
        .replace("partner.example.org", "localhost")
        .replace("/etc/fhirguard/trust/", &format!("{trust_dir}/"));
    assert_ne!(example, replaced);
    replaced
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_reaches_a_partner_with_injected_oauth_and_verified_tls() {
    let Some(envoy) = envoy_bin() else { return };
    init();
    let pki = TestPki::new();
    let tokens = TokenServer::start(&pki, Mode::Ok { expires_in: 3600 }, Duration::ZERO).await;
    let stub = start_https_echo(&pki).await;

    // What a user applies, rendered offline exactly as the operator would publish it.
    let ca = pki
        .ca_pem
        .lines()
        .map(|l| format!("    {l}\n"))
        .collect::<String>();
    let objects = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: partner-ca, namespace: clinical}}\nstringData:\n  ca.crt: |\n{ca}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: partner-oauth, namespace: clinical}}\nstringData: {{client-secret: s3cr3t}}\n---\napiVersion: fhirguard.dev/v1alpha1\nkind: FhirConnection\nmetadata: {{name: partner, namespace: clinical}}\nspec:\n  url: https://localhost:{}/fhir/r4\n  auth:\n    oauth:\n      tokenUrl: {}\n      clientId: fhirguard\n      clientSecretRef: {{name: partner-oauth, key: client-secret}}\n      scopes: [\"system/*.rs\"]\n  tls: {{mode: CustomBundle, caBundleSecretRef: {{name: partner-ca}}}}\n",
        stub.port(),
        tokens.url()
    );
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("objects.yaml"), objects).unwrap();
    let config_dir = work.path().join("config");
    let trust_dir = work.path().join("trust");
    let out = std::process::Command::new(operator_bin())
        .args(["render", "-f"])
        .arg(work.path().join("objects.yaml"))
        .arg("-o")
        .arg(&config_dir)
        .arg("--trust-dir")
        .arg(&trust_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The trust object of namespace `clinical` holds the connection's CA and nothing else:
    // no config.json, no client secret. That is all the egress Envoy mounts.
    let envoy_mount = trust_dir.join("clinical");
    let mut mounted: Vec<String> = std::fs::read_dir(&envoy_mount)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    mounted.sort();
    assert_eq!(mounted, ["connection_clinical_partner_ca.pem"]);
    assert_eq!(
        std::fs::read_to_string(envoy_mount.join("connection_clinical_partner_ca.pem")).unwrap(),
        pki.ca_pem
    );
    assert!(
        std::fs::read_to_string(config_dir.join("config.json"))
            .unwrap()
            .contains("s3cr3t"),
        "the credential stays in the config directory, which only fhirguard-authz mounts"
    );

    let svc = start_service(&config_dir, Duration::from_secs(60)).await;
    let (port, admin) = (free_port(), free_port());
    let yaml = example_with(
        svc.grpc.port(),
        port,
        admin,
        stub.port(),
        envoy_mount.to_str().unwrap(),
    );
    let _envoy = run_envoy(&envoy, yaml, port, admin).await;

    let client = reqwest::Client::new();
    for _ in 0..5 {
        let r = client
            .get(format!("http://127.0.0.1:{port}/partner/Patient/1"))
            .header("authorization", "Bearer the-workloads-own-token")
            .header("x-fhirguard-subject", "forged")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["path"], "/fhir/r4/Patient/1");
        assert_eq!(
            body["authorization"], "Bearer token-1",
            "the workload's header is replaced"
        );
    }
    assert_eq!(tokens.hits(), 1, "one token for all requests");
    let state = client
        .get(format!("http://{}/connections", svc.http))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        state.contains("\"state\": \"valid\"")
            && !state.contains("token-1")
            && !state.contains("s3cr3t"),
        "{state}"
    );

    // The same route with a CA file that did not sign the partner's certificate: Envoy refuses
    // the upstream, so the trust setting really is in force.
    let other = TestPki::new();
    let wrong_dir = work.path().join("wrong");
    std::fs::create_dir(&wrong_dir).unwrap();
    std::fs::write(
        wrong_dir.join("connection_clinical_partner_ca.pem"),
        &other.ca_pem,
    )
    .unwrap();
    let (port2, admin2) = (free_port(), free_port());
    let yaml = example_with(
        svc.grpc.port(),
        port2,
        admin2,
        stub.port(),
        wrong_dir.to_str().unwrap(),
    );
    let _envoy2 = run_envoy(&envoy, yaml, port2, admin2).await;
    let r = client
        .get(format!("http://127.0.0.1:{port2}/partner/Patient/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("upstream connect error") || text.contains("CERTIFICATE_VERIFY_FAILED"),
        "{text}"
    );
}
