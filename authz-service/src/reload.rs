//! Loading the config directory and following its changes.
//!
//! Kubernetes updates a mounted Secret by writing a new timestamped directory and swapping the
//! `..data` symlink, so individual file events are unreliable; any event in the directory
//! triggers a debounced re-read, and a slow poll catches what the watcher misses (some
//! filesystems deliver no events at all). A new config is validated and fully built before it
//! is swapped in; an invalid one is refused and the last good one stays in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use crate::config::ConfigError;
use crate::metrics::ResultLabels;
use crate::service::Service;
use crate::state;

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    Loaded { generation: u64 },
    Unchanged,
}

/// Reads the directory and, when it changed and is valid, installs it.
pub fn reload_now(service: &Service, dir: &Path) -> Result<ReloadOutcome, ConfigError> {
    let result = state::read_dir(dir).and_then(|(config, digest)| {
        if service.runtime().is_some_and(|rt| rt.digest == digest) {
            return Ok(None);
        }
        state::Runtime::build(
            config,
            digest,
            dir,
            &service.registry,
            &service.oauth,
            &service.metrics,
        )
        .map(Some)
    });
    match result {
        Ok(None) => Ok(ReloadOutcome::Unchanged),
        Ok(Some(rt)) => {
            let generation = rt.config.generation;
            let policies = rt.config.policies.len();
            service.install(rt);
            service
                .metrics
                .config_reloads
                .get_or_create(&ResultLabels { result: "success" })
                .inc();
            tracing::info!(generation, policies, dir = %dir.display(), "config loaded");
            Ok(ReloadOutcome::Loaded { generation })
        }
        Err(e) => {
            service
                .metrics
                .config_reloads
                .get_or_create(&ResultLabels { result: "invalid" })
                .inc();
            let keeping = service.runtime().map(|rt| rt.config.generation);
            tracing::error!(error = %e, keeping_generation = ?keeping, "config refused; the last good config stays in force");
            Err(e)
        }
    }
}

/// Watches `dir` until the returned task is dropped or the process ends.
pub fn watch(service: Arc<Service>, dir: PathBuf, poll: Duration) -> tokio::task::JoinHandle<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let watcher = {
        let tx = tx.clone();
        notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
            let _ = tx.try_send(());
        })
    };
    let watcher = match watcher {
        Ok(mut w) => match w.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the config directory; polling only");
                None
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "no file watcher; polling only");
            None
        }
    };
    tokio::spawn(async move {
        let _keep = watcher;
        loop {
            let _ = tokio::time::timeout(poll, rx.recv()).await;
            // Debounce: a Secret update is several events in quick succession.
            tokio::time::sleep(Duration::from_millis(200)).await;
            while rx.try_recv().is_ok() {}
            let svc = service.clone();
            let d = dir.clone();
            let _ = tokio::task::spawn_blocking(move || reload_now(&svc, &d)).await;
        }
    })
}
