//! What gets published: the files of a config directory (`config.json` plus CA bundles), their
//! content hash, and the Secret that carries them. Pure, shared by `render` and the controller
//! so that both produce the same bytes.

use std::collections::BTreeMap;
use std::path::Path;

use fhirguard_authz::config::{CONFIG_FILE, CompiledConfig};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
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
    for (name, bytes) in files {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, dir.join(name))?;
    }
    Ok(())
}
