//! Reload: re-read the config file, validate it fully, build a new snapshot off the data path,
//! bind any new listeners, and only then swap the snapshot in. Any failure leaves the old
//! snapshot serving. The diff (upstreams added and removed, keyspace moved) is logged.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde::Serialize;
use tracing::{info, warn};

use crate::config::Config;
use crate::error::ReloadError;
use crate::listener;
use crate::ring::Ring;
use crate::server::Server;
use crate::snapshot::Snapshot;

/// What a reload changed, per pool and listener.
#[derive(Debug, Serialize)]
pub struct ReloadReport {
    pub version: u64,
    pub pools: Vec<PoolDiff>,
    pub listeners_added: Vec<String>,
    pub listeners_removed: Vec<String>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct PoolDiff {
    pub pool: String,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Share of the keyspace (0..=1) whose owner changed.
    pub moved_share: f64,
}

/// Compare two snapshots pool by pool; pools only in `new` count as all-moved.
pub fn diff(old: &Snapshot, new: &Snapshot) -> Vec<PoolDiff> {
    let mut out = Vec::new();
    for pool in new.pools() {
        let new_names = pool.upstream_names();
        let Some(prev) = old.pool(pool.name()) else {
            out.push(PoolDiff {
                pool: pool.name().to_owned(),
                added: new_names.iter().map(|s| s.to_string()).collect(),
                removed: vec![],
                moved_share: 1.0,
            });
            continue;
        };
        let old_names = prev.upstream_names();
        let (a, b): (BTreeSet<&str>, BTreeSet<&str>) = (
            old_names.iter().copied().collect(),
            new_names.iter().copied().collect(),
        );
        out.push(PoolDiff {
            pool: pool.name().to_owned(),
            added: b.difference(&a).map(|s| s.to_string()).collect(),
            removed: a.difference(&b).map(|s| s.to_string()).collect(),
            moved_share: Ring::moved_share(&prev.ring, &old_names, &pool.ring, &new_names),
        });
    }
    out.sort_by(|x, y| x.pool.cmp(&y.pool));
    out
}

impl Server {
    /// Reload the config file this server was started from. Serialised: one reload at a time.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let result = self.try_reload();
        let outcome = if result.is_ok() { "success" } else { "failure" };
        self.ctx
            .metrics
            .config_reloads_total
            .with_label_values(&[outcome])
            .inc();
        match &result {
            Ok(report) => {
                self.ctx.metrics.config_version.set(report.version as i64);
                for p in &report.pools {
                    info!(
                        pool = %p.pool,
                        added = ?p.added,
                        removed = ?p.removed,
                        moved_share = format!("{:.2}%", p.moved_share * 100.0),
                        "reload: pool diff"
                    );
                }
                info!(
                    version = report.version,
                    listeners_added = ?report.listeners_added,
                    listeners_removed = ?report.listeners_removed,
                    "configuration reloaded"
                );
            }
            Err(e) => warn!(error = %e, "reload refused; the previous configuration keeps serving"),
        }
        result
    }

    fn try_reload(&self) -> Result<ReloadReport, ReloadError> {
        let current = self.ctx.shared.load_full();
        let config = Config::load(&current.source)?;
        if config.admin_listen != current.config.admin_listen {
            warn!("admin.listen changed; it takes effect at the next restart");
        }
        if config.worker_threads != current.config.worker_threads {
            warn!("runtime.worker_threads changed; it takes effect at the next restart");
        }
        let next = Snapshot::build(config, &current.source, Some(&current), &self.ctx.metrics)?;
        let pools = diff(&current, &next);

        // Bind what is new before swapping, so a port in use refuses the whole reload.
        let running: Vec<(String, std::net::SocketAddr)> = self
            .lock_listeners()
            .iter()
            .map(|(n, r)| (n.clone(), r.configured))
            .collect();
        let mut to_bind = Vec::new();
        for l in &next.config.listeners {
            let unchanged = running.iter().any(|(n, a)| *n == l.name && *a == l.listen);
            if !unchanged {
                // A listener moving address must release its old port first if it reuses it.
                let tcp = listener::bind(l.listen).map_err(|source| ReloadError::Bind {
                    listener: l.name.clone(),
                    addr: l.listen,
                    source,
                })?;
                to_bind.push((l.name.clone(), l.listen, tcp));
            }
        }
        let removed: Vec<String> = running
            .iter()
            .filter(|(n, _)| !next.config.listeners.iter().any(|l| l.name == *n))
            .map(|(n, _)| n.clone())
            .collect();

        let version = next.version;
        self.ctx.shared.store(Arc::new(next));

        let listeners_added = to_bind.iter().map(|(n, _, _)| n.clone()).collect();
        for (name, configured, tcp) in to_bind {
            self.run_listener(name, configured, tcp);
        }
        let mut map = self.lock_listeners();
        for name in &removed {
            if let Some(r) = map.remove(name) {
                // Stops accepting; connections already open finish on their own.
                r.stop.cancel();
            }
        }
        Ok(ReloadReport {
            version,
            pools,
            listeners_added,
            listeners_removed: removed,
        })
    }
}
