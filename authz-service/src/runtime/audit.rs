//! Ships AuditEvents (built by `core::audit`) without ever holding a decision up.
//!
//! A policy's events go into its sink's bounded queue with `try_send`, serialized: the queue
//! is bounded both in events (`queueSize`) and in bytes ([`MAX_QUEUE_BYTES`], so that a slow
//! destination costs bounded memory however large the events). A full queue drops the
//! event, counts it (`fhirguard_audit_events_total{result="dropped_queue_full"}`) and logs a
//! warning at most every ten seconds, never with the event's content (it names patients). A
//! background writer takes up to `batchSize` events at a time and writes them as NDJSON (a
//! file, opened for append per batch so that rotation works, or stdout) or POSTs them as one
//! FHIR `batch` Bundle to a connection's base URL, with that connection's credentials and TLS
//! trust, retrying with backoff; a batch that still fails is dropped and counted.
//!
//! Sinks are shared by destination through [`AuditRegistry`], so a config reload keeps the
//! queue (and what is in it) when the destination stays the same.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::config::{AuditConfig, ConnectionConfig};
use crate::observe::{AuditObserver, AuditResult, Observer};
use crate::runtime::backoff::{Backoff, BackoffPolicy};
use crate::runtime::oauth::TokenSource;

/// The bytes of serialized events one sink may hold waiting for its writer (by default).
pub const MAX_QUEUE_BYTES: usize = 64 << 20;

/// Attempts per batch before it is dropped.
const DELIVERY_ATTEMPTS: u32 = 5;
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Retry delays for a failing FHIR destination, and the byte bound of each sink's queue.
#[derive(Debug, Clone, Copy)]
pub struct AuditOptions {
    pub retry: BackoffPolicy,
    pub max_queue_bytes: usize,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            retry: BackoffPolicy {
                min: Duration::from_millis(500),
                max: Duration::from_secs(10),
            },
            max_queue_bytes: MAX_QUEUE_BYTES,
        }
    }
}

/// The credential an audit POST carries.
#[derive(Clone)]
pub enum AuditAuth {
    None,
    Fixed(String),
    OAuth(Arc<TokenSource>),
}

enum Destination {
    Stdout,
    File(PathBuf),
    Fhir {
        url: String,
        client: reqwest::Client,
        auth: AuditAuth,
    },
}

pub struct AuditSink {
    label: String,
    tx: mpsc::Sender<String>,
    /// Bytes queued and not yet taken by the writer, at most `max_queue_bytes`.
    queued_bytes: Arc<AtomicUsize>,
    max_queue_bytes: usize,
    counts: Arc<dyn AuditObserver>,
    dropped_since_warning: AtomicU64,
    last_warning: Mutex<Option<Instant>>,
}

impl AuditSink {
    /// Queues an event; never waits. A full queue drops it (counted, and logged without its
    /// content).
    pub fn record(&self, event: serde_json::Value) {
        let text = event.to_string();
        let len = text.len();
        let within = self
            .queued_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q + len <= self.max_queue_bytes).then_some(q + len)
            })
            .is_ok();
        let sent = within
            && match self.tx.try_send(text) {
                Ok(()) => true,
                Err(_) => {
                    self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                    false
                }
            };
        match sent {
            true => self.counts.events(AuditResult::Queued, 1),
            false => {
                self.counts.events(AuditResult::DroppedQueueFull, 1);
                let dropped = self.dropped_since_warning.fetch_add(1, Ordering::Relaxed) + 1;
                let Ok(mut last) = self.last_warning.lock() else {
                    return;
                };
                if last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                    *last = Some(Instant::now());
                    self.dropped_since_warning.store(0, Ordering::Relaxed);
                    tracing::warn!(
                        sink = %self.label, dropped,
                        "audit queue is full: AuditEvents are being dropped"
                    );
                }
            }
        }
    }

    pub fn label(&self) -> &str {
        &self.label
    }
}

struct Writer {
    label: String,
    queued_bytes: Arc<AtomicUsize>,
    destination: Destination,
    batch_size: usize,
    options: AuditOptions,
    counts: Arc<dyn AuditObserver>,
}

impl Writer {
    async fn run(self, mut rx: mpsc::Receiver<String>) {
        let mut batch = Vec::with_capacity(self.batch_size);
        while let Some(first) = rx.recv().await {
            batch.push(first);
            while batch.len() < self.batch_size {
                match rx.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
            // Counted until delivered (or given up): a batch being retried is still memory.
            let taken: usize = batch.iter().map(String::len).sum();
            self.deliver(&batch).await;
            self.queued_bytes.fetch_sub(taken, Ordering::AcqRel);
            batch.clear();
        }
    }

    async fn deliver(&self, batch: &[String]) {
        let n = batch.len() as u64;
        let mut backoff = Backoff::default();
        for attempt in 1..=DELIVERY_ATTEMPTS {
            match self.write(batch).await {
                Ok(()) => {
                    self.counts.events(AuditResult::Written, n);
                    return;
                }
                Err(e) => {
                    let delay = backoff.failed(&self.options.retry, Instant::now());
                    tracing::warn!(
                        sink = %self.label, attempt, events = n, error = %e,
                        "AuditEvents could not be delivered"
                    );
                    if attempt < DELIVERY_ATTEMPTS {
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }
        self.counts.events(AuditResult::DroppedUndeliverable, n);
        tracing::error!(sink = %self.label, events = n, "AuditEvents dropped after {DELIVERY_ATTEMPTS} attempts");
    }

    async fn write(&self, batch: &[String]) -> Result<(), String> {
        match &self.destination {
            Destination::Stdout | Destination::File(_) => {
                let mut text = String::new();
                for e in batch {
                    text.push_str(e);
                    text.push('\n');
                }
                match &self.destination {
                    Destination::File(path) => {
                        let mut f = tokio::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(path)
                            .await
                            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
                        f.write_all(text.as_bytes())
                            .await
                            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                        f.flush().await.map_err(|e| e.to_string())
                    }
                    _ => {
                        // One locked write per batch keeps lines whole; off the async workers.
                        tokio::task::spawn_blocking(move || {
                            use std::io::Write as _;
                            let mut out = std::io::stdout().lock();
                            out.write_all(text.as_bytes())?;
                            out.flush()
                        })
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| e.to_string())
                    }
                }
            }
            Destination::Fhir { url, client, auth } => {
                let body = crate::core::audit::bundle_text(batch);
                let mut req = client
                    .post(url)
                    .header("content-type", "application/fhir+json")
                    .header("accept", "application/fhir+json")
                    .body(body);
                match auth {
                    AuditAuth::None => {}
                    AuditAuth::Fixed(v) => req = req.header("authorization", v),
                    AuditAuth::OAuth(source) => {
                        let token = source.token().await.map_err(|e| e.to_string())?;
                        req = req.header("authorization", format!("Bearer {token}"));
                    }
                }
                let resp = req
                    .send()
                    .await
                    .map_err(|e| crate::runtime::http::error_chain(&e))?;
                if resp.status().is_success() {
                    Ok(())
                } else {
                    Err(format!(
                        "the audit server answered HTTP {}",
                        resp.status().as_u16()
                    ))
                }
            }
        }
    }
}

/// Shares sinks between config generations, by destination and queue shape.
pub struct AuditRegistry {
    sinks: crate::runtime::shared::Shared<AuditSink>,
    options: AuditOptions,
    observer: Arc<dyn Observer>,
}

impl AuditRegistry {
    pub fn new(options: AuditOptions, observer: Arc<dyn Observer>) -> Self {
        AuditRegistry {
            sinks: Default::default(),
            options,
            observer,
        }
    }

    /// The sink for a policy's audit setting. `connection` and `auth` are the connection the
    /// setting names (already built for the config), when it names one.
    pub fn sink(
        &self,
        a: &AuditConfig,
        connection: Option<(&ConnectionConfig, AuditAuth)>,
        dir: &Path,
    ) -> Result<Arc<AuditSink>, String> {
        let (label, key_extra) = match (&a.file, &connection) {
            (Some(f), _) => (format!("file:{f}"), String::new()),
            (None, Some((c, _))) => (
                format!("connection:{}/{}", c.namespace, c.name),
                // The connection's whole definition: changed credentials or trust make a new
                // writer, not a stale one.
                format!("{:?}{:?}", serde_json::to_string(c).ok(), c.tls),
            ),
            (None, None) => ("stdout".to_string(), String::new()),
        };
        let id = crate::runtime::shared::definition_id(&[
            label.as_bytes(),
            &a.queue_size.to_be_bytes(),
            &a.batch_size.to_be_bytes(),
            key_extra.as_bytes(),
        ]);
        let (sink, _) = self.sinks.get_or_make(id, || {
            let destination = match (&a.file, connection) {
                (Some(f), _) => Destination::File(PathBuf::from(f)),
                (None, Some((c, auth))) => Destination::Fhir {
                    url: c.url.trim_end_matches('/').to_string(),
                    client: crate::runtime::tls::http_client(&c.tls, dir)
                        .map_err(|e| e.to_string())?,
                    auth,
                },
                (None, None) if a.stdout => Destination::Stdout,
                (None, None) => return Err("the audit setting names no destination".to_string()),
            };
            let (tx, rx) = mpsc::channel(a.queue_size.max(1));
            let counts = self.observer.audit_sink(&label);
            let queued_bytes = Arc::new(AtomicUsize::new(0));
            let sink = Arc::new(AuditSink {
                label: label.clone(),
                tx,
                queued_bytes: queued_bytes.clone(),
                max_queue_bytes: self.options.max_queue_bytes,
                counts: counts.clone(),
                dropped_since_warning: AtomicU64::new(0),
                last_warning: Mutex::new(None),
            });
            let writer = Writer {
                label: label.clone(),
                queued_bytes,
                destination,
                batch_size: a.batch_size.max(1),
                options: self.options,
                counts,
            };
            tokio::spawn(writer.run(rx));
            Ok(sink)
        })?;
        Ok(sink)
    }
}
