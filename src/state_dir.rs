//! The state directory and the secrets fledge reads, checked before use so
//! that nobody else can plant them.
//!
//! `state_dir` holds what decides where traffic goes (`rollouts.json`), the
//! decision journal, the generated admin token and the upgrade socket. A
//! directory another user can write to lets that user plant a token of
//! their own (and so drive the admin API), a state file that rolls every
//! canary back, or a symlink that makes fledge write its next state file
//! or journal line through it, wherever it points. So:
//!
//! - [`prepare`] creates the directory `0700` and refuses one owned by
//!   another user (root excepted) or writable by group or others;
//! - [`write_atomically`] writes through a temporary file with a random name,
//!   created `O_EXCL | O_NOFOLLOW` and `0600`, renamed over the target
//!   (`rename` replaces a symlink, never follows it);
//! - [`open_append`] opens the journal `O_NOFOLLOW`;
//! - [`check_own_secret`] and [`check_secret_file`] refuse a token file that
//!   is a symlink (fledge's own), not a plain file, another user's, or
//!   writable (or, for fledge's own, readable) by group or others;
//! - [`key_file_exposure`] names a TLS key readable by group or others.
//!
//! Root-owned directories and files pass the owner check: root can write
//! anywhere anyway, and mounted secrets (Kubernetes) are root's.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

/// `O_NOFOLLOW`: opening a symlink fails instead of opening its target.
fn no_follow() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits()
}

/// The user fledge runs as.
fn me() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Why `meta` (of `path`) may be changed by someone else: another owner, or
/// write permission for group or others. `None`: only we (or root) can.
fn foreign(path: &Path, meta: &fs::Metadata) -> Option<String> {
    let (owner, mode) = (meta.uid(), meta.mode() & 0o7777);
    if owner != me() && owner != 0 {
        return Some(format!(
            "{} is owned by uid {owner}, not by the user fledge runs as (uid {})",
            path.display(),
            me()
        ));
    }
    if mode & 0o022 != 0 {
        return Some(format!(
            "{} is writable by {} (mode {mode:04o}): anyone there could plant files fledge trusts",
            path.display(),
            if mode & 0o002 != 0 {
                "everyone"
            } else {
                "its group"
            }
        ));
    }
    None
}

/// Create `dir` (mode `0700`) if missing, and check that nobody else can
/// write to it. Err: why not, naming the directory.
pub fn prepare(dir: &Path) -> Result<(), String> {
    if !dir.exists() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create state_dir {}: {e}", dir.display()))?;
    }
    let meta = fs::metadata(dir).map_err(|e| format!("cannot use state_dir {}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("state_dir {} is not a directory", dir.display()));
    }
    match foreign(dir, &meta) {
        Some(why) => Err(format!(
            "refusing state_dir: {why} (chmod 700 it, or give fledge a directory of its own)"
        )),
        None => Ok(()),
    }
}

/// A secret fledge wrote itself (the generated admin token): a plain file,
/// no symlink, ours, readable and writable by us alone.
pub fn check_own_secret(path: &Path) -> Result<(), String> {
    let meta = fs::symlink_metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.file_type().is_symlink() {
        return Err(format!(
            "refusing {}: it is a symlink, and fledge writes this file itself",
            path.display()
        ));
    }
    if !meta.is_file() {
        return Err(format!("refusing {}: not a plain file", path.display()));
    }
    if meta.uid() != me() {
        return Err(format!(
            "refusing {}: owned by uid {}, not by fledge's (uid {}); remove it and fledge makes a new one",
            path.display(),
            meta.uid(),
            me()
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "refusing {}: mode {mode:04o} lets others read or change it (chmod 600, or remove it and fledge makes a new one)",
            path.display()
        ));
    }
    Ok(())
}

/// A secret an operator gives fledge (`admin.token_file`): a file (a
/// symlink to one is fine: mounted secrets are), ours or root's, writable
/// by nobody else. Ok carries a warning when others may read it.
pub fn check_secret_file(path: &Path) -> Result<Option<String>, String> {
    let meta = fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("refusing {}: not a plain file", path.display()));
    }
    if let Some(why) = foreign(path, &meta) {
        return Err(format!("refusing {why}"));
    }
    let mode = meta.mode() & 0o7777;
    Ok((mode & 0o004 != 0).then(|| format!("{} is readable by everyone (mode {mode:04o})", path.display())))
}

/// `Some(why)` when the private key at `path` is readable by group or
/// others.
pub fn key_file_exposure(path: &Path) -> std::io::Result<Option<String>> {
    let mode = fs::metadata(path)?.permissions().mode() & 0o7777;
    Ok((mode & 0o044 != 0).then(|| {
        format!(
            "private key readable by {} (mode {mode:04o}): chmod 600 it, or set tls.allow_readable_keys to load it anyway",
            if mode & 0o004 != 0 { "everyone" } else { "its group" }
        )
    }))
}

/// Replace `dir/name` with `bytes`, durably: a reader sees the old file or
/// the new one, never a part. The temporary file has a random name and is
/// created `O_EXCL | O_NOFOLLOW`, mode `0600`, so nothing planted in `dir`
/// is written through; the rename replaces whatever `name` was (a symlink
/// included) without following it. Then fsync the file and `dir`.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let mut random = [0u8; 8];
    getrandom::getrandom(&mut random).map_err(std::io::Error::other)?;
    let tmp = dir.join(format!(".{name}.{:016x}.tmp", u64::from_le_bytes(random)));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(no_follow())
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, dir.join(name))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    File::open(dir)?.sync_all()
}

/// Open `path` for appending (created `0600` if missing), refusing a
/// symlink.
pub fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(no_follow())
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_state_dir_others_can_write_is_refused_and_a_new_one_is_private() {
        let root = tempfile::tempdir().unwrap();
        let fresh = root.path().join("a/b");
        prepare(&fresh).unwrap();
        assert_eq!(fs::metadata(&fresh).unwrap().mode() & 0o777, 0o700);
        for (mode, word) in [(0o777, "everyone"), (0o770, "its group"), (0o702, "everyone")] {
            chmod(&fresh, mode);
            let why = prepare(&fresh).unwrap_err();
            assert!(why.contains(word) && why.contains("a/b"), "{why}");
        }
        chmod(&fresh, 0o755);
        prepare(&fresh).unwrap();
        let file = root.path().join("file");
        fs::write(&file, b"x").unwrap();
        assert!(prepare(&file).unwrap_err().contains("not a directory"));
    }

    #[test]
    fn planted_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("admin.token");
        fs::write(&token, b"0123456789abcdef0123").unwrap();
        chmod(&token, 0o600);
        check_own_secret(&token).unwrap();
        chmod(&token, 0o644);
        assert!(check_own_secret(&token).unwrap_err().contains("0644"));
        chmod(&token, 0o600);
        let elsewhere = dir.path().join("elsewhere");
        fs::write(&elsewhere, b"planted-token-0123456789").unwrap();
        chmod(&elsewhere, 0o600);
        let link = dir.path().join("linked.token");
        symlink(&elsewhere, &link).unwrap();
        assert!(check_own_secret(&link).unwrap_err().contains("symlink"));
        // An operator's file may be a symlink (mounted secrets are), but
        // not writable by others.
        assert_eq!(check_secret_file(&link).unwrap(), None);
        chmod(&elsewhere, 0o644);
        assert!(check_secret_file(&link).unwrap().unwrap().contains("everyone"));
        chmod(&elsewhere, 0o666);
        assert!(check_secret_file(&link).unwrap_err().contains("writable"));
    }

    #[test]
    fn planted_symlinks_are_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        // The old fixed temporary name, and the target itself, as symlinks.
        symlink(&victim, dir.path().join(".rollouts.json.tmp")).unwrap();
        symlink(&victim, dir.path().join("rollouts.json")).unwrap();
        write_atomically(dir.path(), "rollouts.json", b"{}").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        let meta = fs::symlink_metadata(dir.path().join("rollouts.json")).unwrap();
        assert!(meta.is_file(), "the symlink was replaced, not followed");
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(fs::read(dir.path().join("rollouts.json")).unwrap(), b"{}");
        // No temporary file is left behind.
        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp") && e.file_type().unwrap().is_file())
            .collect();
        assert!(left.is_empty());
        // The journal is not opened through a symlink.
        symlink(&victim, dir.path().join("journal.jsonl")).unwrap();
        assert!(open_append(&dir.path().join("journal.jsonl")).is_err());
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
    }

    #[test]
    fn readable_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.key");
        fs::write(&key, b"k").unwrap();
        chmod(&key, 0o600);
        assert_eq!(key_file_exposure(&key).unwrap(), None);
        chmod(&key, 0o640);
        assert!(key_file_exposure(&key).unwrap().unwrap().contains("group"));
        chmod(&key, 0o644);
        assert!(key_file_exposure(&key).unwrap().unwrap().contains("everyone"));
    }
}
