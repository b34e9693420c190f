//! `authentication.introspection` from the YAML a user applies to the compiled config: the
//! client credentials resolved from Secrets, TLS files, durations, and every problem located
//! on its field.

// A test crate of its own: clippy.toml's allow-*-in-tests covers #[test] functions only, and
// here a failed unwrap in a helper is a failed test as well.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod compile_support;

use compile_support::*;
use fhirguard_authz::config::{ClientAuthMethod, TlsMode};
use fhirguard_operator::compile::{self, Reason};

fn secrets() -> String {
    let ca = ca_block();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: as-client, namespace: clinical}}\nstringData:\n  client-id: \"fhirguard-rs\\n\"\n  client-secret: \"s3cret-value\\n\"\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: as-ca, namespace: clinical}}\nstringData:\n  ca.crt: |\n{ca}---\n"
    )
}

fn policy(authentication: &str) -> String {
    format!(
        "apiVersion: fhirguard.dev/v1alpha1\nkind: FhirSecurityPolicy\nmetadata: {{name: ehr, namespace: clinical}}\nspec:\n  match: {{basePath: /fhir/r4}}\n  authentication:\n{authentication}---\n"
    )
}

const FULL: &str = "    introspection:
      endpoint: https://auth.example.org/oauth2/introspect
      clientIdSecretRef: {name: as-client, key: client-id}
      clientSecretRef: {name: as-client, key: client-secret}
      clientAuthMethod: ClientSecretPost
      audiences: [https://ehr.example.org/fhir/r4]
      maxCacheDuration: 2m
      clockSkew: 30s
      tls: {mode: CustomBundle, caBundleSecretRef: {name: as-ca}}
";

#[test]
fn the_crd_compiles_with_its_secrets_resolved() {
    let c = compile_yaml(&format!("{}{}", secrets(), policy(FULL)));
    let o = c.objects.values().next().unwrap();
    assert!(o.accepted(), "{:?}", o.issues);
    let i = c.config.policies[0]
        .authentication
        .introspection
        .as_ref()
        .unwrap();
    assert_eq!(i.endpoint, "https://auth.example.org/oauth2/introspect");
    // One trailing newline (kubectl create secret --from-file) is dropped.
    assert_eq!(i.client_id, "fhirguard-rs");
    assert_eq!(i.client_secret, "s3cret-value");
    assert_eq!(i.client_auth_method, ClientAuthMethod::ClientSecretPost);
    assert_eq!(i.audiences, ["https://ehr.example.org/fhir/r4"]);
    assert_eq!((i.max_cache_seconds, i.clock_skew_seconds), (120, 30));
    assert!(!i.introspect_jwts);
    assert_eq!(i.tls.mode, TlsMode::CustomBundle);
    let file = "policy_clinical_ehr_introspection_ca.pem";
    assert_eq!(i.tls.ca_file.as_deref(), Some(file));
    assert_eq!(c.ca_files[file], CA.as_bytes());
    // The Secrets count as referenced (the controller watches and reads them).
    let i = inputs(&format!("{}{}", secrets(), policy(FULL)));
    let refs = compile::referenced_secrets(&i.policies, &i.connections);
    assert!(refs.contains(&("clinical".into(), "as-client".into())));
    assert!(refs.contains(&("clinical".into(), "as-ca".into())));
}

#[test]
fn defaults_literal_client_id_and_allof_with_basic() {
    let auth = "    combine: AllOf
    basic: {htpasswdSecretRef: {name: users}}
    introspection:
      endpoint: https://auth.example.org/introspect
      clientId: fhirguard
      clientSecretRef: {name: as-client, key: client-secret}
      audiences: [x]
";
    let users = "apiVersion: v1\nkind: Secret\nmetadata: {name: users, namespace: clinical}\nstringData:\n  htpasswd: \"alice:$6$demoAlic$ymJf6FEfOFdofNtjX17SLmXMsZSKBdVjPUHqckA2Yz3autzWfvvgcyMuAOiyZWeG06FKNUFjtCJ1So76MPLBR/\\n\"\n---\n";
    let c = compile_yaml(&format!("{}{users}{}", secrets(), policy(auth)));
    let o = c.objects.values().next().unwrap();
    assert!(o.accepted(), "{:?}", o.issues);
    let i = c.config.policies[0]
        .authentication
        .introspection
        .as_ref()
        .unwrap();
    assert_eq!(i.client_id, "fhirguard");
    assert_eq!(i.client_auth_method, ClientAuthMethod::ClientSecretBasic);
    assert_eq!((i.max_cache_seconds, i.clock_skew_seconds), (300, 60));
    assert_eq!(i.tls.mode, TlsMode::DefaultBundle);
}

#[test]
fn every_problem_is_reported_on_its_field() {
    let cases: &[(&str, String, &str, Reason, &str)] = &[
        (
            "missing Secret",
            FULL.replace("name: as-client, key: client-secret", "name: nope, key: s"),
            "spec.authentication.introspection.clientSecretRef",
            Reason::SecretNotFound,
            "Secret \"nope\" not found",
        ),
        (
            "missing key",
            FULL.replace("key: client-secret", "key: secret"),
            "spec.authentication.introspection.clientSecretRef",
            Reason::SecretKeyNotFound,
            "has no key \"secret\"",
        ),
        (
            "cross-namespace Secret",
            FULL.replace(
                "name: as-client, key: client-secret",
                "name: as-client, key: client-secret, namespace: other",
            ),
            "spec.authentication.introspection.clientSecretRef.namespace",
            Reason::CrossNamespaceReference,
            "references namespace \"other\"",
        ),
        (
            "cache longer than an hour",
            FULL.replace("maxCacheDuration: 2m", "maxCacheDuration: 2h"),
            "spec.authentication.introspection.maxCacheDuration",
            Reason::InvalidSpec,
            "at most 1h",
        ),
        (
            "plain http",
            FULL.replace("https://auth.example.org", "http://auth.example.org"),
            "spec.authentication.introspection.endpoint",
            Reason::InvalidSpec,
            "https://",
        ),
        (
            "introspectJwts without jwt providers",
            format!("{FULL}      introspectJwts: true\n"),
            "spec.authentication.introspection.introspectJwts",
            Reason::InvalidSpec,
            "only meaningful when jwt providers are configured",
        ),
        (
            "no audience",
            FULL.replace(
                "audiences: [https://ehr.example.org/fhir/r4]",
                "audiences: []",
            ),
            "spec.authentication.introspection.audiences",
            Reason::InvalidSpec,
            "",
        ),
        (
            "CustomBundle without its Secret",
            FULL.replace(
                "tls: {mode: CustomBundle, caBundleSecretRef: {name: as-ca}}",
                "tls: {mode: CustomBundle}",
            ),
            "spec.authentication.introspection.tls.caBundleSecretRef",
            Reason::InvalidSpec,
            "required when mode is CustomBundle",
        ),
    ];
    for (name, auth, field, reason, message) in cases {
        let c = compile_yaml(&format!("{}{}", secrets(), policy(auth)));
        assert_rejected_on(&c, name, field, *reason, message);
        let o = c.objects.values().next().unwrap();
        // The secret value never appears in a problem message.
        assert!(
            o.issues.iter().all(|i| !i.message.contains("s3cret-value")),
            "{name}"
        );
    }
}

#[test]
fn the_example_compiles() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text: String = [
        "examples/smart/10-secrets.yaml",
        "examples/introspection/10-secrets.yaml",
        "examples/introspection/20-policy.yaml",
    ]
    .iter()
    .map(|f| std::fs::read_to_string(root.join(f)).unwrap() + "\n---\n")
    .collect();
    let c = compile_yaml(&text);
    for o in c.objects.values() {
        assert!(o.accepted(), "{}: {:?}", o.key, o.issues);
    }
    let p = &c.config.policies[0];
    let i = p.authentication.introspection.as_ref().unwrap();
    assert!(i.introspect_jwts);
    assert_eq!(i.max_cache_seconds, 120);
    assert!(p.authentication.jwt.is_some());
}
