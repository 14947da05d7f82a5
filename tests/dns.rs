//! Workers by DNS name (issue 17): a pool follows its name's answers while
//! load runs, a name that stops resolving keeps its last workers, a start
//! with a name that never resolves is refused. The name server is ours: a
//! mock answering A queries from a table the test changes.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use fledge::mock_odoo::{MockOdoo, Options};
use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::{rdata::A, RData, Record, RecordType};

use crate::util::{eventually, start_load, TestProxy};

/// A name server answering A queries from `table` (name, lower case with
/// its final dot → addresses); `None` for a name: SERVFAIL (a broken
/// server), absent: NXDOMAIN. AAAA queries get no answer.
struct MockDns {
    addr: SocketAddr,
    table: Arc<ArcSwap<HashMap<String, Option<Vec<Ipv4Addr>>>>>,
    queries: Arc<std::sync::atomic::AtomicU64>,
}

impl MockDns {
    async fn start() -> MockDns {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let table: Arc<ArcSwap<HashMap<String, Option<Vec<Ipv4Addr>>>>> = Arc::default();
        let queries = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (t, q) = (Arc::clone(&table), Arc::clone(&queries));
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                q.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut answer = Message::new();
                answer
                    .set_id(query.id())
                    .set_message_type(MessageType::Response)
                    .set_recursion_desired(query.recursion_desired())
                    .set_recursion_available(true)
                    .set_authoritative(true);
                for question in query.queries() {
                    answer.add_query(question.clone());
                    let name = question.name().to_string().to_ascii_lowercase();
                    match t.load().get(&name) {
                        None => {
                            answer.set_response_code(ResponseCode::NXDomain);
                        }
                        Some(None) => {
                            answer.set_response_code(ResponseCode::ServFail);
                        }
                        Some(Some(ips)) if question.query_type() == RecordType::A => {
                            for ip in ips {
                                answer.add_answer(Record::from_rdata(
                                    question.name().clone(),
                                    0,
                                    RData::A(A(*ip)),
                                ));
                            }
                        }
                        Some(Some(_)) => {}
                    }
                }
                let _ = socket.send_to(&answer.to_vec().unwrap(), from).await;
            }
        });
        MockDns { addr, table, queries }
    }

    fn set(&self, name: &str, ips: Option<&[Ipv4Addr]>) {
        let mut table = HashMap::clone(&self.table.load());
        table.insert(format!("{name}."), ips.map(<[Ipv4Addr]>::to_vec));
        self.table.store(Arc::new(table));
    }
}

fn config(dns: SocketAddr, worker: &str) -> String {
    format!(
        r#"listen: "{{listen}}"
threads: 2
dns:
  servers: ["{dns}"]
pools:
  v17:
    workers: ["{worker}"]
    dns_refresh_seconds: 1
    health_check: {{ interval_ms: 200 }}
tenants:
  acme:
    hosts: ["acme.example.com"]
    stable: v17
"#
    )
}

/// Three mock workers on one port, at 127.0.0.10, .11 and .12.
async fn three_workers() -> (u16, Vec<MockOdoo>) {
    let first = MockOdoo::start("127.0.0.10:0".parse().unwrap(), Options::new("17.0"))
        .await
        .unwrap();
    let port = first.addr().port();
    let mut workers = vec![first];
    for last in [11, 12] {
        let addr = SocketAddr::from(([127, 0, 0, last], port));
        workers.push(MockOdoo::start(addr, Options::new("17.0")).await.unwrap());
    }
    (port, workers)
}

const IPS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(127, 0, 0, 10),
    Ipv4Addr::new(127, 0, 0, 11),
    Ipv4Addr::new(127, 0, 0, 12),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_by_name_follows_its_answers_under_load_without_a_failed_request() {
    let dns = MockDns::start().await;
    let (port, workers) = three_workers().await;
    dns.set("odoo.test", Some(&IPS[..1]));
    let name = format!("odoo.test:{port}");
    let proxy = TestProxy::start(&config(dns.addr, &name));
    let served = |i: usize| workers[i].stats().requests;
    let load = start_load(proxy.addr, "acme.example.com", 100, true);

    assert!(eventually(10, || async { served(0) > 20 }).await);
    assert_eq!((served(1), served(2)), (0, 0), "only the answer's worker");
    let metric = format!("fledge_worker_name_addresses{{name=\"{name}\"}}");
    assert_eq!(proxy.metric(&metric).await, Some(1.0));

    // A scale-up: the new pods get traffic.
    dns.set("odoo.test", Some(&IPS));
    let grown = eventually(10, || async { served(1) > 20 && served(2) > 20 }).await;
    assert!(grown, "new workers got {} and {}", served(1), served(2));
    assert_eq!(proxy.metric(&metric).await, Some(3.0));

    // A rollout replaced the first pod: it drains, the others carry on.
    dns.set("odoo.test", Some(&IPS[1..]));
    let drained = eventually(10, || async {
        let before = served(0);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        served(0) == before
    })
    .await;
    assert!(drained, "the removed worker still gets requests");
    let (b, c) = (served(1), served(2));
    assert!(eventually(5, || async { served(1) > b + 20 && served(2) > c + 20 }).await);

    // The name server breaks: the last addresses keep serving, and it says so.
    dns.set("odoo.test", None);
    let resolving = format!("fledge_worker_name_resolving{{name=\"{name}\"}}");
    assert!(eventually(10, || async { proxy.metric(&resolving).await == Some(0.0) }).await);
    let (b, c) = (served(1), served(2));
    assert!(eventually(5, || async { served(1) > b + 20 && served(2) > c + 20 }).await);
    assert!(
        proxy.log().contains("worker name does not resolve"),
        "{}",
        proxy.log()
    );
    dns.set("odoo.test", Some(&IPS[1..]));
    assert!(eventually(10, || async { proxy.metric(&resolving).await == Some(1.0) }).await);

    let stats = Arc::clone(&load.stats);
    drop(load);
    // Requests sent last get their answers.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let sent = get(&stats.sent);
    assert!(sent > 500, "{sent} requests");
    assert_eq!(get(&stats.failed), 0, "failed requests of {sent}");
    assert_eq!(get(&stats.transport_errors), 0, "transport errors");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_never_resolves_refuses_the_start_and_a_reload() {
    let dns = MockDns::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fledge.yaml");
    let text = config(dns.addr, "nowhere.test:8069").replace("{listen}", "127.0.0.1:0");
    std::fs::write(&path, &text).unwrap();
    // `fledge check` takes a name: it does not resolve anything.
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_fledge"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_fledge"))
        .args(["run", "--config"])
        .arg(&path)
        .env("FLEDGE_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        stderr.contains(&format!(
            "{}:7: pools.v17.workers: `nowhere.test:8069` does not resolve",
            path.display()
        )),
        "{stderr}"
    );
    assert!(
        dns.queries.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "our name server was asked"
    );

    // Running, a reload that brings a name that does not resolve is
    // refused, and the running pool keeps serving.
    let (port, workers) = three_workers().await;
    dns.set("odoo.test", Some(&IPS[..1]));
    let proxy = TestProxy::start(&config(dns.addr, &format!("odoo.test:{port}")));
    let path = proxy.config_path();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("odoo.test:", "nowhere.test:");
    std::fs::write(&path, text).unwrap();
    let r = proxy.admin("POST", "/api/v1/reload", "").await;
    assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("does not resolve"));
    let client = crate::util::Client::new(proxy.addr);
    assert_eq!(
        client.get("acme.example.com", "/web/login", &[]).await.status,
        200
    );
    assert_eq!(workers[0].stats().requests, 1);
}
