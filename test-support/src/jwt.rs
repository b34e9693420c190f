//! ES256 signing keys, the tokens they sign, and JWKS documents that publish them.

use base64::Engine as _;

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// An ES256 signing key with its public JWK.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub pem: String,
    pub jwk: serde_json::Value,
}

impl SigningKey {
    pub fn new(kid: &str) -> SigningKey {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = kp.public_key_raw(); // 0x04 || x || y
        SigningKey {
            kid: kid.to_string(),
            pem: kp.serialize_pem(),
            jwk: serde_json::json!({
                "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
                "x": b64url(&raw[1..33]), "y": b64url(&raw[33..65]),
            }),
        }
    }

    pub fn sign(&self, claims: &serde_json::Value) -> String {
        self.sign_as(&self.kid, claims)
    }

    /// Signs a payload given as JSON text, so that a test can send what serde_json would
    /// never produce (repeated members).
    pub fn sign_raw(&self, payload: &str) -> String {
        let header = format!(r#"{{"alg":"ES256","typ":"JWT","kid":"{}"}}"#, self.kid);
        let input = format!(
            "{}.{}",
            b64url(header.as_bytes()),
            b64url(payload.as_bytes())
        );
        let key = jsonwebtoken::EncodingKey::from_ec_pem(self.pem.as_bytes()).unwrap();
        let sig =
            jsonwebtoken::crypto::sign(input.as_bytes(), &key, jsonwebtoken::Algorithm::ES256)
                .unwrap();
        format!("{input}.{sig}")
    }

    /// Signs with this key but names another kid (a forged signature for a known kid).
    pub fn sign_as(&self, kid: &str, claims: &serde_json::Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(kid.to_string());
        let key = jsonwebtoken::EncodingKey::from_ec_pem(self.pem.as_bytes()).unwrap();
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }
}

/// A JWKS document publishing the keys' public halves.
pub fn jwks_doc(keys: &[&SigningKey]) -> String {
    serde_json::json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}
