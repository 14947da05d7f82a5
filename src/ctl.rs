//! `fledge ctl`: the admin API's command-line client.
//!
//! Readable tables by default, `--json` for scripts. The token comes from
//! `FLEDGE_ADMIN_TOKEN` (or `--token-file`), the address from `--admin`.
//! Unreachable proxies and refused tokens get a sentence saying what to do.

use std::fmt::Write as _;

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Environment variable holding the admin token.
pub const TOKEN_ENV: &str = "FLEDGE_ADMIN_TOKEN";

/// What to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Every tenant's canary.
    Status,
    /// Set a weight.
    Weight {
        /// Tenant.
        tenant: String,
        /// Percent.
        percent: f64,
    },
    /// `promote`, `rollback`, `pause` or `resume` a tenant's canary.
    Action {
        /// Tenant.
        tenant: String,
        /// The action.
        action: &'static str,
    },
    /// Re-read the config file.
    Reload,
    /// The decision journal, optionally after a time.
    Journal {
        /// Unix ms or RFC 3339.
        since: Option<String>,
    },
}

/// Where and how to reach the admin API.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port` of the admin listener.
    pub admin: String,
    /// The bearer token.
    pub token: Option<String>,
    /// Print JSON instead of tables.
    pub json: bool,
}

/// Run `command`; returns what to print.
pub async fn run(target: &Target, command: &Command) -> anyhow::Result<String> {
    let (method, path, body) = match command {
        Command::Status => ("GET", "/api/v1/tenants".to_owned(), None),
        Command::Weight { tenant, percent } => (
            "PUT",
            format!("/api/v1/tenants/{tenant}/weight"),
            Some(serde_json::json!({ "weight": percent }).to_string()),
        ),
        Command::Action { tenant, action } => ("POST", format!("/api/v1/tenants/{tenant}/{action}"), None),
        Command::Reload => ("POST", "/api/v1/reload".to_owned(), None),
        Command::Journal { since } => (
            "GET",
            match since {
                Some(s) => format!("/api/v1/journal?since={s}"),
                None => "/api/v1/journal".to_owned(),
            },
            None,
        ),
    };
    let value = call(target, method, &path, body).await?;
    if target.json {
        return Ok(serde_json::to_string_pretty(&value)? + "\n");
    }
    Ok(match command {
        Command::Status => {
            // In a fleet, its line first (404 outside one: nothing).
            let fleet = call(target, "GET", "/api/v1/fleet", None)
                .await
                .map(|f| fleet_lines(&f))
                .unwrap_or_default();
            fleet + &tenants_table(value["tenants"].as_array().map_or(&[][..], Vec::as_slice))
        }
        Command::Weight { .. } | Command::Action { .. } => tenants_table(std::slice::from_ref(&value)),
        Command::Reload => format!(
            "reload {} (generation {})\n",
            value["result"].as_str().unwrap_or("?"),
            value["generation"]
        ),
        Command::Journal { .. } => journal_table(value["entries"].as_array().map_or(&[][..], Vec::as_slice)),
    })
}

async fn call(target: &Target, method: &str, path: &str, body: Option<String>) -> anyhow::Result<Value> {
    let url = format!("http://{}{path}", target.admin);
    let tcp = tokio::net::TcpStream::connect(&target.admin)
        .await
        .with_context(|| {
            format!(
                "cannot reach the admin API at http://{}: is fledge running? (--admin sets the address)",
                target.admin
            )
        })?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .context("the admin API did not speak HTTP")?;
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", &target.admin)
        .header("accept", "application/json");
    if let Some(token) = &target.token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let resp = send
        .send_request(req)
        .await
        .with_context(|| format!("{method} {url} failed"))?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if status == http::StatusCode::UNAUTHORIZED {
        bail!(
            "the admin API refused the token: set {TOKEN_ENV} to the token fledge runs with (admin.token_env, admin.token_file, or state_dir/admin.token)"
        );
    }
    if !status.is_success() {
        bail!(
            "{method} {path}: {} {}",
            status.as_u16(),
            value["error"].as_str().unwrap_or("(no reason given)")
        );
    }
    Ok(value)
}

fn tenants_table(tenants: &[Value]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:<12} {:>7}  {:<13} {:>18}  {:>18}",
        "TENANT", "STATE", "WEIGHT", "VERDICT", "STABLE req/err", "CANARY req/err"
    );
    for t in tenants {
        let figures = |v: &str| format!("{}/{}", t["figures"][v]["requests"], t["figures"][v]["errors"]);
        let _ = writeln!(
            out,
            "{:<20} {:<12} {:>6}%  {:<13} {:>18}  {:>18}",
            t["name"].as_str().unwrap_or("?"),
            t["state"].as_str().unwrap_or("-"),
            t["weight"].as_f64().unwrap_or(0.0),
            t["verdict"].as_str().unwrap_or("-"),
            figures("stable"),
            figures("canary"),
        );
        if let Some(reason) = t["reason"].as_str() {
            let _ = writeln!(out, "{:<20} reason: {reason}", "");
        }
    }
    out
}

/// The fleet's totals and leader, then one line per replica.
fn fleet_lines(f: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "fleet {}: {} live replicas, leader {}, {} req/s, generation {}{}",
        f["fleet"].as_str().unwrap_or("?"),
        f["totals"]["live_replicas"],
        f["leader"].as_str().unwrap_or("(none)"),
        f["totals"]["requests_per_second"],
        f["generation"],
        if f["redis_up"] == true {
            ""
        } else {
            " — Redis UNREACHABLE from this replica: it judges alone"
        },
    );
    for r in f["replicas"].as_array().map_or(&[][..], Vec::as_slice) {
        let _ = writeln!(
            out,
            "  {:<24} {:<6} {:>9} req/s  seen {} ms ago{}",
            r["id"].as_str().unwrap_or("?"),
            if r["live"] == true { "live" } else { "gone" },
            r["requests_per_second"],
            r["age_ms"],
            if r["leader"] == true { "  (leader)" } else { "" },
        );
    }
    out.push('\n');
    out
}

fn journal_table(entries: &[Value]) -> String {
    let mut out = String::new();
    for e in entries {
        let pos = |p: &Value| {
            if p.is_null() {
                "-".to_owned()
            } else {
                format!("{} {}%", p["state"].as_str().unwrap_or("?"), p["weight"])
            }
        };
        let _ = writeln!(
            out,
            "{}  {:<6} {:<14} {:<16} {} → {}{}{}",
            e["time"].as_str().unwrap_or("?"),
            e["actor"].as_str().unwrap_or("?"),
            e["tenant"].as_str().unwrap_or("*"),
            e["event"].as_str().unwrap_or("?"),
            pos(&e["before"]),
            pos(&e["after"]),
            e["reason"]
                .as_str()
                .map(|r| format!("  ({r})"))
                .unwrap_or_default(),
            e["replica"]
                .as_str()
                .map(|r| format!("  [by {r}]"))
                .unwrap_or_default(),
        );
    }
    out
}
