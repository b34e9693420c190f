//! RFC 7662 token introspection over HTTPS, for one policy.
//!
//! [`IntrospectionClient::introspect`] answers from the verdict cache when it can; otherwise
//! it makes one call per token however many checks of that token arrive at once (they wait
//! for the same call: single flight), and while the endpoint is failing it makes none at all
//! until the backoff step ends ([`crate::runtime::backoff`]: one failure, one step), so an
//! outage does not turn into a storm of calls. An endpoint that cannot be asked never leads to
//! an allow: uncached tokens are then undecidable (503).
//!
//! The client authenticates as `client_secret_basic` or `client_secret_post` (RFC 6749
//! section 2.3.1, as for outbound OAuth connections), over the policy's TLS setting. Neither
//! the token nor the client secret ever reaches a log line or an error message.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{ClientAuthMethod, IntrospectionConfig};
use crate::core::driver::TokenFailure;
use crate::core::policy::{DenyReason, TokenIdentity};
use crate::observe::Observer;
use crate::runtime::backoff::{Backoff, BackoffPolicy};
use crate::verify::cache::{ByteCache, Key};
use crate::verify::introspection::{CachedIntrospection, Introspector, Judged, now_unix};

/// Timing knobs; the defaults are what the product promises, tests shorten them.
#[derive(Debug, Clone, Copy)]
pub struct IntrospectionOptions {
    /// First backoff step after a failed call; doubles up to `max_retry`.
    pub min_retry: Duration,
    pub max_retry: Duration,
    pub request_timeout: Duration,
}

impl Default for IntrospectionOptions {
    fn default() -> Self {
        IntrospectionOptions {
            min_retry: Duration::from_secs(1),
            // As for OAuth token endpoints: tokens work again within 10 s of the endpoint's
            // return, and a dead endpoint sees a handful of calls a minute per replica.
            max_retry: Duration::from_secs(10),
            // Envoy's ext_authz timeout is what the client waits for; an answer later than
            // this is useless to it.
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// Responses larger than this are not read (an introspection answer is a few hundred bytes).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// A call that produced no verdict. `kind` is a metric label.
#[derive(Debug, Clone)]
struct CallFailed {
    kind: &'static str,
    message: String,
}

type Flight = Arc<tokio::sync::OnceCell<Result<Judged, CallFailed>>>;

struct Health {
    backoff: Backoff,
    last_error: Option<String>,
}

pub struct IntrospectionClient {
    /// `namespace/name` of the policy: the metric label and the name in log lines.
    label: String,
    endpoint: String,
    /// `client_id`/`client_secret` form members (client_secret_post).
    auth_form: Vec<(&'static str, String)>,
    /// The Authorization header (client_secret_basic).
    basic: Option<String>,
    client: reqwest::Client,
    judge: Introspector,
    inflight: Mutex<HashMap<Key, Flight>>,
    health: Mutex<Health>,
    options: IntrospectionOptions,
    observer: Arc<dyn Observer>,
}

impl std::fmt::Debug for IntrospectionClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntrospectionClient")
            .field("policy", &self.label)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl IntrospectionClient {
    pub fn new(
        label: String,
        config: &IntrospectionConfig,
        dir: &Path,
        cache: Arc<ByteCache<CachedIntrospection>>,
        options: IntrospectionOptions,
        observer: Arc<dyn Observer>,
    ) -> Result<Self, crate::runtime::tls::TlsError> {
        let client = crate::runtime::tls::http_client(&config.tls, dir)?;
        let (auth_form, basic) = match config.client_auth_method {
            ClientAuthMethod::ClientSecretBasic => (
                Vec::new(),
                Some(crate::runtime::oauth::basic_header(
                    &config.client_id,
                    &config.client_secret,
                )),
            ),
            ClientAuthMethod::ClientSecretPost => (
                vec![
                    ("client_id", config.client_id.clone()),
                    ("client_secret", config.client_secret.clone()),
                ],
                None,
            ),
        };
        Ok(IntrospectionClient {
            label,
            endpoint: config.endpoint.clone(),
            auth_form,
            basic,
            client,
            judge: Introspector::new(config, cache),
            inflight: Mutex::new(HashMap::new()),
            health: Mutex::new(Health {
                backoff: Backoff::default(),
                last_error: None,
            }),
            options,
            observer,
        })
    }

    /// The token's identity, or why it is refused, or why nothing can be said (503).
    pub async fn introspect(&self, token: &str) -> Result<Arc<TokenIdentity>, TokenFailure> {
        if token.len() > crate::verify::jwt::MAX_TOKEN_BYTES {
            return Err(TokenFailure::Invalid(
                DenyReason::InvalidToken,
                "the token is too long".into(),
            ));
        }
        let key = self.judge.key(token);
        if let Some(verdict) = self.judge.cached(&key) {
            self.observer.introspection_reused(&self.label, false);
            return verdict_result(verdict);
        }
        if let Some(e) = self.in_backoff() {
            return Err(TokenFailure::Undecidable(e));
        }
        let flight = {
            let Ok(mut inflight) = self.inflight.lock() else {
                return Err(TokenFailure::Undecidable(
                    "introspection state lock poisoned".into(),
                ));
            };
            inflight.entry(key).or_default().clone()
        };
        let led = AtomicBool::new(false);
        // If the check that started the call is dropped (Envoy gave up on it), the next
        // waiter starts it again: OnceCell hands initialisation on.
        let result = flight
            .get_or_init(|| async {
                led.store(true, Ordering::Relaxed);
                self.call(token, key).await
            })
            .await
            .clone();
        if let Ok(mut inflight) = self.inflight.lock()
            && inflight.get(&key).is_some_and(|f| Arc::ptr_eq(f, &flight))
        {
            inflight.remove(&key);
        }
        if !led.load(Ordering::Relaxed) {
            self.observer.introspection_reused(&self.label, true);
        }
        match result {
            Ok(judged) => verdict_result(judged.verdict),
            Err(e) => Err(TokenFailure::Undecidable(e.message)),
        }
    }

    fn policy(&self) -> BackoffPolicy {
        BackoffPolicy {
            min: self.options.min_retry,
            max: self.options.max_retry,
        }
    }

    /// The reason no call may be made now, while the endpoint is in backoff.
    fn in_backoff(&self) -> Option<String> {
        let h = self.health.lock().ok()?;
        let left = h.backoff.remaining(Instant::now())?;
        Some(format!(
            "{} (no new introspection call for {} ms)",
            h.last_error
                .as_deref()
                .unwrap_or("the introspection endpoint is failing"),
            left.as_millis()
        ))
    }

    /// One call, with its accounting: metrics, backoff, cache.
    async fn call(&self, token: &str, key: Key) -> Result<Judged, CallFailed> {
        // A failure that ended the previous flight may have started a backoff since.
        if let Some(e) = self.in_backoff() {
            return Err(CallFailed {
                kind: "backoff",
                message: e,
            });
        }
        let started = Instant::now();
        let result = self.exchange(token).await;
        let elapsed = started.elapsed();
        let mut health = self.health.lock().map_err(|_| CallFailed {
            kind: "internal",
            message: "introspection state lock poisoned".into(),
        })?;
        match result {
            Ok(judged) => {
                let kind = match &judged.verdict {
                    Ok(_) => "active",
                    Err(crate::verify::introspection::Refusal::Inactive) => "inactive",
                    Err(_) => "refused",
                };
                self.observer.introspection_call(&self.label, kind, elapsed);
                health.backoff.succeeded();
                health.last_error = None;
                drop(health);
                self.judge.remember(key, &judged);
                Ok(judged)
            }
            Err(e) => {
                self.observer
                    .introspection_call(&self.label, e.kind, elapsed);
                let delay = health.backoff.failed(&self.policy(), Instant::now());
                health.last_error = Some(e.message.clone());
                tracing::warn!(
                    policy = %self.label, endpoint = %self.endpoint, kind = e.kind,
                    error = %e.message, failures = health.backoff.failures(),
                    retry_in_ms = delay.as_millis() as u64,
                    "token introspection failed; uncached tokens are answered 503 until it works"
                );
                Err(e)
            }
        }
    }

    /// The HTTP exchange. Error messages name the endpoint and what went wrong, never the
    /// token or the client secret.
    async fn exchange(&self, token: &str) -> Result<Judged, CallFailed> {
        let fail = |kind: &'static str, what: String| CallFailed {
            kind,
            message: format!(
                "policy {}: introspection at {}: {what}",
                self.label, self.endpoint
            ),
        };
        let form = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("token", token);
            form.append_pair("token_type_hint", "access_token");
            for (k, v) in &self.auth_form {
                form.append_pair(k, v);
            }
            form.finish()
        };
        let mut req = self
            .client
            .post(&self.endpoint)
            .timeout(self.options.request_timeout)
            .header("accept", "application/json")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form);
        if let Some(b) = &self.basic {
            req = req.header("authorization", b);
        }
        let resp = req.send().await.map_err(|e| {
            // reqwest's errors name the URL and the cause; never the body we sent.
            let chain = crate::runtime::oauth::error_chain(&e);
            // A certificate that does not verify is a trust setting to fix; anything else
            // (refused, reset, a handshake cut short) is the endpoint being away.
            let kind = if chain.contains("certificate") {
                "tls"
            } else if e.is_timeout() {
                "timeout"
            } else {
                "unreachable"
            };
            fail(kind, chain)
        })?;
        let status = resp.status();
        let body = crate::runtime::http::read_bounded(resp, MAX_RESPONSE_BYTES)
            .await
            .map_err(|e| match e {
                crate::runtime::http::BodyError::TooLarge(_) => {
                    fail("invalid_response", e.to_string())
                }
                crate::runtime::http::BodyError::Read(m) => fail("unreachable", m),
            })?;
        if !status.is_success() {
            let kind = if status.is_server_error() {
                "http_5xx"
            } else {
                "http_4xx"
            };
            // 401/403 here mean that fhirguard's own client credentials are refused.
            return Err(fail(kind, format!("HTTP {}", status.as_u16())));
        }
        self.judge
            .judge(&body, now_unix())
            .map_err(|e| fail("invalid_response", e))
    }
}

fn verdict_result(
    verdict: crate::verify::introspection::Verdict,
) -> Result<Arc<TokenIdentity>, TokenFailure> {
    verdict.map_err(|r| TokenFailure::Invalid(r.reason(), r.message()))
}
