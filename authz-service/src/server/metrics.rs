//! Prometheus metrics: the server's [`Observer`]. Every label is bounded: policy names come
//! from the config, reasons and results are enums, JWKS sources are the configured providers.
//!
//! Nothing is looked up per request: decision counters are created per policy when a config
//! is loaded (and each (result, reason) series once, on first use), cache counters when the
//! metrics are made, and the duration histogram is lock-free ([`AtomicHistogram`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::observe::{
    AuditObserver, AuditResult, CacheName, DecisionLabel, DecisionObserver, Observer,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `namespace/name`, or `none` when no policy matched.
    pub policy: String,
    /// `allow`, `deny` or `unavailable`.
    pub result: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// `namespace/name/provider` of the first policy that uses this key source.
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceResultLabels {
    pub source: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkResultLabels {
    /// `stdout`, `file:PATH` or `connection:NAMESPACE/NAME` (from the config).
    pub sink: String,
    /// `queued`, `written`, `dropped_queue_full` or `dropped_undeliverable`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    /// `namespace/name` of a FhirConnection in the config.
    pub connection: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionResultLabels {
    pub connection: String,
    /// `ok`, an RFC 6749 error code, `server_error`, `http_error`, `tls`, `timeout`, `network`
    /// or `bad_response`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    /// `namespace/name` of the policy whose introspection endpoint this is.
    pub policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyResultLabels {
    pub policy: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheNameLabels {
    /// `token`, `basic`, `lookup` or `introspection`.
    pub cache: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub cache: &'static str,
    pub result: &'static str,
}

/// A histogram with fixed buckets whose observations are a few relaxed atomic adds: no lock
/// on the decision path (prometheus-client's own histogram takes a mutex per observation).
#[derive(Debug)]
pub struct AtomicHistogram {
    /// Upper bounds in seconds, ascending; an implicit +Inf bucket follows.
    bounds: Vec<f64>,
    /// Per bucket (not cumulative), `bounds.len() + 1` of them.
    counts: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
}

impl AtomicHistogram {
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Self {
        let bounds: Vec<f64> = bounds.into_iter().collect();
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        AtomicHistogram {
            bounds,
            counts,
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self.bounds.partition_point(|b| *b < secs);
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// (sum in seconds, count, per-bucket counts with their upper bounds).
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, c)| c).sum();
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        (sum, count, buckets)
    }
}

/// An [`AtomicHistogram`] shared between the registry and the decision counters.
#[derive(Debug, Clone)]
pub struct SharedHistogram(pub Arc<AtomicHistogram>);

impl TypedMetric for SharedHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for SharedHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.0.snapshot();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

pub struct Metrics {
    registry: Registry,
    pub decisions: Family<DecisionLabels, Counter>,
    pub check_duration: Arc<AtomicHistogram>,
    pub config_generation: Gauge,
    pub config_reloads: Family<ResultLabels, Counter>,
    pub jwks_fetches: Family<SourceResultLabels, Counter>,
    pub jwks_stale: Family<SourceLabels, Gauge>,
    pub discovery_fetches: Family<SourceResultLabels, Counter>,
    pub discovery_stale: Family<SourceLabels, Gauge>,
    pub audit_events: Family<SinkResultLabels, Counter>,
    pub cache: Family<CacheLabels, Counter>,
    pub cache_entries: Family<CacheNameLabels, Gauge>,
    pub cache_bytes: Family<CacheNameLabels, Gauge>,
    pub cache_budget_bytes: Family<CacheNameLabels, Gauge>,
    pub cache_evictions: Family<CacheNameLabels, Counter>,
    pub cache_uncacheable: Family<CacheNameLabels, Counter>,
    /// 1 while the config directory holds content that was refused (the last good config is
    /// in force).
    pub config_refused: Gauge,
    pub oauth_fetches: Family<ConnectionResultLabels, Counter>,
    pub oauth_token_valid: Family<ConnectionLabels, Gauge>,
    pub password_checks_waiting: Gauge,
    pub token_checks_waiting: Gauge,
    /// `cache_lookups{cache, result}` per [`CacheName`] index: [miss, hit].
    cache_lookups: [[Counter; 2]; 4],
    pub introspection_calls: Family<PolicyResultLabels, Counter>,
    pub introspection_reused: Family<PolicyResultLabels, Counter>,
    pub introspection_duration: Family<PolicyLabels, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("fhirguard");
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Check decisions by policy, result and reason",
            decisions.clone(),
        );
        // 10 µs .. ~5 s: cached decisions sit at the bottom, bcrypt checks and key fetches above.
        let check_duration = Arc::new(AtomicHistogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(1e-5, 2.5, 15),
        ));
        registry.register(
            "check_duration_seconds",
            "Time to decide one Check",
            SharedHistogram(check_duration.clone()),
        );
        let config_generation = Gauge::default();
        registry.register(
            "config_generation",
            "Generation of the config in force",
            config_generation.clone(),
        );
        let config_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Config loads by result (success, invalid)",
            config_reloads.clone(),
        );
        let jwks_fetches = Family::<SourceResultLabels, Counter>::default();
        registry.register(
            "jwks_fetches",
            "JWKS fetches by source and result",
            jwks_fetches.clone(),
        );
        let jwks_stale = Family::<SourceLabels, Gauge>::default();
        registry.register(
            "jwks_stale",
            "1 while the last JWKS fetch failed and the last good key set is still in use",
            jwks_stale.clone(),
        );
        let discovery_fetches = Family::<SourceResultLabels, Counter>::default();
        registry.register(
            "openid_discovery_fetches",
            "OpenID discovery fetches for SMART discovery documents, by policy and result",
            discovery_fetches.clone(),
        );
        let discovery_stale = Family::<SourceLabels, Gauge>::default();
        registry.register(
            "openid_discovery_stale",
            "1 while the last OpenID discovery fetch failed and the last good document is in use",
            discovery_stale.clone(),
        );
        let audit_events = Family::<SinkResultLabels, Counter>::default();
        registry.register(
            "audit_events",
            "AuditEvents by sink and result (queued, written, dropped_queue_full, dropped_undeliverable)",
            audit_events.clone(),
        );
        let cache = Family::<CacheLabels, Counter>::default();
        registry.register(
            "cache_lookups",
            "Cache lookups by cache (basic, token, lookup) and result (hit, miss)",
            cache.clone(),
        );
        let cache_lookups = CacheName::ALL.map(|name| {
            ["miss", "hit"].map(|result| {
                cache
                    .get_or_create(&CacheLabels {
                        cache: name.as_str(),
                        result,
                    })
                    .clone()
            })
        });
        let cache_entries = Family::<CacheNameLabels, Gauge>::default();
        registry.register(
            "cache_entries",
            "Entries held by each cache",
            cache_entries.clone(),
        );
        let cache_bytes = Family::<CacheNameLabels, Gauge>::default();
        registry.register(
            "cache_bytes",
            "Estimated heap bytes held by each cache",
            cache_bytes.clone(),
        );
        let cache_budget_bytes = Family::<CacheNameLabels, Gauge>::default();
        registry.register(
            "cache_budget_bytes",
            "Each cache's share of the memory budget (--cache-memory-mib)",
            cache_budget_bytes.clone(),
        );
        let cache_evictions = Family::<CacheNameLabels, Counter>::default();
        registry.register(
            "cache_evictions",
            "Entries dropped to stay within the cache's budget",
            cache_evictions.clone(),
        );
        let cache_uncacheable = Family::<CacheNameLabels, Counter>::default();
        registry.register(
            "cache_uncacheable",
            "Entries too large to cache (verified but not remembered)",
            cache_uncacheable.clone(),
        );
        let config_refused = Gauge::default();
        registry.register(
            "config_refused",
            "1 while the config directory holds a refused config and the last good one is in force",
            config_refused.clone(),
        );
        let oauth_fetches = Family::<ConnectionResultLabels, Counter>::default();
        registry.register(
            "oauth_token_fetches",
            "OAuth client-credentials token requests by connection and result",
            oauth_fetches.clone(),
        );
        let oauth_token_valid = Family::<ConnectionLabels, Gauge>::default();
        registry.register(
            "oauth_token_valid",
            "1 while the connection holds a usable OAuth token",
            oauth_token_valid.clone(),
        );
        let password_checks_waiting = Gauge::default();
        registry.register(
            "password_checks_waiting",
            "Basic password checks waiting for one of the bounded hashing slots",
            password_checks_waiting.clone(),
        );
        let token_checks_waiting = Gauge::default();
        registry.register(
            "token_checks_waiting",
            "Uncached token verifications waiting for one of the bounded verification slots",
            token_checks_waiting.clone(),
        );
        let introspection_calls = Family::<PolicyResultLabels, Counter>::default();
        registry.register(
            "introspection_requests",
            "Calls to a policy's token introspection endpoint by result (active, inactive, refused, unreachable, timeout, tls, http_4xx, http_5xx, invalid_response)",
            introspection_calls.clone(),
        );
        let introspection_reused = Family::<PolicyResultLabels, Counter>::default();
        registry.register(
            "introspection_reused",
            "Introspections answered without a call of their own, by how (cache, shared: joined a call in flight for the same token)",
            introspection_reused.clone(),
        );
        let introspection_duration =
            Family::<PolicyLabels, Histogram, fn() -> Histogram>::new_with_constructor(|| {
                // 1 ms .. ~10 s.
                Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                    1e-3, 2.0, 14,
                ))
            });
        registry.register(
            "introspection_request_duration_seconds",
            "Time of one call to a policy's token introspection endpoint",
            introspection_duration.clone(),
        );
        Metrics {
            introspection_calls,
            introspection_reused,
            introspection_duration,
            registry,
            password_checks_waiting,
            token_checks_waiting,
            oauth_fetches,
            oauth_token_valid,
            decisions,
            check_duration,
            config_generation,
            config_reloads,
            jwks_fetches,
            jwks_stale,
            discovery_fetches,
            discovery_stale,
            audit_events,
            cache,
            cache_lookups,
            cache_entries,
            cache_bytes,
            cache_budget_bytes,
            cache_evictions,
            cache_uncacheable,
            config_refused,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One policy's decision counters: each (result, reason) series is created on its first
/// decision and then incremented through its own handle.
struct PolicyDecisions {
    policy: String,
    family: Family<DecisionLabels, Counter>,
    duration: Arc<AtomicHistogram>,
    series: [OnceLock<Counter>; DecisionLabel::COUNT],
}

impl DecisionObserver for PolicyDecisions {
    fn decided(&self, label: DecisionLabel, elapsed: Duration) {
        self.duration.observe(elapsed);
        let Some(slot) = self.series.get(label.index) else {
            return;
        };
        slot.get_or_init(|| {
            self.family
                .get_or_create(&DecisionLabels {
                    policy: self.policy.clone(),
                    result: label.result,
                    reason: label.reason,
                })
                .clone()
        })
        .inc();
    }
}

/// One audit sink's counters, one per [`AuditResult`] in `AuditResult::ALL` order.
struct SinkCounters([Counter; AuditResult::ALL.len()]);

impl AuditObserver for SinkCounters {
    fn events(&self, result: AuditResult, count: u64) {
        if let Some(c) = self.0.get(result as usize) {
            c.inc_by(count);
        }
    }
}

impl Observer for Metrics {
    fn decisions(&self, policy: &str) -> Arc<dyn DecisionObserver> {
        Arc::new(PolicyDecisions {
            policy: policy.to_string(),
            family: self.decisions.clone(),
            duration: self.check_duration.clone(),
            series: std::array::from_fn(|_| OnceLock::new()),
        })
    }

    fn cache_lookup(&self, cache: CacheName, hit: bool) {
        if let Some(c) = self.cache_lookups.get(cache.index()) {
            c[usize::from(hit)].inc();
        }
    }

    fn cache_budget(&self, cache: CacheName, bytes: usize) {
        self.cache_budget_bytes
            .get_or_create(&CacheNameLabels {
                cache: cache.as_str(),
            })
            .set(gauge_value(bytes));
    }

    fn cache_usage(&self, cache: CacheName, entries: usize, bytes: usize, evicted: u64) {
        let labels = CacheNameLabels {
            cache: cache.as_str(),
        };
        self.cache_entries
            .get_or_create(&labels)
            .set(gauge_value(entries));
        self.cache_bytes
            .get_or_create(&labels)
            .set(gauge_value(bytes));
        if evicted > 0 {
            self.cache_evictions.get_or_create(&labels).inc_by(evicted);
        }
    }

    fn cache_uncacheable(&self, cache: CacheName) {
        self.cache_uncacheable
            .get_or_create(&CacheNameLabels {
                cache: cache.as_str(),
            })
            .inc();
    }

    fn jwks_fetched(&self, source: &str, ok: bool, stale: bool) {
        self.jwks_fetches
            .get_or_create(&SourceResultLabels {
                source: source.to_string(),
                result: if ok { "success" } else { "failure" },
            })
            .inc();
        self.jwks_stale
            .get_or_create(&SourceLabels {
                source: source.to_string(),
            })
            .set(i64::from(stale));
    }

    fn discovery_fetched(&self, source: &str, ok: bool, stale: bool) {
        self.discovery_fetches
            .get_or_create(&SourceResultLabels {
                source: source.to_string(),
                result: if ok { "success" } else { "failure" },
            })
            .inc();
        self.discovery_stale
            .get_or_create(&SourceLabels {
                source: source.to_string(),
            })
            .set(i64::from(stale));
    }

    fn audit_sink(&self, sink: &str) -> Arc<dyn AuditObserver> {
        Arc::new(SinkCounters(AuditResult::ALL.map(|result| {
            self.audit_events
                .get_or_create(&SinkResultLabels {
                    sink: sink.to_string(),
                    result: result.as_str(),
                })
                .clone()
        })))
    }

    fn introspection_call(&self, policy: &str, result: &'static str, elapsed: Duration) {
        self.introspection_calls
            .get_or_create(&PolicyResultLabels {
                policy: policy.to_string(),
                result,
            })
            .inc();
        self.introspection_duration
            .get_or_create(&PolicyLabels {
                policy: policy.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    fn introspection_reused(&self, policy: &str, shared: bool) {
        self.introspection_reused
            .get_or_create(&PolicyResultLabels {
                policy: policy.to_string(),
                result: if shared { "shared" } else { "cache" },
            })
            .inc();
    }

    fn oauth_fetched(&self, connection: &str, result: &'static str) {
        self.oauth_fetches
            .get_or_create(&ConnectionResultLabels {
                connection: connection.to_string(),
                result,
            })
            .inc();
    }

    fn oauth_token_valid(&self, connection: &str, valid: bool) {
        self.oauth_token_valid
            .get_or_create(&ConnectionLabels {
                connection: connection.to_string(),
            })
            .set(i64::from(valid));
    }

    fn password_waiting(&self, delta: i64) {
        self.password_checks_waiting.inc_by(delta);
    }

    fn token_waiting(&self, delta: i64) {
        self.token_checks_waiting.inc_by(delta);
    }

    fn config_loaded(&self, generation: u64) {
        self.config_generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
    }

    fn config_reload(&self, ok: bool) {
        self.config_reloads
            .get_or_create(&ResultLabels {
                result: if ok { "success" } else { "invalid" },
            })
            .inc();
    }

    fn config_refused(&self, refused: bool) {
        self.config_refused.set(i64::from(refused));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_encodes_like_a_prometheus_histogram() {
        let h = AtomicHistogram::new([0.001, 0.01]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(1));
        let mut registry = Registry::default();
        registry.register("d", "help", SharedHistogram(Arc::new(h)));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        for want in [
            "d_bucket{le=\"0.001\"} 1",
            "d_bucket{le=\"0.01\"} 3",
            "d_bucket{le=\"+Inf\"} 4",
            "d_count 4",
            "d_sum 1.0105",
        ] {
            assert!(out.contains(want), "{want} missing from\n{out}");
        }
    }

    #[test]
    fn decisions_count_per_policy_result_and_reason() {
        let m = Metrics::new();
        let d = m.decisions("ns/p");
        d.decided(
            DecisionLabel::deny(crate::core::policy::DenyReason::InvalidToken),
            Duration::from_micros(10),
        );
        d.decided(
            DecisionLabel::deny(crate::core::policy::DenyReason::InvalidToken),
            Duration::from_micros(10),
        );
        m.cache_lookup(CacheName::Token, true);
        let out = m.encode();
        assert!(
            out.contains(
                "fhirguard_decisions_total{policy=\"ns/p\",result=\"deny\",reason=\"invalid_token\"} 2"
            ),
            "{out}"
        );
        assert!(
            out.contains("fhirguard_cache_lookups_total{cache=\"token\",result=\"hit\"} 1"),
            "{out}"
        );
    }
}
