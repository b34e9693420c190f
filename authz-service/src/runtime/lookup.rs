//! Compartment lookups: fetching a stored resource through a FhirConnection to learn whose
//! compartment it is in. Answers are cached briefly in the shared lookup cache under a digest
//! salted per client, so a config change (which builds new clients) never reuses an answer
//! fetched under the old one.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::config::ConnectionConfig;
use crate::core::smart::{LookupKey, Stored};
use crate::verify::cache::{ByteCache, alloc_bytes, string_bytes};

pub const CACHE_TTL: Duration = Duration::from_secs(30);
/// The cache a client made without one gets (tests and tools).
const PRIVATE_CACHE_BYTES: usize = 1 << 20;
/// The largest stored resource a lookup reads (a bigger one leaves the check undecided, 503).
const MAX_RESOURCE_BYTES: usize = 32 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("no OAuth token for the lookup: {0}")]
    Token(#[from] crate::runtime::oauth::TokenUnavailable),
    #[error("fetching {what} failed: {message}")]
    Fetch { what: String, message: String },
    #[error("fetching {what}: the server answered HTTP {status}")]
    Status { what: String, status: u16 },
    #[error("fetching {what}: the server answered with something that is not that resource")]
    Unexpected { what: String },
    #[error(transparent)]
    Tls(#[from] crate::runtime::tls::TlsError),
}

pub struct LookupClient {
    connection: String,
    base: String,
    client: reqwest::Client,
    authorization: Option<String>,
    oauth: Option<std::sync::Arc<crate::runtime::oauth::TokenSource>>,
    cache_salt: [u8; 32],
    cache: Arc<ByteCache<Stored>>,
}

/// Estimated heap bytes behind a JSON value (serde_json's map is a B-tree: entries plus
/// about half again for node slack).
fn json_bytes(v: &serde_json::Value) -> usize {
    use serde_json::Value;
    match v {
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
        Value::String(s) => string_bytes(s),
        Value::Array(items) => {
            alloc_bytes(items.len() * std::mem::size_of::<Value>())
                + items.iter().map(json_bytes).sum::<usize>()
        }
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                std::mem::size_of::<(String, Value)>() * 3 / 2 + string_bytes(k) + json_bytes(v)
            })
            .sum(),
    }
}

/// What the lookup cache charges for an answer: a stored resource is kept whole.
fn stored_bytes(s: &Stored) -> usize {
    match s {
        Stored::Found(resource) => {
            alloc_bytes(std::mem::size_of::<serde_json::Value>()) + json_bytes(resource)
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
        oauth: Option<std::sync::Arc<crate::runtime::oauth::TokenSource>>,
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
        oauth: Option<std::sync::Arc<crate::runtime::oauth::TokenSource>>,
        cache: Arc<ByteCache<Stored>>,
    ) -> Result<Self, LookupError> {
        let mut cache_salt = [0u8; 32];
        rand::fill(&mut cache_salt);
        let authorization = conn
            .auth
            .basic
            .as_ref()
            .map(|b| crate::verify::basic::header_value(&b.username, &b.password));
        Ok(LookupClient {
            connection: format!("{}/{}", conn.namespace, conn.name),
            base: conn.url.trim_end_matches('/').to_string(),
            client: crate::runtime::tls::http_client(&conn.tls, dir)?,
            authorization,
            oauth,
            cache_salt,
            cache,
        })
    }

    /// The cache slot of what a read of `key` would fetch (writes are cached under it too).
    fn cache_slot(&self, key: &LookupKey) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.cache_salt);
        h.update(key.resource_type.as_bytes());
        h.update([0]);
        h.update(key.id.as_bytes());
        match &key.version {
            None => h.update([0]),
            Some(v) => {
                h.update([1]);
                h.update(v.as_bytes());
            }
        }
        h.finalize().into()
    }

    /// What is stored under `key` (the current version, or one version for a vread).
    pub async fn stored(&self, key: &LookupKey) -> Result<Stored, LookupError> {
        // A write is decided on a fresh answer only: a resource moved to another patient, or
        // created under an id that was empty when last asked, must not be written on the
        // strength of an old one.
        let slot = self.cache_slot(key);
        if !key.for_write
            && let Some(s) = self.cache.get(&slot, Instant::now(), |s| Some(s.clone()))
        {
            return Ok(s);
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
        // reqwest's message repeats the URL, and with it the resource id (which can name a
        // patient): the error keeps only what went wrong.
        let resp = req.send().await.map_err(|e| LookupError::Fetch {
            what: what.clone(),
            message: e.without_url().to_string(),
        })?;
        let status = resp.status().as_u16();
        let stored = match status {
            404 => Stored::NotFound,
            // Deleted: it existed, and a 410 says nothing of whose it was.
            410 => Stored::Gone,
            200 => {
                let bytes = crate::runtime::http::read_bounded(resp, MAX_RESOURCE_BYTES)
                    .await
                    .map_err(|e| LookupError::Fetch {
                        what: what.clone(),
                        message: e.to_string(),
                    })?;
                let body =
                    crate::core::json::parse_strict(&bytes).map_err(|e| LookupError::Fetch {
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
        if matches!(stored, Stored::Found(_)) {
            self.cache.insert(
                slot,
                stored.clone(),
                stored_bytes(&stored),
                Instant::now() + CACHE_TTL,
            );
        }
        Ok(stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finding 3 (issue 14 attack): the lookup error masks the id (`Observation/<id>`), but
    /// reqwest's message repeats the whole URL, id included. It becomes the driver's
    /// `Unavailable` reason: the warn-level decision log line and the gRPC status message.
    #[tokio::test]
    async fn a_failed_lookup_does_not_name_the_resource_id() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // A loopback port nobody listens on: the connection is refused at once.
        let conn = ConnectionConfig {
            namespace: "ns".into(),
            name: "internal".into(),
            url: "http://127.0.0.1:1/fhir".into(),
            auth: Default::default(),
            tls: Default::default(),
        };
        let client = LookupClient::new(&conn, Path::new("."), None).unwrap();
        let key = LookupKey::current("Observation", "secret-id-of-patient-456");
        let err = client.stored(&key).await.unwrap_err().to_string();
        assert!(
            !err.contains("secret-id-of-patient-456"),
            "the error names the id: {err}"
        );
    }
}
