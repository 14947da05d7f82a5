use super::*;
use crate::test_util::{headers, route, table, NOW};

const HOST: &str = "acme.example.com";

fn session(i: usize) -> HeaderMap {
    headers(&[("cookie", &format!("session_id=s{i}"))])
}

fn canary_share(table: &RouteTable, n: usize) -> f64 {
    let canary = (0..n)
        .filter(|&i| route(table, HOST, &session(i), "10.0.0.1").version == Version::Canary)
        .count();
    canary as f64 * 100.0 / n as f64
}

#[test]
fn split_of_10000_keys_lands_within_one_point_of_the_weight() {
    for weight in [1.0, 5.0, 20.0, 50.0, 99.5] {
        let share = canary_share(&table(weight), 10_000);
        assert!(
            (share - weight).abs() <= 1.0,
            "weight {weight}: {share}% on canary"
        );
    }
}

#[test]
fn raising_the_weight_only_adds_clients_to_the_canary() {
    let (low, high) = (table(10.0), table(30.0));
    let mut added = 0;
    for i in 0..10_000 {
        let before = route(&low, HOST, &session(i), "10.0.0.1").version;
        let after = route(&high, HOST, &session(i), "10.0.0.1").version;
        assert!(
            !(before == Version::Canary && after == Version::Stable),
            "client {i} left the canary"
        );
        added += usize::from(before == Version::Stable && after == Version::Canary);
    }
    assert!(
        (1_500..2_500).contains(&added),
        "{added} clients added going 10% → 30%"
    );
}

#[test]
fn weight_zero_sends_everyone_to_stable_and_sets_no_version_cookie() {
    let t = table(0.0);
    for i in 0..1_000 {
        let r = route(&t, HOST, &session(i), "10.0.0.1");
        assert_eq!(
            (r.version, r.reason, r.set_version_cookie),
            (Version::Stable, Reason::NoCanary, false)
        );
    }
}

#[test]
fn a_session_keeps_its_version() {
    let t = table(50.0);
    let first = route(&t, HOST, &session(7), "10.0.0.1").version;
    for _ in 0..200 {
        assert_eq!(route(&t, HOST, &session(7), "10.9.9.9").version, first);
    }
}

#[test]
fn override_header_is_honoured_from_allowed_networks_only() {
    let t = table(0.0);
    let h = headers(&[("x-fledge-version", "canary")]);
    let allowed = route(&t, HOST, &h, "127.0.0.1");
    assert_eq!(
        (allowed.version, allowed.reason),
        (Version::Canary, Reason::Override)
    );
    assert!(!allowed.set_version_cookie && !allowed.set_bucket_cookie);
    let denied = route(&t, HOST, &h, "192.0.2.1");
    assert_eq!(denied.version, Version::Stable);
    assert_ne!(denied.reason, Reason::Override);
    // A tenant without a canary cannot be forced onto one.
    let beta = route(&t, "beta.example.com", &h, "127.0.0.1");
    assert_eq!(beta.version, Version::Stable);
    // Nonsense values fall through to the split.
    let junk = route(&t, HOST, &headers(&[("x-fledge-version", "yes")]), "127.0.0.1");
    assert_ne!(junk.reason, Reason::Override);
}

/// The cookie a response sets, as the next request sends it.
fn version_cookie_for(t: &RouteTable, r: &Route) -> String {
    let tenant = &t.tenants()[r.tenant];
    let value = t
        .cookie_key()
        .version_cookie(r.version, r.bucket.unwrap(), tenant.epoch(), NOW);
    format!("{VERSION_COOKIE}={value}")
}

#[test]
fn version_cookie_keeps_a_client_across_login() {
    let t = table(50.0);
    // Anonymous first visit: sticky key is the address; the answer pins it.
    let first = route(&t, HOST, &HeaderMap::new(), "10.1.2.3");
    assert!(first.set_version_cookie && first.set_bucket_cookie);
    let pin = version_cookie_for(&t, &first);
    // After login the session id would hash elsewhere for about half the
    // ids: the cookie wins every time.
    for i in 0..100 {
        let h = headers(&[("cookie", &format!("session_id=new{i}; {pin}"))]);
        let r = route(&t, HOST, &h, "10.1.2.3");
        assert_eq!(r.version, first.version);
        assert_eq!(r.reason, Reason::Cookie);
    }
}

#[test]
fn a_stable_pin_is_re_split_when_the_weight_rises() {
    let low = table(10.0);
    // Find a stable session whose bucket is canary at 90%.
    let (r, pin) = (0..1_000)
        .map(|i| route(&low, HOST, &session(i), "10.0.0.1"))
        .filter(|r| r.version == Version::Stable && r.bucket.unwrap() < 9_000)
        .map(|r| (r, version_cookie_for(&low, &r)))
        .next()
        .unwrap();
    let high = table(90.0);
    let again = route(&high, HOST, &headers(&[("cookie", &pin)]), "10.0.0.1");
    assert_eq!(again.version, Version::Canary);
    assert_eq!(again.bucket, r.bucket);
    assert!(again.set_version_cookie, "the new version must be pinned");
}

#[test]
fn forged_or_foreign_cookies_are_ignored() {
    let t = table(1.0);
    let forged = [
        "fledge_version=c.0.00000000.0000000000000000",
        "fledge_version=c.9999.ffffffff.ffffffffffffffff",
        "fledge_version=canary",
        "fledge_bucket=0.0000000000000000",
        "fledge_bucket=0",
    ];
    let mut canary = 0;
    for (i, cookie) in forged.iter().cycle().take(500).enumerate() {
        let h = headers(&[("cookie", &format!("session_id=f{i}; {cookie}"))]);
        let r = route(&t, HOST, &h, "10.0.0.1");
        assert_ne!(r.reason, Reason::Cookie, "{cookie} accepted");
        canary += usize::from(r.version == Version::Canary);
    }
    assert!(canary < 25, "{canary}/500 on a 1% canary");

    // A genuine cookie signed with another key is foreign too.
    let other = RouteTable::build(
        &crate::test_util::config(1.0),
        Arc::new(CookieKey::from_secret(b"another secret, 16+ bytes")),
        None,
        &std::collections::BTreeMap::<String, crate::analysis::rollout::Rollout>::new(),
    );
    let tenant = &other.tenants()[0];
    let value = other
        .cookie_key()
        .version_cookie(Version::Canary, 5_000, tenant.epoch(), NOW);
    let r = route(
        &t,
        HOST,
        &headers(&[("cookie", &format!("fledge_version={value}"))]),
        "10.0.0.1",
    );
    assert_ne!(r.reason, Reason::Cookie);
}

#[test]
fn sticky_key_is_session_then_bucket_cookie_then_address() {
    let t = table(50.0);
    let by_ip = route(&t, HOST, &HeaderMap::new(), "10.7.7.7");
    assert!(by_ip.set_bucket_cookie);
    let tenant = &t.tenants()[by_ip.tenant];
    let bucket_cookie = format!(
        "fledge_bucket={}",
        t.cookie_key().bucket_cookie(4_321, tenant.seed())
    );
    let by_cookie = route(&t, HOST, &headers(&[("cookie", &bucket_cookie)]), "10.7.7.7");
    assert_eq!(
        (by_cookie.bucket, by_cookie.set_bucket_cookie),
        (Some(4_321), false)
    );
    let both = headers(&[("cookie", &format!("{bucket_cookie}; session_id=abc"))]);
    let by_session = route(&t, HOST, &both, "10.7.7.7");
    assert_eq!(by_session.bucket, Some(split::bucket(tenant.seed(), b"abc")));
    // HTTP/2 clients may send one Cookie header per cookie.
    let split_headers = headers(&[("cookie", "a=b"), ("cookie", "session_id=abc")]);
    assert_eq!(
        route(&t, HOST, &split_headers, "10.7.7.7").bucket,
        by_session.bucket
    );
}

#[test]
fn hosts_match_exactly_then_by_most_specific_wildcard() {
    let t = table(0.0);
    let name = |host: &str| t.tenant_index(host).map(|i| t.tenants()[i].name().to_owned());
    assert_eq!(name("acme.example.com").as_deref(), Some("acme"));
    assert_eq!(name("ACME.Example.Com:8080").as_deref(), Some("acme"));
    assert_eq!(name("acme.example.com.").as_deref(), Some("acme"));
    assert_eq!(name("shop.acme.example.com").as_deref(), Some("acme"));
    assert_eq!(name("a.b.acme.example.com").as_deref(), Some("acme"));
    assert_eq!(name("exact.acme.example.org").as_deref(), Some("beta"));
    assert_eq!(name("x.example.org").as_deref(), Some("beta"));
    assert_eq!(name("example.org"), None);
    assert_eq!(name("evilacme.example.com"), None);
    assert_eq!(name("example.com"), None);
    assert_eq!(name(""), None);
    assert_eq!(name("[::1]:8080"), None);
    assert_eq!(name(&"a".repeat(300)), None);
}

/// Issue 23: a copied canary cookie puts nobody on the canary past its age,
/// nor after the canary was rolled back (and resumed).
#[test]
fn a_version_cookie_dies_with_its_age_and_its_rollout() {
    use crate::analysis::rollout::Rollout;
    use crate::test_util::route_at;
    let t = table(1.0);
    let tenant = &t.tenants()[0];
    let pin = |issued: u32| {
        let value = t
            .cookie_key()
            .version_cookie(Version::Canary, 9_999, tenant.epoch(), issued);
        headers(&[("cookie", &format!("{VERSION_COOKIE}={value}"))])
    };
    let max_age = u32::try_from(t.tuning().cookie_max_age_seconds).unwrap();
    let on_canary = |h: &HeaderMap, now: u32| {
        let r = route_at(&t, HOST, h, "10.0.0.1", now);
        r.reason == Reason::Cookie && r.version == Version::Canary
    };
    // Bucket 9 999 is stable at 1 %: only the cookie puts it on the canary.
    assert!(on_canary(&pin(NOW), NOW));
    assert!(on_canary(&pin(NOW - max_age), NOW), "as old as allowed");
    assert!(!on_canary(&pin(NOW - max_age - 1), NOW), "older than its age");
    assert!(on_canary(&pin(NOW + 60), NOW), "another replica's clock ahead");
    assert!(!on_canary(&pin(NOW + 3_600), NOW), "issued in the future");
    // The issue time is signed: moved forward, the cookie is forged.
    let value = t
        .cookie_key()
        .version_cookie(Version::Canary, 9_999, tenant.epoch(), NOW - max_age - 10);
    let mut parts: Vec<&str> = value.split('.').collect();
    let fresh = format!("{NOW:08x}");
    parts[3] = &fresh;
    let moved = headers(&[("cookie", &format!("{VERSION_COOKIE}={}", parts.join(".")))]);
    assert!(!on_canary(&moved, NOW));

    // The same canary pool, its rollout rolled back once (and resumed):
    // another generation, another epoch; the old cookie is refused.
    let one_percent = crate::config::Weight::from_basis_points(100).unwrap();
    let mut rollout = Rollout::start("v18", one_percent, None);
    rollout.roll_back("test", None);
    let mut resumed = Rollout::start("v18", one_percent, None);
    resumed.generation = rollout.generation + 1;
    let rollouts = [("acme".to_owned(), resumed)].into_iter().collect();
    let after = RouteTable::build(
        &crate::test_util::config(1.0),
        Arc::new(CookieKey::from_secret(b"test secret, 16+ bytes")),
        None,
        &rollouts,
    );
    assert!(after.tenants()[0].canary_active());
    assert_ne!(after.tenants()[0].epoch(), tenant.epoch());
    let r = route_at(&after, HOST, &pin(NOW), "10.0.0.1", NOW);
    assert_ne!(r.reason, Reason::Cookie);
    assert_eq!(r.version, Version::Stable);

    // The same pool's canary removed and added again: a new rollout, of the
    // same generation, that started after the cookie was issued.
    let mut again = Rollout::start("v18", one_percent, None);
    again.started_unix = NOW + 3_600;
    let rollouts = [("acme".to_owned(), again)].into_iter().collect();
    let readded = RouteTable::build(
        &crate::test_util::config(1.0),
        Arc::new(CookieKey::from_secret(b"test secret, 16+ bytes")),
        None,
        &rollouts,
    );
    assert_eq!(
        readded.tenants()[0].epoch(),
        tenant.epoch(),
        "same pool, same generation"
    );
    let stale = route_at(&readded, HOST, &pin(NOW), "10.0.0.1", NOW + 3_700);
    assert_ne!(stale.reason, Reason::Cookie, "a cookie from the earlier rollout");
    let fresh = route_at(&readded, HOST, &pin(NOW + 3_650), "10.0.0.1", NOW + 3_700);
    assert_eq!(fresh.reason, Reason::Cookie, "one of this rollout");
}

/// fledge's HTTP/1 codec hands routing spans of its read buffer, not a
/// `HeaderMap`: the same request routes the same way either way (cookies
/// on one or several fields, the override header, none).
#[test]
fn a_head_in_spans_routes_as_its_header_map_does() {
    use crate::http1::head::{FieldsIn, RequestHead};
    let t = table(30.0);
    let cases = [
        "Cookie: session_id=s1\r\n".to_owned(),
        "Cookie: a=1; session_id=s77; b=2\r\n".to_owned(),
        "Cookie: a=1\r\nCookie: session_id=s9\r\n".to_owned(),
        "X-Fledge-Version: canary\r\n".to_owned(),
        "x-fledge-version: stable\r\nCookie: session_id=s3\r\n".to_owned(),
        String::new(),
    ];
    for (i, fields) in cases.iter().enumerate() {
        let raw = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n{fields}\r\n");
        let buf = raw.as_bytes();
        let head = RequestHead::parse(buf).unwrap().unwrap();
        let mut map = HeaderMap::new();
        for f in head.fields.iter() {
            map.append(
                http::HeaderName::from_bytes(f.name.get(buf)).unwrap(),
                http::HeaderValue::from_bytes(f.value.get(buf)).unwrap(),
            );
        }
        for ip in ["10.0.0.1", "192.0.2.7"] {
            let spans = FieldsIn {
                buf,
                fields: &head.fields,
            };
            let by_spans = t.decide(&RequestView {
                host: HOST,
                headers: &spans,
                client_ip: ip.parse().ok(),
                now: Some(NOW),
            });
            let by_map = t.decide(&RequestView {
                host: HOST,
                headers: &map,
                client_ip: ip.parse().ok(),
                now: Some(NOW),
            });
            assert_eq!(by_spans, by_map, "case {i} from {ip}");
        }
    }
}
