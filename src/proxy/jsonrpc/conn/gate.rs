//! What a request must pass before it is sent: the caller's identity (a certificate, or the
//! token `connect` presents; the token never goes on to a node), the method policy of the
//! caller's user or tenant, and admission. Identity and policy are decided here at once;
//! admission (ownership of sessions, rate limits, one turn at a time) may need the shared
//! store, so it runs as futures answered in request order.

use super::*;

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
        let err = match id {
            Some(id) => error_for(id, AUTHENTICATION_FAILED, why, &Value::Null),
            None => message::error_response(None, AUTHENTICATION_FAILED, why, None),
        };
        self.reply(reply, err);
        self.closing = true;
        None
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
    /// behind the ones already waiting.
    pub(super) fn admit(&mut self, routed: Routed) {
        self.dispatch(routed);
    }
}

/// `params.token` of a `connect`, if it is a string.
fn token_param(body: &[u8]) -> Option<String> {
    let msg: Value = serde_json::from_slice(body).ok()?;
    msg.pointer("/params/token")?.as_str().map(str::to_owned)
}
