//! Control plane: reload the certificates when `tls.certs_dir` changes.
//!
//! Every pair loaded, refused or removed is logged and journaled; the
//! counts are in `fledge_tls_cert_reloads_total`. A refused pair keeps its
//! last good version serving.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use tokio::sync::Mutex;

use super::{CertStore, Report};
use crate::control::{Actor, Control};
use crate::watch::{self, DirWatch};

/// The watcher service.
pub struct CertWatcher {
    control: Arc<Control>,
    store: Mutex<CertStore>,
    /// What loading at start did, journaled once the service runs.
    first: Mutex<Option<Report>>,
}

impl CertWatcher {
    /// Watch `store`'s directory; `first` is what `CertStore::open` reported.
    pub fn new(control: Arc<Control>, store: CertStore, first: Report) -> Self {
        CertWatcher {
            control,
            store: Mutex::new(store),
            first: Mutex::new(Some(first)),
        }
    }

    async fn tell(&self, report: Report) {
        for l in report.loaded {
            tracing::info!(pair = %l.name, hosts = ?l.hosts, not_after = %l.not_after, "certificate loaded");
            let reason = format!("{}: {} (until {})", l.name, l.hosts.join(", "), l.not_after);
            self.control.note("tls_cert_loaded", Actor::File, reason).await;
        }
        for r in report.refused {
            let outcome = if r.kept_previous {
                "its last good version keeps serving"
            } else {
                "not served"
            };
            tracing::warn!(pair = %r.name, reason = %r.reason, "certificate refused: {outcome}");
            let reason = format!("{}; {outcome}", r.reason);
            self.control.note("tls_cert_rejected", Actor::File, reason).await;
        }
        for name in report.removed {
            tracing::info!(pair = %name, "certificate removed");
            self.control.note("tls_cert_removed", Actor::File, name).await;
        }
    }
}

#[async_trait]
impl BackgroundService for CertWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let first = self.first.lock().await.take();
        if let Some(report) = first {
            self.tell(report).await;
        }
        let dir = self.store.lock().await.dir().to_owned();
        let mut changes = match DirWatch::new(&dir) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "cannot watch the certificate directory: certificates will not be reloaded");
                None
            }
        };
        // Files changed between the load at start and the watch being set
        // up would otherwise wait for the next change: look once now.
        let mut look_now = true;
        loop {
            if !std::mem::take(&mut look_now) {
                tokio::select! {
                    () = watch::changed(&mut changes) => {}
                    _ = shutdown.changed() => return,
                }
            }
            // A few file reads and milliseconds of parsing, on the
            // background service's own thread: no request waits on it.
            let reloaded = self.store.lock().await.reload();
            match reloaded {
                Ok(report) => self.tell(report).await,
                Err(e) => {
                    tracing::error!(dir = %dir.display(), error = %e, "cannot reload certificates: the loaded ones keep serving")
                }
            }
        }
    }
}
