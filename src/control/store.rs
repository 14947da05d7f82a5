//! Canary states on disk: `rollouts.json` under `state_dir`, replaced
//! atomically (write to a temporary file, fsync, rename, fsync the
//! directory: [`crate::state_dir::write_atomically`]) on every change, so a
//! crash leaves the old or the new file, never half of one.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::analysis::rollout::Rollout;

use super::journal::JOURNAL_FILE;

/// File name of the states inside `state_dir`.
pub const STATE_FILE: &str = "rollouts.json";

/// In a fleet: the rollbacks this replica made alone, not yet written to
/// the fleet (`control::Control::sync_fleet`).
pub const PENDING_FILE: &str = "fleet-pending.json";

/// A rollback made alone: what the canary was when it was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pending {
    /// The fleet rev of the state it was made from (0: never read).
    pub rev: u64,
    /// The rollout generation it was made from.
    pub generation: u32,
}

/// What was found on disk at start.
#[derive(Debug)]
pub enum Loaded {
    /// Nothing: a first start in this directory.
    Fresh,
    /// The states of the previous run.
    States(BTreeMap<String, Rollout>),
    /// The file is missing although fledge ran here before, or it cannot be
    /// read: nobody knows which canaries were rolled back.
    Unreadable(String),
}

/// The state file.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    dir: PathBuf,
}

impl Store {
    /// The store in `dir`, created if needed; refused (with the reason)
    /// when someone else could write to `dir` ([`crate::state_dir::prepare`]).
    pub fn open(dir: &Path) -> std::io::Result<Store> {
        crate::state_dir::prepare(dir).map_err(std::io::Error::other)?;
        Ok(Store {
            path: dir.join(STATE_FILE),
            dir: dir.to_owned(),
        })
    }

    /// Read the states of the previous run.
    pub fn load(&self) -> Loaded {
        match fs::read(&self.path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(states) => Loaded::States(states),
                Err(e) => Loaded::Unreadable(format!("{} is corrupted: {e}", self.path.display())),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let journal = self.dir.join(JOURNAL_FILE);
                if fs::metadata(&journal).is_ok_and(|m| m.len() > 0) {
                    Loaded::Unreadable(format!(
                        "{} is missing but {} shows earlier runs",
                        self.path.display(),
                        journal.display()
                    ))
                } else {
                    Loaded::Fresh
                }
            }
            Err(e) => Loaded::Unreadable(format!("{} cannot be read: {e}", self.path.display())),
        }
    }

    /// The rollbacks made alone that a previous run left unwritten; none
    /// when there is no such file (or it cannot be read: said in the log).
    pub fn load_pending(&self) -> BTreeMap<String, Pending> {
        match fs::read(self.dir.join(PENDING_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::error!(error = %e, "{PENDING_FILE} is corrupted: rollbacks made alone before this start are not written to the fleet");
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        }
    }

    /// Replace the pending file with `pending`, durably.
    pub fn save_pending(&self, pending: &BTreeMap<String, Pending>) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(pending).map_err(std::io::Error::other)?;
        crate::state_dir::write_atomically(&self.dir, PENDING_FILE, &bytes)
    }

    /// Replace the file with `states`, durably.
    pub fn save(&self, states: &BTreeMap<String, Rollout>) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(states).map_err(std::io::Error::other)?;
        let name = self.path.file_name().unwrap_or_default().to_string_lossy();
        crate::state_dir::write_atomically(&self.dir, &name, &bytes)
    }
}
