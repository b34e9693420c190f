//! JSON Web Key Sets fetched over HTTPS, kept and refreshed (parsing is `verify::keys`).
//!
//! A [`JwksSource`] holds the last good key set. It is refreshed in the background every
//! `refreshInterval`; when a token names a key id the set does not have, it is refetched at
//! once, but at most once per [`JwksOptions::min_refetch_interval`], so that a flood of tokens
//! with random `kid`s cannot turn fhirguard into a load generator against the IdP. A failed
//! fetch never throws away the keys we have: they stay in force, and the failure shows in the
//! `fhirguard_jwks_stale` gauge and the log.
//!
//! Every fetch, whoever starts it (the refresher, a request that finds no keys at all, an
//! unknown `kid`), goes through one backoff ([`crate::runtime::backoff`]): a failure is one step, and
//! until the step is over nobody fetches. While no key set was ever obtained, token requests
//! therefore get UNAVAILABLE at once instead of each making a fetch against an IdP that is
//! down, whatever the tokens claim to be.
//!
//! Sources live in a [`JwksRegistry`] keyed by what defines them (URI, TLS trust), so a config
//! reload that keeps a provider keeps its keys instead of refetching (and failing closed when
//! the IdP happens to be down during the reload).

use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::config::JwksConfig;
use crate::observe::Observer;
use crate::runtime::backoff::{Backoff, BackoffPolicy};
use crate::runtime::http::{BodyError, error_chain, read_bounded};
pub use crate::verify::keys::KeysUnavailable;
use crate::verify::keys::{KeySet, KeySetError, KeySlot, parse_jwks};

/// A JWKS document above this size is refused: real ones are a few kilobytes.
const MAX_JWKS_BYTES: usize = 512 * 1024;
/// How long a token request waits for a fetch under way while no key set was ever obtained.
const FIRST_FETCH_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error(transparent)]
    Document(#[from] KeySetError),
    #[error("JWKS fetch failed: {0}")]
    Fetch(String),
    #[error("JWKS endpoint answered HTTP {0}")]
    Status(u16),
    #[error("JWKS document is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error(transparent)]
    Tls(#[from] crate::runtime::tls::TlsError),
}

/// Tunables shared by every source.
#[derive(Debug, Clone, Copy)]
pub struct JwksOptions {
    /// Minimum time between two refetches caused by unknown key ids.
    pub min_refetch_interval: Duration,
    /// First delay after a failed fetch; doubles with each failure up to `max_retry` (and
    /// never beyond the source's refresh interval).
    pub retry_after_failure: Duration,
    pub max_retry: Duration,
}

impl Default for JwksOptions {
    fn default() -> Self {
        JwksOptions {
            min_refetch_interval: Duration::from_secs(30),
            retry_after_failure: Duration::from_secs(1),
            // An IdP that comes back is used within 10 s; a dead one sees six fetches a
            // minute per replica and key source.
            max_retry: Duration::from_secs(10),
        }
    }
}

#[derive(Default)]
struct FetchState {
    backoff: Backoff,
    last_error: Option<String>,
    last_success: Option<Instant>,
}

enum Origin {
    Static,
    Remote {
        uri: String,
        client: reqwest::Client,
        refresh: Duration,
    },
}

/// One provider's keys.
pub struct JwksSource {
    label: String,
    origin: Origin,
    keys: Arc<KeySlot>,
    /// Single flight: concurrent misses wait for one fetch instead of starting many.
    fetch_lock: tokio::sync::Mutex<()>,
    fetch_state: Mutex<FetchState>,
    last_refetch: Mutex<Option<Instant>>,
    options: JwksOptions,
    observer: Arc<dyn Observer>,
}

impl JwksSource {
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Where the keys in force live; token verification reads them from there.
    pub fn slot(&self) -> &Arc<KeySlot> {
        &self.keys
    }

    /// The current keys, fetching them first if none were ever loaded. While the last fetch
    /// failed and its backoff step is not over, the answer is UNAVAILABLE without a fetch.
    pub async fn keys(&self) -> Result<Arc<KeySet>, KeysUnavailable> {
        if let Some(k) = self.keys.load() {
            return Ok(k);
        }
        self.check_backoff()?;
        // Wait for a fetch already under way, but not for as long as a hanging IdP can make
        // it take (connect and request timeouts): Envoy would give up first anyway.
        let Ok(_guard) = tokio::time::timeout(FIRST_FETCH_WAIT, self.fetch_lock.lock()).await
        else {
            return Err(
                self.unavailable("the first fetch of the key set is still under way".into())
            );
        };
        if let Some(k) = self.keys.load() {
            return Ok(k);
        }
        // The fetch we waited for may just have failed: that was this step's attempt.
        self.check_backoff()?;
        self.fetch_now()
            .await
            .map_err(|e| self.unavailable(e.to_string()))
    }

    fn unavailable(&self, reason: String) -> KeysUnavailable {
        KeysUnavailable {
            source_label: self.label.clone(),
            reason,
        }
    }

    fn policy(&self) -> BackoffPolicy {
        let cap = self.refresh_interval().unwrap_or(self.options.max_retry);
        BackoffPolicy {
            min: self.options.retry_after_failure,
            max: self.options.max_retry.min(cap),
        }
    }

    /// Time left in the current backoff step, if any.
    fn backoff_remaining(&self) -> Option<Duration> {
        self.fetch_state
            .lock()
            .ok()
            .and_then(|st| st.backoff.remaining(Instant::now()))
    }

    fn check_backoff(&self) -> Result<(), KeysUnavailable> {
        let Ok(st) = self.fetch_state.lock() else {
            return Ok(());
        };
        match st.backoff.remaining(Instant::now()) {
            None => Ok(()),
            Some(left) => Err(self.unavailable(format!(
                "{} (next attempt in {} ms)",
                st.last_error.as_deref().unwrap_or("the last fetch failed"),
                left.as_millis()
            ))),
        }
    }

    /// Refetches because a token names an unknown key id, unless that happened recently.
    /// Returns the new set when a fetch took place and succeeded.
    pub async fn refetch_for_unknown_kid(&self) -> Option<Arc<KeySet>> {
        if matches!(self.origin, Origin::Static) {
            return None;
        }
        {
            let mut last = self.last_refetch.lock().ok()?;
            let now = Instant::now();
            if last.is_some_and(|t| now.duration_since(t) < self.options.min_refetch_interval) {
                return None;
            }
            *last = Some(now);
        }
        if self.backoff_remaining().is_some() {
            return None;
        }
        let _guard = self.fetch_lock.lock().await;
        if self.backoff_remaining().is_some() {
            return None;
        }
        self.fetch_now().await.ok()
    }

    async fn fetch_now(&self) -> Result<Arc<KeySet>, JwksError> {
        let Origin::Remote { uri, client, .. } = &self.origin else {
            return self.keys.load().ok_or(KeySetError::NoUsableKeys.into());
        };
        let result = fetch(client, uri).await;
        let mut st = self.fetch_state.lock().ok();
        match result {
            Ok(set) => {
                let set = Arc::new(set);
                tracing::info!(source = %self.label, keys = set.keys.len(), skipped = set.skipped, "JWKS loaded");
                self.keys.store(set.clone());
                self.observer.jwks_fetched(&self.label, true, false);
                if let Some(st) = st.as_mut() {
                    st.backoff.succeeded();
                    st.last_error = None;
                    st.last_success = Some(Instant::now());
                }
                Ok(set)
            }
            Err(e) => {
                let have = self.keys.load().is_some();
                let retry_in = st
                    .as_mut()
                    .map(|st| {
                        st.last_error = Some(e.to_string());
                        st.backoff.failed(&self.policy(), Instant::now())
                    })
                    .unwrap_or_default();
                tracing::warn!(
                    source = %self.label, error = %e, keeping_last_good = have,
                    retry_in_ms = retry_in.as_millis() as u64,
                    "JWKS fetch failed"
                );
                self.observer.jwks_fetched(&self.label, false, have);
                Err(e)
            }
        }
    }

    fn refresh_interval(&self) -> Option<Duration> {
        match &self.origin {
            Origin::Remote { refresh, .. } => Some(*refresh),
            Origin::Static => None,
        }
    }
}

async fn fetch(client: &reqwest::Client, uri: &str) -> Result<KeySet, JwksError> {
    let resp = client
        .get(uri)
        .header("accept", "application/jwk-set+json, application/json")
        .send()
        .await
        .map_err(|e| JwksError::Fetch(error_chain(&e)))?;
    if !resp.status().is_success() {
        return Err(JwksError::Status(resp.status().as_u16()));
    }
    let body = read_bounded(resp, MAX_JWKS_BYTES)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge(_) => JwksError::TooLarge,
            BodyError::Read(m) => JwksError::Fetch(m),
        })?;
    Ok(parse_jwks(&body)?)
}

/// Shares sources between config generations.
pub struct JwksRegistry {
    sources: crate::runtime::shared::Shared<JwksSource>,
    options: JwksOptions,
    observer: Arc<dyn Observer>,
}

impl JwksRegistry {
    pub fn new(options: JwksOptions, observer: Arc<dyn Observer>) -> Self {
        JwksRegistry {
            sources: Default::default(),
            options,
            observer,
        }
    }

    /// The source for a provider's JWKS setting, reusing a live one with the same definition.
    /// A new remote source gets a background refresher that ends when the source is dropped.
    pub fn source(
        &self,
        label: &str,
        jwks: &JwksConfig,
        dir: &Path,
    ) -> Result<Arc<JwksSource>, JwksError> {
        if let Some(doc) = &jwks.document {
            let set = parse_jwks(doc.as_bytes())?;
            return Ok(Arc::new(JwksSource {
                label: label.to_string(),
                origin: Origin::Static,
                keys: Arc::new(KeySlot::new(Some(set))),
                fetch_lock: tokio::sync::Mutex::new(()),
                fetch_state: Mutex::default(),
                last_refetch: Mutex::new(None),
                options: self.options,
                observer: self.observer.clone(),
            }));
        }
        let uri = jwks.uri.clone().unwrap_or_default();
        let ca = crate::runtime::shared::ca_bytes(&jwks.tls, dir);
        let id = crate::runtime::shared::definition_id(&[
            uri.as_bytes(),
            format!("{:?}", jwks.tls.mode).as_bytes(),
            &ca,
            &jwks.refresh_interval_seconds.to_be_bytes(),
        ]);
        let (source, new) = self.sources.get_or_make(id, || {
            let client = crate::runtime::tls::http_client(&jwks.tls, dir)?;
            Ok::<_, JwksError>(Arc::new(JwksSource {
                label: label.to_string(),
                origin: Origin::Remote {
                    uri,
                    client,
                    refresh: Duration::from_secs(jwks.refresh_interval_seconds.max(1)),
                },
                keys: Arc::new(KeySlot::default()),
                fetch_lock: tokio::sync::Mutex::new(()),
                fetch_state: Mutex::default(),
                last_refetch: Mutex::new(None),
                options: self.options,
                observer: self.observer.clone(),
            }))
        })?;
        if new {
            spawn_refresher(Arc::downgrade(&source));
        }
        Ok(source)
    }
}

/// Fetches at once, then every refresh interval; after a failure it retries when the backoff
/// step is over, unless a request did so first. Ends when the source is no longer used.
fn spawn_refresher(weak: Weak<JwksSource>) {
    tokio::spawn(async move {
        let mut delay = Duration::ZERO;
        loop {
            tokio::time::sleep(delay).await;
            let Some(source) = weak.upgrade() else { return };
            let Some(interval) = source.refresh_interval() else {
                return;
            };
            let _guard = source.fetch_lock.lock().await;
            if let Some(left) = source.backoff_remaining() {
                // Someone else's attempt failed meanwhile: that was this step.
                delay = left;
                continue;
            }
            let fetched_ago = source
                .fetch_state
                .lock()
                .ok()
                .and_then(|st| st.last_success)
                .map(|t| t.elapsed());
            if let Some(ago) = fetched_ago.filter(|a| *a < interval)
                && !delay.is_zero()
            {
                // An unknown-kid refetch (or a request) fetched recently.
                delay = interval - ago;
                continue;
            }
            delay = match source.fetch_now().await {
                Ok(_) => interval,
                Err(_) => source
                    .backoff_remaining()
                    .unwrap_or(source.options.retry_after_failure),
            };
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TlsConfig;

    /// An IdP that accepts connections and never answers: token requests do not wait for
    /// the fetch's own timeouts, and they never start a fetch of their own meanwhile.
    #[tokio::test]
    async fn a_hanging_first_fetch_answers_unavailable_quickly() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(tcp);
            }
        });
        let registry = JwksRegistry::new(JwksOptions::default(), Arc::new(crate::observe::Ignore));
        let config = JwksConfig {
            uri: Some(format!("https://127.0.0.1:{port}/jwks")),
            refresh_interval_seconds: 600,
            tls: TlsConfig {
                mode: crate::config::TlsMode::SkipVerification,
                ca_file: None,
            },
            document: None,
        };
        let source = registry.source("t/p/idp", &config, Path::new(".")).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        for _ in 0..3 {
            let started = Instant::now();
            let err = source.keys().await.err().unwrap();
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{:?}",
                started.elapsed()
            );
            assert!(err.reason.contains("under way"), "{err}");
        }
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "only the refresher's fetch reached the IdP"
        );
    }
}
