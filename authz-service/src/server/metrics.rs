//! Prometheus metrics. Every label is bounded: policy names come from the config, reasons and
//! results are enums, JWKS sources are the configured providers.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

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
pub struct CacheNameLabels {
    /// `token`, `basic` or `lookup`.
    pub cache: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub cache: &'static str,
    pub result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub decisions: Family<DecisionLabels, Counter>,
    pub check_duration: Histogram,
    pub config_generation: Gauge,
    pub config_reloads: Family<ResultLabels, Counter>,
    pub jwks_fetches: Family<SourceResultLabels, Counter>,
    pub jwks_stale: Family<SourceLabels, Gauge>,
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
        let check_duration = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(1e-5, 2.5, 15),
        );
        registry.register(
            "check_duration_seconds",
            "Time to decide one Check",
            check_duration.clone(),
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
        let cache = Family::<CacheLabels, Counter>::default();
        registry.register(
            "cache_lookups",
            "Cache lookups by cache (basic, token, lookup) and result (hit, miss)",
            cache.clone(),
        );
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
        Metrics {
            registry,
            password_checks_waiting,
            oauth_fetches,
            oauth_token_valid,
            decisions,
            check_duration,
            config_generation,
            config_reloads,
            jwks_fetches,
            jwks_stale,
            cache,
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

    pub fn cache_lookup(&self, cache: &'static str, hit: bool) {
        self.cache
            .get_or_create(&CacheLabels {
                cache,
                result: if hit { "hit" } else { "miss" },
            })
            .inc();
    }
}
