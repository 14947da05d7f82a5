//! `fledge demo`: mock Odoo pools plus the proxy, on loopback, with the curl
//! lines that show the split, stickiness and the override header.
//!
//! Every worker address of every pool in the demo config gets a mock Odoo;
//! a pool named `odooNN` plays version `NN.0`.

use std::thread;

use anyhow::Context as _;

use crate::config::Config;
use crate::mock_odoo::{MockOdoo, Options};

/// The embedded demo config.
pub const DEMO_CONFIG: &str = include_str!("../config/demo.yaml");

/// Version a demo pool plays, from its name (`odoo18` → `18.0`).
fn version_of(pool: &str) -> String {
    let digits: String = pool.chars().filter(char::is_ascii_digit).collect();
    if digits.is_empty() {
        pool.to_owned()
    } else {
        format!("{digits}.0")
    }
}

/// Start a mock Odoo on every worker address of `config`, on a thread of
/// their own. Returns once they all listen.
pub fn start_mocks(config: &Config) -> anyhow::Result<()> {
    let mut plan = Vec::new();
    for (name, pool) in &config.pools {
        for addr in pool.workers.iter().chain(&pool.websocket_workers) {
            plan.push((*addr, version_of(name)));
        }
    }
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    thread::Builder::new()
        .name("mock-odoo".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow::Error::from(e)));
                    return;
                }
            };
            rt.block_on(async move {
                let mut mocks = Vec::new();
                for (addr, version) in plan {
                    let mut options = Options::new(&version);
                    options.push_interval = Some(std::time::Duration::from_secs(10));
                    match MockOdoo::start(addr, options).await {
                        Ok(m) => mocks.push(m),
                        Err(e) => {
                            let _ = ready_tx
                                .send(Err(anyhow::Error::from(e)
                                    .context(format!("mock Odoo cannot listen on {addr}"))));
                            return;
                        }
                    }
                }
                let _ = ready_tx.send(Ok(()));
                std::future::pending::<()>().await;
                drop(mocks);
            });
        })
        .context("cannot start the mock Odoo thread")?;
    ready_rx.recv().context("mock Odoo thread died")?
}

/// Write a self-signed certificate for `localhost`, `*.localhost` and every
/// exact or wildcard host of `config`'s tenants into `dir`, as its `default`
/// pair: made at start, never committed, never trusted by anything but the
/// `curl -k` of the instructions.
pub fn self_signed_certificate(config: &Config, dir: &std::path::Path) -> anyhow::Result<()> {
    let mut names = vec!["localhost".to_owned(), "*.localhost".to_owned()];
    for t in config.tenants.values() {
        for h in &t.hosts {
            let name = match h {
                crate::config::HostPattern::Exact(n) => n.clone(),
                crate::config::HostPattern::Wildcard(s) => format!("*.{s}"),
            };
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    let made = rcgen::generate_simple_self_signed(names).context("cannot make the demo certificate")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let pair = dir.join(crate::tls::DEFAULT_PAIR);
    std::fs::write(pair.with_extension("crt"), made.cert.pem())?;
    // The key readable by us alone, as fledge wants keys.
    crate::state_dir::write_atomically(
        dir,
        &format!("{}.key", crate::tls::DEFAULT_PAIR),
        made.key_pair.serialize_pem().as_bytes(),
    )?;
    Ok(())
}

/// The curl lines printed at start.
pub fn instructions(config: &Config) -> String {
    // `make demo` runs fledge through cargo: it is not on the PATH.
    let fledge = std::env::current_exe()
        .map(|e| e.display().to_string())
        .unwrap_or_else(|_| "fledge".to_owned());
    let p = config.listen;
    let a = config.admin.listen;
    // The first worker of acme's canary pool, whose knobs break it.
    let canary = config
        .tenants
        .get("acme")
        .and_then(|t| t.canary.as_ref())
        .and_then(|pool| config.pools.get(pool))
        .and_then(|pool| pool.workers.first())
        .map_or_else(|| "127.0.0.1:19069".to_owned(), ToString::to_string);
    let token = config
        .state_dir
        .join(crate::server::GENERATED_TOKEN_FILE)
        .display()
        .to_string();
    let https = match &config.tls {
        Some(tls) => {
            let s = tls.listen;
            let port = s.port();
            format!(
                "
HTTPS (self-signed certificate, hence -k), HTTP/2 by ALPN:
  curl -sk --resolve acme.localhost:{port}:{ip} -o /dev/null -w '%{{http_version}} %{{http_code}}\\n' https://acme.localhost:{port}/web/login
globex redirects plain HTTP to HTTPS (308):
  curl -si -H 'Host: globex.localhost' http://{p}/web/login | grep -i -E '^(HTTP|location)'
",
                ip = s.ip()
            )
        }
        None => String::new(),
    };
    format!(
        "\
fledge demo: proxy on http://{p}, tenants `acme` (17.0 stable, 18.0 canary at 20%) and `globex` (17.0 only)

Which version serves you (X-Fledge-Version, X-Odoo-Version):
  curl -si -H 'Host: acme.localhost' http://{p}/web/login | grep -i -E '^x-(fledge|odoo)-version'

The split, over 1000 new clients (different session ids), about 200 land on the canary:
  for i in $(seq 1000); do curl -s -o /dev/null -w '%{{header_json}}\\n' -H 'Host: acme.localhost' -b \"session_id=user$i\" http://{p}/web/login; done | grep -o '\"x-fledge-version\":\\[\"[a-z]*' | sort | uniq -c

Stickiness: one session keeps its version over 20 requests:
  for i in $(seq 20); do curl -s -o /dev/null -D - -H 'Host: acme.localhost' -b 'session_id=alice' http://{p}/web/login | grep -i '^x-fledge-version'; done | sort | uniq -c

The override header (allowed from loopback):
  curl -si -H 'Host: acme.localhost' -H 'X-Fledge-Version: canary' http://{p}/web/login | grep -i '^x-odoo-version'

A JSON-RPC call:
  curl -s -H 'Host: acme.localhost' -H 'Content-Type: application/json' -d '{{\"jsonrpc\":\"2.0\",\"method\":\"call\",\"params\":{{}},\"id\":1}}' http://{p}/web/session/get_session_info

An unknown host:
  curl -si -H 'Host: nobody.localhost' http://{p}/
{https}
The admin API, metrics and fledge ctl (token generated into the demo's state directory):
  export FLEDGE_ADMIN_TOKEN=$(cat {token})
  curl -s -H \"Authorization: Bearer $FLEDGE_ADMIN_TOKEN\" http://{a}/metrics | grep ^fledge_
  {fledge} ctl --admin {a} status
  {fledge} ctl --admin {a} weight acme 50
  curl -s -X PUT -d '{{\"error_rate\": 0.5}}' http://{canary}/__mock/knobs   # break the canary: watch it roll back
  {fledge} ctl --admin {a} journal

Ctrl-C stops the demo.
"
    )
}
