//! What a request must pass before it is sent: the caller's identity (a certificate, or the
//! token `connect` presents; the token never goes on to a node), the method policy of the
//! caller's user or tenant, and admission. Identity and policy are decided here at once;
//! admission (ownership of sessions, rate limits, one turn at a time) may need the shared
//! store, so it runs as futures answered in request order.

use super::*;
use crate::ownership;

/// A request routed and waiting for admission.
pub(crate) struct Routed {
    pub label: &'static str,
    pub id: Option<ClientId>,
    /// The request as it goes on (the client's token taken out of `connect`).
    pub body: Bytes,
    pub reply: ReplyTo,
    pub decision: Decision,
    pub pool: Arc<Pool>,
}

impl Conn {
    /// Establish or check the caller, when the listener has `identity:`. Returns the body to go
    /// on with, or `None` when the request was refused (the connection then closes).
    pub(super) fn identify(
        &mut self,
        snapshot: &Snapshot,
        listener: &ListenerRuntime,
        name: &str,
        id: Option<&str>,
        body: &Bytes,
        reply: ReplyTo,
    ) -> Option<Bytes> {
        let Some(config) = &listener.config.identity else {
            return Some(body.clone());
        };
        let mut body = body.clone();
        if name == "connect" {
            let token = token_param(&body);
            if config.from.contains(&IdentitySource::Token) {
                // The client's token is for the proxy; nodes get their own.
                body = message::without_param(&body, "token").unwrap_or(body);
            }
            let mut found = None;
            for source in &config.from {
                match source {
                    IdentitySource::ClientCert => found = self.cert.clone(),
                    IdentitySource::Token => {
                        if let Some(token) = &token {
                            let known =
                                snapshot.identities.as_ref().and_then(|i| i.by_token(token));
                            match known {
                                Some(who) => found = Some(who.clone()),
                                None => return self.refuse_identity(id, reply, "unknown token"),
                            }
                        }
                    }
                }
                if found.is_some() {
                    break;
                }
            }
            match (found, &self.caller) {
                (Some(who), Some(was)) if who != *was => {
                    return self.refuse_identity(id, reply, "the connection has another identity")
                }
                (Some(who), _) => self.caller = Some(who),
                (None, None) if config.required => {
                    return self.refuse_identity(id, reply, "an identity is required")
                }
                _ => {}
            }
        } else if self.caller.is_none() {
            // Before `connect`, a certificate is the only identity there can be.
            if config.from.contains(&IdentitySource::ClientCert) {
                self.caller = self.cert.clone();
            }
            if self.caller.is_none() && config.required {
                return self.refuse_identity(
                    id,
                    reply,
                    "an identity is required: send connect with a token first",
                );
            }
        }
        match listener.route_for(self.caller.as_ref()) {
            Some(route) => {
                if *self.pool_name != *route.pool.name() {
                    self.pool_name = Arc::from(route.pool.name());
                }
                Some(body)
            }
            None => {
                let who = self.caller.as_ref().map_or("anonymous".into(), |w| w.key());
                let msg = format!("no pool serves {who}");
                if let Some(id) = id {
                    self.reply(reply, error_for(id, FORBIDDEN, &msg, &Value::Null));
                }
                self.closing = true;
                None
            }
        }
    }

    /// `-32002` to the request (with id `null` for a notification: the client must learn why
    /// it is cut off), then the connection closes.
    fn refuse_identity(&mut self, id: Option<&str>, reply: ReplyTo, why: &str) -> Option<Bytes> {
        // Never the token: only that it was wrong or missing.
        tracing::info!(listener = %self.listener, peer = %self.peer_ip, why, "caller refused");
        let err = match id {
            Some(id) => error_for(id, AUTHENTICATION_FAILED, why, &Value::Null),
            None => message::error_response(None, AUTHENTICATION_FAILED, why, None),
        };
        self.reply(reply, err);
        self.closing = true;
        None
    }

    /// A request admission refused, by reason (`sessiongate_admission_rejected_total`).
    pub(super) fn count_refusal(&self, reason: &str) {
        self.ctx
            .metrics
            .admission_rejected_total
            .with_label_values(&[&self.listener, reason])
            .inc();
    }

    /// May the caller call `name`? Without identities, anything may be called.
    pub(super) fn policy(&self, snapshot: &Snapshot, name: &str) -> Result<(), String> {
        let (Some(caller), Some(identities)) = (&self.caller, &snapshot.identities) else {
            return Ok(());
        };
        if identities.allows(caller, name) {
            Ok(())
        } else {
            Err(format!("method {name} is not allowed for {}", caller.key()))
        }
    }

    /// Admit a routed request: at once when nothing needs the shared store, else in order
    /// behind the ones already waiting (their checks run concurrently, their verdicts are
    /// taken in request order). A send that must wait for its session's turn leaves the line
    /// and waits on its own, so it holds up nothing else.
    pub(super) fn admit(
        &mut self,
        listener: &ListenerRuntime,
        snapshot: &Snapshot,
        routed: Routed,
    ) {
        let gates = self.gates(listener, snapshot, &routed);
        let recall = to_recall(&routed);
        if gates.is_none() && recall.is_none() && self.admissions.is_empty() {
            return self.dispatch(routed);
        }
        if let Some(id) = &routed.id {
            self.state.lent(id.clone());
        }
        let admission: Admission = Box::pin(async move {
            let mut routed = routed;
            if let Some(session) = recall {
                recall_pin(&mut routed, &session).await;
            }
            let verdict = match gates {
                None => Verdict::Pass(None),
                Some(gates) => gates.check(&routed).await,
            };
            (routed, verdict)
        });
        self.admissions.push_back(admission);
    }

    /// A request's admission is decided (or, for a send, its wait for the turn begins).
    pub(super) fn admitted(&mut self, (routed, verdict): (Routed, Verdict)) {
        let lock = match verdict {
            Verdict::Pass(lock) => lock,
            Verdict::WaitTurn(lock) => {
                let (store, queues) = (self.ctx.store.clone(), self.ctx.turn_queues.clone());
                let wait: Admission = Box::pin(async move {
                    let verdict = match queues.wait(&store, &lock).await {
                        Ok(()) => Verdict::Pass(Some(lock)),
                        Err(why) => busy(why),
                    };
                    (routed, verdict)
                });
                return self.turn_waits.push(wait);
            }
            Verdict::Refuse(code, message, data) => {
                let reason = match code {
                    RATE_LIMITED => "rate_limited",
                    SESSION_BUSY => "busy",
                    _ => "forbidden",
                };
                self.count_refusal(reason);
                if let Some(id) = &routed.id {
                    self.state.returned(id);
                    let answer = error_for(id, code, &message, &data);
                    self.log_refused(routed.label, routed.body.len(), answer.len());
                    self.reply(routed.reply, answer);
                }
                return;
            }
        };
        if let Some(id) = &routed.id {
            self.state.returned(id);
        }
        if let (Some(lock), Decision::Forward(f)) = (lock, &routed.decision) {
            if let Some(session) = &f.session {
                self.begin_turn(session.clone(), f.to.name.clone(), lock);
            }
        }
        self.dispatch(routed);
    }

    /// What `routed` must pass, if anything.
    fn gates(
        &mut self,
        listener: &ListenerRuntime,
        snapshot: &Snapshot,
        routed: &Routed,
    ) -> Option<Gates> {
        let limits = &listener.config.limits;
        let session = match &routed.decision {
            Decision::Forward(f) => f.session.clone(),
            _ => None,
        };
        let ownership = self.owner_name().is_some() && session.is_some();
        let turn = match (routed.pool.config.turns, &session) {
            (Some(limit), Some(s)) if TURN_METHODS.contains(&routed.label) => {
                let holder = self.turn_holder();
                Some(TurnLock::new(routed.pool.name(), s, holder, limit))
            }
            _ => None,
        };
        if !limits.any() && !ownership && turn.is_none() {
            return None;
        }
        let creates = matches!(&routed.decision, Decision::Forward(f) if f.creates);
        let generated = matches!(&routed.decision, Decision::Forward(f) if f.rewritten.is_some());
        Some(Gates {
            ctx: self.ctx.clone(),
            owner: self.owner(),
            caller: self.caller.clone(),
            identities: snapshot.identities.clone().filter(|_| ownership),
            limits: limits.clone(),
            caller_key: limits::caller_key(self.caller.as_ref(), self.peer_ip),
            session,
            creates: creates && !generated,
            generated,
            turn,
        })
    }

    /// Whose a session this connection creates becomes, when ownership applies: its caller's
    /// user (`""` for callers without identity on a listener where it is optional).
    pub(super) fn owner_name(&self) -> Option<Arc<str>> {
        if !self.binds {
            return None;
        }
        Some(
            self.caller
                .as_ref()
                .map_or_else(|| Arc::from(""), |c| c.user.clone()),
        )
    }

    /// What the caller may see of the fleet's sessions, when sessions have owners here.
    pub(super) fn viewer(&self) -> Option<Arc<fanout::Viewer>> {
        let user = self.owner_name()?;
        let identities = self.ctx.shared.load().identities.clone()?;
        let who = match &self.caller {
            Some(who) => who.clone(),
            None => Identity { user, tenant: None },
        };
        Some(Arc::new(fanout::Viewer {
            store: self.ctx.store.clone(),
            who,
            identities,
        }))
    }

    /// May the caller hear of `session`, named by a node's `session.lifecycle` notification
    /// (sent to every connection of the node)? Decided on the owners this process knows, as a
    /// notification cannot wait for the shared store: a session bound only in Redis (made
    /// through another replica) counts as unowned.
    pub(super) fn may_hear_of(&self, session: Option<&str>) -> bool {
        let (Some(user), Some(session)) = (self.owner_name(), session) else {
            return true;
        };
        let Some(identities) = self.ctx.shared.load().identities.clone() else {
            return true;
        };
        let who = match &self.caller {
            Some(who) => who.clone(),
            None => Identity { user, tenant: None },
        };
        let owner = self.ctx.store.known_owner(&self.pool_name, session);
        identities.may_touch(&who, session, owner.as_deref())
    }

    /// The caller's new session `session` is the caller's: bound in this process at once (the
    /// next request sees it), in the shared store soon after.
    pub(super) fn bind(&mut self, pool: &Pool, session: &str) {
        let (Some(user), Some(ttl)) = (self.owner_name(), self.binding_ttl()) else {
            return;
        };
        let write = self.ctx.store.bind(pool.name(), session, &user, ttl);
        self.store_tasks.spawn(write);
    }

    /// `session` was deleted: its binding goes.
    pub(super) fn unbind(&mut self, pool: &Pool, session: &str) {
        if self.owner_name().is_none() {
            return;
        }
        let write = self.ctx.store.unbind(pool.name(), session);
        self.store_tasks.spawn(write);
    }

    fn binding_ttl(&self) -> Option<std::time::Duration> {
        let snapshot = self.ctx.shared.load();
        snapshot.identities.as_ref().map(|i| i.config.binding_ttl)
    }
}

/// The session whose pin to ask the shared pins for before `routed` goes: one this replica
/// does not know (a restart, or made through another replica), of a pool with `redis:`. A
/// create needs none: its node is chosen here.
fn to_recall(routed: &Routed) -> Option<Arc<str>> {
    let Decision::Forward(f) = &routed.decision else {
        return None;
    };
    let session = f.session.as_ref().filter(|_| !f.creates)?;
    let pins = &routed.pool.pins;
    (pins.shared().is_some() && pins.get(session).is_none()).then(|| session.clone())
}

/// Ask the shared pins where `session` lives; if a replica recorded it, route `routed` there
/// instead of by the ring (and without owner discovery).
async fn recall_pin(routed: &mut Routed, session: &str) {
    if routed.pool.recall_pin(session).await.is_none() {
        return;
    }
    if let Decision::Forward(f) = &routed.decision {
        routed.decision = route::with_recalled_pin(&routed.pool, session, f);
    }
}

/// What admission decided about a request.
pub(crate) enum Verdict {
    /// Go on, with the turn lock taken if the request needed one.
    Pass(Option<TurnLock>),
    /// A send whose session's turn is taken: wait for it.
    WaitTurn(TurnLock),
    /// Refused: code, message, data.
    Refuse(i64, String, Value),
}

type Refusal = (i64, String, Value);

fn busy(why: NoTurn) -> Verdict {
    Verdict::Refuse(
        SESSION_BUSY,
        format!("the session is busy with another turn ({})", why.reason()),
        json!({ "retryAfterMs": 1000 }),
    )
}
pub(crate) type Admission =
    std::pin::Pin<Box<dyn std::future::Future<Output = (Routed, Verdict)> + Send>>;

/// What one request must pass, with all it needs to find out.
struct Gates {
    ctx: Context,
    owner: Owner,
    caller: Option<Identity>,
    /// Set when ownership applies.
    identities: Option<Arc<Identities>>,
    limits: Limits,
    /// `user:<tenant/user>`, or `ip:<address>` without an identity.
    caller_key: String,
    /// The session to check ownership of.
    session: Option<Arc<str>>,
    /// The request creates `session` with an id the client chose.
    creates: bool,
    /// The request creates `session` with a fresh id the proxy chose: nobody's yet.
    generated: bool,
    turn: Option<TurnLock>,
}

impl Gates {
    /// The caller's limits, ownership, then the session's limit (so nobody refused a session
    /// uses up its owner's allowance), then the turn.
    async fn check(self, routed: &Routed) -> Verdict {
        let store = &self.ctx.store;
        let caller = limits::check_caller(store, &self.limits, &self.caller_key, routed.label);
        if let Err(limited) = caller.await {
            return rate_limited(limited);
        }
        if let Err((code, message, data)) = self.ownership(routed).await {
            return Verdict::Refuse(code, message, data);
        }
        let session = match &routed.decision {
            Decision::Forward(f) => f.session.as_deref(),
            _ => None,
        };
        if let Some(session) = session {
            let pool = routed.pool.name();
            let limit = limits::check_session(store, &self.limits, pool, session);
            if let Err(limited) = limit.await {
                return rate_limited(limited);
            }
        }
        match self.turn {
            Some(lock) => Verdict::WaitTurn(lock),
            None => Verdict::Pass(None),
        }
    }

    async fn ownership(&self, routed: &Routed) -> Result<(), Refusal> {
        let (Some(identities), Some(session)) = (&self.identities, &self.session) else {
            return Ok(());
        };
        let anonymous = Identity {
            user: Arc::from(""),
            tenant: None,
        };
        let who = self.caller.as_ref().unwrap_or(&anonymous);
        let how = match (self.creates, self.generated) {
            (_, true) => ownership::Use::Generated,
            (true, false) => ownership::Use::Create,
            (false, false) => ownership::Use::Existing,
        };
        let fleet_holds = fanout::held_by_fleet(&self.owner, &routed.pool, session);
        let pool = routed.pool.name();
        match ownership::may_use(
            &self.ctx.store,
            identities,
            pool,
            who,
            session,
            how,
            fleet_holds,
        )
        .await
        {
            true => Ok(()),
            false => Err((
                FORBIDDEN,
                format!("session {session} belongs to another user"),
                Value::Null,
            )),
        }
    }
}

fn rate_limited(limited: limits::Limited) -> Verdict {
    let data = json!({ "retryAfterMs": limited.retry_after_ms() });
    Verdict::Refuse(RATE_LIMITED, limited.message(), data)
}

/// `params.token` of a `connect`, if it is a string.
fn token_param(body: &[u8]) -> Option<String> {
    let msg: Value = serde_json::from_slice(body).ok()?;
    msg.pointer("/params/token")?.as_str().map(str::to_owned)
}
