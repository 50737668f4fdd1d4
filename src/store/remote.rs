//! The Redis side of the store: one redis-rs `ConnectionManager` (a multiplexed connection that
//! reconnects by itself), whether Redis is answering, the Lua scripts, and the metrics. A call is
//! only made while Redis is answering, and gets [`CALL_TIMEOUT`]; the first failed call marks
//! Redis down, and from then on only a probe task (every [`PROBE_INTERVAL`]) talks to it, until
//! a `PING` is answered. Every `None` returned here means "serve this one from memory", and has
//! been counted as a fallback.

use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Once, OnceLock, Weak};
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, RedisResult, Script};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::pins::{self, PinWrite};
use super::{millis, Op};
use crate::metrics::Metrics;

/// The longest a store operation waits for Redis before it serves from memory instead.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(250);

/// How often the probe task pings Redis: the longest a recovered Redis goes unused.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// How long a connection attempt (TCP, then the handshake: AUTH, SELECT) may take. Only the
/// probe task waits for it, off the request path, so it may be longer than a call.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

const NO_ANSWER: &str = "no answer within the call timeout";

/// The sliding-window rate limit, the twin of `local::admit` (change both together). KEYS[1] is
/// a hash of the fixed window `w`, its count `c` and the previous window's count `p`; ARGV is
/// the limit (>= 1) and the window in ms. Redis' clock picks the window, so replicas with skewed
/// clocks agree. Returns 0 if the request is admitted (and counted), else the milliseconds
/// until one would be. (TIME before a write needs Redis 5 or later.)
static RATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local index = math.floor(now / window)
local elapsed = now - index * window
local stored = redis.call('HMGET', KEYS[1], 'w', 'c', 'p')
local w = tonumber(stored[1])
local current = tonumber(stored[2]) or 0
local previous = tonumber(stored[3]) or 0
if w == nil or w < index - 1 then
  current, previous = 0, 0
elseif w == index - 1 then
  current, previous = 0, current
end
if previous * (window - elapsed) + (current + 1) * window <= limit * window then
  redis.call('HSET', KEYS[1], 'w', index, 'c', current + 1, 'p', previous)
  redis.call('PEXPIRE', KEYS[1], 2 * window)
  return 0
end
if current < limit then
  return window - math.floor((limit - 1 - current) * window / previous) - elapsed
end
return window - elapsed + window - math.floor((limit - 1) * window / current)
",
    )
});

/// Extend a lock only if ARGV[1] holds it (ARGV[2]: the new ttl in ms). Returns 1 or 0.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
",
    )
});

/// Delete a lock only if ARGV[1] holds it.
static UNLOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
});

/// Bind KEYS[1] to ARGV[1] for ARGV[2] ms unless it is bound. Returns the owner and the
/// binding's remaining ms.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local held = redis.call('GET', KEYS[1])
if held then
  return {held, redis.call('PTTL', KEYS[1])}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {ARGV[1], tonumber(ARGV[2])}
",
    )
});

/// Whether Redis answers: before the first answer, answering, or not.
const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

pub(super) struct Remote {
    client: redis::Client,
    /// Made by the probe task at the first answer; it reconnects by itself from then on.
    connection: OnceLock<ConnectionManager>,
    state: AtomicU8,
    up: IntGauge,
    errors: [IntCounter; Op::ALL.len()],
    fallbacks: [IntCounter; Op::ALL.len()],
    probe_started: Once,
    /// Pin writes for the writer task, which takes the receiver when it starts.
    pin_writes: tokio::sync::mpsc::Sender<PinWrite>,
    pin_queue: Mutex<Option<tokio::sync::mpsc::Receiver<PinWrite>>>,
    /// Cancelled when the last handle goes, to end the probe and writer tasks.
    dropped: CancellationToken,
}

impl Remote {
    pub(super) fn new(client: redis::Client, metrics: &Metrics) -> Arc<Remote> {
        let by_op = |counters: &prometheus::IntCounterVec| {
            Op::ALL.map(|op| counters.with_label_values(&[op.as_str()]))
        };
        metrics.redis_up.set(0);
        let (pin_writes, pin_queue) = tokio::sync::mpsc::channel(pins::QUEUE);
        let remote = Arc::new(Remote {
            client,
            connection: OnceLock::new(),
            state: AtomicU8::new(UNKNOWN),
            up: metrics.redis_up.clone(),
            errors: by_op(&metrics.redis_errors_total),
            fallbacks: by_op(&metrics.store_fallback_total),
            probe_started: Once::new(),
            pin_writes,
            pin_queue: Mutex::new(Some(pin_queue)),
            dropped: CancellationToken::new(),
        });
        info!(
            redis = %remote.client.get_connection_info().addr,
            db = remote.client.get_connection_info().redis.db,
            "shared store: connecting to redis in the background"
        );
        remote.start_probe();
        remote
    }

    /// Start the probe and pin writer tasks, once, as soon as there is a Tokio runtime to run
    /// them on.
    fn start_probe(self: &Arc<Self>) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        self.probe_started.call_once(|| {
            tokio::spawn(probe_task(Arc::downgrade(self), self.dropped.clone()));
            let queue = self
                .pin_queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(queue) = queue {
                tokio::spawn(pin_writer(
                    Arc::downgrade(self),
                    queue,
                    self.dropped.clone(),
                ));
            }
        });
    }

    /// Queue a pin write without waiting; a full queue drops it (counted as a fallback).
    pub(super) fn queue_pin_write(self: &Arc<Self>, write: PinWrite) {
        self.start_probe();
        if self.pin_writes.try_send(write).is_err() {
            self.fallbacks[Op::PinWrite as usize].inc();
        }
    }

    /// Ping Redis (connecting first if never connected) and record the outcome.
    async fn probe(&self) {
        let mut connection = match self.connection.get() {
            Some(connection) => connection.clone(),
            None => {
                let connect =
                    ConnectionManager::new_with_config(self.client.clone(), manager_config());
                match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
                    Ok(Ok(connection)) => self.connection.get_or_init(|| connection).clone(),
                    Ok(Err(e)) => return self.mark_down(&e),
                    Err(_) => return self.mark_down(&"no connection within the connect timeout"),
                }
            }
        };
        let ping = redis::cmd("PING");
        match tokio::time::timeout(CALL_TIMEOUT, ping.query_async::<()>(&mut connection)).await {
            Ok(Ok(())) => self.mark_up(),
            Ok(Err(e)) => self.mark_down(&e),
            Err(_) => self.mark_down(&NO_ANSWER),
        }
    }

    fn mark_up(&self) {
        if self.state.swap(UP, Ordering::AcqRel) != UP {
            self.up.set(1);
            info!(redis = %self.client.get_connection_info().addr, "shared store: redis answers; using it");
        }
    }

    fn mark_down(&self, error: &dyn Display) {
        if self.state.swap(DOWN, Ordering::AcqRel) != DOWN {
            self.up.set(0);
            warn!(
                redis = %self.client.get_connection_info().addr,
                %error,
                "shared store: redis does not answer; serving from memory until it does"
            );
        }
    }

    /// Run one call made by `send` on the connection, if Redis is answering. `None`: serve it
    /// from memory (counted).
    pub(super) async fn call<T, Fut>(
        self: &Arc<Self>,
        op: Op,
        send: impl FnOnce(ConnectionManager) -> Fut,
    ) -> Option<T>
    where
        Fut: Future<Output = RedisResult<T>>,
    {
        self.start_probe();
        let connection = match self.connection.get() {
            Some(connection) if self.state.load(Ordering::Acquire) == UP => connection.clone(),
            _ => {
                self.fallbacks[op as usize].inc();
                return None;
            }
        };
        match tokio::time::timeout(CALL_TIMEOUT, send(connection)).await {
            Ok(Ok(answer)) => return Some(answer),
            Ok(Err(e)) if is_outage(&e) => self.mark_down(&e),
            // Redis answered with an error (a full memory, a read-only replica): it is up, so
            // only this call is served from memory.
            Ok(Err(e)) => {
                debug!(op = op.as_str(), error = %e, "shared store: redis refused a call")
            }
            Err(_) => self.mark_down(&NO_ANSWER),
        }
        self.errors[op as usize].inc();
        self.fallbacks[op as usize].inc();
        None
    }

    pub(super) async fn bind(self: &Arc<Self>, key: &str, user: &str, ttl: Duration) {
        self.call(Op::Bind, |mut c| async move {
            redis::cmd("SET")
                .arg(key)
                .arg(user)
                .arg("PX")
                .arg(millis(ttl))
                .query_async::<()>(&mut c)
                .await
        })
        .await;
    }

    /// The user bound at `key` and the binding's remaining time to live. `None` if there is none
    /// or Redis did not answer.
    pub(super) async fn owner(self: &Arc<Self>, key: &str) -> Option<(Arc<str>, Duration)> {
        let (user, ttl_ms) = self
            .call(Op::Owner, |mut c| async move {
                redis::pipe()
                    .cmd("GET")
                    .arg(key)
                    .cmd("PTTL")
                    .arg(key)
                    .query_async::<(Option<String>, i64)>(&mut c)
                    .await
            })
            .await?;
        // PTTL is negative for a key without expiry (not written by this store) or already gone.
        let ttl = Duration::from_millis(u64::try_from(ttl_ms).ok().filter(|&ms| ms > 0)?);
        Some((Arc::from(user?), ttl))
    }

    /// Bind `key` to `user` unless it is bound: the owner and the binding's remaining time.
    /// `None` if Redis did not answer.
    pub(super) async fn claim(
        self: &Arc<Self>,
        key: &str,
        user: &str,
        ttl: Duration,
    ) -> Option<(Arc<str>, Duration)> {
        let (owner, ttl_ms) = self
            .call(Op::Bind, |mut c| async move {
                CLAIM
                    .key(key)
                    .arg(user)
                    .arg(millis(ttl))
                    .invoke_async::<(String, i64)>(&mut c)
                    .await
            })
            .await?;
        let ttl = Duration::from_millis(u64::try_from(ttl_ms).unwrap_or(0).max(1));
        Some((Arc::from(owner), ttl))
    }

    pub(super) async fn unbind(self: &Arc<Self>, key: &str) {
        self.call(Op::Unbind, |mut c| async move {
            redis::cmd("DEL").arg(key).query_async::<()>(&mut c).await
        })
        .await;
    }

    /// `limit` >= 1; `None` if Redis did not answer.
    pub(super) async fn rate(
        self: &Arc<Self>,
        key: &str,
        limit: u32,
        window: Duration,
    ) -> Option<Result<(), Duration>> {
        let wait_ms = self
            .call(Op::Rate, |mut c| async move {
                RATE.key(key)
                    .arg(limit)
                    .arg(millis(window))
                    .invoke_async::<u64>(&mut c)
                    .await
            })
            .await?;
        Some(match wait_ms {
            0 => Ok(()),
            ms => Err(Duration::from_millis(ms)),
        })
    }

    pub(super) async fn try_lock(
        self: &Arc<Self>,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> Option<bool> {
        let set = self
            .call(Op::Lock, |mut c| async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(holder)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(ttl))
                    .query_async::<Option<String>>(&mut c)
                    .await
            })
            .await?;
        Some(set.is_some())
    }

    pub(super) async fn renew(
        self: &Arc<Self>,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> Option<bool> {
        self.call(Op::Renew, |mut c| async move {
            RENEW
                .key(key)
                .arg(holder)
                .arg(millis(ttl))
                .invoke_async::<bool>(&mut c)
                .await
        })
        .await
    }

    pub(super) async fn unlock(self: &Arc<Self>, key: &str, holder: &str) {
        self.call(Op::Unlock, |mut c| async move {
            UNLOCK.key(key).arg(holder).invoke_async::<()>(&mut c).await
        })
        .await;
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        self.dropped.cancel();
    }
}

/// Probe Redis every [`PROBE_INTERVAL`] while the store lives. It keeps only a weak handle, so
/// dropping the last store ends it.
async fn probe_task(remote: Weak<Remote>, dropped: CancellationToken) {
    loop {
        match remote.upgrade() {
            Some(remote) => remote.probe().await,
            None => return,
        }
        tokio::select! {
            () = dropped.cancelled() => return,
            () = tokio::time::sleep(PROBE_INTERVAL) => {}
        }
    }
}

/// Drain the pin write queue in pipelines of up to [`pins::BATCH`] while the store lives. A
/// batch that fails (Redis down, or no answer in time) is dropped: the pins stay in each
/// replica's memory, and the next refresh writes them again.
async fn pin_writer(
    remote: Weak<Remote>,
    mut queue: tokio::sync::mpsc::Receiver<PinWrite>,
    dropped: CancellationToken,
) {
    let mut batch = Vec::with_capacity(pins::BATCH);
    loop {
        batch.clear();
        tokio::select! {
            () = dropped.cancelled() => return,
            n = queue.recv_many(&mut batch, pins::BATCH) => if n == 0 { return },
        }
        let Some(remote) = remote.upgrade() else {
            return;
        };
        let writes = &batch;
        let sent = remote
            .call(Op::PinWrite, |mut c| async move {
                pins::send_batch(&mut c, writes).await
            })
            .await;
        if sent.is_none() && batch.len() > 1 {
            // `call` counted the batch once; count the rest of its writes too.
            remote.fallbacks[Op::PinWrite as usize].inc_by(batch.len() as u64 - 1);
        }
    }
}

/// One connection attempt per reconnect: the probe task, not the manager's backoff, sets the
/// pace of retries while Redis is down.
fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_number_of_retries(0)
        .set_connection_timeout(CONNECT_TIMEOUT)
}

/// Whether `error` says Redis is unreachable (not an error reply from a Redis that is up).
fn is_outage(error: &RedisError) -> bool {
    error.is_io_error() || error.is_unrecoverable_error()
}
