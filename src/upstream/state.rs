//! The live state of one upstream, shared by its prober, the data path and the admin API, and
//! carried across reloads by upstream name. Reads on the data path are single atomic loads;
//! the counting that decides a flip (rise/fall, passive ejection) happens under a small lock
//! only when a probe or a failure is recorded.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::time::Instant;

/// A change of an upstream's availability, with the reason for the log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flip {
    pub up: bool,
    pub reason: String,
}

/// The most recent probe, for `GET /admin/upstreams`.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeRecord {
    pub ok: bool,
    pub latency_ms: f64,
    pub error: Option<String>,
    #[serde(with = "unix_millis")]
    pub at: SystemTime,
}

mod unix_millis {
    use std::time::SystemTime;

    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_rfc3339_millis(*t).to_string())
    }
}

#[derive(Debug, Default)]
struct Counts {
    successes: u32,
    failures: u32,
    ejected_until: Option<Instant>,
    last_probe: Option<ProbeRecord>,
}

#[derive(Debug)]
pub struct UpstreamState {
    healthy: AtomicBool,
    ejected: AtomicBool,
    drained_by_admin: AtomicBool,
    drained_by_config: AtomicBool,
    passive_failures: AtomicU32,
    counts: Mutex<Counts>,
}

impl Default for UpstreamState {
    fn default() -> Self {
        UpstreamState::new(true)
    }
}

impl UpstreamState {
    pub fn new(initial_healthy: bool) -> UpstreamState {
        UpstreamState {
            healthy: AtomicBool::new(initial_healthy),
            ejected: AtomicBool::new(false),
            drained_by_admin: AtomicBool::new(false),
            drained_by_config: AtomicBool::new(false),
            passive_failures: AtomicU32::new(0),
            counts: Mutex::new(Counts::default()),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Passing probes and not ejected: may serve, including its pinned sessions.
    pub fn is_available(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && !self.ejected.load(Ordering::Relaxed)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.drained_by_admin.load(Ordering::Relaxed)
            || self.drained_by_config.load(Ordering::Relaxed)
    }

    /// May new keys or sessions be placed here?
    pub fn accepts_new_work(&self) -> bool {
        self.is_available() && !self.is_draining()
    }

    pub fn is_admin_drained(&self) -> bool {
        self.drained_by_admin.load(Ordering::Relaxed)
    }

    pub fn set_admin_drain(&self, drain: bool) {
        self.drained_by_admin.store(drain, Ordering::Relaxed)
    }

    pub fn set_config_drain(&self, drain: bool) {
        self.drained_by_config.store(drain, Ordering::Relaxed)
    }

    pub fn last_probe(&self) -> Option<ProbeRecord> {
        self.counts().last_probe.clone()
    }

    /// Record an active probe. `rise` consecutive successes bring a down (or ejected, once its
    /// ejection time is over) upstream up; `fall` consecutive failures take it down.
    pub fn record_probe(
        &self,
        record: ProbeRecord,
        rise: u32,
        fall: u32,
        now: Instant,
    ) -> Option<Flip> {
        let ok = record.ok;
        let error = record.error.clone();
        let mut c = self.counts();
        c.last_probe = Some(record);
        if ok {
            c.failures = 0;
            let ejected = self.ejected.load(Ordering::Relaxed);
            if ejected && c.ejected_until.is_some_and(|until| now < until) {
                // Still serving its ejection: successes start counting when it ends.
                c.successes = 0;
                return None;
            }
            c.successes = c.successes.saturating_add(1);
            let down = !self.healthy.load(Ordering::Relaxed) || ejected;
            if down && c.successes >= rise {
                self.healthy.store(true, Ordering::Relaxed);
                self.ejected.store(false, Ordering::Relaxed);
                c.ejected_until = None;
                self.passive_failures.store(0, Ordering::Relaxed);
                return Some(Flip {
                    up: true,
                    reason: format!("{} consecutive successful probes", c.successes),
                });
            }
        } else {
            c.successes = 0;
            c.failures = c.failures.saturating_add(1);
            if self.healthy.load(Ordering::Relaxed) && c.failures >= fall {
                self.healthy.store(false, Ordering::Relaxed);
                let why = error.unwrap_or_else(|| "probe failed".into());
                return Some(Flip {
                    up: false,
                    reason: format!("{} consecutive failed probes, last: {why}", c.failures),
                });
            }
        }
        None
    }

    /// A live request to this upstream succeeded: the passive failure streak ends.
    pub fn record_passive_success(&self) {
        if self.passive_failures.load(Ordering::Relaxed) != 0 {
            self.passive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// A live request failed (connect error, reset, timeout). After `threshold` in a row the
    /// upstream is ejected for at least `eject_for`; probes bring it back afterwards.
    pub fn record_passive_failure(
        &self,
        threshold: u32,
        eject_for: Duration,
        what: &str,
        now: Instant,
    ) -> Option<Flip> {
        let streak = self.passive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if streak < threshold || self.ejected.swap(true, Ordering::Relaxed) {
            return None;
        }
        let mut c = self.counts();
        c.ejected_until = Some(now + eject_for);
        c.successes = 0;
        Some(Flip {
            up: false,
            reason: format!("ejected for {eject_for:?} after {streak} consecutive live-traffic failures, last: {what}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(ok: bool) -> ProbeRecord {
        ProbeRecord {
            ok,
            latency_ms: 1.0,
            error: (!ok).then(|| "connection refused".into()),
            at: SystemTime::now(),
        }
    }

    #[test]
    fn fall_then_rise_thresholds() {
        let s = UpstreamState::new(true);
        let now = Instant::now();
        assert_eq!(s.record_probe(probe(false), 2, 3, now), None);
        assert_eq!(s.record_probe(probe(false), 2, 3, now), None);
        assert!(s.is_available(), "two failures are below fall=3");
        let flip = s
            .record_probe(probe(false), 2, 3, now)
            .expect("third failure flips");
        assert!(!flip.up && flip.reason.contains("3 consecutive failed probes"));
        assert!(!s.accepts_new_work());
        assert_eq!(s.record_probe(probe(true), 2, 3, now), None);
        assert!(s.record_probe(probe(true), 2, 3, now).is_some_and(|f| f.up));
        assert!(s.accepts_new_work());
    }

    #[test]
    fn flapping_never_reaches_a_threshold() {
        let s = UpstreamState::new(true);
        let now = Instant::now();
        for _ in 0..20 {
            assert_eq!(s.record_probe(probe(false), 2, 2, now), None);
            assert_eq!(s.record_probe(probe(true), 2, 2, now), None);
        }
        assert!(s.is_available());
    }

    #[test]
    fn initial_unhealthy_needs_rise_successes() {
        let s = UpstreamState::new(false);
        assert!(!s.accepts_new_work());
        let now = Instant::now();
        assert_eq!(s.record_probe(probe(true), 2, 3, now), None);
        assert!(s.record_probe(probe(true), 2, 3, now).is_some());
    }

    #[test]
    fn passive_ejection_waits_out_its_time_then_needs_rise() {
        let s = UpstreamState::new(true);
        let t0 = Instant::now();
        let eject = Duration::from_secs(10);
        assert_eq!(s.record_passive_failure(3, eject, "reset", t0), None);
        s.record_passive_success();
        assert_eq!(s.record_passive_failure(3, eject, "reset", t0), None);
        assert_eq!(s.record_passive_failure(3, eject, "reset", t0), None);
        assert!(s
            .record_passive_failure(3, eject, "reset", t0)
            .is_some_and(|f| !f.up));
        assert!(!s.is_available() && s.is_ejected());
        assert_eq!(
            s.record_passive_failure(3, eject, "reset", t0),
            None,
            "one flip per ejection"
        );
        // Passing probes during the ejection do not count.
        assert_eq!(
            s.record_probe(probe(true), 2, 3, t0 + Duration::from_secs(5)),
            None
        );
        assert_eq!(
            s.record_probe(probe(true), 2, 3, t0 + Duration::from_secs(9)),
            None
        );
        assert!(!s.is_available());
        assert_eq!(
            s.record_probe(probe(true), 2, 3, t0 + Duration::from_secs(10)),
            None
        );
        assert!(s
            .record_probe(probe(true), 2, 3, t0 + Duration::from_secs(12))
            .is_some_and(|f| f.up));
        assert!(s.is_available());
    }

    #[test]
    fn drain_blocks_new_work_only() {
        let s = UpstreamState::new(true);
        s.set_admin_drain(true);
        assert!(s.is_available() && s.is_draining() && !s.accepts_new_work());
        s.set_admin_drain(false);
        s.set_config_drain(true);
        assert!(!s.accepts_new_work());
        s.set_config_drain(false);
        assert!(s.accepts_new_work());
    }
}
