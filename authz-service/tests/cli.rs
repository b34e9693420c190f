//! The binary's `validate` command, as a user runs it.

// A test crate of its own: clippy.toml's allow-*-in-tests covers #[test] functions only, and
// here a failed unwrap in a helper is a failed test as well.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::Duration;

use test_support::http::http_get;
use test_support::ports::free_port;
use test_support::process::{Proc, tail};

fn validate(dir: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fhirguard-authz"))
        .args(["validate", "--config-dir"])
        .arg(dir)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// examples/quickstart rendered by the operator binary of the same workspace build, as the
/// demo does.
fn quickstart_config() -> tempfile::TempDir {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(|p| p.parent())
        .unwrap()
        .join("fhirguard-operator");
    assert!(
        bin.exists(),
        "{} missing: run the tests with `cargo test --workspace`",
        bin.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin)
        .args(["render", "-f"])
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart"))
        .arg("-o")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

#[test]
fn the_quickstart_example_is_valid() {
    let config = quickstart_config();
    let (ok, stdout, stderr) = validate(config.path());
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout.trim(),
        "valid: generation 1, 1 policies, 0 connections"
    );
}

#[test]
fn problems_are_listed_with_object_and_field_and_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, stderr) = validate(dir.path());
    assert!(!ok);
    assert!(stderr.contains("config.json"), "{stderr}");

    let config = r#"{"version":1,"generation":4,"policies":[
      {"namespace":"a","name":"p","basePath":"/fhir/../x",
       "authentication":{"basic":{"htpasswd":"eve:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n"}}},
      {"namespace":"a","name":"q","basePath":"/fhir","authentication":{"jwt":{"providers":[
        {"name":"i","issuer":"https://i","audiences":["x"],"algorithms":["ES256"],
         "jwks":{"uri":"https://i/jwks","tls":{"mode":"CustomBundle","caFile":"missing.pem"}}}]}}}]}"#;
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    let (ok, _, stderr) = validate(dir.path());
    assert!(!ok);
    for want in [
        "a/p: basePath: must not contain '.' or '..' segments",
        "a/p: authentication.basic.htpasswd: htpasswd line 1 (user \"eve\"): unsalted {SHA}",
        "config: files[missing.pem]: the CA bundle named by the config cannot be read",
    ] {
        assert!(stderr.contains(want), "missing {want:?} in:\n{stderr}");
    }
    assert!(!stderr.contains("W6ph5Mm5"), "the hash leaked: {stderr}");

    std::fs::write(
        dir.path().join("config.json"),
        r#"{"version":1,"generation":1,"surprise":1}"#,
    )
    .unwrap();
    let (ok, _, stderr) = validate(dir.path());
    assert!(!ok);
    assert!(stderr.contains("unknown field `surprise`"), "{stderr}");
}

#[test]
fn serve_becomes_ready_and_stops_cleanly_on_sigterm() {
    let config = quickstart_config();
    let dir = config.path();
    let logs = tempfile::tempdir().unwrap();
    let (grpc, http) = (free_port(), free_port());
    let mut serve = Proc::spawn(
        "fhirguard-authz",
        Command::new(env!("CARGO_BIN_EXE_fhirguard-authz"))
            .args(["serve", "--config-dir"])
            .arg(dir)
            .args([
                "--grpc-addr",
                &format!("127.0.0.1:{grpc}"),
                "--http-addr",
                &format!("127.0.0.1:{http}"),
            ]),
        logs.path(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some((200, body)) = http_get(http, "/readyz") {
            assert!(body.contains("config generation 1"), "{body}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never became ready:\n{}",
            tail(&serve.log_text(), 20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(serve.signal("TERM"));
    let status = serve
        .wait_timeout(Duration::from_secs(15))
        .expect("did not stop after SIGTERM");
    assert!(status.success(), "exit status {status}");
}
