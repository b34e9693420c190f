//! Compartment lookups: fetching a stored resource through a FhirConnection to learn whose
//! compartment it is in. Answers are cached briefly; the cache belongs to one loaded config,
//! so a config change never reuses an answer fetched under the old one.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::ConnectionConfig;
use crate::smart::{LookupKey, Stored};

pub const CACHE_TTL: Duration = Duration::from_secs(30);
pub const CACHE_CAPACITY: usize = 10_000;
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
    cache: Mutex<HashMap<LookupKey, (Instant, Stored)>>,
}

impl LookupClient {
    /// `oauth` is the connection's token source when it uses OAuth (shared with outbound
    /// requests through the same connection).
    pub fn new(
        conn: &ConnectionConfig,
        dir: &Path,
        oauth: Option<std::sync::Arc<crate::oauth::TokenSource>>,
    ) -> Result<Self, LookupError> {
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
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// What is stored under `key` (the current version, or one version for a vread).
    pub async fn stored(&self, key: &LookupKey) -> Result<Stored, LookupError> {
        // A write is decided on a fresh answer only: a resource moved to another patient, or
        // created under an id that was empty when last asked, must not be written on the
        // strength of an old one.
        if !key.for_write
            && let Ok(cache) = self.cache.lock()
            && let Some((at, s)) = cache.get(&key.read())
            && at.elapsed() < CACHE_TTL
        {
            return Ok(s.clone());
        }
        let resource_type = key.resource_type.as_str();
        let what = format!("{resource_type}/<id> through {}", self.connection);
        let mut req = self
            .client
            .get(format!("{}/{}", self.base, key.path()))
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
            404 => Stored::NotFound,
            // Deleted: it existed, and a 410 says nothing of whose it was.
            410 => Stored::Gone,
            200 => {
                let bytes = resp.bytes().await.map_err(|e| LookupError::Fetch {
                    what: what.clone(),
                    message: e.to_string(),
                })?;
                let body = crate::json::parse_strict(&bytes).map_err(|e| LookupError::Fetch {
                    what: what.clone(),
                    message: e.to_string(),
                })?;
                let same = body.get("resourceType").and_then(|t| t.as_str()) == Some(resource_type)
                    && body.get("id").and_then(|i| i.as_str()) == Some(key.id.as_str())
                    && key.version.as_deref().is_none_or(|v| {
                        body.pointer("/meta/versionId").and_then(|x| x.as_str()) == Some(v)
                    });
                if !same {
                    return Err(LookupError::Unexpected { what });
                }
                Stored::Found(std::sync::Arc::new(body))
            }
            _ => return Err(LookupError::Status { what, status }),
        };
        // Only what exists is remembered: "nothing there" may stop being true at any moment.
        if matches!(stored, Stored::Found(_))
            && let Ok(mut cache) = self.cache.lock()
        {
            if cache.len() >= CACHE_CAPACITY {
                cache.retain(|_, (at, _)| at.elapsed() < CACHE_TTL);
                if cache.len() >= CACHE_CAPACITY {
                    cache.clear();
                }
            }
            cache.insert(key.read(), (Instant::now(), stored.clone()));
        }
        Ok(stored)
    }
}
