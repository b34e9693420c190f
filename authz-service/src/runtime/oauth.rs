//! OAuth2 client-credentials tokens for outbound connections (RFC 6749 section 4.4).
//!
//! One [`TokenSource`] per connection holds the current token. A background task fetches it at
//! start and again before it expires (and at least hourly); a failed fetch is retried with
//! exponential backoff and jitter while the current token stays in use for as long as it is
//! valid. Requests never fetch in parallel: they share one in-flight fetch, and while the
//! endpoint is in backoff they get the last error at once instead of queueing more fetches.
//! One failure is one backoff step ([`crate::runtime::backoff`]): when the backoff ends, whoever comes
//! first (a request or the refresher) makes the one next attempt and the other sees its result.
//! Sources survive config reloads when the connection's OAuth and TLS settings are unchanged,
//! so a reload does not cost a token request.

use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use serde::Serialize;

use crate::config::{ClientAuthMethod, ConnectionConfig, OAuthConfig};
use crate::observe::Observer;
use crate::runtime::backoff::{Backoff, BackoffPolicy};

/// Timing knobs; the defaults are what the product promises, tests shorten them.
#[derive(Debug, Clone, Copy)]
pub struct OAuthOptions {
    /// First retry delay after a failed fetch; doubles up to `max_retry`.
    pub min_retry: Duration,
    pub max_retry: Duration,
    /// Refresh at least this often, whatever `expires_in` says.
    pub max_lifetime: Duration,
    /// Refresh this long before expiry (at most half the lifetime).
    pub refresh_margin: Duration,
    /// Lifetime assumed when the server sends no `expires_in`.
    pub default_lifetime: Duration,
    pub request_timeout: Duration,
}

impl Default for OAuthOptions {
    fn default() -> Self {
        OAuthOptions {
            min_retry: Duration::from_secs(1),
            // Short enough that outbound calls work again within 10 s of the endpoint's
            // return, long enough that a dead one sees six requests a minute per replica.
            max_retry: Duration::from_secs(10),
            max_lifetime: Duration::from_secs(3600),
            refresh_margin: Duration::from_secs(60),
            default_lifetime: Duration::from_secs(3600),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Why no token is available. The message names the connection and the endpoint's answer,
/// never the client secret.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TokenUnavailable {
    /// A bounded label for metrics: `invalid_client`, `http_500`-style classes, `tls`, ...
    pub kind: &'static str,
    pub message: String,
}

struct Token {
    value: String,
    /// Hand it out until here (a little before the real expiry, so it does not expire in
    /// flight).
    usable_until: Instant,
    refresh_at: Instant,
    expires_wall: SystemTime,
}

#[derive(Default)]
struct State {
    token: Option<Token>,
    last_success: Option<SystemTime>,
    last_error: Option<TokenUnavailable>,
    /// While in backoff, neither callers nor the refresher start a fetch.
    backoff: Backoff,
}

pub struct TokenSource {
    label: String,
    token_url: String,
    form: Vec<(String, String)>,
    basic: Option<String>,
    client: reqwest::Client,
    state: Mutex<State>,
    fetch_lock: tokio::sync::Mutex<()>,
    options: OAuthOptions,
    observer: Arc<dyn Observer>,
}

/// What `/connections` shows for a token.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TokenStatus {
    /// `valid`, `expired`, or `none` (never obtained).
    pub state: &'static str,
    /// RFC 3339 UTC.
    pub expires_at: Option<String>,
    pub last_refresh: Option<String>,
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
}

/// RFC 6749 section 2.3.1: client id and secret are form-urlencoded before Basic encoding.
pub(crate) fn basic_header(id: &str, secret: &str) -> String {
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", enc(id), enc(secret)))
    )
}

fn rfc3339(t: SystemTime) -> String {
    crate::core::time::rfc3339(
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    )
}

impl TokenSource {
    fn new(
        label: String,
        oauth: &OAuthConfig,
        client: reqwest::Client,
        options: OAuthOptions,
        observer: Arc<dyn Observer>,
    ) -> Self {
        let mut form = vec![("grant_type".to_string(), "client_credentials".to_string())];
        if !oauth.scopes.is_empty() {
            form.push(("scope".into(), oauth.scopes.join(" ")));
        }
        if let Some(a) = &oauth.audience {
            form.push(("audience".into(), a.clone()));
        }
        for (k, v) in &oauth.extra_params {
            form.push((k.clone(), v.clone()));
        }
        let basic = match oauth.client_auth_method {
            ClientAuthMethod::ClientSecretBasic => {
                Some(basic_header(&oauth.client_id, &oauth.client_secret))
            }
            ClientAuthMethod::ClientSecretPost => {
                form.push(("client_id".into(), oauth.client_id.clone()));
                form.push(("client_secret".into(), oauth.client_secret.clone()));
                None
            }
        };
        TokenSource {
            label,
            token_url: oauth.token_url.clone(),
            form,
            basic,
            client,
            state: Mutex::new(State::default()),
            fetch_lock: tokio::sync::Mutex::new(()),
            options,
            observer,
        }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// The current token, if it is still usable.
    pub fn current(&self) -> Option<String> {
        let st = self.state.lock().ok()?;
        st.token
            .as_ref()
            .filter(|t| Instant::now() < t.usable_until)
            .map(|t| t.value.clone())
    }

    fn policy(&self) -> BackoffPolicy {
        BackoffPolicy {
            min: self.options.min_retry,
            max: self.options.max_retry,
        }
    }

    /// The last error, while the endpoint is in backoff (callers must not add fetches then).
    fn in_backoff(&self) -> Option<TokenUnavailable> {
        let st = self.state.lock().ok()?;
        st.backoff
            .remaining(Instant::now())
            .and(st.last_error.clone())
    }

    /// A usable token: the current one, or the result of the single in-flight fetch.
    pub async fn token(&self) -> Result<String, TokenUnavailable> {
        if let Some(t) = self.current() {
            return Ok(t);
        }
        if let Some(e) = self.in_backoff() {
            return Err(e);
        }
        let _guard = self.fetch_lock.lock().await;
        // Whoever held the lock before us may have just fetched, or just failed.
        if let Some(t) = self.current() {
            return Ok(t);
        }
        if let Some(e) = self.in_backoff() {
            return Err(e);
        }
        self.fetch_now().await
    }

    pub fn status(&self) -> TokenStatus {
        let Ok(st) = self.state.lock() else {
            return TokenStatus {
                state: "none",
                expires_at: None,
                last_refresh: None,
                last_error: Some("state unavailable".into()),
                consecutive_failures: 0,
            };
        };
        TokenStatus {
            state: match &st.token {
                None => "none",
                Some(t) if Instant::now() < t.usable_until => "valid",
                Some(_) => "expired",
            },
            expires_at: st.token.as_ref().map(|t| rfc3339(t.expires_wall)),
            last_refresh: st.last_success.map(rfc3339),
            last_error: st.last_error.as_ref().map(|e| e.message.clone()),
            consecutive_failures: st.backoff.failures(),
        }
    }

    fn count(&self, result: &'static str) {
        self.observer.oauth_fetched(&self.label, result);
    }

    /// One token request; updates the state either way. Call with `fetch_lock` held.
    async fn fetch_now(&self) -> Result<String, TokenUnavailable> {
        let started = Instant::now();
        let result = self.request().await;
        let mut st = self.state.lock().map_err(|_| TokenUnavailable {
            kind: "internal",
            message: "token state lock poisoned".into(),
        })?;
        match result {
            Ok((value, lifetime)) => {
                self.count("ok");
                let margin = self.options.refresh_margin.min(lifetime / 2);
                let refresh_in = (lifetime - margin).min(self.options.max_lifetime);
                let slack = Duration::from_secs(5).min(lifetime / 4);
                st.token = Some(Token {
                    value: value.clone(),
                    usable_until: started + lifetime - slack,
                    refresh_at: started + refresh_in,
                    expires_wall: SystemTime::now() + lifetime,
                });
                st.last_success = Some(SystemTime::now());
                st.last_error = None;
                st.backoff.succeeded();
                self.observer.oauth_token_valid(&self.label, true);
                tracing::info!(connection = %self.label, expires_in_s = lifetime.as_secs(), "obtained OAuth token");
                Ok(value)
            }
            Err(e) => {
                self.count(e.kind);
                let delay = st.backoff.failed(&self.policy(), Instant::now());
                st.last_error = Some(e.clone());
                let valid = st
                    .token
                    .as_ref()
                    .is_some_and(|t| Instant::now() < t.usable_until);
                self.observer.oauth_token_valid(&self.label, valid);
                tracing::warn!(
                    connection = %self.label, error = %e.message, kind = e.kind,
                    failures = st.backoff.failures(), retry_in_ms = delay.as_millis() as u64,
                    keeping_current_token = valid,
                    "OAuth token request failed"
                );
                Err(e)
            }
        }
    }

    /// The HTTP exchange. Errors carry the endpoint's `error` code, never our secret.
    async fn request(&self) -> Result<(String, Duration), TokenUnavailable> {
        let fail = |kind: &'static str, message: String| TokenUnavailable {
            kind,
            message: format!(
                "connection {}: token request to {}: {message}",
                self.label, self.token_url
            ),
        };
        let mut req = self
            .client
            .post(&self.token_url)
            .timeout(self.options.request_timeout)
            .header("accept", "application/json")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(
                form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(&self.form)
                    .finish(),
            );
        if let Some(b) = &self.basic {
            req = req.header("authorization", b);
        }
        let resp = req.send().await.map_err(|e| {
            let chain = error_chain(&e);
            let kind = if chain.contains("certificate")
                || chain.contains("tls")
                || chain.contains("TLS")
            {
                "tls"
            } else if e.is_timeout() {
                "timeout"
            } else {
                "network"
            };
            fail(kind, chain)
        })?;
        let status = resp.status();
        let body = crate::runtime::http::read_bounded(resp, MAX_TOKEN_RESPONSE_BYTES)
            .await
            .map_err(|e| match e {
                crate::runtime::http::BodyError::TooLarge(_) => {
                    fail("invalid_response", e.to_string())
                }
                crate::runtime::http::BodyError::Read(m) => fail("network", m),
            })?;
        let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        if !status.is_success() {
            // RFC 6749 section 5.2 error codes are a small fixed set: usable as a label.
            let code = json
                .as_ref()
                .and_then(|j| j.get("error"))
                .and_then(|e| e.as_str())
                .unwrap_or("");
            let kind = match code {
                "invalid_request" => "invalid_request",
                "invalid_client" => "invalid_client",
                "invalid_grant" => "invalid_grant",
                "unauthorized_client" => "unauthorized_client",
                "unsupported_grant_type" => "unsupported_grant_type",
                "invalid_scope" => "invalid_scope",
                _ if status.is_server_error() => "server_error",
                _ => "http_error",
            };
            let description: String = json
                .as_ref()
                .and_then(|j| j.get("error_description"))
                .and_then(|e| e.as_str())
                .unwrap_or("")
                .chars()
                .take(200)
                .collect();
            return Err(fail(
                kind,
                format!(
                    "HTTP {}{}{}",
                    status.as_u16(),
                    if code.is_empty() {
                        String::new()
                    } else {
                        format!(" {code}")
                    },
                    if description.is_empty() {
                        String::new()
                    } else {
                        format!(": {description}")
                    }
                ),
            ));
        }
        let json = json.ok_or_else(|| fail("bad_response", "the answer is not JSON".into()))?;
        let token = json
            .get("access_token")
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| {
                fail(
                    "bad_response",
                    "no usable access_token in the answer".into(),
                )
            })?;
        let token_type = json
            .get("token_type")
            .and_then(|t| t.as_str())
            .unwrap_or("");
        if !token_type.eq_ignore_ascii_case("bearer") {
            return Err(fail(
                "bad_response",
                format!("token_type {token_type:?} is not Bearer"),
            ));
        }
        let lifetime = match json.get("expires_in") {
            None | Some(serde_json::Value::Null) => self.options.default_lifetime,
            Some(v) => {
                // Some servers send the number as a string.
                let secs = v
                    .as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                    .filter(|s| *s > 0)
                    .ok_or_else(|| {
                        fail(
                            "bad_response",
                            format!("expires_in {v} is not a positive number"),
                        )
                    })?;
                Duration::from_secs(secs)
            }
        };
        Ok((token.to_string(), lifetime))
    }

    /// When the refresher should next act.
    fn next_wake(&self) -> Duration {
        let Ok(st) = self.state.lock() else {
            return self.options.min_retry;
        };
        let now = Instant::now();
        if let Some(left) = st.backoff.remaining(now) {
            return left;
        }
        match &st.token {
            Some(t) if st.last_error.is_none() => t.refresh_at.saturating_duration_since(now),
            _ => Duration::ZERO,
        }
    }

    /// Whether the refresher should fetch now. Never during a backoff: the attempt that
    /// failed (the refresher's own or a request's) already took this step.
    fn refresh_due(&self) -> bool {
        self.state.lock().is_ok_and(|st| {
            let now = Instant::now();
            st.backoff.remaining(now).is_none()
                && (st.token.as_ref().is_none_or(|t| now >= t.refresh_at)
                    || st.last_error.is_some())
        })
    }
}

pub(crate) use crate::runtime::http::error_chain;

/// A token response is a few hundred bytes; this leaves room for large JWTs.
const MAX_TOKEN_RESPONSE_BYTES: usize = 256 * 1024;

fn spawn_refresher(weak: Weak<TokenSource>) {
    tokio::spawn(async move {
        loop {
            let wait = match weak.upgrade() {
                Some(s) => s.next_wake(),
                None => return,
            };
            tokio::time::sleep(wait).await;
            let Some(source) = weak.upgrade() else { return };
            let _guard = source.fetch_lock.lock().await;
            if source.refresh_due() {
                let _ = source.fetch_now().await;
            }
        }
    });
}

/// Shares token sources between config generations.
pub struct OAuthRegistry {
    sources: crate::runtime::shared::Shared<TokenSource>,
    options: OAuthOptions,
    observer: Arc<dyn Observer>,
}

impl OAuthRegistry {
    pub fn new(options: OAuthOptions, observer: Arc<dyn Observer>) -> Self {
        OAuthRegistry {
            sources: Default::default(),
            options,
            observer,
        }
    }

    /// The token source for an OAuth connection, reusing a live one with the same settings.
    pub fn source(
        &self,
        conn: &ConnectionConfig,
        oauth: &OAuthConfig,
        dir: &Path,
    ) -> Result<Arc<TokenSource>, crate::runtime::tls::TlsError> {
        let label = format!("{}/{}", conn.namespace, conn.name);
        let ca = crate::runtime::shared::ca_bytes(&conn.tls, dir);
        // The whole definition (the credentials included): a rotated secret makes a new source.
        let id = crate::runtime::shared::definition_id(&[
            label.as_bytes(),
            &serde_json::to_vec(oauth).unwrap_or_default(),
            format!("{:?}", conn.tls.mode).as_bytes(),
            &ca,
        ]);
        let (source, new) = self.sources.get_or_make(id, || {
            let client = crate::runtime::tls::http_client(&conn.tls, dir)?;
            Ok::<_, crate::runtime::tls::TlsError>(Arc::new(TokenSource::new(
                label,
                oauth,
                client,
                self.options,
                self.observer.clone(),
            )))
        })?;
        if new {
            spawn_refresher(Arc::downgrade(&source));
        }
        Ok(source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_secret_basic_form_encodes_before_base64() {
        // RFC 6749 2.3.1: "a:b" as id and "p w" as secret.
        let h = basic_header("a:b", "p w");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(h.trim_start_matches("Basic "))
            .unwrap();
        assert_eq!(String::from_utf8(decoded).unwrap(), "a%3Ab:p+w");
    }

    #[test]
    fn rfc3339_formats_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }
}
