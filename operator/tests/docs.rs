//! docs/configuration.md is generated from the CRD schemas (every field, its type, default and
//! description), so the reference cannot drift from what `kubectl explain` shows.
//! Regenerate with `UPDATE_GOLDEN=1 cargo test --workspace --test docs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kube::CustomResourceExt;
use serde_json::Value;

fn type_of(s: &Value) -> String {
    let t = s["type"].as_str().unwrap_or("object");
    let base = match t {
        "array" => format!("[]{}", type_of(&s["items"])),
        "object" if s.get("additionalProperties").is_some() && s.get("properties").is_none() => {
            "map[string]string".into()
        }
        other => other.to_string(),
    };
    match s.get("enum").and_then(|e| e.as_array()) {
        Some(values) => format!(
            "{base}: {}",
            values
                .iter()
                .filter_map(|v| v.as_str())
                .map(|v| format!("`{v}`"))
                .collect::<Vec<_>>()
                .join(" \\| ")
        ),
        None => base,
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

fn walk(path: &str, schema: &Value, required: bool, out: &mut String) {
    let desc = schema["description"]
        .as_str()
        .map(one_line)
        .unwrap_or_default();
    let default = schema
        .get("default")
        .map(|d| format!("`{}`", serde_json::to_string(d).unwrap()))
        .unwrap_or_default();
    let mut notes = Vec::new();
    if let Some(p) = schema["pattern"].as_str() {
        notes.push(format!("pattern `{p}`"));
    }
    if let Some(rules) = schema["x-kubernetes-validations"].as_array() {
        for r in rules {
            notes.push(format!(
                "rule: {}",
                r["message"].as_str().unwrap_or_default()
            ));
        }
    }
    let extra = if notes.is_empty() {
        String::new()
    } else {
        format!(" ({})", notes.join("; ").replace('|', "\\|"))
    };
    out.push_str(&format!(
        "| `{path}` | {} | {} | {default} | {desc}{extra} |\n",
        type_of(schema),
        if required { "yes" } else { "" }
    ));
    let (props, req) = match schema["type"].as_str() {
        Some("array") => (&schema["items"]["properties"], &schema["items"]["required"]),
        _ => (&schema["properties"], &schema["required"]),
    };
    let suffix = if schema["type"] == "array" { "[]" } else { "" };
    if let Some(props) = props.as_object() {
        let req: Vec<&str> = req
            .as_array()
            .map(|r| r.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        for (k, v) in props {
            walk(
                &format!("{path}{suffix}.{k}"),
                v,
                req.contains(&k.as_str()),
                out,
            );
        }
    }
}

fn reference() -> String {
    let mut out = String::from(
        "# Configuration reference\n\n\
         Generated from the CRDs (`operator/tests/docs.rs`); `kubectl explain` shows the same text.\n\
         Both resources are namespaced, group `fhirguard.dev`, version `v1alpha1`. Durations are\n\
         integers with `s`, `m` or `h` (`90s`, `10m`, `1h30m`). Secret references name a Secret in\n\
         the resource's own namespace. Rules marked *rule* are CEL validations checked by API\n\
         servers >= 1.25 and always by the operator.\n",
    );
    for crd in [
        fhirguard_operator::crd::FhirSecurityPolicy::crd(),
        fhirguard_operator::crd::FhirConnection::crd(),
    ] {
        let v = serde_json::to_value(&crd).unwrap();
        let kind = v["spec"]["names"]["kind"].as_str().unwrap().to_string();
        let short: Vec<String> = v["spec"]["names"]["shortNames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| format!("`{}`", s.as_str().unwrap()))
            .collect();
        let schema = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        out.push_str(&format!(
            "\n## {kind}\n\n{}\n\nShort names: {}.\n\n",
            one_line(schema["description"].as_str().unwrap_or_default()),
            short.join(", ")
        ));
        out.push_str(
            "| field | type | required | default | description |\n|---|---|---|---|---|\n",
        );
        let req: Vec<&str> = schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        for key in ["spec", "status"] {
            walk(
                key,
                &schema["properties"][key],
                req.contains(&key),
                &mut out,
            );
        }
    }
    out
}

#[test]
fn configuration_reference_is_current() {
    let path =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    let text = reference();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    assert!(
        std::fs::read_to_string(&path).unwrap_or_default() == text,
        "docs/configuration.md is stale; run UPDATE_GOLDEN=1 cargo test --workspace --test docs"
    );
    for field in [
        "spec.authentication.jwt.providers[].jwks.uri",
        "spec.auth.oauth.clientSecretRef",
        "spec.tls.caBundleSecretRef.key",
    ] {
        assert!(text.contains(&format!("`{field}`")), "{field} missing");
    }
}

/// The two binaries' `--help` texts, one block per (sub)command.
fn cli_reference() -> String {
    let operator = std::path::PathBuf::from(env!("CARGO_BIN_EXE_fhirguard-operator"));
    // The authz binary sits next to it when the workspace is built (`cargo test --workspace`).
    let authz = operator.with_file_name("fhirguard-authz");
    assert!(
        authz.exists(),
        "{} missing: run the tests with `cargo test --workspace`",
        authz.display()
    );
    let mut out = String::from(
        "# Command-line reference\n\n\
         Generated from the binaries' `--help` (`operator/tests/docs.rs`); a test keeps it current.\n\
         Flags that name an environment variable read it when the flag is not given.\n",
    );
    let commands: [(&std::path::Path, &str, &[&str]); 7] = [
        (&operator, "fhirguard-operator", &[]),
        (&operator, "fhirguard-operator", &["run"]),
        (&operator, "fhirguard-operator", &["render"]),
        (&operator, "fhirguard-operator", &["crds"]),
        (&authz, "fhirguard-authz", &[]),
        (&authz, "fhirguard-authz", &["serve"]),
        (&authz, "fhirguard-authz", &["validate"]),
    ];
    for (bin, name, sub) in commands {
        let o = std::process::Command::new(bin)
            .args(sub)
            .arg("--help")
            .env_clear()
            .output()
            .unwrap();
        assert!(o.status.success(), "{name} {sub:?} --help failed");
        let title = std::iter::once(name)
            .chain(sub.iter().copied())
            .collect::<Vec<_>>()
            .join(" ");
        out.push_str(&format!(
            "\n## `{title}`\n\n```text\n{}\n```\n",
            String::from_utf8(o.stdout).unwrap().trim_end()
        ));
    }
    out
}

#[test]
fn cli_reference_is_current() {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/cli.md");
    let text = cli_reference();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    assert!(
        std::fs::read_to_string(&path).unwrap_or_default() == text,
        "docs/cli.md is stale; run UPDATE_GOLDEN=1 cargo test --workspace --test docs"
    );
    for flag in [
        "--trust-dir",
        "--trust-configmap",
        "--config-dir",
        "--grpc-addr",
    ] {
        assert!(text.contains(flag), "{flag} missing");
    }
}
