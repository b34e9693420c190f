//! Verification keys: a JSON Web Key Set parsed into the public signature keys it holds, and
//! the slot a provider's current key set lives in.
//!
//! Fetching key sets (over HTTPS, with refresh and backoff) is the host's business
//! (`runtime::jwks`); this module only reads documents and hands out the keys in force.

use std::sync::{Arc, Weak};

use arc_swap::ArcSwapOption;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm as JwtAlg, DecodingKey};

/// Why a JWKS document yields no key set.
#[derive(Debug, thiserror::Error)]
pub enum KeySetError {
    #[error("JWKS is not valid JSON: {0}")]
    Json(String),
    #[error("JWKS holds no usable public signing key")]
    NoUsableKeys,
}

/// The family of a key, which decides which algorithms may use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFamily {
    Rsa,
    Ec,
    Ed,
}

impl KeyFamily {
    pub fn of(alg: JwtAlg) -> Option<KeyFamily> {
        match alg {
            JwtAlg::RS256
            | JwtAlg::RS384
            | JwtAlg::RS512
            | JwtAlg::PS256
            | JwtAlg::PS384
            | JwtAlg::PS512 => Some(KeyFamily::Rsa),
            JwtAlg::ES256 | JwtAlg::ES384 => Some(KeyFamily::Ec),
            JwtAlg::EdDSA => Some(KeyFamily::Ed),
            // HMAC: never with keys from a JWKS.
            _ => None,
        }
    }
}

pub struct Key {
    pub kid: Option<String>,
    /// The key's own `alg`, when the JWKS states one.
    pub alg: Option<JwtAlg>,
    pub family: KeyFamily,
    pub key: DecodingKey,
}

/// A parsed set of verification keys.
pub struct KeySet {
    pub keys: Vec<Key>,
    /// Keys in the document that were skipped (encryption keys, symmetric keys, unknown types).
    pub skipped: usize,
}

impl KeySet {
    /// Keys that may verify a token with this algorithm and key id.
    pub fn candidates<'a>(
        &'a self,
        alg: JwtAlg,
        kid: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Key> + 'a {
        let family = KeyFamily::of(alg);
        self.keys.iter().filter(move |k| {
            Some(k.family) == family
                && k.alg.is_none_or(|a| a == alg)
                && match kid {
                    Some(kid) => k.kid.as_deref() == Some(kid),
                    None => true,
                }
        })
    }
}

/// Parses a JWKS document, keeping only public signature keys of supported families.
pub fn parse_jwks(doc: &[u8]) -> Result<KeySet, KeySetError> {
    let value: serde_json::Value =
        serde_json::from_slice(doc).map_err(|e| KeySetError::Json(e.to_string()))?;
    let raw_keys = value
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or_else(|| KeySetError::Json("no \"keys\" array".into()))?;
    let mut keys = Vec::new();
    let mut skipped = 0;
    for raw in raw_keys {
        // Private or symmetric material must never be used (or be there at all).
        if raw.get("d").is_some() || raw.get("k").is_some() {
            skipped += 1;
            continue;
        }
        let Ok(jwk) = serde_json::from_value::<Jwk>(raw.clone()) else {
            skipped += 1;
            continue;
        };
        if matches!(
            jwk.common.public_key_use,
            Some(PublicKeyUse::Encryption) | Some(PublicKeyUse::Other(_))
        ) {
            skipped += 1;
            continue;
        }
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => KeyFamily::Rsa,
            AlgorithmParameters::EllipticCurve(_) => KeyFamily::Ec,
            AlgorithmParameters::OctetKeyPair(_) => KeyFamily::Ed,
            _ => {
                skipped += 1;
                continue;
            }
        };
        let alg = match jwk.common.key_algorithm {
            Some(ka) => match ka.to_string().parse::<JwtAlg>() {
                Ok(a) if KeyFamily::of(a) == Some(family) => Some(a),
                _ => {
                    skipped += 1;
                    continue;
                }
            },
            None => None,
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            skipped += 1;
            continue;
        };
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            alg,
            family,
            key,
        });
    }
    if keys.is_empty() {
        return Err(KeySetError::NoUsableKeys);
    }
    Ok(KeySet { keys, skipped })
}

/// Where one key source's current key set lives. The host's fetcher stores into it; token
/// verification reads it without waiting.
#[derive(Default)]
pub struct KeySlot {
    current: ArcSwapOption<KeySet>,
}

impl KeySlot {
    pub fn new(set: Option<KeySet>) -> Self {
        KeySlot {
            current: ArcSwapOption::new(set.map(Arc::new)),
        }
    }

    /// The keys in force, if any were ever obtained.
    pub fn load(&self) -> Option<Arc<KeySet>> {
        self.current.load_full()
    }

    pub fn store(&self, set: Arc<KeySet>) {
        self.current.store(Some(set));
    }

    /// Whether `set` is still the key set in force. Verified tokens remember the set that
    /// verified them; once a refresh replaces it they are verified again, so a key the issuer
    /// withdraws stops being honoured at the next refresh instead of at each token's `exp`.
    /// The `Weak` keeps the old allocation alive, so its address cannot be reused by a newer
    /// set and compare equal by accident.
    pub fn is_current(&self, set: &Weak<KeySet>) -> bool {
        self.current
            .load()
            .as_ref()
            .is_some_and(|current| std::ptr::eq(Arc::as_ptr(current), set.as_ptr()))
    }
}

/// Why no key set is available at all: not a verdict on the token, so the host answers
/// UNAVAILABLE rather than 401.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no signing keys are available for {source_label}: {reason}")]
pub struct KeysUnavailable {
    pub source_label: String,
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_JWK: &str = r#"{"kty":"RSA","kid":"r1","alg":"RS256","use":"sig","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"}"#;

    #[test]
    fn keeps_only_public_signature_keys() {
        let doc = format!(
            r#"{{"keys":[{RSA_JWK},
            {{"kty":"oct","k":"c2VjcmV0","kid":"h"}},
            {{"kty":"RSA","use":"enc","kid":"e","n":"sXch","e":"AQAB"}},
            {{"kty":"RSA","kid":"p","n":"sXch","e":"AQAB","d":"private"}},
            {{"kty":"RSA","kid":"mismatch","alg":"ES256","n":"sXch","e":"AQAB"}},
            {{"kty":"weird"}}]}}"#
        );
        let set = parse_jwks(doc.as_bytes()).unwrap();
        assert_eq!(set.keys.len(), 1);
        assert_eq!(set.skipped, 5);
        assert_eq!(set.candidates(JwtAlg::RS256, Some("r1")).count(), 1);
        assert_eq!(set.candidates(JwtAlg::RS256, Some("r2")).count(), 0);
        assert_eq!(
            set.candidates(JwtAlg::ES256, Some("r1")).count(),
            0,
            "family must match"
        );
        assert_eq!(
            set.candidates(JwtAlg::RS384, Some("r1")).count(),
            0,
            "the key's alg must match"
        );
        assert_eq!(set.candidates(JwtAlg::HS256, None).count(), 0, "never HMAC");
    }

    #[test]
    fn a_document_without_usable_keys_is_an_error() {
        assert!(matches!(
            parse_jwks(br#"{"keys":[]}"#),
            Err(KeySetError::NoUsableKeys)
        ));
        assert!(matches!(parse_jwks(b"nope"), Err(KeySetError::Json(_))));
        assert!(matches!(
            parse_jwks(br#"{"keys":[{"kty":"oct","k":"eA"}]}"#),
            Err(KeySetError::NoUsableKeys)
        ));
    }
}
