//! Who callers are and what follows from it, as configured (validated in
//! `validate::tenancy`): the identities section (hashed tokens file, what happens to sessions
//! with no known owner, method policies), a listener's identity sources, tenant pools and rate
//! limits, a pool's one-turn-at-a-time sessions, and the shared store (Redis).

use std::path::PathBuf;
use std::time::Duration;

use super::Secret;

/// `identities:`. Without it (and a listener `identity:` block) nothing here applies.
#[derive(Debug, Clone, PartialEq)]
pub struct IdentitiesConfig {
    /// `{sha256, user, tenant}` entries; re-read on every reload.
    pub tokens_file: PathBuf,
    pub unowned: Unowned,
    /// How long an ownership binding lives without being refreshed.
    pub binding_ttl: Duration,
    pub policies: Vec<Policy>,
}

/// What a session whose owner is not known (created before the proxy, or its binding lost)
/// allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unowned {
    /// Nobody may touch it: safe, at the cost of sessions whose binding was lost.
    Deny,
    /// Anybody may touch it: for migrations from a fleet without identities.
    Allow,
    /// A caller may touch it if its id starts with this template (`{user}`, `{tenant}`
    /// replaced), the naming convention of the scaling guide's pattern 2. Ids the proxy
    /// generates for a caller then carry the prefix too.
    Prefix(String),
}

impl Unowned {
    /// The prefix a caller's session ids start with, under [`Unowned::Prefix`].
    pub fn prefix_for(&self, user: &str, tenant: Option<&str>) -> Option<String> {
        match self {
            Unowned::Prefix(template) => Some(
                template
                    .replace("{user}", user)
                    .replace("{tenant}", tenant.unwrap_or("")),
            ),
            _ => None,
        }
    }
}

/// A user or a tenant, as named in `tokens.yaml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    User(String),
    Tenant(String),
}

impl Who {
    /// Does this name the caller `user` of `tenant`?
    pub fn names(&self, user: &str, tenant: Option<&str>) -> bool {
        match self {
            Who::User(u) => u == user,
            Who::Tenant(t) => Some(t.as_str()) == tenant,
        }
    }
}

/// Allow and deny lists of method globs for one user or tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub who: Who,
    /// Only these methods (besides `connect`); `None`: any that `deny` does not name.
    pub allow: Option<Vec<Glob>>,
    pub deny: Vec<Glob>,
}

/// A method pattern where `*` stands for any run of characters (`session.shell.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(pub String);

impl Glob {
    pub fn matches(&self, method: &str) -> bool {
        let mut parts = self.0.split('*');
        let first = parts.next().unwrap_or("");
        let Some(mut rest) = method.strip_prefix(first) else {
            return false;
        };
        let parts: Vec<&str> = parts.collect();
        let Some((last, middle)) = parts.split_last() else {
            return rest.is_empty();
        };
        for part in middle {
            match rest.find(part) {
                Some(i) => rest = &rest[i + part.len()..],
                None => return false,
            }
        }
        rest.ends_with(last)
    }
}

/// Where a listener looks for its caller's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentitySource {
    /// JSON-RPC: `connect`'s `params.token`; HTTP: `Authorization: Bearer`.
    Token,
    /// The client certificate of an mTLS connection (`tls.client_ca`): its SAN URI or DNS
    /// name, else its subject CN.
    ClientCert,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConfig {
    /// In order: the first source present wins.
    pub from: Vec<IdentitySource>,
    /// Callers without a known identity are refused.
    pub required: bool,
}

/// `tenants:` entry: a user's or tenant's own pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRoute {
    pub who: Who,
    pub pool: String,
}

/// Sliding-window request limits of a listener.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// Per caller (identity, or client IP without one).
    pub per_user: Option<RateLimit>,
    /// Per session (JSON-RPC `params.sessionId`, HTTP routing key).
    pub per_session: Option<RateLimit>,
    /// Per caller and method (JSON-RPC).
    pub per_method: Option<RateLimit>,
}

impl Limits {
    pub fn any(&self) -> bool {
        self.per_user.is_some() || self.per_session.is_some() || self.per_method.is_some()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub requests: u32,
    pub per: Duration,
}

/// One turn at a time per session (`session_concurrency: 1`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TurnLimit {
    /// A turn that has not ended (the CLI reporting the session idle or errored) by then is
    /// over anyway.
    pub turn_timeout: Duration,
    /// Sends waiting for their turn per session (per replica); beyond, refused at once.
    pub max_queue: usize,
}

/// `redis:`: state shared by replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    pub url: Secret,
}

/// Protection of the admin listener.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AdminAuth {
    /// Bearer token `/admin/*` requires (from `admin.token_env`).
    pub token: Option<Secret>,
    /// `/metrics`, `/healthz` and `/readyz` require it too.
    pub protect_probes: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let cases = [
            ("session.shell.*", "session.shell.exec", true),
            ("session.shell.*", "session.shellx", false),
            ("sessions.bulkDelete", "sessions.bulkDelete", true),
            ("sessions.bulkDelete", "sessions.bulkDeleteAll", false),
            ("*", "anything", true),
            ("session.*.list", "session.agent.list", true),
            ("session.*.list", "session.agent.select", false),
            ("*.discover", "skills.discover", true),
            ("a*b*c", "abc", true),
            ("a*b*c", "acb", false),
        ];
        for (glob, method, want) in cases {
            assert_eq!(Glob(glob.into()).matches(method), want, "{glob} {method}");
        }
    }

    #[test]
    fn prefixes_for_callers() {
        let u = Unowned::Prefix("{tenant}-{user}-".into());
        assert_eq!(
            u.prefix_for("alice", Some("acme")).as_deref(),
            Some("acme-alice-")
        );
        assert_eq!(Unowned::Deny.prefix_for("alice", None), None);
    }
}
