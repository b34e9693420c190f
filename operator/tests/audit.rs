//! `spec.audit` and `spec.smartConfiguration` from the YAML a user applies to the compiled
//! config: the discovery endpoint's CA bundle published and its Secret referenced, and the
//! validator's problems located on the resource fields a user edits.

// A test crate of its own: clippy.toml's allow-*-in-tests covers #[test] functions only, and
// here a failed unwrap in a helper is a failed test as well.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod compile_support;

use compile_support::*;
use fhirguard_authz::config::{AuditRecord, TlsMode};
use fhirguard_operator::compile::{self, Reason};

fn secrets() -> String {
    let ca = ca_block();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: idp-ca, namespace: clinical}}\nstringData:\n  ca.crt: |\n{ca}---\n"
    )
}

fn policy(extra: &str) -> String {
    format!(
        "apiVersion: fhirguard.dev/v1alpha1\nkind: FhirSecurityPolicy\nmetadata: {{name: ehr, namespace: clinical}}\nspec:\n  match: {{basePath: /fhir/r4}}\n  authentication:\n    jwt:\n      providers:\n      - name: idp\n        issuer: https://idp.example.org\n        audiences: [https://ehr.example.org/fhir/r4]\n        jwks: {{uri: https://idp.example.org/jwks}}\n{extra}---\n"
    )
}

const FULL: &str = "  audit:
    record: Refusals
    stdout: true
    queueSize: 50
  smartConfiguration:
    issuer: https://idp.example.org
    openidDiscovery:
      refreshInterval: 10m
      tls: {mode: CustomBundle, caBundleSecretRef: {name: idp-ca}}
    codeChallengeMethods: [S256]
";

#[test]
fn audit_and_discovery_compile_with_the_discovery_ca_published() {
    let yaml = format!("{}{}", secrets(), policy(FULL));
    let c = compile_yaml(&yaml);
    let o = c.objects.values().next().unwrap();
    assert!(o.accepted(), "{:?}", o.issues);
    let p = &c.config.policies[0];
    let a = p.audit.as_ref().unwrap();
    assert_eq!(a.record, AuditRecord::Refusals);
    assert!(a.stdout);
    assert_eq!((a.queue_size, a.batch_size), (50, 100));
    let d = p
        .smart_configuration
        .as_ref()
        .and_then(|s| s.openid_discovery.as_ref())
        .unwrap();
    assert_eq!(d.refresh_interval_seconds, 600);
    assert_eq!(d.tls.mode, TlsMode::CustomBundle);
    let file = "policy_clinical_ehr_discovery_ca.pem";
    assert_eq!(d.tls.ca_file.as_deref(), Some(file));
    assert_eq!(c.ca_files[file], CA.as_bytes());
    // The CA's Secret counts as referenced (the controller watches and reads it).
    let i = inputs(&yaml);
    let refs = compile::referenced_secrets(&i.policies, &i.connections);
    assert!(refs.contains(&("clinical".into(), "idp-ca".into())));
}

#[test]
fn every_problem_is_reported_on_the_field_the_user_wrote() {
    let cases: &[(&str, String, &str, Reason, &str)] = &[
        (
            "plain PKCE",
            FULL.replace("[S256]", "[S256, plain]"),
            "spec.smartConfiguration.codeChallengeMethods[1]",
            Reason::InvalidSpec,
            "plain must not be offered",
        ),
        (
            "discovery refreshed too often",
            FULL.replace("refreshInterval: 10m", "refreshInterval: 5s"),
            "spec.smartConfiguration.openidDiscovery.refreshInterval",
            Reason::InvalidSpec,
            "at least 10s",
        ),
        (
            "discovery without issuer",
            FULL.replace("    issuer: https://idp.example.org\n", ""),
            "spec.smartConfiguration.openidDiscovery",
            Reason::InvalidSpec,
            "needs issuer",
        ),
        (
            "audit to a connection that does not exist",
            FULL.replace("stdout: true", "connectionRef: {name: nowhere}"),
            "spec.audit.connectionRef",
            Reason::ConnectionNotFound,
            "not found",
        ),
        (
            "audit queue of zero",
            FULL.replace("queueSize: 50", "queueSize: 0"),
            "spec.audit.queueSize",
            Reason::InvalidSpec,
            "between 1 and 1000000",
        ),
    ];
    for (name, extra, field, reason, message) in cases {
        let c = compile_yaml(&format!("{}{}", secrets(), policy(extra)));
        assert_rejected_on(&c, name, field, *reason, message);
    }
}
