//! The client side of a connection: its frames and batches, each request routed and sent (or
//! fanned out), setup calls recorded and copied to open links, and the client's answers to
//! requests nodes sent it.

use super::*;

impl Conn {
    /// `false` means the input was malformed and the connection must close (the error has
    /// been sent).
    pub(super) fn on_client_frame(&mut self, body: Bytes) -> bool {
        if message::is_batch(&body) {
            return self.on_batch(body);
        }
        self.on_message(body, ReplyTo::Direct)
    }

    pub(super) fn on_message(&mut self, body: Bytes, reply: ReplyTo) -> bool {
        let in_batch = reply != ReplyTo::Direct;
        let env = match parse_envelope(&body) {
            Ok(env) => env,
            Err(e) => {
                let err = message::error_response(None, e.code(), &e.to_string(), None);
                self.reply(reply, err);
                return in_batch;
            }
        };
        match env.kind {
            MessageKind::Invalid => {
                let err = message::error_response(
                    env.id,
                    INVALID_REQUEST,
                    "invalid JSON-RPC message",
                    None,
                );
                self.reply(reply, err);
                in_batch
            }
            MessageKind::Response => {
                self.client_answer(env.id, &body);
                true
            }
            MessageKind::Request | MessageKind::Notification => {
                let id = env.id.map(|raw| ClientId::from(raw.get()));
                let name = env.method.as_deref().unwrap_or_default();
                let session = env.session_id.as_deref();
                self.client_request(name, session, id, &body, reply);
                true
            }
        }
    }

    /// Split a batch, route each element, and answer with one array in the original order.
    pub(super) fn on_batch(&mut self, body: Bytes) -> bool {
        let elements = match message::split_batch(&body) {
            Ok(elements) => elements,
            Err(e) => {
                let err = message::error_response(None, e.code(), &e.to_string(), None);
                self.reply(ReplyTo::Direct, err);
                return false;
            }
        };
        if elements.is_empty() {
            let err = message::error_response(None, INVALID_REQUEST, "empty batch", None);
            self.reply(ReplyTo::Direct, err);
            return true;
        }
        // Everything but notifications and responses is answered: requests and bad elements.
        let answered: Vec<bool> = elements
            .iter()
            .map(|raw| match parse_envelope(raw.get().as_bytes()) {
                Ok(env) => !matches!(env.kind, MessageKind::Notification | MessageKind::Response),
                Err(_) => true,
            })
            .collect();
        let count = answered.iter().filter(|a| **a).count();
        let batch = (count > 0).then(|| self.state.new_batch(count));
        let mut index = 0;
        for (raw, answered) in elements.iter().zip(answered) {
            let reply = match (batch, answered) {
                (Some(batch), true) => {
                    index += 1;
                    ReplyTo::Batch {
                        batch,
                        index: index - 1,
                    }
                }
                _ => ReplyTo::Direct,
            };
            self.on_message(body.slice_ref(raw.get().as_bytes()), reply);
        }
        true
    }

    pub(super) fn client_request(
        &mut self,
        name: &str,
        session: Option<&str>,
        id: Option<ClientId>,
        body: &Bytes,
        reply: ReplyTo,
    ) {
        let mut method = methods::lookup(name);
        if self.binds && name == "session.getLastId" {
            // A node's last session may be another user's: where sessions have owners, the
            // caller's newest among every node's session list (see fanout::view).
            method.class = Class::FanOut(methods::Merge::NewestSession);
        }
        if method.class == Class::Unknown {
            self.ctx.metrics.unknown_method(&self.pool_name, name);
        }
        if let Some(id) = &id {
            if self.draining {
                let data = json!({ "retryAfterMs": RETRY_AFTER_MS });
                let err = error_for(
                    id,
                    SERVER_UNAVAILABLE,
                    "sessiongate is shutting down",
                    &data,
                );
                return self.reply(reply, err);
            }
            if self.state.is_pending(id) {
                let msg = "a request with this id is already in flight";
                let err = error_for(id, INVALID_REQUEST, msg, &Value::Null);
                return self.reply(reply, err);
            }
            if is_reserved_id(id) {
                let msg = "request ids starting with \"sessiongate-\" are reserved for the proxy";
                let err = error_for(id, INVALID_REQUEST, msg, &Value::Null);
                return self.reply(reply, err);
            }
        }
        let snapshot = self.ctx.shared.load_full();
        let Some(listener) = snapshot.listener(&self.listener) else {
            return self.fail(id.as_deref(), reply, "listener is being removed", None);
        };
        let Some(body) = self.identify(&snapshot, listener, name, id.as_deref(), body, reply)
        else {
            return;
        };
        if let Err(why) = self.policy(&snapshot, name) {
            self.count_refusal("forbidden");
            if let Some(id) = &id {
                let answer = error_for(id, FORBIDDEN, &why, &Value::Null);
                self.log_refused(method.label, body.len(), answer.len());
                self.reply(reply, answer);
            }
            return;
        }
        let Some(pool) = listener
            .route_for(self.caller.as_ref())
            .map(|r| r.pool.clone())
        else {
            return self.fail(id.as_deref(), reply, "no pool serves this caller", None);
        };
        let req = Request {
            method: name,
            class: method.class,
            session,
            body: &body,
        };
        let prefix = match (&self.caller, &snapshot.identities) {
            (Some(who), Some(ids)) if self.binds => ids
                .config
                .unowned
                .prefix_for(&who.user, who.tenant.as_deref()),
            _ => None,
        };
        let new_id = move || match &prefix {
            Some(p) => format!("{p}{}", new_session_id()),
            None => new_session_id(),
        };
        let facts = ConnFacts {
            home_key: &self.home_key,
            exchanges: self.state.exchanges(),
            new_session_id: &new_id,
        };
        let decision = route::decide(&req, &pool, &facts);
        let routed = Routed {
            label: method.label,
            id,
            body,
            reply,
            decision,
            pool,
        };
        self.admit(listener, &snapshot, routed);
    }

    /// Carry out a routing decision.
    pub(super) fn dispatch(&mut self, routed: Routed) {
        let Routed {
            label,
            id,
            body,
            reply,
            decision,
            pool,
        } = routed;
        match decision {
            Decision::Forward(f) => {
                if let Some(ring_choice) = &f.spilled_from {
                    self.ctx
                        .metrics
                        .placement_spills_total
                        .with_label_values(&[pool.name(), ring_choice])
                        .inc();
                }
                self.forward(f, label, id, &body, reply, &pool)
            }
            Decision::Setup { to, replay } => {
                self.setup(to, replay, label, id, &body, reply, &pool)
            }
            Decision::Refuse(r) => {
                if r.code == FLEET_FULL {
                    self.count_refusal("fleet_full");
                }
                if r.code == SERVER_UNAVAILABLE {
                    // Answered by the proxy for a node that is down: still a request that node
                    // failed (the soak showed these missing from the request counts).
                    let upstream = r.upstream.as_deref().unwrap_or("none");
                    self.ctx
                        .metrics
                        .requests_total
                        .with_label_values(&[&self.listener, pool.name(), upstream, "unavailable"])
                        .inc();
                }
                if let Some(id) = id {
                    let data = match &r.upstream {
                        Some(u) => json!({ "retryAfterMs": RETRY_AFTER_MS, "upstream": &**u }),
                        None if r.code == SERVER_UNAVAILABLE || r.code == FLEET_FULL => {
                            json!({ "retryAfterMs": RETRY_AFTER_MS })
                        }
                        None => Value::Null,
                    };
                    let answer = error_for(&id, r.code, &r.message, &data);
                    self.log_refused(label, body.len(), answer.len());
                    self.reply(reply, answer);
                }
            }
            Decision::FanOut(merge) => {
                // Fan-outs answer requests; a notification of these methods has nothing to do.
                let Some(id) = id else { return };
                let noted = WorkNote::new(label, &body);
                let task = fanout::fan_out(
                    self.owner(),
                    pool,
                    merge,
                    label,
                    id.clone(),
                    body,
                    reply,
                    self.viewer(),
                );
                self.spawn_work(id, reply, task, Some(noted));
            }
            Decision::Split(split) => {
                let Some(id) = id else { return };
                let noted = WorkNote::new(label, &body);
                let task = fanout::split(
                    self.owner(),
                    pool,
                    split,
                    label,
                    id.clone(),
                    body,
                    reply,
                    self.viewer(),
                );
                self.spawn_work(id, reply, task, Some(noted));
            }
            Decision::OpenLast => {
                let Some(id) = id else { return };
                let noted = WorkNote::new(label, &body);
                let task =
                    fanout::open_last(self.owner(), pool, id.clone(), body, reply, self.viewer());
                self.spawn_work(id, reply, task, Some(noted));
            }
        }
    }
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward(
        &mut self,
        f: Forward,
        label: &'static str,
        id: Option<ClientId>,
        body: &Bytes,
        reply: ReplyTo,
        pool: &Pool,
    ) {
        if let (true, Some(session)) = (f.unpin, &f.session) {
            pool.pins.unpin(session);
        }
        if label == "llmInference.httpResponseChunk" {
            self.maybe_end_exchange(body);
        }
        let sent = f.rewritten.unwrap_or_else(|| body.clone());
        if let Some(id) = id {
            let mut pending = Pending::new(f.to.name.clone(), label, reply);
            pending.bytes_in = u32::try_from(body.len()).unwrap_or(u32::MAX);
            pending.learn = methods::learn(label);
            // A second pin-table read for session requests (the gate's was for the route):
            // cheap, and it keeps the figures apart from routing.
            pending.stats = f
                .session
                .as_deref()
                .and_then(|s| pool.pins.stats(s))
                .map(|s| s.start());
            pending.session = f.session;
            pending.discover = f.discover.then(|| sent.clone());
            pending.redispatch = f.redispatch.then(|| Redispatch {
                body: sent.clone(),
                refused: Vec::new(),
            });
            if f.creates && pool.places_by_load() {
                pending.reservation = Some(Box::new(pool.pins.reserve(&f.to.name)));
            }
            self.state.wait(id, pending, pool.config.request_timeout);
        }
        self.send_to(&f.to, sent, None, pool);
    }

    /// A setup call: recorded, sent home, and copied to every other open link (whose answer
    /// the proxy consumes).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn setup(
        &mut self,
        to: Endpoint,
        replay: Replay,
        label: &'static str,
        id: Option<ClientId>,
        body: &Bytes,
        reply: ReplyTo,
        pool: &Pool,
    ) {
        let call = SetupCall {
            method: label,
            body: body.clone(),
        };
        // Only requests are recorded: a replayed call gets an id, and a notification has none.
        let Some(id) = id else {
            let sent = for_node(&call, to.token.as_ref());
            return self.send_to(&to, sent, None, pool);
        };
        self.state.record_setup(call.clone(), replay);
        {
            let mut pending = Pending::new(to.name.clone(), label, reply);
            pending.bytes_in = u32::try_from(body.len()).unwrap_or(u32::MAX);
            pending.redispatch = Some(Redispatch {
                body: body.clone(),
                refused: Vec::new(),
            });
            self.state.wait(id, pending, pool.config.request_timeout);
        }
        let others: Vec<Arc<str>> = self
            .links
            .keys()
            .filter(|n| **n != to.name)
            .cloned()
            .collect();
        let sent = for_node(&call, to.token.as_ref());
        self.send_to(&to, sent, Some(label), pool);
        for node in others {
            let internal = self.state.add_internal(
                node.clone(),
                Internal::Discard,
                pool.config.fanout_timeout,
            );
            let Some(link) = self.links.get_mut(&node) else {
                continue;
            };
            let copy = for_node(&call, link.endpoint.token.as_ref());
            if let Ok(copy) = message::with_id(&copy, &internal) {
                link.send(copy);
            }
        }
    }

    /// The client answered a request a node sent: map the id back and forward it there.
    pub(super) fn client_answer(&mut self, id: Option<&RawValue>, body: &[u8]) {
        let Some(n) = id.and_then(|raw| raw.get().parse::<u64>().ok()) else {
            return debug!("client response with an id the proxy never issued; dropped");
        };
        let Some(request) = self.state.take_server_request(n) else {
            return debug!(n, "client response for an unknown server request; dropped");
        };
        let Some(link) = self.links.get_mut(&request.upstream) else {
            return debug!(upstream = %request.upstream, "server request's link is gone; answer dropped");
        };
        if let Ok(rewritten) = message::with_id(body, &*request.id) {
            link.send(rewritten);
        }
    }

    pub(super) fn maybe_end_exchange(&mut self, body: &[u8]) {
        let Ok(msg) = serde_json::from_slice::<Value>(body) else {
            return;
        };
        let params = &msg["params"];
        let ends = params["end"] == true || !params["error"].is_null();
        if let (true, Some(request)) = (ends, params["requestId"].as_str()) {
            self.state.end_exchange(request);
        }
    }
}
