//! The HTTP filter: Envoy's request → the core's [`Request`], the executor's [`Answer`] →
//! Envoy calls. No decision logic: what the gRPC adapter (`server::envoy`) does with a
//! CheckRequest, this does with the stream, through the same executor and the same answers.
//!
//! Threads: Envoy's worker polls the decision future once, inline. A decision that needs no
//! slow work (a cached token or password, a public path, a refusal) is complete after that
//! poll, and the request continues or is answered in the same hook. Otherwise the very same
//! future moves to the module's tokio runtime (key fetches, signature checks and password
//! hashes in bounded slots, compartment lookups, OAuth tokens), the stream stays stopped, and
//! the answer comes back through Envoy's per-stream scheduler onto the worker thread. A stream
//! that ends while parked aborts its task; Envoy drops a late wake-up for a stream it no longer
//! has.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use fhirguard_authz::core::answer;
use fhirguard_authz::core::driver::Outcome;
use fhirguard_authz::core::fhir::Body;
use fhirguard_authz::core::policy::{Decision, Request};
use fhirguard_authz::runtime::executor::{Answer, DecisionId};

use crate::abi::{EnvoyFilter, EnvoyFilterConfig, Scheduler, log_error};
use crate::host::{Host, Settings};
use crate::query;

/// Route metadata namespace holding the same keys as the ext_authz context extensions.
pub const METADATA_NAMESPACE: &str = "fhirguard";
pub const POLICY_KEY: &str = "fhirguard.dev/policy";
pub const CONNECTION_KEY: &str = "fhirguard.dev/connection";

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadersStatus {
    Continue = 0,
    StopIteration = 1,
}

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyStatus {
    Continue = 0,
    StopIterationAndBuffer = 1,
    StopIterationNoBuffer = 3,
}

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrailersStatus {
    Continue = 0,
    StopIteration = 1,
}

/// Requests waiting for slow work, across all streams: past the bound a request is answered
/// 503 at once instead of queueing without limit.
static PARKED: AtomicUsize = AtomicUsize::new(0);

pub fn program_init() {
    // reqwest is built without a default TLS provider; Envoy's own TLS (BoringSSL) is separate.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Envoy stats, with the names and labels of the service's Prometheus metrics
/// (`fhirguard_decisions_total{policy,result,reason}`, `fhirguard_check_duration_seconds`,
/// here in microseconds). Envoy puts them under its dynamic-module stats namespace.
#[derive(Clone, Copy, Default)]
struct Stats {
    decisions: Option<usize>,
    duration_us: Option<usize>,
    /// Decisions that could not be made inline and waited on the module's runtime.
    parked: Option<usize>,
}

/// One `dynamic_module_config`/`filter_config` instance: which config directory, and limits.
pub struct FilterConfig {
    host: Arc<Host>,
    settings: Settings,
    stats: Stats,
}

impl FilterConfig {
    pub fn new(bytes: &[u8], envoy: &EnvoyFilterConfig) -> Result<FilterConfig, String> {
        let settings = Settings::parse(bytes)?;
        let host = Host::for_dir(&settings)?;
        let stats = Stats {
            decisions: envoy.define_counter("fhirguard_decisions", &["policy", "result", "reason"]),
            duration_us: envoy.define_histogram("fhirguard_check_duration_us", &[]),
            parked: envoy.define_counter("fhirguard_parked", &[]),
        };
        Ok(FilterConfig {
            host,
            settings,
            stats,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the request headers.
    Start,
    /// Headers seen, collecting the body.
    Body,
    /// The decision runs on the module's runtime.
    Parked,
    /// Allowed and continued, or answered.
    Done,
}

/// What a parked stream shares with its task.
struct Slot {
    answer: Mutex<Option<Option<Answer>>>,
    scheduler: Scheduler,
}

struct Parked {
    slot: Arc<Slot>,
    task: tokio::task::AbortHandle,
}

impl Drop for Parked {
    fn drop(&mut self) {
        // The stream is gone or answered: its work is not needed any more.
        self.task.abort();
        PARKED.fetch_sub(1, Ordering::Relaxed);
    }
}

pub struct Filter {
    host: Arc<Host>,
    settings: Settings,
    stats: Stats,
    started: Option<std::time::Instant>,
    phase: Phase,
    /// Shared with the decision future (no copy per request).
    headers: Arc<Vec<(String, String)>>,
    connection: Option<String>,
    policy: Option<String>,
    /// The client's address (`source.address`), for AuditEvents.
    source: Option<String>,
    body: Vec<u8>,
    body_too_large: bool,
    response_set: Vec<(&'static str, String)>,
    parked: Option<Parked>,
}

/// The request as owned strings: what the decision future takes to the runtime.
struct OwnedRequest {
    method: String,
    host: String,
    path: String,
    headers: Arc<Vec<(String, String)>>,
    body: Option<Vec<u8>>,
    policy: Option<String>,
    source: Option<String>,
}

type Decide = Pin<Box<dyn Future<Output = Option<Answer>> + Send>>;

/// Polls a future under `catch_unwind`: a panic inside the decision ends it with `None`
/// (answered 503), on the worker thread and on the runtime alike.
struct CatchUnwind(Pin<Box<dyn Future<Output = Answer> + Send>>);

impl Future for CatchUnwind {
    type Output = Option<Answer>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Answer>> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.as_mut().poll(cx))) {
            Ok(Poll::Ready(a)) => Poll::Ready(Some(a)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(None),
        }
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Lower-cased names, repeated headers joined with `,` (as the ext_authz request carries them).
fn normalise(raw: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(raw.len());
    for (k, v) in raw {
        let k = if k.bytes().any(|b| b.is_ascii_uppercase()) {
            k.to_ascii_lowercase()
        } else {
            k
        };
        match out.iter_mut().find(|(n, _)| *n == k) {
            Some((_, joined)) => {
                joined.push(',');
                joined.push_str(&v);
            }
            None => out.push((k, v)),
        }
    }
    out
}

pub fn send_unavailable(e: &EnvoyFilter, why: &str) {
    let id = DecisionId::new();
    // The client gets the id; the log line under it names the cause.
    tracing::warn!(target: "fhirguard::decision", decision_id = %id, result = "unavailable", status = 503u16, why, "decision");
    send_unavailable_with(
        e,
        id.as_str(),
        "fhirguard cannot decide this request now; its decision id names the cause in fhirguard's log",
    );
}

fn send_unavailable_with(e: &EnvoyFilter, decision_id: &str, diagnostics: &str) {
    let headers = vec![
        (
            "content-type".to_string(),
            "application/fhir+json".to_string(),
        ),
        (
            "x-fhirguard-decision-id".to_string(),
            decision_id.to_string(),
        ),
    ];
    let body = answer::unavailable_body(decision_id, diagnostics);
    e.send_response(503, &headers, &body, "fhirguard_unavailable");
}

impl Filter {
    pub fn new(config: &FilterConfig) -> Filter {
        Filter {
            host: config.host.clone(),
            settings: config.settings.clone(),
            stats: config.stats,
            started: None,
            phase: Phase::Start,
            headers: Arc::new(Vec::new()),
            connection: None,
            policy: None,
            source: None,
            body: Vec::new(),
            body_too_large: false,
            response_set: Vec::new(),
            parked: None,
        }
    }

    pub fn on_request_headers(&mut self, e: &EnvoyFilter, end_of_stream: bool) -> HeadersStatus {
        self.headers = Arc::new(normalise(e.request_headers()));
        self.connection = e.route_metadata(METADATA_NAMESPACE, CONNECTION_KEY);
        self.policy = e.route_metadata(METADATA_NAMESPACE, POLICY_KEY);
        // Only AuditEvents use the client's address: no ABI call and no copy otherwise.
        self.source = if self.host.executor.audits() {
            e.source_address()
        } else {
            None
        };
        // An outbound request is decided by its connection alone; an inbound one with a body
        // waits for it (the decision may read it, as ext_authz's with_request_body).
        if end_of_stream || self.connection.is_some() {
            self.decide(e, false)
        } else {
            self.phase = Phase::Body;
            HeadersStatus::StopIteration
        }
    }

    pub fn on_request_body(&mut self, e: &EnvoyFilter, end_of_stream: bool) -> BodyStatus {
        match self.phase {
            Phase::Body => {}
            Phase::Done => return BodyStatus::Continue,
            // Body arriving while the decision runs: keep it until the answer.
            Phase::Parked | Phase::Start => return BodyStatus::StopIterationAndBuffer,
        }
        if !end_of_stream {
            if self.over_limit(e) {
                // Past the limit the body is not judged (as a partial ext_authz body): decide
                // now without it.
                self.body_too_large = true;
                return match self.decide(e, true) {
                    HeadersStatus::Continue => BodyStatus::Continue,
                    HeadersStatus::StopIteration => BodyStatus::StopIterationAndBuffer,
                };
            }
            return BodyStatus::StopIterationAndBuffer;
        }
        self.body = e.request_body();
        if self.body.len() > self.settings.max_request_bytes {
            self.body_too_large = true;
        }
        match self.decide(e, true) {
            HeadersStatus::Continue => BodyStatus::Continue,
            HeadersStatus::StopIteration => BodyStatus::StopIterationAndBuffer,
        }
    }

    fn over_limit(&self, e: &EnvoyFilter) -> bool {
        e.request_body_len() > self.settings.max_request_bytes
    }

    pub fn on_request_trailers(&mut self, e: &EnvoyFilter) -> TrailersStatus {
        match self.phase {
            Phase::Body => {
                self.body = e.request_body();
                self.body_too_large = self.body.len() > self.settings.max_request_bytes;
                match self.decide(e, true) {
                    HeadersStatus::Continue => TrailersStatus::Continue,
                    HeadersStatus::StopIteration => TrailersStatus::StopIteration,
                }
            }
            Phase::Done => TrailersStatus::Continue,
            Phase::Parked | Phase::Start => TrailersStatus::StopIteration,
        }
    }

    pub fn on_response_headers(&mut self, e: &EnvoyFilter) {
        for (k, v) in self.response_set.drain(..) {
            e.set_response_header(k, &v);
        }
    }

    pub fn on_stream_complete(&mut self) {
        self.parked = None;
    }

    fn owned_request(&mut self, with_body: bool) -> OwnedRequest {
        let method = header(&self.headers, ":method").unwrap_or("").to_string();
        let host = header(&self.headers, ":authority")
            .unwrap_or("")
            .to_string();
        let path = header(&self.headers, ":path").unwrap_or("").to_string();
        let content_length =
            header(&self.headers, "content-length").and_then(|v| v.trim().parse::<usize>().ok());
        let bytes = std::mem::take(&mut self.body);
        // The same rule as the gRPC adapter: a body is judged only when it came whole.
        let partial = self.body_too_large || content_length.is_some_and(|n| n != bytes.len());
        let sent = with_body && (!bytes.is_empty() || content_length == Some(0));
        OwnedRequest {
            method,
            host,
            path,
            headers: self.headers.clone(),
            body: (sent && !partial).then_some(bytes),
            policy: self.policy.clone(),
            source: self.source.clone(),
        }
    }

    /// Starts the decision; answers inline when it completes at once, else parks the stream.
    fn decide(&mut self, e: &EnvoyFilter, with_body: bool) -> HeadersStatus {
        self.started = Some(std::time::Instant::now());
        let executor = self.host.executor.clone();
        let future: Pin<Box<dyn Future<Output = Answer> + Send>> = match self.connection.clone() {
            Some(connection) => {
                let method = header(&self.headers, ":method").unwrap_or("").to_string();
                Box::pin(async move { executor.outbound(&connection, &method).await })
            }
            None => {
                let owned = self.owned_request(with_body);
                Box::pin(async move {
                    let pairs: Vec<(&str, &str)> = owned
                        .headers
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    let request = Request {
                        method: &owned.method,
                        headers: &pairs,
                        host: &owned.host,
                        path: &owned.path,
                        authorization: header(&owned.headers, "authorization"),
                        if_none_exist: header(&owned.headers, "if-none-exist"),
                        body: owned.body.as_deref().map(|bytes| Body {
                            bytes,
                            content_type: header(&owned.headers, "content-type"),
                        }),
                        policy_ref: owned.policy.as_deref(),
                    };
                    executor.check_from(&request, owned.source.as_deref()).await
                })
            }
        };
        let mut future: Decide = Box::pin(CatchUnwind(future));
        let runtime = self.host.runtime();
        let first = {
            // The runtime's context, so that work the first poll starts (a blocking-pool
            // task, a socket) belongs to it.
            let _context = runtime.enter();
            future
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
        };
        match first {
            Poll::Ready(answer) => {
                self.phase = Phase::Done;
                self.finish(e, answer)
            }
            Poll::Pending => self.park(e, future, runtime),
        }
    }

    fn park(
        &mut self,
        e: &EnvoyFilter,
        future: Decide,
        runtime: &tokio::runtime::Runtime,
    ) -> HeadersStatus {
        if PARKED.fetch_add(1, Ordering::Relaxed) >= self.settings.max_parked {
            PARKED.fetch_sub(1, Ordering::Relaxed);
            self.phase = Phase::Done;
            drop(future);
            send_unavailable(e, "too many requests are waiting for a decision");
            return HeadersStatus::StopIteration;
        }
        if let Some(id) = self.stats.parked {
            e.increment_counter(id, &[], 1);
        }
        let Some(scheduler) = e.scheduler() else {
            PARKED.fetch_sub(1, Ordering::Relaxed);
            self.phase = Phase::Done;
            send_unavailable(e, "Envoy gave no scheduler for the stream");
            return HeadersStatus::StopIteration;
        };
        let slot = Arc::new(Slot {
            answer: Mutex::new(None),
            scheduler,
        });
        let task_slot = slot.clone();
        // The same future continues on the runtime: its first spawn-time poll registers the
        // runtime's waker wherever the inline poll registered the no-op one.
        let task = runtime.spawn(async move {
            let answer = future.await;
            if let Ok(mut a) = task_slot.answer.lock() {
                *a = Some(answer);
            }
            task_slot.scheduler.commit(1);
        });
        self.parked = Some(Parked {
            slot,
            task: task.abort_handle(),
        });
        self.phase = Phase::Parked;
        HeadersStatus::StopIteration
    }

    pub fn on_scheduled(&mut self, e: &EnvoyFilter, _event_id: u64) {
        if self.phase != Phase::Parked {
            return;
        }
        let answer = self
            .parked
            .as_ref()
            .and_then(|p| p.slot.answer.lock().ok().and_then(|mut a| a.take()));
        let Some(answer) = answer else {
            // A wake-up without an answer: not ours to act on.
            return;
        };
        self.parked = None;
        self.phase = Phase::Done;
        if self.finish(e, answer) == HeadersStatus::Continue {
            e.continue_decoding();
        }
    }

    /// Counts a decision on the worker thread (where Envoy's per-stream stats calls belong).
    fn count(&self, e: &EnvoyFilter, outcome: &Outcome) {
        let label = fhirguard_authz::observe::DecisionLabel::of(outcome);
        let policy = match outcome {
            Outcome::Decided(Decision::Allow(a)) => a.policy.as_str(),
            Outcome::Decided(Decision::Deny(d)) => d.policy.as_deref().unwrap_or("none"),
            Outcome::Decided(Decision::Respond(r)) => r.policy.as_str(),
            Outcome::Unavailable(_) => "none",
        };
        if let Some(id) = self.stats.decisions {
            e.increment_counter(id, &[policy, label.result, label.reason], 1);
        }
        if let (Some(id), Some(started)) = (self.stats.duration_us, self.started) {
            let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            e.record_histogram(id, &[], us);
        }
    }

    /// Carries out an answer: Continue with the request rewritten, or a local reply.
    fn finish(&mut self, e: &EnvoyFilter, answer: Option<Answer>) -> HeadersStatus {
        let Some(answer) = answer else {
            log_error("fhirguard: the decision panicked; answering 503");
            send_unavailable(e, "internal fault");
            return HeadersStatus::StopIteration;
        };
        let id = answer.decision_id;
        self.count(e, &answer.outcome);
        match answer.outcome {
            Outcome::Decided(Decision::Allow(a)) => {
                let names = self.headers.iter().map(|(k, _)| k.as_str());
                let allowed =
                    answer::allowed(&a, id.as_str(), names, header(&self.headers, "prefer"));
                for k in &allowed.remove {
                    e.remove_request_header(k);
                }
                for (k, v) in &allowed.set {
                    e.set_request_header(k, v);
                }
                if !a.set_query.is_empty() || !a.remove_query.is_empty() {
                    let path = header(&self.headers, ":path").unwrap_or("");
                    e.set_request_header(
                        ":path",
                        &query::rewrite(path, &a.set_query, &a.remove_query),
                    );
                }
                self.response_set = allowed.response_set;
                HeadersStatus::Continue
            }
            Outcome::Decided(Decision::Deny(d)) => {
                let denied = answer::denied(&d, id.as_str());
                e.send_response(
                    denied.status,
                    &denied.headers,
                    &denied.body,
                    "fhirguard_denied",
                );
                HeadersStatus::StopIteration
            }
            // fhirguard answers itself (the SMART discovery document): a local reply with the
            // decided status, like the ext_authz adapter's denied response with status 200.
            Outcome::Decided(Decision::Respond(r)) => {
                let own = answer::responded(&r, id.as_str());
                e.send_response(own.status, &own.headers, &own.body, "fhirguard_responded");
                HeadersStatus::StopIteration
            }
            Outcome::Unavailable(_) => {
                // The cause (an IdP or lookup server, the config) is in the decision log line
                // under this id; the client learns only that no decision could be made.
                send_unavailable_with(
                    e,
                    id.as_str(),
                    "fhirguard cannot decide this request now; its decision id names the cause in fhirguard's log",
                );
                HeadersStatus::StopIteration
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_headers_are_joined_and_names_lower_cased() {
        let got = normalise(vec![
            ("Accept".into(), "a".into()),
            ("x-y".into(), "1".into()),
            ("accept".into(), "b".into()),
        ]);
        assert_eq!(
            got,
            vec![
                ("accept".to_string(), "a,b".to_string()),
                ("x-y".to_string(), "1".to_string())
            ]
        );
    }
}
