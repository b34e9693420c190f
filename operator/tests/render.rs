//! `fhirguard-operator render` as a user runs it: golden output for a valid set of objects,
//! every problem printed for an invalid one, and nothing written then.
//! Regenerate the golden files with `UPDATE_GOLDEN=1 cargo test --test render`.

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
        "clinical/ehr: authentication.basic.htpasswdSecretRef: htpasswd line 1 (user \"plain\"):",
        "clinical/partner: tls.caBundleSecretRef: Secret \"partner-ca\" not found in namespace \"clinical\"",
        "default/typo: spec: does not match the FhirSecurityPolicy schema: unknown variant `Maybe`",
        "clinical/typo2: spec.authentication.basci: unknown field",
    ] {
        assert!(stderr.contains(line), "missing {line:?} in:\n{stderr}");
    }
    assert!(stderr.contains("4 problem(s)"), "{stderr}");
    assert!(
        !stderr.contains("secret\n") && !stderr.contains("plain:secret"),
        "Secret values never printed: {stderr}"
    );
}
