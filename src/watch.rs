//! Control plane: "something changed in this directory", debounced. Shared
//! by the config watcher and the certificate watcher.
//!
//! We watch *directories*, not files: editors and deploy tools replace files
//! by renaming a new one over them, and Kubernetes updates a ConfigMap or a
//! Secret by swapping its `..data` symlink, neither of which a watch on the
//! old inode would see. A burst of events (a tool writing a certificate and
//! then its key) becomes one wake-up after a short quiet period; the reader
//! then compares contents, so an unrelated file costs one read.

use std::path::Path;
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// Quiet time after the last event before waking the reader: long enough to
/// let a writer finish, short enough to feel immediate.
pub const DEBOUNCE: Duration = Duration::from_millis(150);

/// A watched directory.
pub struct DirWatch {
    // Dropping the watcher stops the events.
    _watcher: notify::RecommendedWatcher,
    events: UnboundedReceiver<()>,
}

impl DirWatch {
    /// Watch `dir` (not its subdirectories).
    pub fn new(dir: &Path) -> notify::Result<DirWatch> {
        let (tx, events) = unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok() {
                let _ = tx.send(());
            }
        })?;
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
        Ok(DirWatch {
            _watcher: watcher,
            events,
        })
    }

    /// Wait for a change and for the burst it starts to end.
    pub async fn changed(&mut self) {
        if self.events.recv().await.is_none() {
            return std::future::pending().await;
        }
        loop {
            tokio::select! {
                Some(()) = self.events.recv() => continue,
                _ = tokio::time::sleep(DEBOUNCE) => return,
            }
        }
    }
}

/// `changed()` of an optional watch: pending forever without one, so a
/// service that could not watch still answers its other wake-ups.
pub async fn changed(watch: &mut Option<DirWatch>) {
    match watch {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}
