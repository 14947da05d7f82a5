//! What a rehearsal runs against: a fledge and the mock pools behind it.
//! Self-contained, it starts them all on loopback (the mock Odoo workers in
//! this process, fledge as a child process); against an existing
//! deployment, it is given their addresses.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use fledge::mock_odoo::{MockOdoo, Options};

use crate::client::Http;
use crate::scenario::{Fault, Pool, Scenario};

/// The tenant a self-contained rehearsal routes.
const TENANT: &str = "rehearsal";
const HOST: &str = "rehearsal.example.com";

/// Where the traffic goes and how to steer the pools.
pub struct Target {
    /// The Host header of the tenant.
    pub host: String,
    /// The tenant's name in fledge.
    pub tenant: String,
    /// fledge's admin listener, `http://host:port`.
    pub admin: String,
    /// Every replica's proxy listener, `http://host:port`: users are
    /// spread over them.
    pub bases: Vec<String>,
    /// Every replica's admin listener (the first is `admin`).
    pub admins: Vec<String>,
    /// Replicas killed by the rehearsal: their users go to the next one.
    pub down: Arc<Vec<AtomicBool>>,
    /// The admin API's bearer token.
    pub token: String,
    /// The mock workers' knob URLs, by pool.
    pub canary_knobs: Vec<String>,
    /// The stable pool's.
    pub stable_knobs: Vec<String>,
    /// What a self-contained run started, stopped when dropped.
    pub local: Option<Local>,
}

/// A self-contained rehearsal's processes.
pub struct Local {
    fledge: Vec<tokio::process::Child>,
    redis: Option<tokio::process::Child>,
    canary: Vec<MockOdoo>,
    stable: Vec<MockOdoo>,
    config: PathBuf,
    reloads: u32,
    /// fledge's log.
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Local {
    fn drop(&mut self) {
        for f in &mut self.fledge {
            let _ = f.start_kill();
        }
        if let Some(r) = &mut self.redis {
            let _ = r.start_kill();
        }
        for m in self.canary.iter().chain(&self.stable) {
            m.stop();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The `fledge` binary: `explicit`, or the one built beside this runner.
pub fn fledge_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_owned());
    }
    let me = std::env::current_exe()?;
    let beside = me.with_file_name("fledge");
    if beside.exists() {
        return Ok(beside);
    }
    bail!(
        "no fledge binary beside {}: build it (cargo build --release -p fledge) or pass --fledge",
        me.display()
    )
}

impl Target {
    /// Start mock pools and fledge for `scenario` on loopback; fledge's log
    /// goes to `log`.
    pub async fn start_local(scenario: &Scenario, fledge: &Path, log: &Path) -> anyhow::Result<Target> {
        let pool = |version: &str| {
            let version = version.to_owned();
            async move {
                let mut workers = Vec::new();
                for _ in 0..scenario.fledge.workers.max(1) {
                    let mut options = Options::new(&version);
                    options.push_interval = Some(Duration::from_secs(5));
                    workers.push(MockOdoo::start("127.0.0.1:0".parse()?, options).await?);
                }
                anyhow::Ok(workers)
            }
        };
        let stable = pool("17.0").await?;
        let canary = pool("18.0").await?;
        let dir = tempfile::tempdir()?;
        let token = format!("rehearsal-{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        std::fs::write(dir.path().join("token"), &token)?;
        let replicas = scenario.fledge.replicas.max(1);
        // A fleet: one redis-server for it, thrown away with the run.
        let redis = if replicas > 1 {
            let port = free_port()?;
            let child = tokio::process::Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("cannot start redis-server (apt-get install redis-server) for --replicas")?;
            Some((child, port))
        } else {
            None
        };
        let mut children = Vec::new();
        let (mut bases, mut admins) = (Vec::new(), Vec::new());
        let mut first_config = None;
        for i in 0..replicas {
            let (listen, admin) = (free_port()?, free_port()?);
            // Beside the report, so that it shows what was rehearsed.
            let (config, log) = if i == 0 {
                (log.with_file_name("fledge.yaml"), log.to_owned())
            } else {
                (
                    log.with_file_name(format!("fledge-{i}.yaml")),
                    log.with_file_name(format!("fledge-{i}.log")),
                )
            };
            let state = dir.path().join(format!("state-{i}"));
            let mut text = config_text(
                scenario,
                listen,
                admin,
                &state,
                &dir.path().join("token"),
                &stable,
                &canary,
            )?;
            if let Some((_, port)) = &redis {
                text += &format!(
                    "cookies:\n  secret_env: FLEDGE_REHEARSAL_COOKIE_SECRET\n\
                     fleet:\n  redis_url: \"redis://127.0.0.1:{port}/0\"\n  name: \"rehearsal\"\n  replica_id: \"replica-{i}\"\n"
                );
            }
            std::fs::write(&config, text)?;
            let log_file =
                std::fs::File::create(&log).with_context(|| format!("cannot write {}", log.display()))?;
            let child = tokio::process::Command::new(fledge)
                .args(["run", "--config"])
                .arg(&config)
                .env("RUST_LOG", "info")
                .env("FLEDGE_REHEARSAL_COOKIE_SECRET", &token)
                .stdout(Stdio::null())
                .stderr(log_file)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("cannot start {}", fledge.display()))?;
            children.push(child);
            bases.push(format!("http://127.0.0.1:{listen}"));
            admins.push(format!("http://127.0.0.1:{admin}"));
            first_config.get_or_insert(config);
        }
        let knobs = |ms: &[MockOdoo]| ms.iter().map(|m| knob_url(m.addr())).collect();
        let target = Target {
            host: HOST.to_owned(),
            tenant: TENANT.to_owned(),
            admin: admins[0].clone(),
            down: Arc::new(bases.iter().map(|_| AtomicBool::new(false)).collect()),
            bases,
            admins,
            token,
            canary_knobs: knobs(&canary),
            stable_knobs: knobs(&stable),
            local: Some(Local {
                fledge: children,
                redis: redis.map(|(c, _)| c),
                canary,
                stable,
                config: first_config.unwrap_or_default(),
                reloads: 0,
                log: log.to_owned(),
                _dir: dir,
            }),
        };
        target.wait_ready().await?;
        Ok(target)
    }

    /// Wait until every replica's admin API answers with the tenant (and,
    /// in a fleet, every replica sees all of them).
    async fn wait_ready(&self) -> anyhow::Result<()> {
        let http = Http::new();
        let path = format!("/api/v1/tenants/{}", self.tenant);
        for _ in 0..200 {
            let mut ready = true;
            for admin in &self.admins {
                ready &= http.admin_get_at(self, admin, &path).await.is_ok();
                if self.admins.len() > 1 {
                    let fleet = http.admin_get_at(self, admin, "/api/v1/fleet").await;
                    ready &= fleet.is_ok_and(|f| {
                        f["totals"]["live_replicas"].as_u64() == Some(self.admins.len() as u64)
                            && !f["leader"].is_null()
                    });
                }
            }
            if ready {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "fledge did not come up in 10 s (its log: {:?})",
            self.local.as_ref().map(|l| &l.log)
        )
    }

    /// Apply `fault`.
    pub async fn inject(&mut self, http: &Http, fault: &Fault) -> anyhow::Result<()> {
        if fault.reload {
            return self.reload(http).await;
        }
        let urls: Vec<String> = match fault.pool {
            Pool::Canary => self.canary_knobs.clone(),
            Pool::Stable => self.stable_knobs.clone(),
            Pool::Both => self
                .canary_knobs
                .iter()
                .chain(&self.stable_knobs)
                .cloned()
                .collect(),
        };
        let body = serde_json::json!({
            "error_rate": fault.error_rate.unwrap_or(0.0),
            "jsonrpc_error_rate": fault.jsonrpc_error_rate.unwrap_or(0.0),
            "latency_ms": fault.latency_ms.unwrap_or(0),
            // A crash drops what the workers hold...
            "close_rate": if fault.crash { 1.0 } else { 0.0 },
        });
        for url in &urls {
            http.put_json(url, &body)
                .await
                .with_context(|| format!("cannot set the knobs at {url}"))?;
        }
        if fault.kill_leader {
            self.kill_leader(http).await?;
        }
        // ... and, where we own them, they stop accepting too.
        if let (true, Some(local)) = (fault.crash, &self.local) {
            let crashed: Vec<&MockOdoo> = match fault.pool {
                Pool::Canary => local.canary.iter().collect(),
                Pool::Stable => local.stable.iter().collect(),
                Pool::Both => local.canary.iter().chain(&local.stable).collect(),
            };
            crashed.iter().for_each(|m| m.stop());
        }
        Ok(())
    }

    /// Kill the fleet's leader (self-contained runs only) and send its
    /// users elsewhere.
    async fn kill_leader(&mut self, http: &Http) -> anyhow::Result<()> {
        let fleet = http
            .admin_get(self, "/api/v1/fleet")
            .await
            .context("kill_leader needs a fleet")?;
        let leader = fleet["leader"].as_str().context("the fleet has no leader")?;
        let i: usize = leader
            .strip_prefix("replica-")
            .and_then(|i| i.parse().ok())
            .with_context(|| format!("leader `{leader}` is not one of this rehearsal's replicas"))?;
        let local = self
            .local
            .as_mut()
            .context("kill_leader needs a self-contained rehearsal")?;
        local.fledge[i].start_kill()?;
        self.down[i].store(true, Relaxed);
        if i == 0 {
            // The admin API to ask from now on.
            if let Some(j) = (1..self.admins.len()).find(|j| !self.down[*j].load(Relaxed)) {
                self.admin = self.admins[j].clone();
            }
        }
        Ok(())
    }

    /// Put every mock worker back to healthy: a rehearsal on a shared
    /// staging leaves no fault behind (the canary's state is fledge's, and
    /// stays as the policy left it).
    pub async fn heal(&self, http: &Http) {
        let healthy = serde_json::json!({ "error_rate": 0.0, "jsonrpc_error_rate": 0.0, "latency_ms": 0, "close_rate": 0.0 });
        for url in self.canary_knobs.iter().chain(&self.stable_knobs) {
            if let Err(e) = http.put_json(url, &healthy).await {
                eprintln!("rehearse: could not reset the knobs at {url}: {e:#}");
            }
        }
    }

    /// Reload fledge's config: rewrite the file (self-contained), or ask
    /// the admin API.
    async fn reload(&mut self, http: &Http) -> anyhow::Result<()> {
        match &mut self.local {
            Some(local) => {
                local.reloads += 1;
                let text = std::fs::read_to_string(&local.config)?;
                let text = format!("{}\n# rehearsal reload {}\n", text.trim_end(), local.reloads);
                let tmp = local.config.with_extension("yaml.tmp");
                std::fs::write(&tmp, text)?;
                std::fs::rename(&tmp, &local.config)?;
                Ok(())
            }
            None => http.admin_post(self, "/api/v1/reload").await.map(drop),
        }
    }
}

fn knob_url(addr: SocketAddr) -> String {
    format!("http://{addr}/__mock/knobs")
}

/// fledge's config for a self-contained rehearsal.
fn config_text(
    scenario: &Scenario,
    listen: u16,
    admin: u16,
    state: &Path,
    token: &Path,
    stable: &[MockOdoo],
    canary: &[MockOdoo],
) -> anyhow::Result<String> {
    let list = |ms: &[MockOdoo]| {
        ms.iter()
            .map(|m| format!("\"{}\"", m.addr()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let policy = match &scenario.fledge.policy {
        serde_yaml::Value::Null => "{}".to_owned(),
        p => serde_json::to_string(p)?,
    };
    let weight = scenario
        .fledge
        .canary_weight
        .map(|w| format!("    canary_weight: {w}\n"))
        .unwrap_or_default();
    Ok(format!(
        "listen: \"127.0.0.1:{listen}\"\nthreads: 2\nstate_dir: \"{state}\"\n\
         admin:\n  listen: \"127.0.0.1:{admin}\"\n  token_file: \"{token}\"\n\
         rehearsal:\n  from: [\"127.0.0.0/8\"]\n\
         pools:\n  stable: {{ workers: [{s}], websocket_workers: [{s}] }}\n  \
         canary: {{ workers: [{c}], websocket_workers: [{c}] }}\n\
         policies:\n  rehearsal: {policy}\n\
         tenants:\n  {TENANT}:\n    hosts: [\"{HOST}\"]\n    stable: stable\n    canary: canary\n{weight}    policy: rehearsal\n",
        state = state.display(),
        token = token.display(),
        s = list(stable),
        c = list(canary),
    ))
}
