//! A fleet of replicas acting as one on Redis (issue 16): a real
//! `redis-server` on a free port, real fledge processes, mock workers.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fledge::mock_odoo::{Knobs, MockOdoo};
use serde_json::Value;

use crate::util::{eventually, free_port, mock, start_load, Client, TestProxy};

const HOST: &str = "acme.example.com";
const SECRET: (&str, &str) = ("FLEDGE_TEST_COOKIE_SECRET", "fleet-test-secret-0123456789abcdef");

/// A throw-away `redis-server` on a free loopback port; killed on drop.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        let mut r = Redis {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (apt-get install redis-server; .ci/run installs it)");
        self.child = Some(child);
        for _ in 0..200 {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server did not answer on port {}", self.port);
    }

    fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status()
                .unwrap();
        }
    }

    /// SIGSTOP: Redis hangs; every command waits.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            self.signal_child(&c);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal_child(&self, c: &Child) {
        let _ = Command::new("kill").args(["-CONT", &c.id().to_string()]).status();
    }

    /// Start it again on the same port, empty (no persistence).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Run a command with redis-cli-like RESP, for checks.
    pub fn command(&self, args: &[&str]) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req += &format!("${}\r\n{a}\r\n", a.len());
        }
        s.write_all(req.as_bytes()).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A replica's config: `acme` split between `s` and `c` at `weight`,
/// judged fast, in the fleet `test` on `redis`.
fn replica(redis: &Redis, s: &MockOdoo, c: &MockOdoo, weight: f64, id: &str) -> String {
    format!(
        r#"listen: "{{listen}}"
threads: 2
cookies:
  secret_env: FLEDGE_TEST_COOKIE_SECRET
fleet:
  redis_url: "{url}"
  name: "test"
  replica_id: "{id}"
  replica_timeout_ms: 1500
pools:
  v17: {{ workers: ["{s}"] }}
  v18: {{ workers: ["{c}"] }}
policies:
  default:
    override_from: ["127.0.0.1/32"]
    analysis:
      min_requests: 20
      window_seconds: 10
      consecutive_breaches: 3
tenants:
  acme:
    hosts: ["acme.example.com"]
    stable: v17
    canary: v18
    canary_weight: {weight}
"#,
        url = redis.url(),
        s = s.addr(),
        c = c.addr(),
    )
}

fn start_fleet(redis: &Redis, s: &MockOdoo, c: &MockOdoo, weight: f64, n: usize) -> Vec<TestProxy> {
    (0..n)
        .map(|i| TestProxy::start_with_env(&replica(redis, s, c, weight, &format!("r{i}")), &[SECRET]))
        .collect()
}

async fn tenant(proxy: &TestProxy) -> Value {
    proxy.admin("GET", "/api/v1/tenants/acme", "").await.json()
}

async fn fleet(proxy: &TestProxy) -> Value {
    let r = proxy.admin("GET", "/api/v1/fleet", "").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

async fn all_in_state(replicas: &[TestProxy], state: &str) -> bool {
    for r in replicas {
        if tenant(r).await["state"] != state {
            return false;
        }
    }
    true
}

/// Wait until every replica sees `n` live replicas and one leader; its id.
async fn formed(replicas: &[TestProxy], n: u64) -> String {
    for _ in 0..200 {
        let mut leaders = Vec::new();
        for r in replicas {
            let f = fleet(r).await;
            if f["totals"]["live_replicas"] == n && !f["leader"].is_null() {
                leaders.push(f["leader"].as_str().unwrap_or_default().to_owned());
            }
        }
        leaders.dedup();
        if leaders.len() == 1 {
            let all = futures_util::future::join_all(replicas.iter().map(fleet)).await;
            if all
                .iter()
                .all(|f| f["leader"] == leaders[0].as_str() && f["totals"]["live_replicas"] == n)
            {
                return leaders.remove(0);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the fleet did not form: {}", fleet(&replicas[0]).await);
}

/// `rps` requests a second on each replica, from its own sessions; returns
/// once every replica has sent some clients to the canary.
async fn load_each(replicas: &[TestProxy], rps: u32) -> Vec<crate::util::Load> {
    let loads: Vec<_> = replicas
        .iter()
        .map(|r| start_load(r.addr, HOST, rps, false))
        .collect();
    let served = eventually(10, || async { loads.iter().all(|l| l.get(&l.stats.canary) > 10) }).await;
    assert!(served, "every replica sends some clients to the canary");
    loads
}

/// Wait until every replica knows Redis does not answer.
async fn alone(replicas: &[TestProxy]) {
    for r in replicas {
        let down = eventually(5, || async {
            r.metric("fledge_fleet_redis_up").await == Some(0.0)
        })
        .await;
        assert!(down, "a replica still thinks Redis is up");
    }
}

fn by_id<'a>(replicas: &'a mut [TestProxy], id: &str) -> &'a mut TestProxy {
    let i: usize = id.trim_start_matches('r').parse().unwrap();
    &mut replicas[i]
}

/// The fleet's journal as replica `proxy` reads it.
async fn fleet_journal(proxy: &TestProxy) -> Vec<Value> {
    proxy.admin("GET", "/api/v1/journal", "").await.json()["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_roll_a_failing_canary_back_together_and_journal_it_once() {
    let redis = Redis::start();
    let (s, c) = (mock("17.0").await, mock("18.0").await);
    let replicas = start_fleet(&redis, &s, &c, 50.0, 3);
    let leader = formed(&replicas, 3).await;
    // Each replica alone sees a third of the traffic: 60 requests a second
    // in all, 10 a second on each replica's canary.
    let loads = load_each(&replicas, 20).await;
    assert!(all_in_state(&replicas, "progressing").await);

    c.set_knobs(Knobs {
        error_rate: 0.3,
        ..Knobs::default()
    });
    assert!(
        eventually(10, || all_in_state(&replicas, "rolled_back")).await,
        "not rolled back everywhere: {:?}",
        futures_util::future::join_all(replicas.iter().map(tenant)).await
    );
    for r in &replicas {
        assert_eq!(tenant(r).await["weight"], 0.0);
    }
    // From now on no replica sends anyone to the canary.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let canary_seen = c.stats().requests;
    let sent: u64 = loads.iter().map(|l| l.get(&l.stats.sent)).sum();
    let more = eventually(10, || async {
        loads.iter().map(|l| l.get(&l.stats.sent)).sum::<u64>() > sent + 60
    })
    .await;
    assert!(more, "load stopped");
    assert_eq!(
        c.stats().requests,
        canary_seen,
        "a replica still sent requests to the canary"
    );

    // One rollback in the fleet's journal, by the leader, read from any
    // replica; the leader counted it as the fleet's.
    for r in &replicas {
        let journal = fleet_journal(r).await;
        let rollbacks: Vec<&Value> = journal.iter().filter(|e| e["event"] == "rolled_back").collect();
        assert_eq!(rollbacks.len(), 1, "{journal:?}");
        assert_eq!(rollbacks[0]["replica"], leader.as_str());
        assert_eq!(rollbacks[0]["actor"], "auto");
        // The fleet judged more than any one replica served in the window.
        assert!(rollbacks[0]["figures"]["canary"]["requests"].as_u64().unwrap() >= 20);
    }
    let i: usize = leader.trim_start_matches('r').parse().unwrap();
    assert_eq!(
        replicas[i]
            .metric("fledge_fleet_decisions_total{origin=\"fleet\"}")
            .await,
        Some(1.0)
    );
    assert_eq!(replicas[i].metric("fledge_fleet_leader").await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operators_change_on_one_replica_is_served_by_all_and_if_match_is_fleet_wide() {
    let redis = Redis::start();
    let (s, c) = (mock("17.0").await, mock("18.0").await);
    let replicas = start_fleet(&redis, &s, &c, 10.0, 3);
    formed(&replicas, 3).await;

    let r = replicas[0]
        .admin("PUT", "/api/v1/tenants/acme/weight", r#"{"weight": 100}"#)
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // GET /api/v1/fleet and the fleet's journal are as documented.
    let spec = crate::admin::spec();
    let r = replicas[2].admin("GET", "/api/v1/fleet", "").await;
    crate::admin::conforms(&spec, "GET", "/api/v1/fleet", &r);
    let r = replicas[2].admin("GET", "/api/v1/journal", "").await;
    crate::admin::conforms(&spec, "GET", "/api/v1/journal", &r);
    let entries = r.json()["entries"].as_array().cloned().unwrap_or_default();
    let weight = entries
        .iter()
        .find(|e| e["event"] == "weight")
        .expect("the weight change in the fleet's journal");
    assert_eq!(
        (weight["replica"].as_str(), weight["actor"].as_str()),
        (Some("r0"), Some("api"))
    );
    let applied = eventually(2, || async {
        for p in &replicas[1..] {
            if tenant(p).await["weight"] != 100.0 {
                return false;
            }
        }
        true
    })
    .await;
    assert!(applied, "replicas B and C did not take the weight");
    // And they route by it: every new client of B and C lands on the canary.
    for p in &replicas[1..] {
        let client = Client::new(p.addr);
        for _ in 0..20 {
            assert_eq!(client.get(HOST, "/web/login", &[]).await.version(), "canary");
        }
    }

    // Two operators, two replicas, one generation: one wins, one gets 409.
    let etag = replicas[0]
        .admin("GET", "/api/v1/tenants/acme", "")
        .await
        .header("etag")
        .unwrap()
        .to_owned();
    let same_on_b = eventually(2, || async {
        replicas[1]
            .admin("GET", "/api/v1/tenants/acme", "")
            .await
            .header("etag")
            == Some(etag.as_str())
    })
    .await;
    assert!(same_on_b, "B did not reach the fleet's generation {etag}");
    let if_match = [("if-match", etag.as_str())];
    let (a, b) = tokio::join!(
        replicas[0].admin_with(
            "PUT",
            "/api/v1/tenants/acme/weight",
            r#"{"weight": 30}"#,
            &if_match
        ),
        replicas[1].admin_with(
            "PUT",
            "/api/v1/tenants/acme/weight",
            r#"{"weight": 40}"#,
            &if_match
        ),
    );
    let mut statuses = [a.status.as_u16(), b.status.as_u16()];
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [200, 409],
        "{} {}",
        String::from_utf8_lossy(&a.body),
        String::from_utf8_lossy(&b.body)
    );
    let won = if a.status == 200 { 30.0 } else { 40.0 };
    let agreed = eventually(2, || async {
        for p in &replicas {
            if tenant(p).await["weight"] != won {
                return false;
            }
        }
        true
    })
    .await;
    assert!(agreed, "the fleet does not agree on the winner's weight {won}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_killed_during_an_incident_is_replaced_and_the_rollback_still_happens() {
    let redis = Redis::start();
    let (s, c) = (mock("17.0").await, mock("18.0").await);
    let mut replicas = start_fleet(&redis, &s, &c, 50.0, 3);
    let leader = formed(&replicas, 3).await;
    let mut loads = load_each(&replicas, 20).await;

    c.set_knobs(Knobs {
        error_rate: 0.3,
        ..Knobs::default()
    });
    // Its load stops first: once its port is free another test's proxy may
    // take it, and must not get this test's requests.
    let i: usize = leader.trim_start_matches('r').parse().unwrap();
    drop(loads.remove(i));
    by_id(&mut replicas, &leader).kill();
    let alive: Vec<&TestProxy> = replicas
        .iter()
        .enumerate()
        .filter(|(i, _)| format!("r{i}") != leader)
        .map(|(_, r)| r)
        .collect();
    assert_eq!(alive.len(), 2);
    let rolled_back = eventually(10, || async {
        for r in &alive {
            if tenant(r).await["state"] != "rolled_back" {
                return false;
            }
        }
        true
    })
    .await;
    assert!(rolled_back, "the survivors did not roll back");
    let f = fleet(alive[0]).await;
    assert_ne!(f["leader"], leader.as_str(), "{f}");
    let journal = fleet_journal(alive[0]).await;
    let by: Vec<&Value> = journal
        .iter()
        .filter(|e| e["event"] == "rolled_back")
        .map(|e| &e["replica"])
        .collect();
    assert_eq!(by.len(), 1, "{journal:?}");
    assert_ne!(by[0], leader.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leaders_write_is_refused() {
    use fledge::config::FleetConfig;
    use fledge::fleet::{Link, Write};
    let redis = Redis::start();
    let config = |id: &str| FleetConfig {
        redis_url: redis.url(),
        name: "deposed".into(),
        replica_id: id.into(),
        password: None,
        replica_timeout: Duration::from_secs(2),
    };
    let key = fledge::routing::CookieKey::from_secret(b"k").fingerprint();
    let (a, b) = (
        Link::new(&config("a"), key.clone()).unwrap(),
        Link::new(&config("b"), key).unwrap(),
    );
    a.connect().unwrap();
    b.connect().unwrap();
    let ttl = Duration::from_millis(300);
    let old = a.lease(ttl).await.unwrap().expect("a takes the free lease");
    assert_eq!(b.lease(ttl).await.unwrap(), None, "b cannot while a holds it");
    // a stalls past its lease; b takes it with a larger token.
    let mut new = None;
    for _ in 0..40 {
        new = b.lease(ttl).await.unwrap();
        if new.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let new = new.expect("b takes the lapsed lease");
    assert!(new > old);
    let rollout = fledge::analysis::rollout::Rollout::start("v18", Default::default(), None);
    let write = |link: &Link| Write {
        field: "acme/v18".into(),
        expected_rev: 0,
        record: link.record(fledge::control::Actor::Auto, &rollout),
    };
    let late = a.commit(None, Some(&a.lease_value(old)), &[write(&a)]).await;
    assert!(
        matches!(late, Err(fledge::fleet::FleetError::Deposed)),
        "{late:?}"
    );
    let ok = b.commit(None, Some(&b.lease_value(new)), &[write(&b)]).await;
    assert!(ok.is_ok(), "{ok:?}");
    // A second write from the same read is refused too: the rev moved.
    let again = b.commit(None, Some(&b.lease_value(new)), &[write(&b)]).await;
    assert!(
        matches!(again, Err(fledge::fleet::FleetError::Moved(_))),
        "{again:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_or_hanging_costs_no_request_and_a_fault_meanwhile_is_still_rolled_back() {
    let mut redis = Redis::start();
    let (s, c) = (mock("17.0").await, mock("18.0").await);
    let replicas = start_fleet(&redis, &s, &c, 50.0, 2);
    formed(&replicas, 2).await;
    let loads = load_each(&replicas, 40).await;

    // Redis hangs, then dies: requests go on; nothing fails.
    redis.freeze();
    let sent: u64 = loads.iter().map(|l| l.get(&l.stats.sent)).sum();
    alone(&replicas).await;
    assert!(
        eventually(10, || async {
            loads.iter().map(|l| l.get(&l.stats.sent)).sum::<u64>() > sent + 100
        })
        .await
    );
    redis.kill();
    let sent: u64 = loads.iter().map(|l| l.get(&l.stats.sent)).sum();
    assert!(
        eventually(10, || async {
            loads.iter().map(|l| l.get(&l.stats.sent)).sum::<u64>() > sent + 100
        })
        .await
    );
    let failed = |loads: &[crate::util::Load]| -> (u64, u64) {
        (
            loads.iter().map(|l| l.get(&l.stats.failed)).sum(),
            loads.iter().map(|l| l.get(&l.stats.transport_errors)).sum(),
        )
    };
    assert_eq!(
        failed(&loads),
        (0, 0),
        "requests failed while Redis hung or was gone"
    );
    // A canary fault during the outage: each replica rolls back alone.
    c.set_knobs(Knobs {
        error_rate: 0.3,
        ..Knobs::default()
    });
    assert!(
        eventually(10, || all_in_state(&replicas, "rolled_back")).await,
        "not rolled back alone"
    );
    for r in &replicas {
        assert_eq!(
            r.metric("fledge_fleet_decisions_total{origin=\"local\"}").await,
            Some(1.0)
        );
    }
    // Redis returns empty: the replicas seed it, and the fleet agrees.
    redis.restart();
    let seeded = eventually(10, || async {
        redis
            .command(&["HGETALL", "{fledge:test}:rollouts"])
            .contains("rolled_back")
    })
    .await;
    assert!(
        seeded,
        "{}",
        redis.command(&["HGETALL", "{fledge:test}:rollouts"])
    );
    formed(&replicas, 2).await;
    assert!(all_in_state(&replicas, "rolled_back").await);
    // Only the canary's own 500s failed, none for want of Redis.
    assert_eq!(failed(&loads).1, 0, "transport errors while Redis came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_restarted_with_an_empty_state_dir_serves_the_fleets_state() {
    let redis = Redis::start();
    let (s, c) = (mock("17.0").await, mock("18.0").await);
    let mut replicas = start_fleet(&redis, &s, &c, 50.0, 2);
    formed(&replicas, 2).await;
    let r = replicas[0]
        .admin("POST", "/api/v1/tenants/acme/rollback", "")
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(eventually(2, || all_in_state(&replicas, "rolled_back")).await);

    // An emptyDir volume: the replica comes back with nothing on disk.
    let b = &mut replicas[1];
    b.kill();
    std::fs::remove_dir_all(b.state_dir()).unwrap();
    b.start_again();
    assert_eq!(tenant(b).await["state"], "rolled_back");
    let client = Client::new(b.addr);
    for _ in 0..30 {
        assert_eq!(client.get(HOST, "/web/login", &[]).await.version(), "stable");
    }
    assert_eq!(
        c.stats().requests,
        0,
        "the restarted replica sent a client to the rolled-back canary"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_that_dies_drops_out_of_the_fleet() {
    let redis = Redis::start();
    let (s, c) = (mock("17.0").await, mock("18.0").await);
    let mut replicas = start_fleet(&redis, &s, &c, 50.0, 3);
    let leader = formed(&replicas, 3).await;
    let victim = if leader == "r2" { 1 } else { 2 };
    let loads: Vec<_> = replicas
        .iter()
        .map(|r| start_load(r.addr, HOST, 20, false))
        .collect();
    let busy = eventually(5, || async {
        let f = fleet(&replicas[0]).await;
        f["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["requests_per_second"].as_f64().unwrap_or(0.0) > 5.0)
    })
    .await;
    assert!(busy, "{}", fleet(&replicas[0]).await);
    drop(loads);
    replicas[victim].kill();
    let observer = if victim == 1 { 2 } else { 1 };
    let dropped = eventually(5, || async {
        let f = fleet(&replicas[observer]).await;
        f["totals"]["live_replicas"] == 2
            && f["replicas"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["id"] == format!("r{victim}").as_str() && r["live"] == false)
    })
    .await;
    assert!(dropped, "{}", fleet(&replicas[observer]).await);
    assert_eq!(
        replicas[observer].metric("fledge_fleet_replicas").await,
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_keeps_its_version_across_replicas_and_another_cookie_key_is_refused() {
    let redis = Redis::start();
    let (s, c) = (mock("17.0").await, mock("18.0").await);
    let replicas = start_fleet(&redis, &s, &c, 50.0, 2);
    formed(&replicas, 2).await;
    // Logged-in clients: each gets its version cookie from one replica and
    // shows it, with its session, to the other.
    let mut canary = 0;
    for i in 0..40 {
        let session = format!("session_id={}", fledge::mock_odoo::new_session());
        let first = Client::new(replicas[i % 2].addr)
            .get(HOST, "/web/login", &[("cookie", &session)])
            .await;
        let mut cookies: Vec<String> = first
            .cookies()
            .into_iter()
            .filter(|c| c.starts_with("fledge_"))
            .collect();
        assert!(!cookies.is_empty(), "no version cookie");
        cookies.push(session);
        let header = cookies.join("; ");
        for j in 0..4 {
            let other = Client::new(replicas[(i + j + 1) % 2].addr);
            let r = other.get(HOST, "/web/login", &[("cookie", &header)]).await;
            assert_eq!(
                r.version(),
                first.version(),
                "client {i} changed version on another replica"
            );
        }
        canary += usize::from(first.version() == "canary");
    }
    assert!((5..=35).contains(&canary), "{canary} of 40 on the canary");

    // A replica with another secret does not join.
    let dir = tempfile::tempdir().unwrap();
    let config = replica(&redis, &s, &c, 50.0, "intruder")
        .replace("{listen}", &format!("127.0.0.1:{}", free_port()))
        + &format!(
            "admin:\n  listen: \"127.0.0.1:{}\"\n  token_env: T\nstate_dir: \"{}\"\n",
            free_port(),
            dir.path().join("state").display()
        );
    std::fs::write(dir.path().join("f.yaml"), config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fledge"))
        .args(["run", "--config"])
        .arg(dir.path().join("f.yaml"))
        .env(SECRET.0, "another-secret-0123456789abcdefgh")
        .env("T", crate::util::ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("another key than the fleet's"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollback_made_alone_while_redis_hung_reaches_the_fleet_once_it_answers() {
    let redis = Redis::start();
    let (s, c) = (mock("17.0").await, mock("18.0").await);
    let replicas = start_fleet(&redis, &s, &c, 50.0, 2);
    formed(&replicas, 2).await;
    let _loads = load_each(&replicas, 40).await;
    redis.freeze();
    alone(&replicas).await;
    c.set_knobs(Knobs {
        error_rate: 0.3,
        ..Knobs::default()
    });
    assert!(
        eventually(10, || all_in_state(&replicas, "rolled_back")).await,
        "not rolled back alone"
    );
    // While Redis hangs, the fleet's record still says progressing.
    redis.thaw();
    let in_fleet = eventually(5, || async {
        let records = redis.command(&["HGETALL", "{fledge:test}:rollouts"]);
        records.contains("rolled_back") && !records.contains("progressing")
    })
    .await;
    assert!(
        in_fleet,
        "{}",
        redis.command(&["HGETALL", "{fledge:test}:rollouts"])
    );
    // Journaled in the fleet once, by a replica that decided alone.
    let settled = eventually(3, || async {
        let journal = fleet_journal(&replicas[0]).await;
        journal.iter().filter(|e| e["event"] == "rolled_back").count() == 1
    })
    .await;
    assert!(settled, "{:?}", fleet_journal(&replicas[0]).await);
    // And the fleet acts as one again: a resume on one replica is served by both.
    let r = replicas[1].admin("POST", "/api/v1/tenants/acme/resume", "").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(eventually(2, || all_in_state(&replicas, "progressing")).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_weight_changed_in_the_file_reaches_the_fleet_once() {
    let redis = Redis::start();
    let (s, c) = (mock("17.0").await, mock("18.0").await);
    let replicas = start_fleet(&redis, &s, &c, 50.0, 2);
    formed(&replicas, 2).await;
    // A ConfigMap update: every replica's file changes.
    for r in &replicas {
        let path = r.config_path();
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("canary_weight: 50", "canary_weight: 30");
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }
    let applied = eventually(5, || async {
        for r in &replicas {
            if tenant(r).await["weight"] != 30.0 {
                return false;
            }
        }
        true
    })
    .await;
    assert!(applied, "the file's weight did not reach every replica");
    // The first replica to sync writes it to the fleet; the other finds it
    // there (both at the fleet's generation, which the write moved on).
    let weights = || async {
        let journal = fleet_journal(&replicas[0]).await;
        journal
            .into_iter()
            .filter(|e| e["event"] == "weight")
            .collect::<Vec<Value>>()
    };
    assert!(eventually(5, || async { !weights().await.is_empty() }).await);
    let settled = eventually(5, || async {
        let g = redis.command(&["GET", "{fledge:test}:gen"]);
        let mut same = true;
        for r in &replicas {
            same &= g.contains(&format!("\r\n{}\r\n", fleet(r).await["generation"]));
        }
        same
    })
    .await;
    assert!(settled);
    let w = weights().await;
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0]["actor"], "file");
    assert_eq!(w[0]["after"]["weight"], 30.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollback_made_alone_survives_a_restart_before_redis_answers_again() {
    let redis = Redis::start();
    let (s, c) = (mock("17.0").await, mock("18.0").await);
    let mut replicas = start_fleet(&redis, &s, &c, 50.0, 1);
    formed(&replicas, 1).await;
    redis.freeze();
    alone(&replicas).await;
    let r = replicas[0]
        .admin("POST", "/api/v1/tenants/acme/rollback", "")
        .await;
    assert_eq!(
        r.status,
        200,
        "a rollback is taken alone: {}",
        String::from_utf8_lossy(&r.body)
    );
    let r = replicas[0]
        .admin("PUT", "/api/v1/tenants/acme/weight", r#"{"weight": 20}"#)
        .await;
    assert_eq!(r.status, 503, "only a rollback is taken while Redis hangs");
    // Restarted while Redis still hangs (an evicted pod), then Redis answers.
    replicas[0].kill();
    replicas[0].start_again();
    redis.thaw();
    let in_fleet = eventually(5, || async {
        redis
            .command(&["HGETALL", "{fledge:test}:rollouts"])
            .contains("rolled_back")
    })
    .await;
    assert!(
        in_fleet,
        "{}",
        redis.command(&["HGETALL", "{fledge:test}:rollouts"])
    );
    assert_eq!(tenant(&replicas[0]).await["state"], "rolled_back");
    let client = Client::new(replicas[0].addr);
    for _ in 0..20 {
        assert_eq!(client.get(HOST, "/web/login", &[]).await.version(), "stable");
    }
}
