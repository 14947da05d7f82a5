use std::path::PathBuf;

use super::*;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config")
}

/// Every `invalid_*.yaml` fixture says in its first line the message it must
/// be refused with, and marks the line that message must name.
#[test]
fn every_invalid_fixture_is_refused_naming_file_line_key_and_reason() {
    let mut seen = 0;
    let mut failures = Vec::new();
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("invalid_") {
            continue;
        }
        seen += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        let expected = text.lines().next().unwrap().strip_prefix("# Refused: ").unwrap();
        let line = text
            .lines()
            .position(|l| !l.starts_with('#') && l.contains("# <- error"))
            .unwrap()
            + 1;
        let err = load(&path).expect_err(&name);
        let shown = err.to_string();
        let want = format!("{}:{line}: {expected}", path.display());
        if !shown.contains(&want) {
            failures.push(format!("{name}:\n  got:  {shown}\n  want: {want}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(seen >= 12, "only {seen} invalid fixtures");
}

#[test]
fn valid_fixtures_and_shipped_configs_are_accepted() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for path in [
        fixtures().join("valid_minimal.yaml"),
        fixtures().join("valid_full.yaml"),
        root.join("config/fledge.example.yaml"),
        root.join("config/demo.yaml"),
        root.join("deploy/kubernetes/fledge.yaml"),
    ] {
        if let Err(e) = load(&path) {
            panic!("{} refused: {e}", path.display());
        }
    }
}

#[test]
fn full_config_is_read_as_written() {
    let c = load(&fixtures().join("valid_full.yaml")).unwrap();
    assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.dns_servers, ["10.96.0.10:53".parse::<SocketAddr>().unwrap()]);
    let v18 = &c.pools["v18"];
    assert_eq!(v18.workers, ["127.0.0.1:19069".parse::<SocketAddr>().unwrap()]);
    assert_eq!(
        v18.worker_names,
        [WorkerName {
            host: "odoo-v18.acme.svc.cluster.local".into(),
            port: 8069
        }]
    );
    assert_eq!(v18.dns_refresh, Duration::from_secs(10));
    assert_eq!(c.trusted_proxies, ["10.0.0.0/8".parse::<IpNet>().unwrap()]);
    assert_eq!(
        c.proxy_protocol_from,
        [
            "10.1.0.0/16".parse::<IpNet>().unwrap(),
            "127.0.0.1/32".parse().unwrap()
        ]
    );
    let acme = &c.tenants["acme"];
    assert_eq!(acme.canary_weight.basis_points(), 2_000);
    assert_eq!(acme.canary.as_deref(), Some("v18"));
    assert_eq!(
        acme.hosts,
        vec![
            HostPattern::Exact("acme.example.com".into()),
            HostPattern::Wildcard("acme.example.com".into())
        ]
    );
    assert_eq!(
        c.pools["v17"].websocket_workers,
        vec!["127.0.0.1:18072".parse().unwrap()]
    );
    assert_eq!(
        c.policies["default"].override_from,
        vec!["127.0.0.0/8".parse::<IpNet>().unwrap()]
    );
    // A tenant without a policy gets `default`, without a canary weight 0.
    assert_eq!(c.tenants["beta"].policy, "default");
    assert_eq!(c.tenants["beta"].canary_weight, Weight::default());
}

#[test]
fn all_problems_of_a_file_are_reported_at_once() {
    let text = "listen: \"127.0.0.1:8080\"\npools:\n  a: { workers: [] }\ntenants:\n  t:\n    hosts: [\"x.example\"]\n    stable: nope\n    canary_weight: 101\n";
    let ConfigError::Invalid { problems, .. } = parse(text, "t.yaml").unwrap_err() else {
        panic!("expected Invalid");
    };
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        ["pools.a.workers", "tenants.t.stable", "tenants.t.canary_weight"]
    );
}

#[test]
fn weights_take_up_to_two_decimals() {
    assert_eq!(Weight::from_percent(12.34).map(Weight::basis_points), Some(1234));
    assert_eq!(Weight::from_percent(0.01).map(Weight::basis_points), Some(1));
    assert_eq!(
        Weight::from_percent(100.0).map(Weight::basis_points),
        Some(10_000)
    );
    assert_eq!(Weight::from_percent(0.005), None);
    assert_eq!(Weight::from_percent(100.01), None);
    assert_eq!(Weight::from_percent(f64::NAN), None);
}

#[test]
fn hosts_are_lower_cased_and_lose_a_trailing_dot() {
    use super::validate::parse_host;
    assert_eq!(
        parse_host("Acme.Example.COM."),
        Ok(HostPattern::Exact("acme.example.com".into()))
    );
    assert_eq!(
        parse_host("*.Acme.example.com"),
        Ok(HostPattern::Wildcard("acme.example.com".into()))
    );
    assert!(parse_host("*").is_err());
    assert!(parse_host("a..b").is_err());
}

#[test]
fn a_missing_file_is_refused_with_its_name() {
    let err = load(std::path::Path::new("/nonexistent/fledge.yaml")).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/nonexistent/fledge.yaml: cannot read"),
        "{err}"
    );
}

#[test]
fn a_fleet_is_read_with_its_defaults() {
    let text = r#"listen: "127.0.0.1:8080"
cookies: { secret_env: FLEDGE_COOKIE_SECRET }
fleet:
  redis_url: "rediss://redis.example.com:6380/2"
  name: "edge-eu1"
pools:
  v17: { workers: ["127.0.0.1:18069"] }
tenants:
  acme: { hosts: ["acme.example.com"], stable: v17 }
"#;
    let c = parse(text, "fleet.yaml").unwrap();
    let f = c.fleet.expect("a fleet");
    assert_eq!(
        (f.redis_url.as_str(), f.name.as_str()),
        ("rediss://redis.example.com:6380/2", "edge-eu1")
    );
    assert_eq!(f.replica_timeout, std::time::Duration::from_secs(3));
    // The host name by default: never empty, always a valid id.
    assert!(!f.replica_id.is_empty());
    let bad_id = text.replace("name: \"edge-eu1\"", "name: \"edge eu1\"\n  replica_id: \"a/b\"");
    let err = parse(&bad_id, "fleet.yaml").unwrap_err().to_string();
    assert!(err.contains("fleet.name: must be 1 to 64 letters"), "{err}");
    assert!(err.contains("fleet.replica_id: `a/b` must be"), "{err}");
    // Without `fleet:` nothing of it exists.
    let alone = text.replace(
        "fleet:\n  redis_url: \"rediss://redis.example.com:6380/2\"\n  name: \"edge-eu1\"\n",
        "",
    );
    assert!(parse(&alone, "fleet.yaml").unwrap().fleet.is_none());
}
