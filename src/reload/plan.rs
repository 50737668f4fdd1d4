//! What a new configuration would change, computed without applying it: the diff logged by every
//! reload, and the dry run (`POST /admin/reload?dry_run=true`, `sessiongate check --against`)
//! operators run before a scale change. Movement is computed on *effective* rings (only the
//! upstreams that take new work), which is exactly what clockwise selection does.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::config::{Config, PoolConfig};
use crate::ring::Ring;
use crate::snapshot::{Pool, Snapshot};

/// What a reload changed in one pool.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PoolDiff {
    pub pool: String,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Share of the keyspace (0..=1) whose ring owner changed.
    pub moved_share: f64,
    /// What the pool's upstreams are looked up from (`discover:`), e.g. `dns_srv NAME`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovered_from: Option<String>,
}

/// Compare two snapshots pool by pool; pools only in `new` count as all-moved.
pub fn diff(old: &Snapshot, new: &Snapshot) -> Vec<PoolDiff> {
    let mut out: Vec<PoolDiff> = new
        .pools()
        .map(|pool| {
            let new_names = pool.upstream_names();
            let discovered_from = pool.config.discover.as_ref().map(|d| d.target.to_string());
            let Some(prev) = old.pool(pool.name()) else {
                return PoolDiff {
                    pool: pool.name().to_owned(),
                    added: new_names.iter().map(|s| s.to_string()).collect(),
                    removed: vec![],
                    moved_share: 1.0,
                    discovered_from,
                };
            };
            let old_names = prev.upstream_names();
            let (added, removed) = added_removed(&old_names, &new_names);
            PoolDiff {
                pool: pool.name().to_owned(),
                added,
                removed,
                moved_share: Ring::moved_share(&prev.ring, &old_names, &pool.ring, &new_names),
                discovered_from,
            }
        })
        .collect();
    out.sort_by(|x, y| x.pool.cmp(&y.pool));
    out
}

fn added_removed(old: &[&str], new: &[&str]) -> (Vec<String>, Vec<String>) {
    let (a, b): (BTreeSet<&str>, BTreeSet<&str>) =
        (old.iter().copied().collect(), new.iter().copied().collect());
    (
        b.difference(&a).map(|s| s.to_string()).collect(),
        a.difference(&b).map(|s| s.to_string()).collect(),
    )
}

/// The dry run's answer.
#[derive(Debug, Serialize)]
pub struct DryRun {
    pub valid: bool,
    pub error: Option<String>,
    pub pools: Vec<PoolPlan>,
}

#[derive(Debug, Serialize)]
pub struct PoolPlan {
    pub pool: String,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Upstreams that would take no new work (drained by config or admin, or unhealthy now).
    pub not_taking_new_work: Vec<String>,
    /// Share of the keyspace whose owner would change, taking health and drain into account.
    pub moved_share: f64,
    /// Per upstream: share of the keyspace it would lose and gain.
    pub per_upstream: Vec<UpstreamShift>,
    /// Live pinned sessions on upstreams being removed or drained: they stay put (removed ones
    /// drain until `drain_timeout`), but are the sessions at stake.
    pub pinned_sessions_on_removed_or_drained: usize,
    /// Per upstream of either config: its live sessions now, what stays on it once the change
    /// applied and removed upstreams drained (sessions never move; a removed one ends with 0),
    /// and its cap in the new config.
    pub live_sessions: Vec<LiveSessions>,
}

#[derive(Debug, Serialize)]
pub struct LiveSessions {
    pub upstream: String,
    pub before: usize,
    pub after: usize,
    pub max_sessions: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct UpstreamShift {
    pub upstream: String,
    pub loses: f64,
    pub gains: f64,
}

impl DryRun {
    pub fn invalid(error: String) -> DryRun {
        DryRun {
            valid: false,
            error: Some(error),
            pools: vec![],
        }
    }
}

/// Plan the move from `current` to `next` (already validated).
pub fn dry_run(current: &Snapshot, next: &Config) -> DryRun {
    let pools = next
        .pools
        .values()
        .map(|cfg| plan_pool(current.pool(&cfg.name).map(|p| &**p), cfg))
        .collect();
    DryRun {
        valid: true,
        error: None,
        pools,
    }
}

fn plan_pool(current: Option<&Pool>, next: &PoolConfig) -> PoolPlan {
    // Would this upstream of the new config take new work? Health follows the name.
    let takes_work = |name: &str, drain: bool| -> bool {
        let state = current.and_then(|p| p.upstream(name)).map(|u| &u.state);
        let available = state.map_or(next.health.initial_healthy, |s| s.is_available());
        let admin_drained = state.is_some_and(|s| s.is_admin_drained());
        available && !drain && !admin_drained
    };
    let next_usable: Vec<(&str, u32)> = next
        .upstreams
        .iter()
        .filter(|u| takes_work(&u.name, u.drain))
        .map(|u| (u.name.as_str(), u.weight))
        .collect();
    let not_taking_new_work = next
        .upstreams
        .iter()
        .filter(|u| !takes_work(&u.name, u.drain))
        .map(|u| u.name.clone())
        .collect();
    let new_ring = Ring::build(next_usable.iter().copied(), next.vnodes);
    let new_names: Vec<&str> = next_usable.iter().map(|(n, _)| *n).collect();

    let (old_ring, old_names, all_old) = match current {
        Some(p) => {
            let usable: Vec<(&str, u32)> = p
                .upstreams
                .iter()
                .filter(|u| u.state.accepts_new_work())
                .map(|u| (u.name(), u.config.weight))
                .collect();
            let names: Vec<&str> = usable.iter().map(|(n, _)| *n).collect();
            (
                Ring::build(usable.iter().copied(), p.config.vnodes),
                names,
                p.upstream_names(),
            )
        }
        None => (
            Ring::build(std::iter::empty::<(&str, u32)>(), 1),
            vec![],
            vec![],
        ),
    };
    let movement = Ring::movement(&old_ring, &old_names, &new_ring, &new_names);
    let mut per_upstream: Vec<UpstreamShift> = Vec::new();
    let mut shift = |name: &str, loses: f64, gains: f64| match per_upstream
        .iter_mut()
        .find(|s| s.upstream == name)
    {
        Some(s) => {
            s.loses += loses;
            s.gains += gains;
        }
        None => per_upstream.push(UpstreamShift {
            upstream: name.to_owned(),
            loses,
            gains,
        }),
    };
    for (name, lost) in old_names.iter().zip(&movement.lost) {
        shift(name, *lost, 0.0);
    }
    for (name, gained) in new_names.iter().zip(&movement.gained) {
        shift(name, 0.0, *gained);
    }
    let next_names: Vec<&str> = next.upstreams.iter().map(|u| u.name.as_str()).collect();
    let (added, removed) = added_removed(&all_old, &next_names);
    let pinned = current.map_or(0, |p| {
        let at_stake: BTreeSet<&str> = removed
            .iter()
            .map(String::as_str)
            .chain(
                next.upstreams
                    .iter()
                    .filter(|u| u.drain)
                    .map(|u| u.name.as_str()),
            )
            .collect();
        at_stake.iter().map(|name| p.pins.count_on(name)).sum()
    });
    let live_sessions = all_old
        .iter()
        .copied()
        .chain(added.iter().map(String::as_str))
        .map(|name| {
            let before = current.map_or(0, |p| p.pins.live_on(name));
            let kept = next.upstreams.iter().find(|u| u.name == name);
            LiveSessions {
                upstream: name.to_owned(),
                before,
                after: if kept.is_some() { before } else { 0 },
                max_sessions: kept.and_then(|u| u.max_sessions),
            }
        })
        .collect();
    PoolPlan {
        live_sessions,
        pool: next.name.clone(),
        added,
        removed,
        not_taking_new_work,
        moved_share: movement.total,
        per_upstream,
        pinned_sessions_on_removed_or_drained: pinned,
    }
}
