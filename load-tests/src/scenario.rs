//! Scenario files: who the virtual users are, what they do, for how long,
//! and the timeline of faults injected into the mock pools.

use std::path::Path;

use anyhow::{bail, Context as _};
use serde::Deserialize;

/// One rehearsal, as its file says.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name (the report's title, the rehearsal header's value).
    pub name: String,
    /// What it rehearses, in a sentence or two.
    #[serde(default)]
    pub about: String,
    /// How long the load runs.
    pub duration_seconds: f64,
    /// Users start evenly over this long.
    #[serde(default)]
    pub ramp_up_seconds: f64,
    /// Virtual users (each logs in, then acts with think times between).
    pub users: u32,
    /// Open model instead: this many requests a second, spread over the
    /// users' sessions, whatever the answers' latency.
    #[serde(default)]
    pub rate: Option<f64>,
    /// Think time between a user's actions, uniform in this range (ms).
    #[serde(default = "default_think")]
    pub think_time_ms: [u64; 2],
    /// Relative weights of the actions.
    #[serde(default)]
    pub mix: Mix,
    /// The fledge under test, in self-contained mode.
    #[serde(default)]
    pub fledge: Setup,
    /// Faults, in time order.
    #[serde(default)]
    pub faults: Vec<Fault>,
    /// What must happen for the rehearsal to pass.
    #[serde(default)]
    pub expect: Expect,
}

fn default_think() -> [u64; 2] {
    [50, 250]
}

/// Weights of what a user does next.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mix {
    /// JSON-RPC `call_kw` reads.
    pub read: u32,
    /// JSON-RPC `call_kw` writes.
    pub write: u32,
    /// Static asset fetches.
    pub asset: u32,
    /// Share of users (percent) that hold a `/websocket` open, as an Odoo tab
    /// does for the bus.
    pub websocket_percent: u32,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            read: 60,
            write: 10,
            asset: 30,
            websocket_percent: 20,
        }
    }
}

/// The fledge a self-contained rehearsal starts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Setup {
    /// The canary's starting weight (percent); with promotion steps, leave
    /// it out and the first step applies.
    pub canary_weight: Option<f64>,
    /// Workers per pool.
    pub workers: u32,
    /// The tenant's policy, as fledge's config takes it (`analysis`,
    /// `steps`, `step_interval_seconds`, …).
    pub policy: serde_yaml::Value,
    /// fledge replicas forming one fleet on a `redis-server` the runner
    /// starts (1: a single fledge, no Redis); users are spread over them.
    pub replicas: u32,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            canary_weight: Some(50.0),
            workers: 2,
            policy: serde_yaml::Value::Null,
            replicas: 1,
        }
    }
}

/// Which mock pool a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pool {
    /// The release.
    Canary,
    /// The running version.
    Stable,
    /// Both: a platform incident.
    Both,
}

/// One fault, from `at_seconds` on (until a later fault changes the same
/// pool's knobs).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// When, from the start of the load.
    pub at_seconds: f64,
    /// Which pool (default: the canary).
    #[serde(default = "canary")]
    pub pool: Pool,
    /// Share of requests answered with HTTP 500.
    #[serde(default)]
    pub error_rate: Option<f64>,
    /// Share of JSON-RPC calls answered with HTTP 200 and an `error`.
    #[serde(default)]
    pub jsonrpc_error_rate: Option<f64>,
    /// Latency added to every answer.
    #[serde(default)]
    pub latency_ms: Option<u64>,
    /// The workers crash: they stop accepting and drop what they hold.
    #[serde(default)]
    pub crash: bool,
    /// With a fleet (`fledge.replicas` > 1): the replica leading it is
    /// killed (SIGKILL) at this moment too, and its users move to the
    /// others, as a load balancer would send them.
    #[serde(default)]
    pub kill_leader: bool,
    /// Not a fault: reload fledge's config (self-contained: the file is
    /// rewritten and the watcher reloads it; otherwise `POST
    /// /api/v1/reload`), every `every_seconds` until `until_seconds`.
    #[serde(default)]
    pub reload: bool,
    /// Repeat interval of a reload.
    #[serde(default)]
    pub every_seconds: Option<f64>,
    /// Last repeat of a reload.
    #[serde(default)]
    pub until_seconds: Option<f64>,
}

fn canary() -> Pool {
    Pool::Canary
}

impl Fault {
    /// Whether it makes a pool misbehave (a reload does not).
    pub fn is_fault(&self) -> bool {
        self.crash
            || self.error_rate.is_some_and(|r| r > 0.0)
            || self.jsonrpc_error_rate.is_some_and(|r| r > 0.0)
            || self.latency_ms.is_some_and(|l| l > 0)
    }

    /// A one-line description for the report.
    pub fn describe(&self) -> String {
        if self.reload {
            return match self.every_seconds {
                Some(every) => format!("config reloads every {every} s"),
                None => "config reload".to_owned(),
            };
        }
        let mut parts = Vec::new();
        if self.kill_leader {
            parts.push("fleet leader killed".to_owned());
        }
        if self.crash {
            parts.push("crash".to_owned());
        }
        if let Some(r) = self.error_rate {
            parts.push(format!("{:.0} % HTTP 500", r * 100.0));
        }
        if let Some(r) = self.jsonrpc_error_rate {
            parts.push(format!("{:.0} % JSON-RPC errors", r * 100.0));
        }
        if let Some(l) = self.latency_ms {
            parts.push(format!("+{l} ms"));
        }
        if parts.is_empty() {
            parts.push("healthy again".to_owned());
        }
        format!("{:?}: {}", self.pool, parts.join(", ")).to_lowercase()
    }
}

/// Pass conditions.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The canary must be rolled back by the policy (default: when a fault
    /// hits the canary alone), or must not be (default otherwise).
    pub rollback: Option<bool>,
    /// The canary must be promoted by the end.
    #[serde(default)]
    pub promoted: bool,
    /// Most client-visible failures allowed, in percent of requests.
    pub max_failed_percent: Option<f64>,
}

impl Scenario {
    /// Read and check `path`.
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let s: Scenario =
            serde_yaml::from_str(&text).with_context(|| format!("{}: not a scenario", path.display()))?;
        s.check()
            .with_context(|| format!("{}: not a usable scenario", path.display()))?;
        Ok(s)
    }

    fn check(&self) -> anyhow::Result<()> {
        let seconds = |v: f64| v.is_finite() && (0.0..=86_400.0).contains(&v);
        if !seconds(self.duration_seconds) || self.duration_seconds == 0.0 {
            bail!("duration_seconds must be positive and at most a day");
        }
        if !seconds(self.ramp_up_seconds) {
            bail!("ramp_up_seconds must be 0 or more, at most a day");
        }
        if self.users > 100_000 {
            bail!("users: at most 100 000");
        }
        if self.users == 0 {
            bail!("users must be at least 1");
        }
        if self.think_time_ms[0] > self.think_time_ms[1] {
            bail!("think_time_ms is [min, max]");
        }
        if self.mix.read + self.mix.write + self.mix.asset == 0 {
            bail!("mix: read, write and asset cannot all be 0");
        }
        if self
            .rate
            .is_some_and(|r| !(r.is_finite() && r > 0.0 && r <= 1_000_000.0))
        {
            bail!("rate must be positive, at most 1 000 000 a second");
        }
        for f in &self.faults {
            if !seconds(f.at_seconds) || f.at_seconds > self.duration_seconds {
                bail!("a fault at {} s is outside the run", f.at_seconds);
            }
            if f.every_seconds.is_some_and(|e| !(e.is_finite() && e >= 0.1)) {
                bail!("every_seconds must be at least 0.1");
            }
            for r in [f.error_rate, f.jsonrpc_error_rate].into_iter().flatten() {
                if !(0.0..=1.0).contains(&r) {
                    bail!("rates are shares, 0.0 to 1.0 (got {r})");
                }
            }
        }
        Ok(())
    }

    /// The first fault on the canary alone: what the policy must catch.
    pub fn canary_fault(&self) -> Option<&Fault> {
        self.faults
            .iter()
            .find(|f| f.is_fault() && f.pool == Pool::Canary)
    }

    /// Whether the policy must roll the canary back.
    pub fn expects_rollback(&self) -> bool {
        self.expect
            .rollback
            .unwrap_or_else(|| self.canary_fault().is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Scenario> {
        let s: Scenario = serde_yaml::from_str(text)?;
        s.check()?;
        Ok(s)
    }

    #[test]
    fn the_shipped_scenarios_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            n += 1;
        }
        assert!(n >= 7, "{n} scenarios");
    }

    #[test]
    fn a_rollback_is_expected_for_a_canary_fault_only() {
        let base = "name: x\nduration_seconds: 5\nusers: 1\n";
        let canary = parse(&format!("{base}faults: [{{at_seconds: 1, error_rate: 0.3}}]")).unwrap();
        assert!(canary.expects_rollback());
        let both = parse(&format!(
            "{base}faults: [{{at_seconds: 1, pool: both, error_rate: 0.3}}]"
        ))
        .unwrap();
        assert!(!both.expects_rollback());
        let reload = parse(&format!(
            "{base}faults: [{{at_seconds: 1, reload: true, every_seconds: 0.5}}]"
        ))
        .unwrap();
        assert!(!reload.expects_rollback());
        let told = parse(&format!("{base}expect: {{rollback: true}}")).unwrap();
        assert!(told.expects_rollback());
    }

    #[test]
    fn mistakes_are_refused() {
        let base = "name: x\nduration_seconds: 5\nusers: 1\n";
        for bad in [
            "faults: [{at_seconds: 9, error_rate: 0.3}]",
            "faults: [{at_seconds: 1, error_rate: 30}]",
            "faults: [{at_seconds: 1, eror_rate: 0.3}]",
            "think_time_ms: [200, 100]",
            "mix: {read: 0, write: 0, asset: 0}",
            "rate: 0",
            "rate: .nan",
            "ramp_up_seconds: -1",
            "faults: [{at_seconds: 1, reload: true, every_seconds: 0.001}]",
        ] {
            assert!(parse(&format!("{base}{bad}")).is_err(), "{bad}");
        }
        assert!(parse("name: x\nduration_seconds: 0\nusers: 1\n").is_err());
    }
}
