//! Bounded per-session latency series. Session ids are unbounded, Prometheus series must not be:
//! at most `max_session_series` sessions have their own series at a time. A new session takes a
//! free place, or the place of the least recently active session if that one has been idle for
//! `session_series_idle` (its series is dropped); otherwise it is counted under
//! `session="_other"`. Busy sessions are never evicted by a burst of new ones.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;
use prometheus::HistogramVec;

/// The label for sessions without a series of their own.
pub const OTHER: &str = "_other";

#[derive(Clone)]
pub struct SessionSeries {
    histogram: HistogramVec,
    state: Arc<Mutex<State>>,
}

struct State {
    /// Session id → (pool, last activity), least recently active first out.
    live: LruCache<String, (Arc<str>, Instant)>,
    max: usize,
    idle: Duration,
}

impl SessionSeries {
    pub fn new(histogram: HistogramVec) -> SessionSeries {
        SessionSeries {
            histogram,
            state: Arc::new(Mutex::new(State {
                live: LruCache::unbounded(),
                max: 1000,
                idle: Duration::from_secs(300),
            })),
        }
    }

    /// Apply the configured bounds (from the current snapshot); shrinking evicts at once.
    pub fn set_limits(&self, max: usize, idle: Duration) {
        let mut state = self.lock();
        state.max = max.max(1);
        state.idle = idle;
        while state.live.len() > state.max {
            if let Some((session, (pool, _))) = state.live.pop_lru() {
                let _ = self.histogram.remove_label_values(&[&pool, &session]);
            }
        }
    }

    /// Export `pool`'s overflow series (`session="_other"`) at 0, so the family is in the first
    /// scrape of a JSON-RPC pool and `topk` over it has data before any session does.
    pub fn precreate(&self, pool: &str) {
        self.histogram.with_label_values(&[pool, OTHER]);
    }

    /// Record one request's duration for `session` of `pool`.
    pub fn observe(&self, pool: &Arc<str>, session: &str, seconds: f64) {
        self.observe_at(pool, session, seconds, Instant::now());
    }

    fn observe_at(&self, pool: &Arc<str>, session: &str, seconds: f64, now: Instant) {
        let label = {
            let mut state = self.lock();
            if let Some(entry) = state.live.get_mut(session) {
                entry.1 = now;
                Some(())
            } else if state.live.len() < state.max {
                state.live.put(session.to_owned(), (pool.clone(), now));
                Some(())
            } else {
                let idle = state.idle;
                let evictable = state
                    .live
                    .peek_lru()
                    .is_some_and(|(_, (_, last))| now.duration_since(*last) >= idle);
                if evictable {
                    if let Some((old, (old_pool, _))) = state.live.pop_lru() {
                        let _ = self.histogram.remove_label_values(&[&old_pool, &old]);
                    }
                    state.live.put(session.to_owned(), (pool.clone(), now));
                    Some(())
                } else {
                    None
                }
            }
        };
        let session = if label.is_some() { session } else { OTHER };
        self.histogram
            .with_label_values(&[pool, session])
            .observe(seconds);
    }

    /// The bounds in force: (`max_session_series`, `session_series_idle`).
    pub fn limits(&self) -> (usize, Duration) {
        let state = self.lock();
        (state.max, state.idle)
    }

    /// Sessions that have a series of their own now.
    pub fn live(&self) -> usize {
        self.lock().live.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::HistogramOpts;

    fn series(max: usize, idle: Duration) -> (SessionSeries, HistogramVec) {
        let h = HistogramVec::new(HistogramOpts::new("t", "t"), &["pool", "session"]).unwrap();
        let s = SessionSeries::new(h.clone());
        s.set_limits(max, idle);
        (s, h)
    }

    fn count(h: &HistogramVec, pool: &str, session: &str) -> u64 {
        h.get_metric_with_label_values(&[pool, session])
            .unwrap()
            .get_sample_count()
    }

    #[test]
    fn busy_sessions_keep_their_series_and_overflow_goes_to_other() {
        let (s, h) = series(2, Duration::from_secs(60));
        let pool: Arc<str> = Arc::from("fleet");
        let t0 = Instant::now();
        s.observe_at(&pool, "a", 0.1, t0);
        s.observe_at(&pool, "b", 0.1, t0);
        s.observe_at(&pool, "c", 0.1, t0 + Duration::from_secs(1));
        assert_eq!(
            count(&h, "fleet", OTHER),
            1,
            "no idle series to evict: c goes to _other"
        );
        assert_eq!(s.live(), 2);
        // Later "a" has been idle long enough to give its place to "d".
        s.observe_at(&pool, "b", 0.1, t0 + Duration::from_secs(61));
        s.observe_at(&pool, "d", 0.1, t0 + Duration::from_secs(62));
        assert_eq!(count(&h, "fleet", "d"), 1);
        assert_eq!(count(&h, "fleet", "b"), 2);
        let families = {
            let r = prometheus::Registry::new();
            r.register(Box::new(h.clone())).unwrap();
            r.gather()
        };
        let sessions: Vec<String> = families[0]
            .get_metric()
            .iter()
            .map(|m| {
                m.get_label()
                    .iter()
                    .find(|l| l.get_name() == "session")
                    .unwrap()
                    .get_value()
                    .to_owned()
            })
            .collect();
        assert!(
            !sessions.contains(&"a".to_owned()),
            "evicted series is gone: {sessions:?}"
        );
        assert!(
            sessions.len() <= 3,
            "at most max + _other series: {sessions:?}"
        );
    }

    #[test]
    fn shrinking_the_limit_evicts_at_once() {
        let (s, _) = series(10, Duration::from_secs(60));
        let pool: Arc<str> = Arc::from("p");
        for i in 0..10 {
            s.observe(&pool, &format!("s{i}"), 0.01);
        }
        s.set_limits(3, Duration::from_secs(60));
        assert_eq!(s.live(), 3);
    }
}
