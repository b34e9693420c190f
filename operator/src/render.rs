//! The offline front end (a peer of [`crate::reconcile`], without a cluster): read
//! FhirSecurityPolicy, FhirConnection and Secret objects from YAML files and run the same
//! compile as the controller. Imports [`crate::crd`] and [`crate::compile`]; the binary hands
//! the result to [`crate::publish`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fhirguard_authz::config::Problem;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use crate::compile::{self, Compiled, Secrets};
use crate::crd::object::{self, Loaded};
use crate::crd::{FhirConnection, FhirSecurityPolicy};

/// Objects read from files.
#[derive(Debug, Default)]
pub struct Inputs {
    /// Every FhirSecurityPolicy read, including those whose spec has shape problems (they are
    /// reported by the compile, on the object).
    pub policies: Vec<Loaded<FhirSecurityPolicy>>,
    pub connections: Vec<Loaded<FhirConnection>>,
    pub secrets: Secrets,
    /// Documents that could not be read as objects at all (bad YAML, no name, given twice).
    pub problems: Vec<Problem>,
    /// Documents of other kinds, skipped: `(file, apiVersion, kind, name)`.
    pub skipped: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Reads every `.yaml`, `.yml` and `.json` file under the given paths (directories are walked
/// in name order). Objects without a namespace get `default`, as kubectl would.
pub fn load(paths: &[PathBuf]) -> Result<Inputs, RenderError> {
    let mut files = Vec::new();
    for p in paths {
        collect(p, &mut files)?;
    }
    let mut inputs = Inputs::default();
    let mut seen = BTreeMap::new();
    for f in files {
        let text = std::fs::read_to_string(&f).map_err(|source| RenderError::Read {
            path: f.display().to_string(),
            source,
        })?;
        load_text(&f.display().to_string(), &text, &mut inputs, &mut seen);
    }
    Ok(inputs)
}

fn collect(p: &Path, out: &mut Vec<PathBuf>) -> Result<(), RenderError> {
    let err = |source| RenderError::Read {
        path: p.display().to_string(),
        source,
    };
    let meta = std::fs::metadata(p).map_err(err)?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
            .map_err(err)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            let is_yaml = e
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| matches!(x, "yaml" | "yml" | "json"));
            if e.is_dir() || is_yaml {
                collect(&e, out)?;
            }
        }
    } else {
        out.push(p.to_path_buf());
    }
    Ok(())
}

/// Parses one file's documents into `inputs`. `seen` catches the same object given twice.
pub fn load_text(file: &str, text: &str, inputs: &mut Inputs, seen: &mut BTreeMap<String, String>) {
    let docs: Vec<serde_json::Value> = match serde_saphyr::from_str_multiple(text) {
        Ok(d) => d,
        Err(e) => {
            inputs.problems.push(Problem {
                object: file.to_string(),
                field: "(yaml)".into(),
                message: e.to_string(),
            });
            return;
        }
    };
    for mut doc in docs {
        if doc.is_null() {
            continue;
        }
        let api_version = doc["apiVersion"].as_str().unwrap_or_default().to_string();
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        let name = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if doc["metadata"]["namespace"]
            .as_str()
            .is_none_or(str::is_empty)
            && let Some(meta) = doc.get_mut("metadata").and_then(|m| m.as_object_mut())
        {
            meta.insert("namespace".into(), "default".into());
        }
        let namespace = doc["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let id = format!("{namespace}/{name}");
        let known = matches!(
            (api_version.as_str(), kind.as_str()),
            (
                "fhirguard.dev/v1alpha1",
                "FhirSecurityPolicy" | "FhirConnection"
            ) | ("v1", "Secret")
        );
        if !known {
            if api_version.starts_with("fhirguard.dev/") {
                inputs.problems.push(Problem {
                    object: id,
                    field: "apiVersion".into(),
                    message: format!("{api_version} {kind} is not a kind this operator knows (fhirguard.dev/v1alpha1 FhirSecurityPolicy or FhirConnection)"),
                });
            } else {
                inputs
                    .skipped
                    .push(format!("{file}: {api_version} {kind} {id}"));
            }
            continue;
        }
        if name.is_empty() {
            inputs.problems.push(Problem {
                object: format!("{file}: {kind}"),
                field: "metadata.name".into(),
                message: "missing".into(),
            });
            continue;
        }
        if let Some(first) = seen.insert(format!("{kind} {id}"), file.to_string()) {
            inputs.problems.push(Problem {
                object: id,
                field: "metadata.name".into(),
                message: format!("{kind} given twice (in {first} and {file})"),
            });
            continue;
        }
        let unreadable = |message: String| Problem {
            object: id.clone(),
            field: "metadata".into(),
            message,
        };
        match kind.as_str() {
            "FhirSecurityPolicy" => match object::parse_policy(&doc) {
                Ok(p) => inputs.policies.push(p),
                Err(e) => inputs.problems.push(unreadable(e)),
            },
            "FhirConnection" => match object::parse_connection(&doc) {
                Ok(c) => inputs.connections.push(c),
                Err(e) => inputs.problems.push(unreadable(e)),
            },
            _ => match serde_json::from_value::<Secret>(doc) {
                Ok(s) => {
                    inputs
                        .secrets
                        .insert((namespace, s.name_any()), compile::secret_data(&s));
                }
                Err(e) => inputs.problems.push(Problem {
                    object: id.clone(),
                    field: "data".into(),
                    message: format!("not a valid Secret: {e}"),
                }),
            },
        }
    }
}

/// Compiles loaded inputs; load problems are reported with the compile problems, grouped by
/// object, each object's in the order the compile gives them.
pub fn compile(inputs: &Inputs) -> (Compiled, Vec<Problem>) {
    let compiled = compile::compile(&inputs.policies, &inputs.connections, &inputs.secrets);
    let mut problems = inputs.problems.clone();
    problems.extend(compiled.problems());
    problems.sort_by(|a, b| a.object.cmp(&b.object));
    (compiled, problems)
}
