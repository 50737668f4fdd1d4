//! The server-scoped `sessions.*` namespace of the mock CLI: listing and metadata over every
//! session on disk, fork, deletion and pruning, lookups (by id prefix, task id, context), sizes,
//! client metadata, and `sessions.open`, whose `create` / `resume` kinds reuse `session.create` /
//! `session.resume` (same events, same lifecycle) with the `sessions.open` answer. Shapes are the
//! real CLI's (1.0.102); the divergences are listed in the parent module's doc.

use std::time::{Duration, SystemTime};

use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::{
    list_entry, summary_of, ts, Answer, Inner, Reply, Session, State, CWD, INTERNAL_ERROR,
    INVALID_PARAMS, METHOD_NOT_FOUND,
};

const SECONDS_PER_DAY: f64 = 86_400.0;

/// Answers the `sessions.*` request `id` from `conn`.
pub(super) fn handle(
    inner: &Inner,
    st: &mut State,
    conn: u64,
    id: &RawValue,
    method: &str,
    params: &Value,
) {
    let reply = match method {
        "sessions.open" => return open(inner, st, conn, id, params),
        "sessions.list" => Ok(list(st, params)),
        "sessions.getMetadata" => {
            required_str(params, "sessionId").map(|sid| match st.sessions.get(sid) {
                Some(s) => json!({ "session": list_entry(sid, s) }),
                None => json!({}),
            })
        }
        "sessions.fork" => fork(st, params),
        "sessions.bulkDelete" => bulk_delete(st, params),
        "sessions.checkInUse" => required_ids(params, "sessionIds").map(|ids| {
            let in_use: Vec<&str> = ids
                .into_iter()
                .filter(|sid| st.loaded(sid).is_some())
                .collect();
            json!({ "inUse": in_use })
        }),
        "sessions.pruneOld" => prune_old(st, params),
        "sessions.findByPrefix" => required_str(params, "prefix").map(|prefix| {
            let mut matching = st.sessions.keys().filter(|sid| sid.starts_with(prefix));
            match (matching.next(), matching.next()) {
                (Some(sid), None) => json!({ "sessionId": sid }),
                _ => json!({}),
            }
        }),
        "sessions.findByTaskId" => required_str(params, "taskId").map(|task_id| {
            let found = st
                .sorted_sessions()
                .into_iter()
                .find(|(_, s)| s.task_id.as_deref() == Some(task_id));
            found.map_or_else(|| json!({}), |(sid, _)| json!({ "sessionId": sid }))
        }),
        "sessions.getLastForContext" => {
            let cwd = params.pointer("/context/cwd").and_then(Value::as_str);
            Ok(match st.sessions_in(cwd).first() {
                Some((sid, _)) => json!({ "sessionId": sid }),
                None => json!({}),
            })
        }
        "sessions.getSizes" => {
            let sizes: Map<String, Value> = st
                .sessions
                .iter()
                .map(|(sid, s)| (sid.clone(), json!(s.size_bytes())))
                .collect();
            Ok(json!({ "sizes": sizes }))
        }
        "sessions.listNonEmptySessionIds" => {
            let limit = params.get("limit").and_then(Value::as_u64);
            let limit = limit.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
            let ids: Vec<&String> = st
                .sorted_sessions()
                .into_iter()
                .filter(|(_, s)| s.has_messages())
                .map(|(sid, _)| sid)
                .take(limit)
                .collect();
            Ok(json!({ "sessionIds": ids }))
        }
        "sessions.delete" => required_str(params, "sessionId").map(|sid| {
            st.sessions.remove(sid);
            json!({})
        }),
        "sessions.close" => required_str(params, "sessionId").map(|sid| {
            if let Some(s) = st.sessions.get_mut(sid) {
                s.attached.clear();
                s.hooks = None;
            }
            json!({})
        }),
        "sessions.save" | "sessions.releaseLock" => {
            required_str(params, "sessionId").map(|_| json!({}))
        }
        "sessions.getClientMetadata" => required_ids(params, "sessionIds").map(|ids| {
            let statuses: Vec<Value> = ids
                .into_iter()
                .map(|sid| {
                    if st.sessions.contains_key(sid) {
                        json!({"sessionId": sid, "status": "ok", "metadata": {}})
                    } else {
                        json!({"sessionId": sid, "status": "notFound"})
                    }
                })
                .collect();
            Value::Array(statuses)
        }),
        "sessions.enrichMetadata" => enrich_metadata(st, params),
        other => Err((METHOD_NOT_FOUND, format!("Unhandled method {other}"))),
    };
    st.respond(conn, id, reply);
}

/// The `sessions.open` answer for a session it created or resumed (or attached to).
pub(super) fn opened(status: &str, sid: &str) -> Value {
    json!({"status": status, "sessionId": sid, "startupPrompts": []})
}

/// `sessions.open`: `create` and `resume` / `resumeLast` answer as the `session.*` methods do,
/// with the open shape; an unknown session is a `not_found` status, not an error.
fn open(inner: &Inner, st: &mut State, conn: u64, id: &RawValue, params: &Value) {
    let options = params.get("options").unwrap_or(&Value::Null);
    let hooks = options.get("hooks").and_then(Value::as_bool) == Some(true);
    let not_found = || Ok(json!({"status": "not_found"}));
    let kind = match required_str(params, "kind") {
        Ok(kind) => kind,
        Err(e) => return st.respond(conn, id, Err(e)),
    };
    let reply = match kind {
        "create" => match options.get("sessionId") {
            None | Some(Value::Null) => {
                let sid = uuid::Uuid::new_v4().to_string();
                return st.create(inner, conn, id, &sid, options, Answer::Open);
            }
            Some(Value::String(sid)) => {
                return st.create(inner, conn, id, sid, options, Answer::Open)
            }
            Some(_) => Err(invalid("options.sessionId must be a string")),
        },
        "resume" => match required_str(params, "sessionId") {
            Ok(sid) => return st.resume(inner, conn, id, sid, hooks, Answer::Open),
            Err(e) => Err(e),
        },
        "resumeLast" => match st.sorted_sessions().first().map(|(sid, _)| (*sid).clone()) {
            Some(sid) => return st.resume(inner, conn, id, &sid, hooks, Answer::Open),
            None => not_found(),
        },
        "attach" => required_str(params, "sessionId").and_then(|sid| {
            match st.sessions.get_mut(sid).filter(|s| !s.attached.is_empty()) {
                Some(session) => {
                    session.attached.insert(conn);
                    Ok(opened("resumed", sid))
                }
                None => not_found(),
            }
        }),
        other => Err(invalid(&format!("unsupported kind {other}"))),
    };
    st.respond(conn, id, reply);
}

/// `sessions.list`: `session.list`'s entries; past the first `metadataLimit`, basic ones.
fn list(st: &State, params: &Value) -> Value {
    let limit = params.get("metadataLimit").and_then(Value::as_u64);
    let full = limit.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let cwd = params.pointer("/filter/cwd").and_then(Value::as_str);
    let sessions: Vec<Value> = st
        .sessions_in(cwd)
        .into_iter()
        .enumerate()
        .map(|(i, (sid, s))| {
            if i < full {
                list_entry(sid, s)
            } else {
                json!({
                    "sessionId": sid,
                    "startTime": ts(s.start),
                    "modifiedTime": ts(s.modified),
                    "isRemote": false,
                    "isDetached": false,
                })
            }
        })
        .collect();
    json!({ "sessions": sessions })
}

/// `sessions.fork`: a new, unloaded session holding the source's persisted events up to (not
/// including) `toEventId`.
fn fork(st: &mut State, params: &Value) -> Reply {
    let source_id = required_str(params, "sessionId")?;
    let name = params.get("name").and_then(Value::as_str);
    let to_event = params.get("toEventId").and_then(Value::as_str);
    let Some(source) = st.sessions.get(source_id).filter(|s| !s.events.is_empty()) else {
        return Err((
            INTERNAL_ERROR,
            format!(
                "Request sessions.fork failed with message: Cannot fork session {source_id}: \
                 no persisted or in-memory events found"
            ),
        ));
    };
    let events: Vec<Value> = source
        .events
        .iter()
        .take_while(|e| to_event.is_none_or(|to| e["id"] != to))
        .cloned()
        .collect();
    let answered_name = name.map_or_else(|| format!("{} (fork)", source.summary), str::to_owned);
    let summary = events
        .iter()
        .find(|e| e["type"] == "user.message")
        .and_then(|e| e["data"]["content"].as_str())
        .map(summary_of)
        .unwrap_or_default();
    let sid = uuid::Uuid::new_v4().to_string();
    let seq = st.next_seq();
    let session = Session {
        summary,
        events,
        name: name.map(str::to_owned),
        ..Session::new(SystemTime::now(), seq)
    };
    st.sessions.insert(sid.clone(), session);
    Ok(json!({"sessionId": sid, "name": answered_name}))
}

/// `sessions.bulkDelete`: one `freedBytes` entry per requested id, 0 for the unknown ones.
fn bulk_delete(st: &mut State, params: &Value) -> Reply {
    let mut freed = Map::new();
    for sid in required_ids(params, "sessionIds")? {
        let bytes = st.sessions.remove(sid).map_or(0, |s| s.size_bytes());
        // An id requested twice keeps what its first occurrence freed.
        if bytes > 0 || !freed.contains_key(sid) {
            freed.insert(sid.to_owned(), json!(bytes));
        }
    }
    Ok(json!({ "freedBytes": freed }))
}

/// `sessions.pruneOld`: sessions unmodified for `olderThanDays`, among those that ever received a
/// message and are not excluded; named ones are skipped unless `includeNamed`.
fn prune_old(st: &mut State, params: &Value) -> Reply {
    let days = required(params, "olderThanDays")?
        .as_f64()
        .filter(|d| d.is_finite() && *d >= 0.0)
        .ok_or_else(|| invalid("olderThanDays must be a non-negative number"))?;
    let flag = |field: &str| params.get(field).and_then(Value::as_bool) == Some(true);
    let (dry_run, include_named) = (flag("dryRun"), flag("includeNamed"));
    let excluded: Vec<&str> = params
        .get("excludeSessionIds")
        .and_then(Value::as_array)
        .map(|ids| ids.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let min_age = Duration::try_from_secs_f64(days * SECONDS_PER_DAY).unwrap_or(Duration::MAX);
    let now = SystemTime::now();
    let (mut chosen, mut skipped) = (Vec::new(), Vec::new());
    for (sid, s) in st.sorted_sessions() {
        if excluded.contains(&sid.as_str()) || !s.has_messages() {
            continue;
        }
        if now.duration_since(s.modified).unwrap_or_default() < min_age {
            continue;
        }
        if s.name.is_some() && !include_named {
            skipped.push(sid.clone());
        } else {
            chosen.push(sid.clone());
        }
    }
    let freed: u64 = chosen
        .iter()
        .filter_map(|sid| st.sessions.get(sid))
        .map(Session::size_bytes)
        .sum();
    let (deleted, candidates) = if dry_run {
        (Vec::new(), chosen)
    } else {
        for sid in &chosen {
            st.sessions.remove(sid);
        }
        (chosen, Vec::new())
    };
    Ok(json!({
        "deleted": deleted,
        "candidates": candidates,
        "skipped": skipped,
        "freedBytes": freed,
        "dryRun": dry_run,
    }))
}

/// `sessions.enrichMetadata`: records of sessions on disk get their summary, name, client and
/// context set (their other fields kept); the others come back as they were.
fn enrich_metadata(st: &State, params: &Value) -> Reply {
    let records = required(params, "sessions")?
        .as_array()
        .ok_or_else(|| invalid("sessions must be an array"))?;
    let enriched: Vec<Value> = records
        .iter()
        .map(|record| {
            let session = record
                .get("sessionId")
                .and_then(Value::as_str)
                .and_then(|sid| st.sessions.get(sid));
            let mut record = record.clone();
            if let (Some(s), Some(fields)) = (session, record.as_object_mut()) {
                fields.insert("summary".into(), json!(s.summary));
                fields.insert("name".into(), json!(s.display_name()));
                fields.insert("clientName".into(), json!("sdk"));
                fields.insert("context".into(), json!({ "cwd": CWD }));
            }
            record
        })
        .collect();
    Ok(json!({ "sessions": enriched }))
}

fn invalid(detail: &str) -> (i64, String) {
    (INVALID_PARAMS, format!("Invalid params: {detail}"))
}

fn required<'a>(params: &'a Value, field: &str) -> Result<&'a Value, (i64, String)> {
    match params.get(field) {
        None | Some(Value::Null) => Err(invalid(&format!("{field} is required"))),
        Some(value) => Ok(value),
    }
}

fn required_str<'a>(params: &'a Value, field: &str) -> Result<&'a str, (i64, String)> {
    required(params, field)?
        .as_str()
        .ok_or_else(|| invalid(&format!("{field} must be a string")))
}

fn required_ids<'a>(params: &'a Value, field: &str) -> Result<Vec<&'a str>, (i64, String)> {
    let not_ids = || invalid(&format!("{field} must be an array of strings"));
    required(params, field)?
        .as_array()
        .ok_or_else(not_ids)?
        .iter()
        .map(|sid| sid.as_str().ok_or_else(not_ids))
        .collect()
}
