//! The operator's layering (see `src/lib.rs`): only `reconcile/` holds a Kubernetes client, and
//! each layer imports only the layers above it. Checked on the source text, so a shortcut
//! through the layers fails here rather than in review.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, with its path relative to `src/`.
fn sources(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            out.push((rel, std::fs::read_to_string(&path).unwrap()));
        }
    }
}

/// The code of a file without comment lines (doc links may point anywhere).
fn code(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level module a file belongs to: `compile/mod.rs` → `compile`.
fn layer(rel: &str) -> &str {
    rel.split(['/', '.']).next().unwrap()
}

/// Which crate modules each layer may use.
fn allowed(layer: &str) -> &'static [&'static str] {
    match layer {
        "crd" => &["crd"],
        "compile" => &["crd", "compile"],
        "publish" => &["compile", "publish"],
        "status" => &["crd", "compile", "status"],
        "render" => &["crd", "compile", "render"],
        "metrics" => &["metrics"],
        "reconcile" => &[
            "crd",
            "compile",
            "publish",
            "status",
            "render",
            "metrics",
            "reconcile",
        ],
        "lib" | "main" => &[],
        other => panic!("src/{other}: a module this test does not know; give it a layer"),
    }
}

#[test]
fn only_reconcile_holds_a_kubernetes_client_and_layers_import_only_upwards() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &root, &mut files);
    assert!(files.len() > 10, "found only {files:?}");
    let modules = [
        "crd",
        "compile",
        "publish",
        "status",
        "render",
        "metrics",
        "reconcile",
    ];
    let mut wrong = Vec::new();
    for (rel, text) in &files {
        let code = code(text);
        let layer = layer(rel);
        // The binary builds the client and hands it to the controller; nothing else may.
        if layer != "reconcile" && layer != "main" {
            for needle in ["Client", "Api<", "Api::"] {
                let hit = code.match_indices(needle).any(|(i, _)| {
                    let before = code[..i].chars().last().unwrap_or(' ');
                    let after = code[i + needle.len()..].chars().next().unwrap_or(' ');
                    !before.is_alphanumeric()
                        && !(needle == "Client" && (after.is_alphanumeric() || after == '_'))
                });
                if hit {
                    wrong.push(format!("src/{rel} uses {needle}"));
                }
            }
        }
        for m in modules {
            if code.contains(&format!("crate::{m}")) && !allowed(layer).contains(&m) {
                wrong.push(format!("src/{rel} ({layer}) imports crate::{m}"));
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}
