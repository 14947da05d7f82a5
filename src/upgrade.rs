//! `fledge upgrade --config F`: a graceful upgrade, every step checked, for
//! operators and scripts.
//!
//! Pingora's upgrade is two moves an operator makes by hand: start a new
//! process with `--upgrade` (it waits for the sockets), then SIGQUIT the
//! old one (it sends them and drains). Done blindly, a new process that
//! cannot start (a typo in its file or its environment) used to leave the
//! old one to stop accepting and exit: the proxy went down. The running
//! fledge now refuses a SIGQUIT no new process waits for
//! ([`crate::handover::successor`]); this command does the rest, as nginx's
//! and HAProxy's reloads do, and stops at the first step that fails,
//! saying why, with the old process still serving:
//!
//! 1. check `F` (the same check as `fledge check`);
//! 2. find the running fledge (`state_dir/fledge.pid`);
//! 3. start `fledge run --config F --upgrade` and wait until it says it
//!    waits for the sockets (`state_dir/upgrade.waiting`), or fails;
//! 4. SIGQUIT the running fledge;
//! 5. wait until the new process holds the sockets and has taken charge
//!    (it writes its pid into `state_dir/fledge.pid`) and its admin
//!    listener answers `/readyz`;
//! 6. leave the old process to drain its requests in flight and exit.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::handover::{successor, WAITING_FILE};
use crate::server::PID_FILE;

/// How `fledge upgrade` runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The new process's config file.
    pub config: PathBuf,
    /// Where the new process's output goes (appended); `None`: this
    /// command's own stdout and stderr.
    pub log: Option<PathBuf>,
    /// How long each wait may take.
    pub wait: Duration,
}

/// What an upgrade did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    /// The process that served before.
    pub old_pid: u32,
    /// The process that serves now.
    pub new_pid: u32,
}

/// Time between two looks at what a wait waits for.
const POLL: Duration = Duration::from_millis(50);

/// Run the upgrade. Err: the step that failed and why; the running fledge
/// is left serving (unless the failure came after it handed over, which
/// the message says).
pub fn run(options: &Options) -> anyhow::Result<Done> {
    let config = crate::config::load(&options.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let dir = &config.state_dir;
    let old_pid = running(dir)?;
    if let Ok(pid) = successor(dir) {
        bail!("another new process ({pid}) is already waiting for the sockets: an upgrade is under way");
    }

    let mut child = spawn(options)?;
    let new_pid = child.id();
    let waited = wait_for(options.wait, &mut child, || {
        read_pid(&dir.join(WAITING_FILE)) == Some(new_pid)
    });
    if let Err(why) = waited {
        bail!(
            "the new process did not get ready to take over: {why}; the running fledge (pid {old_pid}) is untouched"
        );
    }

    nix::sys::signal::kill(pid(old_pid)?, nix::sys::signal::Signal::SIGQUIT)
        .with_context(|| format!("cannot send SIGQUIT to the running fledge (pid {old_pid})"))?;
    let took_over = wait_for(options.wait, &mut child, || {
        read_pid(&dir.join(PID_FILE)) == Some(new_pid)
    });
    if let Err(why) = took_over {
        // It stops waiting once it has the sockets: then it is the one
        // serving (the old one drains), and killing it would leave nobody.
        let alive = child.try_wait().is_ok_and(|status| status.is_none());
        if alive && read_pid(&dir.join(WAITING_FILE)) != Some(new_pid) {
            bail!("the new process (pid {new_pid}) has the sockets but did not take charge ({why}); it is left running, and the old one (pid {old_pid}) drains");
        }
        // Refused or not taken, the old process goes on serving.
        let _ = child.kill();
        let _ = child.wait();
        bail!("the new process did not take the sockets: {why}; the running fledge (pid {old_pid}) goes on serving");
    }
    let ready = wait_for(options.wait, &mut child, || ready(config.admin.listen));
    if let Err(why) = ready {
        bail!(
            "the new process (pid {new_pid}) holds the sockets but its admin listener does not answer /readyz: {why}; the old one (pid {old_pid}) is draining"
        );
    }
    Ok(Done { old_pid, new_pid })
}

/// The pid in `state_dir/fledge.pid`, if that process is alive.
fn running(dir: &Path) -> anyhow::Result<u32> {
    let path = dir.join(PID_FILE);
    let Some(found) = read_pid(&path) else {
        bail!("no running fledge: {} is missing or holds no pid", path.display());
    };
    if nix::sys::signal::kill(pid(found)?, None).is_err() {
        bail!(
            "no running fledge: the process {found} named in {} is gone",
            path.display()
        );
    }
    Ok(found)
}

fn pid(pid: u32) -> anyhow::Result<nix::unistd::Pid> {
    Ok(nix::unistd::Pid::from_raw(
        i32::try_from(pid).context("a pid out of range")?,
    ))
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `fledge run --config F --upgrade`, in a process group of its own (an
/// interrupt of this command does not reach it), outliving this command.
fn spawn(options: &Options) -> anyhow::Result<Child> {
    use std::os::unix::process::CommandExt as _;
    let exe = std::env::current_exe().context("cannot find the fledge binary")?;
    let mut cmd = Command::new(exe);
    cmd.args(["run", "--upgrade", "--config"])
        .arg(&options.config)
        .stdin(Stdio::null())
        .process_group(0);
    if let Some(log) = &options.log {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        cmd.stdout(file.try_clone()?).stderr(file);
    }
    cmd.spawn().context("cannot start the new process")
}

/// Poll `done` until it holds, for up to `limit`. Err: the new process
/// exited first (with its status), or the time ran out.
fn wait_for(limit: Duration, child: &mut Child, mut done: impl FnMut() -> bool) -> Result<(), String> {
    let rounds = limit.as_millis() / POLL.as_millis();
    for _ in 0..=rounds {
        if done() {
            return Ok(());
        }
        match child.try_wait() {
            Ok(Some(status)) => return Err(format!("it exited ({status})")),
            Ok(None) => {}
            Err(e) => return Err(format!("cannot watch it: {e}")),
        }
        std::thread::sleep(POLL);
    }
    Err(format!("not within {} s", limit.as_secs()))
}

/// `GET /readyz` on the admin listener answers 200.
fn ready(admin: std::net::SocketAddr) -> bool {
    let Ok(mut conn) = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(1)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    if conn
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: fledge\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    conn.read_exact(&mut head).is_ok() && &head[9..12] == b"200"
}
