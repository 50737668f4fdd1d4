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
    pub identities: Option<RawIdentities>,
    pub redis: Option<RawRedis>,
    pub access_log: Option<RawAccessLog>,
}

/// `access_log:`: one line per request.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    pub format: Option<String>,
    pub sample: Option<f64>,
    pub path: Option<String>,
    #[serde(default)]
    pub log_keys: bool,
}

/// Who callers are: hashed tokens, and the rules that follow from identities.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentities {
    pub tokens_file: String,
    pub unowned: Option<RawUnowned>,
    pub binding_ttl: Option<String>,
    #[serde(default)]
    pub policies: Vec<RawPolicy>,
}

/// `unowned: deny`, `unowned: allow`, or `unowned: { prefix: "{user}-" }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawUnowned {
    Word(String),
    Prefix(RawPrefix),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrefix {
    pub prefix: String,
}

/// Method policy for one user or tenant.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub user: Option<String>,
    pub tenant: Option<String>,
    pub allow: Option<Vec<String>>,
    pub deny: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    pub url: String,
}

/// Where a listener finds its caller's identity.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    pub from: Vec<String>,
    pub required: Option<bool>,
}

/// One entry of a listener's `tenants:` list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenantRoute {
    pub tenant: Option<String>,
    pub user: Option<String>,
    pub pool: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub per_user: Option<RawRate>,
    pub per_session: Option<RawRate>,
    pub per_method: Option<RawRate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRate {
    pub requests: u32,
    pub per: String,
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
    pub token_env: Option<String>,
    pub protect_probes: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: String,
    pub listen: String,
    pub protocol: String,
    pub pool: Option<String>,
    pub tls: Option<RawTls>,
    pub key: Option<Vec<RawKeySource>>,
    pub no_key: Option<String>,
    pub max_connections: Option<usize>,
    pub header_read_timeout: Option<String>,
    pub max_frame_bytes: Option<u64>,
    pub frame_timeout: Option<String>,
    pub max_inflight_per_connection: Option<usize>,
    pub identity: Option<RawIdentity>,
    pub tenants: Option<Vec<RawTenantRoute>>,
    pub default_pool: Option<String>,
    pub limits: Option<RawLimits>,
    pub learn: Option<Vec<RawLearnSource>>,
}

/// One entry of an HTTP listener's `learn:` list (`- response_header: Mcp-Session-Id` or
/// `- set_cookie: SESSIONID`). Exactly one field must be set; validation checks that.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLearnSource {
    pub response_header: Option<String>,
    pub set_cookie: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: String,
    pub key: String,
    pub handshake_timeout: Option<String>,
    pub client_ca: Option<String>,
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
    pub identity: Option<bool>,
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
    pub storage: Option<String>,
    pub fanout_timeout: Option<String>,
    pub fanout_failure: Option<String>,
    pub passive: Option<RawPassive>,
    pub drain_timeout: Option<String>,
    pub session_concurrency: Option<u32>,
    pub turn_timeout: Option<String>,
    pub max_queue: Option<usize>,
    pub cleanup: Option<RawCleanup>,
    #[serde(default)]
    pub max_sessions_per_upstream: Option<usize>,
    /// Absent with `discover:` (its upstreams come from DNS).
    #[serde(default)]
    pub upstreams: Vec<RawUpstream>,
    pub discover: Option<RawDiscover>,
}

/// `discover:` of a pool: its upstreams from DNS (`dns_srv: NAME` or `dns: NAME` with `port`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDiscover {
    pub dns_srv: Option<String>,
    pub dns: Option<String>,
    pub port: Option<u16>,
    pub every: Option<String>,
    pub resolver: Option<String>,
}

/// `cleanup:` of a pool: fleet-wide `sessions.pruneOld` on a schedule.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCleanup {
    pub older_than: Option<String>,
    pub every: Option<String>,
    pub dry_run: Option<bool>,
    pub include_named: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHash {
    pub vnodes: Option<u32>,
    pub load_factor: Option<f64>,
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
    pub max_sessions: Option<usize>,
}
