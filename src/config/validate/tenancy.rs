//! Validation of what concerns callers: `identities:`, `redis:`, the admin token, and a
//! listener's `identity:`, `tenants:`/`default_pool` and `limits:`.

use super::super::schema::{RawIdentities, RawIdentity, RawLimits, RawRate, RawRedis, RawUnowned};
use super::*;

/// A binding lives this long without activity unless configured.
const DEFAULT_BINDING_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

pub(super) fn identities(
    errs: &mut Errors,
    raw: Option<RawIdentities>,
    base: &Path,
) -> Option<IdentitiesConfig> {
    let raw = raw?;
    if raw.tokens_file.is_empty() {
        errs.push("identities.tokens_file", "must not be empty");
    }
    let unowned = match raw.unowned {
        None => Unowned::Deny,
        Some(RawUnowned::Word(w)) => {
            match w.as_str() {
                "deny" => Unowned::Deny,
                "allow" => Unowned::Allow,
                _ => {
                    errs.push(
                    "identities.unowned",
                    format!("unknown value {w:?}; expected deny, allow or {{ prefix: \"{{user}}-\" }}"),
                );
                    Unowned::Deny
                }
            }
        }
        Some(RawUnowned::Prefix(p)) => {
            if !p.prefix.contains("{user}") && !p.prefix.contains("{tenant}") {
                errs.push(
                    "identities.unowned.prefix",
                    "must contain {user} or {tenant}, or every caller would share it",
                );
            }
            Unowned::Prefix(p.prefix)
        }
    };
    let policies = raw
        .policies
        .into_iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let path = format!("identities.policies[{i}]");
            let who = who(errs, &path, p.user, p.tenant)?;
            let globs = |list: Vec<String>, field: &str, errs: &mut Errors| -> Vec<Glob> {
                list.into_iter()
                    .enumerate()
                    .filter_map(|(j, g)| {
                        if g.is_empty() {
                            errs.push(format!("{path}.{field}[{j}]"), "must not be empty");
                            return None;
                        }
                        Some(Glob(g))
                    })
                    .collect()
            };
            let allow = p.allow.map(|a| globs(a, "allow", errs));
            let deny = globs(p.deny.unwrap_or_default(), "deny", errs);
            Some(Policy { who, allow, deny })
        })
        .collect();
    Some(IdentitiesConfig {
        tokens_file: base.join(&raw.tokens_file),
        unowned,
        binding_ttl: errs.duration(
            "identities.binding_ttl",
            raw.binding_ttl.as_deref(),
            DEFAULT_BINDING_TTL,
        ),
        policies,
    })
}

/// Exactly one of `user`, `tenant`.
fn who(errs: &mut Errors, path: &str, user: Option<String>, tenant: Option<String>) -> Option<Who> {
    match (user, tenant) {
        (Some(u), None) if !u.is_empty() => Some(Who::User(u)),
        (None, Some(t)) if !t.is_empty() => Some(Who::Tenant(t)),
        _ => {
            errs.push(path, "must name exactly one of user, tenant (not empty)");
            None
        }
    }
}

pub(super) fn redis(errs: &mut Errors, raw: Option<RawRedis>) -> Option<RedisConfig> {
    let raw = raw?;
    if !(raw.url.starts_with("redis://") || raw.url.starts_with("rediss://")) {
        // The URL may hold a password: do not repeat it.
        errs.push("redis.url", "must be a redis:// or rediss:// URL");
    }
    Some(RedisConfig {
        url: Secret(raw.url.into()),
    })
}

pub(super) fn admin_auth(
    errs: &mut Errors,
    token_env: Option<&str>,
    protect_probes: Option<bool>,
    listen: SocketAddr,
) -> AdminAuth {
    let token = token_env.and_then(|var| match std::env::var(var) {
        Ok(value) if !value.is_empty() => Some(Secret(value.into())),
        _ => {
            errs.push(
                "admin.token_env",
                format!("environment variable {var} is not set"),
            );
            None
        }
    });
    if token.is_none() && token_env.is_none() && !listen.ip().is_loopback() {
        errs.push(
            "admin.listen",
            format!(
                "{listen} is not a loopback address: set admin.token_env so /admin/* requires a bearer token"
            ),
        );
    }
    let protect_probes = protect_probes.unwrap_or(false);
    if protect_probes && token_env.is_none() {
        errs.push("admin.protect_probes", "needs admin.token_env");
    }
    AdminAuth {
        token,
        protect_probes,
    }
}

/// A listener's identity, tenants and limits.
pub(super) struct ListenerTenancy {
    pub identity: Option<IdentityConfig>,
    pub pool: Option<String>,
    pub tenants: Vec<TenantRoute>,
    pub limits: Limits,
}

pub(super) fn listener(
    errs: &mut Errors,
    path: &str,
    l: &mut RawListener,
    protocol: Protocol,
    pools: &BTreeMap<String, PoolConfig>,
    identities: bool,
) -> ListenerTenancy {
    let pool_exists = |errs: &mut Errors, field: &str, name: &str| {
        if !pools.contains_key(name) {
            errs.push(format!("{path}.{field}"), format!("no pool named {name:?}"));
        }
    };
    let identity = l
        .identity
        .take()
        .map(|raw| identity(errs, path, raw, protocol, identities));
    let tenants: Vec<TenantRoute> = l
        .tenants
        .take()
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .filter_map(|(i, t)| {
            let entry = format!("{path}.tenants[{i}]");
            pool_exists(errs, &format!("tenants[{i}].pool"), &t.pool);
            let who = who(errs, &entry, t.user, t.tenant)?;
            Some(TenantRoute { who, pool: t.pool })
        })
        .collect();
    if !tenants.is_empty() && identity.is_none() {
        errs.push(format!("{path}.tenants"), "needs an identity: block");
    }
    let pool = match (l.pool.take(), l.default_pool.take(), tenants.is_empty()) {
        (Some(p), None, true) => Some(p),
        (None, None, true) => {
            errs.push(format!("{path}.pool"), "missing");
            None
        }
        (None, default, false) => default,
        (Some(_), _, false) => {
            errs.push(
                format!("{path}.pool"),
                "not with tenants: (callers no tenant names go to default_pool)",
            );
            None
        }
        (_, Some(_), true) => {
            errs.push(format!("{path}.default_pool"), "only with tenants:");
            None
        }
    };
    if let Some(p) = &pool {
        let field = if tenants.is_empty() {
            "pool"
        } else {
            "default_pool"
        };
        pool_exists(errs, field, p);
    }
    let limits = l
        .limits
        .take()
        .map(|raw| limits(errs, &format!("{path}.limits"), raw))
        .unwrap_or_default();
    if limits.any() && protocol == Protocol::Tcp {
        errs.push(format!("{path}.limits"), "not with protocol tcp");
    }
    ListenerTenancy {
        identity,
        pool,
        tenants,
        limits,
    }
}

fn identity(
    errs: &mut Errors,
    path: &str,
    raw: RawIdentity,
    protocol: Protocol,
    identities: bool,
) -> IdentityConfig {
    let path = format!("{path}.identity");
    if protocol == Protocol::Tcp {
        errs.push(
            &path,
            "not with protocol tcp (passthrough does not see the caller)",
        );
    }
    let mut from = Vec::new();
    for (i, source) in raw.from.iter().enumerate() {
        let s = match source.as_str() {
            "token" => IdentitySource::Token,
            "client_cert" => IdentitySource::ClientCert,
            other => {
                errs.push(
                    format!("{path}.from[{i}]"),
                    format!("unknown source {other:?}; expected token or client_cert"),
                );
                continue;
            }
        };
        if from.contains(&s) {
            errs.push(format!("{path}.from[{i}]"), "listed twice");
        }
        from.push(s);
    }
    if from.is_empty() {
        errs.push(format!("{path}.from"), "must list token and/or client_cert");
    }
    if from.contains(&IdentitySource::Token) && !identities {
        errs.push(
            format!("{path}.from"),
            "token identities need identities.tokens_file",
        );
    }
    IdentityConfig {
        from,
        required: raw.required.unwrap_or(true),
    }
}

fn limits(errs: &mut Errors, path: &str, raw: RawLimits) -> Limits {
    let mut rate = |field: &str, raw: Option<RawRate>| {
        let raw = raw?;
        let path = format!("{path}.{field}");
        if raw.requests == 0 {
            errs.push(format!("{path}.requests"), "must be >= 1");
        }
        let per = errs.duration(
            &format!("{path}.per"),
            Some(&raw.per),
            Duration::from_secs(60),
        );
        Some(RateLimit {
            requests: raw.requests,
            per,
        })
    };
    Limits {
        per_user: rate("per_user", raw.per_user),
        per_session: rate("per_session", raw.per_session),
        per_method: rate("per_method", raw.per_method),
    }
}

/// `session_concurrency`, `turn_timeout`, `max_queue` of a pool.
pub(super) fn turns(
    errs: &mut Errors,
    path: &str,
    concurrency: Option<u32>,
    turn_timeout: Option<&str>,
    max_queue: Option<usize>,
) -> Option<TurnLimit> {
    let turn_timeout = errs.duration(
        &format!("{path}.turn_timeout"),
        turn_timeout,
        Duration::from_secs(600),
    );
    match concurrency? {
        1 => {}
        _ => {
            errs.push(
                format!("{path}.session_concurrency"),
                "only 1 is supported (one turn at a time); remove it for no limit",
            );
            return None;
        }
    }
    let max_queue = max_queue.unwrap_or(16);
    if max_queue > 10_000 {
        errs.push(format!("{path}.max_queue"), "must be <= 10000");
    }
    Some(TurnLimit {
        turn_timeout,
        max_queue,
    })
}
