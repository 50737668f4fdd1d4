//! Session pins shared by replicas through Redis: which node holds each session of a pool, so
//! a restarted proxy or another replica finds a session without asking the fleet. The
//! in-process pin table ([`crate::sessions::SessionPins`]) stays in front: it asks Redis only on
//! a miss ([`SharedPins::lookup`]), and writes what it learns through a bounded queue that one
//! writer task drains in pipelines, so the data path never waits for Redis to write.
//!
//! Keys, under `sessiongate:`:
//! - `pin:{pool}:{session}`: the node's ring name, expiring `session_idle_ttl` plus the refresh
//!   interval after the last write or refresh (so it outlives a session idle on a replica that
//!   refreshed it a little before its last message);
//! - `live:{pool}:{node}`: a sorted set of the node's sessions scored by when their pin
//!   expires on Redis' clock: the sessions live on that node in any replica, read by cleanup
//!   rounds. Members are trimmed as the set is written; the set expires with its last pin.
//!
//! A write is one script (set, refresh or delete a pin and keep the node's set in step), so a
//! pin and its set never disagree. A refresh only extends a pin that still names the same node
//! (a pin another replica moved is not moved back); a delete names the node it expects, so a
//! replica with a stale pin cannot delete the current one.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::Script;

use super::remote::Remote;
use super::{millis, Op, PREFIX};

/// Writes waiting for the writer task; beyond, a write is dropped (counted as served from
/// memory: the pin is still learned in this replica, and refreshed again later).
pub(super) const QUEUE: usize = 16_384;

/// The most writes sent in one pipeline.
pub(super) const BATCH: usize = 512;

/// Set (`set`), extend (`refresh`) or delete (`del`) one pin. KEYS[1]: the pin; ARGV: mode,
/// node, ttl ms, session, the prefix of the pool's live sets. `refresh` leaves a pin that names
/// another node alone (re-creating one that expired); `del` deletes only a pin naming the
/// given node, or any pin when the node is empty. Returns 1 if it wrote.
static WRITE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local mode, node, ttl, session, live = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local old = redis.call('GET', KEYS[1])
if mode == 'del' then
  if not old or (node ~= '' and old ~= node) then return 0 end
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', live .. old, session)
  return 1
end
if mode == 'refresh' and old and old ~= node then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[1], node, 'PX', ttl)
if old and old ~= node then redis.call('ZREM', live .. old, session) end
local set = live .. node
redis.call('ZADD', set, now + ttl, session)
redis.call('ZREMRANGEBYSCORE', set, '-inf', now)
if redis.call('PTTL', set) < ttl then redis.call('PEXPIRE', set, ttl) end
return 1
",
    )
});

/// Forget every pin naming a node (it left the pool). KEYS[1]: the node's live set; ARGV: the
/// prefix of the pool's pins, the node. Returns how many pins went.
static DROP_NODE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local dropped = 0
for _, session in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local pin = ARGV[1] .. session
  if redis.call('GET', pin) == ARGV[2] then
    redis.call('DEL', pin)
    dropped = dropped + 1
  end
end
redis.call('DEL', KEYS[1])
return dropped
",
    )
});

/// The sessions of a node's live set whose pins have not expired. KEYS[1]: the set.
static LIVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
",
    )
});

/// One write of the pin table, queued for the writer task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PinWrite {
    mode: &'static str,
    pin_key: String,
    node: Arc<str>,
    ttl_ms: u64,
    session: Arc<str>,
    live_prefix: Arc<str>,
}

/// The pins of one pool in Redis; clones share the writer queue.
#[derive(Clone)]
pub struct SharedPins {
    remote: Arc<Remote>,
    /// `sessiongate:pin:{pool}:`
    pin_prefix: Arc<str>,
    /// `sessiongate:live:{pool}:`
    live_prefix: Arc<str>,
    /// How long a pin lives in Redis after a write.
    ttl: Duration,
    /// How often activity refreshes a pin at most.
    refresh_every: Duration,
}

impl std::fmt::Debug for SharedPins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedPins")
            .field("pins", &self.pin_prefix)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// How often activity refreshes a pin in Redis at most, for an idle TTL: a quarter of it, at
/// least a second and at most five minutes. One write per session per interval, not one per
/// message.
pub fn refresh_interval(idle_ttl: Duration) -> Duration {
    (idle_ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(300))
}

impl SharedPins {
    pub(super) fn new(remote: Arc<Remote>, pool: &str, idle_ttl: Duration) -> SharedPins {
        SharedPins {
            remote,
            pin_prefix: Arc::from(format!("{PREFIX}pin:{pool}:")),
            live_prefix: Arc::from(format!("{PREFIX}live:{pool}:")),
            ttl: Duration::ZERO,
            refresh_every: Duration::ZERO,
        }
        .for_idle_ttl(idle_ttl)
    }

    /// The same pins, for a pin table whose idle TTL is now `idle_ttl`.
    pub fn for_idle_ttl(&self, idle_ttl: Duration) -> SharedPins {
        let refresh_every = refresh_interval(idle_ttl);
        SharedPins {
            ttl: idle_ttl + refresh_every,
            refresh_every,
            ..self.clone()
        }
    }

    /// The most time between two refreshes of one pin.
    pub fn refresh_every(&self) -> Duration {
        self.refresh_every
    }

    fn write(&self, mode: &'static str, session: &str, node: &str) {
        self.remote.queue_pin_write(PinWrite {
            mode,
            pin_key: format!("{}{session}", self.pin_prefix),
            node: Arc::from(node),
            ttl_ms: millis(self.ttl),
            session: Arc::from(session),
            live_prefix: self.live_prefix.clone(),
        });
    }

    /// `session` lives on `node` (learned, moved, or placed here).
    pub fn set(&self, session: &str, node: &str) {
        self.write("set", session, node);
    }

    /// `session` is still in use on `node`: extend its pin.
    pub fn refresh(&self, session: &str, node: &str) {
        self.write("refresh", session, node);
    }

    /// `session` is gone from `node` (`None`: from wherever it was).
    pub fn delete(&self, session: &str, node: Option<&str>) {
        self.write("del", session, node.unwrap_or(""));
    }

    /// The node holding `session` as any replica recorded it; `None` if none did, or Redis did
    /// not answer in time.
    pub async fn lookup(&self, session: &str) -> Option<Arc<str>> {
        let key = format!("{}{session}", self.pin_prefix);
        let node = self
            .remote
            .call(Op::PinLookup, |mut c| async move {
                redis::cmd("GET")
                    .arg(key)
                    .query_async::<Option<String>>(&mut c)
                    .await
            })
            .await??;
        Some(Arc::from(node))
    }

    /// The sessions live on `node` in any replica; `None` if Redis did not answer.
    pub async fn live_on(&self, node: &str) -> Option<Vec<String>> {
        let key = format!("{}{node}", self.live_prefix);
        self.remote
            .call(Op::PinLive, |mut c| async move {
                LIVE.key(key).invoke_async::<Vec<String>>(&mut c).await
            })
            .await
    }

    /// `node` left the pool: forget its pins (those still naming it).
    pub async fn drop_node(&self, node: &str) -> Option<u64> {
        let (key, prefix) = (
            format!("{}{node}", self.live_prefix),
            self.pin_prefix.clone(),
        );
        self.remote
            .call(Op::PinWrite, |mut c| async move {
                DROP_NODE
                    .key(key)
                    .arg(&*prefix)
                    .arg(node)
                    .invoke_async::<u64>(&mut c)
                    .await
            })
            .await
    }
}

/// Send `writes` as one pipeline of script calls, loading the script first if Redis does not
/// know it (a restarted or flushed Redis).
pub(super) async fn send_batch(
    connection: &mut redis::aio::ConnectionManager,
    writes: &[PinWrite],
) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    for w in writes {
        pipe.cmd("EVALSHA")
            .arg(WRITE.get_hash())
            .arg(1)
            .arg(&w.pin_key)
            .arg(w.mode)
            .arg(&*w.node)
            .arg(w.ttl_ms)
            .arg(&*w.session)
            .arg(&*w.live_prefix)
            .ignore();
    }
    match pipe.query_async::<()>(connection).await {
        Err(e) if e.kind() == redis::ErrorKind::NoScriptError => {
            WRITE.prepare_invoke().load_async(connection).await?;
            pipe.query_async::<()>(connection).await
        }
        other => other,
    }
}
