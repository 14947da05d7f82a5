//! The `fledge` command: parse the command line, set up logging, hand over
//! to the library. No logic lives here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use fledge::{config, demo, mock_odoo, server};
use tracing_subscriber::EnvFilter;

/// mimalloc, as Pingora's own examples use a non-glibc allocator: glibc's
/// malloc spends a tenth of the proxy's CPU in free/consolidate under load.
/// Built with `no_thp` (`alloc/Cargo.toml`): with transparent huge pages
/// mimalloc backs its arenas with 2 MiB pages, which made the idle process
/// 23 MiB instead of 11. Through `fledge-alloc` (`alloc/`), which asks
/// mimalloc for an alignment only when a block's own falls short.
#[global_allocator]
static GLOBAL: fledge_alloc::Mimalloc = fledge_alloc::Mimalloc;

/// Progressive-delivery edge proxy for hosted Odoo.
#[derive(Parser)]
#[command(name = "fledge", version, about)]
struct Cli {
    /// Log filter (tracing's EnvFilter syntax).
    #[arg(
        long,
        global = true,
        env = "FLEDGE_LOG",
        default_value = "info,pingora_core=warn,pingora_proxy=warn"
    )]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Take the listening sockets over from a running fledge, which is
        /// then sent SIGQUIT (zero-downtime upgrade).
        #[arg(long)]
        upgrade: bool,
    },
    /// Replace the running fledge with a new process on this config, every
    /// step checked: exits non-zero, saying why, with the old process still
    /// serving, when one fails (`fledge::upgrade`).
    Upgrade {
        /// The new process's config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Append the new process's output (its log) to this file
        /// (default: this command's stdout and stderr).
        #[arg(long)]
        output: Option<PathBuf>,
        /// How long each step may take, in seconds.
        #[arg(long, default_value_t = 30)]
        wait_seconds: u64,
    },
    /// Validate a config file; exit non-zero and say why if it is refused.
    Check {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the embedded demo: mock Odoo 17.0 and 18.0 pools and the proxy.
    Demo {
        /// Use this config instead of the embedded one.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Drive a running fledge through its admin API (token in FLEDGE_ADMIN_TOKEN).
    Ctl {
        /// Address of the admin listener.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: String,
        /// Read the token from this file instead of FLEDGE_ADMIN_TOKEN.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        command: CtlCommand,
    },
    /// Run a mock Odoo worker (for tests, demos and rehearsals).
    MockOdoo {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:18069")]
        listen: SocketAddr,
        /// Odoo version to play.
        #[arg(long, default_value = "17.0")]
        version: String,
        /// Share of requests answered with HTTP 500.
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
        /// Share of JSON-RPC calls answered with HTTP 200 and an `error`
        /// member that is a server fault (`builtins.ZeroDivisionError`).
        #[arg(long, default_value_t = 0.0)]
        jsonrpc_error_rate: f64,
        /// Share of JSON-RPC calls answered with an `odoo.exceptions.UserError`.
        #[arg(long, default_value_t = 0.0)]
        user_error_rate: f64,
        /// Answer JSON-RPC calls whose `session_id` no mock issued as Odoo
        /// does: `SessionExpiredException`, code 100.
        #[arg(long)]
        check_sessions: bool,
        /// Delay added to every answer, in milliseconds.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Share of requests whose connection is dropped without an answer.
        #[arg(long, default_value_t = 0.0)]
        close_rate: f64,
        /// Interval of pushed bus notifications on /websocket (0: none).
        #[arg(long, default_value_t = 0)]
        push_interval_ms: u64,
        /// How long /longpolling/poll holds a request, in milliseconds.
        #[arg(long, default_value_t = 50_000)]
        longpoll_hold_ms: u64,
    },
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Every tenant: state, weight, verdict, live figures.
    Status,
    /// Set a tenant's canary weight (percent).
    Weight {
        /// The tenant.
        tenant: String,
        /// Percent, 0 to 100.
        percent: f64,
    },
    /// Send a tenant's canary to 100 %.
    Promote {
        /// The tenant.
        tenant: String,
    },
    /// Send a tenant's canary to 0 %.
    Rollback {
        /// The tenant.
        tenant: String,
    },
    /// Freeze a tenant's canary where it is.
    Pause {
        /// The tenant.
        tenant: String,
    },
    /// Unfreeze a paused canary or re-arm a rolled-back one.
    Resume {
        /// The tenant.
        tenant: String,
    },
    /// Re-read the config file.
    Reload,
    /// The decision journal.
    Journal {
        /// Only entries after this (Unix milliseconds or RFC 3339).
        #[arg(long)]
        since: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `fledge run` logs as its file says (`log.format`): the file is read
    // first, quietly; a file that cannot be read is refused below, in text.
    let format = match &cli.command {
        Command::Run { config, .. } => config::load(config).map(|c| c.log_format).unwrap_or_default(),
        _ => config::LogFormat::Text,
    };
    let filter = EnvFilter::try_new(&cli.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        config::LogFormat::Text => logs.init(),
        config::LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fledge: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config, upgrade } => {
            // Absolute, but symlinks kept: a ConfigMap's file is a symlink
            // into `..data`, and the watcher must watch its directory.
            let source = std::path::absolute(&config).unwrap_or(config);
            let config = config::load(&source)?;
            let options = server::Options {
                upgrade,
                source: Some(source),
            };
            let server = server::build(&config, &options)?;
            // The control plane holds its own copy; `run` never returns.
            drop(config);
            server.run()
        }
        Command::Upgrade {
            config,
            output,
            wait_seconds,
        } => {
            let options = fledge::upgrade::Options {
                config: std::path::absolute(&config).unwrap_or(config),
                log: output,
                wait: Duration::from_secs(wait_seconds),
            };
            let done = fledge::upgrade::run(&options)?;
            println!(
                "upgraded: pid {} serves; the old one ({}) drains its requests in flight and exits",
                done.new_pid, done.old_pid
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => match config::load(&config) {
            Ok(c) => {
                // What `fledge run` would refuse beyond the file.
                let (refused, notes) = fledge::server::preflight(&c);
                for note in &notes {
                    eprintln!("{}: note: {note}", config.display());
                }
                if !refused.is_empty() {
                    for why in &refused {
                        eprintln!("{}: {why}", config.display());
                    }
                    return Ok(ExitCode::FAILURE);
                }
                println!(
                    "{}: ok ({} tenants, {} pools, {} policies)",
                    config.display(),
                    c.tenants.len(),
                    c.pools.len(),
                    c.policies.len()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Demo { config } => {
            let mut config = match config {
                Some(path) => config::load(&path)?,
                None => config::parse(demo::DEMO_CONFIG, "config/demo.yaml (embedded)")?,
            };
            // The demo's canary states live as long as the demo.
            // A private directory of its own (mkdtemp, 0700), kept after
            // the demo for its journal: not a name anyone can guess and
            // make first.
            config.state_dir = tempfile::Builder::new()
                .prefix("fledge-demo-")
                .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .tempdir()
                .context("cannot make the demo's state directory")?
                .keep();
            if config.tls.is_some() {
                let certs_dir = config.state_dir.join("certs");
                demo::self_signed_certificate(&config, &certs_dir)?;
                if let Some(tls) = &mut config.tls {
                    tls.certs_dir = certs_dir;
                }
            }
            demo::start_mocks(&config)?;
            let server = server::build(&config, &server::Options::default())?;
            println!("{}", demo::instructions(&config));
            server.run()
        }
        Command::Ctl {
            admin,
            token_file,
            json,
            command,
        } => {
            let token = match token_file {
                Some(f) => Some(
                    std::fs::read_to_string(&f)
                        .with_context(|| format!("cannot read {}", f.display()))?
                        .trim()
                        .to_owned(),
                ),
                None => std::env::var(fledge::ctl::TOKEN_ENV).ok(),
            };
            let target = fledge::ctl::Target { admin, token, json };
            let command = match command {
                CtlCommand::Status => fledge::ctl::Command::Status,
                CtlCommand::Weight { tenant, percent } => fledge::ctl::Command::Weight { tenant, percent },
                CtlCommand::Promote { tenant } => fledge::ctl::Command::Action {
                    tenant,
                    action: "promote",
                },
                CtlCommand::Rollback { tenant } => fledge::ctl::Command::Action {
                    tenant,
                    action: "rollback",
                },
                CtlCommand::Pause { tenant } => fledge::ctl::Command::Action {
                    tenant,
                    action: "pause",
                },
                CtlCommand::Resume { tenant } => fledge::ctl::Command::Action {
                    tenant,
                    action: "resume",
                },
                CtlCommand::Reload => fledge::ctl::Command::Reload,
                CtlCommand::Journal { since } => fledge::ctl::Command::Journal { since },
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start a tokio runtime")?;
            print!("{}", rt.block_on(fledge::ctl::run(&target, &command))?);
            Ok(ExitCode::SUCCESS)
        }
        Command::MockOdoo {
            listen,
            version,
            error_rate,
            jsonrpc_error_rate,
            user_error_rate,
            check_sessions,
            latency_ms,
            close_rate,
            push_interval_ms,
            longpoll_hold_ms,
        } => {
            let mut options = mock_odoo::Options::new(&version);
            options.knobs = mock_odoo::Knobs {
                error_rate,
                jsonrpc_error_rate,
                user_error_rate,
                check_sessions,
                latency_ms,
                close_rate,
                health_status: 0,
            };
            options.push_interval = (push_interval_ms > 0).then(|| Duration::from_millis(push_interval_ms));
            options.longpoll_hold = Duration::from_millis(longpoll_hold_ms);
            let rt = tokio::runtime::Runtime::new().context("cannot start a tokio runtime")?;
            rt.block_on(async {
                let mock = mock_odoo::MockOdoo::start(listen, options)
                    .await
                    .with_context(|| format!("cannot listen on {listen}"))?;
                eprintln!("mock Odoo {version} listening on http://{}", mock.addr());
                tokio::signal::ctrl_c().await.context("cannot wait for Ctrl-C")?;
                Ok(ExitCode::SUCCESS)
            })
        }
    }
}
