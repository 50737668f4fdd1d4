//! What the proxy saw of one live session, for `GET /admin/sessions/{id}`, the top lists and
//! the status page: requests, errors, requests in flight, a [`LatencyHistogram`] and the last
//! [`RECENT`] methods. Kept in the session's pin entry ([`super::SessionPins`]), so it lives
//! exactly as long as the pin (idle TTL, unpin, delete, the table's bound) and costs no table
//! of its own. Every session has one, not only those with a Prometheus series.
//!
//! Hot path: a finished request takes one uncontended mutex (per session, not global) and
//! writes fixed-size fields; nothing is allocated after the entry is made.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::histogram::LatencyHistogram;

/// Methods remembered per session.
pub const RECENT: usize = 10;

/// How a request ended, as the proxy counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Outcome {
    #[default]
    Ok,
    /// The node answered with a JSON-RPC error.
    Error,
    Timeout,
    /// The node could not be reached (or went away) before answering.
    Unavailable,
}

impl Outcome {
    /// From the `outcome` label the request metrics use.
    pub fn from_label(label: &str) -> Outcome {
        match label {
            "ok" => Outcome::Ok,
            "error" => Outcome::Error,
            "timeout" => Outcome::Timeout,
            _ => Outcome::Unavailable,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Timeout => "timeout",
            Outcome::Unavailable => "unavailable",
        }
    }
}

/// One remembered request. `method` is the bounded metric label (a known method or `other`),
/// so remembering it allocates nothing.
#[derive(Debug, Clone, Copy, Default)]
struct Recent {
    method: &'static str,
    latency_us: u32,
    outcome: Outcome,
    /// Unix time it finished, milliseconds.
    at_ms: u64,
}

#[derive(Debug, Default)]
struct Figures {
    requests: u64,
    errors: u64,
    last_activity_ms: u64,
    latency: LatencyHistogram,
    /// A ring: `next` is where the next request goes.
    recent: [Recent; RECENT],
    next: usize,
}

/// The figures of one session, shared by its pin entry and requests in flight.
#[derive(Debug)]
pub struct SessionStats {
    pinned_since_ms: u64,
    in_flight: AtomicU32,
    figures: Mutex<Figures>,
}

impl Default for SessionStats {
    fn default() -> SessionStats {
        SessionStats::new()
    }
}

impl SessionStats {
    pub fn new() -> SessionStats {
        let now = unix_ms(SystemTime::now());
        SessionStats {
            pinned_since_ms: now,
            in_flight: AtomicU32::new(0),
            figures: Mutex::new(Figures {
                last_activity_ms: now,
                ..Figures::default()
            }),
        }
    }

    /// Count a request sent for this session until the returned guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Record a finished request.
    pub fn record(&self, method: &'static str, elapsed: Duration, outcome: Outcome) {
        let latency_us = u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX);
        let at_ms = unix_ms(SystemTime::now());
        let mut f = self.lock();
        f.requests += 1;
        if outcome != Outcome::Ok {
            f.errors += 1;
        }
        f.last_activity_ms = at_ms;
        f.latency.record(latency_us);
        let slot = f.next;
        f.recent[slot] = Recent {
            method,
            latency_us,
            outcome,
            at_ms,
        };
        f.next = (slot + 1) % RECENT;
    }

    /// The figures a top list sorts by, without the strings of [`SessionStats::view`].
    pub fn summary(&self) -> Summary {
        let f = self.lock();
        Summary {
            requests: f.requests,
            errors: f.errors,
            p99_us: f.latency.quantile_us(0.99).unwrap_or(0.0),
            last_activity_ms: f.last_activity_ms,
        }
    }

    /// A copy of the figures now, for reports.
    pub fn view(&self) -> StatsView {
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        let f = self.lock();
        // Microseconds to milliseconds, to the microsecond.
        let ms = |us: f64| us.round() / 1000.0;
        let quantile = |q| f.latency.quantile_us(q).map(ms);
        // Newest first: walk the ring backwards from the last slot written.
        let recent = (1..=RECENT)
            .map(|back| f.recent[(f.next + RECENT - back) % RECENT])
            .filter(|r| !r.method.is_empty())
            .map(|r| RecentView {
                method: r.method,
                latency_ms: ms(f64::from(r.latency_us)),
                outcome: r.outcome.as_str(),
                at: rfc3339(r.at_ms),
            })
            .collect();
        StatsView {
            pinned_since: rfc3339(self.pinned_since_ms),
            last_activity: rfc3339(f.last_activity_ms),
            last_activity_ms: f.last_activity_ms,
            requests: f.requests,
            errors: f.errors,
            in_flight,
            latency_ms: LatencyView {
                p50: quantile(0.5),
                p90: quantile(0.9),
                p99: quantile(0.99),
                max: (f.latency.count() > 0).then(|| ms(f64::from(f.latency.max_us()))),
            },
            recent,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Figures> {
        // Plain counters: a panic mid-update leaves nothing worth refusing to read.
        self.figures.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A request in flight for a session (see [`SessionStats::start`]): recorded through
/// [`InFlight::stats`] when it finishes, uncounted when dropped, however it ends.
#[derive(Debug)]
pub struct InFlight(Arc<SessionStats>);

impl InFlight {
    pub fn stats(&self) -> &SessionStats {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What top lists sort sessions by.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub requests: u64,
    pub errors: u64,
    /// 0 before the first request.
    pub p99_us: f64,
    pub last_activity_ms: u64,
}

/// [`SessionStats`] as reported.
#[derive(Debug, Clone, Serialize)]
pub struct StatsView {
    pub pinned_since: String,
    pub last_activity: String,
    /// Unix milliseconds of the last activity, for sorting by recency.
    #[serde(skip)]
    pub last_activity_ms: u64,
    pub requests: u64,
    pub errors: u64,
    pub in_flight: u32,
    pub latency_ms: LatencyView,
    /// The last [`RECENT`] requests, newest first.
    pub recent: Vec<RecentView>,
}

/// Latency quantiles in milliseconds (`null` before the first request).
#[derive(Debug, Clone, Serialize)]
pub struct LatencyView {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecentView {
    pub method: &'static str,
    pub latency_ms: f64,
    pub outcome: &'static str,
    pub at: String,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_errors_in_flight_and_keeps_the_last_ten_newest_first() {
        let stats = Arc::new(SessionStats::new());
        let a = stats.start();
        let b = stats.start();
        assert_eq!(stats.view().in_flight, 2);
        drop(a);
        for i in 0..12u64 {
            let outcome = if i == 11 {
                Outcome::Timeout
            } else {
                Outcome::Ok
            };
            let method = if i % 2 == 0 {
                "session.send"
            } else {
                "session.getMessages"
            };
            stats.record(method, Duration::from_millis(i + 1), outcome);
        }
        let view = stats.view();
        assert_eq!(view.in_flight, 1);
        drop(b);
        assert_eq!(stats.view().in_flight, 0);
        assert_eq!((view.requests, view.errors), (12, 1));
        assert_eq!(view.recent.len(), RECENT);
        assert_eq!(view.recent[0].outcome, "timeout", "newest first");
        assert_eq!(view.recent[0].latency_ms, 12.0);
        assert_eq!(view.recent[0].method, "session.getMessages");
        assert_eq!(
            view.recent[RECENT - 1].latency_ms,
            3.0,
            "the two oldest fell out"
        );
        assert_eq!(view.latency_ms.max, Some(12.0));
    }

    #[test]
    fn a_fresh_session_reports_no_latency() {
        let view = SessionStats::new().view();
        assert_eq!(view.requests, 0);
        assert!(view.recent.is_empty());
        assert_eq!(view.latency_ms.p50, None);
        assert_eq!(view.latency_ms.max, None);
    }
}
