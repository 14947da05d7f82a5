//! The mock Odoo answers like Odoo, and its fault knobs do what they say:
//! later tests and rehearsals rely on them to play a bad canary.

use fledge::mock_odoo::Knobs;

use crate::util::{call_kw, mock, Client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_rpc_errors_come_back_as_http_200_like_odoo() {
    let m = mock("18.0").await;
    let client = Client::new(m.addr());
    let ok = client.post_json("", "/jsonrpc", &[], &call_kw(3)).await;
    assert_eq!((ok.status.as_u16(), ok.json()["id"].as_u64()), (200, Some(3)));
    assert_eq!(ok.json()["result"]["server_version"], "18.0");
    assert_eq!(ok.header("x-odoo-version"), Some("18.0"));

    m.set_knobs(Knobs {
        jsonrpc_error_rate: 1.0,
        ..Knobs::default()
    });
    let err = client
        .post_json("", "/web/dataset/call_kw/res.partner/read", &[], &call_kw(4))
        .await;
    assert_eq!(err.status, 200);
    assert_eq!(err.json()["error"]["message"], "Odoo Server Error");
    assert_eq!(err.json()["id"], 4);
    assert!(err.json().get("result").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knobs_change_at_run_time_through_the_control_endpoint() {
    let m = mock("17.0").await;
    let client = Client::new(m.addr());
    assert_eq!(client.get("", "/web/login", &[]).await.status, 200);

    let r = client
        .send(
            "PUT",
            "",
            "/__mock/knobs",
            &[],
            crate::util::full(r#"{"error_rate": 1.0}"#),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["error_rate"], 1.0);
    assert_eq!(client.get("", "/web/login", &[]).await.status, 500);
    // Health stays green: it is what a load balancer probes.
    assert_eq!(client.get("", "/web/health", &[]).await.status, 200);

    let bad = client
        .send(
            "PUT",
            "",
            "/__mock/knobs",
            &[],
            crate::util::full(r#"{"error_rate": 2}"#),
        )
        .await;
    assert_eq!(bad.status, 422);
    let typo = client
        .send(
            "PUT",
            "",
            "/__mock/knobs",
            &[],
            crate::util::full(r#"{"eror_rate": 0}"#),
        )
        .await;
    assert_eq!(typo.status, 400);

    let stats = client.get("", "/__mock/stats", &[]).await.json();
    assert_eq!(stats["requests"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_sets_a_session_once_and_added_latency_is_applied() {
    let m = mock("17.0").await;
    let client = Client::new(m.addr());
    let first = client.get("", "/web/login", &[]).await;
    let sid = first
        .cookies()
        .into_iter()
        .find(|c| c.starts_with("session_id="))
        .expect("session_id set");
    let again = client.get("", "/web/login", &[("cookie", &sid)]).await;
    assert!(again.cookies().is_empty());

    m.set_knobs(Knobs {
        latency_ms: 300,
        ..Knobs::default()
    });
    let t = tokio::time::Instant::now();
    client
        .get("", "/web/assets/web.assets_frontend.min.js", &[])
        .await;
    assert!(t.elapsed() >= std::time::Duration::from_millis(300));
}
