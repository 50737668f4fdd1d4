//! One turn at a time per session (`session_concurrency: 1`): the turn lock, kept in the shared
//! store (cluster-wide with Redis), and the line of sends waiting for it on this replica. A turn
//! starts with `session.send` and ends when the CLI reports the session idle or errored, or at
//! `turn_timeout`. Waiters on one replica take the turn in arrival order (one of them, the head
//! of the line, polls the store; a release on this replica wakes it at once); waiters on
//! different replicas race for it each time it is free.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::TurnLimit;
use crate::store::Store;

/// Methods that start a turn of the agent.
pub const TURN_METHODS: &[&str] = &["session.send", "session.sendMessages"];

/// How long a lock lives unless renewed: short, so a replica that dies frees its sessions
/// soon; the holder renews it every third of that.
const MAX_LOCK_TTL: Duration = Duration::from_secs(30);
/// How often the head of a line asks the store, at first and at most: a release on another
/// replica is seen within the longer pause.
const FIRST_POLL: Duration = Duration::from_millis(10);
const MAX_POLL: Duration = Duration::from_millis(100);
/// How much longer than `turn_timeout` a send waits for its turn: the turn ahead of it may run
/// all of its `turn_timeout`, and its release reaches the head of the line a little later (a
/// poll on another replica, then one store call).
const WAIT_GRACE: Duration = Duration::from_millis(500);

/// The lock of one session's turn, for one holder (one turn of one connection).
#[derive(Debug, Clone)]
pub struct TurnLock {
    pub key: String,
    pub holder: Arc<str>,
    pub limit: TurnLimit,
}

impl TurnLock {
    pub fn new(pool: &str, session: &str, holder: String, limit: TurnLimit) -> TurnLock {
        TurnLock {
            key: format!("turn:{pool}:{session}"),
            holder: Arc::from(holder),
            limit,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.limit.turn_timeout.min(MAX_LOCK_TTL)
    }

    async fn try_take(&self, store: &Store) -> bool {
        store.try_lock(&self.key, &self.holder, self.ttl()).await
    }

    /// Keep the lock while the turn lasts: renewed every third of its ttl, released at
    /// `turn_timeout` (the turn is then over for the proxy). Ends early if the lock was lost.
    pub async fn keep(self, store: Store, queues: Arc<TurnQueues>) {
        // Released at turn_timeout itself, not at the first renewal after it: a send queued
        // right behind a turn that never ends waits little longer than turn_timeout.
        let over = Instant::now() + self.limit.turn_timeout;
        loop {
            tokio::time::sleep_until((Instant::now() + self.ttl() / 3).min(over)).await;
            if Instant::now() >= over {
                return self.release(&store, &queues).await;
            }
            if !store.renew(&self.key, &self.holder, self.ttl()).await {
                return;
            }
        }
    }

    /// Give the turn up, and wake the first waiter on this replica.
    pub async fn release(&self, store: &Store, queues: &TurnQueues) {
        store.unlock(&self.key, &self.holder).await;
        queues.freed(&self.key);
    }
}

/// Why a send got no turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoTurn {
    QueueFull,
    TimedOut,
}

impl NoTurn {
    pub fn reason(self) -> &'static str {
        match self {
            NoTurn::QueueFull => "its queue is full",
            NoTurn::TimedOut => "no turn within turn_timeout",
        }
    }
}

/// The lines of sends waiting for their session's turn on this replica, by lock key.
#[derive(Default)]
pub struct TurnQueues {
    lines: Mutex<HashMap<String, Arc<Line>>>,
}

#[derive(Default)]
struct Line {
    /// Sends in this line (the head included).
    waiting: AtomicUsize,
    /// Held by the head of the line; tokio's mutex is fair, so the line is first come, first
    /// served.
    head: tokio::sync::Mutex<()>,
    /// A holder on this replica released the lock.
    freed: Notify,
}

impl TurnQueues {
    /// Wait in `lock`'s line (at most `max_queue` long) until the store grants the lock, for
    /// at most `turn_timeout` (and [`WAIT_GRACE`], so the send right behind a turn that never
    /// ends gets the turn when that one is given up at its `turn_timeout`).
    pub async fn wait(&self, store: &Store, lock: &TurnLock) -> Result<(), NoTurn> {
        let line = {
            let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
            let line = lines.entry(lock.key.clone()).or_default().clone();
            if line.waiting.load(Ordering::Relaxed) >= lock.limit.max_queue {
                return Err(NoTurn::QueueFull);
            }
            line.waiting.fetch_add(1, Ordering::Relaxed);
            line
        };
        let _place = Place {
            queues: self,
            key: &lock.key,
            line: line.clone(),
        };
        let deadline = Instant::now() + lock.limit.turn_timeout + WAIT_GRACE;
        let taken = tokio::time::timeout_at(deadline, async {
            let _head = line.head.lock().await;
            let mut pause = FIRST_POLL;
            while !lock.try_take(store).await {
                tokio::select! {
                    _ = line.freed.notified() => {}
                    _ = tokio::time::sleep(pause) => pause = (pause * 2).min(MAX_POLL),
                }
            }
        })
        .await;
        taken.map_err(|_| NoTurn::TimedOut)
    }

    /// The lock `key` was released here: the head of its line may take it now.
    fn freed(&self, key: &str) {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(line) = lines.get(key) {
            line.freed.notify_one();
        }
    }

    /// Sends waiting in `key`'s line.
    #[cfg(test)]
    fn waiting(&self, key: &str) -> usize {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines
            .get(key)
            .map_or(0, |l| l.waiting.load(Ordering::Relaxed))
    }
}

/// A place in a line; leaving it (taking the turn, giving up, or being dropped with the
/// connection) shortens the line, and the last to leave removes it.
struct Place<'a> {
    queues: &'a TurnQueues,
    key: &'a str,
    line: Arc<Line>,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut lines = self.queues.lines.lock().unwrap_or_else(|e| e.into_inner());
        if self.line.waiting.fetch_sub(1, Ordering::Relaxed) == 1 {
            if let Some(line) = lines.get(self.key) {
                if Arc::ptr_eq(line, &self.line) {
                    lines.remove(self.key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(max_queue: usize) -> TurnLimit {
        TurnLimit {
            turn_timeout: Duration::from_secs(60),
            max_queue,
        }
    }

    fn lock(holder: &str, max_queue: usize) -> TurnLock {
        TurnLock::new("p", "s", holder.to_owned(), limit(max_queue))
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_take_the_turn_in_arrival_order() {
        let store = Store::local();
        let queues = Arc::new(TurnQueues::default());
        let first = lock("a", 4);
        assert!(first.try_take(&store).await);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut waiters = tokio::task::JoinSet::new();
        for name in ["b", "c", "d"] {
            let (store, queues, tx) = (store.clone(), queues.clone(), tx.clone());
            waiters.spawn(async move {
                let me = lock(name, 4);
                queues.wait(&store, &me).await.unwrap();
                tx.send(name).unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
                me.release(&store, &queues).await;
            });
            // Let each waiter join the line before the next.
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(queues.waiting(&first.key), 3);
        first.release(&store, &queues).await;
        let mut order = Vec::new();
        for _ in 0..3 {
            order.push(rx.recv().await.unwrap());
        }
        assert_eq!(order, ["b", "c", "d"]);
        while waiters.join_next().await.is_some() {}
        assert_eq!(queues.waiting(&first.key), 0);
        assert!(queues.lines.lock().unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_line_refuses_and_a_long_wait_times_out() {
        let store = Store::local();
        let queues = Arc::new(TurnQueues::default());
        // The holder's turn may last 10 minutes, and its lock is renewed all along.
        let mut holder = lock("a", 1);
        holder.limit.turn_timeout = Duration::from_secs(600);
        assert!(holder.try_take(&store).await);
        tokio::spawn(holder.keep(store.clone(), queues.clone()));
        let waiter = {
            let (store, queues) = (store.clone(), queues.clone());
            tokio::spawn(async move { queues.wait(&store, &lock("b", 1)).await })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(
            queues.wait(&store, &lock("c", 1)).await,
            Err(NoTurn::QueueFull)
        );
        // Nobody releases: the waiter gives up at its turn_timeout, and the line is gone.
        assert_eq!(waiter.await.unwrap(), Err(NoTurn::TimedOut));
        assert!(queues.lines.lock().unwrap().is_empty());
    }
}
