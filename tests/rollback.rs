//! Automatic rollback and promotion, decided inside the proxy from its own
//! counters, through the real binary.

use std::time::Duration;

use fledge::mock_odoo::{Knobs, MockOdoo};

use crate::util::{eventually, mock, start_load, TestProxy};

const HOST: &str = "acme.example.com";
const STATE: &str = "fledge_canary_state{tenant=\"acme\",state=";

/// `acme`: stable `s`, canary `c` at `weight`, under `policy` (YAML lines
/// indented for `policies.default`).
fn config(s: &MockOdoo, c: &MockOdoo, weight: f64, policy: &str) -> String {
    format!(
        r#"listen: "{{listen}}"
threads: 2
pools:
  v17: {{ workers: ["{}"] }}
  v18: {{ workers: ["{}"] }}
policies:
  default:
{policy}
tenants:
  acme:
    hosts: ["acme.example.com"]
    stable: v17
    canary: v18
    canary_weight: {weight}
"#,
        s.addr(),
        c.addr()
    )
}

const FAST: &str =
    "    analysis:\n      min_requests: 20\n      window_seconds: 10\n      consecutive_breaches: 3\n";

async fn state_is(proxy: &TestProxy, state: &str) -> bool {
    proxy.metric(&format!("{STATE}\"{state}\"}}")).await == Some(1.0)
}

async fn rolled_back_under_fault(knobs: Knobs, jsonrpc: bool, expect_reason: &str) {
    let (s, c) = (mock("17.0").await, mock("18.0").await);
    let proxy = TestProxy::start(&config(&s, &c, 50.0, FAST));
    let load = start_load(proxy.addr, HOST, 200, jsonrpc);
    // Healthy for a while: no rollback, both versions serve.
    let served = eventually(10, || async { load.get(&load.stats.canary) > 20 }).await;
    assert!(served, "canary got no traffic");
    assert!(state_is(&proxy, "progressing").await);

    c.set_knobs(knobs);
    assert!(
        eventually(10, || state_is(&proxy, "rolled_back")).await,
        "not rolled back:\n{}",
        proxy.metrics().await
    );
    assert_eq!(
        proxy.metric("fledge_canary_weight{tenant=\"acme\"}").await,
        Some(0.0)
    );

    // From now on nobody reaches the canary, sticky sessions included.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let canary_seen = c.stats().requests;
    let served = load.get(&load.stats.sent);
    let more = eventually(10, || async { load.get(&load.stats.sent) > served + 100 }).await;
    assert!(more, "load stopped");
    assert_eq!(
        c.stats().requests,
        canary_seen,
        "requests reached the canary after the rollback"
    );

    // The journal says why, with the figures.
    let journal = proxy.journal();
    let entry = journal
        .iter()
        .find(|e| e["event"] == "rolled_back")
        .expect("a rollback entry");
    assert_eq!(entry["actor"], "auto");
    assert_eq!(entry["tenant"], "acme");
    assert_eq!(entry["reason"], expect_reason);
    assert_eq!(entry["after"]["weight"], 0.0);
    assert_eq!(entry["before"]["weight"], 50.0);
    assert!(
        entry["figures"]["canary"]["requests"].as_u64().unwrap() >= 20,
        "{entry}"
    );
    assert!(entry["figures"]["observed"].as_f64().unwrap() > entry["figures"]["limit"].as_f64().unwrap());
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(&format!(
            "fledge_rollbacks_total{{tenant=\"acme\",reason=\"{expect_reason}\"}} 1"
        )),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_answering_30_percent_5xx_is_rolled_back() {
    rolled_back_under_fault(
        Knobs {
            error_rate: 0.3,
            ..Knobs::default()
        },
        false,
        "error_rate_increase",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_answering_json_rpc_errors_with_http_200_is_rolled_back() {
    rolled_back_under_fault(
        Knobs {
            jsonrpc_error_rate: 0.3,
            ..Knobs::default()
        },
        true,
        "error_rate_increase",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_800_ms_slower_is_rolled_back() {
    rolled_back_under_fault(
        Knobs {
            latency_ms: 800,
            ..Knobs::default()
        },
        false,
        "latency_ratio",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn too_few_requests_are_inconclusive_and_never_roll_back() {
    let (s, c) = (mock("17.0").await, mock("18.0").await);
    c.set_knobs(Knobs {
        error_rate: 1.0,
        ..Knobs::default()
    });
    let policy = "    analysis:\n      min_requests: 1000\n      consecutive_breaches: 1\n";
    let proxy = TestProxy::start(&config(&s, &c, 50.0, policy));
    let load = start_load(proxy.addr, HOST, 100, false);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(load.get(&load.stats.failed) > 10, "the canary did fail");
    assert!(state_is(&proxy, "progressing").await);
    assert_eq!(
        proxy
            .metric("fledge_canary_verdict{tenant=\"acme\",verdict=\"inconclusive\"}")
            .await,
        Some(1.0)
    );
    assert!(!proxy.journal().iter().any(|e| e["event"] == "rolled_back"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_platform_wide_incident_does_not_roll_back_a_relative_policy() {
    let (s, c) = (mock("17.0").await, mock("18.0").await);
    let bad = Knobs {
        error_rate: 0.3,
        ..Knobs::default()
    };
    s.set_knobs(bad.clone());
    c.set_knobs(bad);
    // The default checks are relative to stable only.
    let policy = "    analysis:\n      min_requests: 50\n      consecutive_breaches: 3\n";
    let proxy = TestProxy::start(&config(&s, &c, 50.0, policy));
    let load = start_load(proxy.addr, HOST, 200, false);
    // Enough evidence, however busy the machine: three seconds' worth at
    // the target rate, a third of it failed.
    let seen = eventually(20, || async { load.get(&load.stats.sent) >= 600 }).await;
    assert!(seen, "the load did not reach 600 requests");
    assert!(load.get(&load.stats.failed) > 100, "both versions failed");
    assert!(state_is(&proxy, "progressing").await, "{}", proxy.metrics().await);
    assert!(!proxy.journal().iter().any(|e| e["event"] == "rolled_back"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollback_survives_restarts_and_unreadable_state_fails_safe() {
    let (s, c) = (mock("17.0").await, mock("18.0").await);
    let mut proxy = TestProxy::start(&config(&s, &c, 50.0, FAST));
    {
        let _load = start_load(proxy.addr, HOST, 200, false);
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.set_knobs(Knobs {
            error_rate: 0.5,
            ..Knobs::default()
        });
        assert!(eventually(10, || state_is(&proxy, "rolled_back")).await);
    }
    // The canary recovers; a restart must not send traffic back to it.
    c.set_knobs(Knobs::default());
    proxy.restart();
    assert!(state_is(&proxy, "rolled_back").await, "{}", proxy.metrics().await);
    let before = c.stats().requests;
    {
        let _load = start_load(proxy.addr, HOST, 200, false);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(
        c.stats().requests,
        before,
        "a restart sent traffic to a rolled-back canary"
    );

    // A corrupted state file: stable only, and the log says why.
    std::fs::write(proxy.state_dir().join("rollouts.json"), b"{ not json").unwrap();
    proxy.restart();
    assert!(state_is(&proxy, "rolled_back").await);
    assert!(
        proxy.log().contains("canary states unreadable"),
        "{}",
        proxy.log()
    );
    assert!(proxy
        .journal()
        .iter()
        .any(|e| e["reason"].as_str().is_some_and(|r| r.contains("corrupted"))));

    // A missing one, although the journal shows earlier runs: the same.
    std::fs::remove_file(proxy.state_dir().join("rollouts.json")).unwrap();
    proxy.restart();
    assert!(state_is(&proxy, "rolled_back").await);
    assert!(proxy
        .journal()
        .iter()
        .any(|e| e["reason"].as_str().is_some_and(|r| r.contains("missing"))));
    let before = c.stats().requests;
    {
        let _load = start_load(proxy.addr, HOST, 200, false);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(c.stats().requests, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_healthy_canary_walks_its_promotion_steps() {
    let (s, c) = (mock("17.0").await, mock("18.0").await);
    let policy =
        "    analysis:\n      min_requests: 10\n    steps: [10, 50, 100]\n    step_interval_seconds: 1\n";
    let proxy = TestProxy::start(&config(&s, &c, 0.0, policy));
    assert_eq!(
        proxy.metric("fledge_canary_weight{tenant=\"acme\"}").await,
        Some(10.0)
    );
    let load = start_load(proxy.addr, HOST, 200, false);
    assert!(
        eventually(15, || state_is(&proxy, "promoted")).await,
        "{}",
        proxy.metrics().await
    );
    assert_eq!(
        proxy.metric("fledge_canary_weight{tenant=\"acme\"}").await,
        Some(100.0)
    );
    let steps: Vec<(f64, f64)> = proxy
        .journal()
        .iter()
        .filter(|e| e["event"] == "step" || e["event"] == "promoted")
        .map(|e| {
            (
                e["before"]["weight"].as_f64().unwrap(),
                e["after"]["weight"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(steps, vec![(10.0, 50.0), (50.0, 100.0)]);
    // Promoted: everyone on the canary now.
    let canary = load.get(&load.stats.canary);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stable_before = load.get(&load.stats.stable);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(load.get(&load.stats.stable), stable_before);
    assert!(load.get(&load.stats.canary) > canary);
}

/// A `session_id` that lands on `version`, found as an attacker finds one:
/// made-up values tried until the answer says so.
async fn forged_session_on(client: &crate::util::Client, version: &str) -> String {
    for i in 0..1_000 {
        let sid = format!("forged-{version}-{i}");
        let r = client
            .get(HOST, "/web/login", &[("cookie", &format!("session_id={sid}"))])
            .await;
        if r.version() == version {
            return sid;
        }
    }
    panic!("no made-up session lands on the {version}");
}

/// Issue 23: the attack from its text. Two anonymous clients with made-up
/// sessions flood the canary with JSON-RPC calls (each answered, as Odoo
/// answers an unknown session, with HTTP 200 and a `SessionExpired` error)
/// and with 404s, two more do the same to stable, and the canary's logged-in
/// users meet `UserError`s: nothing is rolled back. Then a real server fault
/// across the logged-in clients is rolled back as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn anonymous_floods_and_user_errors_roll_nothing_back_but_a_real_fault_does() {
    let (s, c) = (mock("17.0").await, mock("18.0").await);
    let sessions = Knobs {
        check_sessions: true,
        ..Knobs::default()
    };
    s.set_knobs(sessions.clone());
    c.set_knobs(Knobs {
        user_error_rate: 0.3,
        ..sessions.clone()
    });
    let proxy = TestProxy::start(&config(&s, &c, 20.0, FAST));
    let load = start_load(proxy.addr, HOST, 200, true);

    let client = crate::util::Client::new(proxy.addr);
    let mut attackers = Vec::new();
    for version in ["canary", "canary", "stable", "stable"] {
        attackers.push((forged_session_on(&client, version).await, version));
    }
    let mut tasks = Vec::new();
    for (sid, version) in attackers {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let cookie = format!("session_id={sid}");
            let mut expired = 0u32;
            for i in 0..400u64 {
                let r = if i % 4 == 3 {
                    client
                        .get(HOST, "/web/no-such-page", &[("cookie", &cookie)])
                        .await
                } else {
                    client
                        .post_json(
                            HOST,
                            "/web/dataset/call_kw/res.partner/read",
                            &[("cookie", &cookie)],
                            &crate::util::call_kw(i),
                        )
                        .await
                };
                assert_eq!(r.version(), version, "the forged session stays on its version");
                if r.status == 200 && r.json()["error"]["code"] == 100 {
                    expired += 1;
                }
            }
            expired
        }));
    }
    let mut expired = 0;
    for t in tasks {
        expired += t.await.unwrap();
    }
    // The flood happened as an attacker would see it, and was counted.
    assert_eq!(expired, 4 * 300, "every forged call got Odoo's SessionExpired");
    let client_errors = proxy
        .metric("fledge_requests_total{tenant=\"acme\",version=\"canary\",outcome=\"jsonrpc_client_error\"}")
        .await
        .unwrap_or(0.0);
    assert!(client_errors >= 600.0, "{}", proxy.metrics().await);
    // Let the analysis judge what it saw for a while longer.
    let sent = load.get(&load.stats.sent);
    assert!(eventually(10, || async { load.get(&load.stats.sent) > sent + 200 }).await);
    assert!(state_is(&proxy, "progressing").await, "{}", proxy.metrics().await);
    assert!(!proxy.journal().iter().any(|e| e["event"] == "rolled_back"));

    // A real fault, across the logged-in clients: rolled back.
    c.set_knobs(Knobs {
        jsonrpc_error_rate: 0.5,
        ..sessions
    });
    assert!(
        eventually(10, || state_is(&proxy, "rolled_back")).await,
        "not rolled back:\n{}",
        proxy.metrics().await
    );
    let entry = proxy
        .journal()
        .into_iter()
        .find(|e| e["event"] == "rolled_back")
        .expect("a rollback entry");
    assert!(
        entry["figures"]["canary"]["failing_clients"].as_u64().unwrap() >= 5,
        "{entry}"
    );
}

/// Issue 23: a canary's version cookie copied to other clients puts them on
/// the canary neither after a rollback and resume, nor past its age.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_copied_canary_cookie_dies_with_its_rollout_and_its_age() {
    let (s, c) = (mock("17.0").await, mock("18.0").await);
    let text = config(&s, &c, 50.0, FAST).replace("pools:", "cookies: { max_age_seconds: 3 }\npools:");
    let proxy = TestProxy::start(&text);
    let client = crate::util::Client::new(proxy.addr);
    // A client on the canary, and its cookie.
    let mut pin = None;
    for i in 0..200 {
        let r = client
            .get(
                HOST,
                "/web/login",
                &[("cookie", &format!("session_id=first-{i}"))],
            )
            .await;
        if r.version() == "canary" {
            pin = r
                .cookies()
                .into_iter()
                .find(|c| c.starts_with("fledge_version="))
                .map(|c| c.split(';').next().unwrap().to_owned());
            break;
        }
    }
    let pin = pin.expect("a canary client got a version cookie");
    // Sessions the split puts on stable: with the copied cookie they are on
    // the canary.
    let mut stable = Vec::new();
    for i in 0..200 {
        let sid = format!("other-{i}");
        let r = client
            .get(HOST, "/web/login", &[("cookie", &format!("session_id={sid}"))])
            .await;
        if r.version() == "stable" {
            stable.push(sid);
        }
        if stable.len() == 20 {
            break;
        }
    }
    let with_pin = |sid: &str| format!("session_id={sid}; {pin}");
    let on_canary = || async {
        let mut n = 0;
        for sid in &stable {
            let r = client
                .get(HOST, "/web/login", &[("cookie", &with_pin(sid))])
                .await;
            n += usize::from(r.version() == "canary");
        }
        n
    };
    assert_eq!(
        on_canary().await,
        stable.len(),
        "the cookie pins whoever sends it"
    );

    // Rolled back and resumed: the cookie is from another generation.
    assert_eq!(
        proxy
            .admin("POST", "/api/v1/tenants/acme/rollback", "")
            .await
            .status,
        200
    );
    assert_eq!(
        proxy
            .admin("POST", "/api/v1/tenants/acme/resume", "")
            .await
            .status,
        200
    );
    assert_eq!(
        on_canary().await,
        0,
        "a cookie from before the rollback still pins"
    );

    // A fresh cookie of the new generation pins again, until its age.
    let mut fresh = None;
    for i in 0..200 {
        let r = client
            .get(
                HOST,
                "/web/login",
                &[("cookie", &format!("session_id=again-{i}"))],
            )
            .await;
        if r.version() == "canary" {
            fresh = r
                .cookies()
                .into_iter()
                .find(|c| c.starts_with("fledge_version="))
                .map(|c| c.split(';').next().unwrap().to_owned());
            break;
        }
    }
    let fresh = fresh.expect("a new canary cookie");
    let pinned = |sid: &str| format!("session_id={sid}; {fresh}");
    let r = client
        .get(HOST, "/web/login", &[("cookie", &pinned(&stable[0]))])
        .await;
    assert_eq!(r.version(), "canary");
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    let r = client
        .get(HOST, "/web/login", &[("cookie", &pinned(&stable[0]))])
        .await;
    assert_eq!(r.version(), "stable", "a cookie past its max age still pins");
}

/// `failing_clients_by: address`: failures from one address count as one
/// client, however many sessions it makes up, so they roll nothing back
/// (with the default, `sticky_key`, the same load is rolled back:
/// `a_canary_answering_30_percent_5xx_is_rolled_back`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn by_address_failures_from_one_address_are_one_client() {
    let (s, c) = (mock("17.0").await, mock("18.0").await);
    c.set_knobs(Knobs {
        error_rate: 0.5,
        ..Knobs::default()
    });
    let policy = format!("{FAST}      failing_clients_by: address\n");
    let proxy = TestProxy::start(&config(&s, &c, 50.0, &policy));
    let load = start_load(proxy.addr, HOST, 200, false);
    let failed = eventually(20, || async { load.get(&load.stats.failed) > 300 }).await;
    assert!(failed, "the canary did fail");
    assert!(state_is(&proxy, "progressing").await, "{}", proxy.metrics().await);
    assert!(!proxy.journal().iter().any(|e| e["event"] == "rolled_back"));
}
