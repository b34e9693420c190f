//! Bearer token (JWT) verification for one policy, with a cache of verified tokens.
//!
//! Pure CPU and synchronous: the verifier reads each provider's keys from its [`KeySlot`] and,
//! when the keys it needs are not there (none were ever fetched, or the token names a key id
//! the set lacks), says so with [`Attempt::NeedKeys`] instead of fetching. The host fetches
//! (`runtime::jwks`) and asks again.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm as JwtAlg, Validation};
use sha2::{Digest, Sha256};

use crate::config::{Algorithm, ClaimNames, ProviderConfig};
use crate::core::policy::TokenIdentity;
use crate::core::smart;
use crate::verify::cache::{ByteCache, alloc_bytes, string_bytes};
use crate::verify::keys::{KeySet, KeySlot};

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a token is not accepted.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token header names {0}; tokens that point at their own keys are never accepted")]
    ForbiddenHeader(&'static str),
    #[error("the token's algorithm is not accepted")]
    AlgorithmNotAllowed,
    #[error("the token's issuer is not trusted by this policy")]
    UnknownIssuer,
    #[error("the token is signed with a key the issuer does not publish")]
    UnknownKey,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not yet valid")]
    NotYetValid,
    #[error("the token was issued in the future (iat beyond the allowed clock skew)")]
    IssuedInFuture,
    #[error("the token's {0} member appears twice, so its meaning depends on the parser")]
    DuplicateMember(String),
    #[error("the token's audience is not this server")]
    WrongAudience,
    #[error("{}", crate::verify::introspection::SENDER_CONSTRAINED)]
    SenderConstrained,
    #[error("the token lacks the {0} claim or it has the wrong type")]
    Claim(String),
}

/// What one verification attempt came to.
#[derive(Debug)]
pub enum Attempt {
    Verified(Arc<TokenIdentity>),
    /// The keys this token needs are not in the provider's slot: none were ever obtained, or
    /// (`unknown_kid`) the token names a key id the set lacks. The host fetches them and
    /// tries again; after a refetch for an unknown key id, a key id still unknown is final.
    NeedKeys {
        provider: usize,
        unknown_kid: bool,
    },
}

fn to_jwt_alg(a: Algorithm) -> JwtAlg {
    match a {
        Algorithm::RS256 => JwtAlg::RS256,
        Algorithm::RS384 => JwtAlg::RS384,
        Algorithm::RS512 => JwtAlg::RS512,
        Algorithm::PS256 => JwtAlg::PS256,
        Algorithm::PS384 => JwtAlg::PS384,
        Algorithm::PS512 => JwtAlg::PS512,
        Algorithm::ES256 => JwtAlg::ES256,
        Algorithm::ES384 => JwtAlg::ES384,
        Algorithm::EdDSA => JwtAlg::EdDSA,
    }
}

pub struct Provider {
    pub config: ProviderConfig,
    algorithms: Vec<JwtAlg>,
    keys: Arc<KeySlot>,
}

impl Provider {
    /// A provider whose keys are whatever `keys` holds at verification time.
    pub fn new(config: ProviderConfig, keys: Arc<KeySlot>) -> Self {
        let algorithms = config.algorithms.iter().copied().map(to_jwt_alg).collect();
        Provider {
            config,
            algorithms,
            keys,
        }
    }
}

/// A verified token's verdict, as the token cache holds it.
pub struct CachedToken {
    identity: Arc<TokenIdentity>,
    /// Unix seconds after which the cached verdict is void (`exp` plus the clock skew).
    valid_until: u64,
    /// Index of the provider whose keys verified the token, and the key set that did; the
    /// verdict is void once that provider's keys are refreshed (see [`KeySlot::is_current`]).
    provider: usize,
    keys: Weak<KeySet>,
}

/// Estimated heap bytes behind a verified identity: what the token cache charges for it.
/// Scope sets dominate: a token with 600 scopes holds 600 parsed scopes and their text.
pub fn identity_bytes(id: &TokenIdentity) -> usize {
    let opt = |s: &Option<String>| s.as_deref().map_or(0, string_bytes);
    let scopes = alloc_bytes(id.scopes.scopes.len() * std::mem::size_of::<smart::Scope>())
        + id.scopes
            .scopes
            .iter()
            .map(|s| opt(&s.resource_type) + opt(&s.query))
            .sum::<usize>();
    let ignored = alloc_bytes(id.scopes.ignored.len() * std::mem::size_of::<String>())
        + id.scopes
            .ignored
            .iter()
            .map(|s| string_bytes(s))
            .sum::<usize>();
    string_bytes(&id.provider)
        + string_bytes(&id.subject)
        + string_bytes(&id.scope_text)
        + opt(&id.patient)
        + opt(&id.fhir_user)
        + scopes
        + ignored
}

pub struct TokenVerifier {
    providers: Vec<Provider>,
    /// Per verifier (so per policy and config generation): the shared cache never answers
    /// one policy with another's verdict.
    cache_salt: [u8; 32],
    cache: Arc<ByteCache<CachedToken>>,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The unverified header as JSON: checked for members that jsonwebtoken's `Header` would
/// silently drop (`crit`) or that let the token choose its own key.
fn check_header(token: &str) -> Result<(), TokenError> {
    let first = token.split('.').next().ok_or(TokenError::Malformed)?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(first)
        .map_err(|_| TokenError::Malformed)?;
    let header = parse_part(&raw)?;
    let header = header.as_object().ok_or(TokenError::Malformed)?;
    for (member, name) in [
        ("jku", "jku"),
        ("x5u", "x5u"),
        ("jwk", "an embedded jwk"),
        ("x5c", "an x5c chain"),
    ] {
        if header.contains_key(member) {
            return Err(TokenError::ForbiddenHeader(name));
        }
    }
    if header.contains_key("crit") {
        // RFC 7515 §4.1.11: critical extensions we do not understand make the token invalid.
        return Err(TokenError::ForbiddenHeader("critical extensions (crit)"));
    }
    Ok(())
}

/// Parses a decoded token part, refusing repeated member names: jsonwebtoken (like
/// serde_json) keeps the last of two `patient` claims, another parser the first.
fn parse_part(raw: &[u8]) -> Result<serde_json::Value, TokenError> {
    crate::core::json::parse_strict(raw).map_err(|e| match e {
        crate::core::json::JsonError::DuplicateKey { name, .. } => {
            TokenError::DuplicateMember(name)
        }
        crate::core::json::JsonError::Syntax(_) => TokenError::Malformed,
    })
}

fn claim_str<'a>(claims: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    claims.get(name).and_then(|v| v.as_str())
}

/// Reads the scope claim as a space-separated string or an array of strings; falls back to
/// `scp` when the configured claim is absent (some IdPs use it).
fn read_scopes(
    claims: &serde_json::Value,
    names: &ClaimNames,
) -> Result<(smart::ScopeSet, String), TokenError> {
    let value = claims.get(&names.scope).or_else(|| claims.get("scp"));
    let tokens: Vec<String> = match value {
        None => Vec::new(),
        Some(serde_json::Value::String(s)) => s
            .split(' ')
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect(),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| TokenError::Claim(names.scope.clone()))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(TokenError::Claim(names.scope.clone())),
    };
    let set = smart::parse_scopes(tokens.iter().map(String::as_str));
    Ok((set, tokens.join(" ")))
}

fn identity_from_claims(
    provider: &ProviderConfig,
    claims: &serde_json::Value,
) -> Result<TokenIdentity, TokenError> {
    let names = &provider.claims;
    let subject = claim_str(claims, &names.subject)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| TokenError::Claim(names.subject.clone()))?
        .to_string();
    let (scopes, scope_text) = read_scopes(claims, names)?;
    let patient = match claims.get(&names.patient) {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(p)) => Some(
            smart::context_patient_id(p)
                .ok_or_else(|| TokenError::Claim(names.patient.clone()))?
                .to_string(),
        ),
        Some(_) => return Err(TokenError::Claim(names.patient.clone())),
    };
    let fhir_user = claim_str(claims, &names.fhir_user).map(str::to_string);
    let client_id = claim_str(claims, "client_id")
        .or_else(|| claim_str(claims, "azp"))
        .map(str::to_string);
    Ok(TokenIdentity {
        client_id,
        provider: provider.name.clone(),
        subject,
        scopes,
        scope_text,
        patient,
        fhir_user,
    })
}

impl TokenVerifier {
    /// A verifier whose verified tokens go to `cache` (shared by every policy).
    pub fn new(providers: Vec<Provider>, cache: Arc<ByteCache<CachedToken>>) -> Self {
        let mut cache_salt = [0u8; 32];
        rand::fill(&mut cache_salt);
        TokenVerifier {
            providers,
            cache_salt,
            cache,
        }
    }

    pub fn providers(&self) -> &[Provider] {
        &self.providers
    }

    fn cache_slot(&self, token: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.cache_salt);
        h.update(token.as_bytes());
        h.finalize().into()
    }

    /// A verified identity for this exact token, if one is cached and still valid.
    pub fn cached(&self, token: &str) -> Option<Arc<TokenIdentity>> {
        let slot = self.cache_slot(token);
        let now = now_unix();
        self.cache.get(&slot, Instant::now(), |c| {
            (c.valid_until >= now
                && self
                    .providers
                    .get(c.provider)
                    .is_some_and(|p| p.keys.is_current(&c.keys)))
            .then(|| c.identity.clone())
        })
    }

    /// Verifies a token against the keys in force: header hygiene, issuer → provider,
    /// algorithm allow-list, key by `kid`, signature, `exp`/`nbf`/`iat`/`aud`/`iss`. Does not
    /// look in the cache (call [`TokenVerifier::cached`] first); remembers what it verifies.
    /// `after_refetch`: the provider's keys were just refetched because this token's key id
    /// was unknown, so a key id still unknown is final.
    pub fn verify(&self, token: &str, after_refetch: bool) -> Result<Attempt, TokenError> {
        if token.len() > MAX_TOKEN_BYTES || token.split('.').count() != 3 {
            return Err(TokenError::Malformed);
        }
        check_header(token)?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        // The issuer is read unverified only to pick the provider; the signature is then
        // checked with that provider's keys and `iss` is validated again.
        let raw_payload = token
            .split('.')
            .nth(1)
            .and_then(|p| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p)
                    .ok()
            })
            .ok_or(TokenError::Malformed)?;
        let unverified = parse_part(&raw_payload)?;
        let iss = claim_str(&unverified, "iss").ok_or(TokenError::UnknownIssuer)?;
        let (provider_index, provider) = self
            .providers
            .iter()
            .enumerate()
            .find(|(_, p)| p.config.issuer == iss)
            .ok_or(TokenError::UnknownIssuer)?;
        let alg = header.alg;
        if !provider.algorithms.contains(&alg) {
            return Err(TokenError::AlgorithmNotAllowed);
        }
        let Some(keys) = provider.keys.load() else {
            return Ok(Attempt::NeedKeys {
                provider: provider_index,
                unknown_kid: false,
            });
        };
        let kid = header.kid.as_deref();
        if kid.is_some() && keys.candidates(alg, kid).next().is_none() {
            if after_refetch {
                return Err(TokenError::UnknownKey);
            }
            return Ok(Attempt::NeedKeys {
                provider: provider_index,
                unknown_kid: true,
            });
        }
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.set_issuer(&[&provider.config.issuer]);
        validation.set_audience(&provider.config.audiences);
        validation.leeway = provider.config.clock_skew_seconds;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);

        let mut last_err = TokenError::UnknownKey;
        for key in keys.candidates(alg, kid) {
            match jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &validation) {
                Ok(data) => {
                    // `clockSkew` bounds `iat` too: a token from the future means a wrong
                    // clock or a forged issuance time.
                    match data.claims.get("iat") {
                        None => {}
                        Some(serde_json::Value::Number(n)) => {
                            let iat = n.as_f64().unwrap_or(f64::MAX);
                            let limit =
                                now_unix().saturating_add(provider.config.clock_skew_seconds);
                            if iat > limit as f64 {
                                return Err(TokenError::IssuedInFuture);
                            }
                        }
                        Some(_) => return Err(TokenError::Claim("iat".into())),
                    }
                    // RFC 9449 / RFC 8705: a key-bound token presented without its proof.
                    if data.claims.get("cnf").is_some_and(|c| !c.is_null()) {
                        return Err(TokenError::SenderConstrained);
                    }
                    let identity = Arc::new(identity_from_claims(&provider.config, &data.claims)?);
                    let exp = data.claims.get("exp").and_then(|e| e.as_u64()).unwrap_or(0);
                    self.remember(
                        token,
                        CachedToken {
                            identity: identity.clone(),
                            valid_until: exp.saturating_add(provider.config.clock_skew_seconds),
                            provider: provider_index,
                            keys: Arc::downgrade(&keys),
                        },
                    );
                    return Ok(Attempt::Verified(identity));
                }
                Err(e) => {
                    last_err = match e.kind() {
                        ErrorKind::InvalidSignature => TokenError::BadSignature,
                        ErrorKind::ExpiredSignature => return Err(TokenError::Expired),
                        ErrorKind::ImmatureSignature => return Err(TokenError::NotYetValid),
                        ErrorKind::InvalidAudience => return Err(TokenError::WrongAudience),
                        ErrorKind::InvalidIssuer => return Err(TokenError::UnknownIssuer),
                        ErrorKind::MissingRequiredClaim(c) | ErrorKind::InvalidClaimFormat(c) => {
                            return Err(TokenError::Claim(c.clone()));
                        }
                        ErrorKind::InvalidAlgorithm => TokenError::AlgorithmNotAllowed,
                        _ => TokenError::BadSignature,
                    };
                }
            }
        }
        Err(last_err)
    }

    fn remember(&self, token: &str, entry: CachedToken) {
        let slot = self.cache_slot(token);
        let weight = identity_bytes(&entry.identity);
        // The deadline in the cache is only for eviction; `cached` checks `valid_until` itself.
        let ttl = Duration::from_secs((entry.valid_until + 1).saturating_sub(now_unix()));
        let expires = Instant::now()
            .checked_add(ttl)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
        self.cache.insert(slot, entry, weight, expires);
    }
}
