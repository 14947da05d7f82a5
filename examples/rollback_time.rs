//! Time from fault injection to 0 % canary, measured end to end: mock Odoo
//! pools in this process, the release `fledge` binary as a child, steady
//! load, then the canary starts answering 30 % 5xx. The rollback time is the
//! journal's timestamp of the rollback minus the moment of injection (same
//! clock); client-visible failures are the 5xx the load saw in between.
//!
//! Usage: cargo run --release --example rollback_time -- [RUNS] [RPS] [WEIGHT] [MIN_REQUESTS]
//! (defaults 20, 200, 20, 20). Needs `cargo build --release` first.

#![allow(missing_docs, clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fledge::mock_odoo::{Knobs, MockOdoo, Options};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::main]
async fn main() {
    let args: Vec<u64> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    let runs = args.first().copied().unwrap_or(20);
    let rps = args.get(1).copied().unwrap_or(200);
    let weight = args.get(2).copied().unwrap_or(20);
    let min_requests = args.get(3).copied().unwrap_or(20);
    let bin = std::env::current_dir().unwrap().join("target/release/fledge");
    assert!(bin.exists(), "build first: cargo build --release");

    let stable = MockOdoo::start("127.0.0.1:0".parse().unwrap(), Options::new("17.0"))
        .await
        .unwrap();
    let canary = MockOdoo::start("127.0.0.1:0".parse().unwrap(), Options::new("18.0"))
        .await
        .unwrap();
    let mut times = Vec::new();
    let mut failures = Vec::new();
    for run in 0..runs {
        canary.set_knobs(Knobs::default());
        let dir = tempfile::tempdir().unwrap();
        let (port, admin) = (free_port(), free_port());
        let config = format!(
            "listen: \"127.0.0.1:{port}\"\nthreads: 1\nstate_dir: \"{}\"\nadmin: {{ listen: \"127.0.0.1:{admin}\" }}\n\
             pools:\n  v17: {{ workers: [\"{}\"] }}\n  v18: {{ workers: [\"{}\"] }}\n\
             policies:\n  default:\n    analysis: {{ min_requests: {min_requests} }}\n\
             tenants:\n  acme:\n    hosts: [\"acme.example.com\"]\n    stable: v17\n    canary: v18\n    canary_weight: {weight}\n",
            dir.path().join("state").display(),
            stable.addr(),
            canary.addr()
        );
        std::fs::write(dir.path().join("fledge.yaml"), config).unwrap();
        let mut child = std::process::Command::new(&bin)
            .args(["run", "--config"])
            .arg(dir.path().join("fledge.yaml"))
            .env("FLEDGE_LOG", "warn")
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // Load: `rps` requests a second from 1000 sessions; failures are
        // stamped with the time their answer arrived.
        let client: Client<_, BoxBody<Bytes, Infallible>> =
            Client::builder(TokioExecutor::new()).build_http();
        let failed_at = Arc::new(tokio::sync::Mutex::new(Vec::<u64>::new()));
        let sent = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let load = {
            let (failed_at, sent, stop) = (failed_at.clone(), sent.clone(), stop.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rps as f64));
                let mut i = 0u64;
                while !stop.load(Relaxed) {
                    tick.tick().await;
                    i += 1;
                    let (client, failed_at, sent) = (client.clone(), failed_at.clone(), sent.clone());
                    tokio::spawn(async move {
                        let req = http::Request::get(format!("http://127.0.0.1:{port}/web/login"))
                            .header("host", "acme.example.com")
                            .header("cookie", format!("session_id=s{}", i % 1000))
                            .body(Full::new(Bytes::new()).boxed())
                            .unwrap();
                        sent.fetch_add(1, Relaxed);
                        let ok = match client.request(req).await {
                            Ok(r) => {
                                let ok = !r.status().is_server_error();
                                let _ = r.into_body().collect().await;
                                ok
                            }
                            Err(_) => false,
                        };
                        if !ok {
                            failed_at.lock().await.push(now_ms());
                        }
                    });
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let injected = now_ms();
        canary.set_knobs(Knobs {
            error_rate: 0.3,
            ..Knobs::default()
        });
        let journal = dir.path().join("state/journal.jsonl");
        let mut rolled_back = None;
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(25)).await;
            let text = std::fs::read_to_string(&journal).unwrap_or_default();
            rolled_back = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|e| e["event"] == "rolled_back")
                .and_then(|e| e["unix_ms"].as_u64());
            if rolled_back.is_some() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Relaxed);
        let _ = load.await;
        let _ = child.kill();
        let _ = child.wait();
        let Some(at) = rolled_back else {
            println!("run {run}: no rollback within 5 s");
            continue;
        };
        let ms = at.saturating_sub(injected);
        let visible = failed_at
            .lock()
            .await
            .iter()
            .filter(|&&t| t >= injected && t <= at + 50)
            .count();
        println!("run {run}: rolled back {ms} ms after the fault, {visible} client-visible failures, {} requests sent", sent.load(Relaxed));
        times.push(ms);
        failures.push(visible as u64);
    }
    times.sort_unstable();
    failures.sort_unstable();
    let pct = |v: &[u64], p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    if !times.is_empty() {
        println!(
            "\n{} runs at {rps} req/s, canary weight {weight} %, min_requests {min_requests}, fault 30 % 5xx:\n\
             fault → 0 % canary: p50 {} ms, p99 {} ms, max {} ms\n\
             client-visible failures during it: p50 {}, p99 {}, max {}",
            times.len(),
            pct(&times, 0.5),
            pct(&times, 0.99),
            times[times.len() - 1],
            pct(&failures, 0.5),
            pct(&failures, 0.99),
            failures[failures.len() - 1]
        );
    }
}
