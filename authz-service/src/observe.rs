//! What a host wants to know about the work done for it: decisions, cache use, key and token
//! fetches, config loads.
//!
//! The verification and runtime layers report through [`Observer`] instead of naming a
//! metrics library: the gRPC server implements it with Prometheus (`server::metrics`), an
//! in-process host can implement it with its own stats, tests use [`Ignore`]. Every method has
//! a no-op default.
//!
//! Per-request reports are made cheap by construction: [`Observer::decisions`] is called once
//! per policy when a config is loaded, and the handle it returns is what each decision uses,
//! so the hot path never looks a label set up.

use std::sync::Arc;
use std::time::Duration;

/// The caches a host keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheName {
    Token,
    Basic,
    Lookup,
    Introspection,
}

impl CacheName {
    pub const ALL: [CacheName; 4] = [
        CacheName::Token,
        CacheName::Basic,
        CacheName::Lookup,
        CacheName::Introspection,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CacheName::Token => "token",
            CacheName::Basic => "basic",
            CacheName::Lookup => "lookup",
            CacheName::Introspection => "introspection",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// How a Check ended, as a metric label pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecisionLabel {
    /// `allow`, `deny` or `unavailable`.
    pub result: &'static str,
    pub reason: &'static str,
    /// A dense index over every (result, reason) pair, below [`DecisionLabel::COUNT`], so that
    /// an observer can keep one handle per pair in an array.
    pub index: usize,
}

impl DecisionLabel {
    pub const COUNT: usize = crate::core::policy::AllowReason::ALL.len()
        + crate::core::policy::DenyReason::ALL.len()
        + 1;

    pub fn allow(reason: crate::core::policy::AllowReason) -> Self {
        DecisionLabel {
            result: "allow",
            reason: reason.as_str(),
            index: reason as usize,
        }
    }

    pub fn deny(reason: crate::core::policy::DenyReason) -> Self {
        DecisionLabel {
            result: "deny",
            reason: reason.as_str(),
            index: crate::core::policy::AllowReason::ALL.len() + reason as usize,
        }
    }

    pub fn unavailable() -> Self {
        DecisionLabel {
            result: "unavailable",
            reason: "cannot_decide",
            index: Self::COUNT - 1,
        }
    }

    pub fn of(outcome: &crate::core::driver::Outcome) -> Self {
        use crate::core::driver::Outcome;
        use crate::core::policy::Decision;
        match outcome {
            Outcome::Decided(Decision::Allow(a)) => Self::allow(a.reason),
            Outcome::Decided(Decision::Deny(d)) => Self::deny(d.reason),
            Outcome::Decided(Decision::Respond(r)) => Self::allow(r.reason),
            Outcome::Unavailable(_) => Self::unavailable(),
        }
    }
}

/// Counts the decisions of one policy (or of requests no policy matched). Made once per
/// config load by [`Observer::decisions`].
pub trait DecisionObserver: Send + Sync {
    fn decided(&self, label: DecisionLabel, elapsed: Duration);
}

/// What became of AuditEvents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditResult {
    Queued,
    Written,
    DroppedQueueFull,
    DroppedUndeliverable,
}

impl AuditResult {
    pub const ALL: [AuditResult; 4] = [
        AuditResult::Queued,
        AuditResult::Written,
        AuditResult::DroppedQueueFull,
        AuditResult::DroppedUndeliverable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuditResult::Queued => "queued",
            AuditResult::Written => "written",
            AuditResult::DroppedQueueFull => "dropped_queue_full",
            AuditResult::DroppedUndeliverable => "dropped_undeliverable",
        }
    }
}

/// Counts one audit sink's events. Made once per sink by [`Observer::audit_sink`].
pub trait AuditObserver: Send + Sync {
    fn events(&self, result: AuditResult, count: u64);
}

/// Reports from the layers below the host. Every method defaults to doing nothing.
pub trait Observer: Send + Sync {
    /// The handle that counts `policy`'s decisions (`namespace/name`, or `none`).
    fn decisions(&self, policy: &str) -> Arc<dyn DecisionObserver> {
        let _ = policy;
        Arc::new(Ignore)
    }
    fn cache_lookup(&self, cache: CacheName, hit: bool) {
        let _ = (cache, hit);
    }
    /// A cache's share of the memory budget, reported once when it is made.
    fn cache_budget(&self, cache: CacheName, bytes: usize) {
        let _ = (cache, bytes);
    }
    /// What a cache holds after a change, and how many entries the change evicted.
    fn cache_usage(&self, cache: CacheName, entries: usize, bytes: usize, evicted: u64) {
        let _ = (cache, entries, bytes, evicted);
    }
    /// An entry too heavy to cache was verified but not remembered.
    fn cache_uncacheable(&self, cache: CacheName) {
        let _ = cache;
    }
    /// A JWKS fetch by key source (`namespace/name/provider`); `stale` while the last good
    /// key set stays in force after a failure.
    fn jwks_fetched(&self, source: &str, ok: bool, stale: bool) {
        let _ = (source, ok, stale);
    }
    /// An OAuth token request of an outbound connection, by result class.
    fn oauth_fetched(&self, connection: &str, result: &'static str) {
        let _ = (connection, result);
    }
    /// One call to a policy's introspection endpoint (`namespace/name`), by result class
    /// (`active`, `inactive`, `refused`, `unreachable`, `timeout`, `tls`, `http_4xx`,
    /// `http_5xx`, `invalid_response`), and how long it took.
    fn introspection_call(&self, policy: &str, result: &'static str, elapsed: Duration) {
        let _ = (policy, result, elapsed);
    }
    /// A token answered from the introspection cache, or (`shared`) by a call another check
    /// of the same token was already making.
    fn introspection_reused(&self, policy: &str, shared: bool) {
        let _ = (policy, shared);
    }
    fn oauth_token_valid(&self, connection: &str, valid: bool) {
        let _ = (connection, valid);
    }
    /// A password check starts or stops waiting for a hashing slot.
    fn password_waiting(&self, delta: i64) {
        let _ = delta;
    }
    /// A token verification starts or stops waiting for a verification slot.
    fn token_waiting(&self, delta: i64) {
        let _ = delta;
    }
    /// An OpenID discovery fetch (`namespace/name` of the policy); `stale` while the last
    /// good document stays in force after a failure.
    fn discovery_fetched(&self, source: &str, ok: bool, stale: bool) {
        let _ = (source, ok, stale);
    }
    /// The handle that counts one audit sink's events (`stdout`, `file:PATH`,
    /// `connection:NS/NAME`). Made once when the sink is made, so recording an event never
    /// looks a label set up.
    fn audit_sink(&self, sink: &str) -> Arc<dyn AuditObserver> {
        let _ = sink;
        Arc::new(Ignore)
    }
    fn config_loaded(&self, generation: u64) {
        let _ = generation;
    }
    /// A reload was tried: `ok` when it installed a config.
    fn config_reload(&self, ok: bool) {
        let _ = ok;
    }
    /// Whether the config directory now holds refused content (the last good config in force).
    fn config_refused(&self, refused: bool) {
        let _ = refused;
    }
}

/// Observes nothing (tests, tools, benchmarks).
#[derive(Debug, Default, Clone, Copy)]
pub struct Ignore;

impl Observer for Ignore {}

impl DecisionObserver for Ignore {
    fn decided(&self, _: DecisionLabel, _: Duration) {}
}

impl AuditObserver for Ignore {
    fn events(&self, _: AuditResult, _: u64) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::policy::{AllowReason, DenyReason};

    #[test]
    fn decision_labels_are_dense_and_distinct() {
        let mut seen = [false; DecisionLabel::COUNT];
        let labels = AllowReason::ALL
            .iter()
            .map(|r| DecisionLabel::allow(*r))
            .chain(DenyReason::ALL.iter().map(|r| DecisionLabel::deny(*r)))
            .chain([DecisionLabel::unavailable()]);
        for l in labels {
            assert!(!seen[l.index], "{l:?} shares its index");
            seen[l.index] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }
}
