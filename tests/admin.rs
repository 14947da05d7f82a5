//! The admin API: auth on every endpoint, the operations, optimistic
//! concurrency, persistence, and conformance to `docs/admin-api.yaml`.

use std::time::Duration;

use serde_json::Value;

use crate::util::{mock, Client, Resp, TestProxy, ADMIN_TOKEN};

fn config(s: &str, c: &str) -> String {
    format!(
        "listen: \"{{listen}}\"\nthreads: 2\npools:\n  v17: {{ workers: [\"{s}\"] }}\n  v18: {{ workers: [\"{c}\"] }}\n\
         tenants:\n  acme:\n    hosts: [\"acme.example.com\"]\n    stable: v17\n    canary: v18\n    canary_weight: 10\n  \
         beta:\n    hosts: [\"beta.example.com\"]\n    stable: v17\n"
    )
}

/// The OpenAPI description, as JSON.
pub(crate) fn spec() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/admin-api.yaml")).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

fn resolve<'a>(spec: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let mut node = spec;
            for part in r.trim_start_matches("#/").split('/') {
                node = &node[part];
            }
            resolve(spec, node)
        }
        None => v,
    }
}

/// A small JSON-schema check: type, nullable, required, properties, items,
/// enum, allOf, $ref. Enough for our own description.
fn check(spec: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(spec, schema);
    if value.is_null() && schema["nullable"] == true {
        return Ok(());
    }
    if let Some(all) = schema["allOf"].as_array() {
        return all.iter().try_for_each(|s| check(spec, s, value, at));
    }
    let ok = match schema["type"].as_str() {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("number") => value.is_number(),
        Some("integer") => value.is_u64() || value.is_i64(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    if !ok {
        return Err(format!("{at}: {value} is not a {}", schema["type"]));
    }
    if let Some(values) = schema["enum"].as_array() {
        if !values.contains(value) {
            return Err(format!("{at}: {value} is not one of {values:?}"));
        }
    }
    for r in schema["required"].as_array().into_iter().flatten() {
        let key = r.as_str().unwrap();
        if value.get(key).is_none() {
            return Err(format!("{at}: `{key}` is missing in {value}"));
        }
    }
    if let Some(props) = schema["properties"].as_object() {
        for (k, s) in props {
            if let Some(v) = value.get(k) {
                check(spec, s, v, &format!("{at}.{k}"))?;
            }
        }
    }
    if let (Some(items), Some(list)) = (schema.get("items"), value.as_array()) {
        for (i, v) in list.iter().enumerate() {
            check(spec, items, v, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// The answer must be documented for its path, method and status, and
/// its JSON body must match the documented schema.
pub(crate) fn conforms(spec: &Value, method: &str, path: &str, r: &Resp) {
    let path = path.split('?').next().unwrap();
    let segments: Vec<&str> = path.split('/').collect();
    let template = spec["paths"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|t| {
            let ts: Vec<&str> = t.split('/').collect();
            ts.len() == segments.len()
                && ts
                    .iter()
                    .zip(&segments)
                    .all(|(t, s)| t.starts_with('{') || t == s)
        })
        .max_by_key(|t| t.split('/').filter(|s| !s.starts_with('{')).count())
        .unwrap_or_else(|| panic!("{path} is not documented"));
    let op = &spec["paths"][template][method.to_lowercase()];
    assert!(op.is_object(), "{method} {template} is not documented");
    let status = r.status.as_u16().to_string();
    let response = resolve(spec, &op["responses"][&status]);
    assert!(
        response.is_object(),
        "{method} {path} answered {status}, which is not documented"
    );
    if let Some(schema) = response["content"].get("application/json").map(|c| &c["schema"]) {
        let body: Value = r.json();
        if let Err(e) = check(spec, schema, &body, "body") {
            panic!("{method} {path} {status}: {e}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_needs_the_token_and_get_never_mutates() {
    let (s, c) = (mock("17.0").await, mock("18.0").await);
    let proxy = TestProxy::start(&config(&s.addr().to_string(), &c.addr().to_string()));
    let spec = spec();
    let client = Client::new(proxy.admin);
    let endpoints = [
        ("GET", "/metrics", ""),
        ("GET", "/api/v1/tenants", ""),
        ("GET", "/api/v1/tenants/acme", ""),
        ("PUT", "/api/v1/tenants/acme/weight", r#"{"weight": 20}"#),
        ("POST", "/api/v1/tenants/acme/pause", ""),
        ("POST", "/api/v1/tenants/acme/resume", ""),
        ("POST", "/api/v1/tenants/acme/promote", ""),
        ("POST", "/api/v1/tenants/acme/rollback", ""),
        ("POST", "/api/v1/reload", ""),
        ("GET", "/api/v1/config", ""),
        ("GET", "/api/v1/journal", ""),
    ];
    for (method, path, body) in endpoints {
        let generation = proxy.admin("GET", "/api/v1/config", "").await.json()["generation"].clone();
        for auth in [
            None,
            Some("Bearer wrong-token-0123456789abc"),
            Some("Basic dGVzdA=="),
            Some(ADMIN_TOKEN),
        ] {
            let header = auth.map(|a| {
                if a == ADMIN_TOKEN {
                    format!("Bearer {a}")
                } else {
                    a.to_owned()
                }
            });
            let mut h = vec![];
            if let Some(v) = &header {
                h.push(("authorization", v.as_str()));
            }
            let r = client
                .send(method, "", path, &h, crate::util::full(body.to_owned()))
                .await;
            if auth == Some(ADMIN_TOKEN) {
                assert!(
                    r.status.is_success(),
                    "{method} {path}: {} {}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                );
            } else {
                assert_eq!(r.status, 401, "{method} {path} with {auth:?}");
                assert_eq!(r.header("www-authenticate"), Some("Bearer"));
                // A refused call changes nothing.
                let now = proxy.admin("GET", "/api/v1/config", "").await.json()["generation"].clone();
                assert_eq!(
                    now, generation,
                    "{method} {path} without a valid token changed state"
                );
            }
            if path != "/metrics" {
                conforms(&spec, method, path, &r);
            }
        }
    }
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            client.get("", path, &[]).await.status,
            200,
            "{path} needs no token"
        );
    }
    // Mutations cannot be made with GET, and GETs change nothing.
    let before = proxy.admin("GET", "/api/v1/config", "").await.json()["generation"].clone();
    for path in [
        "/api/v1/reload",
        "/api/v1/tenants/acme/rollback",
        "/api/v1/tenants/acme/weight",
        "/api/v1/tenants/acme/promote",
    ] {
        let r = proxy.admin("GET", path, "").await;
        assert_eq!(r.status, 405, "GET {path}");
    }
    assert_eq!(proxy.admin("POST", "/api/v1/tenants", "").await.status, 405);
    assert_eq!(
        proxy.admin("GET", "/api/v1/config", "").await.json()["generation"],
        before
    );
    assert_eq!(proxy.admin("GET", "/api/v1/nothing", "").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_change_the_canary_and_bad_calls_get_4xx_json() {
    let (s, c) = (mock("17.0").await, mock("18.0").await);
    let proxy = TestProxy::start(&config(&s.addr().to_string(), &c.addr().to_string()));
    let spec = spec();
    let call = |method: &'static str, path: &'static str, body: &'static str| {
        let proxy = &proxy;
        let spec = &spec;
        async move {
            let r = proxy.admin(method, path, body).await;
            conforms(spec, method, path, &r);
            r
        }
    };

    let r = call("PUT", "/api/v1/tenants/acme/weight", r#"{"weight": 37.5}"#).await;
    assert_eq!(
        (r.status.as_u16(), r.json()["weight"].as_f64()),
        (200, Some(37.5))
    );
    assert_eq!(
        proxy.metric("fledge_canary_weight{tenant=\"acme\"}").await,
        Some(37.5)
    );
    assert_eq!(
        call("PUT", "/api/v1/tenants/acme/weight", r#"{"weight": 101}"#)
            .await
            .status,
        422
    );
    assert_eq!(
        call("PUT", "/api/v1/tenants/acme/weight", r#"{"weight": 1.234}"#)
            .await
            .status,
        422
    );
    assert_eq!(
        call("PUT", "/api/v1/tenants/acme/weight", r#"{"wieght": 10}"#)
            .await
            .status,
        400
    );
    assert_eq!(
        call("PUT", "/api/v1/tenants/acme/weight", "not json")
            .await
            .status,
        400
    );
    assert_eq!(
        call("PUT", "/api/v1/tenants/nobody/weight", r#"{"weight": 1}"#)
            .await
            .status,
        404
    );
    assert_eq!(
        call("PUT", "/api/v1/tenants/beta/weight", r#"{"weight": 1}"#)
            .await
            .status,
        422
    );
    assert_eq!(call("GET", "/api/v1/tenants/nobody", "").await.status, 404);

    assert_eq!(
        call("POST", "/api/v1/tenants/acme/pause", "").await.json()["state"],
        "paused"
    );
    assert_eq!(call("POST", "/api/v1/tenants/acme/pause", "").await.status, 409);
    assert_eq!(
        call("POST", "/api/v1/tenants/acme/resume", "").await.json()["state"],
        "progressing"
    );
    let r = call("POST", "/api/v1/tenants/acme/rollback", "").await;
    assert_eq!(
        (r.json()["state"].as_str(), r.json()["weight"].as_f64()),
        (Some("rolled_back"), Some(0.0))
    );
    assert_eq!(
        call("PUT", "/api/v1/tenants/acme/weight", r#"{"weight": 5}"#)
            .await
            .status,
        409
    );
    assert_eq!(call("POST", "/api/v1/tenants/acme/promote", "").await.status, 409);
    let r = call("POST", "/api/v1/tenants/acme/resume", "").await;
    assert_eq!(
        (r.json()["state"].as_str(), r.json()["weight"].as_f64()),
        (Some("progressing"), Some(10.0))
    );
    let r = call("POST", "/api/v1/tenants/acme/promote", "").await;
    assert_eq!(
        (r.json()["state"].as_str(), r.json()["weight"].as_f64()),
        (Some("promoted"), Some(100.0))
    );
    let client = Client::new(proxy.addr);
    assert_eq!(
        client.get("acme.example.com", "/web/login", &[]).await.version(),
        "canary"
    );

    // Every change is in the journal, by the API.
    let journal = call("GET", "/api/v1/journal", "").await.json();
    let events: Vec<&str> = journal["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor"] == "api")
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        [
            "weight",
            "paused",
            "resumed",
            "rolled_back",
            "resumed",
            "promoted"
        ]
    );
    assert!(proxy
        .metrics()
        .await
        .contains("fledge_rollbacks_total{tenant=\"acme\",reason=\"manual\"} 1"));
    let last = journal["entries"].as_array().unwrap().last().unwrap()["unix_ms"]
        .as_u64()
        .unwrap();
    let since = proxy
        .admin("GET", &format!("/api/v1/journal?since={}", last - 1), "")
        .await
        .json();
    assert_eq!(since["entries"].as_array().unwrap().len(), 1);
    assert_eq!(
        proxy
            .admin("GET", "/api/v1/journal?since=yesterday", "")
            .await
            .status,
        400
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_if_match_gets_409_and_changes_nothing() {
    let (s, c) = (mock("17.0").await, mock("18.0").await);
    let proxy = TestProxy::start(&config(&s.addr().to_string(), &c.addr().to_string()));
    let generation = proxy.admin("GET", "/api/v1/config", "").await.json()["generation"]
        .as_u64()
        .unwrap();
    let current = format!("\"{generation}\"");
    let r = proxy
        .admin_with(
            "PUT",
            "/api/v1/tenants/acme/weight",
            r#"{"weight": 20}"#,
            &[("if-match", &current)],
        )
        .await;
    assert_eq!(r.status, 200);
    let etag = r.header("etag").unwrap().to_owned();
    assert_ne!(etag, current);
    // Someone else's client still holds the old generation.
    let r = proxy
        .admin_with(
            "PUT",
            "/api/v1/tenants/acme/weight",
            r#"{"weight": 90}"#,
            &[("if-match", &current)],
        )
        .await;
    assert_eq!(r.status, 409);
    assert!(r.json()["error"].as_str().unwrap().contains("stale"));
    assert_eq!(
        proxy.metric("fledge_canary_weight{tenant=\"acme\"}").await,
        Some(20.0)
    );
    let r = proxy
        .admin_with("POST", "/api/v1/tenants/acme/pause", "", &[("if-match", &etag)])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        proxy
            .admin_with("POST", "/api/v1/reload", "", &[("if-match", &current)])
            .await
            .status,
        409
    );
    assert_eq!(
        proxy
            .admin_with("POST", "/api/v1/tenants/acme/resume", "", &[("if-match", "soon")])
            .await
            .status,
        400
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_weight_survives_a_reload_of_another_tenant_and_a_restart() {
    let (s, c) = (mock("17.0").await, mock("18.0").await);
    let mut proxy = TestProxy::start(&config(&s.addr().to_string(), &c.addr().to_string()));
    assert_eq!(
        proxy
            .admin("PUT", "/api/v1/tenants/acme/weight", r#"{"weight": 42}"#)
            .await
            .status,
        200
    );

    // An unrelated edit of the file: beta gets another host.
    let text = std::fs::read_to_string(proxy.config_path()).unwrap();
    std::fs::write(
        proxy.config_path(),
        text.replace(
            "[\"beta.example.com\"]",
            "[\"beta.example.com\", \"b.example.com\"]",
        ),
    )
    .unwrap();
    let r = proxy.admin("POST", "/api/v1/reload", "").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let beta = proxy.admin("GET", "/api/v1/tenants/beta", "").await.json();
    assert_eq!(
        beta["hosts"],
        serde_json::json!(["beta.example.com", "b.example.com"])
    );
    assert_eq!(
        proxy.admin("GET", "/api/v1/tenants/acme", "").await.json()["weight"],
        42.0
    );

    proxy.restart();
    assert_eq!(
        proxy.admin("GET", "/api/v1/tenants/acme", "").await.json()["weight"],
        42.0
    );
    assert_eq!(
        proxy.metric("fledge_canary_weight{tenant=\"acme\"}").await,
        Some(42.0)
    );
}

#[test]
fn the_conformance_check_catches_undocumented_shapes() {
    let spec = spec();
    let tenant = &spec["components"]["schemas"]["Tenant"];
    let bad = serde_json::json!({"name": "acme", "hosts": [], "stable": "v17", "canary": null, "policy": "default"});
    assert!(check(&spec, tenant, &bad, "body").unwrap_err().contains("weight"));
    let wrong_state = serde_json::json!({"name": "a", "hosts": [], "stable": "s", "canary": null, "policy": "p",
        "weight": 1, "state": "exploded", "reason": null, "verdict": null, "figures": {"stable": null, "canary": null}});
    assert!(check(&spec, tenant, &wrong_state, "body").is_err());
}

/// Issue 23: the admin listener has a connection cap of its own, and a
/// request header that does not come whole in time closes its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_caps_connections_and_cuts_slow_headers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let worker = mock("17.0").await;
    let config = crate::util::one_worker(
        worker.addr(),
        "limits:\n  header_timeout_seconds: 2\nadmin:\n  listen: \"{admin_listen}\"\n  token_env: FLEDGE_TEST_ADMIN_TOKEN\n  max_connections: 5\n",
    );
    let proxy = TestProxy::start(&config);
    // Five half-sent headers hold the five places...
    let mut slow = Vec::new();
    for _ in 0..5 {
        let mut c = tokio::net::TcpStream::connect(proxy.admin).await.unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(c);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...so a sixth is closed at once.
    let mut sixth = tokio::net::TcpStream::connect(proxy.admin).await.unwrap();
    let _ = sixth.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), sixth.read_to_end(&mut out)).await;
    assert!(
        read.is_ok() && out.is_empty(),
        "a sixth admin connection was served: {out:?}"
    );
    // The slow ones are cut at the header deadline (2 s), not left open.
    let started = tokio::time::Instant::now();
    for c in slow.iter_mut() {
        let mut b = [0u8; 64];
        match tokio::time::timeout(Duration::from_secs(10), c.read(&mut b)).await {
            Ok(Ok(0) | Err(_)) => {}
            other => panic!("a slow admin header got {other:?}"),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    // The places are free again: the API answers, and counted what it did.
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains("fledge_admin_connections_refused_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("fledge_admin_slow_headers_total 5"), "{metrics}");
}

/// `docs/metrics.md` documents every metric fledge exports: each family a
/// running fledge serves, and each name the code defines (the fleet's and
/// the worker names' appear only with those configured).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_is_documented() {
    let root = env!("CARGO_MANIFEST_DIR");
    let doc = std::fs::read_to_string(format!("{root}/docs/metrics.md")).unwrap();
    let documented = |name: &str| doc.contains(&format!("`{name}`"));
    let worker = crate::util::mock("17.0").await;
    let proxy = TestProxy::start(&crate::util::one_worker(worker.addr(), ""));
    let text = String::from_utf8(proxy.admin("GET", "/metrics", "").await.body.to_vec()).unwrap();
    let served: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    assert!(served.len() > 20, "{text}");
    let mut missing: Vec<String> = served
        .iter()
        .filter(|n| !documented(n))
        .map(|n| (*n).to_owned())
        .collect();
    // The names the code defines, served or not here.
    fn scan(dir: &std::path::Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                scan(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for piece in text.split("\"fledge_").skip(1) {
                    let name: String = piece
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    if !name.is_empty() && piece[name.len()..].starts_with('"') {
                        out.push(format!("fledge_{name}"));
                    }
                }
            }
        }
    }
    let mut defined = Vec::new();
    scan(std::path::Path::new(&format!("{root}/src")), &mut defined);
    // Cookie names, not metrics.
    defined.retain(|n| n != "fledge_version" && n != "fledge_bucket");
    assert!(defined.len() > 30, "{defined:?}");
    missing.extend(defined.into_iter().filter(|n| !documented(n)));
    missing.sort();
    missing.dedup();
    assert!(missing.is_empty(), "not in docs/metrics.md: {missing:?}");
}
