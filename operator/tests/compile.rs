//! Pure compile: every problem kind a user can cause, isolation of bad objects, determinism.
//! Inputs are written as the YAML a user would apply.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use fhirguard_operator::compile::{self, Compiled, Reason};
use fhirguard_operator::publish;
use fhirguard_operator::render::{self, Inputs};

const HTPASSWD: &str = "alice:$6$demoAlic$ymJf6FEfOFdofNtjX17SLmXMsZSKBdVjPUHqckA2Yz3autzWfvvgcyMuAOiyZWeG06FKNUFjtCJ1So76MPLBR/\n";
const CA: &str = include_str!("fixtures/ca.crt");

fn load(yaml: &str) -> Inputs {
    let mut inputs = Inputs::default();
    render::load_text("test.yaml", yaml, &mut inputs, &mut BTreeMap::new());
    assert!(inputs.problems.is_empty(), "{:?}", inputs.problems);
    inputs
}

fn compile_yaml(yaml: &str) -> Compiled {
    let i = load(yaml);
    compile::compile(&i.policies, &i.connections, &i.secrets)
}

fn users_secret(ns: &str, name: &str, content: &str) -> String {
    let indented: String = content.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\nstringData:\n  htpasswd: |\n{indented}---\n"
    )
}

fn ca_secret(ns: &str, name: &str, content: &str) -> String {
    let indented: String = content.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\nstringData:\n  ca.crt: |\n{indented}---\n"
    )
}

fn basic_policy(ns: &str, name: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: fhirguard.dev/v1alpha1\nkind: FhirSecurityPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  match: {{basePath: /fhir/{name}}}\n  authentication:\n    basic: {{htpasswdSecretRef: {{name: users}}}}\n{extra_spec}---\n"
    )
}

fn connection(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: fhirguard.dev/v1alpha1\nkind: FhirConnection\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}---\n"
    )
}

struct Case {
    name: &'static str,
    yaml: String,
    /// `namespace/name` of the object that must be rejected.
    object: &'static str,
    field: &'static str,
    reason: Reason,
    message: &'static str,
}

fn cases() -> Vec<Case> {
    let users = users_secret("a", "users", HTPASSWD);
    vec![
        Case {
            name: "missing Secret",
            yaml: basic_policy("a", "p", ""),
            object: "a/p",
            field: "spec.authentication.basic.htpasswdSecretRef",
            reason: Reason::SecretNotFound,
            message: "Secret \"users\" not found in namespace \"a\"",
        },
        Case {
            name: "missing key lists the keys that exist",
            yaml: format!(
                "apiVersion: v1\nkind: Secret\nmetadata: {{name: users, namespace: a}}\nstringData: {{users.txt: x}}\n---\n{}",
                basic_policy("a", "p", "")
            ),
            object: "a/p",
            field: "spec.authentication.basic.htpasswdSecretRef",
            reason: Reason::SecretKeyNotFound,
            message: "has no key \"htpasswd\" (keys present: users.txt)",
        },
        Case {
            name: "CRLF htpasswd",
            yaml: format!(
                "apiVersion: v1\nkind: Secret\nmetadata: {{name: users, namespace: a}}\nstringData: {{htpasswd: \"{}\\r\\n\"}}\n---\n{}",
                HTPASSWD.trim_end(),
                basic_policy("a", "p", "")
            ),
            object: "a/p",
            field: "spec.authentication.basic.htpasswdSecretRef",
            reason: Reason::InvalidHtpasswd,
            message: "carriage return",
        },
        Case {
            name: "unsalted {SHA} htpasswd",
            yaml: format!(
                "{}{}",
                users_secret("a", "users", "bob:{SHA}fEqNCco3Yq9h5ZUglD3CZJT4lBs="),
                basic_policy("a", "p", "")
            ),
            object: "a/p",
            field: "spec.authentication.basic.htpasswdSecretRef",
            reason: Reason::InvalidHtpasswd,
            message: "user \"bob\"",
        },
        Case {
            name: "duplicate htpasswd user",
            yaml: format!(
                "{}{}",
                users_secret("a", "users", &format!("{HTPASSWD}{HTPASSWD}")),
                basic_policy("a", "p", "")
            ),
            object: "a/p",
            field: "spec.authentication.basic.htpasswdSecretRef",
            reason: Reason::InvalidHtpasswd,
            message: "more than once",
        },
        Case {
            name: "access rule naming an unknown user",
            yaml: format!(
                "{users}{}",
                basic_policy(
                    "a",
                    "p",
                    "  # access rules live under basic\n"
                )
                .replace(
                    "basic: {htpasswdSecretRef: {name: users}}",
                    "basic: {htpasswdSecretRef: {name: users}, access: [{users: [carol], permission: Read}]}"
                )
            ),
            object: "a/p",
            field: "spec.authentication.basic.access[0].users",
            reason: Reason::InvalidSpec,
            message: "\"carol\" is not in the htpasswd file",
        },
        Case {
            name: "unparsable PEM",
            yaml: format!(
                "{}{}",
                ca_secret("a", "ca", "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----"),
                connection("a", "c", "  url: https://x.example/fhir\n  tls: {mode: CustomBundle, caBundleSecretRef: {name: ca}}\n")
            ),
            object: "a/c",
            field: "spec.tls.caBundleSecretRef",
            reason: Reason::InvalidCaBundle,
            message: "certificate 1 does not parse",
        },
        Case {
            name: "private key in a CA bundle",
            yaml: format!(
                "{}{}",
                ca_secret("a", "ca", &format!("{CA}-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")),
                connection("a", "c", "  url: https://x.example/fhir\n  tls: {mode: CustomBundle, caBundleSecretRef: {name: ca}}\n")
            ),
            object: "a/c",
            field: "spec.tls.caBundleSecretRef",
            reason: Reason::InvalidCaBundle,
            message: "only CERTIFICATE sections",
        },
        Case {
            name: "CA bundle without certificates",
            yaml: format!(
                "{}{}",
                ca_secret("a", "ca", "just text"),
                connection("a", "c", "  url: https://x.example/fhir\n  tls: {mode: CustomBundle, caBundleSecretRef: {name: ca}}\n")
            ),
            object: "a/c",
            field: "spec.tls.caBundleSecretRef",
            reason: Reason::InvalidCaBundle,
            message: "holds no PEM CERTIFICATE",
        },
        Case {
            name: "CustomBundle without a bundle (older API servers skip the CEL rule)",
            yaml: connection("a", "c", "  url: https://x.example/fhir\n  tls: {mode: CustomBundle}\n"),
            object: "a/c",
            field: "spec.tls.caBundleSecretRef",
            reason: Reason::InvalidSpec,
            message: "required when mode is CustomBundle",
        },
        Case {
            name: "bad connection URL",
            yaml: connection("a", "c", "  url: https://\n"),
            object: "a/c",
            field: "spec.url",
            reason: Reason::InvalidUrl,
            message: "https://",
        },
        Case {
            name: "JWKS URI over plain http",
            yaml: "apiVersion: fhirguard.dev/v1alpha1\nkind: FhirSecurityPolicy\nmetadata: {name: p, namespace: a}\nspec:\n  match: {basePath: /fhir}\n  authentication:\n    jwt:\n      providers: [{name: i, issuer: https://i, audiences: [x], jwks: {uri: 'http://i/jwks'}}]\n---\n".into(),
            object: "a/p",
            field: "spec.authentication.jwt.providers[0].jwks.uri",
            reason: Reason::InvalidUrl,
            message: "must use https",
        },
        Case {
            name: "both basic and oauth on a connection",
            yaml: format!(
                "apiVersion: v1\nkind: Secret\nmetadata: {{name: s, namespace: a}}\nstringData: {{username: u, password: p, secret: x}}\n---\n{}",
                connection("a", "c", "  url: https://x.example/fhir\n  auth:\n    basic: {secretRef: {name: s}}\n    oauth: {tokenUrl: 'https://t.example/token', clientId: me, clientSecretRef: {name: s, key: secret}}\n")
            ),
            object: "a/c",
            field: "spec.auth",
            reason: Reason::InvalidSpec,
            message: "at most one of basic and oauth",
        },
        Case {
            name: "both jwks uri and secretRef",
            yaml: "apiVersion: fhirguard.dev/v1alpha1\nkind: FhirSecurityPolicy\nmetadata: {name: p, namespace: a}\nspec:\n  match: {basePath: /fhir}\n  authentication:\n    jwt:\n      providers: [{name: i, issuer: https://i, audiences: [x], jwks: {uri: 'https://i/jwks', secretRef: {name: j}}}]\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: j, namespace: a}\nstringData: {jwks.json: '{\"keys\":[{\"kty\":\"oct\"}]}'}\n---\n".into(),
            object: "a/p",
            field: "spec.authentication.jwt.providers[0].jwks",
            reason: Reason::InvalidSpec,
            message: "exactly one of uri and secretRef",
        },
        Case {
            name: "JWKS Secret with private key material",
            yaml: "apiVersion: fhirguard.dev/v1alpha1\nkind: FhirSecurityPolicy\nmetadata: {name: p, namespace: a}\nspec:\n  match: {basePath: /fhir}\n  authentication:\n    jwt:\n      providers: [{name: i, issuer: https://i, audiences: [x], jwks: {secretRef: {name: j}}}]\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: j, namespace: a}\nstringData: {jwks.json: '{\"keys\":[{\"kty\":\"EC\",\"d\":\"secret\"}]}'}\n---\n".into(),
            object: "a/p",
            field: "spec.authentication.jwt.providers[0].jwks.secretRef",
            reason: Reason::InvalidJwks,
            message: "private or symmetric key material",
        },
        Case {
            name: "unparsable duration",
            yaml: "apiVersion: fhirguard.dev/v1alpha1\nkind: FhirSecurityPolicy\nmetadata: {name: p, namespace: a}\nspec:\n  match: {basePath: /fhir}\n  authentication:\n    jwt:\n      providers: [{name: i, issuer: https://i, audiences: [x], clockSkew: 1 minute, jwks: {uri: 'https://i/jwks'}}]\n---\n".into(),
            object: "a/p",
            field: "spec.authentication.jwt.providers[0].clockSkew",
            reason: Reason::InvalidSpec,
            message: "must be a duration such as 30s, 10m or 1h (found a string (\"1 minute\"))",
        },
        Case {
            name: "AllOf without a token provider",
            yaml: format!("{users}{}", basic_policy("a", "p", "").replace("  authentication:\n", "  authentication:\n    combine: AllOf\n")),
            object: "a/p",
            field: "spec.authentication.combine",
            reason: Reason::InvalidSpec,
            message: "AllOf needs basic and a bearer-token check",
        },
        Case {
            name: "no authentication at all",
            yaml: "apiVersion: fhirguard.dev/v1alpha1\nkind: FhirSecurityPolicy\nmetadata: {name: p, namespace: a}\nspec:\n  match: {basePath: /fhir}\n---\n".into(),
            object: "a/p",
            field: "spec.authentication",
            reason: Reason::InvalidSpec,
            message: "no request could ever be authenticated",
        },
        Case {
            name: "unknown connectionRef",
            yaml: format!("{users}{}", basic_policy("a", "p", "  authorization:\n    smart:\n      compartmentLookup: {connectionRef: {name: nope}}\n")),
            object: "a/p",
            field: "spec.authorization.smart.compartmentLookup.connectionRef",
            reason: Reason::ConnectionNotFound,
            message: "FhirConnection \"nope\" not found in namespace \"a\"",
        },
        Case {
            name: "connectionRef to a rejected connection",
            yaml: format!(
                "{users}{}{}",
                basic_policy("a", "p", "  authorization:\n    smart:\n      compartmentLookup: {connectionRef: {name: c}}\n"),
                connection("a", "c", "  url: https://x.example/fhir\n  auth: {basic: {secretRef: {name: missing}}}\n")
            ),
            object: "a/p",
            field: "spec.authorization.smart.compartmentLookup.connectionRef",
            reason: Reason::ConnectionNotAccepted,
            message: "FhirConnection a/c is not accepted",
        },
        Case {
            name: "cross-namespace Secret reference",
            yaml: format!(
                "{}{}",
                users_secret("b", "users", HTPASSWD),
                basic_policy("a", "p", "").replace("{name: users}", "{name: users, namespace: b}")
            ),
            object: "a/p",
            field: "spec.authentication.basic.htpasswdSecretRef.namespace",
            reason: Reason::CrossNamespaceReference,
            message: "references namespace \"b\"",
        },
        Case {
            name: "cross-namespace connectionRef",
            yaml: format!(
                "{users}{}{}",
                basic_policy("a", "p", "  authorization:\n    smart:\n      compartmentLookup: {connectionRef: {name: c, namespace: b}}\n"),
                connection("b", "c", "  url: https://x.example/fhir\n")
            ),
            object: "a/p",
            field: "spec.authorization.smart.compartmentLookup.connectionRef.namespace",
            reason: Reason::CrossNamespaceReference,
            message: "must stay in this object's namespace \"a\"",
        },
    ]
}

#[test]
fn every_problem_kind_is_reported_on_the_object_and_field() {
    let mut failures = Vec::new();
    for case in cases() {
        let c = compile_yaml(&case.yaml);
        let Some(obj) = c
            .objects
            .values()
            .find(|o| o.key.to_string() == case.object)
        else {
            failures.push(format!("{}: no result for {}", case.name, case.object));
            continue;
        };
        let hit = obj.issues.iter().find(|i| i.field == case.field);
        match hit {
            Some(i) if i.reason == case.reason && i.message.contains(case.message) => {}
            _ => failures.push(format!(
                "{}: expected {} {:?} containing {:?}; got {:?}",
                case.name, case.field, case.reason, case.message, obj.issues
            )),
        }
        // A rejected object is never published.
        let (ns, name) = case.object.split_once('/').unwrap();
        if c.config
            .policies
            .iter()
            .any(|p| p.namespace == ns && p.name == name)
            || c.config
                .connections
                .iter()
                .any(|p| p.namespace == ns && p.name == name)
        {
            failures.push(format!(
                "{}: rejected object still in the config",
                case.name
            ));
        }
        // And what is published is always valid for the authz-service.
        if !c.config.validate().is_empty() {
            failures.push(format!(
                "{}: published config invalid: {:?}",
                case.name,
                c.config.validate()
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn problems_print_as_namespace_name_field_message() {
    let c = compile_yaml(&basic_policy("a", "p", ""));
    let lines: Vec<String> = c.problems().iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        vec!["a/p: spec.authentication.basic.htpasswdSecretRef: Secret \"users\" not found in namespace \"a\"".to_string()]
    );
}

#[test]
fn a_bad_policy_does_not_poison_the_others() {
    let yaml = format!(
        "{}{}{}",
        users_secret("a", "users", HTPASSWD),
        basic_policy("a", "good", ""),
        basic_policy("a", "bad", "").replace("{name: users}", "{name: nope}"),
    );
    let c = compile_yaml(&yaml);
    let names: Vec<&str> = c.config.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["good"]);
    assert!(
        c.objects
            .values()
            .find(|o| o.key.name == "good")
            .unwrap()
            .accepted()
    );
    assert!(
        !c.objects
            .values()
            .find(|o| o.key.name == "bad")
            .unwrap()
            .accepted()
    );
}

#[test]
fn the_older_policy_keeps_a_contested_host_and_base_path() {
    let policy = |name: &str, created: &str| {
        format!(
            "apiVersion: fhirguard.dev/v1alpha1\nkind: FhirSecurityPolicy\nmetadata: {{name: {name}, namespace: a, creationTimestamp: '{created}'}}\nspec:\n  match: {{hosts: [EHR.example.org:443], basePath: /fhir/r4}}\n  authentication: {{basic: {{htpasswdSecretRef: {{name: users}}}}}}\n---\n"
        )
    };
    // "zz-old" sorts last by name but was created first: age decides, not name.
    let yaml = format!(
        "{}{}{}",
        users_secret("a", "users", HTPASSWD),
        policy("aa-new", "2026-02-01T00:00:00Z"),
        policy("zz-old", "2026-01-01T00:00:00Z"),
    );
    let c = compile_yaml(&yaml);
    let names: Vec<&str> = c.config.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["zz-old"]);
    let new = c.objects.values().find(|o| o.key.name == "aa-new").unwrap();
    assert_eq!(new.issues[0].reason, Reason::HostConflict);
    assert_eq!(new.issues[0].field, "spec.match");
    assert!(
        new.issues[0]
            .message
            .contains("already claimed by FhirSecurityPolicy a/zz-old"),
        "{:?}",
        new.issues
    );
}

#[test]
fn only_referenced_secret_keys_reach_the_output_and_other_namespaces_are_never_read() {
    let yaml = format!(
        "{}{}apiVersion: v1\nkind: Secret\nmetadata: {{name: users, namespace: a}}\nstringData: {{other-key: not-referenced-value}}\n---\n{}",
        users_secret(
            "b",
            "users",
            "mallory:$6$demoAlic$ymJf6FEfOFdofNtjX17SLmXMsZSKBdVjPUHqckA2Yz3autzWfvvgcyMuAOiyZWeG06FKNUFjtCJ1So76MPLBR/"
        ),
        users_secret("a", "unrelated", HTPASSWD),
        basic_policy("a", "p", "").replace("{name: users}", "{name: users, namespace: b}"),
    );
    let i = load(&yaml);
    let refs = compile::referenced_secrets(&i.policies, &i.connections);
    assert!(
        refs.is_empty(),
        "a cross-namespace reference is not even fetched: {refs:?}"
    );
    let c = compile::compile(&i.policies, &i.connections, &i.secrets);
    let files = publish::files(&c, 1);
    let all: String = files
        .values()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert!(!all.contains("mallory"));
    assert!(!all.contains("not-referenced-value"));
}

#[test]
fn unauthenticated_access_is_accepted_with_a_loud_warning() {
    let yaml = "apiVersion: fhirguard.dev/v1alpha1\nkind: FhirSecurityPolicy\nmetadata: {name: dev, namespace: a}\nspec:\n  match: {basePath: /fhir}\n  unauthenticatedAccess: true\n---\n";
    let c = compile_yaml(yaml);
    let o = c.objects.values().next().unwrap();
    assert!(o.accepted());
    assert!(o.warnings[0].contains("EVERY request"));
    assert!(c.config.policies[0].unauthenticated_access);
}

#[test]
fn credentials_lose_one_trailing_newline_from_kubectl_from_file() {
    let yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: s, namespace: a}}\nstringData: {{username: \"svc\\n\", password: \"pw\\n\"}}\n---\n{}",
        connection(
            "a",
            "c",
            "  url: https://x.example/fhir\n  auth: {basic: {secretRef: {name: s}}}\n"
        )
    );
    let c = compile_yaml(&yaml);
    let b = c.config.connections[0].auth.basic.as_ref().unwrap();
    assert_eq!((b.username.as_str(), b.password.as_str()), ("svc", "pw"));
}

#[test]
fn ca_bundles_are_published_under_stable_names() {
    let yaml = format!(
        "{}{}",
        ca_secret("clinical", "ca", CA),
        connection(
            "clinical",
            "partner",
            "  url: https://x.example/fhir\n  tls: {mode: CustomBundle, caBundleSecretRef: {name: ca}}\n"
        )
    );
    let c = compile_yaml(&yaml);
    assert_eq!(
        c.config.connections[0].tls.ca_file.as_deref(),
        Some("connection_clinical_partner_ca.pem")
    );
    assert_eq!(
        c.ca_files["connection_clinical_partner_ca.pem"],
        CA.as_bytes()
    );
}

#[test]
fn output_is_deterministic_whatever_the_input_order() {
    let docs = [
        users_secret("a", "users", HTPASSWD),
        basic_policy("a", "one", ""),
        basic_policy("a", "two", ""),
        ca_secret("a", "ca", CA),
        connection(
            "a",
            "c1",
            "  url: https://x.example/fhir\n  tls: {mode: CustomBundle, caBundleSecretRef: {name: ca}}\n",
        ),
        connection("a", "c2", "  url: https://y.example/fhir\n"),
    ];
    let forward = compile_yaml(&docs.concat());
    let mut rev = docs.clone();
    rev.reverse();
    let backward = compile_yaml(&rev.concat());
    assert_eq!(publish::files(&forward, 7), publish::files(&backward, 7));
    assert_eq!(
        publish::content_hash(&forward),
        publish::content_hash(&backward)
    );
    // The hash ignores the generation and follows the content.
    let changed = compile_yaml(&docs[..5].concat());
    assert_ne!(
        publish::content_hash(&forward),
        publish::content_hash(&changed)
    );
}

#[test]
fn the_contested_smart_rules_compile_to_their_settings() {
    use fhirguard_authz::config::{ReferenceData, UserScopes};
    let secret = users_secret("ns", "users", HTPASSWD);
    // Defaults: the fail-closed side of each.
    let c = compile_yaml(&format!("{secret}{}", basic_policy("ns", "a", "")));
    let smart = &c.config.policies[0].authorization.smart;
    assert_eq!(smart.user_scopes, UserScopes::Unrestricted);
    assert_eq!(smart.reference_data, ReferenceData::Deny);
    let c = compile_yaml(&format!(
        "{secret}{}",
        basic_policy(
            "ns",
            "b",
            "  authorization:\n    smart: {userScopes: ConfineToFhirUser, referenceData: ReadWithScope}\n"
        )
    ));
    let smart = &c.config.policies[0].authorization.smart;
    assert_eq!(smart.user_scopes, UserScopes::ConfineToFhirUser);
    assert_eq!(smart.reference_data, ReferenceData::ReadWithScope);
}

/// The conversion contract end to end: a policy and a connection that set every enum to a
/// non-default value (and every other field the compile copies) compile into exactly this
/// config.
#[test]
fn a_fixture_with_every_setting_compiles_into_the_expected_config() {
    use fhirguard_authz::config::{
        AccessRule, Algorithm, AuthenticationConfig, AuthorizationConfig, BasicConfig, ClaimNames,
        ClientAuthMethod, Combine, CompartmentLookup, CompiledConfig, ConnectionAuth,
        ConnectionConfig, JwksConfig, JwtConfig, OAuthConfig, PatientSearch, Permission,
        PolicyConfig, ProviderConfig, ReferenceData, SmartConfig, TlsConfig, TlsMode, TokenSource,
        UserScopes,
    };
    let yaml = format!(
        "{}{}apiVersion: v1\nkind: Secret\nmetadata: {{name: oauth, namespace: a}}\nstringData: {{secret: s3cret}}\n---\n{}{}",
        users_secret("a", "users", HTPASSWD),
        ca_secret("a", "ca", CA),
        "apiVersion: fhirguard.dev/v1alpha1
kind: FhirSecurityPolicy
metadata: {name: p, namespace: a}
spec:
  match: {hosts: [ehr.example.org], basePath: /fhir/p}
  publicPaths: [/metadata]
  authentication:
    combine: AllOf
    basic:
      htpasswdSecretRef: {name: users}
      access: [{users: [alice], permission: Read}]
    jwt:
      tokenSources: [QueryParameter, Header]
      requireSubjectMatchesBasicUser: true
      providers:
      - name: idp
        issuer: https://idp.example.org
        audiences: [https://ehr.example.org/fhir/p]
        algorithms: [PS384, EdDSA]
        clockSkew: 1m30s
        jwks: {uri: https://idp.example.org/jwks, refreshInterval: 5m, tls: {mode: SkipVerification}}
        claims: {scope: scp, patient: pt, fhirUser: fu, subject: oid}
  authorization:
    smart:
      patientSearch: Narrow
      userScopes: ConfineToFhirUser
      referenceData: ReadWithScope
      compartmentLookup: {connectionRef: {name: c}}
---
",
        connection(
            "a",
            "c",
            "  url: https://ehr.internal/fhir
  auth:
    oauth:
      tokenUrl: https://auth.example.org/token
      clientId: me
      clientSecretRef: {name: oauth, key: secret}
      clientAuthMethod: ClientSecretPost
      scopes: ['system/*.rs']
      audience: https://ehr.internal/fhir
      extraParams: {resource: x}
  tls: {mode: CustomBundle, caBundleSecretRef: {name: ca}}
"
        ),
    );
    let c = compile_yaml(&yaml);
    for o in c.objects.values() {
        assert!(o.accepted() && o.warnings.is_empty(), "{o:?}");
    }
    let expected = CompiledConfig {
        policies: vec![PolicyConfig {
            audit: None,
            smart_configuration: None,
            namespace: "a".into(),
            name: "p".into(),
            hosts: vec!["ehr.example.org".into()],
            base_path: "/fhir/p".into(),
            public_paths: vec!["/metadata".into()],
            unauthenticated_access: false,
            authentication: AuthenticationConfig {
                combine: Combine::AllOf,
                basic: Some(BasicConfig {
                    htpasswd: HTPASSWD.into(),
                    access: vec![AccessRule {
                        users: vec!["alice".into()],
                        permission: Permission::Read,
                    }],
                }),
                jwt: Some(JwtConfig {
                    token_sources: vec![TokenSource::QueryParameter, TokenSource::Header],
                    require_subject_matches_basic_user: true,
                    providers: vec![ProviderConfig {
                        name: "idp".into(),
                        issuer: "https://idp.example.org".into(),
                        audiences: vec!["https://ehr.example.org/fhir/p".into()],
                        algorithms: vec![Algorithm::PS384, Algorithm::EdDSA],
                        clock_skew_seconds: 90,
                        jwks: JwksConfig {
                            uri: Some("https://idp.example.org/jwks".into()),
                            refresh_interval_seconds: 300,
                            tls: TlsConfig {
                                mode: TlsMode::SkipVerification,
                                ca_file: None,
                            },
                            document: None,
                        },
                        claims: ClaimNames {
                            scope: "scp".into(),
                            patient: "pt".into(),
                            fhir_user: "fu".into(),
                            subject: "oid".into(),
                        },
                    }],
                }),
                introspection: None,
            },
            authorization: AuthorizationConfig {
                smart: SmartConfig {
                    patient_search: PatientSearch::Narrow,
                    compartment_lookup: Some(CompartmentLookup {
                        connection: "a/c".into(),
                    }),
                    user_scopes: UserScopes::ConfineToFhirUser,
                    reference_data: ReferenceData::ReadWithScope,
                },
            },
        }],
        connections: vec![ConnectionConfig {
            namespace: "a".into(),
            name: "c".into(),
            url: "https://ehr.internal/fhir".into(),
            auth: ConnectionAuth {
                basic: None,
                oauth: Some(OAuthConfig {
                    token_url: "https://auth.example.org/token".into(),
                    client_id: "me".into(),
                    client_secret: "s3cret".into(),
                    client_auth_method: ClientAuthMethod::ClientSecretPost,
                    scopes: vec!["system/*.rs".into()],
                    audience: Some("https://ehr.internal/fhir".into()),
                    extra_params: [("resource".to_string(), "x".to_string())].into(),
                }),
            },
            tls: TlsConfig {
                mode: TlsMode::CustomBundle,
                ca_file: Some(compile::connection_ca_file("a", "c")),
            },
        }],
        ..CompiledConfig::empty(0)
    };
    assert_eq!(c.config, expected);
}
