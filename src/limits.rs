//! Rate limits, the same for both protocols: sliding windows per caller (its identity, else its
//! client IP), and optionally per session and per caller and method, counted in the shared
//! store (so across replicas when Redis is configured). Limits are checked narrowest first
//! (session, method, caller) and a refused request is not counted by the limits after the one
//! that refused it, so a busy session cannot use up its caller's whole allowance.

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

/// One request, as the limits see it.
pub struct Request<'a> {
    /// From [`caller_key`].
    pub caller: &'a str,
    /// The pool and session the request is about, if any.
    pub session: Option<(&'a str, &'a str)>,
    /// The JSON-RPC method, or the HTTP method.
    pub method: &'a str,
}

/// Count `request` against every limit that applies, narrowest first; the first that refuses it
/// says so.
pub async fn check(store: &Store, limits: &Limits, request: &Request<'_>) -> Result<(), Limited> {
    let checks = [
        (
            "session",
            limits.per_session,
            request
                .session
                .map(|(pool, session)| format!("session:{pool}:{session}")),
        ),
        (
            "method",
            limits.per_method,
            Some(format!("method:{}:{}", request.caller, request.method)),
        ),
        ("user", limits.per_user, Some(request.caller.to_owned())),
    ];
    for (which, limit, key) in checks {
        let (Some(limit), Some(key)) = (limit, key) else {
            continue;
        };
        if let Err(retry_after) = store.rate(&key, limit.requests, limit.per).await {
            return Err(Limited {
                which,
                limit,
                retry_after,
            });
        }
    }
    Ok(())
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
        let req = |session, method| Request {
            caller: "user:acme/alice",
            session,
            method,
        };
        assert_eq!(
            check(&store, &limits, &req(Some(("p", "s1")), "a")).await,
            Ok(())
        );
        let second = check(&store, &limits, &req(Some(("p", "s1")), "a")).await;
        assert_eq!(second.unwrap_err().which, "session");
        assert_eq!(check(&store, &limits, &req(None, "a")).await, Ok(()));
        let third = check(&store, &limits, &req(None, "a")).await.unwrap_err();
        assert_eq!(third.which, "method");
        assert!(third.retry_after > Duration::ZERO);
        assert_eq!(check(&store, &limits, &req(None, "b")).await, Ok(()));
        let fourth = check(&store, &limits, &req(None, "c")).await.unwrap_err();
        assert_eq!(fourth.which, "user");
        assert_eq!(
            fourth.message(),
            "rate limit of 3 requests per 60s reached (user)"
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
