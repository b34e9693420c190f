//! Objects kept across config generations: key sources, token sources, OpenID discovery
//! sources and audit sinks are shared by the digest of their whole definition, so a reload
//! that leaves a definition alone keeps its live object (its keys, token, queue, backoff)
//! and one that changes anything (URL, trust, CA bytes, credentials) gets a new one.
//! Entries are weak: an object no config uses any more is dropped, and its background task
//! ends with it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};

use sha2::{Digest, Sha256};

use crate::config::{TlsConfig, TlsMode};

pub struct Shared<T> {
    live: Mutex<HashMap<[u8; 32], Weak<T>>>,
}

impl<T> Default for Shared<T> {
    fn default() -> Self {
        Shared {
            live: Mutex::new(HashMap::new()),
        }
    }
}

impl<T> Shared<T> {
    /// The live object with this definition, or the one `make` builds (then `true`: the caller
    /// starts what runs beside it). The registry is held while making, so two configs loading
    /// at once never make two objects for one definition.
    pub fn get_or_make<E>(
        &self,
        id: [u8; 32],
        make: impl FnOnce() -> Result<Arc<T>, E>,
    ) -> Result<(Arc<T>, bool), E> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|_, w| w.strong_count() > 0);
        if let Some(existing) = live.get(&id).and_then(Weak::upgrade) {
            return Ok((existing, false));
        }
        let made = make()?;
        live.insert(id, Arc::downgrade(&made));
        Ok((made, true))
    }
}

/// The digest of a definition made of `parts` (each length-prefixed, so that no two
/// different lists of parts collide by concatenation).
pub fn definition_id(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize().into()
}

/// The CA bundle a TLS setting trusts, as bytes (empty unless `CustomBundle`), so that a
/// rotated CA file makes a new definition.
pub fn ca_bytes(tls: &TlsConfig, dir: &Path) -> Vec<u8> {
    match (&tls.ca_file, tls.mode) {
        (Some(f), TlsMode::CustomBundle) => std::fs::read(dir.join(f)).unwrap_or_default(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_object_per_live_definition() {
        let shared: Shared<String> = Shared::default();
        let id = definition_id(&[b"https://a", b"x"]);
        let (a, new_a) = shared
            .get_or_make(id, || Ok::<_, ()>(Arc::new("a".to_string())))
            .unwrap();
        let (b, new_b) = shared
            .get_or_make(id, || Ok::<_, ()>(Arc::new("b".to_string())))
            .unwrap();
        assert!(new_a && !new_b);
        assert!(Arc::ptr_eq(&a, &b));
        drop((a, b));
        // Nobody holds it any more: the next config gets a new one.
        let (c, new_c) = shared
            .get_or_make(id, || Ok::<_, ()>(Arc::new("c".to_string())))
            .unwrap();
        assert!(new_c);
        assert_eq!(*c, "c");
        assert!(
            shared
                .get_or_make(definition_id(&[b"other"]), || Err(()))
                .is_err()
        );
        assert_ne!(definition_id(&[b"ab", b"c"]), definition_id(&[b"a", b"bc"]));
    }
}
