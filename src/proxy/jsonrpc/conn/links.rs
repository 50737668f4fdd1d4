//! A connection's links: opening one (its setup replayed first, one call at a time), sending on
//! it, and what happens to the requests waiting on it when it fails (an error each, or, when the
//! node refused the link, the next usable node for those any node may answer).

use super::*;

impl Conn {
    /// Send `body` to `to`, opening a link if needed. `setup`: the method of a setup call being
    /// sent, which a new link's replay leaves out (the call goes as itself).
    pub(super) fn send_to(&mut self, to: &Endpoint, body: Bytes, setup: Option<&str>, pool: &Pool) {
        if !self.links.contains_key(&to.name) {
            self.open_link(to, setup, pool);
        }
        if let Some(link) = self.links.get_mut(&to.name) {
            link.send(body);
        }
    }

    pub(super) fn open_link(&mut self, to: &Endpoint, setup: Option<&str>, pool: &Pool) {
        self.next_generation += 1;
        let generation = self.next_generation;
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let settings = LinkSettings {
            connect_timeout: pool.config.connect_timeout,
            max_frame_bytes: self.max_frame_bytes,
            open: self
                .ctx
                .metrics
                .upstream_connections_active
                .with_label_values(&[&self.pool_name, &to.name]),
        };
        self.link_tasks.spawn(link::run(
            to.clone(),
            generation,
            rx,
            self.events_tx.clone(),
            settings,
        ));
        let replay = self.state.setup_calls(setup);
        let labels = [&*self.listener, &*self.pool_name, &*to.name];
        let metrics = &self.ctx.metrics;
        let stats = link::LinkStats {
            ok: metrics
                .requests_total
                .with_label_values(&[labels[0], labels[1], labels[2], "ok"]),
            duration: metrics.request_duration.with_label_values(&labels),
        };
        let link = Link::new(to.clone(), generation, tx, replay, stats);
        self.links.insert(to.name.clone(), link);
        self.advance_replay(&to.name, pool.config.fanout_timeout);
    }

    /// Send a link's next setup call to replay (the replay ends, and what waited goes out,
    /// when none is left).
    pub(super) fn advance_replay(&mut self, node: &Arc<str>, timeout: Duration) {
        loop {
            let Some(link) = self.links.get_mut(node) else {
                return;
            };
            let Some(call) = link.next_replay() else {
                return;
            };
            let body = for_node(&call, link.endpoint.token.as_ref());
            let id = self
                .state
                .add_internal(node.clone(), Internal::Replay, timeout);
            match message::with_id(&body, &id) {
                Ok(body) => {
                    if let Some(link) = self.links.get_mut(node) {
                        link.send_replay(body);
                    }
                    return;
                }
                // Not an object (it was forwarded as is): nothing to wait for.
                Err(_) => self.state.drop_internal(&id),
            }
        }
    }

    /// The link to `node` is gone: forget it and answer every request still waiting on it, so
    /// the client sees an error instead of a hang. When the node refused the link (nothing
    /// reached it), requests any node may answer go to the next usable node instead.
    pub(super) fn link_down(&mut self, node: &Arc<str>, kind: LinkFailure, why: &str) {
        // Dropping the link's sender ends its task.
        self.links.remove(node);
        let label = kind.as_str();
        warn!(upstream = %node, error = why, "upstream link {label} failure");
        let metrics = &self.ctx.metrics;
        metrics
            .upstream_link_failures_total
            .with_label_values(&[&self.pool_name, node, label])
            .inc();
        let pool = self.pool();
        if let Some(up) = pool.as_ref().and_then(|p| p.upstream(node).map(|u| (p, u))) {
            prober::passive_failure(metrics, up.1, up.0.config.passive.as_ref(), why);
        }
        for internal in self.state.take_internal_on(node) {
            if let Internal::Ask(reply) = internal {
                let _ = reply.send(None);
            }
        }
        self.state.forget_server_requests_of(node);
        for (id, mut pending) in self.state.take_all_on(node) {
            if let (LinkFailure::Connect, Some(pool)) = (kind, &pool) {
                if let Some((to, body)) = self.redispatch_target(pool, node, &mut pending) {
                    self.ctx
                        .metrics
                        .redispatches_total
                        .with_label_values(&[&self.pool_name, node])
                        .inc();
                    debug!(from = %node, to = %to.name, "request redispatched");
                    // A setup call goes as itself: a new link's replay leaves it out.
                    let setup = matches!(methods::lookup(pending.method).class, Class::Setup(_))
                        .then_some(pending.method);
                    pending.upstream = to.name.clone();
                    self.state.wait(id, pending, pool.config.request_timeout);
                    self.send_to(&to, body, setup, pool);
                    continue;
                }
            }
            let msg = match &pending.session {
                Some(s) => format!("session {s}: its server {node} is unavailable ({why})"),
                None => format!("server {node} is unavailable ({why})"),
            };
            // The answer is the short error `fail` writes; its size is not worth building twice.
            self.observe(&pending, "unavailable", 0);
            self.send_lost(&pending);
            self.fail(Some(&id), pending.reply, &msg, Some(node));
        }
        self.end_turns_on(node);
    }

    /// Where a request whose node refused the link goes next, with the body to send there;
    /// `None` if it must fail instead (bound to a session, or no other node usable).
    pub(super) fn redispatch_target(
        &self,
        pool: &Pool,
        refused_by: &Arc<str>,
        pending: &mut Pending,
    ) -> Option<(Endpoint, Bytes)> {
        let r = pending.redispatch.as_mut()?;
        r.refused.push(refused_by.clone());
        // The same key that placed it, so every client connection spreads the same way.
        let key = pending
            .session
            .as_deref()
            .map_or(&self.home_key[..], str::as_bytes);
        let target = pool.route_avoiding(key, &r.refused)?.endpoint.clone();
        let body = if pending.method == "connect" {
            with_token(&r.body, target.token.as_ref())
        } else {
            r.body.clone()
        };
        Some((target, body))
    }
}
