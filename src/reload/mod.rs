//! Reload: re-read the config file, validate it fully, build a new snapshot off the data path,
//! bind any new listeners, and only then swap the snapshot in. Any failure leaves the old
//! snapshot serving. The diff (upstreams added and removed, keyspace moved) is logged; [`plan`]
//! computes it, and the dry run that predicts a reload without applying it; [`history`] keeps
//! the last few for the status page.

pub mod discovered;
pub mod history;
pub mod plan;

use std::sync::Arc;

use serde::Serialize;
use tracing::{info, warn};

use crate::config::Config;
use crate::error::ReloadError;
use crate::listener;
use crate::server::Server;
use crate::snapshot::Snapshot;

pub use plan::{diff, DryRun, PoolDiff};

/// What a reload changed, per pool and listener.
#[derive(Debug, Serialize)]
pub struct ReloadReport {
    pub version: u64,
    pub pools: Vec<PoolDiff>,
    pub listeners_added: Vec<String>,
    pub listeners_removed: Vec<String>,
}

impl Server {
    /// Reload the config file this server was started from. Serialised: one reload at a time.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let result = self.try_reload();
        self.reloads.push(&result);
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

    /// Validate a configuration and predict what applying it would do, without applying it.
    /// `text` is the new file's content; `None` re-reads the file the server runs from.
    pub fn dry_run(&self, text: Option<&str>) -> DryRun {
        let current = self.ctx.shared.load_full();
        let loaded = match text {
            Some(text) => Config::parse(text, &current.source),
            None => Config::load(&current.source),
        };
        let mut config = match loaded {
            Ok(c) => c,
            Err(e) => return DryRun::invalid(e.to_string()),
        };
        // TLS files are part of validity: check them the way a reload would load them.
        for (i, l) in config.listeners.iter().enumerate() {
            if let Some(files) = &l.tls {
                if let Err((field, message)) = crate::listener::tls::acceptor(files, &[]) {
                    return DryRun::invalid(format!("listeners[{i}].tls.{field}: {message}"));
                }
            }
        }
        discovered::carry(&current, &mut config);
        plan::dry_run(&current, &config)
    }

    /// Upstreams a reload removed keep serving their pinned sessions (pins hold the address)
    /// until the sessions idle out or the pool's `drain_timeout` passes; then their pins go.
    fn retire_removed(&self, previous: &Snapshot, diffs: &[PoolDiff]) {
        for diff in diffs {
            let Some(old_pool) = previous.pool(&diff.pool) else {
                continue;
            };
            for name in &diff.removed {
                // A new link to it (another client resuming a pinned session) needs its token,
                // an HTTP request its connection pool.
                if let Some(upstream) = old_pool.upstream(name) {
                    old_pool.pins.retire(upstream.clone());
                }
                let pinned = old_pool.pins.count_on(name);
                let timeout = old_pool.config.drain_timeout;
                info!(pool = %diff.pool, upstream = %name, pinned, "upstream removed: draining its pinned sessions for up to {timeout:?}");
                let (shared, pool_name, name) =
                    (self.ctx.shared.clone(), diff.pool.clone(), name.clone());
                let token = self.ctx.shutdown.token.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = tokio::time::sleep(timeout) => {}
                    }
                    let snapshot = shared.load();
                    let Some(pool) = snapshot.pool(&pool_name) else {
                        return;
                    };
                    if pool.upstream(&name).is_none() {
                        pool.pins.forget_retired(&name);
                        if pool.learned_pins {
                            // No other upstream holds these sessions: their pins stay, so a
                            // request for one is answered per on_owner_down (and unpins).
                            info!(pool = %pool_name, upstream = %name, "drain_timeout passed: removed upstream no longer served");
                            return;
                        }
                        let dropped = pool.pins.unpin_all_on(&name);
                        if let Some(shared) = pool.pins.shared() {
                            shared.drop_node(&name).await;
                        }
                        info!(pool = %pool_name, upstream = %name, dropped, "drain_timeout passed: pins of removed upstream dropped");
                    }
                });
            }
        }
    }

    /// Serve `next`: apply what it shares with the serving snapshot first (so that no request
    /// routes by the new rings with the old drains), swap it in, then bring the background
    /// tasks (probes, cleanup, discovery) in line with it.
    pub(crate) fn install(&self, next: &Arc<Snapshot>) {
        next.activate(&self.ctx.metrics);
        self.ctx.shared.store(next.clone());
        self.health.sync(next);
        self.cleanup.sync(&self.ctx, next);
        self.discovery.sync(&self.ctx, next);
    }

    fn try_reload(&self) -> Result<ReloadReport, ReloadError> {
        let current = self.ctx.shared.load_full();
        let mut config = Config::load(&current.source)?;
        // The file lists no upstreams for a discovered pool: keep what discovery found.
        discovered::carry(&current, &mut config);
        if config.admin_listen != current.config.admin_listen {
            warn!("admin.listen changed; it takes effect at the next restart");
        }
        if config.worker_threads != current.config.worker_threads {
            warn!("runtime.worker_threads changed; it takes effect at the next restart");
        }
        // The store holds live locks and counters: swapping it mid-flight would lose them.
        if config.redis != current.config.redis {
            warn!("redis changed; it takes effect at the next restart");
        }
        if config.access_log != current.config.access_log {
            warn!("access_log changed; it takes effect at the next restart");
        }
        let next = Snapshot::build(
            config,
            &current.source,
            Some(&current),
            &self.ctx.metrics,
            &self.ctx.store,
        )?;
        let pools = diff(&current, &next);

        // Bind what is new before swapping, so a port in use refuses the whole reload.
        let running: Vec<(String, std::net::SocketAddr)> = self
            .lock_listeners()
            .iter()
            .map(|(n, r)| (n.clone(), r.configured))
            .collect();
        let to_bind = match bind_new(&next, &running) {
            Ok(bound) => bound,
            Err(e) => {
                next.discard(&current, &self.ctx.metrics);
                return Err(e);
            }
        };
        let removed: Vec<String> = running
            .iter()
            .filter(|(n, _)| !next.config.listeners.iter().any(|l| l.name == *n))
            .map(|(n, _)| n.clone())
            .collect();

        let version = next.version;
        let next = Arc::new(next);
        // Nothing can refuse the reload any more.
        self.install(&next);

        let listeners_added = to_bind.iter().map(|(n, _, _)| n.clone()).collect();
        for (name, configured, tcp) in to_bind {
            self.run_listener(name, configured, tcp);
        }
        self.retire_removed(&current, &pools);
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

/// Bind every listener of `next` that is new or moved (not in `running` at the same address).
fn bind_new(
    next: &Snapshot,
    running: &[(String, std::net::SocketAddr)],
) -> Result<Vec<(String, std::net::SocketAddr, tokio::net::TcpListener)>, ReloadError> {
    let mut bound = Vec::new();
    for l in &next.config.listeners {
        let unchanged = running.iter().any(|(n, a)| *n == l.name && *a == l.listen);
        if !unchanged {
            // A listener moving address must release its old port first if it reuses it.
            let tcp = listener::bind(l.listen).map_err(|source| ReloadError::Bind {
                listener: l.name.clone(),
                addr: l.listen,
                source,
            })?;
            bound.push((l.name.clone(), l.listen, tcp));
        }
    }
    Ok(bound)
}
