//! Soak load for `bench/soak.sh`: starts `fhirguard-authz` on a generated config and sends it
//! Checks over gRPC for a number of minutes, every token distinct and large (by default
//! ~14 KiB with 600 scopes, each verified and cached), every tenth request a wrong Basic
//! password (a bcrypt check, never cached). Every 10 s it prints the service's RSS next to
//! what its caches say they hold, then the plateau against a memory limit.
//!
//!     soak --authz-bin PATH [--minutes 8] [--scopes 600] [--concurrency 16]
//!          [--cache-memory-mib N] [--limit-mib 256]
//!
//! Not a test: it measures. Everything runs on 127.0.0.1.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};

type Error = Box<dyn std::error::Error + Send + Sync>;

struct Args {
    authz_bin: PathBuf,
    minutes: f64,
    scopes: usize,
    concurrency: usize,
    cache_mib: Option<usize>,
    limit_mib: f64,
}

fn args() -> Result<Args, Error> {
    let mut a = Args {
        authz_bin: PathBuf::new(),
        minutes: 8.0,
        scopes: 600,
        concurrency: 16,
        cache_mib: None,
        limit_mib: 256.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--authz-bin" => a.authz_bin = PathBuf::from(value()?),
            "--minutes" => a.minutes = value()?.parse()?,
            "--scopes" => a.scopes = value()?.parse()?,
            "--concurrency" => a.concurrency = value()?.parse()?,
            "--cache-memory-mib" => a.cache_mib = Some(value()?.parse()?),
            "--limit-mib" => a.limit_mib = value()?.parse()?,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    if a.authz_bin.as_os_str().is_empty() {
        return Err("usage: soak --authz-bin PATH [--minutes 8] [--scopes 600] [--concurrency 16] [--cache-memory-mib N] [--limit-mib 256]".into());
    }
    Ok(a)
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn free_port() -> Result<u16, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A distinct token with `scopes` scopes (random resource types, plus one that grants the
/// request), so every one is verified and cached on its own.
fn token(key: &jsonwebtoken::EncodingKey, n: u64, scopes: usize) -> Result<String, Error> {
    let mut scope = String::from("user/Patient.rs");
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for _ in 1..scopes {
        scope.push_str(" user/");
        scope.push(char::from(b'A' + (x % 26) as u8));
        for _ in 0..7 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            scope.push(char::from(b'a' + (x % 26) as u8));
        }
        scope.push_str(".rs");
    }
    let claims = serde_json::json!({
        "iss": "https://idp.soak", "aud": "fhir", "sub": format!("app-{n}"), "jti": n,
        "exp": now() + 3600, "iat": now(), "scope": scope,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("soak".into());
    Ok(jsonwebtoken::encode(&header, &claims, key)?)
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let a = args()?;
    let work = tempfile::tempdir()?;
    let config = work.path().join("config");
    std::fs::create_dir(&config)?;

    // An ES256 key published inline, and one Basic user (bcrypt cost 5, htpasswd's default).
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let raw = kp.public_key_raw();
    let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "use": "sig",
        "alg": "ES256", "kid": "soak", "x": b64(&raw[1..33]), "y": b64(&raw[33..65])}]});
    let key = Arc::new(jsonwebtoken::EncodingKey::from_ec_pem(
        kp.serialize_pem().as_bytes(),
    )?);
    let htpasswd = format!("alice:{}\n", bcrypt::hash("alice-pw", 5)?);
    let cfg = serde_json::json!({"version": 1, "generation": 1, "connections": [], "policies": [{
        "namespace": "soak", "name": "ehr", "basePath": "/fhir",
        "authentication": {
            "basic": {"htpasswd": htpasswd},
            "jwt": {"providers": [{"name": "idp", "issuer": "https://idp.soak", "audiences": ["fhir"],
                "algorithms": ["ES256"], "clockSkewSeconds": 60,
                "jwks": {"document": jwks.to_string()}}]}
        }
    }]});
    std::fs::write(config.join("config.json"), cfg.to_string())?;

    let (grpc_port, http_port) = (free_port()?, free_port()?);
    let grpc: SocketAddr = format!("127.0.0.1:{grpc_port}").parse()?;
    let mut cmd = Command::new(&a.authz_bin);
    cmd.args(["serve", "--config-dir"])
        .arg(&config)
        .args(["--grpc-addr", &grpc.to_string()])
        .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
        .args(["--drain-seconds", "0"])
        .env("RUST_LOG", "warn,fhirguard::decision=off")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.path().join("authz.log"))?);
    if let Some(mib) = a.cache_mib {
        cmd.arg(format!("--cache-memory-mib={mib}"));
    }
    let mut child = cmd.spawn()?;
    let pid = child.id();
    let metrics_url = format!("http://127.0.0.1:{http_port}/metrics");
    let started = Instant::now();
    loop {
        if reqwest::get(format!("http://127.0.0.1:{http_port}/readyz"))
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            return Err("fhirguard-authz did not become ready".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sample = token(&key, 0, a.scopes)?;
    println!(
        "fhirguard-authz pid {pid}; tokens of {} bytes with {} scopes, all distinct; every 10th request a wrong password; {} in flight; idle RSS {:.1} MiB",
        sample.len(),
        a.scopes,
        a.concurrency,
        rss_mib(pid)
    );

    let counter = Arc::new(AtomicU64::new(1));
    let outcomes: Arc<Vec<AtomicUsize>> = Arc::new((0..4).map(|_| AtomicUsize::new(0)).collect());
    let deadline = Instant::now() + Duration::from_secs_f64(a.minutes * 60.0);
    let mut workers = Vec::new();
    for _ in 0..a.concurrency {
        let (key, counter, outcomes) = (key.clone(), counter.clone(), outcomes.clone());
        let scopes = a.scopes;
        workers.push(tokio::spawn(async move {
            let Ok(mut client) = AuthorizationClient::connect(format!("http://{grpc}")).await
            else {
                return;
            };
            while Instant::now() < deadline {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let authorization = if n % 10 == 0 {
                    format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD
                            .encode(format!("alice:wrong-{n}"))
                    )
                } else {
                    match token(&key, n, scopes) {
                        Ok(t) => format!("Bearer {t}"),
                        Err(_) => continue,
                    }
                };
                let req = CheckRequest {
                    attributes: Some(AttributeContext {
                        request: Some(AttrRequest {
                            http: Some(HttpRequest {
                                method: "GET".into(),
                                path: "/fhir/Patient/1".into(),
                                host: "soak".into(),
                                headers: HashMap::from([("authorization".into(), authorization)]),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                };
                // 0 allowed, 1 refused, 2 cannot decide, 3 transport error.
                let i = match client.check(req).await {
                    Ok(r) => match r.into_inner().http_response {
                        Some(HttpResponse::OkResponse(_)) => 0,
                        _ => 1,
                    },
                    Err(s) if s.code() == tonic::Code::Unavailable => 2,
                    Err(_) => 3,
                };
                outcomes[i].fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    println!(
        "   t      RSS  cache bytes (token)  entries  evicted  checks/s  allowed/refused/unavailable/errors"
    );
    let mut samples = Vec::new();
    let mut last = (Instant::now(), 0usize);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(10).min(deadline - Instant::now())).await;
        let m = reqwest::get(&metrics_url).await?.text().await?;
        let rss = rss_mib(pid);
        let done: usize = outcomes.iter().map(|o| o.load(Ordering::Relaxed)).sum();
        let rate = (done - last.1) as f64 / last.0.elapsed().as_secs_f64();
        last = (Instant::now(), done);
        let t = started.elapsed().as_secs();
        samples.push((t, rss));
        println!(
            "{t:>4}s {rss:>6.1} MiB  {:>8.1} MiB / {:>5.1}  {:>7}  {:>7}  {rate:>8.0}  {}",
            metric(&m, "fhirguard_cache_bytes{cache=\"token\"}") / 1048576.0,
            metric(&m, "fhirguard_cache_budget_bytes{cache=\"token\"}") / 1048576.0,
            metric(&m, "fhirguard_cache_entries{cache=\"token\"}"),
            metric(&m, "fhirguard_cache_evictions_total{cache=\"token\"}"),
            outcomes
                .iter()
                .map(|o| o.load(Ordering::Relaxed).to_string())
                .collect::<Vec<_>>()
                .join("/")
        );
    }
    for w in workers {
        let _ = w.await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let peak = samples.iter().map(|s| s.1).fold(0.0, f64::max);
    let second_half: Vec<f64> = samples[samples.len() / 2..].iter().map(|s| s.1).collect();
    let plateau = second_half.iter().copied().fold(0.0, f64::max);
    println!(
        "peak RSS {peak:.1} MiB; plateau (max over the second half) {plateau:.1} MiB = {:.0} % of a {:.0} MiB limit",
        100.0 * plateau / a.limit_mib,
        a.limit_mib
    );
    Ok(())
}
