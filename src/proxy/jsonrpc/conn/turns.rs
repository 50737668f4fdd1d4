//! The turns this connection holds (`session_concurrency: 1`): a send admitted with its
//! session's turn lock begins one; it ends when the node reports the session idle or errored
//! after answering the send (an event before that answer belongs to the turn before), when the
//! send fails, at `turn_timeout`, or when the connection closes.

use super::*;

/// A turn lock this connection holds.
pub(crate) struct Turn {
    lock: TurnLock,
    /// The node running the turn.
    node: Arc<str>,
    renewer: tokio::task::AbortHandle,
    /// The node answered the send: the session's events now report on this turn.
    answered: bool,
}

impl Conn {
    /// A turn of `session` began (its send was admitted with `lock` taken): keep the lock until
    /// the turn ends or its time is up.
    pub(super) fn begin_turn(&mut self, session: Arc<str>, node: Arc<str>, lock: TurnLock) {
        let keep = lock
            .clone()
            .keep(self.ctx.store.clone(), self.ctx.turn_queues.clone());
        let renewer = self.store_tasks.spawn(keep);
        let turn = Turn {
            lock,
            node,
            renewer,
            answered: false,
        };
        if let Some(old) = self.turns.insert(session, turn) {
            self.release(old);
        }
    }

    /// A new holder of a turn lock: this connection, its `n`th turn.
    pub(super) fn turn_holder(&mut self) -> String {
        self.turns_taken += 1;
        format!("{}/{}", self.holder, self.turns_taken)
    }

    /// The turn of `session` ended: release its lock.
    pub(super) fn end_turn(&mut self, session: &str) {
        if let Some(turn) = self.turns.remove(session) {
            self.release(turn);
        }
    }

    fn release(&mut self, turn: Turn) {
        turn.renewer.abort();
        let (store, queues) = (self.ctx.store.clone(), self.ctx.turn_queues.clone());
        self.store_tasks
            .spawn(async move { turn.lock.release(&store, &queues).await });
    }

    /// The node answered a send `pending`: its turn runs (events report on it from now on),
    /// or, if the send failed, never began.
    pub(super) fn send_answered(&mut self, pending: &Pending, failed: bool) {
        if !TURN_METHODS.contains(&pending.method) {
            return;
        }
        let Some(session) = &pending.session else {
            return;
        };
        if failed {
            return self.end_turn(session);
        }
        if let Some(turn) = self.turns.get_mut(session) {
            turn.answered = true;
        }
    }

    /// A send `pending` got no answer (timed out, or its node went away): its turn is over.
    pub(super) fn send_lost(&mut self, pending: &Pending) {
        self.send_answered(pending, true);
    }

    /// The link to `node` is gone, and with it the turns running there.
    pub(super) fn end_turns_on(&mut self, node: &str) {
        let ended: Vec<Arc<str>> = self
            .turns
            .iter()
            .filter(|(_, t)| &*t.node == node)
            .map(|(s, _)| s.clone())
            .collect();
        for session in ended {
            self.end_turn(&session);
        }
    }

    /// A `session.event` notification: does it end a turn this connection holds?
    pub(super) fn watch_turns(&mut self, body: &[u8], session: Option<&str>) {
        let Some(session) = session.filter(|s| self.turns.get(*s).is_some_and(|t| t.answered))
        else {
            return;
        };
        let Ok(msg) = serde_json::from_slice::<Value>(body) else {
            return;
        };
        let kind = msg.pointer("/params/event/type").and_then(Value::as_str);
        if matches!(kind, Some("session.idle" | "session.error")) {
            self.end_turn(session);
        }
    }

    /// The connection ends: the turn locks it holds are released (bounded in time; they expire
    /// anyway).
    pub(super) async fn release_turns(&mut self) {
        let sessions: Vec<Arc<str>> = self.turns.keys().cloned().collect();
        for session in sessions {
            self.end_turn(&session);
        }
        let _ = tokio::time::timeout(FLUSH_GRACE, async {
            while self.store_tasks.join_next().await.is_some() {}
        })
        .await;
    }
}
