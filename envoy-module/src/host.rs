//! The module's side of the process: one tokio runtime of its own, and one executor per
//! config directory (shared by every filter config naming that directory, so a listener
//! update in Envoy does not reload or refetch anything), each following its directory with the
//! service's validated hot reload.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use fhirguard_authz::observe::Ignore;
use fhirguard_authz::runtime::executor::{Executor, Options};
use fhirguard_authz::runtime::reload;
use serde::Deserialize;

/// The filter config (`filter_config` of the dynamic module filter, JSON in a
/// `google.protobuf.StringValue` or a `google.protobuf.Struct`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The compiled config directory the operator publishes (`fhirguard-operator render`
    /// writes the same files).
    pub config_dir: PathBuf,
    /// Bodies up to this size are read whole and judged; a larger one is decided without its
    /// body (like a partial ext_authz body).
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// How many requests may wait for slow work (key fetches, hashes, lookups) at once,
    /// across the process; beyond it a request is answered 503.
    #[serde(default = "default_max_parked")]
    pub max_parked: usize,
    /// Seconds between re-reads of the config directory when no file event arrives.
    #[serde(default = "default_reload_poll_seconds")]
    pub reload_poll_seconds: u64,
    /// The module's log filter (tracing syntax, e.g. `info` for one decision line per
    /// request on Envoy's stderr). The first filter config loaded sets it.
    #[serde(default)]
    pub log: Option<String>,
}

fn default_max_request_bytes() -> usize {
    1 << 20
}

fn default_max_parked() -> usize {
    10_000
}

fn default_reload_poll_seconds() -> u64 {
    30
}

impl Settings {
    pub fn parse(bytes: &[u8]) -> Result<Settings, String> {
        let s: Settings = serde_json::from_slice(bytes).map_err(|e| {
            format!("expected JSON like {{\"config_dir\": \"/etc/fhirguard\"}}: {e}")
        })?;
        if s.config_dir.as_os_str().is_empty() {
            return Err("config_dir is empty".into());
        }
        if s.max_parked == 0 || s.reload_poll_seconds == 0 {
            return Err("max_parked and reload_poll_seconds must be positive".into());
        }
        Ok(s)
    }
}

static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
static HOSTS: Mutex<Option<HashMap<PathBuf, Weak<Host>>>> = Mutex::new(None);
static LOG: OnceLock<()> = OnceLock::new();

/// The module's runtime: two workers for the async work (fetches, lookups, reload), and the
/// blocking pool where the executor runs signature checks and password hashes in its bounded
/// slots. Created on the main thread with the first filter config, never dropped (Envoy may
/// unload nothing while streams run).
fn runtime() -> Result<&'static tokio::runtime::Runtime, String> {
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .thread_name("fhirguard")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the module's runtime: {e}"))?;
    Ok(RUNTIME.get_or_init(|| rt))
}

fn init_log(filter: Option<&str>) {
    LOG.get_or_init(|| {
        let filter = filter
            .map(str::to_string)
            .or_else(|| std::env::var("FHIRGUARD_LOG").ok())
            .unwrap_or_else(|| "warn".into());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .try_init();
    });
}

pub struct Host {
    pub executor: Arc<Executor>,
    runtime: &'static tokio::runtime::Runtime,
    dir: PathBuf,
    watch: tokio::task::AbortHandle,
}

impl Drop for Host {
    fn drop(&mut self) {
        self.watch.abort();
        tracing::info!(dir = %self.dir.display(), "config directory no longer used");
    }
}

impl Host {
    /// The host for `settings.config_dir`, made (and its config loaded) on first use.
    pub fn for_dir(settings: &Settings) -> Result<Arc<Host>, String> {
        init_log(settings.log.as_deref());
        let rt = runtime()?;
        let mut hosts = HOSTS
            .lock()
            .map_err(|_| "host table poisoned".to_string())?;
        let hosts = hosts.get_or_insert_with(HashMap::new);
        hosts.retain(|_, h| h.strong_count() > 0);
        if let Some(h) = hosts.get(&settings.config_dir).and_then(Weak::upgrade) {
            return Ok(h);
        }
        let host = Arc::new(Host::start(
            rt,
            &settings.config_dir,
            settings.reload_poll_seconds,
        ));
        hosts.insert(settings.config_dir.clone(), Arc::downgrade(&host));
        Ok(host)
    }

    fn start(rt: &'static tokio::runtime::Runtime, dir: &Path, poll: u64) -> Host {
        let executor = Arc::new(Executor::new(Arc::new(Ignore), Options::default()));
        let _context = rt.enter();
        // A missing or invalid directory is not an Envoy config error: requests are answered
        // 503 until a valid config appears (the watcher keeps looking), as the service does.
        if let Err(e) = reload::reload_now(&executor, dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "no valid fhirguard config yet; answering 503");
        }
        let watch = reload::watch(
            executor.clone(),
            dir.to_path_buf(),
            Duration::from_secs(poll),
        );
        Host {
            executor,
            runtime: rt,
            dir: dir.to_path_buf(),
            watch: watch.abort_handle(),
        }
    }

    pub fn runtime(&self) -> &'static tokio::runtime::Runtime {
        self.runtime
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_need_a_directory_and_refuse_unknown_fields() {
        let s = Settings::parse(br#"{"config_dir": "/etc/fhirguard"}"#).unwrap();
        assert_eq!(s.max_request_bytes, 1 << 20);
        assert!(Settings::parse(br#"{}"#).is_err());
        assert!(Settings::parse(br#"{"config_dir": ""}"#).is_err());
        assert!(Settings::parse(br#"{"config_dir": "/x", "confg": 1}"#).is_err());
        assert!(Settings::parse(b"not json").is_err());
    }
}
