//! Process lifecycle: Pingora's graceful upgrade (`fledge run --upgrade`,
//! then SIGQUIT to the old process) under load.

use std::time::Duration;

use crate::util::{eventually, mock, start_load, two_pools, TestProxy};

const HOST: &str = "acme.example.com";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_graceful_upgrade_under_load_fails_no_request_and_keeps_the_canary_state() {
    let (s, c) = (mock("17.0").await, mock("18.0").await);
    let mut proxy = TestProxy::start(&two_pools(&[&s], &[&c], 20.0, ""));
    // A weight set through the API: the new process must serve it too.
    let r = proxy
        .admin("PUT", "/api/v1/tenants/acme/weight", r#"{"weight": 35}"#)
        .await;
    assert_eq!(r.status, 200);
    let load = start_load(proxy.addr, HOST, 200, false);
    assert!(eventually(10, || async { load.get(&load.stats.sent) > 100 }).await);

    let old = proxy.pid();
    let before = load.get(&load.stats.sent);
    tokio::task::block_in_place(|| proxy.upgrade());
    assert_ne!(proxy.pid(), old);
    // The load goes on against the new process alone.
    let after = load.get(&load.stats.sent);
    assert!(eventually(10, || async { load.get(&load.stats.sent) > after + 200 }).await);
    assert!(after > before + 200, "the load stalled during the upgrade");

    assert_eq!(
        load.get(&load.stats.failed),
        0,
        "requests failed:\n{}",
        proxy.log()
    );
    assert_eq!(load.get(&load.stats.transport_errors), 0);
    assert_eq!(
        proxy.metric("fledge_canary_weight{tenant=\"acme\"}").await,
        Some(35.0)
    );
    let served_by_new = proxy.metrics().await;
    assert!(
        served_by_new.contains("fledge_requests_total{tenant=\"acme\""),
        "{served_by_new}"
    );
    drop(load);
    tokio::time::sleep(Duration::from_millis(100)).await;
}
