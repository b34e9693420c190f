//! RFC 7662 token introspection, the CPU part: what an introspection response means for a
//! policy, and the cache of those verdicts.
//!
//! The HTTP exchange is the host's (`runtime::introspect`); this module judges the answer and
//! remembers it. A response turns into the same [`TokenIdentity`] the JWT path produces, so
//! SMART enforcement cannot tell the two kinds of token apart.
//!
//! Refusals (`active: false`, an expired `exp`, a foreign `aud`) are verdicts and are cached
//! like acceptances; a response that cannot be read is no verdict at all (the host answers
//! 503 and caches nothing).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::config::IntrospectionConfig;
use crate::core::policy::{DenyReason, TokenIdentity};
use crate::core::smart;
use crate::verify::cache::{ByteCache, Key};
use crate::verify::jwt::identity_bytes;

/// The `provider` of identities obtained by introspection (logs, `x-fhirguard-*` headers).
pub const PROVIDER: &str = "introspection";

/// A refused answer is reused for at most this long: the same token arriving again soon (a
/// retrying client) costs no call, and an answer the server would change (a token introspected
/// a moment before its issuer's database knew it) is not held for long.
const MAX_REFUSAL_CACHE: Duration = Duration::from_secs(60);

/// Why the introspection endpoint's answer refuses the token: 401 `invalid_token`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Inactive,
    Expired,
    NotYetValid,
    WrongAudience,
    /// Bound to a key (`cnf`) or of a type other than Bearer: the holder must prove the key
    /// (DPoP, mutual TLS), which fhirguard does not check, so the token is not usable here.
    SenderConstrained,
    /// A member is present with the wrong type or value.
    Claim(&'static str),
}

impl Refusal {
    pub fn reason(&self) -> DenyReason {
        match self {
            Refusal::Inactive => DenyReason::InactiveToken,
            Refusal::Expired => DenyReason::ExpiredToken,
            _ => DenyReason::InvalidToken,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Refusal::Inactive => "the token is not active (introspection)".into(),
            Refusal::Expired => "the token has expired (introspection)".into(),
            Refusal::NotYetValid => "the token is not yet valid (introspection)".into(),
            Refusal::WrongAudience => {
                "the token's audience is not this server (introspection)".into()
            }
            Refusal::SenderConstrained => SENDER_CONSTRAINED.into(),
            Refusal::Claim(c) => {
                format!("the introspection response's {c} member has the wrong type or value")
            }
        }
    }
}

pub type Verdict = Result<Arc<TokenIdentity>, Refusal>;

pub const SENDER_CONSTRAINED: &str = "the token is bound to a key (cnf: DPoP or mutual TLS) and \
     its holder must prove that key, which this server does not check; only bearer tokens are accepted";

/// A judged response and how long it may be reused (Unix seconds).
#[derive(Debug, Clone)]
pub struct Judged {
    pub verdict: Verdict,
    pub reuse_until: u64,
}

pub struct CachedIntrospection {
    verdict: Verdict,
    reuse_until: u64,
}

/// Judges introspection responses for one policy and caches the verdicts.
pub struct Introspector {
    audiences: Vec<String>,
    clock_skew: u64,
    max_cache: u64,
    /// Per introspector (so per policy and config generation): the shared cache never
    /// answers one policy with another's verdict, and its keys are no plain hash of a token.
    salt: [u8; 32],
    cache: Arc<ByteCache<CachedIntrospection>>,
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn number(v: &serde_json::Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f as u64)
    })
}

fn optional_string<'a>(
    body: &'a serde_json::Map<String, serde_json::Value>,
    name: &'static str,
) -> Result<Option<&'a str>, Refusal> {
    match body.get(name) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Refusal::Claim(name)),
    }
}

impl Introspector {
    pub fn new(config: &IntrospectionConfig, cache: Arc<ByteCache<CachedIntrospection>>) -> Self {
        let mut salt = [0u8; 32];
        rand::fill(&mut salt);
        Introspector {
            audiences: config.audiences.clone(),
            clock_skew: config.clock_skew_seconds,
            max_cache: config.max_cache_seconds,
            salt,
            cache,
        }
    }

    /// The cache key of a token: a keyed hash, so the cache never holds the token.
    pub fn key(&self, token: &str) -> Key {
        let mut h = Sha256::new();
        h.update(self.salt);
        h.update(token.as_bytes());
        h.finalize().into()
    }

    /// The cached verdict for this token, while it may be reused.
    pub fn cached(&self, key: &Key) -> Option<Verdict> {
        let now = now_unix();
        self.cache.get(key, Instant::now(), |c| {
            (c.reuse_until > now).then(|| c.verdict.clone())
        })
    }

    /// Remembers a verdict until it may no longer be reused.
    pub fn remember(&self, key: Key, judged: &Judged) {
        let now = now_unix();
        if judged.reuse_until <= now {
            return;
        }
        let weight = match &judged.verdict {
            Ok(identity) => identity_bytes(identity),
            Err(_) => 0,
        };
        let expires = Instant::now() + Duration::from_secs(judged.reuse_until - now);
        self.cache.insert(
            key,
            CachedIntrospection {
                verdict: judged.verdict.clone(),
                reuse_until: judged.reuse_until,
            },
            weight,
            expires,
        );
    }

    /// What a `200` response body says about the token, at `now` (Unix seconds). `Err` when
    /// the body is no introspection response (not a JSON object, no boolean `active`, a
    /// member twice): then nothing is known and nothing may be decided.
    pub fn judge(&self, body: &[u8], now: u64) -> Result<Judged, String> {
        let value = crate::core::json::parse_strict(body)
            .map_err(|e| format!("the introspection response is not usable JSON: {e}"))?;
        let Some(obj) = value.as_object() else {
            return Err("the introspection response is not a JSON object".into());
        };
        let Some(active) = obj.get("active").and_then(|a| a.as_bool()) else {
            return Err("the introspection response has no boolean \"active\" member".into());
        };
        let refusal_until = now + self.max_cache.min(MAX_REFUSAL_CACHE.as_secs());
        if !active {
            return Ok(Judged {
                verdict: Err(Refusal::Inactive),
                reuse_until: refusal_until,
            });
        }
        match self.identity(obj, now) {
            Ok((identity, exp)) => {
                let mut reuse_until = now + self.max_cache;
                if let Some(exp) = exp {
                    reuse_until = reuse_until.min(exp);
                }
                Ok(Judged {
                    verdict: Ok(Arc::new(identity)),
                    reuse_until,
                })
            }
            Err(r) => Ok(Judged {
                verdict: Err(r),
                reuse_until: refusal_until,
            }),
        }
    }

    /// An active token's identity and `exp`.
    fn identity(
        &self,
        obj: &serde_json::Map<String, serde_json::Value>,
        now: u64,
    ) -> Result<(TokenIdentity, Option<u64>), Refusal> {
        let exp = match obj.get("exp") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(number(v).ok_or(Refusal::Claim("exp"))?),
        };
        if exp.is_some_and(|e| e.saturating_add(self.clock_skew) <= now) {
            return Err(Refusal::Expired);
        }
        // RFC 9449 §6.2 / RFC 8705 §3.2: a key-bound token used without its proof is a stolen
        // token as far as anyone can tell. `token_type` other than Bearer (`DPoP`, `N_A`)
        // means the same.
        if obj.get("cnf").is_some_and(|c| !c.is_null()) {
            return Err(Refusal::SenderConstrained);
        }
        match optional_string(obj, "token_type")? {
            None => {}
            Some(t) if t.eq_ignore_ascii_case("bearer") => {}
            Some(_) => return Err(Refusal::SenderConstrained),
        }
        match obj.get("nbf") {
            None | Some(serde_json::Value::Null) => {}
            Some(v) => {
                if number(v).ok_or(Refusal::Claim("nbf"))? > now.saturating_add(self.clock_skew) {
                    return Err(Refusal::NotYetValid);
                }
            }
        }
        // RFC 7662 makes `aud` optional; a token whose audience is not stated could be one
        // issued for any service of the same authorization server, so it is refused.
        let audiences: Vec<&str> = match obj.get("aud") {
            Some(serde_json::Value::String(a)) => vec![a.as_str()],
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|i| i.as_str().ok_or(Refusal::Claim("aud")))
                .collect::<Result<_, _>>()?,
            None | Some(serde_json::Value::Null) => return Err(Refusal::WrongAudience),
            Some(_) => return Err(Refusal::Claim("aud")),
        };
        if !audiences
            .iter()
            .any(|a| self.audiences.iter().any(|ours| ours == a))
        {
            return Err(Refusal::WrongAudience);
        }
        // A client-credentials token has no user: its client is the subject.
        let subject = match (
            optional_string(obj, "sub")?.filter(|s| !s.is_empty()),
            optional_string(obj, "client_id")?.filter(|s| !s.is_empty()),
        ) {
            (Some(s), _) | (None, Some(s)) => s.to_string(),
            (None, None) => return Err(Refusal::Claim("sub")),
        };
        let scope_text = optional_string(obj, "scope")?.unwrap_or_default();
        let tokens: Vec<&str> = scope_text.split(' ').filter(|t| !t.is_empty()).collect();
        let scopes = smart::parse_scopes(tokens.iter().copied());
        let patient = match optional_string(obj, "patient")? {
            None => None,
            Some(p) => Some(
                smart::context_patient_id(p)
                    .ok_or(Refusal::Claim("patient"))?
                    .to_string(),
            ),
        };
        let fhir_user = optional_string(obj, "fhirUser")?.map(str::to_string);
        // RFC 7662 names the client `client_id`; the audit trail records it like a JWT's.
        let client_id = optional_string(obj, "client_id")?
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        Ok((
            TokenIdentity {
                client_id,
                provider: PROVIDER.to_string(),
                subject,
                scopes,
                scope_text: tokens.join(" "),
                patient,
                fhir_user,
            },
            exp,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClientAuthMethod, TlsConfig};

    fn introspector(max: u64) -> Introspector {
        let config = IntrospectionConfig {
            endpoint: "https://as.example/introspect".into(),
            client_id: "fhirguard".into(),
            client_secret: "s3cret".into(),
            client_auth_method: ClientAuthMethod::ClientSecretBasic,
            audiences: vec!["https://ehr.example/fhir".into()],
            max_cache_seconds: max,
            introspect_jwts: false,
            clock_skew_seconds: 60,
            tls: TlsConfig::default(),
        };
        Introspector::new(&config, Arc::new(ByteCache::new(1 << 20)))
    }

    fn judge(body: serde_json::Value) -> Result<Judged, String> {
        introspector(300).judge(body.to_string().as_bytes(), 1_000_000)
    }

    #[test]
    fn an_active_response_becomes_the_same_identity_as_a_jwt() {
        let j = judge(serde_json::json!({
            "active": true, "scope": "patient/Observation.rs launch/patient",
            "patient": "Patient/p1", "fhirUser": "Practitioner/d1", "sub": "u1",
            "client_id": "app", "aud": ["x", "https://ehr.example/fhir"], "exp": 1_000_100,
        }))
        .unwrap();
        let id = j.verdict.unwrap();
        assert_eq!(id.subject, "u1");
        assert_eq!(id.patient.as_deref(), Some("p1"));
        assert_eq!(id.fhir_user.as_deref(), Some("Practitioner/d1"));
        assert_eq!(id.scope_text, "patient/Observation.rs launch/patient");
        assert_eq!(id.scopes.scopes.len(), 1, "launch/patient grants no data");
        // Reused until exp, which is before the 300 s maximum.
        assert_eq!(j.reuse_until, 1_000_100);
    }

    #[test]
    fn refusals_and_unreadable_answers() {
        let aud = "https://ehr.example/fhir";
        let cases: &[(serde_json::Value, Option<Refusal>)] = &[
            (
                serde_json::json!({"active": false}),
                Some(Refusal::Inactive),
            ),
            (
                serde_json::json!({"active": true, "sub": "u", "aud": aud, "exp": 999_000}),
                Some(Refusal::Expired),
            ),
            (
                serde_json::json!({"active": true, "sub": "u", "aud": aud, "nbf": 1_000_500}),
                Some(Refusal::NotYetValid),
            ),
            (
                serde_json::json!({"active": true, "sub": "u", "aud": "https://other"}),
                Some(Refusal::WrongAudience),
            ),
            (
                serde_json::json!({"active": true, "sub": "u"}),
                Some(Refusal::WrongAudience),
            ),
            (
                serde_json::json!({"active": true, "aud": aud}),
                Some(Refusal::Claim("sub")),
            ),
            (
                serde_json::json!({"active": true, "sub": "u", "aud": aud, "patient": 7}),
                Some(Refusal::Claim("patient")),
            ),
            (
                serde_json::json!({"active": true, "sub": "u", "aud": aud, "scope": ["a"]}),
                Some(Refusal::Claim("scope")),
            ),
            // Key-bound tokens presented as bearer tokens, every way an AS says so.
            (
                serde_json::json!({"active": true, "sub": "u", "aud": aud, "cnf": {"jkt": "x"}}),
                Some(Refusal::SenderConstrained),
            ),
            (
                serde_json::json!({"active": true, "sub": "u", "aud": aud,
                    "cnf": {"x5t#S256": "x"}}),
                Some(Refusal::SenderConstrained),
            ),
            (
                serde_json::json!({"active": true, "sub": "u", "aud": aud, "cnf": {}}),
                Some(Refusal::SenderConstrained),
            ),
            (
                serde_json::json!({"active": true, "sub": "u", "aud": aud, "token_type": "DPoP"}),
                Some(Refusal::SenderConstrained),
            ),
            (
                serde_json::json!({"active": true, "sub": "u", "aud": aud, "token_type": "N_A"}),
                Some(Refusal::SenderConstrained),
            ),
            (
                serde_json::json!({"active": true, "sub": "u", "aud": aud, "token_type": 1}),
                Some(Refusal::Claim("token_type")),
            ),
            (
                serde_json::json!({"active": true, "sub": "u", "aud": aud, "token_type": "bearer",
                    "cnf": null}),
                None,
            ),
            (
                serde_json::json!({"active": true, "sub": "u", "aud": aud, "token_type": "Bearer"}),
                None,
            ),
        ];
        for (body, want) in cases {
            let got = judge(body.clone()).unwrap().verdict.err();
            assert_eq!(&got, want, "{body}");
        }
        // A client-credentials token: the client is the subject.
        let id = judge(serde_json::json!({"active": true, "client_id": "svc", "aud": aud}))
            .unwrap()
            .verdict
            .unwrap();
        assert_eq!(id.subject, "svc");
        for bad in [
            &b"[]"[..],
            b"{\"active\": \"true\"}",
            b"{}",
            b"not json",
            b"{\"active\": true, \"active\": false}",
        ] {
            assert!(introspector(300).judge(bad, 1_000_000).is_err());
        }
    }

    #[test]
    fn verdicts_are_cached_until_min_of_exp_and_the_maximum() {
        let i = introspector(300);
        let now = now_unix();
        let body = serde_json::json!({"active": true, "sub": "u",
            "aud": "https://ehr.example/fhir", "exp": now + 10_000});
        let j = i.judge(body.to_string().as_bytes(), now).unwrap();
        assert_eq!(j.reuse_until, now + 300);
        let key = i.key("opaque-1");
        assert_ne!(
            key,
            introspector(300).key("opaque-1"),
            "salted per introspector"
        );
        assert!(i.cached(&key).is_none());
        i.remember(key, &j);
        assert!(i.cached(&key).is_some_and(|v| v.is_ok()));
        // Nothing is cached when the maximum is 0.
        let i0 = introspector(0);
        let j0 = i0.judge(body.to_string().as_bytes(), now).unwrap();
        i0.remember(i0.key("t"), &j0);
        assert!(i0.cached(&i0.key("t")).is_none());
    }
}
