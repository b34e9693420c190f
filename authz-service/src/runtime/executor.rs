//! Runs Checks: the host side of the core's [`Check`] driver.
//!
//! The driver says what a decision waits for; the executor does it — a password hash in one of
//! a bounded number of slots on the blocking pool, a token verification (cached, or in a slot,
//! fetching the provider's keys when the verifier needs them), compartment lookups through the
//! policy's connection, an outbound connection's OAuth token — and hands the answer back. It
//! knows nothing of Envoy's message types: the gRPC adapter (`server::envoy`) and an
//! in-process host both call [`Executor::check`] and [`Executor::outbound`].
//!
//! Every decision is counted through the policy's [`crate::observe::DecisionObserver`] (made
//! when the config was loaded) and logged in one line that never holds the path, the query or
//! a credential.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use arc_swap::ArcSwapOption;

use crate::config::CompiledConfig;
use crate::core::driver::{Check, Need, Next, Outcome, TokenFailure};
use crate::core::policy::{Decision, DenyReason, Request, TokenIdentity};
use crate::core::smart::{LookupKey, Stored};
use crate::observe::{DecisionLabel, DecisionObserver, Observer};
use crate::runtime::audit::{AuditOptions, AuditSink};
use crate::runtime::discovery::DiscoveryOptions;
use crate::runtime::introspect::IntrospectionOptions;
use crate::runtime::jwks::JwksOptions;
use crate::runtime::oauth::OAuthOptions;
use crate::runtime::state::{Outbound, Runtime, Shared};
use crate::verify::cache::Budget;
use crate::verify::jwt::{Attempt, TokenError, TokenVerifier};

/// A decision's id: 128 random bits as 32 lowercase hex digits, kept inline (no allocation).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DecisionId([u8; 32]);

impl DecisionId {
    pub fn new() -> Self {
        let mut raw = [0u8; 16];
        rand::fill(&mut raw);
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 32];
        for (i, b) in raw.iter().enumerate() {
            out[2 * i] = HEX[usize::from(b >> 4)];
            out[2 * i + 1] = HEX[usize::from(b & 0xf)];
        }
        DecisionId(out)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl Default for DecisionId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for DecisionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for DecisionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DecisionId({})", self.as_str())
    }
}

/// What the executor says about one request.
#[derive(Debug, Clone)]
pub struct Answer {
    pub decision_id: DecisionId,
    pub outcome: Outcome,
}

/// Everything an executor is started with besides its config.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    pub jwks: JwksOptions,
    pub oauth: OAuthOptions,
    pub introspection: IntrospectionOptions,
    /// The memory budget of the caches (`--cache-memory-mib`).
    pub cache: Budget,
    /// Retry delays of audit destinations.
    pub audit: AuditOptions,
    /// Retry delays of OpenID discovery fetches.
    pub discovery: DiscoveryOptions,
}

pub struct Executor {
    runtime: ArcSwapOption<Runtime>,
    /// True while a config is loaded and the process is not shutting down: what
    /// `grpc.health.v1` and `/readyz` report.
    serving: tokio::sync::watch::Sender<bool>,
    draining: AtomicBool,
    /// Digest of the content last refused by a reload, so it is reported once.
    refused: std::sync::Mutex<Option<[u8; 32]>>,
    /// Slots for uncached password checks. A flood of wrong passwords (each a bcrypt/argon2
    /// hash of milliseconds) then queues here instead of occupying every CPU and hundreds of
    /// blocking threads, so token decisions and cached Basic users keep their latency.
    password_checks: Arc<tokio::sync::Semaphore>,
    /// The same for uncached token verifications (a signature check each): a flood of
    /// distinct tokens, forged or not, queues here and leaves cached decisions alone.
    token_checks: Arc<tokio::sync::Semaphore>,
    pub shared: Shared,
}

/// Counts a wait for exactly as long as it lasts, also when the request is cancelled
/// mid-wait (Envoy's ext_authz timeout drops the gRPC call).
struct Waiting<'a> {
    observer: &'a dyn Observer,
    password: bool,
}

impl<'a> Waiting<'a> {
    fn start(observer: &'a dyn Observer, password: bool) -> Self {
        if password {
            observer.password_waiting(1);
        } else {
            observer.token_waiting(1);
        }
        Waiting { observer, password }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.password {
            self.observer.password_waiting(-1);
        } else {
            self.observer.token_waiting(-1);
        }
    }
}

fn token_failure(e: &TokenError) -> TokenFailure {
    let reason = match e {
        TokenError::Expired => DenyReason::ExpiredToken,
        TokenError::UnknownKey => DenyReason::UnknownSigningKey,
        _ => DenyReason::InvalidToken,
    };
    TokenFailure::Invalid(reason, e.to_string())
}

/// One answer the host brings back to the driver.
enum Work {
    Password(Result<bool, String>),
    Token(Result<Arc<TokenIdentity>, TokenFailure>),
    Introspected(Result<Arc<TokenIdentity>, TokenFailure>),
    Lookups(Vec<(LookupKey, Result<Stored, String>)>),
    OAuth(Result<String, String>),
    Discovery(Result<Option<Arc<serde_json::Value>>, String>),
}

impl Executor {
    pub fn new(observer: Arc<dyn Observer>, options: Options) -> Self {
        let slots = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
        Executor {
            runtime: ArcSwapOption::empty(),
            serving: tokio::sync::watch::Sender::new(false),
            draining: AtomicBool::new(false),
            refused: std::sync::Mutex::new(None),
            password_checks: Arc::new(tokio::sync::Semaphore::new(slots)),
            token_checks: Arc::new(tokio::sync::Semaphore::new(slots)),
            shared: Shared {
                introspection: options.introspection,
                ..Shared::with_options(
                    options.jwks,
                    options.oauth,
                    options.audit,
                    options.discovery,
                    options.cache,
                    observer,
                )
            },
        }
    }

    pub fn observer(&self) -> &Arc<dyn Observer> {
        &self.shared.observer
    }

    pub fn runtime(&self) -> Option<Arc<Runtime>> {
        self.runtime.load_full()
    }

    /// Builds the runtime for a validated config (verifiers, key sources, lookup clients),
    /// off to the side; [`Executor::install`] swaps it in.
    pub fn build(
        &self,
        config: CompiledConfig,
        digest: [u8; 32],
        dir: &std::path::Path,
    ) -> Result<Runtime, crate::config::ConfigError> {
        Runtime::build(config, digest, dir, &self.shared)
    }

    /// Swaps in a new runtime (already validated and built). Cached verdicts belong to the
    /// config they were made under, so the caches are emptied with the swap.
    pub fn install(&self, rt: Runtime) {
        self.shared.observer.config_loaded(rt.config.generation);
        self.runtime.store(Some(Arc::new(rt)));
        self.shared.caches.clear();
        self.update_serving();
    }

    /// Whether the loaded config records AuditEvents for any policy.
    pub fn audits(&self) -> bool {
        self.runtime.load().as_ref().is_some_and(|rt| rt.audits)
    }

    /// Ready to decide: a config is loaded and the process is not draining.
    pub fn is_ready(&self) -> bool {
        self.runtime.load().is_some() && !self.draining.load(Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Shutting down: report not serving (so Envoy's health checks and Kubernetes take this
    /// replica out of rotation) while Checks keep being answered.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.update_serving();
    }

    fn update_serving(&self) {
        self.serving.send_replace(self.is_ready());
    }

    /// Whether this content was refused by the last reload that refused anything.
    pub fn refused_before(&self, digest: &[u8; 32]) -> bool {
        self.refused
            .lock()
            .is_ok_and(|r| r.as_ref() == Some(digest))
    }

    /// Remembers refused content (or that the directory holds none).
    pub fn remember_refused(&self, digest: Option<[u8; 32]>) {
        self.shared.observer.config_refused(digest.is_some());
        if let Ok(mut r) = self.refused.lock() {
            *r = digest;
        }
    }

    /// Follows [`Executor::is_ready`].
    pub fn serving(&self) -> tokio::sync::watch::Receiver<bool> {
        self.serving.subscribe()
    }

    /// Decides an inbound request.
    pub async fn check(&self, req: &Request<'_>) -> Answer {
        self.check_from(req, None).await
    }

    /// Decides an inbound request from `source_address` (the client as Envoy saw it, for
    /// AuditEvents).
    pub async fn check_from(&self, req: &Request<'_>, source_address: Option<&str>) -> Answer {
        let started = Instant::now();
        let decision_id = DecisionId::new();
        let Some(rt) = self.runtime.load_full() else {
            return self.unloaded(decision_id, started, req.method);
        };
        let mut check = Check::new(&rt.config, req);
        self.run(&rt, &mut check).await;
        let audit = self.audit_events(&rt, &check, req, source_address, &decision_id);
        let observer = check
            .policy_index()
            .and_then(|i| rt.policies.get(i))
            .map(|p| &p.decisions);
        let token = check.token().cloned();
        let ignored = token
            .as_deref()
            .map(|t| t.scopes.ignored.as_slice())
            .unwrap_or_default();
        let outcome = check
            .into_outcome()
            .unwrap_or_else(|| Outcome::Unavailable("the check ended unfinished".into()));
        let observer =
            observer.or_else(|| decided_policy(&outcome).and_then(|id| rt.decisions_of(id)));
        let answer = finish(
            observer.unwrap_or(&rt.unmatched).as_ref(),
            decision_id,
            started,
            req.method,
            outcome,
            ignored,
        );
        // After the decision is counted and logged; `record` never waits.
        if let Some((sink, events)) = audit {
            for event in events {
                sink.record(event);
            }
        }
        answer
    }

    /// The AuditEvents for a finished check, when its policy records this outcome. Built
    /// here (pure code, microseconds); shipped by the policy's sink in the background.
    fn audit_events(
        &self,
        rt: &Runtime,
        check: &Check<'_>,
        req: &Request<'_>,
        source_address: Option<&str>,
        decision_id: &DecisionId,
    ) -> Option<(Arc<AuditSink>, Vec<serde_json::Value>)> {
        let outcome = check.outcome()?;
        let index = check.policy_index().or_else(|| {
            let id = decided_policy(outcome)?;
            rt.policies.iter().position(|p| p.id == id)
        })?;
        let policy = rt.config.policies.get(index)?;
        let audit = policy.audit.as_ref()?;
        let sink = rt.policies.get(index)?.audit.clone()?;
        if !crate::core::audit::wanted(audit.record, outcome, check.request()) {
            return None;
        }
        let recorded_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let facts = crate::core::audit::AuditFacts {
            policy,
            method: req.method,
            host: req.host,
            path: req.path,
            source_address,
            request: check.request(),
            identity: check.identity(),
            lookups: check.lookups(),
            outcome,
            decision_id: decision_id.as_str(),
            recorded_unix_ms,
            observer: &self.shared.instance,
        };
        Some((sink, crate::core::audit::audit_events(&facts, audit.record)))
    }

    /// An outbound request through the connection `namespace/name`: allowed with the
    /// connection's credential in `Authorization`, or refused (403 for a connection the config
    /// does not have, 503 with an OperationOutcome while its token endpoint is failing, so the
    /// workload does not mistake an outage for a permission problem).
    pub async fn outbound(&self, connection: &str, method: &str) -> Answer {
        let started = Instant::now();
        let decision_id = DecisionId::new();
        let Some(rt) = self.runtime.load_full() else {
            return self.unloaded(decision_id, started, method);
        };
        let mut check = Check::outbound(&rt.config, connection);
        self.run(&rt, &mut check).await;
        let outcome = check
            .into_outcome()
            .unwrap_or_else(|| Outcome::Unavailable("the check ended unfinished".into()));
        let observer = rt
            .connection_decisions
            .get(connection)
            .unwrap_or(&rt.unmatched);
        finish(
            observer.as_ref(),
            decision_id,
            started,
            method,
            outcome,
            &[],
        )
    }

    fn unloaded(&self, decision_id: DecisionId, started: Instant, method: &str) -> Answer {
        let outcome = Outcome::Unavailable("no valid configuration has been loaded yet".into());
        let unmatched = self.shared.observer.decisions("none");
        finish(
            unmatched.as_ref(),
            decision_id,
            started,
            method,
            outcome,
            &[],
        )
    }

    /// Drives a check to its end, doing whatever it asks for.
    async fn run(&self, rt: &Runtime, check: &mut Check<'_>) {
        loop {
            let work = match check.next() {
                Next::Done(_) => return,
                Next::Need(Need::Password {
                    policy,
                    user,
                    password,
                }) => Work::Password(self.password(rt, policy, user, password).await),
                Next::Need(Need::Token { policy, token }) => {
                    Work::Token(self.token(rt, policy, token).await)
                }
                Next::Need(Need::Introspect { policy, token, .. }) => {
                    Work::Introspected(self.introspect(rt, policy, token).await)
                }
                Next::Need(Need::Lookups { policy, keys }) => {
                    Work::Lookups(self.lookups(rt, policy, keys).await)
                }
                Next::Need(Need::OAuthToken { connection }) => {
                    Work::OAuth(self.oauth_token(rt, connection).await)
                }
                Next::Need(Need::SmartConfiguration { policy }) => Work::Discovery(
                    match rt.policies.get(policy).and_then(|p| p.discovery.clone()) {
                        None => Ok(None),
                        Some(source) => source.metadata().await.map(Some),
                    },
                ),
            };
            match work {
                Work::Password(Ok(valid)) => check.password_checked(valid),
                Work::Password(Err(why)) => check.undecidable(why),
                Work::Token(result) => check.token_verified(result),
                Work::Introspected(result) => check.token_introspected(result),
                Work::Lookups(answers) => check.lookups_done(answers),
                Work::OAuth(token) => check.oauth_token(token),
                Work::Discovery(metadata) => check.smart_configuration(metadata),
            }
        }
    }

    async fn password(
        &self,
        rt: &Runtime,
        policy: usize,
        user: &str,
        password: &str,
    ) -> Result<bool, String> {
        let Some(verifier) = rt.policies.get(policy).and_then(|p| p.basic.clone()) else {
            return Err("no password verifier is loaded for the policy".into());
        };
        if verifier.cached(user, password) {
            return Ok(true);
        }
        let permit = {
            let _waiting = Waiting::start(self.shared.observer.as_ref(), true);
            self.password_checks.clone().acquire_owned().await
        };
        let Ok(permit) = permit else {
            return Err("password checks are shut down".into());
        };
        let (user, password) = (user.to_string(), password.to_string());
        // bcrypt/argon2 take milliseconds of CPU: keep them off the async workers. The permit
        // moves into the closure so that a request Envoy gives up on still holds its slot
        // until the hash it started is done.
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            verifier.verify_uncached(&user, &password) == crate::verify::basic::BasicOutcome::Valid
        })
        .await
        .map_err(|e| format!("password check failed: {e}"))
    }

    async fn token(
        &self,
        rt: &Runtime,
        policy: usize,
        token: &str,
    ) -> Result<Arc<TokenIdentity>, TokenFailure> {
        let Some(jwt) = rt.policies.get(policy).and_then(|p| p.jwt.as_ref()) else {
            return Err(TokenFailure::Undecidable(
                "no token verifier is loaded for the policy".into(),
            ));
        };
        if let Some(identity) = jwt.verifier.cached(token) {
            return Ok(identity);
        }
        let mut after_refetch = false;
        let mut fetched = false;
        loop {
            match self
                .verify_in_slot(&jwt.verifier, token, after_refetch)
                .await?
            {
                Attempt::Verified(identity) => return Ok(identity),
                Attempt::NeedKeys {
                    provider,
                    unknown_kid,
                } => {
                    let Some(source) = jwt.sources.get(provider) else {
                        return Err(TokenFailure::Undecidable(
                            "no key source is loaded for the token's issuer".into(),
                        ));
                    };
                    if unknown_kid {
                        // At most one refetch per token, and the source limits how often
                        // unknown key ids make it refetch at all.
                        if after_refetch || source.refetch_for_unknown_kid().await.is_none() {
                            return Err(token_failure(&TokenError::UnknownKey));
                        }
                        after_refetch = true;
                    } else {
                        if fetched {
                            return Err(TokenFailure::Undecidable(format!(
                                "the key set of {} is still missing after a fetch",
                                source.label()
                            )));
                        }
                        source
                            .keys()
                            .await
                            .map_err(|e| TokenFailure::Undecidable(e.to_string()))?;
                        fetched = true;
                    }
                }
            }
        }
    }

    async fn introspect(
        &self,
        rt: &Runtime,
        policy: usize,
        token: &str,
    ) -> Result<Arc<TokenIdentity>, TokenFailure> {
        match rt
            .policies
            .get(policy)
            .and_then(|p| p.introspection.as_ref())
        {
            Some(client) => client.introspect(token).await,
            None => Err(TokenFailure::Undecidable(
                "no introspection client is loaded for the policy".into(),
            )),
        }
    }

    /// One verification attempt in a token slot on the blocking pool.
    async fn verify_in_slot(
        &self,
        verifier: &Arc<TokenVerifier>,
        token: &str,
        after_refetch: bool,
    ) -> Result<Attempt, TokenFailure> {
        let permit = {
            let _waiting = Waiting::start(self.shared.observer.as_ref(), false);
            self.token_checks.clone().acquire_owned().await
        };
        let Ok(permit) = permit else {
            return Err(TokenFailure::Undecidable(
                "token checks are shut down".into(),
            ));
        };
        let (verifier, token) = (verifier.clone(), token.to_string());
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            verifier.verify(&token, after_refetch)
        })
        .await
        .map_err(|e| TokenFailure::Undecidable(format!("token check failed: {e}")))?
        .map_err(|e| token_failure(&e))
    }

    async fn lookups(
        &self,
        rt: &Runtime,
        policy: usize,
        keys: &[LookupKey],
    ) -> Vec<(LookupKey, Result<Stored, String>)> {
        let client = rt.policies.get(policy).and_then(|p| p.lookup.as_ref());
        let mut answers = Vec::with_capacity(keys.len());
        for key in keys {
            let answer = match client {
                None => Err("a compartment lookup is needed but none is configured".into()),
                Some(c) => c.stored(key).await.map_err(|e| e.to_string()),
            };
            let failed = answer.is_err();
            answers.push((key.clone(), answer));
            // One failure decides the check (undecidable): the rest need not be fetched.
            if failed {
                break;
            }
        }
        answers
    }

    async fn oauth_token(&self, rt: &Runtime, connection: &str) -> Result<String, String> {
        match rt.connections.get(connection) {
            Some(Outbound::OAuth(source)) => source.token().await.map_err(|e| e.to_string()),
            _ => Err(format!("connection {connection} has no OAuth token source")),
        }
    }
}

/// The policy (or connection) a decision names, for counting a decision made before the
/// driver chose a policy index (a malformed request under a known policy).
fn decided_policy(outcome: &Outcome) -> Option<&str> {
    match outcome {
        Outcome::Decided(Decision::Allow(a)) => Some(&a.policy),
        Outcome::Decided(Decision::Deny(d)) => d.policy.as_deref(),
        Outcome::Decided(Decision::Respond(r)) => Some(&r.policy),
        Outcome::Unavailable(_) => None,
    }
}

impl Runtime {
    /// The decision counter of the policy `namespace/name`.
    pub fn decisions_of(&self, id: &str) -> Option<&Arc<dyn DecisionObserver>> {
        self.policies
            .iter()
            .find(|p| p.id == id)
            .map(|p| &p.decisions)
    }
}

/// Counts and logs one answer.
fn finish(
    observer: &dyn DecisionObserver,
    decision_id: DecisionId,
    started: Instant,
    method: &str,
    outcome: Outcome,
    ignored_scopes: &[String],
) -> Answer {
    let elapsed = started.elapsed();
    let label = DecisionLabel::of(&outcome);
    observer.decided(label, elapsed);
    // One line per decision. Never the path or query (they can carry patient ids), never
    // credentials; the interaction and the refusing rule are enough to act on. Malformed
    // scope tokens grant nothing; they are listed so that a client's mistake is visible.
    let (result, reason) = (label.result, label.reason);
    match &outcome {
        Outcome::Decided(Decision::Allow(a)) => {
            if tracing::enabled!(target: "fhirguard::decision", tracing::Level::INFO) {
                tracing::info!(
                    target: "fhirguard::decision",
                    decision_id = %decision_id, policy = %a.policy, result, reason, status = 200u16,
                    method = method, interaction = a.interaction.as_deref().unwrap_or("-"),
                    subject = a.subject.as_deref().unwrap_or("-"),
                    ignored_scopes = %ignored_scopes.join(" "),
                    micros = elapsed.as_micros() as u64,
                    "decision"
                );
            }
        }
        Outcome::Decided(Decision::Deny(d)) => {
            if tracing::enabled!(target: "fhirguard::decision", tracing::Level::INFO) {
                tracing::info!(
                    target: "fhirguard::decision",
                    decision_id = %decision_id, policy = d.policy.as_deref().unwrap_or("none"),
                    result, reason, status = d.status,
                    method = method, rule = %d.diagnostics,
                    ignored_scopes = %ignored_scopes.join(" "),
                    micros = elapsed.as_micros() as u64,
                    "decision"
                );
            }
        }
        Outcome::Decided(Decision::Respond(r)) => {
            if tracing::enabled!(target: "fhirguard::decision", tracing::Level::INFO) {
                tracing::info!(
                    target: "fhirguard::decision",
                    decision_id = %decision_id, policy = %r.policy, result, reason,
                    status = r.status, method = method,
                    micros = elapsed.as_micros() as u64,
                    "decision"
                );
            }
        }
        Outcome::Unavailable(why) => tracing::warn!(
            target: "fhirguard::decision",
            decision_id = %decision_id, result, reason, status = 503u16, method = method, why = %why,
            "decision"
        ),
    }
    Answer {
        decision_id,
        outcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_ids_are_32_hex_digits_and_differ() {
        let a = DecisionId::new();
        let b = DecisionId::new();
        assert_eq!(a.as_str().len(), 32);
        assert!(
            a.as_str()
                .bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b);
    }
}
