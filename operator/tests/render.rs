//! `fhirguard-operator render` as a user runs it: golden output for a valid set of objects,
//! every problem printed for an invalid one, and nothing written then.
//! Regenerate the golden files with `UPDATE_GOLDEN=1 cargo test --test render`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn here() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests")
}

fn render(args: &[&Path], out: &Path) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fhirguard-operator"));
    cmd.arg("render");
    for a in args {
        cmd.arg("-f").arg(a);
    }
    cmd.arg("-o")
        .arg(out)
        .output()
        .expect("run fhirguard-operator")
}

fn read_dir(dir: &Path) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            let e = e.expect("entry");
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(e.path()).expect("read file"),
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn valid_objects_render_to_the_golden_config_directory() {
    let out = tempfile::tempdir().unwrap();
    let r = render(&[&here().join("fixtures/valid")], out.path());
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{stderr}");
    assert!(
        stderr.contains("skipped") && stderr.contains("v1 ConfigMap clinical/unrelated"),
        "{stderr}"
    );
    assert!(stderr.contains("2 policies, 2 connections"), "{stderr}");

    let golden = here().join("golden/valid");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        let _ = std::fs::remove_dir_all(&golden);
        std::fs::create_dir_all(&golden).unwrap();
        for (name, text) in read_dir(out.path()) {
            std::fs::write(golden.join(name), text).unwrap();
        }
    }
    assert_eq!(
        read_dir(out.path()),
        read_dir(&golden),
        "render output drifted from tests/golden/valid"
    );

    // What render writes is what the authz-service accepts.
    let text = std::fs::read_to_string(out.path().join("config.json")).unwrap();
    let config = fhirguard_authz::config::CompiledConfig::from_json(&text).unwrap();
    assert_eq!(config.validate(), vec![]);
    assert_eq!(config.generation, 1);
    for f in config.ca_files() {
        assert!(out.path().join(f).exists(), "{f} named but not written");
    }
    // Unreferenced Secrets never reach the output.
    assert!(
        !read_dir(out.path())
            .iter()
            .any(|(_, t)| t.contains("never-copied"))
    );
}

#[test]
fn rendering_is_deterministic_and_removes_stale_files() {
    let dir = here().join("fixtures/valid");
    let files: Vec<PathBuf> = ["30-connections.yaml", "10-secrets.yaml", "20-policies.yaml"]
        .iter()
        .map(|f| dir.join(f))
        .collect();
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    std::fs::write(b.path().join("connection_old_gone_ca.pem"), "stale").unwrap();
    assert!(render(&[&dir], a.path()).status.success());
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    assert!(render(&refs, b.path()).status.success());
    assert_eq!(read_dir(a.path()), read_dir(b.path()));
}

#[test]
fn invalid_objects_print_every_problem_and_write_nothing() {
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("config");
    let r = render(&[&here().join("fixtures/invalid")], &target);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success());
    assert!(!target.exists(), "nothing may be written for invalid input");
    for line in [
        "clinical/ehr: spec.authentication.basic.htpasswdSecretRef: htpasswd line 1 (user \"plain\"):",
        "clinical/partner: spec.tls.caBundleSecretRef: Secret \"partner-ca\" not found in namespace \"clinical\"",
        "default/typo: spec.authorization.smart.patientSearch: must be one of Reject, Narrow (found a string (\"Maybe\"))",
        // The rest of the same object is still checked in the same run.
        "default/typo: spec.authentication: ",
        "clinical/typo2: spec.authentication.basci: unknown field; did you mean basic?",
    ] {
        assert!(stderr.contains(line), "missing {line:?} in:\n{stderr}");
    }
    assert!(stderr.contains("5 problem(s)"), "{stderr}");
    assert!(
        !stderr.contains("secret\n") && !stderr.contains("plain:secret"),
        "Secret values never printed: {stderr}"
    );
}

/// What render prints for one broken input, problem lines only (notes and the summary line are
/// left out), and whether it wrote anything.
fn problems_for(yaml: &str) -> (Vec<String>, bool) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("objects.yaml");
    std::fs::write(&input, yaml).unwrap();
    let out = dir.path().join("out");
    let r = render(&[&input], &out);
    let stderr = String::from_utf8_lossy(&r.stderr).into_owned();
    let lines = stderr
        .lines()
        .filter(|l| !l.starts_with("note: ") && !l.starts_with("error: "))
        .map(str::to_string)
        .collect();
    assert!(!r.status.success(), "accepted:\n{yaml}\n{stderr}");
    (lines, out.exists())
}

const USERS: &str = "apiVersion: v1\nkind: Secret\nmetadata: {name: users, namespace: clinical}\nstringData:\n  htpasswd: \"alice:$6$demoAlic$ymJf6FEfOFdofNtjX17SLmXMsZSKBdVjPUHqckA2Yz3autzWfvvgcyMuAOiyZWeG06FKNUFjtCJ1So76MPLBR/\\n\"\n---\n";

fn policy(spec: &str) -> String {
    format!(
        "{USERS}apiVersion: fhirguard.dev/v1alpha1\nkind: FhirSecurityPolicy\nmetadata: {{name: ehr, namespace: clinical}}\nspec:\n{spec}"
    )
}

fn connection(spec: &str) -> String {
    format!(
        "apiVersion: fhirguard.dev/v1alpha1\nkind: FhirConnection\nmetadata: {{name: partner, namespace: clinical}}\nspec:\n{spec}"
    )
}

/// Broken inputs and the exact lines render prints: misspellings name the unknown field next to
/// the required one it misspells, wrong types name their path, and every problem of every
/// object comes out in one run (shape problems first, then what the compile finds in the rest).
#[test]
fn broken_inputs_name_every_field_in_one_run() {
    let basic = "  authentication: {basic: {htpasswdSecretRef: {name: users}}}\n";
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "misspelt required field",
            policy(
                "  match: {basePath: /fhir/r4}\n  authentication:\n    basic: {htpaswdSecretRef: {name: users}}\n",
            ),
            vec![
                "clinical/ehr: spec.authentication.basic.htpaswdSecretRef: unknown field; did you mean htpasswdSecretRef? (htpasswdSecretRef is required and missing)",
                "clinical/ehr: spec.authentication.basic.htpasswdSecretRef: required field missing; the unknown field htpaswdSecretRef looks like a misspelling of it",
            ],
        ),
        (
            "wrong case of a required field, and a missing Secret found in the same run",
            policy(
                "  match: {basepath: /fhir/r4}\n  authentication: {basic: {htpasswdSecretRef: {name: nope}}}\n",
            ),
            vec![
                "clinical/ehr: spec.match.basepath: unknown field; did you mean basePath? (basePath is required and missing)",
                "clinical/ehr: spec.match.basePath: required field missing; the unknown field basepath looks like a misspelling of it",
                "clinical/ehr: spec.authentication.basic.htpasswdSecretRef: Secret \"nope\" not found in namespace \"clinical\"",
            ],
        ),
        (
            "misspelt optional section",
            policy(
                "  match: {basePath: /fhir/r4}\n  authentication: {basci: {htpasswdSecretRef: {name: users}}}\n",
            ),
            vec!["clinical/ehr: spec.authentication.basci: unknown field; did you mean basic?"],
        ),
        (
            "unknown field with nothing close",
            policy(&format!(
                "  match: {{basePath: /fhir/r4}}\n  colour: blue\n{basic}"
            )),
            vec![
                "clinical/ehr: spec.colour: unknown field (expected one of: audit, authentication, authorization, match, publicPaths, smartConfiguration, unauthenticatedAccess)",
            ],
        ),
        (
            "wrong types name their paths",
            policy(&format!(
                "  match: {{hosts: ehr.example.org, basePath: /fhir/r4}}\n  unauthenticatedAccess: \"no\"\n  publicPaths: [/metadata, 42]\n{basic}"
            )),
            vec![
                "clinical/ehr: spec.match.hosts: expected a list, found a string (\"ehr.example.org\")",
                "clinical/ehr: spec.publicPaths[1]: expected a string, found a number (42)",
                "clinical/ehr: spec.unauthenticatedAccess: expected true or false, found a string (\"no\")",
            ],
        ),
        (
            "an object where a reference belongs",
            policy(
                "  match: {basePath: /fhir/r4}\n  authentication: {basic: {htpasswdSecretRef: users}}\n",
            ),
            vec![
                "clinical/ehr: spec.authentication.basic.htpasswdSecretRef: expected an object, found a string (\"users\")",
            ],
        ),
        (
            "values the schema does not allow",
            policy(
                "  match: {basePath: fhir/r4}\n  authentication:\n    basic:\n      htpasswdSecretRef: {name: users}\n      access: [{users: [alice], permission: Write}, {users: [], permission: Read}]\n    jwt: {providers: []}\n  authorization: {smart: {patientSearch: Maybe}}\n",
            ),
            vec![
                "clinical/ehr: spec.authentication.basic.access[0].permission: must be one of Read, ReadWrite (found a string (\"Write\"))",
                "clinical/ehr: spec.authentication.basic.access[1].users: must list at least one item",
                "clinical/ehr: spec.authentication.jwt.providers: must list at least one item",
                "clinical/ehr: spec.authorization.smart.patientSearch: must be one of Reject, Narrow (found a string (\"Maybe\"))",
                "clinical/ehr: spec.match.basePath: must start with / (found a string (\"fhir/r4\"))",
            ],
        ),
        (
            "durations and lengths",
            policy(
                "  match: {basePath: /fhir/r4}\n  authentication:\n    jwt:\n      providers:\n      - {name: \"\", issuer: https://idp, audiences: [x], clockSkew: 1 minute, jwks: {uri: https://idp/jwks, refreshInterval: 10}}\n",
            ),
            vec![
                "clinical/ehr: spec.authentication.jwt.providers[0].clockSkew: must be a duration such as 30s, 10m or 1h (found a string (\"1 minute\"))",
                "clinical/ehr: spec.authentication.jwt.providers[0].jwks.refreshInterval: expected a string, found a number (10)",
                "clinical/ehr: spec.authentication.jwt.providers[0].name: must not be empty",
            ],
        ),
        (
            "no spec at all",
            format!(
                "{USERS}apiVersion: fhirguard.dev/v1alpha1\nkind: FhirSecurityPolicy\nmetadata: {{name: ehr, namespace: clinical}}\n"
            ),
            vec!["clinical/ehr: spec: required field missing"],
        ),
        (
            "a connection: URL scheme, enum, missing required reference",
            connection(
                "  url: ftp://partner.example.org/fhir\n  auth:\n    oauth: {tokenUrl: https://auth.example.org/token, clientId: me}\n  tls: {mode: Custom}\n",
            ),
            vec![
                "clinical/partner: spec.auth.oauth.clientSecretRef: required field missing",
                "clinical/partner: spec.tls.mode: must be one of SkipVerification, DefaultBundle, CustomBundle (found a string (\"Custom\"))",
                "clinical/partner: spec.url: must be an http:// or https:// URL (found a string (\"ftp://partner.example.org/fhir\"))",
            ],
        ),
        (
            "several objects, each with several problems, all in one run",
            format!(
                "{}---\n{}---\n{}",
                policy(
                    "  match: {basepath: /fhir/r4}\n  authentication: {basic: {htpasswdSecretRef: {name: users, key: htpasswd}, acess: []}}\n"
                ),
                connection(
                    "  url: https://partner.example.org/fhir\n  tls: {mode: CustomBundle, caBundleSecretRef: {name: partner-ca}}\n  auth: {basic: {secretRef: {nme: partner-basic}}}\n"
                ),
                "apiVersion: fhirguard.dev/v1alpha1\nkind: FhirSecurityPolicy\nmetadata: {name: other, namespace: research}\nspec:\n  match: {basePath: /fhir}\n  authentication: {basic: {htpasswdSecretRef: {name: research-users}}}\n  authorization: {smart: {compartmentLookup: {connectionRef: {name: partner, namespace: clinical}}}}\n",
            ),
            vec![
                "clinical/ehr: spec.authentication.basic.acess: unknown field; did you mean access?",
                "clinical/ehr: spec.match.basepath: unknown field; did you mean basePath? (basePath is required and missing)",
                "clinical/ehr: spec.match.basePath: required field missing; the unknown field basepath looks like a misspelling of it",
                "clinical/partner: spec.auth.basic.secretRef.nme: unknown field; did you mean name? (name is required and missing)",
                "clinical/partner: spec.auth.basic.secretRef.name: required field missing; the unknown field nme looks like a misspelling of it",
                "clinical/partner: spec.tls.caBundleSecretRef: Secret \"partner-ca\" not found in namespace \"clinical\"",
                "research/other: spec.authentication.basic.htpasswdSecretRef: Secret \"research-users\" not found in namespace \"research\"",
                "research/other: spec.authorization.smart.compartmentLookup.connectionRef.namespace: references namespace \"clinical\", but references must stay in this object's namespace \"research\"",
            ],
        ),
    ];
    let mut failures = Vec::new();
    for (name, yaml, want) in cases {
        let (got, wrote) = problems_for(&yaml);
        if wrote {
            failures.push(format!("{name}: wrote output for invalid input"));
        }
        let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        if got != want {
            failures.push(format!(
                "{name}:\n  want {}\n  got  {}",
                want.join("\n       "),
                got.join("\n       ")
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// `--trust-dir` writes what the controller publishes as the trust ConfigMap of each namespace:
/// the CustomBundle CA of every accepted FhirConnection there, and nothing else (no JWKS
/// endpoint CAs, which only fhirguard uses; no config.json; no credentials).
#[test]
fn trust_dir_holds_connection_ca_bundles_only() {
    let out = tempfile::tempdir().unwrap();
    let trust = tempfile::tempdir().unwrap();
    // A namespace directory left by an earlier render whose connection is gone.
    std::fs::create_dir(trust.path().join("gone")).unwrap();
    std::fs::write(
        trust.path().join("gone/connection_gone_old_ca.pem"),
        "stale",
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fhirguard-operator"));
    let r = cmd
        .arg("render")
        .arg("-f")
        .arg(here().join("fixtures/valid"))
        .arg("-o")
        .arg(out.path())
        .arg("--trust-dir")
        .arg(trust.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{stderr}");
    assert!(
        stderr.contains("wrote 1 CA bundle(s) for egress Envoys"),
        "{stderr}"
    );
    let mut namespaces: Vec<String> = std::fs::read_dir(trust.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    namespaces.sort();
    assert_eq!(namespaces, ["clinical"], "the stale namespace is gone");
    let files = read_dir(&trust.path().join("clinical"));
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["connection_clinical_ehr-internal_ca.pem"]);
    // The same bytes the config directory carries for fhirguard-authz.
    assert_eq!(
        files[0].1,
        std::fs::read_to_string(out.path().join("connection_clinical_ehr-internal_ca.pem"))
            .unwrap()
    );
    assert!(files[0].1.starts_with("-----BEGIN CERTIFICATE-----"));
}
