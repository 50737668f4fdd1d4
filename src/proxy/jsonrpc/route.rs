//! The routing decision: from a client request, the pool as it is now, and the facts of the
//! client's connection, to where the request goes. It reads the pin table and upstream health
//! and changes nothing (the caller applies what the decision says), so it is table-tested
//! without sockets.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use super::methods::{self, Class, Create, Field, Merge, Replay, Split};
use super::state::HashMap;
use crate::config::{OnOwnerDown, Storage};
use crate::snapshot::{NewPlacement, Pool};
use crate::upstream::Endpoint;
use crate::wire::message::{self, FLEET_FULL, INVALID_REQUEST, SERVER_UNAVAILABLE};

/// A client request, as routing sees it.
pub struct Request<'a> {
    pub method: &'a str,
    pub class: Class,
    /// `params.sessionId`, read with the envelope.
    pub session: Option<&'a str>,
    /// The whole message, for the few classes that read other parameters.
    pub body: &'a Bytes,
}

/// What routing needs to know about the client's connection.
pub struct ConnFacts<'a> {
    /// The key whose ring owner is the connection's home node.
    pub home_key: &'a [u8],
    /// Exchanges a node began with the client (LLM inference `requestId` → node).
    pub exchanges: &'a HashMap<Box<str>, Arc<str>>,
    /// Makes the id of a session the client asked to create without one.
    pub new_session_id: &'a dyn Fn() -> String,
}

/// Where a request goes.
#[derive(Debug, PartialEq)]
pub enum Decision {
    /// To one node.
    Forward(Forward),
    /// Connection setup: to the home node, recorded and replayed on every other link.
    Setup { to: Endpoint, replay: Replay },
    /// To every available node, answers merged.
    FanOut(Merge),
    /// The session list split by owner, answers merged.
    Split(Split),
    /// `sessions.open` resume-last: find the fleet's most relevant session, resume it there.
    OpenLast,
    /// Answered by the proxy with an error; nothing is sent.
    Refuse(Refusal),
}

/// A request for one node.
#[derive(Debug, PartialEq)]
pub struct Forward {
    pub to: Endpoint,
    /// The session the request is about (metrics, pins).
    pub session: Option<Arc<str>>,
    /// The body to send instead of the client's (the proxy chose the new session's id).
    pub rewritten: Option<Bytes>,
    /// No pin existed: if `to` does not have the session, ask the rest of the fleet.
    pub discover: bool,
    /// Not bound to a session that exists: if `to` refuses the link, the next usable node
    /// clockwise may take it (HAProxy's `option redispatch`).
    pub redispatch: bool,
    /// The session's pinned node is down and the pool fails over: forget the pin.
    pub unpin: bool,
    /// The request makes `session` (a create): nobody may own it yet.
    pub creates: bool,
    /// A new session placed away from the ring's choice (this node) by bounded load or caps.
    pub spilled_from: Option<Arc<str>>,
}

/// Why the proxy answers a request itself.
#[derive(Debug, PartialEq)]
pub struct Refusal {
    pub code: i64,
    pub message: String,
    /// The node concerned, for `data.upstream`.
    pub upstream: Option<Arc<str>>,
}

impl Refusal {
    fn unavailable(message: String, upstream: Option<Arc<str>>) -> Decision {
        Decision::Refuse(Refusal {
            code: SERVER_UNAVAILABLE,
            message,
            upstream,
        })
    }

    fn invalid(message: String) -> Decision {
        Decision::Refuse(Refusal {
            code: INVALID_REQUEST,
            message,
            upstream: None,
        })
    }
}

/// Decide where `req` goes.
pub fn decide(req: &Request<'_>, pool: &Pool, facts: &ConnFacts<'_>) -> Decision {
    match req.class {
        Class::Setup(replay) => match home(pool, facts) {
            Ok(to) => Decision::Setup { to, replay },
            Err(refusal) => refusal,
        },
        // Any node may answer a read: it may move on if home refuses the link. A write to a
        // node, or a method the proxy does not know, goes home or nowhere.
        Class::GlobalRead => to_home(pool, facts, true),
        Class::NodeWrite => to_home(pool, facts, false),
        Class::Session(field) => match session_param(req, field) {
            Some(sid) => to_session(pool, &sid, methods::discovers_owner(req.method)),
            None => to_home(pool, facts, false),
        },
        Class::Unknown => match req.session {
            Some(sid) => to_session(pool, sid, false),
            None => to_home(pool, facts, false),
        },
        Class::Create(Create::New) => match req.session {
            Some(sid) => to_new_session(pool, sid, None),
            None => {
                let sid = (facts.new_session_id)();
                match message::with_param(req.body, "sessionId", Value::String(sid.clone())) {
                    Ok(body) => to_new_session(pool, &sid, Some(body)),
                    Err(e) => Refusal::invalid(e.to_string()),
                }
            }
        },
        Class::Create(Create::FromSession) => match req.session {
            Some(sid) => to_session(pool, sid, methods::discovers_owner(req.method)),
            None => to_home(pool, facts, false),
        },
        Class::Open => open(req, pool, facts),
        Class::FanOut(merge) => Decision::FanOut(merge),
        Class::Split(split) => Decision::Split(split),
        Class::ReplyTo => {
            let node = params(req.body)
                .and_then(|p| p.get("requestId")?.as_str().map(str::to_owned))
                .and_then(|id| facts.exchanges.get(id.as_str()).cloned());
            match node.and_then(|n| pool.upstream(&n).map(|u| u.endpoint.clone())) {
                Some(to) => Decision::Forward(Forward::plain(to, None)),
                None => to_home(pool, facts, false),
            }
        }
    }
}

/// `sessions.open` by `params.kind`.
fn open(req: &Request<'_>, pool: &Pool, facts: &ConnFacts<'_>) -> Decision {
    let Some(params) = params(req.body) else {
        return to_home(pool, facts, false);
    };
    let kind = params.get("kind").and_then(Value::as_str).unwrap_or("");
    let option_id = params
        .pointer("/options/sessionId")
        .and_then(Value::as_str)
        .map(str::to_owned);
    match kind {
        "resume" | "attach" => match req.session {
            Some(sid) => to_session(pool, sid, kind == "resume"),
            None => to_home(pool, facts, false),
        },
        "resumeLast" => Decision::OpenLast,
        "create" => match option_id {
            Some(sid) => to_new_session(pool, &sid, None),
            None => {
                let sid = (facts.new_session_id)();
                let mut params = params;
                match params.as_object_mut() {
                    Some(obj) => {
                        let options = obj
                            .entry("options")
                            .or_insert_with(|| Value::Object(Default::default()));
                        if let Some(options) = options.as_object_mut() {
                            options.insert("sessionId".into(), Value::String(sid.clone()));
                        }
                    }
                    None => return to_home(pool, facts, false),
                }
                match message::with_param_value(req.body, params) {
                    Ok(body) => to_new_session(pool, &sid, Some(body)),
                    Err(e) => Refusal::invalid(e.to_string()),
                }
            }
        },
        // Remote, cloud and handoff sessions: placed on the ring by the id they come with.
        "remote" | "cloud" | "handoff" => {
            let key = option_id
                .or_else(|| {
                    params
                        .get("remoteSessionId")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| (facts.new_session_id)());
            to_new_session(pool, &key, None)
        }
        _ => to_home(pool, facts, false),
    }
}

/// The session a request names in `field`.
fn session_param(req: &Request<'_>, field: Field) -> Option<String> {
    match field {
        Field::SessionId => req.session.map(str::to_owned),
        other => params(req.body)?
            .get(other.name())?
            .as_str()
            .map(str::to_owned),
    }
}

/// The `params` of a message, parsed (only for the rare methods that need more than the
/// envelope).
fn params(body: &[u8]) -> Option<Value> {
    let mut msg: Value = serde_json::from_slice(body).ok()?;
    Some(msg.get_mut("params")?.take())
}

/// The connection's home node: the node that takes new work for its home key.
fn home(pool: &Pool, facts: &ConnFacts<'_>) -> Result<Endpoint, Decision> {
    pool.route(facts.home_key)
        .map(|u| u.endpoint.clone())
        .ok_or_else(|| no_node(pool))
}

fn to_home(pool: &Pool, facts: &ConnFacts<'_>, redispatch: bool) -> Decision {
    match home(pool, facts) {
        Ok(to) => Decision::Forward(Forward {
            redispatch,
            ..Forward::plain(to, None)
        }),
        Err(refusal) => refusal,
    }
}

fn no_node(pool: &Pool) -> Decision {
    Refusal::unavailable(
        format!("no server in pool {} can take work", pool.name()),
        None,
    )
}

/// An existing session: its pin, else its ring owner. `discover`: the method loads the
/// session, so a miss without a pin is worth asking the rest of the fleet about.
fn to_session(pool: &Pool, sid: &str, discover: bool) -> Decision {
    let session = Some(Arc::from(sid));
    let Some(pin) = pool.pins.get(sid) else {
        return match pool.route(sid.as_bytes()) {
            Some(u) => Decision::Forward(Forward {
                // On shared storage every node has every session: nothing to look for.
                discover: discover
                    && pool.upstreams.len() > 1
                    && pool.config.storage == Storage::PerNode,
                ..Forward::plain(u.endpoint.clone(), session)
            }),
            None => no_node(pool),
        };
    };
    match pool.upstream(&pin.upstream) {
        Some(u) if !u.state.is_available() => match pool.config.on_owner_down {
            OnOwnerDown::Error | OnOwnerDown::NotFound => Refusal::unavailable(
                format!("session {sid}: its server {} is unavailable", pin.upstream),
                Some(pin.upstream.clone()),
            ),
            // Shared storage: any node can load it; re-place it on the ring.
            OnOwnerDown::Failover => match pool.route(sid.as_bytes()) {
                Some(u) => Decision::Forward(Forward {
                    unpin: true,
                    ..Forward::plain(u.endpoint.clone(), session)
                }),
                None => no_node(pool),
            },
        },
        // Includes a node a reload removed that still drains its pinned sessions.
        _ => Decision::Forward(Forward::plain(pool.pinned_endpoint(&pin), session)),
    }
}

/// `f` was decided while this replica had no pin for `sid`; the shared pins have just given
/// one: decide again, keeping the request as rewritten.
pub fn with_recalled_pin(pool: &Pool, sid: &str, f: &Forward) -> Decision {
    match to_session(pool, sid, f.discover) {
        Decision::Forward(again) => Decision::Forward(Forward {
            rewritten: f.rewritten.clone(),
            ..again
        }),
        other => other,
    }
}

/// A session being created: its pin if the id is live already (the node answers that), else
/// the ring; the create may move on if that node refuses the link, as the session does not
/// exist yet.
fn to_new_session(pool: &Pool, sid: &str, rewritten: Option<Bytes>) -> Decision {
    if pool.pins.get(sid).is_some() {
        return match to_session(pool, sid, false) {
            Decision::Forward(f) => Decision::Forward(Forward {
                rewritten,
                creates: true,
                ..f
            }),
            other => other,
        };
    }
    match pool.place_new(sid.as_bytes()) {
        NewPlacement::At {
            index,
            spilled_from,
        } => Decision::Forward(Forward {
            rewritten,
            // Placed by load, the session must land where it was placed.
            redispatch: spilled_from.is_none() && pool.config.load_factor.is_none(),
            creates: true,
            spilled_from: spilled_from.map(|i| Arc::from(pool.upstreams[i].name())),
            ..Forward::plain(pool.upstreams[index].endpoint.clone(), Some(Arc::from(sid)))
        }),
        NewPlacement::Full => Decision::Refuse(Refusal {
            code: FLEET_FULL,
            message: format!(
                "every server in pool {} holds its maximum of live sessions",
                pool.name()
            ),
            upstream: None,
        }),
        NewPlacement::NoNode => no_node(pool),
    }
}

impl Forward {
    fn plain(to: Endpoint, session: Option<Arc<str>>) -> Forward {
        Forward {
            to,
            session,
            rewritten: None,
            discover: false,
            redispatch: false,
            unpin: false,
            creates: false,
            spilled_from: None,
        }
    }
}

#[cfg(test)]
mod tests;
