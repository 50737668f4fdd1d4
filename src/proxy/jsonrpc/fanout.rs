//! Requests that need several nodes, each a task of its connection that talks to the
//! connection's task through a small handle ([`Owner`]): fan-outs (the request to every
//! available node, answers merged), splits (a list of sessions cut by owner, answers merged in
//! request order), resume-last (the fleet's most relevant session, resumed where it lives), and
//! owner discovery (a session the proxy has no pin for, looked up on the rest of the fleet with
//! `sessions.getClientMetadata`, which also knows sessions that never got a message).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::join_all;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info};

use super::conn::{Event, RETRY_AFTER_MS};
use super::merge;
use super::methods::{Learn, Merge, Split};
use super::state::{ClientId, Pending, ReplyTo};
use crate::config::{FanoutFailure, OnOwnerDown};
use crate::metrics::Metrics;
use crate::snapshot::Pool;
use crate::upstream::Endpoint;
use crate::wire::message::{self, FORBIDDEN, SERVER_UNAVAILABLE};

mod view;
pub use view::Viewer;

/// sessiongate: the request's params are not what its method takes.
const INVALID_PARAMS: i64 = -32602;

/// The handle a fan-out task holds on its connection.
#[derive(Clone)]
pub struct Owner {
    events: mpsc::Sender<Event>,
    metrics: Metrics,
    pool_name: Arc<str>,
}

/// One node's answer to a fan-out: its `result`, or why there is none.
enum Answer {
    Result(Value),
    /// A JSON-RPC error, or no answer in time.
    Failed(String),
}

impl Owner {
    pub fn new(events: mpsc::Sender<Event>, metrics: Metrics, pool_name: Arc<str>) -> Owner {
        Owner {
            events,
            metrics,
            pool_name,
        }
    }

    /// Ask `to` (the connection replaces the id and enforces the fan-out timeout).
    async fn ask(&self, to: &Endpoint, body: Bytes) -> Answer {
        let (reply, answer) = oneshot::channel();
        let event = Event::Ask {
            to: to.clone(),
            body,
            reply,
        };
        if self.events.send(event).await.is_err() {
            return Answer::Failed("connection closing".into());
        }
        let Ok(Some(answer)) = answer.await else {
            return Answer::Failed("no answer in time".into());
        };
        match serde_json::from_slice::<Value>(&answer) {
            Ok(mut msg) => match msg.get_mut("result") {
                Some(result) => Answer::Result(result.take()),
                None => Answer::Failed(
                    msg.pointer("/error/message")
                        .and_then(Value::as_str)
                        .unwrap_or("error")
                        .to_owned(),
                ),
            },
            Err(e) => Answer::Failed(format!("unparseable answer: {e}")),
        }
    }

    /// Ask each target the same thing at once.
    async fn ask_all(&self, targets: &[Endpoint], body: &Bytes) -> Vec<Answer> {
        join_all(targets.iter().map(|t| self.ask(t, body.clone()))).await
    }

    async fn send(&self, event: Event) {
        let _ = self.events.send(event).await;
    }

    async fn answer(&self, id: ClientId, reply: ReplyTo, body: Bytes) {
        self.send(Event::Answer { id, reply, body }).await;
    }

    async fn result(&self, id: ClientId, reply: ReplyTo, result: &Value) {
        let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{result}}}"#);
        self.answer(id, reply, Bytes::from(body)).await;
    }

    async fn error(&self, id: ClientId, reply: ReplyTo, code: i64, message: &str, data: Value) {
        let raw = serde_json::value::RawValue::from_string(id.to_string()).ok();
        let data = (!data.is_null()).then_some(&data);
        let body = message::error_response(raw.as_deref(), code, message, data);
        self.answer(id, reply, body).await;
    }

    fn skipped(&self, node: &str) {
        self.metrics
            .fanout_skipped_total
            .with_label_values(&[&self.pool_name, node])
            .inc();
    }

    fn discovered(&self, found: bool) {
        let result = if found { "found" } else { "not_found" };
        self.metrics
            .owner_discovery_total
            .with_label_values(&[&self.pool_name, result])
            .inc();
    }

    fn timed(&self, method: &'static str, started: Instant) {
        self.metrics
            .jsonrpc_request_duration
            .with_label_values(&[&self.pool_name, method])
            .observe(started.elapsed().as_secs_f64());
    }
}

/// Every node that can serve now, in pool order.
fn available(pool: &Pool) -> Vec<Endpoint> {
    pool.upstreams
        .iter()
        .filter(|u| u.state.is_available())
        .map(|u| u.endpoint.clone())
        .collect()
}

fn request(method: &str, params: Value) -> Bytes {
    let body = json!({ "jsonrpc": "2.0", "id": 0, "method": method, "params": params });
    Bytes::from(body.to_string())
}

fn params_of(body: &[u8]) -> Value {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|mut m| m.get_mut("params").map(Value::take))
        .unwrap_or(Value::Null)
}

/// The answers of a fan-out, sorted.
struct Sorted {
    /// The results, with the node that gave each, in target order.
    results: Vec<(Endpoint, Value)>,
    /// The nodes that gave none, and why.
    failed: Vec<(Arc<str>, String)>,
}

/// Sort answers into results (with their nodes) and the nodes that failed, counting these.
fn sort_answers(owner: &Owner, targets: &[Endpoint], answers: Vec<Answer>) -> Sorted {
    let mut results = Vec::new();
    let mut failed = Vec::new();
    for (target, answer) in targets.iter().zip(answers) {
        match answer {
            Answer::Result(r) => results.push((target.clone(), r)),
            Answer::Failed(why) => {
                owner.skipped(&target.name);
                debug!(upstream = %target.name, why, "fan-out: no result from a node");
                failed.push((target.name.clone(), why));
            }
        }
    }
    Sorted { results, failed }
}

/// The policy's verdict on a fan-out where `failed` nodes gave no result: `Some(error)` to
/// answer instead of merging.
fn refusal(
    pool: &Pool,
    method: &str,
    answered: usize,
    failed: &[(Arc<str>, String)],
) -> Option<(String, Value)> {
    if let (FanoutFailure::Closed, Some((node, why))) = (pool.config.fanout_failure, failed.first())
    {
        return Some((
            format!("{method}: server {node} gave no answer ({why})"),
            json!({ "retryAfterMs": RETRY_AFTER_MS, "upstream": &**node }),
        ));
    }
    (answered == 0).then(|| {
        (
            format!("{method}: no server in pool {} answered", pool.name()),
            json!({ "retryAfterMs": RETRY_AFTER_MS }),
        )
    })
}

/// A fan-out: the client's request to every available node, the results merged by `kind`;
/// with a `viewer`, kept to (and acting on) the viewer's sessions.
#[allow(clippy::too_many_arguments)]
pub async fn fan_out(
    owner: Owner,
    pool: Arc<Pool>,
    kind: Merge,
    method: &'static str,
    id: ClientId,
    body: Bytes,
    reply: ReplyTo,
    viewer: Option<Arc<Viewer>>,
) {
    let started = Instant::now();
    let targets = available(&pool);
    if let Some(viewer) = &viewer {
        if let Some(merged) =
            view::viewed(&owner, &pool, viewer, kind, method, &targets, &body).await
        {
            return match merged {
                Ok(merged) => {
                    owner.timed(method, started);
                    owner.result(id, reply, &merged).await
                }
                Err((msg, data)) => owner.error(id, reply, SERVER_UNAVAILABLE, &msg, data).await,
            };
        }
    }
    // Ordering ids across nodes needs their modification times: read alongside.
    let times = async {
        match kind {
            Merge::NewestIds => {
                let list = request("sessions.list", json!({ "metadataLimit": 0 }));
                owner.ask_all(&targets, &list).await
            }
            _ => Vec::new(),
        }
    };
    let (answers, times) = tokio::join!(owner.ask_all(&targets, &body), times);
    let Sorted {
        mut results,
        failed,
    } = sort_answers(&owner, &targets, answers);
    if let Some((msg, data)) = refusal(&pool, method, results.len(), &failed) {
        return owner.error(id, reply, SERVER_UNAVAILABLE, &msg, data).await;
    }
    if let Some(viewer) = &viewer {
        for (_, result) in &mut results {
            viewer.filter(pool.name(), kind, result).await;
        }
    }
    let merged = match kind {
        Merge::NewestSession => newest_of(&owner, &results).await,
        Merge::UniqueId => {
            let prefix = params_of(&body)["prefix"].as_str().unwrap_or("").to_owned();
            match unique_match(&owner, &prefix, results).await {
                Ok(merged) => merged,
                // A node that could not say whether it has a match makes the answer a guess.
                Err(failed) => match refusal(&pool, method, 1, &[failed]) {
                    Some((msg, data)) => {
                        return owner.error(id, reply, SERVER_UNAVAILABLE, &msg, data).await
                    }
                    None => json!({}),
                },
            }
        }
        Merge::NewestIds => {
            let mut modified = HashMap::new();
            for answer in times {
                if let Answer::Result(list) = answer {
                    for s in merge::session_list([list]) {
                        if let (Some(id), Some(t)) =
                            (s["sessionId"].as_str(), s["modifiedTime"].as_str())
                        {
                            modified.insert(id.to_owned(), t.to_owned());
                        }
                    }
                }
            }
            let limit = params_of(&body)["limit"].as_u64().map(|n| n as usize);
            let per_node = results.iter().map(|(_, r)| merge::session_ids(r)).collect();
            merge::newest_ids(per_node, &modified, limit)
        }
        Merge::Prune => {
            let merged = merge::prune(results.into_iter().map(|(_, r)| r).collect());
            if merged["dryRun"] == false {
                for deleted in merged["deleted"].as_array().into_iter().flatten() {
                    if let Some(s) = deleted.as_str() {
                        pool.pins.unpin(s);
                    }
                }
            }
            merged
        }
        other => merge::results(other, results.into_iter().map(|(_, r)| r).collect()),
    };
    owner.timed(method, started);
    owner.result(id.clone(), reply, &merged).await;
}

/// The one session a prefix names fleet-wide. A node answers nothing both when none of its
/// sessions match and when several do, so when exactly one node found one, the nodes that
/// found none are asked for their session ids (`sessions.getSizes`): any match there makes the
/// prefix ambiguous.
async fn unique_match(
    owner: &Owner,
    prefix: &str,
    results: Vec<(Endpoint, Value)>,
) -> Result<Value, (Arc<str>, String)> {
    let (found, silent): (Vec<_>, Vec<_>) = results
        .into_iter()
        .partition(|(_, r)| r.get("sessionId").is_some());
    let merged = merge::unique_id(found.into_iter().map(|(_, r)| r).collect());
    if merged.get("sessionId").is_none() || silent.is_empty() {
        return Ok(merged);
    }
    let nodes: Vec<Endpoint> = silent.into_iter().map(|(node, _)| node).collect();
    let sizes = owner
        .ask_all(&nodes, &request("sessions.getSizes", json!({})))
        .await;
    let mut elsewhere = false;
    for (node, answer) in nodes.iter().zip(sizes) {
        match answer {
            Answer::Result(r) => {
                elsewhere |= r["sizes"]
                    .as_object()
                    .is_some_and(|ids| ids.keys().any(|id| id.starts_with(prefix)));
            }
            Answer::Failed(why) => {
                owner.skipped(&node.name);
                return Err((node.name.clone(), why));
            }
        }
    }
    Ok(if elsewhere { json!({}) } else { merged })
}

/// Of the sessions the nodes proposed, the one modified last (its node's metadata says when).
async fn newest_of(owner: &Owner, results: &[(Endpoint, Value)]) -> Value {
    newest_candidate(owner, results)
        .await
        .map_or_else(|| json!({}), |(_, id)| json!({ "sessionId": id }))
}

async fn newest_candidate(
    owner: &Owner,
    results: &[(Endpoint, Value)],
) -> Option<(Endpoint, String)> {
    let candidates: Vec<(Endpoint, String)> = results
        .iter()
        .filter_map(|(node, r)| Some((node.clone(), r["sessionId"].as_str()?.to_owned())))
        .collect();
    if candidates.len() <= 1 {
        return candidates.into_iter().next();
    }
    let times = join_all(candidates.iter().map(|(node, sid)| {
        owner.ask(
            node,
            request("sessions.getMetadata", json!({ "sessionId": sid })),
        )
    }))
    .await;
    let dated: Vec<(String, Option<String>)> = candidates
        .iter()
        .zip(times)
        .map(|((_, sid), answer)| {
            let t = match answer {
                Answer::Result(r) => r
                    .pointer("/session/modifiedTime")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                Answer::Failed(_) => None,
            };
            (sid.clone(), t)
        })
        .collect();
    let newest = merge::newest_session(dated);
    let sid = newest["sessionId"].as_str()?;
    candidates.into_iter().find(|(_, s)| s == sid)
}

/// A request over a list of sessions: each session to its owner (pin, else the node the fleet
/// says has it, else the ring owner), the answers merged in request order. With a `viewer`,
/// the ids of sessions the viewer may not touch are refused (named in `refusedSessionIds`, or
/// as `unavailable` entries of a list answer); when all are, the request is.
#[allow(clippy::too_many_arguments)]
pub async fn split(
    owner: Owner,
    pool: Arc<Pool>,
    kind: Split,
    method: &'static str,
    id: ClientId,
    body: Bytes,
    reply: ReplyTo,
    viewer: Option<Arc<Viewer>>,
) {
    let started = Instant::now();
    let params = params_of(&body);
    let Some(mut elements) = merge::split_elements(kind, &params) else {
        let msg = format!("{method}: params.{} must be a list", kind.list_field());
        return owner
            .error(id, reply, INVALID_PARAMS, &msg, Value::Null)
            .await;
    };
    let mut refused = Vec::new();
    if let Some(viewer) = &viewer {
        let ids: Vec<String> = elements.iter().map(|(sid, _)| sid.clone()).collect();
        let others = view::refused(viewer, pool.name(), &ids).await;
        if !others.is_empty() {
            elements.retain(|(sid, _)| !others.contains(sid));
            refused = ids.into_iter().filter(|sid| others.contains(sid)).collect();
            refused.dedup();
            if elements.is_empty() {
                let msg = format!("{method}: the sessions belong to another user");
                let data = json!({ "refusedSessionIds": refused });
                return owner.error(id, reply, FORBIDDEN, &msg, data).await;
            }
        }
    }
    let order: Vec<String> = elements.iter().map(|(sid, _)| sid.clone()).collect();
    let owners = owners_of(&owner, &pool, &order).await;
    // Group the elements by node, keeping request order within each group.
    let mut groups: Vec<(Endpoint, Vec<Value>)> = Vec::new();
    let mut failed: Vec<(Arc<str>, String)> = Vec::new();
    for (sid, element) in elements {
        match owners.get(&sid) {
            Some(Ok(node)) => match groups.iter_mut().find(|(n, _)| n.name == node.name) {
                Some((_, list)) => list.push(element),
                None => groups.push((node.clone(), vec![element])),
            },
            Some(Err(node)) => {
                owner.skipped(node);
                failed.push((node.clone(), "unavailable".into()));
            }
            None => failed.push((Arc::from("none"), "no server can take work".into())),
        }
    }
    let targets: Vec<Endpoint> = groups.iter().map(|(n, _)| n.clone()).collect();
    let asks = groups.into_iter().map(|(node, list)| {
        let body = request(method, merge::split_params(kind, &params, list));
        let owner = owner.clone();
        async move { owner.ask(&node, body).await }
    });
    let answers = join_all(asks).await;
    let Sorted {
        results,
        failed: mut more_failed,
    } = sort_answers(&owner, &targets, answers);
    failed.append(&mut more_failed);
    let nothing_asked = order.is_empty() || targets.is_empty() && failed.is_empty();
    if !nothing_asked {
        if let Some((msg, data)) = refusal(&pool, method, results.len(), &failed) {
            return owner
                .error(id.clone(), reply, SERVER_UNAVAILABLE, &msg, data)
                .await;
        }
    }
    let mut merged =
        merge::split_results(kind, &order, results.into_iter().map(|(_, r)| r).collect());
    if !refused.is_empty() {
        view::mark_refused(&mut merged, &refused);
    }
    if kind == Split::FreedBytes {
        for deleted in merged["freedBytes"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
        {
            pool.pins.unpin(deleted);
        }
    }
    owner.timed(method, started);
    owner.result(id.clone(), reply, &merged).await;
}

/// The node each session lives on: `Ok(node)`, or `Err(name)` for a pinned node that is down
/// (and the pool does not fail over). Sessions without a pin are looked up on the fleet in one
/// question per node; those found nowhere go to their ring owner.
async fn owners_of(
    owner: &Owner,
    pool: &Pool,
    ids: &[String],
) -> HashMap<String, Result<Endpoint, Arc<str>>> {
    let mut owners = HashMap::new();
    let mut unknown = Vec::new();
    let mut seen = HashSet::new();
    for sid in ids {
        if !seen.insert(sid.as_str()) {
            continue;
        }
        let Some(pin) = pool.pins.get(sid) else {
            unknown.push(sid.clone());
            continue;
        };
        let down = pool
            .upstream(&pin.upstream)
            .is_some_and(|u| !u.state.is_available());
        match (down, pool.config.on_owner_down) {
            (false, _) => {
                owners.insert(sid.clone(), Ok(pool.pinned_endpoint(&pin)));
            }
            (true, OnOwnerDown::Error | OnOwnerDown::NotFound) => {
                owners.insert(sid.clone(), Err(pin.upstream.clone()));
            }
            (true, OnOwnerDown::Failover) => unknown.push(sid.clone()),
        }
    }
    if unknown.is_empty() {
        return owners;
    }
    let targets = available(pool);
    if targets.len() > 1 {
        let ask = request(
            "sessions.getClientMetadata",
            json!({ "sessionIds": &unknown }),
        );
        let answers = owner.ask_all(&targets, &ask).await;
        for (target, answer) in targets.iter().zip(answers) {
            let Answer::Result(Value::Array(entries)) = answer else {
                continue;
            };
            for entry in entries {
                let (Some(sid), true) = (entry["sessionId"].as_str(), entry["status"] == "ok")
                else {
                    continue;
                };
                if !owners.contains_key(sid) {
                    pool.pins.pin(sid, target.pin());
                    owners.insert(sid.to_owned(), Ok(target.clone()));
                }
            }
        }
        for sid in &unknown {
            owner.discovered(owners.contains_key(sid));
        }
    }
    for sid in unknown {
        if let (false, Some(u)) = (owners.contains_key(&sid), pool.route(sid.as_bytes())) {
            owners.insert(sid, Ok(u.endpoint.clone()));
        }
    }
    owners
}

/// `sessions.open` with `kind: resumeLast`: the fleet's most relevant session for the context,
/// resumed on its node; `{status: not_found}` when the fleet has none.
pub async fn open_last(
    owner: Owner,
    pool: Arc<Pool>,
    id: ClientId,
    body: Bytes,
    reply: ReplyTo,
    viewer: Option<Arc<Viewer>>,
) {
    let params = params_of(&body);
    let mut ask = json!({});
    if let Some(context) = params.get("context") {
        ask["context"] = context.clone();
    }
    let targets = available(&pool);
    let answers = owner
        .ask_all(&targets, &request("sessions.getLastForContext", ask))
        .await;
    let Sorted {
        mut results,
        failed,
    } = sort_answers(&owner, &targets, answers);
    if let Some((msg, data)) = refusal(&pool, "sessions.open", results.len(), &failed) {
        return owner.error(id, reply, SERVER_UNAVAILABLE, &msg, data).await;
    }
    if let Some(viewer) = &viewer {
        for (_, result) in &mut results {
            viewer
                .filter(pool.name(), Merge::NewestSession, result)
                .await;
        }
    }
    let Some((node, sid)) = newest_candidate(&owner, &results).await else {
        return owner
            .result(id.clone(), reply, &json!({ "status": "not_found" }))
            .await;
    };
    let mut resume = json!({ "kind": "resume", "sessionId": &sid });
    for carried in ["options", "suppressResumeWorkspaceMetadataWriteback"] {
        if let Some(v) = params.get(carried) {
            resume[carried] = v.clone();
        }
    }
    let body =
        format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"sessions.open","params":{resume}}}"#);
    let mut pending = Box::new(Pending::new(node.name.clone(), "sessions.open", reply));
    pending.learn = Learn::PinAnswered;
    pending.session = Some(Arc::from(sid.as_str()));
    owner
        .send(Event::Resend {
            id,
            pending,
            to: node,
            body: Bytes::from(body),
        })
        .await;
}

/// Does any available node of `pool` hold `session` (on disk, loaded or not)? A node that does
/// not answer counts as holding it: the caller refuses what it cannot rule out.
pub async fn held_by_fleet(owner: &Owner, pool: &Pool, session: &str) -> bool {
    let targets = available(pool);
    let ask = request(
        "sessions.getClientMetadata",
        json!({ "sessionIds": [session] }),
    );
    owner
        .ask_all(&targets, &ask)
        .await
        .iter()
        .any(|answer| match answer {
            Answer::Result(r) => r.pointer("/0/status") == Some(&json!("ok")),
            Answer::Failed(_) => true,
        })
}

/// Did the node answer that it does not have the session (so another node may)?
pub fn is_not_found(method: &str, body: &[u8], failed: bool) -> bool {
    let says = |text: &[u8]| body.windows(text.len()).any(|w| w == text);
    match method {
        "session.resume" => failed && says(b"Session not found"),
        "sessions.fork" => {
            failed
                && (says(b"Session not found") || says(b"no persisted or in-memory events found"))
        }
        "sessions.open" => {
            !failed
                && serde_json::from_slice::<Value>(body)
                    .is_ok_and(|m| m.pointer("/result/status") == Some(&json!("not_found")))
        }
        _ => false,
    }
}

/// The ring owner `missed_on` does not have the session `pending` is about: look for it on the
/// other available nodes, pin the one that has it and send the request there; if none has it,
/// the client gets the original answer. Costs one question per node, once per cold session.
pub async fn discover_owner(
    owner: Owner,
    pool: Arc<Pool>,
    missed_on: Arc<str>,
    id: ClientId,
    pending: Box<Pending>,
    resend: Bytes,
    not_found: Bytes,
) {
    let Some(session) = pending.session.clone() else {
        return owner
            .send(Event::NotFound {
                id,
                pending,
                answer: not_found,
            })
            .await;
    };
    let targets: Vec<Endpoint> = available(&pool)
        .into_iter()
        .filter(|t| t.name != missed_on)
        .collect();
    let ask = request(
        "sessions.getClientMetadata",
        json!({ "sessionIds": [&*session] }),
    );
    let answers = owner.ask_all(&targets, &ask).await;
    let found = targets
        .into_iter()
        .zip(answers)
        .find_map(|(target, answer)| match answer {
            Answer::Result(r) if r.pointer("/0/status") == Some(&json!("ok")) => Some(target),
            _ => None,
        });
    owner.discovered(found.is_some());
    match found {
        Some(to) => {
            info!(session = %session, upstream = %to.name, "owner discovery: session found");
            pool.pins.pin(&session, to.pin());
            owner
                .send(Event::Resend {
                    id,
                    pending,
                    to,
                    body: resend,
                })
                .await;
        }
        None => {
            owner
                .send(Event::NotFound {
                    id,
                    pending,
                    answer: not_found,
                })
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_not_found_answers() {
        let resume_miss = br#"{"jsonrpc":"2.0","id":3,"error":{"code":-32603,"message":"Request session.resume failed with message: Failed to load session events: Session not found: abc"}}"#;
        assert!(is_not_found("session.resume", resume_miss, true));
        assert!(!is_not_found("session.send", resume_miss, true));
        let fork_miss = br#"{"jsonrpc":"2.0","id":3,"error":{"code":-32603,"message":"Request sessions.fork failed with message: Cannot fork session x: no persisted or in-memory events found"}}"#;
        assert!(is_not_found("sessions.fork", fork_miss, true));
        let open_miss = br#"{"jsonrpc":"2.0","id":3,"result":{"status":"not_found"}}"#;
        assert!(is_not_found("sessions.open", open_miss, false));
        let opened = br#"{"jsonrpc":"2.0","id":3,"result":{"status":"resumed","sessionId":"s"}}"#;
        assert!(!is_not_found("sessions.open", opened, false));
        assert!(!is_not_found(
            "session.resume",
            br#"{"jsonrpc":"2.0","id":3,"result":{}}"#,
            false
        ));
    }
}
