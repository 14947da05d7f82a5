//! Deployed behind Traefik or a load balancer, on Kubernetes (issue 17):
//! the scrapers' metrics endpoint, process metrics.

use crate::util::{free_port, mock, one_worker, Client, TestProxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapers_get_metrics_without_the_token_and_nothing_else() {
    let worker = mock("17.0").await;
    let scrape = format!("127.0.0.1:{}", free_port());
    let proxy = TestProxy::start(&one_worker(
        worker.addr(),
        &format!("metrics:\n  listen: \"{scrape}\"\n"),
    ));
    let client = Client::new(scrape.parse().unwrap());
    let r = client.get("", "/metrics", &[]).await;
    assert_eq!(r.status, 200);
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert!(
        text.contains("fledge_tenants") || text.contains("fledge_config_reloads_total"),
        "{text}"
    );
    // The standard process metrics, as every exporter names them.
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
    // Nothing else there, with or without a token.
    for path in ["/api/v1/tenants", "/healthz", "/", "/metrics/"] {
        assert_eq!(client.get("", path, &[]).await.status, 404, "{path}");
    }
    let auth = format!("Bearer {}", crate::util::ADMIN_TOKEN);
    let r = client
        .get("", "/api/v1/tenants", &[("authorization", &auth)])
        .await;
    assert_eq!(r.status, 404, "the admin API is not on the scrapers' listener");
    let r = client
        .send("POST", "", "/metrics", &[], crate::util::full(""))
        .await;
    assert_eq!(r.status, 405);
    // The admin listener still wants its token, for /metrics too.
    let admin = Client::new(proxy.admin);
    assert_eq!(admin.get("", "/metrics", &[]).await.status, 401);
    assert_eq!(proxy.admin("GET", "/metrics", "").await.status, 200);
}
