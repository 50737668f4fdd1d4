//! State shared by the proxy replicas of one deployment: which user created each session of a
//! pool (ownership bindings), which node holds it (session pins, [`pins`]), sliding-window rate
//! limits, and session locks (one turn at a time per session). With Redis ([`Store::with_redis`]) the state lives there, so every replica sees
//! the same bindings, counts and locks; with [`Store::local`], or whenever Redis fails, the same
//! operation is served in-process from bounded maps ([`local`]), which is correct within one
//! replica.
//!
//! # Redis
//!
//! Redis is reached through redis-rs, the well-kept Redis client: its `ConnectionManager`
//! multiplexes one connection and reconnects by itself when it drops. Start-up never waits for
//! Redis nor fails because it is down: a background task connects, then pings Redis every
//! [`PROBE_INTERVAL`]. Each call has [`CALL_TIMEOUT`], so a hung Redis never stalls traffic. The
//! first call that fails marks Redis down (a warning, once per outage; `sessiongate_redis_up`
//! 0), and operations are served from memory at once, without trying Redis, until a probe is
//! answered (an info line; `sessiongate_redis_up` 1). Operations served from memory while Redis
//! is configured are counted in `sessiongate_store_fallback_total{op}`, failed calls in
//! `sessiongate_redis_errors_total{op}`. Logs name Redis by host, port and database only, never
//! with the URL's password.
//!
//! Keys, all under `sessiongate:`:
//! - `owner:{pool}:{session}`: the user, `SET … PX ttl`. An in-process copy stands in front:
//!   reads look there first, and on a miss `GET` (with `PTTL`, one round trip) and keep the answer
//!   for its remaining lifetime. `unbind` deletes both.
//! - `pin:{pool}:{session}` and `live:{pool}:{node}`: session pins and each node's live
//!   sessions (see [`pins`]); only with Redis, as the in-process pin table is the local copy.
//! - `rate:{key}`: a hash of the counts of two fixed windows (this one and the one before),
//!   checked and counted by one Lua script (one round trip) on Redis' clock; it expires two
//!   windows after the last admitted request.
//! - `lock:{key}`: the holder, `SET NX PX ttl`; renew and unlock are compare-and-set scripts, so
//!   only the holder extends or deletes it. A lock Redis granted is also recorded in memory, so
//!   its holder can still renew and release it during an outage; while a holder in this process
//!   holds a lock, the others here are refused it without asking Redis.
//!
//! # Limits
//!
//! - The fallback is per replica. During an outage each replica grants its own locks and counts
//!   its own rate windows (a cluster of n replicas admits up to n × limit), and bindings written
//!   then are kept only in that replica's memory: they are not replayed to Redis when it answers
//!   again. A lock granted in memory still keeps the lock from the replica's other would-be
//!   holders when Redis is back, and is taken in Redis at its next renewal (if no other replica
//!   took it meanwhile); until then other replicas may take it.
//! - A call that timed out may still be carried out by Redis later (a binding written, a request
//!   counted, a lock taken until its ttl), on top of what was done in memory.
//! - A binding's in-process copy is trusted until it expires: an unbind or rebind made through
//!   another replica is seen here only once the copy expires or is evicted.
//! - Each in-process map holds at most [`CAPACITY`] entries, the least recently used evicted: an
//!   evicted binding is read again from Redis (or forgotten without it), an evicted rate window
//!   starts again from zero, an evicted lock is free.
//! - A pool name containing `:` can give two bindings one key (`a` + `b:c`, `a:b` + `c`); pool
//!   names are the operator's.
//! - One Redis server (or a primary behind one address); `TIME` in the rate script needs Redis 5
//!   or later.

mod local;
mod pins;
mod remote;

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;

pub use self::pins::{refresh_interval, SharedPins};
pub use self::remote::{CALL_TIMEOUT, PROBE_INTERVAL};
use self::{local::Local, remote::Remote};

/// The most entries each in-process map (bindings, rate windows, locks) holds.
pub const CAPACITY: u64 = 1_000_000;

/// Every Redis key of the store starts with this.
const PREFIX: &str = "sessiongate:";

/// Why a store could not be made.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL is not `redis://host:port[/db]` (nor another form redis-rs reads). The message
    /// never repeats the URL, which may hold a password.
    #[error("invalid Redis URL (expected redis://host:port[/db]): {source}")]
    RedisUrl {
        #[source]
        source: redis::RedisError,
    },
}

/// The store operations, as metric labels.
#[derive(Debug, Clone, Copy)]
enum Op {
    Bind,
    Owner,
    Unbind,
    Rate,
    Lock,
    Renew,
    Unlock,
    PinLookup,
    PinWrite,
    PinLive,
}

impl Op {
    /// In discriminant order: `op as usize` indexes arrays built from this.
    const ALL: [Op; 10] = [
        Op::Bind,
        Op::Owner,
        Op::Unbind,
        Op::Rate,
        Op::Lock,
        Op::Renew,
        Op::Unlock,
        Op::PinLookup,
        Op::PinWrite,
        Op::PinLive,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Op::Bind => "bind",
            Op::Owner => "owner",
            Op::Unbind => "unbind",
            Op::Rate => "rate",
            Op::Lock => "lock",
            Op::Renew => "renew",
            Op::Unlock => "unlock",
            Op::PinLookup => "pin_lookup",
            Op::PinWrite => "pin_write",
            Op::PinLive => "pin_live",
        }
    }
}

/// The shared state of one proxy process; clones share it.
#[derive(Clone)]
pub struct Store {
    local: Arc<Local>,
    redis: Option<Arc<Remote>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("redis", &self.has_redis())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// A store kept in this process only.
    pub fn local() -> Store {
        Store {
            local: Arc::new(Local::new(CAPACITY)),
            redis: None,
        }
    }

    /// A store kept in Redis at `url` (`redis://[:password@]host:port[/db]`), with the in-process
    /// fallback. It connects in the background (from within a Tokio runtime, else at the first
    /// operation), so it never fails because Redis is down: only for a URL it cannot read.
    pub fn with_redis(url: &str, metrics: &Metrics) -> Result<Store, StoreError> {
        let client = redis::Client::open(url).map_err(|source| StoreError::RedisUrl { source })?;
        Ok(Store {
            local: Arc::new(Local::new(CAPACITY)),
            redis: Some(Remote::new(client, metrics)),
        })
    }

    /// An in-process store whose maps hold at most `capacity` entries.
    #[cfg(test)]
    fn local_with_capacity(capacity: u64) -> Store {
        Store {
            local: Arc::new(Local::new(capacity)),
            redis: None,
        }
    }

    /// The pins of `pool` in Redis, for a pin table whose idle TTL is `idle_ttl`; `None`
    /// without Redis.
    pub fn shared_pins(&self, pool: &str, idle_ttl: Duration) -> Option<SharedPins> {
        let remote = self.redis.as_ref()?;
        Some(SharedPins::new(remote.clone(), pool, idle_ttl))
    }

    /// Whether Redis is configured (not whether it answers: that is `sessiongate_redis_up`).
    pub fn has_redis(&self) -> bool {
        self.redis.is_some()
    }

    /// Record that `user` created `session` of `pool`, for `ttl`: in this process at once (so
    /// the next request sees it), in Redis when the returned future runs.
    pub fn bind(
        &self,
        pool: &str,
        session: &str,
        user: &str,
        ttl: Duration,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let key = owner_key(pool, session);
        self.local.bind(&key, Arc::from(user), ttl);
        let (redis, user) = (self.redis.clone(), user.to_owned());
        async move {
            if let Some(redis) = redis {
                redis.bind(&key, &user, ttl).await;
            }
        }
    }

    /// The user who created `session` of `pool`, if a binding is known.
    pub async fn owner(&self, pool: &str, session: &str) -> Option<Arc<str>> {
        let key = owner_key(pool, session);
        if let Some(user) = self.local.owner(&key) {
            return Some(user);
        }
        let (user, ttl) = self.redis.as_ref()?.owner(&key).await?;
        self.local.bind(&key, user.clone(), ttl);
        Some(user)
    }

    /// The owner of `session` of `pool` as this process knows it (no Redis round trip): for
    /// decisions that cannot wait, such as passing on a node's notification.
    pub fn known_owner(&self, pool: &str, session: &str) -> Option<Arc<str>> {
        self.local.owner(&owner_key(pool, session))
    }

    /// Bind `session` of `pool` to `user` unless someone owns it already (first use wins, also
    /// across replicas): the owner either way.
    pub async fn claim(&self, pool: &str, session: &str, user: &str, ttl: Duration) -> Arc<str> {
        let key = owner_key(pool, session);
        if let Some(owner) = self.local.owner(&key) {
            return owner;
        }
        if let Some(redis) = &self.redis {
            if let Some((owner, left)) = redis.claim(&key, user, ttl).await {
                self.local.bind(&key, owner.clone(), left);
                return owner;
            }
        }
        self.local.claim(&key, Arc::from(user), ttl)
    }

    /// Forget who created `session` of `pool`: in this process at once, in Redis when the
    /// returned future runs.
    pub fn unbind(
        &self,
        pool: &str,
        session: &str,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let key = owner_key(pool, session);
        self.local.unbind(&key);
        let redis = self.redis.clone();
        async move {
            if let Some(redis) = redis {
                redis.unbind(&key).await;
            }
        }
    }

    /// Count a request for `key` (e.g. `user:alice`) against a sliding window of `limit`
    /// requests per `window`. `Err(retry_after)`: refused (and not counted); a request would be
    /// admitted after `retry_after` if no other is meanwhile. That is at most
    /// `window + window / limit` (a burst at the very start of a fixed window waits for the next
    /// window's first `1 / limit`); a `limit` of 0 refuses everything (`retry_after` = `window`).
    pub async fn rate(&self, key: &str, limit: u32, window: Duration) -> Result<(), Duration> {
        if limit == 0 {
            return Err(window);
        }
        let key = format!("{PREFIX}rate:{key}");
        if let Some(redis) = &self.redis {
            if let Some(verdict) = redis.rate(&key, limit, window).await {
                return verdict;
            }
        }
        self.local.rate(&key, limit, window)
    }

    /// Take the lock `key` for `holder`, for `ttl`, unless anyone (`holder` too) holds it.
    pub async fn try_lock(&self, key: &str, holder: &str, ttl: Duration) -> bool {
        let key = lock_key(key);
        if let Some(redis) = &self.redis {
            // A holder in this process keeps the lock from the others here, also when Redis
            // does not know it (granted in memory during an outage, Redis back empty).
            if self.local.holder(&key).is_some_and(|h| *h != *holder) {
                return false;
            }
            if let Some(taken) = redis.try_lock(&key, holder, ttl).await {
                if taken {
                    self.local.hold(&key, holder, ttl);
                }
                return taken;
            }
        }
        self.local.try_lock(&key, holder, ttl)
    }

    /// Extend the lock `key` to `ttl` from now. `false`: `holder` does not hold it any more
    /// (expired, or taken by another since).
    pub async fn renew(&self, key: &str, holder: &str, ttl: Duration) -> bool {
        let key = lock_key(key);
        if let Some(redis) = &self.redis {
            if let Some(mut renewed) = redis.renew(&key, holder, ttl).await {
                // Granted in memory during an outage, the lock is not in Redis: take it there
                // now, unless another replica took it meanwhile.
                if !renewed && self.local.holder(&key).is_some_and(|h| *h == *holder) {
                    match redis.try_lock(&key, holder, ttl).await {
                        Some(taken) => renewed = taken,
                        None => return self.local.renew(&key, holder, ttl),
                    }
                }
                if renewed {
                    self.local.hold(&key, holder, ttl);
                } else {
                    self.local.unlock(&key, holder);
                }
                return renewed;
            }
        }
        self.local.renew(&key, holder, ttl)
    }

    /// Release the lock `key` if `holder` holds it.
    pub async fn unlock(&self, key: &str, holder: &str) {
        let key = lock_key(key);
        self.local.unlock(&key, holder);
        if let Some(redis) = &self.redis {
            redis.unlock(&key, holder).await;
        }
    }
}

fn owner_key(pool: &str, session: &str) -> String {
    format!("{PREFIX}owner:{pool}:{session}")
}

fn lock_key(key: &str) -> String {
    format!("{PREFIX}lock:{key}")
}

/// Whole milliseconds, at least 1 (Redis refuses a zero expiry; a window needs a length).
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

#[cfg(test)]
mod tests;
