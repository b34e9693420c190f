//! Deciding one Check: the pure core around credential verification, plus metrics and the
//! decision log. Knows nothing about Envoy's message types.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwapOption;

use crate::core::policy::{self, Decision, DenyReason, Identity, OutboundAuth, Request};
use crate::runtime::jwks::{JwksOptions, JwksRegistry};
use crate::runtime::oauth::{OAuthOptions, OAuthRegistry};
use crate::runtime::state::Outbound;
use crate::runtime::state::Runtime;
use crate::server::metrics::{DecisionLabels, Metrics};
use crate::verify::cache::{Budget, Caches};
use crate::verify::jwt::TokenError;

/// What the service says about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Decided(Decision),
    /// No decision can be made (no config yet, keys unobtainable, internal fault). Envoy turns
    /// this into 503; it is never an allow.
    Unavailable(String),
}

#[derive(Debug, Clone)]
pub struct Answer {
    pub decision_id: String,
    pub outcome: Outcome,
}

/// Everything a service is started with besides its config.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    pub jwks: JwksOptions,
    pub oauth: OAuthOptions,
    /// The memory budget of the caches (`--cache-memory-mib`).
    pub cache: Budget,
}

pub struct Service {
    runtime: ArcSwapOption<Runtime>,
    /// True while a config is loaded and the process is not shutting down: what
    /// `grpc.health.v1` and `/readyz` report.
    serving: tokio::sync::watch::Sender<bool>,
    draining: std::sync::atomic::AtomicBool,
    /// Digest of the content last refused by a reload, so it is reported once.
    refused: std::sync::Mutex<Option<[u8; 32]>>,
    /// Slots for uncached password checks. A flood of wrong passwords (each a bcrypt/argon2
    /// hash of milliseconds) then queues here instead of occupying every CPU and hundreds of
    /// blocking threads, so token decisions and cached Basic users keep their latency.
    password_checks: Arc<tokio::sync::Semaphore>,
    pub metrics: Arc<Metrics>,
    pub registry: JwksRegistry,
    pub oauth: OAuthRegistry,
    pub caches: Caches,
}

/// Counts a wait in a gauge for exactly as long as it lasts, also when the request is
/// cancelled mid-wait (Envoy's ext_authz timeout drops the gRPC call).
struct GaugeGuard<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> GaugeGuard<'a> {
    fn inc(g: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        g.inc();
        GaugeGuard(g)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn new_decision_id() -> String {
    let mut b = [0u8; 16];
    rand::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn token_reason(e: &TokenError) -> DenyReason {
    match e {
        TokenError::Expired => DenyReason::ExpiredToken,
        TokenError::UnknownKey => DenyReason::UnknownSigningKey,
        _ => DenyReason::InvalidToken,
    }
}

impl Service {
    pub fn new(metrics: Arc<Metrics>, jwks: JwksOptions) -> Self {
        Self::with_options(metrics, jwks, OAuthOptions::default())
    }

    pub fn with_options(metrics: Arc<Metrics>, jwks: JwksOptions, oauth: OAuthOptions) -> Self {
        Self::configured(
            metrics,
            Options {
                jwks,
                oauth,
                cache: Budget::default(),
            },
        )
    }

    pub fn configured(metrics: Arc<Metrics>, options: Options) -> Self {
        let slots = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
        Service {
            runtime: ArcSwapOption::empty(),
            serving: tokio::sync::watch::Sender::new(false),
            draining: std::sync::atomic::AtomicBool::new(false),
            refused: std::sync::Mutex::new(None),
            password_checks: Arc::new(tokio::sync::Semaphore::new(slots)),
            registry: JwksRegistry::new(options.jwks, metrics.clone()),
            oauth: OAuthRegistry::new(options.oauth, metrics.clone()),
            caches: Caches::new(options.cache, &metrics),
            metrics,
        }
    }

    pub fn runtime(&self) -> Option<Arc<Runtime>> {
        self.runtime.load_full()
    }

    /// Swaps in a new runtime (already validated and built). Cached verdicts belong to the
    /// config they were made under, so the caches are emptied with the swap.
    pub fn install(&self, rt: Runtime) {
        self.metrics
            .config_generation
            .set(rt.config.generation as i64);
        self.runtime.store(Some(Arc::new(rt)));
        self.caches.clear();
        self.update_serving();
    }

    /// Ready to decide: a config is loaded and the process is not draining.
    pub fn is_ready(&self) -> bool {
        self.runtime.load().is_some() && !self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Shutting down: report not serving (so Envoy's health checks and Kubernetes take this
    /// replica out of rotation) while Checks keep being answered.
    pub fn start_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
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
        self.metrics.config_refused.set(i64::from(digest.is_some()));
        if let Ok(mut r) = self.refused.lock() {
            *r = digest;
        }
    }

    /// Follows [`Service::is_ready`].
    pub fn serving(&self) -> tokio::sync::watch::Receiver<bool> {
        self.serving.subscribe()
    }

    pub async fn check(&self, req: &Request<'_>) -> Answer {
        let started = Instant::now();
        let decision_id = new_decision_id();
        let mut ignored_scopes = Vec::new();
        let outcome = match self.runtime.load_full() {
            None => Outcome::Unavailable("no valid configuration has been loaded yet".into()),
            Some(rt) => self.decide(&rt, req, &mut ignored_scopes).await,
        };
        // Malformed scope tokens grant nothing; they are listed so that a client's mistake is
        // visible to whoever reads the log.
        let ignored = ignored_scopes.join(" ");
        self.finish(decision_id, started, req.method, outcome, &ignored)
    }

    /// An outbound request through the connection `namespace/name`: allowed with the
    /// connection's credential in `Authorization`, or refused (403 for a connection the config
    /// does not have, 503 with an OperationOutcome while its token endpoint is failing, so the
    /// workload does not mistake an outage for a permission problem).
    pub async fn outbound(&self, connection: &str, method: &str) -> Answer {
        let started = Instant::now();
        let decision_id = new_decision_id();
        let outcome = match self.runtime.load_full() {
            None => Outcome::Unavailable("no valid configuration has been loaded yet".into()),
            Some(rt) => {
                let deny = |status, reason, diagnostics: String| {
                    Outcome::Decided(Decision::Deny(policy::Deny {
                        policy: Some(connection.to_string()),
                        status,
                        reason,
                        www_authenticate: Vec::new(),
                        diagnostics,
                    }))
                };
                let auth = match rt.connections.get(connection) {
                    None => Err(deny(
                        403,
                        DenyReason::UnknownConnection,
                        format!(
                            "no FhirConnection {connection:?} is configured (or it is not Accepted); check its status"
                        ),
                    )),
                    Some(Outbound::Fixed(a)) => Ok(a.clone()),
                    Some(Outbound::OAuth(source)) => match source.token().await {
                        Ok(t) => Ok(OutboundAuth::Set(format!("Bearer {t}"))),
                        Err(e) => Err(deny(
                            503,
                            DenyReason::TokenUnavailable,
                            format!("no valid OAuth token for connection {connection}: {e}"),
                        )),
                    },
                };
                match auth {
                    Ok(a) => Outcome::Decided(Decision::Allow(policy::Allow {
                        policy: connection.to_string(),
                        reason: policy::AllowReason::Outbound,
                        subject: None,
                        patient: None,
                        scopes: None,
                        remove_query: Vec::new(),
                        set_query: Vec::new(),
                        strict_search: false,
                        interaction: None,
                        outbound: Some(a),
                    })),
                    Err(o) => o,
                }
            }
        };
        self.finish(decision_id, started, method, outcome, "")
    }

    /// Metrics and the decision log line for one answer.
    fn finish(
        &self,
        decision_id: String,
        started: Instant,
        method: &str,
        outcome: Outcome,
        ignored: &str,
    ) -> Answer {
        let elapsed = started.elapsed();
        self.metrics.check_duration.observe(elapsed.as_secs_f64());
        let (policy, result, reason, status) = match &outcome {
            Outcome::Decided(Decision::Allow(a)) => {
                (a.policy.clone(), "allow", a.reason.as_str(), 200)
            }
            Outcome::Decided(d @ Decision::Deny(x)) => (
                x.policy.clone().unwrap_or_else(|| "none".into()),
                "deny",
                d.reason_label(),
                x.status,
            ),
            Outcome::Unavailable(_) => ("none".into(), "unavailable", "cannot_decide", 503),
        };
        self.metrics
            .decisions
            .get_or_create(&DecisionLabels {
                policy: policy.clone(),
                result,
                reason,
            })
            .inc();
        // One line per decision. Never the path or query (they can carry patient ids), never
        // credentials; the interaction and the refusing rule are enough to act on.
        match &outcome {
            Outcome::Decided(Decision::Allow(a)) => tracing::info!(
                target: "fhirguard::decision",
                decision_id = %decision_id, policy = %policy, result, reason, status,
                method = method, interaction = a.interaction.as_deref().unwrap_or("-"),
                subject = a.subject.as_deref().unwrap_or("-"),
                ignored_scopes = %ignored,
                micros = elapsed.as_micros() as u64,
                "decision"
            ),
            Outcome::Decided(Decision::Deny(d)) => tracing::info!(
                target: "fhirguard::decision",
                decision_id = %decision_id, policy = %policy, result, reason, status,
                method = method, rule = %d.diagnostics,
                ignored_scopes = %ignored,
                micros = elapsed.as_micros() as u64,
                "decision"
            ),
            Outcome::Unavailable(why) => tracing::warn!(
                target: "fhirguard::decision",
                decision_id = %decision_id, result, reason, status, method = method, why = %why,
                "decision"
            ),
        }
        Answer {
            decision_id,
            outcome,
        }
    }

    async fn decide(
        &self,
        rt: &Runtime,
        req: &Request<'_>,
        ignored_scopes: &mut Vec<String>,
    ) -> Outcome {
        let pending = match policy::prepare(&rt.config.policies, req) {
            Ok(p) => p,
            Err(d) => return Outcome::Decided(d),
        };
        let p = &rt.config.policies[pending.policy_index];
        let Some(prt) = rt.policies.get(pending.policy_index) else {
            return Outcome::Unavailable("policy runtime missing".into());
        };
        let mut identity = Identity::default();
        if let Some(cred) = &pending.basic {
            let Some(verifier) = &prt.basic else {
                return Outcome::Decided(policy::unauthorized(
                    p,
                    DenyReason::UnsupportedScheme,
                    None,
                    "this policy does not accept Basic credentials",
                ));
            };
            let hit = verifier.cached(&cred.user, &cred.password);
            self.metrics.cache_lookup("basic", hit);
            let valid = hit || {
                let permit = {
                    let _waiting = GaugeGuard::inc(&self.metrics.password_checks_waiting);
                    self.password_checks.clone().acquire_owned().await
                };
                let Ok(permit) = permit else {
                    return Outcome::Unavailable("password checks are shut down".into());
                };
                let v = verifier.clone();
                let (user, password) = (cred.user.clone(), cred.password.clone());
                // bcrypt/argon2 take milliseconds of CPU: keep them off the async workers. The
                // permit moves into the closure so that a request Envoy gives up on still holds
                // its slot until the hash it started is done.
                match tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    v.verify_uncached(&user, &password)
                })
                .await
                {
                    Ok(outcome) => outcome == crate::verify::basic::BasicOutcome::Valid,
                    Err(e) => return Outcome::Unavailable(format!("password check failed: {e}")),
                }
            };
            if !valid {
                return Outcome::Decided(policy::unauthorized(
                    p,
                    DenyReason::InvalidBasic,
                    None,
                    "invalid username or password",
                ));
            }
            identity.basic_user = Some(cred.user.clone());
        }
        if let Some(bearer) = &pending.bearer {
            let Some(verifier) = &prt.jwt else {
                return Outcome::Decided(policy::unauthorized(
                    p,
                    DenyReason::UnsupportedScheme,
                    None,
                    "this policy does not accept bearer tokens",
                ));
            };
            match verifier.verify(&bearer.token).await {
                Ok(t) => {
                    ignored_scopes.clone_from(&t.scopes.ignored);
                    identity.token = Some(t);
                }
                Err(TokenError::KeysUnavailable(e)) => return Outcome::Unavailable(e.to_string()),
                Err(e) => {
                    return Outcome::Decided(policy::unauthorized(
                        p,
                        token_reason(&e),
                        Some("invalid_token"),
                        e.to_string(),
                    ));
                }
            }
        }
        let mut lookups = crate::core::smart::Lookups::new();
        // At most two rounds: the first names every lookup the request needs, the second
        // decides with the answers.
        for _ in 0..2 {
            match policy::authorize(p, &pending, &identity, Some(&lookups)) {
                policy::Step::Done(d) => return Outcome::Decided(d),
                policy::Step::Lookup(wanted) => {
                    let Some(client) = &prt.lookup else {
                        return Outcome::Unavailable(
                            "a compartment lookup is needed but none is configured".into(),
                        );
                    };
                    if wanted.len() > crate::runtime::lookup::MAX_LOOKUPS_PER_REQUEST {
                        return Outcome::Decided(policy::Decision::Deny(policy::Deny {
                            policy: Some(format!("{}/{}", p.namespace, p.name)),
                            status: 403,
                            reason: DenyReason::InsufficientScope,
                            www_authenticate: vec![],
                            diagnostics: format!(
                                "the request needs {} compartment lookups; at most {} are made for one request",
                                wanted.len(),
                                crate::runtime::lookup::MAX_LOOKUPS_PER_REQUEST
                            ),
                        }));
                    }
                    for key in wanted {
                        match client.stored(&key).await {
                            Ok(s) => {
                                lookups.insert(key, s);
                            }
                            // Not knowing whose resource it is means not deciding: fail closed.
                            Err(e) => {
                                return Outcome::Unavailable(format!(
                                    "compartment lookup failed: {e}"
                                ));
                            }
                        }
                    }
                }
            }
        }
        Outcome::Unavailable("compartment lookups did not settle the decision".into())
    }
}
