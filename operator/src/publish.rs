//! Layer 3, what gets published: the files of a config directory (`config.json` plus CA
//! bundles), their content hash, the Secret that carries them and the per-namespace trust
//! ConfigMaps for egress Envoys. Pure (objects to write, not writes), shared by `render` and
//! [`crate::reconcile`] so that both produce the same bytes. Imports [`crate::compile`].

use std::collections::BTreeMap;
use std::path::Path;

use fhirguard_authz::config::{CONFIG_FILE, CompiledConfig};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::ObjectMeta;
use sha2::{Digest, Sha256};

use crate::compile::Compiled;

/// Annotation on the published Secret: hash of its content with the generation left out, so
/// the controller can tell "nothing changed" without comparing generations.
pub const HASH_ANNOTATION: &str = "fhirguard.dev/config-hash";
/// Annotation on the published Secret: the generation inside its `config.json`.
pub const GENERATION_ANNOTATION: &str = "fhirguard.dev/config-generation";
/// Field manager for server-side apply.
pub const FIELD_MANAGER: &str = "fhirguard-operator";

/// The files of the config directory, by file name, for this generation.
pub fn files(compiled: &Compiled, generation: u64) -> BTreeMap<String, Vec<u8>> {
    let mut out = compiled.ca_files.clone();
    let config = CompiledConfig {
        generation,
        ..compiled.config.clone()
    };
    out.insert(CONFIG_FILE.to_string(), config.to_json().into_bytes());
    out
}

/// `sha256:<hex>` over the files at generation 0, each length-prefixed so that no two
/// different file sets hash alike.
pub fn content_hash(compiled: &Compiled) -> String {
    let mut h = Sha256::new();
    for (name, bytes) in files(compiled, 0) {
        h.update((name.len() as u64).to_be_bytes());
        h.update(name.as_bytes());
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(&bytes);
    }
    let digest = h.finalize();
    let mut hex = String::with_capacity(7 + 64);
    hex.push_str("sha256:");
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    hex
}

/// What an existing published Secret holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub hash: Option<String>,
    pub generation: u64,
    pub data: BTreeMap<String, Vec<u8>>,
}

impl Published {
    pub fn of(secret: &Secret) -> Published {
        let ann = secret.metadata.annotations.as_ref();
        Published {
            hash: ann.and_then(|a| a.get(HASH_ANNOTATION)).cloned(),
            generation: ann
                .and_then(|a| a.get(GENERATION_ANNOTATION))
                .and_then(|g| g.parse().ok())
                .unwrap_or(0),
            data: secret
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect(),
        }
    }
}

/// The Secret to apply for `compiled`, or `None` when `existing` already carries exactly this
/// content (the data itself is compared, not just the hash annotation, so a hand-edited Secret
/// is put back). The generation only moves when the content does, so a restarted operator
/// writes nothing.
pub fn plan(
    namespace: &str,
    name: &str,
    compiled: &Compiled,
    existing: Option<&Published>,
) -> Option<(Secret, u64)> {
    let hash = content_hash(compiled);
    if let Some(e) = existing
        && e.hash.as_deref() == Some(hash.as_str())
        && same_files(&e.data, &files(compiled, e.generation))
    {
        return None;
    }
    let generation = existing.map_or(0, |e| e.generation) + 1;
    Some((
        secret(namespace, name, compiled, generation, &hash),
        generation,
    ))
}

/// Whether a Secret's data holds exactly these files. Keys that are not ours (another tool's
/// annotation-like additions) are ignored: the authz-service never reads them.
fn same_files(data: &BTreeMap<String, Vec<u8>>, files: &BTreeMap<String, Vec<u8>>) -> bool {
    files.iter().all(|(k, v)| data.get(k) == Some(v))
        && data
            .keys()
            .filter(|k| is_our_file(k))
            .all(|k| files.contains_key(k))
}

/// Keys that look like ours but are not part of `compiled`: a CA file of a connection that is
/// gone, or one someone added by hand. Server-side apply only removes fields this operator
/// owned, so a key another field manager wrote would otherwise survive every apply (and make
/// every resync look like a change).
pub fn stale_files(data: &BTreeMap<String, Vec<u8>>, compiled: &Compiled) -> Vec<String> {
    data.keys()
        .filter(|k| is_our_file(k) && !compiled.ca_files.contains_key(*k) && *k != CONFIG_FILE)
        .cloned()
        .collect()
}

/// Names this operator writes into a config directory.
pub fn is_our_file(name: &str) -> bool {
    name == CONFIG_FILE || name.ends_with("_ca.pem")
}

/// The published Secret for a given generation.
pub fn secret(
    namespace: &str,
    name: &str,
    compiled: &Compiled,
    generation: u64,
    hash: &str,
) -> Secret {
    let labels = BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "fhirguard".to_string(),
        ),
        (
            "app.kubernetes.io/component".to_string(),
            "authz-config".to_string(),
        ),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "fhirguard-operator".to_string(),
        ),
    ]);
    let annotations = BTreeMap::from([
        (HASH_ANNOTATION.to_string(), hash.to_string()),
        (GENERATION_ANNOTATION.to_string(), generation.to_string()),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_string()),
        data: Some(
            files(compiled, generation)
                .into_iter()
                .map(|(k, v)| (k, ByteString(v)))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// Writes the files into `dir` (created if needed), each atomically, and removes files a
/// previous render left there that are no longer part of the config.
pub fn write_dir(dir: &Path, files: &BTreeMap<String, Vec<u8>>) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_our_file(&name) && !files.contains_key(&name) && entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
        }
    }
    write_dir_files(dir, files)
}

/// `app.kubernetes.io/component` of the trust ConfigMaps; with `managed-by`, what marks a
/// ConfigMap as this operator's to update and delete.
pub const TRUST_COMPONENT: &str = "egress-trust";
/// The default name of the trust ConfigMap in each namespace with FhirConnections.
pub const DEFAULT_TRUST_CONFIGMAP: &str = "fhirguard-trust";

/// CA bundles an egress Envoy needs to verify FhirConnection upstreams, by namespace: each
/// accepted connection's `CustomBundle` file, under the same name as in the config directory
/// (`connection_<namespace>_<name>_ca.pem`), in the connection's own namespace. These are
/// certificates only: no credential ever goes here, so an Envoy sidecar can mount them
/// without being able to read the config Secret.
pub fn trust_files(compiled: &Compiled) -> BTreeMap<String, BTreeMap<String, Vec<u8>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<u8>>> = BTreeMap::new();
    for c in &compiled.config.connections {
        if let Some(file) = &c.tls.ca_file
            && let Some(bytes) = compiled.ca_files.get(file)
        {
            out.entry(c.namespace.clone())
                .or_default()
                .insert(file.clone(), bytes.clone());
        }
    }
    out
}

/// The trust ConfigMap for one namespace. PEM is text; anything that is not UTF-8 (never the
/// case for a bundle that passed the compile's check) would go to `binaryData`.
pub fn trust_configmap(
    namespace: &str,
    name: &str,
    files: &BTreeMap<String, Vec<u8>>,
) -> ConfigMap {
    let labels = BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "fhirguard".to_string(),
        ),
        (
            "app.kubernetes.io/component".to_string(),
            TRUST_COMPONENT.to_string(),
        ),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "fhirguard-operator".to_string(),
        ),
    ]);
    let mut data = BTreeMap::new();
    let mut binary = BTreeMap::new();
    for (k, v) in files {
        match String::from_utf8(v.clone()) {
            Ok(text) => {
                data.insert(k.clone(), text);
            }
            Err(_) => {
                binary.insert(k.clone(), ByteString(v.clone()));
            }
        }
    }
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        data: Some(data),
        binary_data: (!binary.is_empty()).then_some(binary),
        ..ConfigMap::default()
    }
}

/// A ConfigMap's files, `data` and `binaryData` together.
pub fn configmap_files(cm: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = cm
        .binary_data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in cm.data.iter().flatten() {
        out.insert(k.clone(), v.clone().into_bytes());
    }
    out
}

/// Whether a ConfigMap is one this operator published (and may therefore update or delete).
pub fn is_our_trust_configmap(cm: &ConfigMap) -> bool {
    let labels = cm.metadata.labels.as_ref();
    let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
    label("app.kubernetes.io/managed-by") == Some("fhirguard-operator")
        && label("app.kubernetes.io/component") == Some(TRUST_COMPONENT)
}

/// Writes the trust files as `dir/<namespace>/<file>` (what each namespace's ConfigMap holds,
/// i.e. what an egress Envoy there mounts), removing CA files and namespace directories a
/// previous render left that are no longer part of it.
pub fn write_trust_dir(
    dir: &Path,
    trust: &BTreeMap<String, BTreeMap<String, Vec<u8>>>,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ns = entry.file_name().to_string_lossy().into_owned();
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let keep = trust.get(&ns);
        for f in std::fs::read_dir(entry.path())? {
            let f = f?;
            let name = f.file_name().to_string_lossy().into_owned();
            if is_our_file(&name) && keep.is_none_or(|k| !k.contains_key(&name)) {
                std::fs::remove_file(f.path())?;
            }
        }
        if keep.is_none() && std::fs::read_dir(entry.path())?.next().is_none() {
            std::fs::remove_dir(entry.path())?;
        }
    }
    for (ns, files) in trust {
        write_dir_files(&dir.join(ns), files)?;
    }
    Ok(())
}

fn write_dir_files(dir: &Path, files: &BTreeMap<String, Vec<u8>>) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, bytes) in files {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, dir.join(name))?;
    }
    Ok(())
}
