//! Control plane: reload the config when its file changes, or on SIGHUP.
//!
//! The file's directory is watched ([`crate::watch`] says why); the reload
//! compares the content hash and does nothing if the file did not change.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};

use crate::control::{Actor, Control};
use crate::watch::{self, DirWatch};

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
        let dir = self
            .path
            .parent()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut changes = match DirWatch::new(&dir) {
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
        // A change made between the load at start and the watch being set
        // up would otherwise wait for the next one: look once now (an
        // unchanged file is a no-op).
        let _ = self.control.reload(Actor::File, false).await;
        loop {
            let hup = async {
                match hangup.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            let force = tokio::select! {
                () = watch::changed(&mut changes) => false,
                _ = hup => true,
                _ = shutdown.changed() => return,
            };
            // Errors are logged, journaled and counted by `reload` itself.
            let _ = self.control.reload(Actor::File, force).await;
        }
    }
}
