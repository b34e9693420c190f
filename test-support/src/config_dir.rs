//! A directory laid out like a mounted Secret or ConfigMap.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Files are symlinks through `..data`, and an update swaps `..data` atomically, the way the
/// kubelet does: what a watcher of a mounted Secret sees in production.
pub struct ConfigDir {
    pub dir: tempfile::TempDir,
    version: AtomicUsize,
}

impl ConfigDir {
    #[allow(clippy::new_without_default)] // every call makes a new directory
    pub fn new() -> ConfigDir {
        ConfigDir {
            dir: tempfile::tempdir().unwrap(),
            version: AtomicUsize::new(0),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Publishes files (name, content) the way the kubelet does.
    pub fn publish(&self, files: &[(&str, &str)]) {
        let v = self.version.fetch_add(1, Ordering::SeqCst);
        let ts = format!("..2026_11_23_{v:04}");
        let ts_dir = self.path().join(&ts);
        std::fs::create_dir(&ts_dir).unwrap();
        for (name, content) in files {
            std::fs::write(ts_dir.join(name), content).unwrap();
        }
        let tmp = self.path().join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&ts, &tmp).unwrap();
        std::fs::rename(&tmp, self.path().join("..data")).unwrap();
        for (name, _) in files {
            let link = self.path().join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(PathBuf::from("..data").join(name), &link).unwrap();
            }
        }
    }
}
