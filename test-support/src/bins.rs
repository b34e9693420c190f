//! The real binaries end-to-end tests run, and what happens when one is missing.
//!
//! A missing binary **fails** the test that needs it: a run that silently skips its
//! end-to-end tests looks exactly like a run that passed them. For a local run without the
//! binaries, opt out explicitly:
//!
//! | variable                   | skips tests that need                        |
//! |----------------------------|----------------------------------------------|
//! | `FHIRGUARD_SKIP_MISSING=1` | any missing binary below                     |
//! | `FHIRGUARD_SKIP_ENVOY=1`   | Envoy                                        |
//! | `FHIRGUARD_SKIP_HELM=1`    | helm                                         |
//! | `FHIRGUARD_SKIP_KUBE=1`    | kube-apiserver, etcd, kubectl                |
//!
//! An opted-out test passes without running and prints
//! `SKIPPED: <test> needs <binary> (set by <variable>)` straight to stderr, past the test
//! harness's output capture, so the skip shows in every run's output. The opt-out only
//! applies to a binary that is missing: a present binary always runs.
//!
//! The former `FHIRGUARD_REQUIRE_ENVOY`, `_HELM` and `_KUBE` variables are still accepted
//! and have no effect (requiring is the default now).

use std::io::Write as _;
use std::path::PathBuf;

use crate::repo;

/// A real binary a test can need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    Envoy,
    Helm,
    Kube,
}

impl Binary {
    fn name(self) -> &'static str {
        match self {
            Binary::Envoy => "envoy",
            Binary::Helm => "helm",
            Binary::Kube => "kube-apiserver, etcd and kubectl",
        }
    }

    fn skip_var(self) -> &'static str {
        match self {
            Binary::Envoy => "FHIRGUARD_SKIP_ENVOY",
            Binary::Helm => "FHIRGUARD_SKIP_HELM",
            Binary::Kube => "FHIRGUARD_SKIP_KUBE",
        }
    }

    fn install_hint(self) -> &'static str {
        match self {
            Binary::Envoy => "run scripts/setup-envoy.sh or set ENVOY_BIN",
            Binary::Helm => "run scripts/setup-helm.sh or set FHIRGUARD_HELM",
            Binary::Kube => {
                "run scripts/kube-apiserver.sh (it installs etcd and builds the API server; \
                 FHIRGUARD_KUBE_APISERVER names another binary) and put kubectl on PATH"
            }
        }
    }
}

pub const SKIP_MISSING: &str = "FHIRGUARD_SKIP_MISSING";

fn set(var: &str) -> bool {
    std::env::var(var).as_deref() == Ok("1")
}

/// The variable that opts out of `binary`, if one is set to 1 (the specific one first).
pub fn opt_out(binary: Binary) -> Option<&'static str> {
    [binary.skip_var(), SKIP_MISSING]
        .into_iter()
        .find(|v| set(v))
}

/// The running test's name: libtest runs each test on a thread named after it.
#[track_caller]
fn test_name() -> String {
    let at = std::panic::Location::caller();
    // A location inside the standard library says nothing: the chain of track_caller ended
    // at the test harness's call.
    let at = (!at.file().starts_with("/rustc/")).then(|| format!("{}:{}", at.file(), at.line()));
    match (std::thread::current().name(), at) {
        (Some(name), Some(at)) if name != "main" => format!("{name} ({at})"),
        (Some(name), None) if name != "main" => name.to_string(),
        (_, at) => at.unwrap_or_else(|| "a test".into()),
    }
}

/// What to do about a missing binary: fail the test, or, when opted out, say so loudly and
/// return so that the caller can skip.
#[track_caller]
pub fn missing(binary: Binary, detail: &str) {
    let test = test_name();
    match opt_out(binary) {
        Some(var) => {
            // Written to the stderr handle, not through eprintln!, which the test harness
            // captures and shows only for failing tests.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: {test} needs {} (set by {var}): {detail}",
                binary.name()
            );
        }
        None => panic!(
            "{test} needs {}: {detail}; {}. To skip such tests locally instead, set {}=1 or {SKIP_MISSING}=1",
            binary.name(),
            binary.install_hint(),
            binary.skip_var()
        ),
    }
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(cmd))
            .find(|p| p.is_file())
    })
}

/// Envoy: `ENVOY_BIN`, else `<workspace>/.venv/bin/envoy` (scripts/setup-envoy.sh).
/// `None` only when missing and opted out; missing otherwise fails the test.
#[track_caller]
pub fn envoy() -> Option<PathBuf> {
    let p = std::env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/envoy"));
    if p.is_file() {
        return Some(p);
    }
    missing(Binary::Envoy, &format!("no file at {}", p.display()));
    None
}

/// helm (v4): `FHIRGUARD_HELM`, else `<workspace>/.venv/bin/helm` (scripts/setup-helm.sh).
#[track_caller]
pub fn helm() -> Option<PathBuf> {
    let p = std::env::var_os("FHIRGUARD_HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/helm"));
    if p.is_file() {
        return Some(p);
    }
    missing(Binary::Helm, &format!("no file at {}", p.display()));
    None
}

/// What a real API server needs.
#[derive(Clone, Debug)]
pub struct KubeBinaries {
    pub apiserver: PathBuf,
    pub etcd: PathBuf,
    pub kubectl: PathBuf,
}

/// kube-apiserver: `FHIRGUARD_KUBE_APISERVER`, else the newest `kube-apiserver-*` in
/// scripts/kube-apiserver.sh's cache (`FHIRGUARD_CACHE`, default `~/.cache/fhirguard`).
fn apiserver_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FHIRGUARD_KUBE_APISERVER") {
        return Some(PathBuf::from(p));
    }
    let cache = std::env::var_os("FHIRGUARD_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/fhirguard")))?;
    let mut found: Vec<PathBuf> = std::fs::read_dir(cache)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("kube-apiserver-"))
        })
        .collect();
    found.sort();
    found.pop()
}

/// kube-apiserver, etcd (PATH) and kubectl (PATH).
#[track_caller]
pub fn kube() -> Option<KubeBinaries> {
    let found = (apiserver_bin(), which("etcd"), which("kubectl"));
    match found {
        (Some(apiserver), Some(etcd), Some(kubectl)) if apiserver.is_file() => Some(KubeBinaries {
            apiserver,
            etcd,
            kubectl,
        }),
        (apiserver, etcd, kubectl) => {
            missing(
                Binary::Kube,
                &format!("found kube-apiserver {apiserver:?}, etcd {etcd:?}, kubectl {kubectl:?}"),
            );
            None
        }
    }
}
