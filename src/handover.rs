//! Graceful upgrade, fledge's part. Pingora hands the listening sockets
//! from the old process to the new one (`fledge run --upgrade`, then
//! SIGQUIT to the old); this module hands over the rest, through files in
//! `state_dir`:
//!
//! 1. At SIGQUIT, before Pingora sends the sockets, the old process stops
//!    deciding ([`Control::hand_over`]) and writes its per-tenant counters
//!    ([`STATS_FILE`]).
//! 2. Once the new process has the sockets it reads the canary states again
//!    and takes charge ([`Control::take_over`]), and starts its counters
//!    from the old process's: Prometheus sees them go on, not reset.
//! 3. The old process drains its requests in flight, then writes what it
//!    counted meanwhile (`handover-drain-<pid>.json`); the new process adds that in
//!    ([`DrainCounts`]). Counters only ever grow.
//!
//! Process-wide counters (connections, retries, reloads, certificates)
//! start again from zero in the new process, as any restart's do.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::BackgroundService;
use serde::{Deserialize, Serialize};
use tokio::signal::unix::{signal, SignalKind};

use crate::control::Control;
use crate::metrics::dump::StatsDump;

/// The old process's counters at the hand-over, inside `state_dir`.
pub const STATS_FILE: &str = "handover-stats.json";
/// What the old process counted while draining, inside `state_dir`
/// (`handover-drain-<pid>.json`, so that a leftover of another upgrade is
/// never taken for it).
fn drain_file(pid: u32) -> String {
    format!("handover-drain-{pid}.json")
}
/// A hand-over file older than this is a leftover of an upgrade that did
/// not happen, not ours.
const FRESH_FOR: Duration = Duration::from_secs(60);

/// One hand-over file.
#[derive(Debug, Serialize, Deserialize)]
struct Handed {
    /// The process that wrote it.
    pid: u32,
    /// When, Unix milliseconds.
    unix_ms: u64,
    stats: StatsDump,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn write(dir: &Path, name: &str, stats: StatsDump) -> std::io::Result<()> {
    let handed = Handed {
        pid: std::process::id(),
        unix_ms: unix_ms(),
        stats,
    };
    let bytes = serde_json::to_vec(&handed).map_err(std::io::Error::other)?;
    crate::state_dir::write_atomically(dir, name, &bytes)
}

/// Read and remove `name`, if it is fresh (and from `pid`, when given).
fn take(dir: &Path, name: &str, pid: Option<u32>) -> Option<Handed> {
    let path = dir.join(name);
    let bytes = std::fs::read(&path).ok()?;
    let _ = std::fs::remove_file(&path);
    let handed: Handed = match serde_json::from_slice(&bytes) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "hand-over counters unreadable: counters start from zero");
            return None;
        }
    };
    let age = Duration::from_millis(unix_ms().saturating_sub(handed.unix_ms));
    if age > FRESH_FOR || pid.is_some_and(|p| p != handed.pid) {
        tracing::warn!(file = %path.display(), pid = handed.pid, ?age, "stale hand-over counters ignored");
        return None;
    }
    Some(handed)
}

fn add(control: &Control, handed: &Handed, what: &str) {
    let dropped = handed.stats.add_to(&control.routes().load());
    tracing::info!(
        from_pid = handed.pid,
        requests = handed.stats.requests(),
        dropped_tenants = dropped.tenants,
        dropped_keys = dropped.keys,
        "{what}"
    );
}

/// Pingora's signals (SIGQUIT upgrade, SIGTERM drain, SIGINT fast exit),
/// with the old process's half of the hand-over done at SIGQUIT.
///
/// A SIGQUIT with no new process waiting for the sockets ([`successor`])
/// is refused: logged, counted (`fledge_upgrades_total{result="no_successor"}`),
/// and the process goes on serving. nginx keeps its old master until the
/// new one runs; Pingora alone would stop accepting at once and exit. If
/// the new process was waiting but did not take the sockets, Pingora
/// (patched, `vendor/README.md`) goes back to serving and asks for the next
/// signal: this process takes charge again (`not_taken`).
pub struct Signals {
    control: Arc<Control>,
    dir: PathBuf,
    handed: Arc<ArcSwapOption<StatsDump>>,
    /// A hand-over was started and not yet known to have happened.
    handing_over: AtomicBool,
    /// SIGQUIT, SIGTERM, SIGINT: made once, so that a signal sent while
    /// Pingora tries to send the sockets is not lost when asked again.
    streams: tokio::sync::Mutex<Option<[tokio::signal::unix::Signal; 3]>>,
}

impl Signals {
    /// Signals for the process whose control plane is `control`; the
    /// returned cell holds the counters handed over, once they are.
    pub fn new(control: Arc<Control>, dir: PathBuf) -> (Signals, Arc<ArcSwapOption<StatsDump>>) {
        let handed = Arc::new(ArcSwapOption::empty());
        let signals = Signals {
            control,
            dir,
            handed: Arc::clone(&handed),
            handing_over: AtomicBool::new(false),
            streams: tokio::sync::Mutex::new(None),
        };
        (signals, handed)
    }
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let counters = self.control.reload_counters();
        if self.handing_over.swap(false, Relaxed) {
            // Asked again after an upgrade: the sockets were not taken.
            counters.upgrades_not_taken.fetch_add(1, Relaxed);
            self.handed.store(None);
            self.control.take_back().await;
            tracing::error!(
                "upgrade failed: the new process did not take the sockets; this one goes on serving"
            );
        }
        let mut streams = self.streams.lock().await;
        if streams.is_none() {
            let (Ok(quit), Ok(term), Ok(int)) = (
                signal(SignalKind::quit()),
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                tracing::error!("cannot listen for signals: stopping");
                return ShutdownSignal::FastShutdown;
            };
            *streams = Some([quit, term, int]);
        }
        let Some([quit, term, int]) = streams.as_mut() else {
            return ShutdownSignal::FastShutdown;
        };
        loop {
            tokio::select! {
                _ = quit.recv() => {
                    let pid = match successor(&self.dir) {
                        Ok(pid) => pid,
                        Err(why) => {
                            counters.upgrades_no_successor.fetch_add(1, Relaxed);
                            tracing::error!(%why, "SIGQUIT refused: no new process is waiting for the sockets; still serving (start one with `fledge run --upgrade`, or use `fledge upgrade`)");
                            continue;
                        }
                    };
                    tracing::info!(successor = pid, "SIGQUIT: handing over to the new process");
                    self.control.hand_over().await;
                    let stats = StatsDump::of(&self.control.routes().load());
                    match write(&self.dir, STATS_FILE, stats.clone()) {
                        Ok(()) => tracing::info!(requests = stats.requests(), "SIGQUIT: counters written for the new process"),
                        Err(e) => tracing::error!(error = %e, "SIGQUIT: cannot write the counters: the new process starts from zero"),
                    }
                    self.handed.store(Some(Arc::new(stats)));
                    self.handing_over.store(true, Relaxed);
                    counters.upgrades_handed_over.fetch_add(1, Relaxed);
                    return ShutdownSignal::GracefulUpgrade;
                }
                _ = term.recv() => return ShutdownSignal::GracefulTerminate,
                _ = int.recv() => return ShutdownSignal::FastShutdown,
            }
        }
    }
}

/// File a new process (`--upgrade`) writes into `state_dir`, with its pid,
/// while it waits for the sockets.
pub const WAITING_FILE: &str = "upgrade.waiting";

/// Say that this process waits for the sockets (before Pingora listens on
/// the upgrade socket).
pub fn announce_waiting(dir: &Path) -> std::io::Result<()> {
    crate::state_dir::write_atomically(dir, WAITING_FILE, std::process::id().to_string().as_bytes())
}

/// This process has the sockets: it waits no more.
pub fn stop_waiting(dir: &Path) {
    let path = dir.join(WAITING_FILE);
    if std::fs::read_to_string(&path).is_ok_and(|p| p.trim() == std::process::id().to_string()) {
        let _ = std::fs::remove_file(path);
    }
}

/// The pid of a new process waiting for the sockets, or why there is none.
pub fn successor(dir: &Path) -> Result<u32, String> {
    let path = dir.join(WAITING_FILE);
    let text = std::fs::read_to_string(&path)
        .map_err(|_| format!("no {} (no `fledge run --upgrade` is waiting)", path.display()))?;
    let pid: u32 = text
        .trim()
        .parse()
        .map_err(|_| format!("{} holds no pid", path.display()))?;
    if pid == std::process::id() {
        return Err(format!("{} names this process", path.display()));
    }
    let alive = i32::try_from(pid)
        .ok()
        .is_some_and(|p| nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok());
    if !alive {
        return Err(format!(
            "the new process {pid} named in {} is gone",
            path.display()
        ));
    }
    Ok(pid)
}

/// The old process, drained: write what it counted since the hand-over.
pub fn after_drain(control: &Control, dir: &Path, handed: &ArcSwapOption<StatsDump>) {
    let Some(at_hand_over) = handed.load_full() else {
        return;
    };
    let drained = StatsDump::of(&control.routes().load()).since(&at_hand_over);
    if let Err(e) = write(dir, &drain_file(std::process::id()), drained) {
        tracing::error!(error = %e, "cannot write the requests counted while draining");
    }
}

/// The new process, sockets in hand: take charge and carry the counters on.
/// Returns the old process's pid, for [`DrainCounts`].
pub fn take_over(control: &Control, dir: &Path) -> Option<u32> {
    control.take_over();
    let handed = take(dir, STATS_FILE, None)?;
    add(control, &handed, "counters carried over from the old process");
    Some(handed.pid)
}

/// The new process's wait for the old one's drain counts.
pub struct DrainCounts {
    control: Arc<Control>,
    dir: PathBuf,
    old_pid: u32,
    wait: Duration,
}

impl DrainCounts {
    /// Wait up to `wait` for `old_pid`'s drain counts in `dir`.
    pub fn new(control: Arc<Control>, dir: PathBuf, old_pid: u32, wait: Duration) -> Self {
        DrainCounts {
            control,
            dir,
            old_pid,
            wait,
        }
    }
}

#[async_trait]
impl BackgroundService for DrainCounts {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let deadline = tokio::time::Instant::now() + self.wait;
        while tokio::time::Instant::now() < deadline {
            let name = drain_file(self.old_pid);
            if self.dir.join(&name).exists() {
                if let Some(handed) = take(&self.dir, &name, Some(self.old_pid)) {
                    add(
                        &self.control,
                        &handed,
                        "requests the old process served while draining added",
                    );
                }
                return;
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = shutdown.changed() => return,
            }
        }
        tracing::warn!(
            old_pid = self.old_pid,
            "the old process left no drain counts: its last requests are not counted"
        );
    }
}
