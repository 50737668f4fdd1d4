//! Session pins: where each JSON-RPC session lives. A pin is learned when a node answers
//! `session.create` or `session.resume`, and then beats the ring, so scale-out never moves a live
//! session. It is a cache, never the source of truth: pins expire after `session_idle_ttl`
//! without traffic, the table is bounded (least recently used evicted), and a session the
//! table does not know is found by asking the fleet (owner discovery).
//!
//! With `redis:` the table is the local copy of pins shared by every replica
//! ([`crate::store::SharedPins`]): what it learns, moves and forgets is written through, and
//! activity refreshes a shared pin at most once per refresh interval. Expiry and eviction here
//! are local matters and leave the shared pin alone; a miss asks Redis before the fleet
//! ([`crate::snapshot::Pool::recall_pin`]).
//!
//! Each pin entry also carries the session's [`stats::SessionStats`] (requests, errors,
//! latency), so the figures live and go with the pin and are bounded by the same
//! `max_pinned_sessions`.

pub mod histogram;
pub mod stats;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use moka::sync::Cache;

use crate::config::Secret;
use crate::store::SharedPins;
use crate::upstream::Upstream;
use stats::SessionStats;

/// The node a session lives on. The address is kept with the name so that a session pinned to
/// an upstream a reload removed can still be reached while it drains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub upstream: Arc<str>,
    pub addr: Arc<str>,
}

/// A pin in the table, with when it was last written to the shared store (milliseconds since
/// [`EPOCH`]) and the session's figures, both shared by the entry's clones.
#[derive(Debug, Clone)]
struct Entry {
    pin: Pin,
    shared_at: Arc<AtomicU64>,
    stats: Arc<SessionStats>,
}

impl Entry {
    fn new(pin: Pin, stats: Option<Arc<SessionStats>>) -> Entry {
        Entry {
            pin,
            shared_at: Arc::new(AtomicU64::new(now_ms())),
            stats: stats.unwrap_or_default(),
        }
    }
}

/// moka's own bookkeeping per cached entry (hash table slot, entry info, the access- and
/// write-order queue nodes, the frequency sketch's share), a generous estimate from its
/// source; `tests/session_memory.rs` checks the whole figure against the process's growth.
pub const CACHE_OVERHEAD_BYTES: usize = 256;

/// What one live session costs the pin table, with its figures, for an id of `id_len` bytes
/// (the pin's names are shared with the upstream). The README's memory bound is this times
/// `max_pinned_sessions`.
pub fn entry_bytes(id_len: usize) -> usize {
    use std::mem::size_of;
    // An `Arc` allocation: two counts, then the value.
    let arc = |value: usize| 2 * size_of::<usize>() + value;
    let key = size_of::<Arc<str>>() + arc(id_len);
    let entry = size_of::<Entry>() + arc(size_of::<AtomicU64>()) + arc(size_of::<SessionStats>());
    key + entry + CACHE_OVERHEAD_BYTES
}

/// A live session as the admin endpoints list it.
#[derive(Debug, Clone)]
pub struct LiveSession {
    pub id: Arc<str>,
    pub pin: Pin,
    pub stats: Arc<SessionStats>,
}

/// The zero of [`Entry::shared_at`].
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ms() -> u64 {
    u64::try_from(EPOCH.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The pin table of one pool, shared by every listener and connection using the pool, and
/// carried across reloads.
#[derive(Clone)]
pub struct SessionPins {
    cache: Cache<Arc<str>, Entry>,
    /// The pool's pins in Redis, when configured.
    shared: Option<SharedPins>,
    ttl: Duration,
    capacity: u64,
    /// Upstreams a reload removed, while their pinned sessions drain: a new link to such a
    /// node still needs its token, an HTTP request its connection pool. Shared by every copy of
    /// the table.
    retired: Arc<Mutex<HashMap<Arc<str>, Arc<Upstream>>>>,
    /// Pins held by open responses (an SSE stream may stay silent past the idle TTL): they
    /// outlive expiry and eviction until the last hold is dropped. Bounded by open responses.
    held: Arc<Mutex<HashMap<Arc<str>, Held>>>,
    /// Live sessions per upstream (pins pointing at it), kept by every insert and removal, so
    /// reading one is O(1). Expired pins are subtracted when the table next does maintenance.
    live: Arc<LiveCounts>,
}

/// Pins per upstream, plus creates placed there and not answered yet.
#[derive(Debug, Default)]
struct LiveCounts(
    Mutex<HashMap<Arc<str>, usize>>,
    Mutex<HashMap<Arc<str>, usize>>,
);

/// A create placed on an upstream and not answered yet: counted as live there, so creates in
/// flight together see each other (dropped with the waiting request).
#[derive(Debug)]
pub struct Reservation {
    live: Arc<LiveCounts>,
    upstream: Arc<str>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut reserved = self.live.1.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = reserved.get_mut(&self.upstream) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                reserved.remove(&self.upstream);
            }
        }
    }
}

impl LiveCounts {
    fn add(&self, upstream: &Arc<str>) {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry(upstream.clone()).or_default() += 1;
    }

    fn remove(&self, upstream: &str) {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(upstream) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(upstream);
            }
        }
    }

    fn get(&self, upstream: &str) -> usize {
        let counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(upstream).copied().unwrap_or(0)
    }

    fn reserved(&self, upstream: &str) -> usize {
        let reserved = self.1.lock().unwrap_or_else(|e| e.into_inner());
        reserved.get(upstream).copied().unwrap_or(0)
    }

    fn total(&self) -> usize {
        let counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        counts.values().sum()
    }

    fn reserved_total(&self) -> usize {
        let reserved = self.1.lock().unwrap_or_else(|e| e.into_inner());
        reserved.values().sum()
    }
}

/// A pin held by open responses: how many, and which entry (a pin dropped and held again is a
/// new entry, which the old holds must not release).
struct Held {
    pin: Pin,
    /// The figures, for the entry made again if the pin expires while held.
    stats: Arc<SessionStats>,
    holds: usize,
    entry: u64,
}

static NEXT_HELD_ENTRY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Keeps a pin alive while it exists (see [`SessionPins::hold`]).
pub struct PinHold {
    pins: SessionPins,
    session: Arc<str>,
    entry: u64,
}

impl Drop for PinHold {
    fn drop(&mut self) {
        let mut held = self.pins.held();
        if let Some(h) = held.get_mut(&self.session) {
            if h.entry == self.entry {
                h.holds -= 1;
                if h.holds == 0 {
                    held.remove(&self.session);
                }
            }
        }
    }
}

impl std::fmt::Debug for SessionPins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionPins")
            .field("entries", &self.cache.entry_count())
            .field("ttl", &self.ttl)
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl SessionPins {
    pub fn new(ttl: Duration, capacity: u64) -> SessionPins {
        let live = Arc::new(LiveCounts::default());
        let removed = live.clone();
        SessionPins {
            cache: Cache::builder()
                .max_capacity(capacity)
                .time_to_idle(ttl)
                // Every way a pin leaves (replaced, unpinned, expired, evicted) passes here.
                .eviction_listener(move |_, entry: Entry, _| removed.remove(&entry.pin.upstream))
                .build(),
            shared: None,
            live,
            ttl,
            capacity,
            retired: Arc::default(),
            held: Arc::default(),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keep `session`'s pin while the returned hold lives, whatever the idle TTL and the bound
    /// say (an open stream is activity); `None` if it is not pinned.
    pub fn hold(&self, session: &str) -> Option<PinHold> {
        let pin = self.get(session)?;
        let stats = self.stats(session).unwrap_or_default();
        let session: Arc<str> = Arc::from(session);
        let mut held = self.held();
        let h = held.entry(session.clone()).or_insert_with(|| Held {
            pin: pin.clone(),
            stats,
            holds: 0,
            entry: NEXT_HELD_ENTRY.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        });
        h.pin = pin;
        h.holds += 1;
        let entry = h.entry;
        drop(held);
        Some(PinHold {
            pins: self.clone(),
            session,
            entry,
        })
    }

    /// This table, writing through to `shared` (the pool's pins in Redis).
    pub fn with_shared(mut self, shared: Option<SharedPins>) -> SessionPins {
        self.shared = shared;
        self
    }

    /// The pool's pins in Redis, when configured.
    pub fn shared(&self) -> Option<&SharedPins> {
        self.shared.as_ref()
    }

    /// The same table if the policy is unchanged, else a new table holding the same pins.
    pub fn with_policy(&self, ttl: Duration, capacity: u64) -> SessionPins {
        if ttl == self.ttl && capacity == self.capacity {
            return self.clone();
        }
        let mut next = SessionPins::new(ttl, capacity);
        next.shared = self.shared.as_ref().map(|s| s.for_idle_ttl(ttl));
        next.retired = self.retired.clone();
        next.held = self.held.clone();
        for (session, entry) in self.cache.iter() {
            next.live.add(&entry.pin.upstream);
            next.cache.insert((*session).clone(), entry);
        }
        next
    }

    /// Where `session` lives, refreshing its idle timer (a held pin that expired comes back),
    /// and its shared pin when the refresh interval has passed since it was last written.
    pub fn get(&self, session: &str) -> Option<Pin> {
        if let Some(entry) = self.cache.get(session) {
            self.refresh_shared(session, &entry);
            return Some(entry.pin);
        }
        let (pin, stats) = {
            let held = self.held();
            let h = held.get(session)?;
            (h.pin.clone(), h.stats.clone())
        };
        self.live.add(&pin.upstream);
        self.cache
            .insert(Arc::from(session), Entry::new(pin.clone(), Some(stats)));
        Some(pin)
    }

    fn refresh_shared(&self, session: &str, entry: &Entry) {
        let Some(shared) = &self.shared else {
            return;
        };
        let (now, every) = (now_ms(), shared.refresh_every().as_millis() as u64);
        let last = entry.shared_at.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= every
            && entry
                .shared_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            shared.refresh(session, &entry.pin.upstream);
        }
    }

    /// `session` lives where `pin` says: learned here, so written through to the shared pins.
    pub fn pin(&self, session: &str, pin: Pin) {
        if let Some(shared) = &self.shared {
            shared.set(session, &pin.upstream);
        }
        self.insert(session, pin);
    }

    /// `session` lives where `pin` says, as the shared pins told: kept here, not written back.
    pub fn adopt(&self, session: &str, pin: Pin) {
        self.insert(session, pin);
    }

    fn insert(&self, session: &str, pin: Pin) {
        if let Some(h) = self.held().get_mut(session) {
            h.pin = pin.clone();
        }
        self.live.add(&pin.upstream);
        // A session re-pinned (resumed, moved) keeps its figures.
        let stats = self.cache.get(session).map(|e| e.stats);
        self.cache
            .insert(Arc::from(session), Entry::new(pin, stats));
    }

    /// The figures of pinned `session` (refreshing its idle timer, like any use of the pin).
    pub fn stats(&self, session: &str) -> Option<Arc<SessionStats>> {
        self.cache.get(session).map(|e| e.stats)
    }

    /// Every live session with its pin and figures, without refreshing them (a scan: for the
    /// admin endpoints, not the data path).
    pub fn sessions(&self) -> impl Iterator<Item = LiveSession> + '_ {
        self.cache.iter().map(|(id, e)| LiveSession {
            id: (*id).clone(),
            pin: e.pin,
            stats: e.stats,
        })
    }

    /// Live session `id`, without refreshing it. A scan (moka has no lookup that leaves the
    /// idle timer alone, and an operator looking must not keep a session alive).
    pub fn session(&self, id: &str) -> Option<LiveSession> {
        self.cache
            .iter()
            .find(|(k, _)| &***k == id)
            .map(|(k, e)| LiveSession {
                id: (*k).clone(),
                pin: e.pin,
                stats: e.stats,
            })
    }

    /// The configured bound on pins (and so on session figures).
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Live sessions on `upstream` (its pins), O(1).
    pub fn live_on(&self, upstream: &str) -> usize {
        self.live.get(upstream)
    }

    /// Live sessions in the pool.
    pub fn live_total(&self) -> usize {
        self.live.total()
    }

    /// Live sessions on `upstream` and creates placed there in flight: what placement counts.
    pub fn placed_on(&self, upstream: &str) -> usize {
        self.live.get(upstream) + self.live.reserved(upstream)
    }

    /// [`SessionPins::placed_on`] for the whole pool.
    pub fn placed_total(&self) -> usize {
        self.live.total() + self.live.reserved_total()
    }

    /// Count a create placed on `upstream` until the returned reservation is dropped.
    pub fn reserve(&self, upstream: &Arc<str>) -> Reservation {
        let mut reserved = self.live.1.lock().unwrap_or_else(|e| e.into_inner());
        *reserved.entry(upstream.clone()).or_default() += 1;
        Reservation {
            live: self.live.clone(),
            upstream: upstream.clone(),
        }
    }

    /// Forget `session`'s pin, held or not (its holds then keep nothing), here and in the
    /// shared pins (there only if it still names the node it named here).
    pub fn unpin(&self, session: &str) {
        let held = self.held().remove(session).map(|h| h.pin);
        let cached = self.cache.remove(session).map(|e| e.pin);
        if let Some(shared) = &self.shared {
            let node = cached.or(held).map(|p| p.upstream);
            shared.delete(session, node.as_deref());
        }
    }

    /// Approximate number of pins (maintenance is lazy).
    pub fn len(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forget every pin on `upstream` here (the shared pins: [`SharedPins::drop_node`]);
    /// returns how many there were.
    pub fn unpin_all_on(&self, upstream: &str) -> usize {
        let keys: Vec<Arc<str>> = self
            .cache
            .iter()
            .filter(|(_, entry)| &*entry.pin.upstream == upstream)
            .map(|(k, _)| (*k).clone())
            .collect();
        let mut held = self.held();
        held.retain(|_, h| &*h.pin.upstream != upstream);
        drop(held);
        for k in &keys {
            self.cache.invalidate(k);
        }
        keys.len()
    }

    /// Keep `upstream`, removed by a reload, while its pinned sessions drain.
    pub fn retire(&self, upstream: Arc<Upstream>) {
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        retired.insert(Arc::from(upstream.name()), upstream);
    }

    /// `upstream` if a reload removed it and it is still draining.
    pub fn retired(&self, upstream: &str) -> Option<Arc<Upstream>> {
        let retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        retired.get(upstream).cloned()
    }

    /// The token of `upstream` if a reload removed it and it is still draining.
    pub fn retired_token(&self, upstream: &str) -> Option<Secret> {
        self.retired(upstream)?.config.token.clone()
    }

    /// `upstream` finished draining: forget its token.
    pub fn forget_retired(&self, upstream: &str) {
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        retired.remove(upstream);
    }

    /// The sessions pinned to `upstream` (live in the last idle TTL, or held), sorted, without
    /// refreshing them (a scan: for cleanup rounds, not the data path).
    pub fn pinned_on(&self, upstream: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .cache
            .iter()
            .filter(|(_, entry)| &*entry.pin.upstream == upstream)
            .map(|(k, _)| k.to_string())
            .collect();
        ids.extend(
            self.held()
                .iter()
                .filter(|(_, h)| &*h.pin.upstream == upstream)
                .map(|(k, _)| k.to_string()),
        );
        ids.sort();
        ids.dedup();
        ids
    }

    /// How many pins point at `upstream` (a scan: for admin and reload reports, not the data path).
    pub fn count_on(&self, upstream: &str) -> usize {
        self.cache
            .iter()
            .filter(|(_, entry)| &*entry.pin.upstream == upstream)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(name: &str) -> Pin {
        Pin {
            upstream: Arc::from(name),
            addr: Arc::from("127.0.0.1:1"),
        }
    }

    #[test]
    fn pins_are_found_moved_and_dropped() {
        let pins = SessionPins::new(Duration::from_secs(60), 100);
        assert_eq!(pins.get("s1"), None);
        pins.pin("s1", pin("a"));
        assert_eq!(pins.get("s1"), Some(pin("a")));
        pins.pin("s1", pin("b"));
        assert_eq!(pins.get("s1").unwrap().upstream.as_ref(), "b");
        pins.unpin("s1");
        assert_eq!(pins.get("s1"), None);
    }

    #[test]
    fn pinned_on_lists_one_upstreams_sessions_held_ones_too() {
        let pins = SessionPins::new(Duration::from_secs(60), 100);
        pins.pin("s2", pin("a"));
        pins.pin("s1", pin("a"));
        pins.pin("s3", pin("b"));
        let _hold = pins.hold("s1");
        assert_eq!(pins.pinned_on("a"), vec!["s1", "s2"]);
        assert_eq!(pins.pinned_on("b"), vec!["s3"]);
        assert!(pins.pinned_on("c").is_empty());
    }

    #[test]
    fn table_is_bounded() {
        let pins = SessionPins::new(Duration::from_secs(60), 50);
        for i in 0..1_000 {
            pins.pin(&format!("s{i}"), pin("a"));
        }
        assert!(pins.len() <= 50, "{} pins kept", pins.len());
    }

    #[test]
    fn policy_change_keeps_pins() {
        let pins = SessionPins::new(Duration::from_secs(60), 100);
        pins.pin("s1", pin("a"));
        let same = pins.with_policy(Duration::from_secs(60), 100);
        same.pin("s2", pin("b"));
        assert_eq!(
            pins.get("s2"),
            Some(pin("b")),
            "unchanged policy shares the table"
        );
        let changed = pins.with_policy(Duration::from_secs(10), 100);
        assert_eq!(changed.get("s1"), Some(pin("a")));
        assert_eq!(changed.count_on("b"), 1);
    }

    #[test]
    fn live_counts_follow_every_way_in_and_out() {
        let pins = SessionPins::new(Duration::from_millis(50), 100);
        for i in 0..5 {
            pins.pin(&format!("a{i}"), pin("a"));
        }
        pins.pin("b0", pin("b"));
        assert_eq!(
            (pins.live_on("a"), pins.live_on("b"), pins.live_total()),
            (5, 1, 6)
        );
        pins.pin("a0", pin("b")); // moved
        pins.pin("a1", pin("a")); // re-pinned in place
        pins.unpin("a2");
        assert_eq!((pins.live_on("a"), pins.live_on("b")), (3, 2));
        assert_eq!(pins.unpin_all_on("b"), 2);
        assert_eq!(pins.live_on("b"), 0);
        std::thread::sleep(Duration::from_millis(80));
        pins.cache.run_pending_tasks();
        assert_eq!(pins.live_total(), 0, "expired");
        // A policy change carries the counts with the pins.
        pins.pin("c", pin("c"));
        let changed = pins.with_policy(Duration::from_secs(60), 10);
        assert_eq!(changed.live_on("c"), 1);
    }

    #[test]
    fn a_held_pin_outlives_expiry_and_eviction_until_released() {
        let pins = SessionPins::new(Duration::from_millis(1), 1);
        pins.pin("s1", pin("a"));
        let hold = pins.hold("s1").expect("pinned");
        let second = pins.hold("s1").expect("pinned");
        std::thread::sleep(Duration::from_millis(5));
        pins.pin("s2", pin("b")); // the bound is 1: s1 may be evicted too
        assert_eq!(pins.get("s1"), Some(pin("a")), "held");
        drop(hold);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(pins.get("s1"), Some(pin("a")), "still held once");
        drop(second);
        std::thread::sleep(Duration::from_millis(5));
        pins.cache.run_pending_tasks();
        assert_eq!(pins.get("s1"), None, "released, then expired");
        // A hold of a dropped pin does not release a later one.
        pins.pin("s3", pin("a"));
        let old = pins.hold("s3").unwrap();
        pins.unpin("s3");
        pins.pin("s3", pin("b"));
        let new = pins.hold("s3").unwrap();
        drop(old);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(pins.get("s3"), Some(pin("b")));
        drop(new);
    }

    /// Upstream `a` of a pool whose connection token is `t`.
    fn upstream_a() -> Arc<Upstream> {
        std::env::set_var("SG_SESSIONS_TEST_TOKEN", "t");
        let yaml = "listeners: []\npools:\n  p:\n    token_env: SG_SESSIONS_TEST_TOKEN\n    upstreams:\n      - { name: a, addr: 127.0.0.1:9 }\n";
        let config =
            crate::config::Config::parse(yaml, std::path::Path::new("t.yaml")).expect("config");
        let pool = &config.pools["p"];
        let metrics = crate::metrics::Metrics::new(prometheus::Registry::new()).expect("metrics");
        Upstream::build(pool, &pool.upstreams[0], None, &metrics, None)
    }

    #[tokio::test]
    async fn retired_upstreams_are_shared_across_policy_changes_until_forgotten() {
        let pins = SessionPins::new(Duration::from_secs(60), 100);
        let changed = pins.with_policy(Duration::from_secs(10), 100);
        pins.retire(upstream_a());
        assert_eq!(
            changed.retired("a").map(|u| u.addr().to_owned()).as_deref(),
            Some("127.0.0.1:9")
        );
        assert_eq!(
            changed.retired_token("a").as_ref().map(Secret::expose),
            Some("t")
        );
        changed.forget_retired("a");
        assert_eq!(pins.retired_token("a"), None);
    }
}
