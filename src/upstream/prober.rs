//! Probers: one task per upstream, jittered, following its pool's `health:` block. The
//! [`HealthSupervisor`] keeps the set of probers in step with the snapshot: it starts probers for
//! new upstreams, stops those of removed ones, and restarts one whose address or probe settings
//! changed. Health state itself lives in [`UpstreamState`], carried across reloads by name.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::health::{self, HealthCheck};
use super::state::{Flip, ProbeRecord, UpstreamState};
use super::Upstream;
use crate::config::{HealthConfig, Secret};
use crate::metrics::Metrics;
use crate::schedule;
use crate::snapshot::Snapshot;

/// What a running prober was started with; a change restarts it.
struct Signature {
    addr: String,
    health: HealthConfig,
    token: Option<Secret>,
    state: Arc<UpstreamState>,
}

impl PartialEq for Signature {
    fn eq(&self, other: &Self) -> bool {
        self.addr == other.addr
            && self.health == other.health
            && self.token == other.token
            && Arc::ptr_eq(&self.state, &other.state)
    }
}

struct Running {
    signature: Signature,
    stop: CancellationToken,
}

pub struct HealthSupervisor {
    metrics: Metrics,
    shutdown: CancellationToken,
    running: Mutex<HashMap<(String, String), Running>>,
}

impl HealthSupervisor {
    pub fn new(metrics: Metrics, shutdown: CancellationToken) -> HealthSupervisor {
        HealthSupervisor {
            metrics,
            shutdown,
            running: Mutex::new(HashMap::new()),
        }
    }

    /// Make the running probers match `snapshot`.
    pub fn sync(&self, snapshot: &Snapshot) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let mut wanted = HashMap::new();
        for pool in snapshot.pools() {
            for up in &pool.upstreams {
                let key = (pool.name().to_owned(), up.name().to_owned());
                let labels = [pool.name(), up.name()];
                self.metrics
                    .upstream_healthy
                    .with_label_values(&labels)
                    .set(up.state.is_available() as i64);
                self.metrics
                    .upstream_draining
                    .with_label_values(&labels)
                    .set(up.state.is_draining() as i64);
                let signature = Signature {
                    addr: up.addr().to_owned(),
                    health: pool.config.health.clone(),
                    token: up.config.token.clone(),
                    state: up.state.clone(),
                };
                wanted.insert(key, (signature, up.clone()));
            }
        }
        running.retain(|key, r| {
            let keep = wanted.get(key).is_some_and(|(sig, _)| *sig == r.signature);
            if !keep {
                r.stop.cancel();
            }
            keep
        });
        for (key, (signature, up)) in wanted {
            if running.contains_key(&key) {
                continue;
            }
            let stop = self.shutdown.child_token();
            let check =
                health::for_config(&signature.addr, &signature.health, signature.token.clone());
            tokio::spawn(run_prober(
                up,
                check,
                signature.health.clone(),
                self.metrics.clone(),
                stop.clone(),
            ));
            running.insert(key, Running { signature, stop });
        }
    }
}

/// Probe `up` every `interval` (±10% jitter, first probe at a random point in the first
/// interval so a fleet's probes don't arrive together) until `stop`.
pub async fn run_prober(
    up: Arc<Upstream>,
    check: Box<dyn HealthCheck>,
    health: HealthConfig,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let labels = [up.pool.as_str(), up.name()];
    let duration = metrics.upstream_probe_duration.with_label_values(&labels);
    let mut next = Instant::now() + schedule::first_delay(health.interval);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        let started = Instant::now();
        let result = check.probe(health.timeout).await;
        let elapsed = started.elapsed();
        duration.observe(elapsed.as_secs_f64());
        let record = ProbeRecord {
            ok: result.is_ok(),
            latency_ms: elapsed.as_secs_f64() * 1000.0,
            error: result.err(),
            at: SystemTime::now(),
        };
        if let Some(flip) = up
            .state
            .record_probe(record, health.rise, health.fall, Instant::now())
        {
            report_flip(&metrics, &up.pool, up.name(), &flip);
        }
        next = started + schedule::jittered(health.interval);
    }
}

/// Log a flip (one line with its reason) and count it.
pub fn report_flip(metrics: &Metrics, pool: &str, upstream: &str, flip: &Flip) {
    let labels = [pool, upstream];
    let to = if flip.up { "up" } else { "down" };
    metrics
        .upstream_healthy
        .with_label_values(&labels)
        .set(flip.up as i64);
    metrics
        .upstream_health_transitions_total
        .with_label_values(&[pool, upstream, to])
        .inc();
    if flip.up {
        info!(pool, upstream, reason = %flip.reason, "upstream is up");
    } else {
        warn!(pool, upstream, reason = %flip.reason, "upstream is down");
    }
}

/// Report a live-traffic failure to `up`; ejects it after its pool's `passive` threshold.
pub fn passive_failure(
    metrics: &Metrics,
    up: &Upstream,
    passive: Option<&crate::config::PassiveConfig>,
    what: &str,
) {
    let Some(p) = passive else { return };
    if let Some(flip) =
        up.state
            .record_passive_failure(p.consecutive_failures, p.eject_for, what, Instant::now())
    {
        metrics
            .upstream_ejections_total
            .with_label_values(&[&up.pool, up.name()])
            .inc();
        report_flip(metrics, &up.pool, up.name(), &flip);
    }
}
