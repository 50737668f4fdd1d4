//! Fleet-wide session cleanup: this module owns the CLI's `sessions.pruneOld` run on every
//! healthy node of a pool, one round at a time per pool (a [`Store`] lock, so one replica of
//! several runs it), either on the pool's `cleanup:` schedule ([`CleanupSupervisor`], one task
//! per pool following reloads) or now (`POST /admin/cleanup`). A round sends each node the
//! sessions pinned to it as `excludeSessionIds` (the CLI judges age by last modification, which
//! reading a session does not refresh, so this is what keeps a live session), unpins what was
//! deleted, counts deleted sessions and freed bytes per node, and retries a failing node with
//! a bounded exponential backoff. The talking to a node is a small one-shot framed client
//! (`connect` with the node's token, then `sessions.pruneOld`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{CleanupConfig, Secret};
use crate::proxy::Context;
use crate::schedule::{backoff, first_delay, jittered, FIRST_RETRY};
use crate::snapshot::{Pool, Snapshot};
use crate::store::Store;
use crate::wire::codec::FrameCodec;

const SECONDS_PER_DAY: f64 = 86_400.0;

/// Why a round did not run.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("a cleanup round of pool {0} is already running")]
    Busy(String),
}

/// `older_than` as the CLI's `olderThanDays`: fractional days (the CLI takes any non-negative
/// number), so `12h` is `0.5` and nothing is rounded.
pub fn older_than_days(older_than: Duration) -> f64 {
    older_than.as_secs_f64() / SECONDS_PER_DAY
}

/// The `sessions.pruneOld` params for one node: `exclude` are the sessions pinned to it.
pub fn prune_params(config: &CleanupConfig, dry_run: bool, exclude: &[String]) -> Value {
    json!({
        "olderThanDays": older_than_days(config.older_than),
        "dryRun": dry_run,
        "includeNamed": config.include_named,
        "excludeSessionIds": exclude,
    })
}

/// What one node answered (or why it did not).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeReport {
    pub upstream: String,
    /// Deleted session ids (empty on a dry run).
    pub deleted: Vec<String>,
    /// What a dry run would delete.
    pub candidates: Vec<String>,
    /// Named sessions left alone (`include_named: false`).
    pub skipped: Vec<String>,
    pub freed_bytes: u64,
    pub error: Option<String>,
}

impl NodeReport {
    /// The report of `upstream` from its `sessions.pruneOld` answer (or the failure).
    pub fn from_answer(upstream: &str, answer: Result<Value, String>) -> NodeReport {
        let list = |v: &Value, field: &str| -> Vec<String> {
            v.get(field)
                .and_then(Value::as_array)
                .map(|ids| {
                    ids.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        match answer {
            Ok(v) => NodeReport {
                upstream: upstream.to_owned(),
                deleted: list(&v, "deleted"),
                candidates: list(&v, "candidates"),
                skipped: list(&v, "skipped"),
                freed_bytes: v.get("freedBytes").and_then(Value::as_u64).unwrap_or(0),
                error: None,
            },
            Err(error) => NodeReport {
                upstream: upstream.to_owned(),
                deleted: Vec::new(),
                candidates: Vec::new(),
                skipped: Vec::new(),
                freed_bytes: 0,
                error: Some(error),
            },
        }
    }
}

/// One round over a pool: every node's report and the totals.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoundReport {
    pub pool: String,
    pub dry_run: bool,
    pub older_than_days: f64,
    /// Sessions deleted (or, on a dry run, candidates) over every node.
    pub sessions: usize,
    pub freed_bytes: u64,
    /// Nodes that gave no answer.
    pub failed: usize,
    pub nodes: Vec<NodeReport>,
}

impl RoundReport {
    /// Merge the nodes' reports (kept in the order given) into a round's.
    pub fn merge(pool: &str, dry_run: bool, older_than: Duration, nodes: Vec<NodeReport>) -> Self {
        RoundReport {
            pool: pool.to_owned(),
            dry_run,
            older_than_days: older_than_days(older_than),
            sessions: nodes
                .iter()
                .map(|n| n.deleted.len() + n.candidates.len())
                .sum(),
            freed_bytes: nodes
                .iter()
                .fold(0u64, |sum, n| sum.saturating_add(n.freed_bytes)),
            failed: nodes.iter().filter(|n| n.error.is_some()).count(),
            nodes,
        }
    }
}

/// Consecutive failures per node after a round: a failed node's count goes up, an answering
/// node's is forgotten, and nodes the round did not ask keep theirs.
pub fn next_failures(
    before: &BTreeMap<String, u32>,
    round: &[NodeReport],
) -> BTreeMap<String, u32> {
    let mut after = before.clone();
    for node in round {
        if node.error.is_some() {
            *after.entry(node.upstream.clone()).or_insert(0) += 1;
        } else {
            after.remove(&node.upstream);
        }
    }
    after
}

/// When each failing node is tried next after a round at `now` (with `failures` already
/// counted): the nodes the round asked that failed at `now` plus their [`backoff`], those that
/// answered not at all; nodes not asked keep their time; nodes no longer failing are dropped.
pub fn next_retries<T>(
    before: &BTreeMap<String, T>,
    failures: &BTreeMap<String, u32>,
    asked: &[NodeReport],
    now: T,
    every: Duration,
) -> BTreeMap<String, T>
where
    T: Copy + std::ops::Add<Duration, Output = T>,
{
    let mut after = before.clone();
    for node in asked {
        match failures.get(&node.upstream) {
            Some(n) => after.insert(node.upstream.clone(), now + backoff(*n, every)),
            None => after.remove(&node.upstream),
        };
    }
    after.retain(|name, _| failures.contains_key(name));
    after
}

/// This process's name as a lock holder.
fn replica_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| format!("cleanup-{}", uuid::Uuid::new_v4()))
}

/// Run one round on `pool` now: every node (or those named in `only`), healthy ones asked,
/// the others reported as skipped. `dry_run` overrides the config's. Holds the pool's cleanup
/// lock for the round; [`CleanupError::Busy`] if another round (here or on another replica)
/// holds it.
pub async fn run_round(
    ctx: &Context,
    pool: &Pool,
    config: &CleanupConfig,
    dry_run: bool,
    only: Option<&[String]>,
) -> Result<RoundReport, CleanupError> {
    let store: &Store = &ctx.store;
    let lock = format!("cleanup:{}", pool.name());
    let pc = &pool.config;
    let ttl = pc.connect_timeout + pc.fanout_timeout * 2 + Duration::from_secs(10);
    if !store.try_lock(&lock, replica_id(), ttl).await {
        return Err(CleanupError::Busy(pool.name().to_owned()));
    }
    let asked = pool
        .upstreams
        .iter()
        .filter(|up| only.is_none_or(|names| names.iter().any(|n| n == up.name())));
    let rounds = asked.map(|up| async move {
        let answer = if up.state.is_available() {
            let exclude = live_sessions(pool, up.name()).await;
            let params = prune_params(config, dry_run, &exclude);
            prune_node(
                up.addr(),
                up.config.token.as_ref(),
                params,
                pc.connect_timeout,
                pc.fanout_timeout,
            )
            .await
        } else {
            Err("not healthy: skipped".to_owned())
        };
        NodeReport::from_answer(up.name(), answer)
    });
    let nodes = futures_util::future::join_all(rounds).await;
    store.unlock(&lock, replica_id()).await;
    for node in &nodes {
        account(ctx, pool, node, dry_run);
    }
    Ok(RoundReport::merge(
        pool.name(),
        dry_run,
        config.older_than,
        nodes,
    ))
}

/// The sessions live on `node` that a round must not delete: those pinned here, and with
/// `redis:` those any replica pinned there (if Redis answers; else this replica's only).
async fn live_sessions(pool: &Pool, node: &str) -> Vec<String> {
    let mut live = pool.pins.pinned_on(node);
    if let Some(shared) = pool.pins.shared() {
        match shared.live_on(node).await {
            Some(elsewhere) => {
                live.extend(elsewhere);
                live.sort();
                live.dedup();
            }
            None => warn!(
                pool = pool.name(),
                upstream = node,
                "session cleanup: redis did not answer; only this replica's live sessions are excluded"
            ),
        }
    }
    live
}

/// Log and count one node's result; unpin what it deleted.
fn account(ctx: &Context, pool: &Pool, node: &NodeReport, dry_run: bool) {
    let (pool_name, upstream) = (pool.name(), node.upstream.as_str());
    if let Some(error) = &node.error {
        warn!(pool = pool_name, upstream, error = %error, "session cleanup failed");
        return;
    }
    for id in &node.deleted {
        pool.pins.unpin(id);
    }
    if !dry_run {
        let labels = [pool_name, upstream];
        ctx.metrics
            .cleanup_deleted_sessions_total
            .with_label_values(&labels)
            .inc_by(node.deleted.len() as u64);
        ctx.metrics
            .cleanup_freed_bytes_total
            .with_label_values(&labels)
            .inc_by(node.freed_bytes);
    }
    info!(
        pool = pool_name,
        upstream,
        dry_run,
        deleted = node.deleted.len(),
        candidates = node.candidates.len(),
        skipped = node.skipped.len(),
        freed_bytes = node.freed_bytes,
        "session cleanup"
    );
}

/// One-shot client: connect to `addr`, `connect` with the node's token, send
/// `sessions.pruneOld` with `params` and return its result. Each answer is awaited at most
/// `timeout`.
pub async fn prune_node(
    addr: &str,
    token: Option<&Secret>,
    params: Value,
    connect_timeout: Duration,
    timeout: Duration,
) -> Result<Value, String> {
    let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connect to {addr} timed out after {connect_timeout:?}"))?
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let mut link = Framed::new(stream, FrameCodec::default());
    let hello = match token {
        Some(t) => json!({ "token": t.expose() }),
        None => json!({}),
    };
    call(&mut link, 1, "connect", hello, timeout).await?;
    call(&mut link, 2, "sessions.pruneOld", params, timeout).await
}

/// Send request `id` and wait up to `timeout` for its answer, skipping other frames.
async fn call(
    link: &mut Framed<TcpStream, FrameCodec>,
    id: u64,
    method: &str,
    params: Value,
    timeout: Duration,
) -> Result<Value, String> {
    let id = format!("sessiongate-cleanup-{id}");
    let body = json!({ "jsonrpc": "2.0", "id": &id, "method": method, "params": params });
    let body = Bytes::from(serde_json::to_vec(&body).map_err(|e| e.to_string())?);
    link.send(body)
        .await
        .map_err(|e| format!("{method}: write: {e}"))?;
    let answer = async {
        loop {
            let frame = link
                .next()
                .await
                .ok_or_else(|| format!("{method}: connection closed"))?
                .map_err(|e| format!("{method}: read: {e}"))?;
            let Ok(msg) = serde_json::from_slice::<Value>(&frame) else {
                continue;
            };
            if msg.get("method").is_some() || msg.get("id").and_then(Value::as_str) != Some(&id) {
                continue;
            }
            if let Some(error) = msg.get("error") {
                return Err(format!("{method} answered an error: {error}"));
            }
            return Ok(msg.get("result").cloned().unwrap_or(Value::Null));
        }
    };
    tokio::time::timeout(timeout, answer)
        .await
        .unwrap_or_else(|_| Err(format!("{method}: no answer within {timeout:?}")))
}

/// A running pool schedule and what it was started with (a change restarts it).
struct Running {
    config: CleanupConfig,
    stop: CancellationToken,
}

/// Keeps one schedule task per pool with `cleanup:` in step with the snapshot. Tasks are
/// spawned on the server's task tracker and stop with its shutdown token.
pub struct CleanupSupervisor {
    running: Mutex<HashMap<String, Running>>,
}

impl Default for CleanupSupervisor {
    fn default() -> Self {
        CleanupSupervisor::new()
    }
}

impl CleanupSupervisor {
    pub fn new() -> CleanupSupervisor {
        CleanupSupervisor {
            running: Mutex::new(HashMap::new()),
        }
    }

    /// Start schedules for pools that gained `cleanup:`, stop those of pools that lost it (or
    /// were removed), restart those whose settings changed.
    pub fn sync(&self, ctx: &Context, snapshot: &Snapshot) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let wanted: HashMap<&str, &CleanupConfig> = snapshot
            .pools()
            .filter_map(|p| Some((p.name(), p.config.cleanup.as_ref()?)))
            .collect();
        running.retain(|pool, r| {
            let keep = wanted.get(pool.as_str()) == Some(&&r.config);
            if !keep {
                r.stop.cancel();
            }
            keep
        });
        for (pool, config) in wanted {
            if running.contains_key(pool) {
                continue;
            }
            let stop = ctx.shutdown.token.child_token();
            ctx.shutdown.tracker.spawn(schedule(
                ctx.clone(),
                pool.to_owned(),
                config.every,
                stop.clone(),
            ));
            let config = config.clone();
            running.insert(pool.to_owned(), Running { config, stop });
        }
    }
}

/// Run `pool`'s rounds every `every` (±10% jitter, the first at a random point of the first
/// interval) until `stop`, retrying failed nodes on their backoff in between. Settings and
/// nodes are read from the snapshot each round; a pool gone or without `cleanup:` ends it.
async fn schedule(ctx: Context, pool_name: String, every: Duration, stop: CancellationToken) {
    let mut next_round = Instant::now() + first_delay(every);
    let mut failures: BTreeMap<String, u32> = BTreeMap::new();
    let mut retry_at: BTreeMap<String, Instant> = BTreeMap::new();
    loop {
        let wake = retry_at.values().copied().fold(next_round, Ord::min);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(wake) => {}
        }
        let now = Instant::now();
        let full = now >= next_round;
        let due: Vec<String> = retry_at
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(name, _)| name.clone())
            .collect();
        let snapshot = ctx.shared.load_full();
        let Some(pool) = snapshot.pool(&pool_name) else {
            return;
        };
        let Some(config) = pool.config.cleanup.clone() else {
            return;
        };
        let only = (!full).then_some(due.as_slice());
        // A round is not cut short (its nodes' timeouts bound it): it must release its lock.
        let round = run_round(&ctx, pool, &config, config.dry_run, only).await;
        if stop.is_cancelled() {
            return;
        }
        match round {
            Ok(report) => {
                failures = next_failures(&failures, &report.nodes);
                // Nodes a reload removed are not retried.
                failures.retain(|name, _| pool.upstream(name).is_some());
                retry_at = next_retries(&retry_at, &failures, &report.nodes, now, config.every);
            }
            Err(e) => {
                debug!(pool = %pool_name, reason = %e, "cleanup round not run");
                // Try the due retries again shortly, not in a tight loop.
                for name in &due {
                    retry_at.insert(name.clone(), now + FIRST_RETRY);
                }
            }
        }
        if full {
            next_round = now + jittered(every);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(older_than: Duration, include_named: bool) -> CleanupConfig {
        CleanupConfig {
            older_than,
            include_named,
            ..CleanupConfig::default()
        }
    }

    #[test]
    fn params_from_config() {
        let ids = vec!["a".to_owned(), "b".to_owned()];
        let cases: &[(Duration, bool, bool, &[String], Value)] = &[
            (
                Duration::from_secs(7 * 86_400),
                false,
                false,
                &[],
                json!({"olderThanDays": 7.0, "dryRun": false, "includeNamed": false, "excludeSessionIds": []}),
            ),
            (
                Duration::from_secs(12 * 3600),
                true,
                true,
                &ids,
                json!({"olderThanDays": 0.5, "dryRun": true, "includeNamed": true, "excludeSessionIds": ["a", "b"]}),
            ),
            (
                Duration::ZERO,
                false,
                false,
                &ids[..1],
                json!({"olderThanDays": 0.0, "dryRun": false, "includeNamed": false, "excludeSessionIds": ["a"]}),
            ),
        ];
        for (older_than, named, dry, exclude, want) in cases {
            let got = prune_params(&config(*older_than, *named), *dry, exclude);
            assert_eq!(&got, want, "{older_than:?} named={named} dry={dry}");
        }
    }

    #[test]
    fn node_reports_from_answers() {
        let ok = NodeReport::from_answer(
            "a",
            Ok(
                json!({"deleted": ["s1", "s2"], "candidates": [], "skipped": ["n"], "freedBytes": 30, "dryRun": false}),
            ),
        );
        assert_eq!(ok.deleted, vec!["s1", "s2"]);
        assert_eq!((ok.skipped.len(), ok.freed_bytes, ok.error), (1, 30, None));
        let odd = NodeReport::from_answer("b", Ok(json!({"deleted": [1, "s3"]})));
        assert_eq!((odd.deleted, odd.freed_bytes), (vec!["s3".to_owned()], 0));
        let failed = NodeReport::from_answer("c", Err("connect: refused".into()));
        assert_eq!(failed.error.as_deref(), Some("connect: refused"));
        assert!(failed.deleted.is_empty());
    }

    #[test]
    fn a_round_merges_its_nodes() {
        let nodes = vec![
            NodeReport::from_answer("a", Ok(json!({"candidates": ["s1"], "freedBytes": 10}))),
            NodeReport::from_answer("b", Err("down".into())),
            NodeReport::from_answer(
                "c",
                Ok(json!({"candidates": ["s2", "s3"], "freedBytes": 5})),
            ),
        ];
        let round = RoundReport::merge("fleet", true, Duration::from_secs(86_400), nodes);
        assert_eq!(
            (round.sessions, round.freed_bytes, round.failed),
            (3, 15, 1)
        );
        assert_eq!(round.older_than_days, 1.0);
        let order: Vec<&str> = round.nodes.iter().map(|n| n.upstream.as_str()).collect();
        assert_eq!(order, ["a", "b", "c"]);
        let empty = RoundReport::merge("fleet", false, Duration::ZERO, vec![]);
        assert_eq!((empty.sessions, empty.freed_bytes, empty.failed), (0, 0, 0));
    }

    #[test]
    fn failures_count_up_and_reset() {
        let ok = |n: &str| NodeReport::from_answer(n, Ok(json!({})));
        let bad = |n: &str| NodeReport::from_answer(n, Err("x".into()));
        let start: BTreeMap<String, u32> = [("a".to_owned(), 2), ("c".to_owned(), 1)].into();
        let after = next_failures(&start, &[ok("a"), bad("b"), bad("c")]);
        let want: BTreeMap<String, u32> = [("b".to_owned(), 1), ("c".to_owned(), 2)].into();
        assert_eq!(after, want);
        // Nodes not asked keep their count.
        assert_eq!(next_failures(&start, &[]), start);
    }

    #[test]
    fn retries_follow_the_backoff_of_the_nodes_asked() {
        let secs = Duration::from_secs;
        let every = secs(60);
        let ok = |n: &str| NodeReport::from_answer(n, Ok(json!({})));
        let bad = |n: &str| NodeReport::from_answer(n, Err("x".into()));
        let map = |pairs: &[(&str, u64)]| -> BTreeMap<String, Duration> {
            pairs
                .iter()
                .map(|(n, s)| (n.to_string(), secs(*s)))
                .collect()
        };
        let counts = |pairs: &[(&str, u32)]| -> BTreeMap<String, u32> {
            pairs.iter().map(|(n, c)| (n.to_string(), *c)).collect()
        };
        // (retry times before, failures after the round, nodes asked, retry times after); now = 100s.
        let cases = [
            (
                map(&[]),
                counts(&[("a", 1)]),
                vec![bad("a"), ok("b")],
                map(&[("a", 101)]),
            ),
            (
                map(&[("a", 101)]),
                counts(&[("a", 3)]),
                vec![bad("a")],
                map(&[("a", 104)]),
            ),
            (
                map(&[("a", 101), ("b", 150)]),
                counts(&[("b", 2)]),
                vec![ok("a")],
                map(&[("b", 150)]),
            ),
            (
                map(&[("a", 101)]),
                counts(&[("a", 20)]),
                vec![bad("a")],
                map(&[("a", 160)]),
            ),
            // A node a reload removed (no longer counted) is dropped though not asked.
            (map(&[("gone", 120)]), counts(&[]), vec![], map(&[])),
        ];
        for (before, failures, asked, want) in cases {
            let got = next_retries(&before, &failures, &asked, secs(100), every);
            assert_eq!(got, want, "before {before:?}, failures {failures:?}");
        }
    }

    #[test]
    fn cleanup_config_is_validated_with_field_paths() {
        let yaml = |cleanup: &str| {
            format!(
                "listeners: []\npools:\n  fleet:\n    cleanup: {cleanup}\n    upstreams:\n      - {{ addr: 127.0.0.1:9 }}\n"
            )
        };
        let path = std::path::Path::new("t.yaml");
        let c = crate::config::Config::parse(
            &yaml("{ older_than: 12h, every: 10m, dry_run: true }"),
            path,
        )
        .expect("valid");
        let got = c.pools["fleet"].cleanup.clone().expect("cleanup");
        assert_eq!(got.older_than, Duration::from_secs(12 * 3600));
        assert_eq!(got.every, Duration::from_secs(600));
        assert!(got.dry_run && !got.include_named);
        let zero = crate::config::Config::parse(&yaml("{ older_than: 0s }"), path).expect("0s");
        assert_eq!(
            zero.pools["fleet"].cleanup.as_ref().unwrap().older_than,
            Duration::ZERO
        );
        let defaults = crate::config::Config::parse(&yaml("{}"), path).expect("defaults");
        assert_eq!(
            defaults.pools["fleet"].cleanup,
            Some(CleanupConfig::default())
        );
        for (bad, field) in [
            ("{ every: 0s }", "pools.fleet.cleanup.every"),
            ("{ every: soon }", "pools.fleet.cleanup.every"),
            ("{ older_than: old }", "pools.fleet.cleanup.older_than"),
            ("{ olderThan: 1d }", "olderThan"),
        ] {
            let err = crate::config::Config::parse(&yaml(bad), path)
                .expect_err(bad)
                .to_string();
            assert!(err.contains(field), "{bad}: {err}");
        }
    }
}
