//! Upstream discovery: pools with `discover:` get their upstreams from DNS (the SRV records of
//! a Kubernetes headless Service, or plain A/AAAA records), looked up every `every` by one task
//! per pool. A changed answer is applied like a reload of that pool
//! ([`crate::reload::discovered`]); a failed or empty lookup keeps the last good set, logged
//! once per failure streak and counted. [`DiscoverySupervisor`] keeps the tasks in step with
//! the snapshot, as the health and cleanup supervisors do.

pub mod dns;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, Weak};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::DiscoverConfig;
use crate::proxy::Context;
use crate::reload::discovered::Applied;
use crate::schedule;
use crate::server::Server;
use crate::snapshot::Snapshot;

use self::dns::{Lookup, LookupError};

/// A running discovery task and what it was started with (a change restarts it).
struct Running {
    config: DiscoverConfig,
    stop: CancellationToken,
}

/// Keeps one discovery task per pool with `discover:` in step with the snapshot. Tasks are
/// spawned on the server's task tracker and stop with its shutdown token; they reach the
/// server through a weak handle (the server owns this supervisor).
pub struct DiscoverySupervisor {
    server: Weak<Server>,
    running: Mutex<HashMap<String, Running>>,
}

impl DiscoverySupervisor {
    pub fn new(server: Weak<Server>) -> DiscoverySupervisor {
        DiscoverySupervisor {
            server,
            running: Mutex::new(HashMap::new()),
        }
    }

    /// Start tasks for pools that gained `discover:`, stop those of pools that lost it (or
    /// were removed), restart those whose `discover:` changed (a new target is looked up at
    /// once).
    pub fn sync(&self, ctx: &Context, snapshot: &Snapshot) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let wanted: HashMap<&str, &DiscoverConfig> = snapshot
            .pools()
            .filter_map(|p| Some((p.name(), p.config.discover.as_ref()?)))
            .collect();
        running.retain(|pool, r| {
            let keep = wanted.get(pool.as_str()) == Some(&&r.config);
            if !keep {
                r.stop.cancel();
                if !wanted.contains_key(pool.as_str()) {
                    forget_series(ctx, pool);
                }
            }
            keep
        });
        for (pool, config) in wanted {
            if running.contains_key(pool) {
                continue;
            }
            let stop = ctx.shutdown.token.child_token();
            ctx.shutdown.tracker.spawn(discover(
                self.server.clone(),
                ctx.clone(),
                pool.to_owned(),
                config.clone(),
                stop.clone(),
            ));
            let config = config.clone();
            running.insert(pool.to_owned(), Running { config, stop });
        }
    }
}

/// The `result` label values of `sessiongate_discovery_lookups_total`.
pub const RESULTS: [&str; 4] = ["changed", "unchanged", "empty", "error"];

/// A pool no longer discovered exports no discovery series.
fn forget_series(ctx: &Context, pool: &str) {
    let m = &ctx.metrics;
    for result in RESULTS {
        let _ = m
            .discovery_lookups_total
            .remove_label_values(&[pool, result]);
    }
    let _ = m.discovery_upstreams.remove_label_values(&[pool]);
}

/// Look `pool`'s upstreams up now and every `every` (±10% jitter) until `stop`; after a
/// failure, again after 1s doubling up to `every` (a pool that starts empty fills soon).
async fn discover(
    server: Weak<Server>,
    ctx: Context,
    pool: String,
    config: DiscoverConfig,
    stop: CancellationToken,
) {
    // Its series exist already: `Metrics::precreate` made them when the config went live.
    let mut lookup: Option<Lookup> = None;
    let mut failures: u32 = 0;
    loop {
        let previous: BTreeMap<String, String> = ctx
            .shared
            .load()
            .pool(&pool)
            .map(|p| {
                p.upstreams
                    .iter()
                    .map(|u| (u.name().to_owned(), u.addr().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let answer = tokio::select! {
            _ = stop.cancelled() => return,
            answer = once(&mut lookup, &config, &previous) => answer,
        };
        let result = match answer {
            Ok(found) => {
                let Some(server) = server.upgrade() else {
                    return;
                };
                let count = found.len();
                let applied = server.apply_discovered(&pool, &config, found).await;
                drop(server);
                if failures > 0 {
                    info!(pool = %pool, failures, upstreams = count, "discovery: lookups answer again");
                }
                failures = 0;
                match applied {
                    // A reload changed or removed the pool; its supervisor stops this task.
                    Applied::Stale => return,
                    Applied::Unchanged => "unchanged",
                    Applied::Changed(_) => "changed",
                }
            }
            Err(e) => {
                if failures == 0 {
                    warn!(
                        pool = %pool,
                        error = %e,
                        kept = previous.len(),
                        "discovery: lookup failed; keeping the last good set until it answers"
                    );
                }
                failures += 1;
                match e {
                    LookupError::Empty(_) => "empty",
                    LookupError::Failed(_) => "error",
                }
            }
        };
        ctx.metrics
            .discovery_lookups_total
            .with_label_values(&[&pool, result])
            .inc();
        if let Some(p) = ctx.shared.load().pool(&pool) {
            ctx.metrics
                .discovery_upstreams
                .with_label_values(&[&pool])
                .set(p.upstreams.len() as i64);
        }
        let wait = if failures == 0 {
            schedule::jittered(config.every)
        } else {
            schedule::backoff(failures, config.every)
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One lookup, building the resolver first if needed (a system resolver needs a readable
/// `/etc/resolv.conf`; it is tried again at the next lookup).
async fn once(
    lookup: &mut Option<Lookup>,
    config: &DiscoverConfig,
    previous: &BTreeMap<String, String>,
) -> Result<Vec<(String, String)>, LookupError> {
    let lookup = match lookup {
        Some(l) => l,
        None => lookup.insert(Lookup::new(config)?),
    };
    lookup.run(previous).await
}
