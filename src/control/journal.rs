//! The decision journal: append-only JSON lines under `state_dir`, one per
//! weight change, rollback, promotion step or state change, each fsync'ed
//! before the call returns, so a crash loses nothing already decided.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::analysis::rollout::RolloutState;
use crate::analysis::verdict::Breach;
use crate::config::Weight;

/// File name of the journal inside `state_dir`.
pub const JOURNAL_FILE: &str = "journal.jsonl";

/// Who made a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    /// The analysis loop.
    Auto,
    /// An operator through the admin API.
    Api,
    /// The config file.
    File,
}

/// A rollout's position before or after a decision.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Position {
    /// State.
    pub state: RolloutState,
    /// Weight in percent.
    pub weight: f64,
}

/// One line of the journal.
#[derive(Debug, Clone, Serialize)]
pub struct Entry<'a> {
    /// RFC 3339, UTC.
    pub time: String,
    /// Milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// The tenant (`None` for whole-config events such as reloads).
    pub tenant: Option<&'a str>,
    /// The canary pool concerned.
    pub canary: Option<&'a str>,
    /// What happened: `started`, `weight`, `step`, `promoted`, `rolled_back`,
    /// `paused`, `resumed`, `removed`, `reload`, `reload_rejected`,
    /// `tls_cert_loaded`, `tls_cert_rejected`, `tls_cert_removed`.
    pub event: &'a str,
    /// Who decided.
    pub actor: Actor,
    /// Before.
    pub before: Option<Position>,
    /// After.
    pub after: Option<Position>,
    /// Why, in a word or a sentence.
    pub reason: Option<&'a str>,
    /// The figures behind an automatic decision.
    pub figures: Option<&'a Breach>,
}

/// The open journal file.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
}

impl Position {
    /// A position.
    pub fn new(state: RolloutState, weight: Weight) -> Self {
        Position {
            state,
            weight: weight.percent(),
        }
    }
}

impl Entry<'_> {
    /// Now, as both RFC 3339 and Unix milliseconds.
    pub fn now() -> (String, u64) {
        let now = chrono::Utc::now();
        (
            now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            u64::try_from(now.timestamp_millis()).unwrap_or(0),
        )
    }
}

impl Journal {
    /// Open (or create) the journal in `dir`.
    pub fn open(dir: &Path) -> std::io::Result<Journal> {
        let path = dir.join(JOURNAL_FILE);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(Journal { path, file })
    }

    /// Append `entry` and make it durable.
    pub fn append(&mut self, entry: &Entry<'_>) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
