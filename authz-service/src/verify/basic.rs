//! Basic Auth verification against htpasswd entries, with a cache of successes.
//!
//! A bcrypt or argon2 check deliberately costs milliseconds, which would dominate the
//! decision path. Successful verifications are cached under an HMAC of (user, password) keyed
//! with a random per-process secret, so the cache never holds a password or an offline-
//! crackable fast hash of one. The cache belongs to one loaded config and is dropped with it,
//! so a changed or removed user is never honoured from the cache after a reload.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::PasswordVerifier as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::htpasswd::{self, Entry, Scheme};
use crate::verify::cache::ByteCache;

/// An `Authorization: Basic` header value, for credentials fhirguard sends (outbound
/// connections and compartment lookups).
pub fn header_value(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// How long a successful verification is reused.
pub const CACHE_TTL: Duration = Duration::from_secs(60);
/// The cache a verifier made with [`BasicVerifier::new`] gets (tests and tools); the service
/// shares one cache, sized by its memory budget, between every policy.
const PRIVATE_CACHE_BYTES: usize = 1 << 20;

/// The result of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BasicOutcome {
    Valid,
    Invalid,
}

/// Verifies one password against one stored hash. Pure CPU; run it off the async runtime.
pub fn verify_hash(entry: &Entry, password: &str) -> bool {
    match entry.scheme {
        // bcrypt reads at most 72 bytes (the terminating NUL included), so every password
        // sharing the first 72 bytes would match; such passwords are refused, not truncated.
        Scheme::Bcrypt => bcrypt::non_truncating_verify(password, &entry.hash).unwrap_or(false),
        Scheme::Sha512Crypt => sha_crypt::ShaCrypt::default()
            .verify_password(password.as_bytes(), entry.hash.as_str())
            .is_ok(),
        Scheme::Argon2id => argon2::Argon2::default()
            .verify_password(password.as_bytes(), entry.hash.as_str())
            .is_ok(),
    }
}

/// The users of one policy.
pub struct BasicVerifier {
    users: HashMap<String, Entry>,
    /// A hash for unknown users, so that "no such user" costs the same as a wrong password.
    decoy: Entry,
    /// HMAC key for cache slots, random per verifier: the shared cache never answers one
    /// policy (or config generation) with another's success.
    cache_key: [u8; 32],
    cache: Arc<ByteCache<()>>,
}

impl std::fmt::Debug for BasicVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicVerifier")
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BasicError {
    #[error("{0}")]
    Htpasswd(String),
    #[error("user {user:?}: the stored {scheme:?} hash cannot be read by the verifier")]
    Unreadable { user: String, scheme: Scheme },
}

impl BasicVerifier {
    pub fn new(htpasswd_text: &str) -> Result<Self, BasicError> {
        Self::with_cache(htpasswd_text, Arc::new(ByteCache::new(PRIVATE_CACHE_BYTES)))
    }

    /// A verifier whose successes go to `cache`.
    pub fn with_cache(htpasswd_text: &str, cache: Arc<ByteCache<()>>) -> Result<Self, BasicError> {
        let entries = htpasswd::parse(htpasswd_text).map_err(|errs| {
            BasicError::Htpasswd(
                errs.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        // Check at load time that every hash is readable by its verifier, so a malformed
        // hash is a refused config rather than a user who can never log in.
        for e in &entries {
            let readable = match e.scheme {
                Scheme::Bcrypt => e.hash.parse::<bcrypt::HashParts>().is_ok(),
                Scheme::Sha512Crypt => sha_crypt::PasswordHashRef::new(&e.hash).is_ok(),
                Scheme::Argon2id => argon2::PasswordHash::new(&e.hash).is_ok(),
            };
            if !readable {
                return Err(BasicError::Unreadable {
                    user: e.user.clone(),
                    scheme: e.scheme,
                });
            }
        }
        let decoy = entries
            .first()
            .map(|e| Entry {
                user: String::new(),
                ..e.clone()
            })
            .ok_or_else(|| BasicError::Htpasswd("the htpasswd file holds no users".into()))?;
        let mut cache_key = [0u8; 32];
        rand::fill(&mut cache_key);
        Ok(BasicVerifier {
            users: entries.into_iter().map(|e| (e.user.clone(), e)).collect(),
            decoy,
            cache_key,
            cache,
        })
    }

    fn cache_slot(&self, user: &str, password: &str) -> [u8; 32] {
        // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.cache_key) {
            Ok(m) => m,
            Err(_) => return [0u8; 32],
        };
        mac.update(&(user.len() as u64).to_be_bytes());
        mac.update(user.as_bytes());
        mac.update(password.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Looks the credentials up in the cache of successes.
    pub fn cached(&self, user: &str, password: &str) -> bool {
        // The slot is an HMAC under a per-process secret: the map's ordinary key comparison
        // leaks nothing an attacker could steer, so no constant-time compare is needed here.
        let slot = self.cache_slot(user, password);
        self.cache
            .get(&slot, Instant::now(), |()| Some(()))
            .is_some()
    }

    fn remember(&self, user: &str, password: &str) {
        let slot = self.cache_slot(user, password);
        self.cache.insert(slot, (), 0, Instant::now() + CACHE_TTL);
    }

    /// Full verification (slow for bcrypt/argon2): call from a blocking thread.
    pub fn verify_uncached(&self, user: &str, password: &str) -> BasicOutcome {
        let ok = match self.users.get(user) {
            Some(entry) => verify_hash(entry, password),
            None => {
                let _ = verify_hash(&self.decoy, password);
                false
            }
        };
        if ok {
            self.remember(user, password);
            BasicOutcome::Valid
        } else {
            BasicOutcome::Invalid
        }
    }

    pub fn user_count(&self) -> usize {
        self.users.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bcrypt_line(user: &str, pw: &str) -> String {
        format!("{user}:{}", bcrypt::hash(pw, 4).unwrap())
    }

    const SHA512: &str = "bob:$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";

    fn argon_line(user: &str, pw: &str) -> String {
        use argon2::PasswordHasher;
        let h = argon2::Argon2::default()
            .hash_password(pw.as_bytes())
            .unwrap();
        format!("{user}:{h}")
    }

    #[test]
    fn every_accepted_scheme_verifies() {
        let text = format!(
            "{}\n{SHA512}\n{}\n",
            bcrypt_line("alice", "wonder"),
            argon_line("carol", "c4r0l")
        );
        let v = BasicVerifier::new(&text).unwrap();
        assert_eq!(v.user_count(), 3);
        assert_eq!(v.verify_uncached("alice", "wonder"), BasicOutcome::Valid);
        assert_eq!(v.verify_uncached("alice", "Wonder"), BasicOutcome::Invalid);
        assert_eq!(v.verify_uncached("bob", "secret"), BasicOutcome::Valid);
        assert_eq!(v.verify_uncached("bob", "secret "), BasicOutcome::Invalid);
        assert_eq!(v.verify_uncached("carol", "c4r0l"), BasicOutcome::Valid);
        assert_eq!(v.verify_uncached("carol", ""), BasicOutcome::Invalid);
        assert_eq!(
            v.verify_uncached("mallory", "wonder"),
            BasicOutcome::Invalid
        );
    }

    #[test]
    fn only_successes_are_cached_and_only_for_the_same_password() {
        let v = BasicVerifier::new(&bcrypt_line("alice", "wonder")).unwrap();
        assert!(!v.cached("alice", "wonder"));
        assert_eq!(v.verify_uncached("alice", "nope"), BasicOutcome::Invalid);
        assert!(!v.cached("alice", "nope"));
        assert_eq!(v.verify_uncached("alice", "wonder"), BasicOutcome::Valid);
        assert!(v.cached("alice", "wonder"));
        assert!(!v.cached("alice", "wonder2"));
        // ("al", "icewonder") must not collide with ("alice", "wonder").
        assert!(!v.cached("al", "icewonder"));
        // A new verifier (a reload) starts with an empty cache.
        let v2 = BasicVerifier::new(&bcrypt_line("alice", "other")).unwrap();
        assert!(!v2.cached("alice", "wonder"));
    }

    #[test]
    fn bcrypt_refuses_passwords_it_would_truncate() {
        // bcrypt reads 72 bytes; `htpasswd -B` and the bcrypt crate truncate silently, so the
        // stored hash of a long password also matches every password with the same 72 bytes.
        let long = "x".repeat(80);
        let line = format!("alice:{}", bcrypt::hash(&long, 4).unwrap());
        let v = BasicVerifier::new(&line).unwrap();
        let same_prefix = format!("{}{}", &long[..72], "different tail");
        assert_eq!(v.verify_uncached("alice", &long), BasicOutcome::Invalid);
        assert_eq!(
            v.verify_uncached("alice", &same_prefix),
            BasicOutcome::Invalid
        );
        // 71 bytes (plus bcrypt's terminating NUL) still fit.
        let fits = "y".repeat(71);
        let v = BasicVerifier::new(&format!("bob:{}", bcrypt::hash(&fits, 4).unwrap())).unwrap();
        assert_eq!(v.verify_uncached("bob", &fits), BasicOutcome::Valid);
        assert_eq!(
            v.verify_uncached("bob", &format!("{fits}z")),
            BasicOutcome::Invalid
        );
    }

    #[test]
    fn unreadable_hashes_refuse_the_config() {
        let bad = "alice:$argon2id$v=19$m=19456,t=2,p=1$!!$!!";
        assert!(BasicVerifier::new(bad).is_err());
    }
}
