//! Compartment lookups: fetching a stored resource through a FhirConnection to learn whose
//! compartment it is in. Answers are cached briefly in the shared lookup cache under a digest
//! salted per client, so a config change (which builds new clients) never reuses an answer
//! fetched under the old one.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::cache::{ByteCache, alloc_bytes, string_bytes};
use crate::config::ConnectionConfig;
use crate::smart::Stored;

pub const CACHE_TTL: Duration = Duration::from_secs(30);
/// The cache a client made without one gets (tests and tools).
const PRIVATE_CACHE_BYTES: usize = 1 << 20;
/// A request (a bundle) needing more lookups than this is refused rather than fanned out.
pub const MAX_LOOKUPS_PER_REQUEST: usize = 50;

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("no OAuth token for the lookup: {0}")]
    Token(#[from] crate::oauth::TokenUnavailable),
    #[error("fetching {what} failed: {message}")]
    Fetch { what: String, message: String },
    #[error("fetching {what}: the server answered HTTP {status}")]
    Status { what: String, status: u16 },
    #[error("fetching {what}: the server answered with something that is not that resource")]
    Unexpected { what: String },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

pub struct LookupClient {
    connection: String,
    base: String,
    client: reqwest::Client,
    authorization: Option<String>,
    oauth: Option<std::sync::Arc<crate::oauth::TokenSource>>,
    cache_salt: [u8; 32],
    cache: Arc<ByteCache<Stored>>,
}

fn stored_bytes(s: &Stored) -> usize {
    match s {
        Stored::Found(patients) => {
            alloc_bytes(patients.len() * std::mem::size_of::<String>())
                + patients.iter().map(|p| string_bytes(p)).sum::<usize>()
        }
        _ => 0,
    }
}

impl LookupClient {
    /// `oauth` is the connection's token source when it uses OAuth (shared with outbound
    /// requests through the same connection).
    pub fn new(
        conn: &ConnectionConfig,
        dir: &Path,
        oauth: Option<std::sync::Arc<crate::oauth::TokenSource>>,
    ) -> Result<Self, LookupError> {
        Self::with_cache(
            conn,
            dir,
            oauth,
            Arc::new(ByteCache::new(PRIVATE_CACHE_BYTES)),
        )
    }

    /// A client whose answers go to `cache` (shared by every policy).
    pub fn with_cache(
        conn: &ConnectionConfig,
        dir: &Path,
        oauth: Option<std::sync::Arc<crate::oauth::TokenSource>>,
        cache: Arc<ByteCache<Stored>>,
    ) -> Result<Self, LookupError> {
        let mut cache_salt = [0u8; 32];
        rand::fill(&mut cache_salt);
        let authorization = conn
            .auth
            .basic
            .as_ref()
            .map(|b| crate::basic::header_value(&b.username, &b.password));
        Ok(LookupClient {
            connection: format!("{}/{}", conn.namespace, conn.name),
            base: conn.url.trim_end_matches('/').to_string(),
            client: crate::tls::http_client(&conn.tls, dir)?,
            authorization,
            oauth,
            cache_salt,
            cache,
        })
    }

    fn cache_slot(&self, resource_type: &str, id: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.cache_salt);
        h.update(resource_type.as_bytes());
        h.update([0]);
        h.update(id.as_bytes());
        h.finalize().into()
    }

    /// Whose compartment `type/id` is in, or that nothing is stored there.
    pub async fn stored(&self, resource_type: &str, id: &str) -> Result<Stored, LookupError> {
        let key = self.cache_slot(resource_type, id);
        if let Some(s) = self.cache.get(&key, Instant::now(), |s| Some(s.clone())) {
            return Ok(s);
        }
        let what = format!("{resource_type}/<id> through {}", self.connection);
        let mut req = self
            .client
            .get(format!("{}/{resource_type}/{id}", self.base))
            .header("accept", "application/fhir+json");
        if let Some(a) = &self.authorization {
            req = req.header("authorization", a);
        }
        if let Some(source) = &self.oauth {
            req = req.header("authorization", format!("Bearer {}", source.token().await?));
        }
        let resp = req.send().await.map_err(|e| LookupError::Fetch {
            what: what.clone(),
            message: e.to_string(),
        })?;
        let status = resp.status().as_u16();
        let stored = match status {
            404 | 410 => Stored::NotFound,
            200 => {
                let body: serde_json::Value =
                    resp.json().await.map_err(|e| LookupError::Fetch {
                        what: what.clone(),
                        message: e.to_string(),
                    })?;
                let same = body.get("resourceType").and_then(|t| t.as_str()) == Some(resource_type)
                    && body.get("id").and_then(|i| i.as_str()) == Some(id);
                if !same {
                    return Err(LookupError::Unexpected { what });
                }
                Stored::Found(crate::compartment::patients_of(&body))
            }
            _ => return Err(LookupError::Status { what, status }),
        };
        self.cache.insert(
            key,
            stored.clone(),
            stored_bytes(&stored),
            Instant::now() + CACHE_TTL,
        );
        Ok(stored)
    }
}
