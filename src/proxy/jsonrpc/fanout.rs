//! Requests that go to several nodes at once: `session.list` (every healthy node, answers merged
//! newest first, sessions deduplicated by id) and owner discovery (a `session.resume` the ring
//! owner does not know is looked up on the other nodes with `session.getMetadata`; the node that
//! has it is pinned and gets the resume). Discovery costs one fan-out per cold session.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::conn::{BatchSlot, Conn, Endpoint, Pending};
use super::link::{internal_id, learn};
use crate::snapshot::Pool;
use crate::wire::message;

/// Send `body` to `target` under a proxy-internal id and wait up to `timeout` for the answer.
async fn ask(conn: &Arc<Conn>, target: &Endpoint, body: &[u8], timeout: Duration) -> Option<Bytes> {
    let n = conn.next_internal_id();
    let (tx, rx) = oneshot::channel();
    conn.lock().internal.insert(n, (target.name.clone(), tx));
    let body = message::with_id(body, &internal_id(n)).ok()?;
    conn.send(target, body, None).await;
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(answer)) => Some(answer),
        _ => {
            conn.lock().internal.remove(&n);
            None
        }
    }
}

/// Ask every healthy node; `None` for each node that did not answer in time.
async fn ask_all(
    conn: &Arc<Conn>,
    pool: &Pool,
    targets: &[Endpoint],
    body: &[u8],
) -> Vec<Option<Value>> {
    let timeout = pool.config.fanout_timeout;
    let answers = join_all(targets.iter().map(|t| ask(conn, t, body, timeout))).await;
    targets
        .iter()
        .zip(answers)
        .map(|(t, answer)| {
            let value = answer.and_then(|b| serde_json::from_slice::<Value>(&b).ok());
            if value.is_none() {
                conn.ctx
                    .metrics
                    .fanout_skipped_total
                    .with_label_values(&[pool.name(), &t.name])
                    .inc();
            }
            value
        })
        .collect()
}

/// Answer a client's `session.list` with the merged lists of every healthy node.
pub(super) async fn list_sessions(
    conn: Arc<Conn>,
    pool: Arc<Pool>,
    id: Option<Box<str>>,
    body: Bytes,
    slot: Option<BatchSlot>,
) {
    let started = Instant::now();
    let targets: Vec<Endpoint> = pool
        .upstreams
        .iter()
        .filter(|u| u.state.is_available())
        .map(|u| u.endpoint.clone())
        .collect();
    let answers = ask_all(&conn, &pool, &targets, &body).await;
    let answered = answers
        .iter()
        .flatten()
        .filter(|v| v.get("result").is_some())
        .count();
    let Some(id) = id else { return };
    if answered == 0 {
        let msg = format!("no server in pool {} answered session.list", pool.name());
        return conn.fail(Some(&id), slot, &msg, None).await;
    }
    let merged = merge_session_lists(answers.into_iter().flatten());
    conn.ctx
        .metrics
        .jsonrpc_request_duration
        .with_label_values(&[pool.name(), "session.list"])
        .observe(started.elapsed().as_secs_f64());
    let result = json!({ "sessions": merged });
    let reply = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{result}}}"#);
    conn.reply(slot, Bytes::from(reply)).await;
}

/// Sessions from every answer, deduplicated by `sessionId` (the newest copy wins), newest
/// `modifiedTime` first. Times are ISO-8601 UTC strings, which sort as text.
pub(super) fn merge_session_lists(answers: impl IntoIterator<Item = Value>) -> Vec<Value> {
    let mut by_id: HashMap<String, Value> = HashMap::new();
    let mut anonymous = Vec::new();
    for mut answer in answers {
        let Some(Value::Array(sessions)) = answer.pointer_mut("/result/sessions").map(Value::take)
        else {
            continue;
        };
        for s in sessions {
            let Some(sid) = s
                .get("sessionId")
                .and_then(Value::as_str)
                .map(str::to_owned)
            else {
                anonymous.push(s);
                continue;
            };
            let newer = by_id
                .get(&sid)
                .is_none_or(|old| modified(&s) > modified(old));
            if newer {
                by_id.insert(sid, s);
            }
        }
    }
    let mut merged: Vec<Value> = by_id.into_values().chain(anonymous).collect();
    merged.sort_by(|a, b| modified(b).cmp(modified(a)));
    merged
}

fn modified(session: &Value) -> &str {
    session
        .get("modifiedTime")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// The ring owner `missed_on` answered a `session.resume` with "Session not found": look for
/// the session on the other healthy nodes, pin the one that has it and resume there; if none
/// has it, the client gets the original answer.
pub(super) async fn discover_owner(
    conn: Arc<Conn>,
    missed_on: Arc<str>,
    id: Box<str>,
    mut pending: Pending,
    not_found: Bytes,
) {
    let pool = conn.ctx.shared.load().pool(&conn.pool_name).cloned();
    let (Some(pool), Some(session), Some(resume)) =
        (pool, pending.session.clone(), pending.resend.take())
    else {
        return conn.reply(pending.slot, not_found).await;
    };
    let targets: Vec<Endpoint> = pool
        .upstreams
        .iter()
        .filter(|u| u.state.is_available() && u.name() != &*missed_on)
        .map(|u| u.endpoint.clone())
        .collect();
    let probe = json!({
        "jsonrpc": "2.0",
        "id": 0,
        "method": "session.getMetadata",
        "params": { "sessionId": &*session },
    });
    let probe = serde_json::to_vec(&probe).unwrap_or_default();
    let answers = ask_all(&conn, &pool, &targets, &probe).await;
    let owner = targets
        .into_iter()
        .zip(answers)
        .find(|(_, answer)| {
            answer
                .as_ref()
                .is_some_and(|v| v.pointer("/result/session").is_some_and(Value::is_object))
        })
        .map(|(target, _)| target);
    let counter = |result: &str| {
        conn.ctx
            .metrics
            .owner_discovery_total
            .with_label_values(&[pool.name(), result])
            .inc()
    };
    match owner {
        Some(owner) => {
            counter("found");
            tracing::info!(session = %session, upstream = %owner.name, "owner discovery: session found");
            pool.pins.pin(&session, owner.pin());
            pending.upstream = owner.name.clone();
            conn.lock().pending.insert(id, pending);
            conn.send(&owner, resume, None).await;
        }
        None => {
            counter("not_found");
            learn(&conn, &missed_on, &pending, true, &not_found);
            conn.observe(&pending, "error");
            conn.reply(pending.slot, not_found).await;
            conn.drained.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_dedupes_by_id_and_orders_newest_first() {
        let a = json!({"result": {"sessions": [
            {"sessionId": "s1", "modifiedTime": "2026-11-22T04:00:00.000Z"},
            {"sessionId": "s2", "modifiedTime": "2026-11-22T05:00:00.000Z"},
        ]}});
        let b = json!({"result": {"sessions": [
            {"sessionId": "s3", "modifiedTime": "2026-11-22T04:30:00.000Z"},
            {"sessionId": "s1", "modifiedTime": "2026-11-22T06:00:00.000Z", "copy": "newer"},
        ]}});
        let c = json!({"error": {"code": -32603, "message": "boom"}});
        let merged = merge_session_lists([a, b, c]);
        let ids: Vec<&str> = merged
            .iter()
            .map(|s| s["sessionId"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["s1", "s2", "s3"]);
        assert_eq!(merged[0]["copy"], "newer");
    }
}
