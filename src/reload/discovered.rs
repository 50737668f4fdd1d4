//! Discovered upstreams meet the reload machinery. A discovery answer that changes a pool is
//! applied like a reload of that one pool: under the reload lock, a new snapshot built off the
//! data path (same files, the new upstream set), the same diff logged, removed upstreams
//! drained by the same code, health and cleanup supervisors synced. A reload, in turn, carries
//! the discovered set over: the file lists no upstreams for a discovered pool.

use std::sync::Arc;

use tracing::info;

use crate::config::{Config, DiscoverConfig};
use crate::server::Server;
use crate::snapshot::Snapshot;

use super::{diff, PoolDiff};

/// What applying a discovery answer did.
#[derive(Debug)]
pub enum Applied {
    /// The pool already has exactly these upstreams (names and addresses).
    Unchanged,
    /// A new snapshot serves; the pool's diff.
    Changed(PoolDiff),
    /// The pool is gone or now discovers otherwise (a reload came first): answer dropped.
    Stale,
}

/// A pool with `discover:` in `config` starts from the upstreams its namesake serves now
/// (discovered, or the static list it had), with the new file's per-upstream settings; a new
/// pool starts empty until its first answer. A changed target is looked up at once by the
/// restarted discovery task; until it answers, the pool keeps what it had.
pub fn carry(current: &Snapshot, config: &mut Config) {
    for pool in config.pools.values_mut() {
        let (Some(discover), Some(running)) = (&pool.discover, current.pool(&pool.name)) else {
            continue;
        };
        pool.upstreams = running
            .upstreams
            .iter()
            .map(|u| discover.upstream(u.name(), u.addr()))
            .collect();
    }
}

impl Server {
    /// Make `found` (`(name, addr)` pairs, as `asked` discovered them) the upstreams of pool
    /// `pool`. Serialised with reloads.
    pub(crate) async fn apply_discovered(
        &self,
        pool: &str,
        asked: &DiscoverConfig,
        mut found: Vec<(String, String)>,
    ) -> Applied {
        let _one_at_a_time = self.reload_lock.lock().await;
        let current = self.ctx.shared.load_full();
        let Some(serving) = current.pool(pool) else {
            return Applied::Stale;
        };
        if serving.config.discover.as_ref() != Some(asked) {
            return Applied::Stale;
        }
        found.sort();
        found.dedup_by(|a, b| a.0 == b.0);
        let mut now: Vec<(&str, &str)> = serving
            .upstreams
            .iter()
            .map(|u| (u.name(), u.addr()))
            .collect();
        now.sort();
        if now
            .iter()
            .copied()
            .eq(found.iter().map(|(n, a)| (n.as_str(), a.as_str())))
        {
            return Applied::Unchanged;
        }
        // Same name, new address (a pod rescheduled): nothing moves on the ring, but say so.
        let readdressed: Vec<&str> = found
            .iter()
            .filter(|(n, a)| serving.upstream(n).is_some_and(|u| u.addr() != a))
            .map(|(n, _)| n.as_str())
            .collect();
        let upstreams = found.iter().map(|(n, a)| asked.upstream(n, a)).collect();
        let next =
            Arc::new(current.with_upstreams(pool, upstreams, &self.ctx.metrics, &self.ctx.store));
        let diffs = diff(&current, &next);
        self.install(&next);
        self.ctx.metrics.config_version.set(next.version as i64);
        self.retire_removed(&current, &diffs);
        let Some(d) = diffs.into_iter().find(|d| d.pool == pool) else {
            return Applied::Stale;
        };
        info!(
            pool = %d.pool,
            added = ?d.added,
            removed = ?d.removed,
            readdressed = ?readdressed,
            moved_share = format!("{:.2}%", d.moved_share * 100.0),
            version = next.version,
            "discovery: pool diff"
        );
        self.reloads.push_discovered(next.version, &d);
        Applied::Changed(d)
    }
}
