//! The configuration file as written: serde structs that mirror the YAML one to one, with
//! `deny_unknown_fields` everywhere so a typo is an error, not a silently ignored option.
//! Nothing here is trusted; `validate` turns it into the typed [`super::Config`].

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub runtime: RawRuntime,
    #[serde(default)]
    pub admin: RawAdmin,
    pub shutdown_grace: Option<String>,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub listeners: Vec<RawListener>,
    #[serde(default)]
    pub pools: BTreeMap<String, RawPool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    pub worker_threads: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub max_session_series: Option<usize>,
    pub session_series_idle: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: String,
    pub listen: String,
    pub protocol: String,
    pub pool: String,
    pub tls: Option<RawTls>,
    pub key: Option<Vec<RawKeySource>>,
    pub no_key: Option<String>,
    pub max_connections: Option<usize>,
    pub header_read_timeout: Option<String>,
    pub max_frame_bytes: Option<u64>,
    pub frame_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: String,
    pub key: String,
    pub handshake_timeout: Option<String>,
}

/// One entry of a listener's `key:` list, written as a one-key map (`- header: X-Session-Id`).
/// Exactly one field must be set; validation checks that.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeySource {
    pub header: Option<String>,
    pub cookie: Option<String>,
    pub query: Option<String>,
    pub path: Option<String>,
    pub sni: Option<bool>,
    pub client_ip: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    #[serde(default)]
    pub hash: RawHash,
    #[serde(default)]
    pub health: RawHealth,
    pub connect_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub pool_max_idle_per_upstream: Option<usize>,
    pub pool_idle_timeout: Option<String>,
    pub token_env: Option<String>,
    pub session_idle_ttl: Option<String>,
    pub max_pinned_sessions: Option<u64>,
    pub on_owner_down: Option<String>,
    pub fanout_timeout: Option<String>,
    pub fanout_failure: Option<String>,
    pub passive: Option<RawPassive>,
    pub drain_timeout: Option<String>,
    #[serde(default)]
    pub upstreams: Vec<RawUpstream>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHash {
    pub vnodes: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub probe: Option<String>,
    pub path: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    pub expect_status: Option<u16>,
    pub initial: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPassive {
    pub consecutive_failures: Option<u32>,
    pub eject_for: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub addr: String,
    pub name: Option<String>,
    pub weight: Option<u32>,
    pub token_env: Option<String>,
    pub drain: Option<bool>,
}
