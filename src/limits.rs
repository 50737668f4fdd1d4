//! Rate limits, the same for both protocols: sliding windows per caller (its identity, else its
//! client IP), and optionally per session and per caller and method, counted in the shared
//! store (so across replicas when Redis is configured). The caller's limits (per method, then
//! per caller) come first; the session's only once the caller may use the session (so a caller
//! refused a session cannot use up its owner's allowance). A request one limit refuses is not
//! counted by the limits after it.

use std::net::IpAddr;
use std::time::Duration;

use crate::config::{Limits, RateLimit};
use crate::identity::Identity;
use crate::store::Store;

/// A request a limit refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Limited {
    /// Which limit: `user`, `session` or `method`.
    pub which: &'static str,
    pub limit: RateLimit,
    /// When a request would be admitted, if no other is meanwhile.
    pub retry_after: Duration,
}

impl Limited {
    pub fn message(&self) -> String {
        format!(
            "rate limit of {} requests per {:?} reached ({})",
            self.limit.requests, self.limit.per, self.which
        )
    }

    /// `retry_after` in whole milliseconds, at least 1.
    pub fn retry_after_ms(&self) -> u64 {
        u64::try_from(self.retry_after.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// `retry_after` in whole seconds, rounded up (HTTP `Retry-After`).
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after_ms().div_ceil(1000)
    }
}

/// Who a request counts against: `user:<tenant/user>`, or `ip:<address>` without an identity.
pub fn caller_key(caller: Option<&Identity>, ip: IpAddr) -> String {
    match caller {
        Some(who) => format!("user:{}", who.key()),
        None => format!("ip:{ip}"),
    }
}

/// Count a request of `caller` (from [`caller_key`]) calling `method` (the JSON-RPC method, or
/// the HTTP method) against the per-method limit, then the caller's: the first that refuses it
/// says so.
pub async fn check_caller(
    store: &Store,
    limits: &Limits,
    caller: &str,
    method: &str,
) -> Result<(), Limited> {
    if let Some(limit) = limits.per_method {
        let key = format!("method:{caller}:{method}");
        count(store, "method", limit, &key).await?;
    }
    match limits.per_user {
        Some(limit) => count(store, "user", limit, caller).await,
        None => Ok(()),
    }
}

/// Count a request about `session` of `pool` against the per-session limit. Called once the
/// caller may use the session, so nobody else can use up its owner's allowance.
pub async fn check_session(
    store: &Store,
    limits: &Limits,
    pool: &str,
    session: &str,
) -> Result<(), Limited> {
    match limits.per_session {
        Some(limit) => {
            count(
                store,
                "session",
                limit,
                &format!("session:{pool}:{session}"),
            )
            .await
        }
        None => Ok(()),
    }
}

async fn count(
    store: &Store,
    which: &'static str,
    limit: RateLimit,
    key: &str,
) -> Result<(), Limited> {
    store
        .rate(key, limit.requests, limit.per)
        .await
        .map_err(|retry_after| Limited {
            which,
            limit,
            retry_after,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(requests: u32) -> Option<RateLimit> {
        Some(RateLimit {
            requests,
            per: Duration::from_secs(60),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn each_limit_counts_its_own_key() {
        let store = Store::local();
        let limits = Limits {
            per_user: limit(3),
            per_session: limit(1),
            per_method: limit(2),
        };
        let caller = |method| check_caller(&store, &limits, "user:acme/alice", method);
        assert_eq!(caller("a").await, Ok(()));
        assert_eq!(check_session(&store, &limits, "p", "s1").await, Ok(()));
        let second = check_session(&store, &limits, "p", "s1").await.unwrap_err();
        assert_eq!(second.which, "session");
        assert_eq!(check_session(&store, &limits, "p", "s2").await, Ok(()));
        assert_eq!(caller("a").await, Ok(()));
        let third = caller("a").await.unwrap_err();
        assert_eq!(third.which, "method");
        assert!(third.retry_after > Duration::ZERO);
        assert_eq!(caller("b").await, Ok(()));
        let fourth = caller("c").await.unwrap_err();
        assert_eq!(fourth.which, "user");
        assert_eq!(
            fourth.message(),
            "rate limit of 3 requests per 60s reached (user)"
        );
        // Another caller has its own allowance.
        assert_eq!(
            check_caller(&store, &limits, "ip:127.0.0.9", "a").await,
            Ok(())
        );
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let limited = |ms| Limited {
            which: "user",
            limit: limit(1).unwrap(),
            retry_after: Duration::from_millis(ms),
        };
        assert_eq!(limited(0).retry_after_ms(), 1);
        assert_eq!(limited(1).retry_after_secs(), 1);
        assert_eq!(limited(1000).retry_after_secs(), 1);
        assert_eq!(limited(1001).retry_after_secs(), 2);
    }

    #[test]
    fn callers_without_identity_count_by_ip() {
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(caller_key(None, ip), "ip:127.0.0.2");
    }
}
