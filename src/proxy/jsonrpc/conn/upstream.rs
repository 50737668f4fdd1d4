//! What comes back to a connection: frames from nodes (answers, requests for the client,
//! notifications), answers to the proxy's own requests, what answers teach the pin table, the
//! fan-out tasks' events, and timeouts.

use super::*;

impl Conn {
    pub(super) fn on_event(&mut self, event: Event) {
        match event {
            Event::Upstream {
                node,
                generation,
                body,
            } => {
                if self.is_current(&node, generation) {
                    self.on_upstream(node, body);
                }
            }
            Event::LinkDown {
                node,
                generation,
                kind,
                why,
            } => {
                if self.is_current(&node, generation) {
                    self.link_down(&node, kind, &why);
                }
            }
            Event::Ask { to, body, reply } => {
                let Some(pool) = self.pool() else {
                    return drop(reply.send(None));
                };
                let internal = self.state.add_internal(
                    to.name.clone(),
                    Internal::Ask(reply),
                    pool.config.fanout_timeout,
                );
                match message::with_id(&body, &internal) {
                    Ok(body) => self.send_to(&to, body, None, &pool),
                    Err(_) => self.state.drop_internal(&internal),
                }
            }
            Event::Answer { id, reply, body } => {
                self.state.returned(&id);
                self.log_work_answer(&id, &body);
                self.reply(reply, body);
            }
            Event::Resend {
                id,
                mut pending,
                to,
                body,
            } => {
                self.state.returned(&id);
                let Some(pool) = self.pool() else {
                    return self.fail(Some(&id), pending.reply, "listener is being removed", None);
                };
                pending.upstream = to.name.clone();
                self.state.wait(id, *pending, pool.config.request_timeout);
                self.send_to(&to, body, None, &pool);
            }
            Event::NotFound {
                id,
                pending,
                answer,
            } => {
                self.state.returned(&id);
                self.observe(&pending, "error", answer.len());
                self.reply(pending.reply, answer);
            }
        }
    }

    pub(super) fn is_current(&self, node: &str, generation: u64) -> bool {
        self.links
            .get(node)
            .is_some_and(|l| l.generation == generation)
    }

    /// A frame from `node`.
    pub(super) fn on_upstream(&mut self, node: Arc<str>, body: Bytes) {
        let env = match parse_envelope(&body) {
            Ok(env) => env,
            Err(e) => return self.link_down(&node, LinkFailure::Malformed, &e.to_string()),
        };
        match env.kind {
            MessageKind::Notification => {
                if env.method.as_deref() == Some("session.lifecycle")
                    && !self.may_hear_of(env.session_id.as_deref())
                {
                    return;
                }
                if env.method.as_deref() == Some("session.event") {
                    if !self.turns.is_empty() {
                        self.watch_turns(&body, env.session_id.as_deref());
                    }
                    self.watch_second_writer(&node, &body, env.session_id.as_deref());
                }
                self.send_client(body)
            }
            MessageKind::Request => {
                let Some(id) = env.id.map(RawValue::to_owned) else {
                    return;
                };
                let rewritten = self
                    .state
                    .next_server_request(&node)
                    .and_then(|n| Some((n, message::with_id(&body, &n).ok()?)));
                let Some((n, rewritten)) = rewritten else {
                    let msg = "too many requests waiting for the client";
                    let err = message::error_response(env.id, INTERNAL_ERROR, msg, None);
                    if let Some(link) = self.links.get_mut(&node) {
                        link.send(err);
                    }
                    return;
                };
                if env.method.as_deref() == Some("llmInference.httpRequestStart") {
                    if let Ok(msg) = serde_json::from_slice::<Value>(&body) {
                        if let Some(request) = msg["params"]["requestId"].as_str() {
                            self.state.begin_exchange(request, node.clone());
                        }
                    }
                }
                let request = ServerRequest {
                    upstream: node.clone(),
                    id,
                    session: env.session_id.as_deref().map(Arc::from),
                };
                self.state.add_server_request(n, request);
                self.send_client(rewritten);
            }
            MessageKind::Response => {
                let raw = env.id.map_or("null", RawValue::get);
                if let Some(n) = parse_internal_id(raw) {
                    return self.internal_answer(n, &node, body);
                }
                let Some(pending) = self.state.take_answered(raw, &node) else {
                    return debug!(upstream = %node, id = raw, "answer to no waiting request; dropped");
                };
                let (id, failed) = (ClientId::from(raw), env.has_error);
                self.answered(id, node, pending, body, failed);
            }
            MessageKind::Invalid => {
                self.link_down(&node, LinkFailure::Malformed, "invalid JSON-RPC message")
            }
        }
    }

    /// A node resumed a session another live CLI process holds (its `session.resume` event
    /// says `alreadyInUse`; the answer itself does not): two writers of one session, which a
    /// pool on shared storage must never have. Logged and counted; the client still gets the
    /// event.
    fn watch_second_writer(&self, node: &str, body: &[u8], session: Option<&str>) {
        const FLAG: &[u8] = b"\"alreadyInUse\":true";
        if !body.windows(FLAG.len()).any(|w| w == FLAG) {
            return;
        }
        let Ok(msg) = serde_json::from_slice::<Value>(body) else {
            return;
        };
        let event = &msg["params"]["event"];
        if event["type"] != "session.resume" || event["data"]["alreadyInUse"] != true {
            return;
        }
        warn!(
            pool = %self.pool_name,
            upstream = node,
            session = session.unwrap_or(""),
            "a node resumed a session another CLI process holds: two writers of one session"
        );
        self.ctx
            .metrics
            .sessions_already_in_use_total
            .with_label_values(&[&self.pool_name, node])
            .inc();
    }

    pub(super) fn internal_answer(&mut self, n: u64, node: &Arc<str>, body: Bytes) {
        let Some(kind) = self.state.take_internal(n, node) else {
            return debug!(upstream = %node, "answer to no request of the proxy from that node");
        };
        match kind {
            Internal::Replay => {
                let timeout = self
                    .pool()
                    .map_or(Duration::from_secs(5), |p| p.config.fanout_timeout);
                self.advance_replay(node, timeout);
            }
            Internal::Ask(reply) => drop(reply.send(Some(body))),
            Internal::Discard => {}
        }
    }

    /// `node` answered the client's request `id`.
    pub(super) fn answered(
        &mut self,
        id: ClientId,
        node: Arc<str>,
        mut pending: Pending,
        body: Bytes,
        failed: bool,
    ) {
        // Most answers teach nothing: no snapshot load for them.
        let needs_pool = pending.discover.is_some() || (!failed && pending.learn != Learn::Nothing);
        let pool = if needs_pool { self.pool() } else { None };
        if let (Some(resend), Some(pool)) = (pending.discover.take(), &pool) {
            if fanout::is_not_found(pending.method, &body, failed) {
                let reply = pending.reply;
                let pending = Box::new(pending);
                let task = fanout::discover_owner(
                    self.owner(),
                    pool.clone(),
                    node,
                    id.clone(),
                    pending,
                    resend,
                    body,
                );
                self.spawn_work(id, reply, task, None);
                return;
            }
        }
        if let (false, Some(pool)) = (failed, &pool) {
            self.learn(pool, &node, &pending, &body);
        }
        self.send_answered(&pending, failed);
        self.observe(&pending, if failed { "error" } else { "ok" }, body.len());
        self.reply(pending.reply, body);
    }

    /// What a successful answer teaches the pin table.
    pub(super) fn learn(&mut self, pool: &Pool, node: &Arc<str>, pending: &Pending, body: &[u8]) {
        let pin = || {
            self.links
                .get(node)
                .map(|l| l.endpoint.pin())
                .or_else(|| pool.upstream(node).map(|u| u.endpoint.pin()))
        };
        match pending.learn {
            Learn::Nothing => return,
            Learn::PinRequested => {
                if let (Some(session), Some(pin)) = (&pending.session, pin()) {
                    pool.pins.pin(session, pin);
                    if pending.method == "session.create" {
                        self.bind(pool, session);
                    }
                }
            }
            Learn::PinAnswered => {
                let Ok(msg) = serde_json::from_slice::<Value>(body) else {
                    return;
                };
                let result = &msg["result"];
                let status = result["status"].as_str();
                let opened = !matches!(status, Some("not_found"));
                if let (true, Some(session), Some(pin)) =
                    (opened, result["sessionId"].as_str(), pin())
                {
                    pool.pins.pin(session, pin);
                    // A fork, a connected remote session or a created one is the caller's.
                    if !matches!(status, Some("resumed")) {
                        self.bind(pool, session);
                    }
                }
            }
            Learn::Unpin => {
                // `session.delete` reports failure in its result; `sessions.delete` by error.
                let deleted = pending.method != "session.delete"
                    || body.windows(14).any(|w| w == b"\"success\":true");
                if let (true, Some(session)) = (deleted, &pending.session) {
                    pool.pins.unpin(session);
                    self.unbind(pool, session);
                }
            }
        }
        self.ctx
            .metrics
            .pinned_sessions
            .with_label_values(&[&self.pool_name])
            .set(pool.pins.len() as i64);
    }

    pub(super) fn on_timer(&mut self, fired: Fired) {
        let node = match &fired {
            Fired::Request(_, pending) => pending.upstream.clone(),
            Fired::Internal(node, _) => node.clone(),
        };
        match fired {
            Fired::Request(id, pending) => {
                let timeout = self
                    .pool()
                    .map_or(Duration::ZERO, |p| p.config.request_timeout);
                let msg = format!(
                    "{}: server {} did not answer within {timeout:?}",
                    pending.method, pending.upstream
                );
                warn!(upstream = %pending.upstream, method = pending.method, "request timed out");
                let data = json!({
                    "upstream": &*pending.upstream,
                    "method": pending.method,
                    "timeoutMs": timeout.as_millis() as u64,
                });
                let answer = error_for(&id, UPSTREAM_TIMEOUT, &msg, &data);
                self.observe(&pending, "timeout", answer.len());
                self.send_lost(&pending);
                self.reply(pending.reply, answer);
            }
            Fired::Internal(node, Internal::Replay) => {
                warn!(upstream = %node, "setup replay got no answer in time; continuing");
                let timeout = self
                    .pool()
                    .map_or(Duration::from_secs(5), |p| p.config.fanout_timeout);
                self.advance_replay(&node, timeout);
            }
            Fired::Internal(_, Internal::Ask(reply)) => drop(reply.send(None)),
            Fired::Internal(_, Internal::Discard) => {}
        }
        // A node that neither answers nor reads what it is sent is wedged: its link goes (its
        // requests get errors) so that the client is read again.
        if self.links.get(&node).is_some_and(Link::blocked) {
            self.link_down(
                &node,
                LinkFailure::Dropped,
                "stopped reading (its queue stayed full)",
            );
        }
    }
}
