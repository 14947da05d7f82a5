//! Serde mirror of the config file. Dumb on purpose: every field is what the
//! YAML says, every cross-field rule lives in `validate.rs`. Unknown keys are
//! refused everywhere (`deny_unknown_fields`), so a typo is an error, never a
//! silently ignored setting.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct File {
    pub(crate) listen: String,
    #[serde(default)]
    pub(crate) threads: Option<usize>,
    #[serde(default)]
    pub(crate) work_stealing: Option<bool>,
    #[serde(default)]
    pub(crate) preserve_header_case: Option<bool>,
    #[serde(default)]
    pub(crate) timeouts: Timeouts,
    #[serde(default)]
    pub(crate) limits: Limits,
    #[serde(default)]
    pub(crate) cookies: Cookies,
    #[serde(default)]
    pub(crate) rehearsal: Rehearsal,
    #[serde(default)]
    pub(crate) state_dir: Option<String>,
    #[serde(default)]
    pub(crate) admin: Admin,
    #[serde(default)]
    pub(crate) tls: Option<Tls>,
    #[serde(default)]
    pub(crate) fleet: Option<Fleet>,
    #[serde(default)]
    pub(crate) metrics: Option<Metrics>,
    #[serde(default)]
    pub(crate) trusted_proxies: Vec<String>,
    #[serde(default)]
    pub(crate) proxy_protocol: Option<ProxyProtocol>,
    #[serde(default)]
    pub(crate) dns: Option<Dns>,
    #[serde(default)]
    pub(crate) log: Log,
    pub(crate) pools: BTreeMap<String, Pool>,
    #[serde(default)]
    pub(crate) policies: BTreeMap<String, Policy>,
    pub(crate) tenants: BTreeMap<String, Tenant>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Timeouts {
    pub(crate) connect_ms: Option<u64>,
    pub(crate) upstream_read_seconds: Option<u64>,
    pub(crate) client_keepalive_seconds: Option<u64>,
    pub(crate) websocket_idle_seconds: Option<u64>,
    pub(crate) shutdown_grace_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Limits {
    pub(crate) max_header_bytes: Option<u64>,
    pub(crate) max_header_fields: Option<u64>,
    pub(crate) max_request_line_bytes: Option<u64>,
    pub(crate) max_connections: Option<u64>,
    pub(crate) max_connections_per_ip: Option<u64>,
    pub(crate) header_timeout_seconds: Option<u64>,
    pub(crate) tls_handshake_timeout_seconds: Option<u64>,
    pub(crate) min_upload_bytes_per_second: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Cookies {
    pub(crate) secret_env: Option<String>,
    pub(crate) max_age_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Log {
    pub(crate) format: Option<String>,
    pub(crate) access: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Dns {
    pub(crate) servers: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProxyProtocol {
    pub(crate) from: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Metrics {
    pub(crate) listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Fleet {
    pub(crate) redis_url: String,
    pub(crate) name: String,
    pub(crate) replica_id: Option<String>,
    pub(crate) redis_password_env: Option<String>,
    pub(crate) replica_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Rehearsal {
    #[serde(default)]
    pub(crate) from: Vec<String>,
    pub(crate) token_env: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Admin {
    pub(crate) listen: Option<String>,
    pub(crate) token_env: Option<String>,
    pub(crate) token_file: Option<String>,
    pub(crate) max_connections: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Tls {
    pub(crate) listen: String,
    pub(crate) certs_dir: String,
    #[serde(default)]
    pub(crate) allow_readable_keys: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Pool {
    pub(crate) workers: Vec<String>,
    #[serde(default)]
    pub(crate) websocket_workers: Vec<String>,
    #[serde(default)]
    pub(crate) dns_refresh_seconds: Option<u64>,
    #[serde(default)]
    pub(crate) balance: Option<String>,
    #[serde(default)]
    pub(crate) health_check: HealthCheck,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HealthCheck {
    pub(crate) interval_ms: Option<u64>,
    pub(crate) timeout_ms: Option<u64>,
    pub(crate) path: Option<String>,
    pub(crate) expect_status: Option<u16>,
    pub(crate) failures: Option<u64>,
    pub(crate) successes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Policy {
    pub(crate) override_header: Option<String>,
    #[serde(default)]
    pub(crate) override_from: Vec<String>,
    pub(crate) sticky_cookie: Option<String>,
    #[serde(default)]
    pub(crate) analysis: Analysis,
    #[serde(default)]
    pub(crate) steps: Option<Vec<f64>>,
    #[serde(default)]
    pub(crate) step_interval_seconds: Option<u64>,
}

/// Analysis thresholds. A check set to `null` is switched off; an omitted
/// one takes its default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Analysis {
    pub(crate) window_seconds: Option<u64>,
    pub(crate) min_requests: Option<u64>,
    pub(crate) latency_percentile: Option<f64>,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) max_error_rate_percent: Option<Option<f64>>,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) max_error_rate_increase_percent: Option<Option<f64>>,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) max_p99_latency_ms: Option<Option<f64>>,
    #[serde(default, deserialize_with = "nullable")]
    pub(crate) max_p99_latency_ratio: Option<Option<f64>>,
    pub(crate) consecutive_breaches: Option<u32>,
    pub(crate) min_failing_clients: Option<u64>,
    pub(crate) max_client_failure_share_percent: Option<f64>,
    pub(crate) client_exceptions: Option<Vec<String>>,
    pub(crate) failing_clients_by: Option<String>,
}

/// Missing → `None` (take the default); `null` → `Some(None)` (off).
fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Tenant {
    pub(crate) hosts: Vec<String>,
    pub(crate) stable: String,
    #[serde(default)]
    pub(crate) canary: Option<String>,
    #[serde(default)]
    pub(crate) canary_weight: Option<f64>,
    #[serde(default)]
    pub(crate) policy: Option<String>,
    #[serde(default)]
    pub(crate) redirect_http: bool,
}
