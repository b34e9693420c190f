//! The fault suite: two `fhirguard-authz` processes behind real Envoy, configured exactly as
//! the shipped `examples/envoy/sidecar.yaml` and `egress-envoy.yaml` (gRPC health checks,
//! outlier detection, retry policy), with an HTTPS JWKS endpoint, an OAuth token endpoint, a
//! compartment-lookup server and a recording upstream, all on 127.0.0.1. Load runs through
//! every phase while things fail:
//!
//! 1. the IdP is down from the start (its JWKS was never fetched),
//! 2. the IdP comes back,
//! 3. the token endpoint of an outbound connection is down for 10 s,
//! 4. the compartment-lookup server is down,
//! 5. a corrupt config is published, then a good one,
//! 6. one of the two replicas is SIGKILLed mid-load and restarted,
//! 7. the IdP goes down again after its keys were loaded.
//!
//! Asserted throughout: not one request that must be refused reaches the upstream (the
//! recording upstream counts them). Asserted per phase: the recovery behaviours (bounded
//! fetches against what is down, recovery within one backoff step, the last good config
//! kept, one refusal per bad write, only in-flight requests lost to a killed replica).
//! The measured numbers are printed at the end (`cargo test --test faults -- --nocapture`).

// A test crate of its own: clippy.toml's allow-*-in-tests covers #[test] functions only, and
// here a failed unwrap in a helper is a failed test as well.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::https::{Mode, TokenServer, start_https_echo};
use common::real_envoy::{Envoy, envoy_bin, free_port, run_envoy};
use common::*;
use fhirguard_authz::config::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const WORKERS: usize = 8;

// ---------------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------------

type Handler = Arc<dyn Fn(&str, &str, &BTreeMap<String, String>) -> (u16, String) + Send + Sync>;

/// A plain HTTP/1.1 server (keep-alive) answering through `handler`.
async fn http_server(handler: Handler) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 16 * 1024];
                loop {
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let mut lines = head.split("\r\n");
                    let request_line = lines.next().unwrap_or("").to_string();
                    let mut headers = BTreeMap::new();
                    for l in lines {
                        if let Some((k, v)) = l.split_once(':') {
                            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                        }
                    }
                    let len: usize = headers
                        .get("content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..head_end + len);
                    let mut parts = request_line.split(' ');
                    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                    let (status, body) = handler(method, path, &headers);
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/fhir+json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if tcp.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Where Envoy sends what fhirguard allowed. Counts requests by class; a request marked
/// `x-test-must-deny` arriving here is a wrongful allow.
#[derive(Default)]
struct Recorder {
    wrongful: Mutex<Vec<String>>,
    allowed: AtomicUsize,
}

async fn recording_upstream(rec: Arc<Recorder>) -> SocketAddr {
    http_server(Arc::new(move |method, path, headers| {
        if headers.contains_key("x-test-must-deny") {
            rec.wrongful.lock().unwrap().push(format!(
                "{method} {path} class={}",
                headers.get("x-test-class").map_or("?", |s| s.as_str())
            ));
        }
        rec.allowed.fetch_add(1, Ordering::Relaxed);
        (
            200,
            r#"{"resourceType":"Bundle","type":"searchset"}"#.into(),
        )
    }))
    .await
}

/// The FHIR server compartment lookups read from: `Observation/p123-…` is patient 123's,
/// `Observation/p456-…` patient 456's. Can be taken down (503).
async fn lookup_server(down: Arc<AtomicBool>, hits: Arc<AtomicUsize>) -> SocketAddr {
    http_server(Arc::new(move |_, path, _| {
        hits.fetch_add(1, Ordering::Relaxed);
        if down.load(Ordering::SeqCst) {
            return (503, String::new());
        }
        let Some(id) = path.strip_prefix("/fhir/r4/Observation/") else {
            return (404, String::new());
        };
        let patient = if id.starts_with("p456") { "456" } else { "123" };
        (
            200,
            serde_json::json!({"resourceType": "Observation", "id": id,
                "subject": {"reference": format!("Patient/{patient}")}})
            .to_string(),
        )
    }))
    .await
}

// ---------------------------------------------------------------------------------------------
// The two replicas
// ---------------------------------------------------------------------------------------------

struct Replica {
    name: &'static str,
    grpc: u16,
    http: u16,
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Replica {
    fn start(name: &'static str, dir: &Path, logs: &Path) -> Replica {
        let mut r = Replica {
            name,
            grpc: free_port(),
            http: free_port(),
            dir: dir.to_path_buf(),
            log: logs.join(format!("{name}.log")),
            child: None,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_fhirguard-authz"))
            .args(["serve", "--config-dir"])
            .arg(&self.dir)
            .args(["--grpc-addr", &format!("127.0.0.1:{}", self.grpc)])
            .args(["--http-addr", &format!("127.0.0.1:{}", self.http)])
            .args(["--poll-seconds", "2", "--drain-seconds", "0"])
            .env("RUST_LOG", "info,fhirguard::decision=warn")
            .env("FHIRGUARD_LOG_FORMAT", "text")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.http))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn metric(&self, prefix: &str) -> f64 {
        metric(&self.metrics().await, prefix).unwrap_or(0.0)
    }

    async fn ready(&self) -> bool {
        reqwest::get(format!("http://127.0.0.1:{}/readyz", self.http))
            .await
            .is_ok_and(|r| r.status() == 200)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------

fn config(generation: u64, jwks_uri: &str, lookup: SocketAddr, token_url: &str) -> CompiledConfig {
    let mut cfg = standard_config(generation, jwks_uri, "");
    let p = &mut cfg.policies[0];
    p.name = "ehr-smart".into();
    p.authorization.smart.compartment_lookup = Some(CompartmentLookup {
        connection: "clinical/ehr-internal".into(),
    });
    cfg.connections = vec![
        ConnectionConfig {
            namespace: "clinical".into(),
            name: "ehr-internal".into(),
            url: format!("http://127.0.0.1:{}/fhir/r4", lookup.port()),
            auth: ConnectionAuth::default(),
            tls: TlsConfig::default(),
        },
        ConnectionConfig {
            namespace: "clinical".into(),
            name: "partner".into(),
            url: "https://localhost/fhir/r4".into(),
            auth: ConnectionAuth {
                basic: None,
                oauth: Some(OAuthConfig {
                    token_url: token_url.into(),
                    client_id: "fhirguard".into(),
                    client_secret: "s3cr3t".into(),
                    client_auth_method: ClientAuthMethod::ClientSecretBasic,
                    scopes: vec!["system/*.rs".into()],
                    audience: None,
                    extra_params: Default::default(),
                }),
            },
            tls: TlsConfig {
                mode: TlsMode::CustomBundle,
                ca_file: Some("connection_clinical_partner_ca.pem".into()),
            },
        },
    ];
    cfg
}

fn publish(dir: &ConfigDir, cfg: &CompiledConfig, ca: &str) {
    let json = cfg.to_json();
    dir.publish(&[
        (CONFIG_FILE, json.as_str()),
        ("idp-ca.pem", ca),
        ("connection_clinical_partner_ca.pem", ca),
    ]);
}

// ---------------------------------------------------------------------------------------------
// Envoy, from the shipped examples
// ---------------------------------------------------------------------------------------------

fn example(name: &str) -> String {
    std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/envoy")
            .join(name),
    )
    .unwrap()
}

fn two_endpoints(a: u16, b: u16) -> String {
    format!(
        "endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {a}}}}}}}}}, {{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {b}}}}}}}}}]}}]"
    )
}

fn replace_checked(text: String, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "the example no longer contains {from:?}"
    );
    text.replace(from, to)
}

/// sidecar.yaml with its ports on 127.0.0.1 and both replicas behind the authz cluster.
fn ingress_yaml(port: u16, admin: u16, upstream: u16, replicas: [u16; 2]) -> String {
    let y = example("sidecar.yaml");
    let y = replace_checked(y, "port_value: 9901", &format!("port_value: {admin}"));
    let y = replace_checked(
        y,
        "address: 0.0.0.0, port_value: 8080",
        &format!("address: 127.0.0.1, port_value: {port}"),
    );
    let y = replace_checked(y, "port_value: 8081", &format!("port_value: {upstream}"));
    replace_checked(
        y,
        "endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: fhirguard-authz-headless.fhirguard-system.svc.cluster.local, port_value: 9001}}}}]}]",
        &two_endpoints(replicas[0], replicas[1]),
    )
}

/// egress-envoy.yaml likewise, with the partner on the local HTTPS echo.
fn egress_yaml(
    port: u16,
    admin: u16,
    partner: u16,
    replicas: [u16; 2],
    config_dir: &Path,
) -> String {
    let y = example("egress-envoy.yaml");
    let y = replace_checked(y, "port_value: 10001", &format!("port_value: {port}"));
    let y = replace_checked(y, "port_value: 9902", &format!("port_value: {admin}"));
    let y = replace_checked(
        y,
        "endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9001}}}}]}]",
        &two_endpoints(replicas[0], replicas[1]),
    );
    let y = replace_checked(y, "port_value: 443", &format!("port_value: {partner}"));
    let y = replace_checked(y, "partner.example.org", "localhost");
    replace_checked(
        y,
        "/etc/fhirguard/trust/",
        &format!("{}/", config_dir.display()),
    )
}

// ---------------------------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    BasicOk,
    BasicWrong,
    NoCredentials,
    TokenOk,
    TokenForged,
    TokenOtherPatient,
    LookupOwn,
    LookupOther,
    Egress,
}

impl Class {
    const ALL: [Class; 9] = [
        Class::BasicOk,
        Class::BasicWrong,
        Class::NoCredentials,
        Class::TokenOk,
        Class::TokenForged,
        Class::TokenOtherPatient,
        Class::LookupOwn,
        Class::LookupOther,
        Class::Egress,
    ];

    fn must_deny(self) -> bool {
        matches!(
            self,
            Class::BasicWrong
                | Class::NoCredentials
                | Class::TokenForged
                | Class::TokenOtherPatient
                | Class::LookupOther
        )
    }

    fn uses_token(self) -> bool {
        matches!(
            self,
            Class::TokenOk
                | Class::TokenForged
                | Class::TokenOtherPatient
                | Class::LookupOwn
                | Class::LookupOther
        )
    }
}

#[derive(Default)]
struct Stats {
    /// (phase, class, status) → count; status 0 is a client-side error.
    counts: Mutex<BTreeMap<(String, Class, u16), usize>>,
    /// When each 503 (or client error) happened.
    failures: Mutex<Vec<(Instant, Class)>>,
    /// Egress 200s that did not carry the connection's token upstream.
    egress_without_token: AtomicUsize,
    /// The first answers of each phase and class with an unusual status, for diagnosis.
    samples: Mutex<BTreeMap<(String, Class), Vec<String>>>,
}

struct Load {
    phase: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
    stats: Arc<Stats>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

struct Target {
    ingress: u16,
    egress: u16,
    good_token: String,
    forged_token: String,
}

async fn send(client: &reqwest::Client, t: &Target, class: Class, n: usize) -> (u16, String) {
    let (status, headers, body) = send_full(client, t, class, n).await;
    let _ = headers;
    (status, body)
}

async fn send_full(
    client: &reqwest::Client,
    t: &Target,
    class: Class,
    n: usize,
) -> (u16, String, String) {
    let ingress = |path: String| {
        client
            .get(format!("http://127.0.0.1:{}{path}", t.ingress))
            .header("x-test-class", format!("{class:?}"))
    };
    let mut req = match class {
        Class::BasicOk => ingress("/fhir/r4/Patient/123".into())
            .header("authorization", basic("alice", "alice-pw")),
        Class::BasicWrong => ingress("/fhir/r4/Patient/123".into())
            .header("authorization", basic("alice", &format!("wrong-{n}"))),
        Class::NoCredentials => ingress("/fhir/r4/Patient/123".into()),
        Class::TokenOk => {
            ingress("/fhir/r4/Observation?patient=123".into()).bearer_auth(&t.good_token)
        }
        Class::TokenForged => {
            ingress("/fhir/r4/Observation?patient=123".into()).bearer_auth(&t.forged_token)
        }
        Class::TokenOtherPatient => {
            ingress("/fhir/r4/Observation?patient=456".into()).bearer_auth(&t.good_token)
        }
        Class::LookupOwn => {
            ingress(format!("/fhir/r4/Observation/p123-{n}")).bearer_auth(&t.good_token)
        }
        Class::LookupOther => {
            ingress(format!("/fhir/r4/Observation/p456-{n}")).bearer_auth(&t.good_token)
        }
        Class::Egress => client
            .get(format!("http://127.0.0.1:{}/partner/Patient/1", t.egress))
            .header("authorization", "Bearer the-workloads-own"),
    };
    if class.must_deny() {
        req = req.header("x-test-must-deny", "1");
    }
    match req.timeout(Duration::from_secs(10)).send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let headers = format!("{:?}", r.headers());
            (status, headers, r.text().await.unwrap_or_default())
        }
        Err(e) => (0, String::new(), e.to_string()),
    }
}

impl Load {
    fn start(target: Arc<Target>) -> Load {
        let phase = Arc::new(Mutex::new("start".to_string()));
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        let counter = Arc::new(AtomicUsize::new(0));
        let tasks = (0..WORKERS)
            .map(|w| {
                let (phase, stop, stats, counter, t) = (
                    phase.clone(),
                    stop.clone(),
                    stats.clone(),
                    counter.clone(),
                    target.clone(),
                );
                tokio::spawn(async move {
                    let client = reqwest::Client::builder().build().unwrap();
                    let mut i = w;
                    while !stop.load(Ordering::SeqCst) {
                        let class = Class::ALL[i % Class::ALL.len()];
                        i += 1;
                        let n = counter.fetch_add(1, Ordering::Relaxed);
                        // Labelled when sent: phases begin after their fault is in place.
                        let p = phase.lock().unwrap().clone();
                        let sent = Instant::now();
                        let (status, headers, body) = send_full(&client, &t, class, n).await;
                        if status == 503 || status == 0 {
                            let mut samples = stats.samples.lock().unwrap();
                            let v = samples.entry((p.clone(), class)).or_default();
                            if v.len() < 5 {
                                v.push(format!(
                                    "{status} after {:?}: {headers} {body}",
                                    sent.elapsed()
                                ));
                            }
                        }
                        if class == Class::Egress && status == 200 {
                            let v: serde_json::Value =
                                serde_json::from_str(&body).unwrap_or_default();
                            let auth = v["authorization"].as_str().unwrap_or("");
                            if !auth.starts_with("Bearer token-") {
                                stats.egress_without_token.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        if status == 503 || status == 0 {
                            stats.failures.lock().unwrap().push((Instant::now(), class));
                        }
                        *stats
                            .counts
                            .lock()
                            .unwrap()
                            .entry((p, class, status))
                            .or_default() += 1;
                    }
                })
            })
            .collect();
        Load {
            phase,
            stop,
            stats,
            tasks,
        }
    }

    /// Requests sent from now on count for `name`.
    fn phase(&self, name: &str) {
        *self.phase.lock().unwrap() = name.to_string();
    }

    /// Ends a phase: what is still in flight finishes under a label nobody asserts on, so a
    /// fault can be undone without a request from the fault's phase seeing the repair.
    async fn between_phases(&self) {
        self.phase("-");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    /// Statuses seen for `class` in `phase`.
    fn statuses(&self, phase: &str, class: Class) -> BTreeMap<u16, usize> {
        self.stats
            .counts
            .lock()
            .unwrap()
            .iter()
            .filter(|((p, c, _), _)| p == phase && *c == class)
            .map(|((_, _, s), n)| (*s, *n))
            .collect()
    }

    fn total(&self, phase: &str) -> usize {
        self.stats
            .counts
            .lock()
            .unwrap()
            .iter()
            .filter(|((p, _, _), _)| p == phase)
            .map(|(_, n)| n)
            .sum()
    }

    async fn stop(self) -> Arc<Stats> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            let _ = t.await;
        }
        self.stats
    }
}

/// Every status in `got` is one of `allowed`.
fn only(got: &BTreeMap<u16, usize>, allowed: &[u16], what: &str) {
    assert!(
        got.keys().all(|s| allowed.contains(s)),
        "{what}: statuses {got:?}, expected only {allowed:?}"
    );
}

impl Load {
    /// `only`, with the sampled unusual answers in the failure message.
    fn only(&self, phase: &str, class: Class, allowed: &[u16]) {
        let got = self.statuses(phase, class);
        if got.keys().all(|s| allowed.contains(s)) {
            return;
        }
        let samples = self
            .stats
            .samples
            .lock()
            .unwrap()
            .get(&(phase.to_string(), class))
            .map(|v| v.join("\n"))
            .unwrap_or_default();
        panic!(
            "{phase} {class:?}: statuses {got:?}, expected only {allowed:?}\nsamples:\n{samples}"
        );
    }
}

/// Envoy's counters for the authz cluster that say what happened to Checks.
async fn authz_cluster_stats(admin: u16) -> String {
    let text = reqwest::get(format!(
        "http://127.0.0.1:{admin}/stats?filter=^cluster\\.fhirguard_authz\\."
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    let wanted = [
        "upstream_rq_retry",
        "upstream_rq_retry_success",
        "upstream_rq_retry_limit_exceeded",
        "upstream_cx_destroy_remote_with_active_rq",
        "upstream_rq_pending_failure_eject",
        "outlier_detection.ejections_enforced_total",
        "health_check.failure",
    ];
    text.lines()
        .filter_map(|l| l.strip_prefix("cluster.fhirguard_authz."))
        .filter(|l| wanted.iter().any(|w| l.split(':').next() == Some(*w)))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn until(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if f().await {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {timeout:?} waiting for: {what}");
}

// ---------------------------------------------------------------------------------------------
// The suite
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhirguard_under_faults_never_allows_wrongly_and_recovers() {
    let Some(envoy) = envoy_bin() else { return };
    init();
    let mut report = Vec::<String>::new();
    let pki = TestPki::new();
    let key = SigningKey::new("k1");
    let jwks = JwksServer::start(&pki, jwks_doc(&[&key])).await;
    jwks.down.store(true, Ordering::SeqCst);
    let tokens = TokenServer::start(&pki, Mode::Ok { expires_in: 6 }, Duration::ZERO).await;
    let partner = start_https_echo(&pki).await;
    let (lookup_down, lookup_hits) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let lookup = lookup_server(lookup_down.clone(), lookup_hits.clone()).await;
    let recorder = Arc::new(Recorder::default());
    let upstream = recording_upstream(recorder.clone()).await;

    let dir = ConfigDir::new();
    let cfg1 = config(1, &jwks.uri(), lookup, &tokens.url());
    publish(&dir, &cfg1, &pki.ca_pem);
    let logs = tempfile::tempdir().unwrap();
    let mut r1 = Replica::start("replica-1", dir.path(), logs.path());
    let r2 = Replica::start("replica-2", dir.path(), logs.path());
    for r in [&r1, &r2] {
        until(
            &format!("{} ready", r.name),
            Duration::from_secs(30),
            async || r.ready().await,
        )
        .await;
    }
    let (ingress_port, ingress_admin) = (free_port(), free_port());
    let _ingress: Envoy = run_envoy(
        &envoy,
        ingress_yaml(
            ingress_port,
            ingress_admin,
            upstream.port(),
            [r1.grpc, r2.grpc],
        ),
        ingress_port,
        ingress_admin,
    )
    .await;
    let (egress_port, egress_admin) = (free_port(), free_port());
    let _egress: Envoy = run_envoy(
        &envoy,
        egress_yaml(
            egress_port,
            egress_admin,
            partner.port(),
            [r1.grpc, r2.grpc],
            dir.path(),
        ),
        egress_port,
        egress_admin,
    )
    .await;

    let good_token = {
        let mut c = claims("app", "launch/patient patient/*.rs");
        c["patient"] = "123".into();
        key.sign(&c)
    };
    let forged_token = SigningKey::new("k1").sign(&claims("app", "user/*.cruds"));
    let target = Arc::new(Target {
        ingress: ingress_port,
        egress: egress_port,
        good_token: good_token.clone(),
        forged_token,
    });
    let client = reqwest::Client::new();
    let load = Load::start(target.clone());

    // --- 1. The IdP has been down since start --------------------------------------------
    let p = "1-idp-down-since-start";
    load.phase(p);
    let hits_before = jwks.hits.load(Ordering::SeqCst);
    let window = Duration::from_secs(8);
    tokio::time::sleep(window).await;
    let fetches = jwks.hits.load(Ordering::SeqCst) - hits_before;
    let token_requests: usize = Class::ALL
        .iter()
        .filter(|c| c.uses_token())
        .map(|c| load.statuses(p, *c).values().sum::<usize>())
        .sum();
    for c in [
        Class::TokenOk,
        Class::TokenForged,
        Class::TokenOtherPatient,
        Class::LookupOwn,
        Class::LookupOther,
    ] {
        load.only(p, c, &[503]);
    }
    load.only(p, Class::BasicOk, &[200]);
    load.only(p, Class::BasicWrong, &[401]);
    assert!(
        token_requests > 50,
        "load too small to show anything: {token_requests}"
    );
    // One fetch per backoff step per replica (1, 2, 4 s ... after the first), not per request.
    assert!(
        fetches <= 12,
        "{fetches} JWKS fetches in {window:?} for {token_requests} token requests"
    );
    report.push(format!(
        "IdP down since start: {fetches} JWKS fetches in {}s ({:.2}/s) for {token_requests} token requests, all answered 503",
        window.as_secs(),
        fetches as f64 / window.as_secs_f64()
    ));

    // --- 2. The IdP comes back: used within one backoff step -------------------------------
    load.between_phases().await;
    jwks.down.store(false, Ordering::SeqCst);
    let recovered = until(
        "tokens accepted again",
        Duration::from_secs(40),
        async || {
            // Both replicas: requests in a row alternate between them.
            let mut ok = 0;
            for _ in 0..4 {
                let (s, _) = send(&client, &target, Class::TokenOk, 0).await;
                ok += usize::from(s == 200);
            }
            ok == 4
        },
    )
    .await;
    let jwks_failures =
        r#"fhirguard_jwks_fetches_total{source="clinical/ehr-smart/idp",result="failure"}"#;
    let failures = r1
        .metric(jwks_failures)
        .await
        .max(r2.metric(jwks_failures).await);
    // The step after the last failure: 1 s doubling, at most 10 s (jittered into its upper
    // half, so the full step bounds it).
    let step = Duration::from_secs((1u64 << (failures as u32).saturating_sub(1).min(4)).min(10));
    assert!(
        recovered <= step + Duration::from_secs(2),
        "tokens accepted {recovered:?} after the IdP returned; the backoff step was {step:?}"
    );
    report.push(format!(
        "IdP back after {failures} failed fetches: tokens accepted on both replicas after {:.1}s (backoff step {}s)",
        recovered.as_secs_f64(),
        step.as_secs()
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // --- 3. The token endpoint is down (10 s; FHIRGUARD_FAULTS_TOKEN_OUTAGE_S for longer) ---
    let p = "3-token-endpoint-down";
    let outage = Duration::from_secs(
        std::env::var("FHIRGUARD_FAULTS_TOKEN_OUTAGE_S")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10),
    );
    // The most failures an outage this long can see per replica: each step waits at least
    // half its full delay (1 s doubling, at most 10 s).
    let (mut most_failures, mut t) = (1u32, 0.0f64);
    loop {
        let next = (0.5 * f64::from(1u32 << (most_failures - 1).min(4))).min(5.0);
        if t + next > outage.as_secs_f64() {
            break;
        }
        t += next;
        most_failures += 1;
    }
    let longest_step = Duration::from_secs(u64::from(1u32 << (most_failures - 1).min(4)).min(10));
    until("egress works", Duration::from_secs(10), async || {
        send(&client, &target, Class::Egress, 0).await.0 == 200
    })
    .await;
    *tokens.mode.lock().unwrap() = Mode::Fail {
        status: 503,
        body: r#"{"error":"temporarily_unavailable"}"#,
    };
    load.phase(p);
    let hits_before = tokens.hits();
    tokio::time::sleep(outage).await;
    let token_fetches = tokens.hits() - hits_before;
    let during = load.statuses(p, Class::Egress);
    only(&during, &[200, 503], p);
    assert!(
        during.contains_key(&503),
        "the token expired during the outage: {during:?}"
    );
    // Per replica: one attempt per step, and one more for the refresh that found it down.
    assert!(
        token_fetches <= 2 * (most_failures as usize + 1),
        "{token_fetches} token requests during a {outage:?} outage"
    );
    load.between_phases().await;
    *tokens.mode.lock().unwrap() = Mode::Ok { expires_in: 6 };
    let back = until(
        "egress recovers on both replicas",
        longest_step + Duration::from_secs(10),
        async || {
            let mut ok = 0;
            for _ in 0..4 {
                ok += usize::from(send(&client, &target, Class::Egress, 0).await.0 == 200);
            }
            ok == 4
        },
    )
    .await;
    // Within one step of the longest the outage can reach (10 s); when a request and the
    // refresher both counted every failure, a 25 s outage reached the old 60 s cap.
    assert!(
        back <= longest_step + Duration::from_secs(1),
        "recovery took {back:?}; the longest backoff step was {longest_step:?}"
    );
    report.push(format!(
        "token endpoint down {}s: {token_fetches} token requests from 2 replicas during the outage; outbound requests recovered {:.1}s after it returned (longest possible step {}s)",
        outage.as_secs(),
        back.as_secs_f64(),
        longest_step.as_secs()
    ));

    // --- 4. The compartment-lookup server is down ------------------------------------------
    let p = "4-lookups-down";
    lookup_down.store(true, Ordering::SeqCst);
    let hits_before = lookup_hits.load(Ordering::SeqCst);
    load.phase(p);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let lookups_tried = lookup_hits.load(Ordering::SeqCst) - hits_before;
    load.between_phases().await;
    let lookup_requests: usize = [Class::LookupOwn, Class::LookupOther]
        .iter()
        .map(|c| load.statuses(p, *c).values().sum::<usize>())
        .sum();
    // Each refused request made its one lookup: nobody retried against the failing server.
    assert!(
        lookups_tried <= lookup_requests + WORKERS,
        "{lookups_tried} lookups for {lookup_requests} requests"
    );
    report.push(format!(
        "lookup server down 4s: {lookup_requests} requests needing a lookup answered 503, {lookups_tried} lookups made"
    ));
    load.only(p, Class::LookupOwn, &[503]);
    load.only(p, Class::LookupOther, &[503]);
    load.only(p, Class::TokenOk, &[200]);
    lookup_down.store(false, Ordering::SeqCst);
    let p = "4-lookups-back";
    load.phase(p);
    tokio::time::sleep(Duration::from_secs(2)).await;
    load.only(p, Class::LookupOther, &[403, 503]);
    assert!(load.statuses(p, Class::LookupOwn).contains_key(&200));

    // --- 5. A corrupt config is published; then a good one ---------------------------------
    let p = "5-corrupt-config";
    load.phase(p);
    let invalid = r#"fhirguard_config_reloads_total{result="invalid"}"#;
    let success = r#"fhirguard_config_reloads_total{result="success"}"#;
    let before = [r1.metric(invalid).await, r2.metric(invalid).await];
    dir.publish(&[(
        CONFIG_FILE,
        "{\"version\": 1, \"generation\": 2, \"policies\": [",
    )]);
    // Three polls (2 s) and the file events of the write itself.
    tokio::time::sleep(Duration::from_secs(7)).await;
    for (r, b) in [(&r1, before[0]), (&r2, before[1])] {
        assert_eq!(
            r.metric(invalid).await - b,
            1.0,
            "{}: one refusal for one bad write",
            r.name
        );
        assert_eq!(r.metric("fhirguard_config_refused ").await, 1.0);
        assert_eq!(
            r.metric("fhirguard_config_generation ").await,
            1.0,
            "generation 1 kept"
        );
        let refused_lines = r.log_text().matches("config refused").count();
        assert_eq!(refused_lines, 1, "{}: one log line", r.name);
    }
    load.only(p, Class::BasicOk, &[200]);
    load.only(p, Class::TokenOk, &[200]);
    report.push("corrupt config written once: config_reloads_total{result=\"invalid\"} +1 and one log line per replica over 7s (3 polls); generation 1 kept serving".into());
    let p = "5-good-config";
    load.phase(p);
    let before = [r1.metric(success).await, r2.metric(success).await];
    publish(
        &dir,
        &config(2, &jwks.uri(), lookup, &tokens.url()),
        &pki.ca_pem,
    );
    for r in [&r1, &r2] {
        until(
            &format!("{} loads generation 2", r.name),
            Duration::from_secs(10),
            async || r.metric("fhirguard_config_generation ").await == 2.0,
        )
        .await;
        assert_eq!(r.metric("fhirguard_config_refused ").await, 0.0);
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    for (r, b) in [(&r1, before[0]), (&r2, before[1])] {
        assert_eq!(
            r.metric(success).await - b,
            1.0,
            "{}: one load, no re-reads",
            r.name
        );
    }

    // --- 6. SIGKILL one of the two replicas mid-load ---------------------------------------
    let p = "6-sigkill";
    load.phase(p);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed_at = Instant::now();
    let r1_decisions = r1.metric("fhirguard_check_duration_seconds_count").await;
    r1.kill();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let lost: Vec<Class> = load
        .stats
        .failures
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| *t >= killed_at)
        .map(|(_, c)| *c)
        .collect();
    let in_phase = load.total(p);
    // Only requests in flight on the killed connections may fail, and retries save those.
    assert!(
        lost.len() <= WORKERS,
        "{} requests failed after the kill: {lost:?}",
        lost.len()
    );
    report.push(format!(
        "SIGKILL of 1 of 2 replicas ({r1_decisions} Checks served by it): {} of {in_phase} requests in the next 6s got 503 ({WORKERS} in flight at most): {lost:?}\n  ingress Envoy: {}\n  egress Envoy: {}",
        lost.len(),
        authz_cluster_stats(ingress_admin).await,
        authz_cluster_stats(egress_admin).await,
    ));
    let p = "6-restarted";
    load.phase(p);
    r1.spawn();
    until("replica-1 back", Duration::from_secs(20), async || {
        r1.ready().await
    })
    .await;
    until(
        "replica-1 gets Checks again",
        Duration::from_secs(30),
        async || r1.metric("fhirguard_check_duration_seconds_count").await > 10.0,
    )
    .await;

    // --- 7. The IdP goes down after its keys were loaded -----------------------------------
    let p = "7-idp-down-keys-kept";
    load.between_phases().await;
    jwks.down.store(true, Ordering::SeqCst);
    load.phase(p);
    tokio::time::sleep(Duration::from_secs(3)).await;
    load.only(p, Class::TokenOk, &[200]);
    load.only(p, Class::TokenForged, &[401]);
    load.only(p, Class::TokenOtherPatient, &[403]);

    let stats = load.stop().await;
    let total: usize = stats.counts.lock().unwrap().values().sum();
    let wrongful = recorder.wrongful.lock().unwrap().clone();
    assert!(wrongful.is_empty(), "wrongful allows: {wrongful:?}");
    assert_eq!(
        stats.egress_without_token.load(Ordering::Relaxed),
        0,
        "egress without the connection's token"
    );
    report.push(format!(
        "{total} requests in all, {} allowed upstream, 0 wrongful allows",
        recorder.allowed.load(Ordering::Relaxed)
    ));
    eprintln!("\n== fault suite\n{}\n", report.join("\n"));
}
