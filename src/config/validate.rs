//! Stage two of configuration: check every raw value, apply defaults, and build the typed
//! [`Config`]. All problems are collected (not just the first) and each names its field path.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::HeaderName;

use super::schema::{
    RawAccessLog, RawCleanup, RawConfig, RawHealth, RawKeySource, RawLearnSource, RawListener,
    RawPassive, RawPool, RawUpstream,
};
use super::*;

mod discover;
mod tenancy;

const DEFAULT_ADMIN: &str = "127.0.0.1:9901";
const DEFAULT_VNODES: u32 = 160;
const MAX_VNODES: u32 = 10_000;
const MAX_WEIGHT: u32 = 1_000;

/// Collects field errors while the typed config is assembled.
pub(super) struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, path: &str, raw: Option<&str>, default: Duration) -> Duration {
        let Some(raw) = raw else { return default };
        match humantime::parse_duration(raw) {
            Ok(d) if d.is_zero() => {
                self.push(path, "must be greater than 0");
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.push(
                    path,
                    format!("invalid duration {raw:?} ({e}); use e.g. 500ms, 2s, 30m"),
                );
                default
            }
        }
    }

    fn socket_addr(&mut self, path: &str, raw: &str) -> SocketAddr {
        raw.parse().unwrap_or_else(|_| {
            self.push(path, format!("invalid address {raw:?}; expected ip:port"));
            SocketAddr::from(([0, 0, 0, 0], 0))
        })
    }

    /// One of a fixed set of words; the first choice is the default when `raw` is absent.
    fn choice<T: Copy>(&mut self, path: &str, raw: Option<&str>, choices: &[(&str, T)]) -> T {
        let default = choices[0].1;
        let Some(raw) = raw else { return default };
        match choices.iter().find(|(word, _)| *word == raw) {
            Some((_, value)) => *value,
            None => {
                let words: Vec<&str> = choices.iter().map(|(w, _)| *w).collect();
                self.push(
                    path,
                    format!(
                        "unknown value {raw:?}; expected one of {}",
                        words.join(", ")
                    ),
                );
                default
            }
        }
    }

    fn at_least(&mut self, path: &str, value: Option<u32>, default: u32, min: u32) -> u32 {
        let v = value.unwrap_or(default);
        if v < min {
            self.push(path, format!("must be >= {min}"));
        }
        v
    }
}

pub(super) fn validate(raw: RawConfig, base: &Path) -> Result<Config, Vec<FieldError>> {
    let mut errs = Errors(Vec::new());

    let worker_threads = raw.runtime.worker_threads;
    if let Some(n) = worker_threads {
        if !(1..=1024).contains(&n) {
            errs.push("runtime.worker_threads", "must be between 1 and 1024");
        }
    }
    let admin_listen = errs.socket_addr(
        "admin.listen",
        raw.admin.listen.as_deref().unwrap_or(DEFAULT_ADMIN),
    );
    let admin_auth = tenancy::admin_auth(
        &mut errs,
        raw.admin.token_env.as_deref(),
        raw.admin.protect_probes,
        admin_listen,
    );
    let identities = tenancy::identities(&mut errs, raw.identities, base);
    let redis = tenancy::redis(&mut errs, raw.redis);
    let access_log = access_log(&mut errs, raw.access_log.unwrap_or_default(), base);
    let shutdown_grace = errs.duration(
        "shutdown_grace",
        raw.shutdown_grace.as_deref(),
        Duration::from_secs(30),
    );

    let max_session_series = raw.metrics.max_session_series.unwrap_or(1000);
    if !(1..=100_000).contains(&max_session_series) {
        errs.push("metrics.max_session_series", "must be between 1 and 100000");
    }
    let metrics = MetricsConfig {
        max_session_series,
        session_series_idle: errs.duration(
            "metrics.session_series_idle",
            raw.metrics.session_series_idle.as_deref(),
            Duration::from_secs(300),
        ),
    };

    let pools: BTreeMap<String, PoolConfig> = raw
        .pools
        .into_iter()
        .map(|(name, pool)| {
            let typed = pool_config(&mut errs, &name, pool);
            (name, typed)
        })
        .collect();

    let mut names = HashSet::new();
    let mut addrs = HashSet::new();
    let mut listeners = Vec::with_capacity(raw.listeners.len());
    for (i, l) in raw.listeners.into_iter().enumerate() {
        let path = format!("listeners[{i}]");
        if l.name.is_empty() {
            errs.push(format!("{path}.name"), "must not be empty");
        } else if l.name == "admin" {
            errs.push(
                format!("{path}.name"),
                "\"admin\" is reserved for the admin listener",
            );
        } else if !names.insert(l.name.clone()) {
            errs.push(
                format!("{path}.name"),
                format!("duplicate listener name {:?}", l.name),
            );
        }
        let typed = listener_config(&mut errs, &path, l, base, &pools, identities.is_some());
        if typed.listen.port() != 0 && !addrs.insert(typed.listen) {
            errs.push(
                format!("{path}.listen"),
                format!("{} is used by another listener", typed.listen),
            );
        }
        if typed.listen == admin_listen && admin_listen.port() != 0 {
            errs.push(format!("{path}.listen"), "is the admin listener's address");
        }
        listeners.push(typed);
    }
    // A learned HTTP pin outlives its upstream's drain (no other upstream has the session);
    // JSON-RPC pins must not, so the two kinds do not share a pool.
    let learning: HashSet<&str> = listeners
        .iter()
        .filter(|l| !l.learn.is_empty())
        .flat_map(|l| l.pools())
        .collect();
    for (i, l) in listeners.iter().enumerate() {
        if l.protocol != Protocol::JsonRpc {
            continue;
        }
        if let Some(pool) = l.pools().find(|p| learning.contains(p)) {
            errs.push(
                format!("listeners[{i}].pool"),
                format!("pool {pool} learns HTTP sessions (learn:); a jsonrpc listener needs its own pool"),
            );
        }
    }

    if errs.0.is_empty() {
        Ok(Config {
            worker_threads,
            admin_listen,
            admin_auth,
            shutdown_grace,
            metrics,
            listeners,
            pools,
            identities,
            redis,
            access_log,
        })
    } else {
        Err(errs.0)
    }
}

fn access_log(errs: &mut Errors, raw: RawAccessLog, base: &Path) -> AccessLogConfig {
    let format = errs.choice(
        "access_log.format",
        raw.format.as_deref(),
        &[
            ("off", AccessLogFormat::Off),
            ("text", AccessLogFormat::Text),
            ("json", AccessLogFormat::Json),
        ],
    );
    let sample = raw.sample.unwrap_or(1.0);
    if !(sample > 0.0 && sample <= 1.0) {
        errs.push("access_log.sample", "must be above 0 and at most 1");
    }
    let path = match raw.path.as_deref() {
        None | Some("stderr") => AccessLogPath::Stderr,
        Some("") => {
            errs.push("access_log.path", "must be stderr or a file path");
            AccessLogPath::Stderr
        }
        Some(file) => AccessLogPath::File(base.join(file)),
    };
    AccessLogConfig {
        format,
        sample,
        path,
        log_keys: raw.log_keys,
    }
}

fn listener_config(
    errs: &mut Errors,
    path: &str,
    mut l: RawListener,
    base: &Path,
    pools: &BTreeMap<String, PoolConfig>,
    identities: bool,
) -> ListenerConfig {
    let listen = errs.socket_addr(&format!("{path}.listen"), &l.listen);
    let protocol = errs.choice(
        &format!("{path}.protocol"),
        Some(&l.protocol),
        &[
            ("http", Protocol::Http),
            ("tcp", Protocol::Tcp),
            ("jsonrpc", Protocol::JsonRpc),
        ],
    );
    let tenancy = tenancy::listener(errs, path, &mut l, protocol, pools, identities);
    let from_certs = tenancy.identity.as_ref().map_or(&[][..], |i| &i.from[..]);
    let cert_only = from_certs == [IdentitySource::ClientCert]
        && tenancy.identity.as_ref().is_some_and(|i| i.required);

    let tls = l.tls.map(|t| {
        if protocol == Protocol::Tcp {
            errs.push(
                format!("{path}.tls"),
                "not allowed with protocol tcp (passthrough: TLS goes to the upstream)",
            );
        }
        if t.client_ca.is_none() && from_certs.contains(&IdentitySource::ClientCert) {
            errs.push(
                format!("{path}.tls.client_ca"),
                "needed for client_cert identities",
            );
        }
        TlsFiles {
            cert: base.join(&t.cert),
            key: base.join(&t.key),
            handshake_timeout: errs.duration(
                &format!("{path}.tls.handshake_timeout"),
                t.handshake_timeout.as_deref(),
                Duration::from_secs(10),
            ),
            client_ca: t.client_ca.map(|ca| base.join(ca)),
            client_cert_required: cert_only,
        }
    });
    if tls.is_none() && from_certs.contains(&IdentitySource::ClientCert) {
        errs.push(
            format!("{path}.identity.from"),
            "client_cert needs tls: with client_ca",
        );
    }

    let key: Vec<KeySource> = l
        .key
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .filter_map(|(i, k)| key_source(errs, &format!("{path}.key[{i}]"), protocol, k))
        .collect();

    let no_key = errs.choice(
        &format!("{path}.no_key"),
        l.no_key.as_deref(),
        &[("random", NoKey::Random), ("reject", NoKey::Reject)],
    );
    let max_connections = l.max_connections.unwrap_or(10_000);
    if max_connections == 0 {
        errs.push(format!("{path}.max_connections"), "must be >= 1");
    }
    let max_frame_bytes = l.max_frame_bytes.unwrap_or(64 << 20);
    if !(1024..=1 << 30).contains(&max_frame_bytes) {
        errs.push(
            format!("{path}.max_frame_bytes"),
            "must be between 1024 and 1073741824",
        );
    }

    if key.contains(&KeySource::Identity) && tenancy.identity.is_none() {
        errs.push(
            format!("{path}.key"),
            "identity: true needs an identity: block",
        );
    }

    let learn = learn_sources(errs, path, protocol, l.learn.take());

    ListenerConfig {
        learn,
        name: l.name,
        listen,
        protocol,
        pool: tenancy.pool,
        identity: tenancy.identity,
        tenants: tenancy.tenants,
        limits: tenancy.limits,
        tls,
        key,
        no_key,
        max_connections,
        header_read_timeout: errs.duration(
            &format!("{path}.header_read_timeout"),
            l.header_read_timeout.as_deref(),
            Duration::from_secs(30),
        ),
        max_frame_bytes: max_frame_bytes as usize,
        max_inflight_per_connection: match l.max_inflight_per_connection {
            Some(n) if !(1..=65_536).contains(&n) => {
                errs.push(
                    format!("{path}.max_inflight_per_connection"),
                    "must be between 1 and 65536",
                );
                0
            }
            n => n.unwrap_or(4096),
        },
        frame_timeout: errs.duration(
            &format!("{path}.frame_timeout"),
            l.frame_timeout.as_deref(),
            Duration::from_secs(30),
        ),
    }
}

fn learn_sources(
    errs: &mut Errors,
    path: &str,
    protocol: Protocol,
    raw: Option<Vec<RawLearnSource>>,
) -> Vec<LearnSource> {
    let raw = raw.unwrap_or_default();
    if !raw.is_empty() && protocol != Protocol::Http {
        errs.push(format!("{path}.learn"), "only for protocol http");
        return Vec::new();
    }
    let mut out = Vec::new();
    for (i, source) in raw.into_iter().enumerate() {
        let at = format!("{path}.learn[{i}]");
        match (source.response_header, source.set_cookie) {
            (Some(name), None) => match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) => out.push(LearnSource::ResponseHeader(h)),
                Err(_) => errs.push(format!("{at}.response_header"), "not a valid header name"),
            },
            (None, Some(name)) => {
                if name.is_empty() || name.contains(['=', ';', ' ', ',']) {
                    errs.push(format!("{at}.set_cookie"), "not a valid cookie name");
                } else {
                    out.push(LearnSource::SetCookie(name));
                }
            }
            _ => errs.push(at, "set exactly one of response_header, set_cookie"),
        }
    }
    out
}

fn key_source(
    errs: &mut Errors,
    path: &str,
    protocol: Protocol,
    raw: RawKeySource,
) -> Option<KeySource> {
    let set = [
        raw.header.is_some(),
        raw.cookie.is_some(),
        raw.query.is_some(),
        raw.path.is_some(),
        raw.sni.is_some(),
        raw.client_ip.is_some(),
        raw.identity.is_some(),
    ];
    if set.iter().filter(|s| **s).count() != 1 {
        errs.push(
            path,
            "must set exactly one of header, cookie, query, path, sni, client_ip, identity",
        );
        return None;
    }
    let source = if let Some(h) = raw.header {
        match HeaderName::from_bytes(h.as_bytes()) {
            Ok(name) => KeySource::Header(name),
            Err(_) => {
                errs.push(
                    format!("{path}.header"),
                    format!("invalid header name {h:?}"),
                );
                return None;
            }
        }
    } else if let Some(c) = raw.cookie {
        non_empty(errs, &format!("{path}.cookie"), &c)?;
        KeySource::Cookie(c)
    } else if let Some(q) = raw.query {
        non_empty(errs, &format!("{path}.query"), &q)?;
        KeySource::Query(q)
    } else if let Some(p) = raw.path {
        match path_template(&p) {
            Ok(t) => KeySource::Path(t),
            Err(msg) => {
                errs.push(format!("{path}.path"), msg);
                return None;
            }
        }
    } else if let Some(enabled) = raw.sni.or(raw.client_ip).or(raw.identity) {
        if !enabled {
            errs.push(path, "must be true (remove the entry to disable it)");
            return None;
        }
        if raw.sni.is_some() {
            KeySource::Sni
        } else if raw.client_ip.is_some() {
            KeySource::ClientIp
        } else {
            KeySource::Identity
        }
    } else {
        return None;
    };
    let allowed = match source {
        KeySource::Header(_) | KeySource::Cookie(_) | KeySource::Query(_) | KeySource::Path(_) => {
            protocol == Protocol::Http
        }
        KeySource::Sni => protocol == Protocol::Tcp,
        KeySource::ClientIp => true,
        KeySource::Identity => protocol != Protocol::Tcp,
    };
    if !allowed {
        errs.push(
            path,
            format!(
                "{source} is not a key source for protocol {}",
                protocol.as_str()
            ),
        );
        return None;
    }
    Some(source)
}

fn non_empty(errs: &mut Errors, path: &str, value: &str) -> Option<()> {
    if value.is_empty() {
        errs.push(path, "must not be empty");
        return None;
    }
    Some(())
}

/// `/sessions/{key}` → prefix `["sessions"]`. Exactly one `{key}` segment, which must be last.
fn path_template(raw: &str) -> Result<PathTemplate, String> {
    let Some(rest) = raw.strip_prefix('/') else {
        return Err(format!("{raw:?} must start with /"));
    };
    let segments: Vec<&str> = rest.split('/').collect();
    match segments.iter().position(|s| *s == "{key}") {
        Some(i)
            if i + 1 == segments.len() || segments[i + 1..].iter().all(|s| !s.contains('{')) =>
        {
            if segments[..i]
                .iter()
                .any(|s| s.contains('{') || s.is_empty())
            {
                return Err(format!(
                    "{raw:?}: only literal segments may precede {{key}}"
                ));
            }
            Ok(PathTemplate {
                prefix: segments[..i].iter().map(|s| s.to_string()).collect(),
            })
        }
        _ => Err(format!(
            "{raw:?} must contain one {{key}} segment, e.g. /sessions/{{key}}"
        )),
    }
}

fn pool_config(errs: &mut Errors, name: &str, p: RawPool) -> PoolConfig {
    let path = format!("pools.{name}");
    if name.is_empty() {
        errs.push("pools", "pool names must not be empty");
    }
    let vnodes = p.hash.vnodes.unwrap_or(DEFAULT_VNODES);
    if !(1..=MAX_VNODES).contains(&vnodes) {
        errs.push(
            format!("{path}.hash.vnodes"),
            format!("must be between 1 and {MAX_VNODES}"),
        );
    }
    let health = health_config(errs, &format!("{path}.health"), p.health);
    if p.upstreams.is_empty() && p.discover.is_none() {
        errs.push(
            format!("{path}.upstreams"),
            "must list at least one upstream (or set discover:)",
        );
    }
    let discover = discover::discover(
        errs,
        &path,
        p.discover,
        p.token_env.as_deref(),
        p.max_sessions_per_upstream,
        !p.upstreams.is_empty(),
    );
    let mut seen = HashSet::new();
    let upstreams = p
        .upstreams
        .into_iter()
        .enumerate()
        .map(|(i, u)| {
            let mut up = upstream_config(
                errs,
                &format!("{path}.upstreams[{i}]"),
                u,
                p.token_env.as_deref(),
            );
            up.max_sessions = up.max_sessions.or(p.max_sessions_per_upstream);
            if !seen.insert(up.name.clone()) {
                errs.push(
                    format!("{path}.upstreams[{i}].name"),
                    format!("duplicate upstream name {:?}", up.name),
                );
            }
            up
        })
        .collect();
    let pool_max_idle_per_upstream = p.pool_max_idle_per_upstream.unwrap_or(64);
    let on_owner_down = errs.choice(
        &format!("{path}.on_owner_down"),
        p.on_owner_down.as_deref(),
        &[
            ("error", OnOwnerDown::Error),
            ("failover", OnOwnerDown::Failover),
            ("not_found", OnOwnerDown::NotFound),
        ],
    );
    let storage = errs.choice(
        &format!("{path}.storage"),
        p.storage.as_deref(),
        &[("per_node", Storage::PerNode), ("shared", Storage::Shared)],
    );
    if p.max_sessions_per_upstream == Some(0) {
        errs.push(format!("{path}.max_sessions_per_upstream"), "must be >= 1");
    }
    let load_factor = p.hash.load_factor;
    if let Some(f) = load_factor {
        if !(f > 1.0 && f <= 100.0) {
            errs.push(
                format!("{path}.hash.load_factor"),
                "must be above 1 (1.25: a node holds at most 25% more than the mean) and at most 100",
            );
        }
    }
    let max_pinned_sessions = p.max_pinned_sessions.unwrap_or(1_000_000);
    if max_pinned_sessions == 0 {
        errs.push(format!("{path}.max_pinned_sessions"), "must be >= 1");
    }
    PoolConfig {
        name: name.to_owned(),
        vnodes,
        load_factor,
        health,
        connect_timeout: errs.duration(
            &format!("{path}.connect_timeout"),
            p.connect_timeout.as_deref(),
            Duration::from_secs(2),
        ),
        request_timeout: errs.duration(
            &format!("{path}.request_timeout"),
            p.request_timeout.as_deref(),
            Duration::from_secs(60),
        ),
        pool_max_idle_per_upstream,
        pool_idle_timeout: errs.duration(
            &format!("{path}.pool_idle_timeout"),
            p.pool_idle_timeout.as_deref(),
            Duration::from_secs(90),
        ),
        session_idle_ttl: errs.duration(
            &format!("{path}.session_idle_ttl"),
            p.session_idle_ttl.as_deref(),
            Duration::from_secs(30 * 60),
        ),
        max_pinned_sessions,
        on_owner_down,
        storage,
        fanout_timeout: errs.duration(
            &format!("{path}.fanout_timeout"),
            p.fanout_timeout.as_deref(),
            Duration::from_secs(5),
        ),
        fanout_failure: errs.choice(
            &format!("{path}.fanout_failure"),
            p.fanout_failure.as_deref(),
            &[
                ("open", FanoutFailure::Open),
                ("closed", FanoutFailure::Closed),
            ],
        ),
        passive: passive_config(errs, &format!("{path}.passive"), p.passive),
        turns: tenancy::turns(
            errs,
            &path,
            p.session_concurrency,
            p.turn_timeout.as_deref(),
            p.max_queue,
        ),
        drain_timeout: errs.duration(
            &format!("{path}.drain_timeout"),
            p.drain_timeout.as_deref(),
            Duration::from_secs(600),
        ),
        cleanup: p
            .cleanup
            .map(|c| cleanup_config(errs, &format!("{path}.cleanup"), c)),
        upstreams,
        discover,
    }
}

fn cleanup_config(errs: &mut Errors, path: &str, raw: RawCleanup) -> CleanupConfig {
    let defaults = CleanupConfig::default();
    // `0s` is allowed here: every session not pinned live (and that ever had a message) is old.
    let older_than = match raw.older_than.as_deref() {
        None => defaults.older_than,
        Some(text) => humantime::parse_duration(text).unwrap_or_else(|e| {
            errs.push(
                format!("{path}.older_than"),
                format!("invalid duration {text:?} ({e}); use e.g. 12h, 7d, 0s"),
            );
            defaults.older_than
        }),
    };
    CleanupConfig {
        older_than,
        every: errs.duration(
            &format!("{path}.every"),
            raw.every.as_deref(),
            defaults.every,
        ),
        dry_run: raw.dry_run.unwrap_or(false),
        include_named: raw.include_named.unwrap_or(false),
    }
}

fn passive_config(errs: &mut Errors, path: &str, raw: Option<RawPassive>) -> Option<PassiveConfig> {
    let raw = raw.unwrap_or_default();
    let consecutive_failures = raw.consecutive_failures.unwrap_or(5);
    if consecutive_failures == 0 {
        // 0 turns passive ejection off.
        return None;
    }
    Some(PassiveConfig {
        consecutive_failures,
        eject_for: errs.duration(
            &format!("{path}.eject_for"),
            raw.eject_for.as_deref(),
            Duration::from_secs(10),
        ),
    })
}

fn health_config(errs: &mut Errors, path: &str, h: RawHealth) -> HealthConfig {
    let probe = errs.choice(
        &format!("{path}.probe"),
        h.probe.as_deref(),
        &[
            ("tcp", ProbeKind::Tcp),
            ("http", ProbeKind::Http),
            ("jsonrpc", ProbeKind::JsonRpc),
        ],
    );
    let probe_path = h.path.unwrap_or_else(|| "/healthz".to_owned());
    if !probe_path.starts_with('/') {
        errs.push(format!("{path}.path"), "must start with /");
    }
    let interval = errs.duration(
        &format!("{path}.interval"),
        h.interval.as_deref(),
        Duration::from_secs(2),
    );
    let timeout = errs.duration(
        &format!("{path}.timeout"),
        h.timeout.as_deref(),
        Duration::from_secs(1),
    );
    if timeout > interval {
        errs.push(format!("{path}.timeout"), "must not exceed interval");
    }
    HealthConfig {
        probe,
        path: probe_path,
        interval,
        timeout,
        rise: errs.at_least(&format!("{path}.rise"), h.rise, 2, 1),
        fall: errs.at_least(&format!("{path}.fall"), h.fall, 3, 1),
        expect_status: match h.expect_status {
            Some(code) if !(100..=599).contains(&code) => {
                errs.push(
                    format!("{path}.expect_status"),
                    "must be an HTTP status code (100-599)",
                );
                None
            }
            other => other,
        },
        initial_healthy: errs.choice(
            &format!("{path}.initial"),
            h.initial.as_deref(),
            &[("healthy", true), ("unhealthy", false)],
        ),
    }
}

fn upstream_config(
    errs: &mut Errors,
    path: &str,
    u: RawUpstream,
    pool_token_env: Option<&str>,
) -> UpstreamConfig {
    if !valid_host_port(&u.addr) {
        errs.push(
            format!("{path}.addr"),
            format!("invalid address {:?}; expected host:port", u.addr),
        );
    }
    let name = u.name.unwrap_or_else(|| u.addr.clone());
    if name.is_empty() {
        errs.push(format!("{path}.name"), "must not be empty");
    }
    let weight = errs.at_least(&format!("{path}.weight"), u.weight, 1, 1);
    if weight > MAX_WEIGHT {
        errs.push(format!("{path}.weight"), format!("must be <= {MAX_WEIGHT}"));
    }
    let token = match u.token_env.as_deref().or(pool_token_env) {
        None => None,
        Some(var) => match std::env::var(var) {
            Ok(value) if !value.is_empty() => Some(Secret(value.into())),
            _ => {
                let field = match (&u.token_env, path.rsplit_once(".upstreams")) {
                    (None, Some((pool, _))) => format!("{pool}.token_env"),
                    _ => format!("{path}.token_env"),
                };
                errs.push(field, format!("environment variable {var} is not set"));
                None
            }
        },
    };
    UpstreamConfig {
        name,
        addr: u.addr,
        weight,
        token,
        drain: u.drain.unwrap_or(false),
        max_sessions: match u.max_sessions {
            Some(0) => {
                errs.push(format!("{path}.max_sessions"), "must be >= 1");
                None
            }
            cap => cap,
        },
    }
}

/// `127.0.0.1:80`, `[::1]:80` or `cli-0.fleet:4321`.
fn valid_host_port(addr: &str) -> bool {
    if addr.parse::<SocketAddr>().is_ok() {
        return true;
    }
    match addr.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && port.parse::<u16>().is_ok_and(|p| p != 0)
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        }
        None => false,
    }
}
