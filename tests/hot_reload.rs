//! Hot reload: the config file replaced in every way deploy tools replace
//! it, under load, loses nothing; broken files are refused and change
//! nothing.

use std::path::Path;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use xxhash_rust::xxh3::xxh3_64;

use crate::util::{eventually, mock, start_load, Client, TestProxy};

const HOST: &str = "acme.example.com";

/// How a deploy tool puts a new file in place.
#[derive(Clone, Copy, Debug)]
enum Write {
    /// Truncate and write the file itself.
    InPlace,
    /// Write a sibling, rename it over the file.
    AtomicRename,
    /// Kubernetes ConfigMap: the file is a symlink to `..data/fledge.yaml`,
    /// and `..data` is a symlink swapped to a new timestamped directory.
    ConfigMapSwap,
}

fn put(dir: &Path, text: &str, how: Write, n: usize) {
    let file = dir.join("fledge.yaml");
    match how {
        Write::InPlace => std::fs::write(&file, text).unwrap(),
        Write::AtomicRename => {
            let tmp = dir.join(".fledge.yaml.tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, &file).unwrap();
        }
        Write::ConfigMapSwap => {
            let version = dir.join(format!("..2026_{n:04}"));
            std::fs::create_dir(&version).unwrap();
            std::fs::write(version.join("fledge.yaml"), text).unwrap();
            let tmp = dir.join("..data_tmp");
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(version.file_name().unwrap(), &tmp).unwrap();
            std::fs::rename(&tmp, dir.join("..data")).unwrap();
            if !std::fs::symlink_metadata(&file).unwrap().file_type().is_symlink() {
                let link = dir.join(".fledge.yaml.link");
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink("..data/fledge.yaml", &link).unwrap();
                std::fs::rename(&link, &file).unwrap();
            }
        }
    }
}

/// Wait until fledge serves the config whose text is `text`.
async fn applied(proxy: &TestProxy, text: &str) -> bool {
    let want = format!("{:016x}", xxh3_64(text.as_bytes()));
    eventually(10, || async {
        proxy.admin("GET", "/api/v1/config", "").await.json()["source_hash"] == want.as_str()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_reloads_under_load_fail_no_request_and_keep_the_websocket() {
    let (s1, s2) = (mock("17.0").await, mock("17.0").await);
    let (c1, c2) = (mock("18.0").await, mock("18.0").await);
    let config = |i: usize| {
        let stable = if i.is_multiple_of(2) {
            format!("\"{}\"", s1.addr())
        } else {
            format!("\"{}\", \"{}\"", s1.addr(), s2.addr())
        };
        let canary = if i.is_multiple_of(3) { c1.addr() } else { c2.addr() };
        format!(
            "listen: \"{{listen}}\"\nthreads: 2\npools:\n  v17: {{ workers: [{stable}] }}\n  v18: {{ workers: [\"{canary}\"] }}\n\
             tenants:\n  acme:\n    hosts: [\"acme.example.com\"]\n    stable: v17\n    canary: v18\n    canary_weight: {}\n  \
             beta{i}:\n    hosts: [\"beta{i}.example.com\"]\n    stable: v17\n",
            (i * 7) % 100
        )
    };
    let proxy = TestProxy::start(&config(0));
    let text = |i: usize| {
        let t = config(i).replace("{listen}", &proxy.addr.to_string());
        let tail = std::fs::read_to_string(proxy.config_path()).unwrap();
        // Keep the admin and state_dir lines TestProxy appended.
        let extra: String = tail
            .lines()
            .skip_while(|l| !l.starts_with("admin:"))
            .map(|l| format!("{l}\n"))
            .collect();
        t + &extra
    };

    // A WebSocket that works before the first reload.
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{HOST}/websocket"), tcp)
        .await
        .unwrap();
    ws.send(Message::Text("before".into())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::Text("before".into()));

    let load = start_load(proxy.addr, HOST, 200, false);
    let dir = proxy.dir.path().to_owned();
    for i in 1..=100 {
        let how = [Write::InPlace, Write::AtomicRename, Write::ConfigMapSwap][i % 3];
        let t = text(i);
        put(&dir, &t, how, i);
        assert!(
            applied(&proxy, &t).await,
            "reload {i} ({how:?}) not applied:\n{}",
            proxy.log()
        );
    }
    // Let the last requests finish, then count: every one was answered.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (sent, failed, transport) = (
        load.get(&load.stats.sent),
        load.get(&load.stats.failed),
        load.get(&load.stats.transport_errors),
    );
    drop(load);
    assert!(sent > 500, "only {sent} requests sent");
    assert_eq!(
        (failed, transport),
        (0, 0),
        "{failed} failed requests ({transport} without an answer) of {sent}"
    );

    ws.send(Message::Text("after".into())).await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        echo,
        Message::Text("after".into()),
        "the WebSocket did not survive"
    );
    let applied_count = proxy
        .metric("fledge_config_reloads_total{result=\"applied\"}")
        .await
        .unwrap();
    assert!(applied_count >= 100.0, "{applied_count}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_files_are_refused_with_their_reason_and_change_nothing() {
    let (s, c) = (mock("17.0").await, mock("18.0").await);
    let good = format!(
        "listen: \"{{listen}}\"\nthreads: 2\npools:\n  v17: {{ workers: [\"{}\"] }}\n  v18: {{ workers: [\"{}\"] }}\n\
         policies:\n  default:\n    override_from: [\"127.0.0.0/8\"]\n\
         tenants:\n  acme:\n    hosts: [\"acme.example.com\"]\n    stable: v17\n    canary: v18\n    canary_weight: 0\n",
        s.addr(),
        c.addr()
    );
    let proxy = TestProxy::start(&good);
    let running = std::fs::read_to_string(proxy.config_path()).unwrap();
    let client = Client::new(proxy.addr);
    let broken: Vec<(&str, String)> = vec![
        ("syntax", running.replace("    stable: v17\n", "   stable: v17\n")),
        (
            "unknown pool",
            running.replace("    stable: v17\n", "    stable: v99\n"),
        ),
        (
            "duplicate host",
            running.replace(
                "tenants:\n",
                "tenants:\n  twin:\n    hosts: [\"acme.example.com\"]\n    stable: v17\n",
            ),
        ),
        (
            "overlapping host",
            running.replace(
                "tenants:\n",
                "tenants:\n  wild:\n    hosts: [\"*.example.com\"]\n    stable: v17\n",
            ),
        ),
        ("bad CIDR", running.replace("127.0.0.0/8", "127.0.0.0/40")),
        (
            "weight 101",
            running.replace("canary_weight: 0", "canary_weight: 101"),
        ),
        (
            "weight with three decimals",
            running.replace("canary_weight: 0", "canary_weight: 1.234"),
        ),
        ("empty file", String::new()),
        (
            "binary garbage",
            String::from_utf8_lossy(&[0xff, 0xfe, 0x00, 0x13, 0x37, 0x80, 0x81]).into_owned(),
        ),
        ("truncated write", running[..running.len() / 2].to_owned()),
        (
            "unknown key",
            running.replace("threads: 2\n", "threads: 2\nthread: 3\n"),
        ),
        (
            "empty workers",
            running.replace(&format!("[\"{}\"]", c.addr()), "[]"),
        ),
        (
            "host name as worker",
            running.replace(&c.addr().to_string(), "odoo18:8069"),
        ),
        (
            "canary is stable",
            running.replace("    canary: v18\n", "    canary: v17\n"),
        ),
        (
            "steps without 100",
            running.replace(
                "    override_from",
                "    steps: [5, 50]\n    step_interval_seconds: 1\n    override_from",
            ),
        ),
        (
            "negative timeout",
            running.replace("threads: 2\n", "threads: 2\ntimeouts: { connect_ms: -1 }\n"),
        ),
        ("a list, not a mapping", "- listen\n- pools\n".to_owned()),
    ];
    assert!(broken.len() >= 15);
    for (i, (what, text)) in broken.iter().enumerate() {
        put(
            proxy.dir.path(),
            text,
            if i % 2 == 0 {
                Write::AtomicRename
            } else {
                Write::InPlace
            },
            i,
        );
        let r = proxy.admin("POST", "/api/v1/reload", "").await;
        assert_eq!(r.status, 422, "{what}: {}", String::from_utf8_lossy(&r.body));
        let reason = r.json()["error"].as_str().unwrap().to_owned();
        assert!(
            reason.contains("fledge.yaml"),
            "{what}: the reason names no file: {reason}"
        );
        let status = proxy.admin("GET", "/api/v1/config", "").await.json();
        assert_eq!(status["last_reload"]["result"], "rejected", "{what}");
        // The watcher may have seen the write too (even half of it, in
        // place): its refusal may be the last one, with its own reason.
        assert!(
            status["last_reload"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("fledge.yaml")),
            "{what}: {status}"
        );
        // Traffic unchanged: the old config serves, override included.
        let r = client
            .get(HOST, "/web/login", &[("x-fledge-version", "canary")])
            .await;
        assert_eq!((r.status.as_u16(), r.version()), (200, "canary"), "{what}");
        let r = client.get(HOST, "/web/login", &[]).await;
        assert_eq!((r.status.as_u16(), r.version()), (200, "stable"), "{what}");
    }
    let rejected = proxy
        .metric("fledge_config_reloads_total{result=\"rejected\"}")
        .await
        .unwrap();
    assert!(rejected >= broken.len() as f64, "{rejected}");
    let journal = proxy.journal();
    assert!(journal.iter().filter(|e| e["event"] == "reload_rejected").count() >= broken.len());
    assert!(proxy.log().contains("config reload rejected"));

    // And the good file again is taken.
    put(
        proxy.dir.path(),
        &running.replace("canary_weight: 0", "canary_weight: 100"),
        Write::AtomicRename,
        99,
    );
    let r = proxy.admin("POST", "/api/v1/reload", "").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(client.get(HOST, "/web/login", &[]).await.version(), "canary");
}
