//! Loading the config directory and following its changes.
//!
//! Kubernetes updates a mounted Secret by writing a new timestamped directory and swapping the
//! `..data` symlink, so the watcher does not look at individual files: any event that can
//! change what the directory holds (a create, a write, a rename, a removal) triggers a
//! debounced re-read, and a slow poll catches what the watcher misses (some filesystems deliver
//! no events at all). Events that change nothing (opening and reading the files, which the
//! re-read itself does) are ignored, or every re-read would trigger the next one.
//!
//! A re-read is cheap and quiet unless the content changed: what was read is digested, and
//! content equal to the config in force, or to a config already refused, is left at that. A
//! new config is validated and fully built before it is swapped in; an invalid one is refused,
//! logged and counted once per distinct content, and the last good one stays in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher};

use crate::config::ConfigError;
use crate::runtime::executor::Executor;
use crate::runtime::state;

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    Loaded {
        generation: u64,
    },
    /// The directory holds the config in force.
    Unchanged,
    /// The directory still holds content that was refused before (and reported then).
    StillRefused,
}

/// Reads the directory and, when its content changed and is valid, installs it. An error is
/// returned (and logged and counted) only the first time a given content is refused.
pub fn reload_now(service: &Executor, dir: &Path) -> Result<ReloadOutcome, ConfigError> {
    let (digest, read) = state::read_dir_digest(dir);
    if service.runtime().is_some_and(|rt| rt.digest == digest) {
        // Back to (or still at) the config in force, e.g. after a bad write was reverted.
        service.remember_refused(None);
        return Ok(ReloadOutcome::Unchanged);
    }
    if service.refused_before(&digest) {
        return Ok(ReloadOutcome::StillRefused);
    }
    let built = read.and_then(|config| service.build(config, digest, dir));
    match built {
        Ok(rt) => {
            let generation = rt.config.generation;
            let policies = rt.config.policies.len();
            service.install(rt);
            service.remember_refused(None);
            service.observer().config_reload(true);
            tracing::info!(generation, policies, dir = %dir.display(), "config loaded");
            Ok(ReloadOutcome::Loaded { generation })
        }
        Err(e) => {
            service.remember_refused(Some(digest));
            service.observer().config_reload(false);
            let keeping = service.runtime().map(|rt| rt.config.generation);
            tracing::error!(error = %e, keeping_generation = ?keeping, "config refused; the last good config stays in force");
            Err(e)
        }
    }
}

/// Whether a file event can change what the directory holds.
fn changes_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) => true,
        // Attribute changes (atime, permissions) do not change content.
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Modify(_) => true,
        // A file closed after writing; opening and reading are what the reload itself does.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Any | EventKind::Other => true,
    }
}

/// Watches `dir` until the returned task is dropped or the process ends.
pub fn watch(service: Arc<Executor>, dir: PathBuf, poll: Duration) -> tokio::task::JoinHandle<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let watcher = {
        let tx = tx.clone();
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // An error from the watcher itself: re-read, the poll would do it anyway.
            if event.as_ref().map_or(true, |e| changes_content(&e.kind)) {
                let _ = tx.try_send(());
            }
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
        // Holding a sender keeps `recv` from returning at once when there is no watcher.
        let _keep = (watcher, tx);
        loop {
            if tokio::time::timeout(poll, rx.recv()).await.is_ok() {
                // Debounce: a Secret update is several events in quick succession.
                tokio::time::sleep(Duration::from_millis(200)).await;
                while rx.try_recv().is_ok() {}
            }
            let svc = service.clone();
            let d = dir.clone();
            let _ = tokio::task::spawn_blocking(move || reload_now(&svc, &d)).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, MetadataKind, RemoveKind, RenameMode};

    #[test]
    fn only_events_that_can_change_content_trigger_a_reread() {
        for (kind, want) in [
            (EventKind::Create(CreateKind::File), true),
            (EventKind::Create(CreateKind::Folder), true),
            (EventKind::Remove(RemoveKind::Any), true),
            (EventKind::Modify(ModifyKind::Data(DataChange::Any)), true),
            (EventKind::Modify(ModifyKind::Name(RenameMode::Both)), true),
            (EventKind::Modify(ModifyKind::Any), true),
            (
                EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)),
                false,
            ),
            (
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                true,
            ),
            (EventKind::Access(AccessKind::Open(AccessMode::Any)), false),
            (EventKind::Access(AccessKind::Read), false),
            (
                EventKind::Access(AccessKind::Close(AccessMode::Read)),
                false,
            ),
            (EventKind::Any, true),
        ] {
            assert_eq!(changes_content(&kind), want, "{kind:?}");
        }
    }
}
