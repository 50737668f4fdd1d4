//! Configuration: the YAML file is read into [`schema`] structs, then [`validate`] turns them
//! into the typed [`Config`] below. Runtime code only ever sees a validated `Config`; every
//! error names the field path it is about (`pools.api.health.fall: must be >= 1`).

mod error;
pub mod schema;
mod tenancy;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;

pub use self::error::ConfigError;
pub use self::tenancy::{
    AdminAuth, Glob, IdentitiesConfig, IdentityConfig, IdentitySource, Limits, Policy, RateLimit,
    RedisConfig, TenantRoute, TurnLimit, Unowned, Who,
};

/// A validated configuration, ready to build a [`crate::snapshot::Snapshot`] from.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub worker_threads: Option<usize>,
    pub admin_listen: SocketAddr,
    pub admin_auth: AdminAuth,
    pub shutdown_grace: Duration,
    pub metrics: MetricsConfig,
    pub listeners: Vec<ListenerConfig>,
    pub pools: BTreeMap<String, PoolConfig>,
    pub identities: Option<IdentitiesConfig>,
    pub redis: Option<RedisConfig>,
    pub access_log: AccessLogConfig,
}

/// `access_log:`: one structured line per HTTP request and per JSON-RPC request.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogConfig {
    pub format: AccessLogFormat,
    /// The fraction of requests logged, in (0, 1].
    pub sample: f64,
    pub path: AccessLogPath,
    /// HTTP: log the routing key's value as sent (it may be a cookie) instead of a short hash.
    pub log_keys: bool,
}

impl Default for AccessLogConfig {
    fn default() -> AccessLogConfig {
        AccessLogConfig {
            format: AccessLogFormat::Off,
            sample: 1.0,
            path: AccessLogPath::Stderr,
            log_keys: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    Off,
    /// `key=value` pairs, values with spaces or quotes quoted.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogPath {
    Stderr,
    /// Appended to; reopened on SIGUSR1 (log rotation).
    File(PathBuf),
}

/// Bounds on per-session metric series.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    /// At most this many sessions get their own latency series; the rest share `_other`.
    pub max_session_series: usize,
    /// A session series idle this long may be evicted to make room for a new session.
    pub session_series_idle: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Tcp,
    JsonRpc,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
            Protocol::JsonRpc => "jsonrpc",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub protocol: Protocol,
    /// The pool of callers no `tenants:` entry names (`default_pool` when `tenants:` is set;
    /// `None`: such callers are refused).
    pub pool: Option<String>,
    pub tls: Option<TlsFiles>,
    pub key: Vec<KeySource>,
    pub no_key: NoKey,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    /// `protocol: jsonrpc`: the largest frame body accepted from a client.
    pub max_frame_bytes: usize,
    /// `protocol: jsonrpc`: a frame whose first byte arrived must be complete within this
    /// (slow clients are cut off); a connection idle between frames stays open.
    pub frame_timeout: Duration,
    /// `protocol: jsonrpc`: requests in flight per client connection; at the limit the proxy
    /// stops reading from that client until answers come back.
    pub max_inflight_per_connection: usize,
    /// Where callers' identities come from; `None`: no identities on this listener.
    pub identity: Option<IdentityConfig>,
    /// Callers routed to pools of their own, by user or tenant.
    pub tenants: Vec<TenantRoute>,
    pub limits: Limits,
    /// `protocol: http`: where upstream responses name a session to pin to their upstream.
    pub learn: Vec<LearnSource>,
}

/// Where a response names a session its upstream now holds (MCP's `Mcp-Session-Id`, a
/// session cookie): learned as a pin, so later requests carrying it as their key follow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LearnSource {
    /// A response header (names match case-insensitively).
    ResponseHeader(http::HeaderName),
    /// A cookie the response sets (`Set-Cookie: NAME=value; ...`).
    SetCookie(String),
}

impl std::fmt::Display for LearnSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LearnSource::ResponseHeader(h) => write!(f, "response_header {h}"),
            LearnSource::SetCookie(c) => write!(f, "set_cookie {c}"),
        }
    }
}

impl ListenerConfig {
    /// Every pool this listener may route into.
    pub fn pools(&self) -> impl Iterator<Item = &str> {
        self.pool
            .iter()
            .map(String::as_str)
            .chain(self.tenants.iter().map(|t| t.pool.as_str()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnOwnerDown {
    /// Answer with a JSON-RPC error naming the session; the session stays where it lives.
    Error,
    /// Re-place the session on the ring (fleets on shared storage).
    Failover,
    /// HTTP: answer 404 for the pinned key, so the client starts a new session (what MCP
    /// clients do on a 404); JSON-RPC: as `Error`.
    NotFound,
}

/// Where a pool's CLIs keep session state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Storage {
    /// Each node on its own disk: a session lives on one node, found by pins and owner
    /// discovery.
    #[default]
    PerNode,
    /// One store every node reads (a shared volume): any node can resume any session, so
    /// nothing in the fleet says who holds one. The pins (shared through `redis:`) are the
    /// source of truth, and keep one writer per session.
    Shared,
}

/// What a fan-out answers when some nodes give no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FanoutFailure {
    /// Merge what answered; the silent nodes are counted.
    Open,
    /// Answer with an error naming a node that gave no result.
    Closed,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub handshake_timeout: Duration,
    /// Client certificates are verified against these CAs (mTLS).
    pub client_ca: Option<PathBuf>,
    /// A handshake without a client certificate fails (identity only from certificates, and
    /// required).
    pub client_cert_required: bool,
}

/// Where a listener finds the key it hashes onto the ring; the first source present wins.
#[derive(Debug, Clone, PartialEq)]
pub enum KeySource {
    Header(HeaderName),
    Cookie(String),
    Query(String),
    /// A path template such as `/sessions/{key}`: the segment at `index` after `prefix`.
    Path(PathTemplate),
    Sni,
    ClientIp,
    /// The caller's identity (`user`, or `tenant/user`).
    Identity,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    /// Literal segments before the `{key}` segment.
    pub prefix: Vec<String>,
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Header(h) => write!(f, "header {h}"),
            KeySource::Cookie(c) => write!(f, "cookie {c}"),
            KeySource::Query(q) => write!(f, "query parameter {q}"),
            KeySource::Path(p) => write!(f, "path /{}/{{key}}", p.prefix.join("/")),
            KeySource::Sni => f.write_str("TLS SNI"),
            KeySource::ClientIp => f.write_str("client IP"),
            KeySource::Identity => f.write_str("identity"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoKey {
    /// Hash a random key: the request lands on any upstream.
    Random,
    /// Answer 400 naming the expected key sources.
    Reject,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    pub vnodes: u32,
    pub health: HealthConfig,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub pool_max_idle_per_upstream: usize,
    pub pool_idle_timeout: Duration,
    /// JSON-RPC: a session pin expires after this long without traffic.
    pub session_idle_ttl: Duration,
    /// JSON-RPC: at most this many pins; the least recently used go first.
    pub max_pinned_sessions: u64,
    pub on_owner_down: OnOwnerDown,
    pub storage: Storage,
    /// JSON-RPC: how long a fan-out (`session.list`, owner discovery) waits for each node.
    pub fanout_timeout: Duration,
    /// JSON-RPC: what a fan-out answers when some nodes give no result.
    pub fanout_failure: FanoutFailure,
    /// Live-traffic failures that eject an upstream; `None` when disabled.
    pub passive: Option<PassiveConfig>,
    /// How long an upstream removed by a reload keeps serving its pinned sessions.
    pub drain_timeout: Duration,
    /// JSON-RPC: one turn at a time per session (`session_concurrency: 1`).
    pub turns: Option<TurnLimit>,
    /// Bounded-load placement of new sessions (`hash.load_factor`); `None`: the ring alone.
    pub load_factor: Option<f64>,
    /// JSON-RPC: fleet-wide session cleanup on a schedule; `None` when not configured.
    pub cleanup: Option<CleanupConfig>,
    /// With `discover:`, the upstreams last discovered (empty before the first answer); a
    /// reload carries them over (`reload::discovered`).
    pub upstreams: Vec<UpstreamConfig>,
    /// Upstreams looked up in DNS every `every`; `None`: the static `upstreams:` list.
    pub discover: Option<DiscoverConfig>,
}

/// `discover:` of a pool. Discovered upstreams have weight 1, the pool's `token_env` token
/// and its `max_sessions_per_upstream` cap.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoverConfig {
    pub target: DiscoverTarget,
    /// Between lookups (jittered by ±10%).
    pub every: Duration,
    /// The nameserver asked (UDP, then TCP); `None`: the system's (`/etc/resolv.conf`).
    pub resolver: Option<SocketAddr>,
    pub token: Option<Secret>,
    pub max_sessions: Option<usize>,
}

/// What a discovery lookup asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoverTarget {
    /// SRV records: each target host (its name is the ring name) at the record's port.
    Srv(String),
    /// A/AAAA records, each address at `port` (`ip:port` is the ring name).
    Dns { name: String, port: u16 },
}

impl fmt::Display for DiscoverTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiscoverTarget::Srv(name) => write!(f, "dns_srv {name}"),
            DiscoverTarget::Dns { name, port } => write!(f, "dns {name} port {port}"),
        }
    }
}

impl DiscoverConfig {
    /// The upstream config of a discovered node `name` at `addr`.
    pub fn upstream(&self, name: &str, addr: &str) -> UpstreamConfig {
        UpstreamConfig {
            name: name.to_owned(),
            addr: addr.to_owned(),
            weight: 1,
            token: self.token.clone(),
            drain: false,
            max_sessions: self.max_sessions,
        }
    }
}

/// `cleanup:` of a pool: `sessions.pruneOld` on every healthy node every `every` (jittered).
#[derive(Debug, Clone, PartialEq)]
pub struct CleanupConfig {
    /// Sessions unmodified for at least this long are deleted (`0s`: every session that ever
    /// received a message and is not pinned live).
    pub older_than: Duration,
    pub every: Duration,
    /// Report candidates only, delete nothing.
    pub dry_run: bool,
    /// Named sessions are eligible too.
    pub include_named: bool,
}

impl Default for CleanupConfig {
    /// What `POST /admin/cleanup` uses for a pool without `cleanup:`.
    fn default() -> CleanupConfig {
        CleanupConfig {
            older_than: Duration::from_secs(7 * 24 * 3600),
            every: Duration::from_secs(3600),
            dry_run: false,
            include_named: false,
        }
    }
}

/// Passive ejection: `consecutive_failures` connect errors, resets or timeouts on live traffic
/// take an upstream out for at least `eject_for`; active probes bring it back.
#[derive(Debug, Clone, PartialEq)]
pub struct PassiveConfig {
    pub consecutive_failures: u32,
    pub eject_for: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    Tcp,
    Http,
    JsonRpc,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    pub probe: ProbeKind,
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// `http` probes: the one status that counts as healthy; default any 2xx or 3xx.
    pub expect_status: Option<u16>,
    /// State of an upstream before its first probes have decided.
    pub initial_healthy: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// Ring identity: stable across address changes. Defaults to `addr`.
    pub name: String,
    /// `host:port`; resolved when connecting.
    pub addr: String,
    pub weight: u32,
    /// The CLI connection token for this upstream, read from `token_env` at load time.
    pub token: Option<Secret>,
    /// Drained by config: no new keys or sessions are placed here.
    pub drain: bool,
    /// Live sessions this upstream may hold (its `max_sessions`, else the pool's
    /// `max_sessions_per_upstream`); `None`: no cap.
    pub max_sessions: Option<usize>,
}

/// A credential: compared and cloned (cheaply) like a string, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub std::sync::Arc<str>);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// One validation failure, located by its field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl Config {
    /// Read, parse and validate `file`. Relative TLS paths resolve against the file's folder.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_owned(),
            source,
        })?;
        Config::parse(&text, file)
    }

    /// Parse and validate YAML `text` that came from `file` (used for messages and paths).
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let raw: schema::RawConfig = if text.trim().is_empty() {
            schema::RawConfig::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| {
                let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
                ConfigError::Syntax {
                    file: file.to_owned(),
                    line,
                    column,
                    message: strip_location(&e.to_string()),
                }
            })?
        };
        let base = file.parent().unwrap_or(Path::new("."));
        validate::validate(raw, base).map_err(|errors| ConfigError::Invalid {
            file: file.to_owned(),
            errors,
        })
    }

    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.get(name)
    }
}

/// serde_yaml appends " at line L column C"; we print the location up front instead.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}
