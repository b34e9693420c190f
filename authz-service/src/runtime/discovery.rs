//! The issuer's OpenID Provider Metadata (`[issuer]/.well-known/openid-configuration`), fetched
//! and refreshed for the SMART discovery documents that take their endpoints from it.
//!
//! Like a JWKS source: fetched when first built and every `refreshInterval` after, over the
//! policy's TLS setting, with one shared backoff after failures; the last good document stays
//! in force through an outage. A document whose `issuer` differs from the configured issuer is
//! refused (OpenID Connect Discovery 1.0 §4.3), so a misconfigured or hostile metadata host
//! cannot send apps elsewhere. Sources are shared between config generations by definition.

use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

use crate::config::OpenIdDiscovery;
use crate::observe::Observer;
use crate::runtime::backoff::{Backoff, BackoffPolicy};

const MAX_METADATA_BYTES: usize = 256 * 1024;
const FIRST_FETCH_WAIT: Duration = Duration::from_secs(1);

/// Retry delays after a failed fetch.
#[derive(Debug, Clone, Copy)]
pub struct DiscoveryOptions {
    pub retry_after_failure: Duration,
    pub max_retry: Duration,
}

impl Default for DiscoveryOptions {
    fn default() -> Self {
        DiscoveryOptions {
            retry_after_failure: Duration::from_secs(1),
            max_retry: Duration::from_secs(30),
        }
    }
}

pub struct OpenIdSource {
    label: String,
    issuer: String,
    url: String,
    client: reqwest::Client,
    refresh: Duration,
    doc: ArcSwapOption<serde_json::Value>,
    fetch_lock: tokio::sync::Mutex<()>,
    backoff: Mutex<(Backoff, Option<String>)>,
    options: DiscoveryOptions,
    observer: Arc<dyn Observer>,
}

impl OpenIdSource {
    fn policy(&self) -> BackoffPolicy {
        BackoffPolicy {
            min: self.options.retry_after_failure,
            max: self.options.max_retry.min(self.refresh),
        }
    }

    fn backoff_remaining(&self) -> Option<(Duration, String)> {
        let st = self.backoff.lock().ok()?;
        st.0.remaining(Instant::now()).map(|d| {
            (
                d,
                st.1.clone()
                    .unwrap_or_else(|| "the last fetch failed".into()),
            )
        })
    }

    /// The last good metadata, fetching it first if there never was any.
    pub async fn metadata(&self) -> Result<Arc<serde_json::Value>, String> {
        if let Some(d) = self.doc.load_full() {
            return Ok(d);
        }
        if let Some((left, why)) = self.backoff_remaining() {
            return Err(format!("{why} (next attempt in {} ms)", left.as_millis()));
        }
        let Ok(_guard) = tokio::time::timeout(FIRST_FETCH_WAIT, self.fetch_lock.lock()).await
        else {
            return Err("the first OpenID discovery fetch is still under way".into());
        };
        if let Some(d) = self.doc.load_full() {
            return Ok(d);
        }
        if let Some((left, why)) = self.backoff_remaining() {
            return Err(format!("{why} (next attempt in {} ms)", left.as_millis()));
        }
        self.fetch_now().await
    }

    async fn fetch_now(&self) -> Result<Arc<serde_json::Value>, String> {
        let result = self.fetch().await;
        let have = self.doc.load().is_some();
        match result {
            Ok(doc) => {
                let doc = Arc::new(doc);
                self.doc.store(Some(doc.clone()));
                if let Ok(mut st) = self.backoff.lock() {
                    st.0.succeeded();
                    st.1 = None;
                }
                self.observer.discovery_fetched(&self.label, true, false);
                tracing::info!(source = %self.label, "OpenID discovery document loaded");
                Ok(doc)
            }
            Err(e) => {
                let retry = self
                    .backoff
                    .lock()
                    .map(|mut st| {
                        st.1 = Some(e.clone());
                        st.0.failed(&self.policy(), Instant::now())
                    })
                    .unwrap_or_default();
                self.observer.discovery_fetched(&self.label, false, have);
                tracing::warn!(
                    source = %self.label, error = %e, keeping_last_good = have,
                    retry_in_ms = retry.as_millis() as u64,
                    "OpenID discovery fetch failed"
                );
                Err(e)
            }
        }
    }

    async fn fetch(&self) -> Result<serde_json::Value, String> {
        let resp = self
            .client
            .get(&self.url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| format!("OpenID discovery fetch failed: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!(
                "OpenID discovery endpoint answered HTTP {}",
                resp.status().as_u16()
            ));
        }
        let body = crate::runtime::http::read_bounded(resp, MAX_METADATA_BYTES)
            .await
            .map_err(|e| format!("OpenID discovery fetch failed: {e}"))?;
        // Strict: a document with two `issuer` members must not be read as either.
        let doc: serde_json::Value = crate::core::json::parse_strict(&body)
            .map_err(|e| format!("OpenID discovery document is not valid JSON: {e}"))?;
        if !doc.is_object() {
            return Err("OpenID discovery document is not a JSON object".into());
        }
        // OpenID Connect Discovery 1.0 §4.3: the issuer must be identical to the one the
        // document was fetched for, character for character (a trailing `/` included).
        let issuer = doc.get("issuer").and_then(|i| i.as_str()).unwrap_or("");
        if issuer != self.issuer {
            return Err(format!(
                "OpenID discovery document names issuer {issuer:?}, not the configured {:?}",
                self.issuer
            ));
        }
        Ok(doc)
    }
}

/// Fetches at once, then every refresh interval; after a failure, when the backoff step ends.
fn spawn_refresher(weak: Weak<OpenIdSource>) {
    tokio::spawn(async move {
        let mut delay = Duration::ZERO;
        loop {
            tokio::time::sleep(delay).await;
            let Some(source) = weak.upgrade() else { return };
            let _guard = source.fetch_lock.lock().await;
            if let Some((left, _)) = source.backoff_remaining() {
                delay = left;
                continue;
            }
            delay = match source.fetch_now().await {
                Ok(_) => source.refresh,
                Err(_) => source
                    .backoff_remaining()
                    .map_or(source.options.retry_after_failure, |(d, _)| d),
            };
        }
    });
}

/// Shares sources between config generations.
pub struct DiscoveryRegistry {
    sources: crate::runtime::shared::Shared<OpenIdSource>,
    options: DiscoveryOptions,
    observer: Arc<dyn Observer>,
}

impl DiscoveryRegistry {
    pub fn new(options: DiscoveryOptions, observer: Arc<dyn Observer>) -> Self {
        DiscoveryRegistry {
            sources: Default::default(),
            options,
            observer,
        }
    }

    pub fn source(
        &self,
        label: &str,
        issuer: &str,
        d: &OpenIdDiscovery,
        dir: &Path,
    ) -> Result<Arc<OpenIdSource>, crate::runtime::tls::TlsError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let ca = crate::runtime::shared::ca_bytes(&d.tls, dir);
        let id = crate::runtime::shared::definition_id(&[
            url.as_bytes(),
            format!("{:?}", d.tls.mode).as_bytes(),
            &ca,
            &d.refresh_interval_seconds.to_be_bytes(),
        ]);
        let (source, new) = self.sources.get_or_make(id, || {
            let client = crate::runtime::tls::http_client(&d.tls, dir)?;
            Ok::<_, crate::runtime::tls::TlsError>(Arc::new(OpenIdSource {
                label: label.to_string(),
                issuer: issuer.to_string(),
                url,
                client,
                refresh: Duration::from_secs(d.refresh_interval_seconds.max(1)),
                doc: ArcSwapOption::empty(),
                fetch_lock: tokio::sync::Mutex::new(()),
                backoff: Mutex::new((Backoff::default(), None)),
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
