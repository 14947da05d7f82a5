//! `rehearse`: release rehearsals for fledge under Odoo-like load.
//!
//! A scenario file (`scenarios/*.yaml`) says who the virtual users are and
//! what they do, and when faults hit the canary's workers; the runner plays
//! it against a fledge (one it starts on loopback with mock Odoo pools, or
//! an existing deployment), shows progress, writes a report with a chart,
//! and exits non-zero when the policy missed an injected fault or acted on
//! one that was not injected. See `README.md`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

mod client;
mod report;
mod scenario;
mod target;
mod traffic;

use report::Figures;
use scenario::Scenario;
use target::Target;

#[derive(Parser)]
#[command(
    version,
    about = "Rehearse a fledge release under Odoo-like load, with faults"
)]
struct Cli {
    /// Scenario files.
    #[arg(required = true)]
    scenarios: Vec<PathBuf>,
    /// Run each scenario this many times; the summary gives medians and p99s.
    #[arg(long, default_value_t = 1)]
    runs: u32,
    /// Where reports go (default: target/rehearsals/<time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The fledge binary (default: the one built beside this runner).
    #[arg(long)]
    fledge: Option<PathBuf>,
    /// No progress bar (CI logs).
    #[arg(long)]
    quiet: bool,
    /// Self-contained: run this many fledge replicas as one fleet (on a
    /// redis-server the runner starts), users spread over them; overrides
    /// the scenario's `fledge.replicas`.
    #[arg(long)]
    replicas: Option<u32>,
    #[command(flatten)]
    existing: Existing,
}

/// Against an existing deployment instead (staging): all of these.
#[derive(clap::Args)]
struct Existing {
    /// fledge's proxy, e.g. http://staging:8080 (plain HTTP).
    #[arg(long, requires_all = ["host", "tenant", "admin_url", "admin_token_file"])]
    base_url: Option<String>,
    /// The tenant's host name.
    #[arg(long)]
    host: Option<String>,
    /// The tenant's name in fledge.
    #[arg(long)]
    tenant: Option<String>,
    /// fledge's admin API, e.g. http://staging:9901.
    #[arg(long)]
    admin_url: Option<String>,
    /// A file holding the admin token.
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Knob URLs of the canary's mock workers (`/__mock/knobs`), comma-separated.
    #[arg(long, value_delimiter = ',')]
    canary_knobs: Vec<String>,
    /// Knob URLs of the stable pool's mock workers.
    #[arg(long, value_delimiter = ',')]
    stable_knobs: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rehearse: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(rehearse(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("rehearse: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// One run's outcome.
struct Run {
    figures: Figures,
    problems: Vec<String>,
}

async fn rehearse(cli: Cli) -> anyhow::Result<bool> {
    let mut scenarios = cli
        .scenarios
        .iter()
        .map(|p| Scenario::load(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(n) = cli.replicas {
        anyhow::ensure!(n >= 1, "--replicas must be at least 1");
        scenarios.iter_mut().for_each(|s| s.fledge.replicas = n);
    }
    let out = cli.out.clone().unwrap_or_else(|| {
        PathBuf::from("target/rehearsals").join(chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string())
    });
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let fledge = if cli.existing.base_url.is_none() {
        Some(target::fledge_binary(cli.fledge.as_deref())?)
    } else {
        // A rehearsal leaves the deployment's canary as the policy left it
        // (rolled back, say): the next one would start from there.
        anyhow::ensure!(
            cli.runs <= 1 && scenarios.len() == 1,
            "against an existing deployment, one scenario and one run at a time (resume the canary in between)"
        );
        None
    };

    let mut all_passed = true;
    let mut summary = String::from("# Rehearsals\n\n");
    for scenario in &scenarios {
        let mut runs = Vec::new();
        for run in 1..=cli.runs.max(1) {
            let dir = if cli.runs > 1 {
                out.join(format!("{}-{run:02}", scenario.name))
            } else {
                out.join(&scenario.name)
            };
            std::fs::create_dir_all(&dir)?;
            let mut target = match &fledge {
                Some(bin) => Target::start_local(scenario, bin, &dir.join("fledge.log")).await?,
                None => existing_target(&cli.existing)?,
            };
            let r = once(scenario, &mut target, &dir, cli.quiet).await?;
            drop(target);
            let status = if r.problems.is_empty() { "passed" } else { "FAILED" };
            println!(
                "{} (run {run}): {status}; detection {}, 0 % canary {}, {} of {} requests failed{}  → {}",
                scenario.name,
                opt_ms(r.figures.detection_ms),
                opt_ms(r.figures.zero_canary_ms),
                r.figures.failed,
                r.figures.requests,
                r.problems
                    .iter()
                    .map(|p| format!("\n  - {p}"))
                    .collect::<String>(),
                dir.join("report.md").display()
            );
            all_passed &= r.problems.is_empty();
            runs.push(r);
        }
        summary += &summarise(scenario, &runs);
    }
    std::fs::write(out.join("summary.md"), &summary)?;
    if cli.runs > 1 {
        print!("{summary}");
    }
    println!("reports in {}", out.display());
    Ok(all_passed)
}

fn existing_target(e: &Existing) -> anyhow::Result<Target> {
    let token_file = e
        .admin_token_file
        .as_deref()
        .context("--admin-token-file is needed")?;
    let token = std::fs::read_to_string(token_file)
        .with_context(|| format!("cannot read {}", token_file.display()))?
        .trim()
        .to_owned();
    let base = e
        .base_url
        .clone()
        .context("--base-url is needed")?
        .trim_end_matches('/')
        .to_owned();
    let admin = e
        .admin_url
        .clone()
        .context("--admin-url is needed")?
        .trim_end_matches('/')
        .to_owned();
    Ok(Target {
        bases: vec![base],
        admins: vec![admin.clone()],
        down: std::sync::Arc::new(vec![std::sync::atomic::AtomicBool::new(false)]),
        host: e.host.clone().context("--host is needed")?,
        tenant: e.tenant.clone().context("--tenant is needed")?,
        admin,
        token,
        canary_knobs: e.canary_knobs.clone(),
        stable_knobs: e.stable_knobs.clone(),
        local: None,
    })
}

fn opt_ms(t: Option<u64>) -> String {
    t.map_or_else(|| "—".to_owned(), |t| format!("{:.2} s", t as f64 / 1000.0))
}

/// Play `scenario` once and write its report into `dir`.
async fn once(scenario: &Scenario, target: &mut Target, dir: &Path, quiet: bool) -> anyhow::Result<Run> {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new((scenario.duration_seconds * 1000.0) as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix:>20} [{bar:30}] {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(scenario.name.clone());
    let mut last = (0u64, 0u64, 0u64);
    let record = traffic::run(scenario, target, |live, point, now_ms| {
        let (sent, failed) = live.counts();
        // Rate and errors over the last second or so.
        if now_ms >= last.0 + 1000 {
            let dt = (now_ms - last.0) as f64 / 1000.0;
            let rate = (sent - last.1) as f64 / dt;
            let errors = 100.0 * (failed - last.2) as f64 / (sent - last.1).max(1) as f64;
            let canary = point.map_or_else(String::new, |p| format!("canary {:.0} % {}", p.weight, p.state));
            bar.set_message(format!("{rate:>6.0} req/s  errors {errors:>5.1} %  {canary}"));
            last = (now_ms, sent, failed);
        }
        bar.set_position(now_ms);
    })
    .await?;
    bar.finish_and_clear();
    let figures = Figures::of(scenario, &record);
    let problems = figures.problems(scenario, &record);
    report::chart(&record, &dir.join("chart.svg"))?;
    let md = report::markdown(scenario, &record, &figures, &problems, "chart.svg");
    std::fs::write(dir.join("report.md"), md)?;
    Ok(Run { figures, problems })
}

/// Medians and p99s over the runs of one scenario.
fn summarise(scenario: &Scenario, runs: &[Run]) -> String {
    let passed = runs.iter().filter(|r| r.problems.is_empty()).count();
    let mut s = format!(
        "## {}\n\n{passed} of {} runs passed.\n\n",
        scenario.name,
        runs.len()
    );
    let pick = |f: &dyn Fn(&Figures) -> Option<f64>| {
        let mut v: Vec<f64> = runs.iter().filter_map(|r| f(&r.figures)).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let q = |v: &[f64], p: f64| {
        if v.is_empty() {
            return "—".to_owned();
        }
        let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
        format!("{:.2}", v[i])
    };
    s += "| figure | p50 | p99 | runs |\n|---|---|---|---|\n";
    let rows: [(&str, Vec<f64>); 4] = [
        (
            "fault → rollback decided (s)",
            pick(&|f| f.detection_ms.map(|t| t as f64 / 1000.0)),
        ),
        (
            "fault → 0 % canary (s)",
            pick(&|f| f.zero_canary_ms.map(|t| t as f64 / 1000.0)),
        ),
        (
            "client-visible failures in the incident",
            pick(&|f| f.incident_failures.map(|n| n as f64)),
        ),
        ("requests failed (whole run)", pick(&|f| Some(f.failed as f64))),
    ];
    for (name, v) in rows {
        s += &format!("| {name} | {} | {} | {} |\n", q(&v, 0.5), q(&v, 0.99), v.len());
    }
    s.push('\n');
    s
}
