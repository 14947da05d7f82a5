//! Control plane: reload the config when its file changes, or on SIGHUP.
//!
//! We watch the file's *directory*, not the file: editors and deploy tools
//! replace files by renaming a new one over them, and Kubernetes updates a
//! ConfigMap by swapping its `..data` symlink, neither of which a watch on
//! the old inode would see. Any event in the directory schedules a reload
//! after a short quiet period (bursts of events become one reload); the
//! reload compares the content hash and does nothing if the file did not
//! change, so unrelated files in the directory cost one read.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use notify::{RecursiveMode, Watcher as _};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};

use crate::control::{Actor, Control};

/// Quiet time after the last event before reloading: long enough to let a
/// writer finish, short enough to feel immediate.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// The watcher service.
pub struct ConfigWatcher {
    control: Arc<Control>,
    path: PathBuf,
}

impl ConfigWatcher {
    /// Watch `path` (the file `control` was started from).
    pub fn new(control: Arc<Control>, path: PathBuf) -> Self {
        ConfigWatcher { control, path }
    }
}

#[async_trait]
impl BackgroundService for ConfigWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (tx, mut events) = tokio::sync::mpsc::unbounded_channel::<()>();
        let dir = self
            .path
            .parent()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok() {
                let _ = tx.send(());
            }
        })
        .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|()| w));
        let _watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "cannot watch the config directory: reload with SIGHUP or the admin API");
                None
            }
        };
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP");
                None
            }
        };
        loop {
            let hup = async {
                match hangup.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            let (actor, force) = tokio::select! {
                Some(()) = events.recv() => {
                    // Let the burst end.
                    loop {
                        tokio::select! {
                            Some(()) = events.recv() => continue,
                            _ = tokio::time::sleep(DEBOUNCE) => break,
                        }
                    }
                    (Actor::File, false)
                }
                _ = hup => (Actor::File, true),
                _ = shutdown.changed() => return,
            };
            // Errors are logged, journaled and counted by `reload` itself.
            let _ = self.control.reload(actor, force).await;
        }
    }
}
