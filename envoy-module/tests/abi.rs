//! The module against the pinned Envoy binary: every callback the module resolves is exported
//! by that Envoy, every hook Envoy needs is exported by the module, Envoy logs the ABI version
//! as matched, and the shipped example config passes `envoy --mode validate`.
// Tests unwrap, expect and panic: a failed assumption here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use fhirguard_envoy_module::abi::{ABI_VERSION, CALLBACK_NAMES, HOOK_NAMES};
use support::*;

fn exported(file: &Path) -> HashSet<String> {
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(file)
        .output()
        .expect("nm (binutils) runs");
    assert!(out.status.success(), "nm failed on {}", file.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
        .collect()
}

#[test]
fn every_callback_the_module_uses_is_exported_by_the_pinned_envoy() {
    let Some(bin) = envoy_bin() else { return };
    let symbols = exported(&envoy_executable(&bin));
    assert!(
        symbols
            .iter()
            .filter(|s| s.starts_with("envoy_dynamic_module_callback_"))
            .count()
            > 100,
        "the Envoy binary exports no dynamic-module callbacks"
    );
    let missing: Vec<_> = CALLBACK_NAMES
        .iter()
        .filter(|n| !symbols.contains(**n))
        .collect();
    assert!(missing.is_empty(), "Envoy lacks {missing:?}");
}

#[test]
fn the_module_exports_every_http_filter_hook() {
    let so = module_dir().join("libfhirguard_envoy_module.so");
    let symbols = exported(&so);
    assert_eq!(HOOK_NAMES.len(), 21);
    let missing: Vec<_> = HOOK_NAMES
        .iter()
        .filter(|n| !symbols.contains(**n))
        .collect();
    assert!(missing.is_empty(), "the module does not export {missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_loads_the_module_and_reports_the_abi_version_matched() {
    let Some(bin) = envoy_bin() else { return };
    let config = tempfile::tempdir().unwrap();
    let upstream = start_echo().await;
    let (port, admin) = (free_port(), free_port());
    let yaml = format!(
        r#"
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:{l}
  clusters:{up}
"#,
        l = listener(
            "in",
            port,
            "\n              - match: {prefix: \"/\"}\n                route: {cluster: upstream}",
            &module_filter(config.path(), "")
        ),
        up = cluster("upstream", upstream, false),
    );
    let envoy = run_envoy(&bin, &yaml, admin, &["--log-level", "info"]).await;
    let version = std::str::from_utf8(&ABI_VERSION[..ABI_VERSION.len() - 1]).unwrap();
    let log = envoy.log();
    assert!(
        log.contains(&format!("Dynamic module ABI version {version} matched")),
        "Envoy did not report ABI {version} as matched:\n{log}"
    );
}

#[test]
fn the_example_envoy_config_validates() {
    let Some(bin) = envoy_bin() else { return };
    let example = workspace().join("examples/envoy/module.yaml");
    let dir = tempfile::tempdir().unwrap();
    // The example names /etc/fhirguard; validation needs only the module, not the directory.
    let out = Command::new(&bin)
        .args(["--mode", "validate", "-c"])
        .arg(&example)
        .args(["--base-id", &free_port().to_string()])
        .env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", module_dir())
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "envoy --mode validate refused {}:\n{}{}",
        example.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
