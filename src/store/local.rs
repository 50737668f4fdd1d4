//! The in-process side of the store: bounded moka caches of bindings, rate windows and locks,
//! used alone without Redis and as the fallback while Redis is down. Every decision reads
//! Tokio's clock (so tests run it on virtual time); each entry also carries a lifetime that lets
//! moka free it in real time, and every cache evicts the least recently used entry when full.
//! Each operation on one key is atomic (moka's per-key `and_compute_with`).

use std::sync::Arc;
use std::time::Duration;

use moka::ops::compute::Op;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use moka::Expiry;
use tokio::time::Instant;

use super::millis;

/// A binding of a session to the user who created it.
#[derive(Clone)]
struct Binding {
    user: Arc<str>,
    expires_at: Instant,
    ttl: Duration,
}

/// The two fixed windows a sliding window is estimated from.
#[derive(Clone, Copy, Default)]
struct Window {
    /// Which fixed window `current` counts (time since the store's epoch / window length).
    index: u64,
    current: u64,
    previous: u64,
    /// The window length, so moka can drop the counts once both windows are over.
    length: Duration,
}

impl Window {
    /// The counts as seen from fixed window `index`.
    fn rolled_to(self, index: u64) -> Window {
        if self.index == index {
            self
        } else if self.index + 1 == index {
            Window {
                index,
                current: 0,
                previous: self.current,
                length: self.length,
            }
        } else {
            Window {
                index,
                current: 0,
                previous: 0,
                length: self.length,
            }
        }
    }
}

#[derive(Clone)]
struct Lock {
    holder: Arc<str>,
    expires_at: Instant,
    ttl: Duration,
}

impl Lock {
    fn held_by(&self, holder: &str, now: Instant) -> bool {
        self.expires_at > now && &*self.holder == holder
    }
}

/// How long moka keeps an entry after it was written: only to free memory, since every
/// decision checks its own deadline on Tokio's clock.
trait Lifetime {
    fn lifetime(&self) -> Duration;
}

impl Lifetime for Binding {
    fn lifetime(&self) -> Duration {
        self.ttl
    }
}

impl Lifetime for Window {
    fn lifetime(&self) -> Duration {
        self.length.saturating_mul(2)
    }
}

impl Lifetime for Lock {
    fn lifetime(&self) -> Duration {
        self.ttl
    }
}

struct ExpireByLifetime;

impl<V: Lifetime> Expiry<String, V> for ExpireByLifetime {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &V,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.lifetime())
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &V,
        _updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.lifetime())
    }
}

fn cache<V: Lifetime + Clone + Send + Sync + 'static>(capacity: u64) -> Cache<String, V> {
    Cache::builder()
        .max_capacity(capacity)
        .eviction_policy(EvictionPolicy::lru())
        .expire_after(ExpireByLifetime)
        .build()
}

/// The in-process maps of one store, keyed by the same strings as the Redis keys.
pub(super) struct Local {
    bindings: Cache<String, Binding>,
    windows: Cache<String, Window>,
    locks: Cache<String, Lock>,
    /// Fixed windows are counted from here.
    epoch: Instant,
}

impl Local {
    /// Maps of at most `capacity` entries each.
    pub(super) fn new(capacity: u64) -> Local {
        Local {
            bindings: cache(capacity),
            windows: cache(capacity),
            locks: cache(capacity),
            epoch: Instant::now(),
        }
    }

    pub(super) fn bind(&self, key: &str, user: Arc<str>, ttl: Duration) {
        let binding = Binding {
            user,
            expires_at: Instant::now() + ttl,
            ttl,
        };
        self.bindings.insert(key.to_owned(), binding);
    }

    pub(super) fn owner(&self, key: &str) -> Option<Arc<str>> {
        let binding = self.bindings.get(key)?;
        if binding.expires_at <= Instant::now() {
            self.bindings.invalidate(key);
            return None;
        }
        Some(binding.user)
    }

    /// Bind `key` to `user` unless it is bound (and unexpired): the owner either way.
    pub(super) fn claim(&self, key: &str, user: Arc<str>, ttl: Duration) -> Arc<str> {
        let now = Instant::now();
        let entry = self
            .bindings
            .entry(key.to_owned())
            .and_upsert_with(|held| match held {
                Some(held) if held.value().expires_at > now => held.into_value(),
                _ => Binding {
                    user,
                    expires_at: now + ttl,
                    ttl,
                },
            });
        entry.into_value().user
    }

    pub(super) fn unbind(&self, key: &str) {
        self.bindings.invalidate(key);
    }

    /// Count a request against `key` if it fits in `limit` per `window` (`limit` >= 1); else the
    /// time until one would fit.
    pub(super) fn rate(&self, key: &str, limit: u32, window: Duration) -> Result<(), Duration> {
        let length = millis(window);
        let now = u64::try_from((Instant::now() - self.epoch).as_millis()).unwrap_or(u64::MAX);
        let index = now / length;
        let mut verdict = Ok(());
        self.windows.entry_by_ref(key).and_compute_with(|entry| {
            let counts = entry.map_or(
                Window {
                    index,
                    length: window,
                    ..Window::default()
                },
                |entry| entry.into_value().rolled_to(index),
            );
            verdict = admit(
                limit.into(),
                length,
                now % length,
                counts.previous,
                counts.current,
            );
            match verdict {
                Ok(()) => Op::Put(Window {
                    current: counts.current + 1,
                    length: window,
                    ..counts
                }),
                Err(_) => Op::Nop,
            }
        });
        verdict.map_err(Duration::from_millis)
    }

    /// Take the lock at `key` for `holder` unless someone (`holder` too) holds it.
    pub(super) fn try_lock(&self, key: &str, holder: &str, ttl: Duration) -> bool {
        let now = Instant::now();
        let mut taken = false;
        self.locks
            .entry_by_ref(key)
            .and_compute_with(|entry| match entry {
                Some(lock) if lock.value().expires_at > now => Op::Nop,
                _ => {
                    taken = true;
                    Op::Put(Lock {
                        holder: Arc::from(holder),
                        expires_at: now + ttl,
                        ttl,
                    })
                }
            });
        taken
    }

    /// Who holds the lock at `key` now, as far as this process knows.
    pub(super) fn holder(&self, key: &str) -> Option<Arc<str>> {
        let now = Instant::now();
        self.locks
            .get(key)
            .filter(|lock| lock.expires_at > now)
            .map(|lock| lock.holder)
    }

    /// Record that `holder` holds the lock at `key` (Redis said so), for use during an outage.
    pub(super) fn hold(&self, key: &str, holder: &str, ttl: Duration) {
        let lock = Lock {
            holder: Arc::from(holder),
            expires_at: Instant::now() + ttl,
            ttl,
        };
        self.locks.insert(key.to_owned(), lock);
    }

    /// Extend the lock at `key` to `ttl` from now if `holder` still holds it.
    pub(super) fn renew(&self, key: &str, holder: &str, ttl: Duration) -> bool {
        let now = Instant::now();
        let mut renewed = false;
        self.locks
            .entry_by_ref(key)
            .and_compute_with(|entry| match entry {
                Some(lock) if lock.value().held_by(holder, now) => {
                    renewed = true;
                    Op::Put(Lock {
                        expires_at: now + ttl,
                        ttl,
                        ..lock.into_value()
                    })
                }
                _ => Op::Nop,
            });
        renewed
    }

    /// Release the lock at `key` if `holder` holds it.
    pub(super) fn unlock(&self, key: &str, holder: &str) {
        self.locks
            .entry_by_ref(key)
            .and_compute_with(|entry| match entry {
                Some(lock) if &*lock.value().holder == holder => Op::Remove,
                _ => Op::Nop,
            });
    }

    /// Apply moka's pending evictions, so tests see the bound at once.
    #[cfg(test)]
    pub(super) fn settle(&self) {
        self.bindings.run_pending_tasks();
        self.windows.run_pending_tasks();
        self.locks.run_pending_tasks();
    }
}

/// The sliding-window decision, in milliseconds. The requests of the last `window` are
/// estimated as the previous fixed window's count weighted by the part of it still inside the
/// sliding window, plus the current fixed window's count; one more fits if the estimate stays
/// within `limit` (>= 1). If not, the time until one would fit, assuming no other request is
/// admitted meanwhile (exact to the millisecond, at most `window + ⌈window / limit⌉`). The Redis
/// script in `remote.rs` is this function's twin: change both together.
pub(super) fn admit(
    limit: u64,
    window: u64,
    elapsed: u64,
    previous: u64,
    current: u64,
) -> Result<(), u64> {
    // Scaled by `window` so everything stays in integers.
    let (limit, window, elapsed, previous, current) = (
        u128::from(limit),
        u128::from(window),
        u128::from(elapsed),
        u128::from(previous),
        u128::from(current),
    );
    let to_ms = |wait: u128| u64::try_from(wait).unwrap_or(u64::MAX);
    if previous * (window - elapsed) + (current + 1) * window <= limit * window {
        return Ok(());
    }
    if current < limit {
        // The previous window's share shrinks as it slides out: wait until it leaves room for
        // one (`previous` > 0, or the request would have fitted).
        let fits_at = window - (limit - 1 - current) * window / previous;
        return Err(to_ms(fits_at - elapsed));
    }
    // The current window alone is full: wait for the next one, where this one's share then has
    // to shrink as well.
    let fits_at = window - (limit - 1) * window / current;
    Err(to_ms(window - elapsed + fits_at))
}
