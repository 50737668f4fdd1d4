//! What a caller may see of the fleet when sessions have owners: a fan-out's answers keep only
//! the sessions the caller may touch, a split refuses the ids of other users' sessions, and
//! `sessions.pruneOld` acts on the caller's sessions only (a dry run on the nodes, then
//! `sessions.bulkDelete` of the caller's candidates, so nothing else can be deleted).

use std::collections::HashSet;
use std::sync::Arc;

use futures_util::future::join_all;
use serde_json::{json, Map, Value};

use super::{params_of, refusal, request, Answer, Owner};
use crate::identity::{Identities, Identity};
use crate::proxy::jsonrpc::methods::Merge;
use crate::snapshot::Pool;
use crate::store::Store;
use crate::upstream::Endpoint;
use bytes::Bytes;

/// A caller of a listener where sessions have owners.
pub struct Viewer {
    pub store: Store,
    pub who: Identity,
    pub identities: Arc<Identities>,
}

impl Viewer {
    /// Which of `ids` the caller may touch.
    pub async fn visible(
        &self,
        pool: &str,
        ids: impl IntoIterator<Item = String>,
    ) -> HashSet<String> {
        let ids: Vec<String> = ids.into_iter().collect();
        let owners = join_all(ids.iter().map(|id| self.store.owner(pool, id))).await;
        ids.into_iter()
            .zip(owners)
            .filter(|(id, owner)| self.identities.may_touch(&self.who, id, owner.as_deref()))
            .map(|(id, _)| id)
            .collect()
    }

    /// Keep only the caller's sessions in one node's `result` of a fan-out of kind `kind`.
    pub async fn filter(&self, pool: &str, kind: Merge, result: &mut Value) {
        let ids: Vec<String> = match kind {
            Merge::SessionList => list_ids(result, "sessions", true),
            Merge::UniqueId | Merge::FirstId | Merge::NewestSession => result["sessionId"]
                .as_str()
                .map(str::to_owned)
                .into_iter()
                .collect(),
            Merge::Sizes => result["sizes"]
                .as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default(),
            Merge::NewestIds => list_ids(result, "sessionIds", false),
            Merge::Prune => ["candidates", "deleted", "skipped"]
                .iter()
                .flat_map(|f| list_ids(result, f, false))
                .collect(),
        };
        let seen = self.visible(pool, ids).await;
        let keep = |v: &Value| {
            v.as_str()
                .or_else(|| v["sessionId"].as_str())
                .is_some_and(|id| seen.contains(id))
        };
        match kind {
            Merge::SessionList => retain(result, "sessions", keep),
            Merge::UniqueId | Merge::FirstId | Merge::NewestSession => {
                if !keep(&result["sessionId"]) {
                    if let Some(obj) = result.as_object_mut() {
                        obj.remove("sessionId");
                    }
                }
            }
            Merge::Sizes => {
                if let Some(sizes) = result.get_mut("sizes").and_then(Value::as_object_mut) {
                    sizes.retain(|id, _| seen.contains(id));
                }
            }
            Merge::NewestIds => retain(result, "sessionIds", keep),
            Merge::Prune => {
                for field in ["candidates", "deleted", "skipped"] {
                    retain(result, field, keep);
                }
            }
        }
    }
}

/// The ids in `result[field]` (strings, or objects with `sessionId` when `objects`).
fn list_ids(result: &Value, field: &str, objects: bool) -> Vec<String> {
    result[field]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| match objects {
            true => v["sessionId"].as_str(),
            false => v.as_str(),
        })
        .map(str::to_owned)
        .collect()
}

fn retain(result: &mut Value, field: &str, keep: impl Fn(&Value) -> bool) {
    if let Some(list) = result.get_mut(field).and_then(Value::as_array_mut) {
        list.retain(|v| keep(v));
    }
}

/// `sessions.pruneOld` for a caller: every node's dry run, kept to the caller's candidates;
/// unless the caller asked for a dry run, those are deleted with `sessions.bulkDelete` on the
/// node that named them. Returns the merged answer, or the nodes that failed.
pub async fn prune(
    owner: &Owner,
    viewer: &Viewer,
    pool: &Pool,
    targets: &[Endpoint],
    mut params: Value,
) -> (Value, Vec<(Arc<str>, String)>) {
    let dry_run = params["dryRun"] == true;
    if let Some(obj) = params.as_object_mut() {
        obj.insert("dryRun".into(), Value::Bool(true));
    }
    let ask = request("sessions.pruneOld", params);
    let answers = owner.ask_all(targets, &ask).await;
    let sizes = owner
        .ask_all(targets, &request("sessions.getSizes", json!({})))
        .await;
    let mut failed = Vec::new();
    let mut candidates: Vec<(Endpoint, Vec<String>)> = Vec::new();
    let mut skipped = Vec::new();
    let mut freed = 0u64;
    for ((target, answer), sizes) in targets.iter().zip(answers).zip(sizes) {
        let mut result = match answer {
            Answer::Result(r) => r,
            Answer::Failed(why) => {
                failed.push((target.name.clone(), why));
                continue;
            }
        };
        viewer.filter(pool.name(), Merge::Prune, &mut result).await;
        let mine = list_ids(&result, "candidates", false);
        if let Answer::Result(sizes) = &sizes {
            for id in &mine {
                freed = freed.saturating_add(sizes["sizes"][id].as_u64().unwrap_or(0));
            }
        }
        skipped.extend(list_ids(&result, "skipped", false));
        candidates.push((target.clone(), mine));
    }
    if dry_run {
        let all: Vec<String> = candidates.into_iter().flat_map(|(_, ids)| ids).collect();
        let merged = json!({
            "deleted": [], "candidates": all, "skipped": skipped,
            "freedBytes": freed, "dryRun": true,
        });
        return (merged, failed);
    }
    let deletes = candidates
        .iter()
        .filter(|(_, ids)| !ids.is_empty())
        .map(|(node, ids)| {
            owner.ask(
                node,
                request("sessions.bulkDelete", json!({ "sessionIds": ids })),
            )
        });
    let mut deleted = Vec::new();
    let mut freed = 0u64;
    for answer in join_all(deletes).await {
        if let Answer::Result(r) = answer {
            let map: Map<String, Value> = r["freedBytes"].as_object().cloned().unwrap_or_default();
            for (id, bytes) in map {
                freed = freed.saturating_add(bytes.as_u64().unwrap_or(0));
                pool.pins.unpin(&id);
                deleted.push(id);
            }
        }
    }
    let merged = json!({
        "deleted": deleted, "candidates": [], "skipped": skipped,
        "freedBytes": freed, "dryRun": false,
    });
    (merged, failed)
}

/// Which ids of a split request the caller may not touch.
pub async fn refused(viewer: &Viewer, pool: &str, ids: &[String]) -> HashSet<String> {
    let seen = viewer.visible(pool, ids.iter().cloned()).await;
    ids.iter()
        .filter(|id| !seen.contains(*id))
        .cloned()
        .collect()
}

/// The fan-outs a viewer changes beyond filtering answers: `sessions.pruneOld` (see [`prune`])
/// and `sessions.findByPrefix`, which the nodes cannot answer for one user (a node answers
/// nothing when several of its sessions match, another user's among them), so the proxy
/// matches the prefix against the viewer's sessions itself. `None`: filter the usual answers.
pub(super) async fn viewed(
    owner: &Owner,
    pool: &Pool,
    viewer: &Viewer,
    kind: Merge,
    method: &str,
    targets: &[Endpoint],
    body: &Bytes,
) -> Option<Result<Value, (String, Value)>> {
    let params = params_of(body);
    let (merged, failed) = match kind {
        Merge::Prune => prune(owner, viewer, pool, targets, params).await,
        Merge::UniqueId => {
            let prefix = params["prefix"].as_str().unwrap_or("").to_owned();
            let sizes = owner
                .ask_all(targets, &request("sessions.getSizes", json!({})))
                .await;
            let mut failed = Vec::new();
            let mut matches = Vec::new();
            for (target, answer) in targets.iter().zip(sizes) {
                match answer {
                    Answer::Result(r) => matches.extend(
                        r["sizes"]
                            .as_object()
                            .into_iter()
                            .flat_map(|m| m.keys())
                            .filter(|id| id.starts_with(&prefix))
                            .cloned(),
                    ),
                    Answer::Failed(why) => {
                        owner.skipped(&target.name);
                        failed.push((target.name.clone(), why));
                    }
                }
            }
            let mine = viewer.visible(pool.name(), matches).await;
            let merged = match mine.len() {
                1 => json!({ "sessionId": mine.into_iter().next() }),
                _ => json!({}),
            };
            (merged, failed)
        }
        Merge::NewestSession if method == "session.getLastId" => {
            last_of(owner, pool, viewer, targets).await
        }
        _ => return None,
    };
    let answered = targets.len() - failed.len();
    Some(match refusal(pool, method, answered, &failed) {
        Some(refused) => Err(refused),
        None => Ok(merged),
    })
}

/// `session.getLastId` for a caller: a node's last session may be another user's, so the
/// caller's last is the newest of the caller's sessions in every node's `session.list`.
async fn last_of(
    owner: &Owner,
    pool: &Pool,
    viewer: &Viewer,
    targets: &[Endpoint],
) -> (Value, Vec<(Arc<str>, String)>) {
    let lists = owner
        .ask_all(targets, &request("session.list", json!({})))
        .await;
    let mut failed = Vec::new();
    let mut results = Vec::new();
    for (target, answer) in targets.iter().zip(lists) {
        match answer {
            Answer::Result(mut r) => {
                viewer.filter(pool.name(), Merge::SessionList, &mut r).await;
                results.push(r);
            }
            Answer::Failed(why) => {
                owner.skipped(&target.name);
                failed.push((target.name.clone(), why));
            }
        }
    }
    let dated = crate::proxy::jsonrpc::merge::session_list(results)
        .into_iter()
        .filter_map(|s| {
            let id = s["sessionId"].as_str()?.to_owned();
            Some((id, s["modifiedTime"].as_str().map(str::to_owned)))
        })
        .collect();
    (crate::proxy::jsonrpc::merge::newest_session(dated), failed)
}

/// Name the `refused` ids in a split's merged answer: a list answer gets an `unavailable`
/// entry for each, an object answer a `refusedSessionIds` field.
pub(super) fn mark_refused(merged: &mut Value, refused: &[String]) {
    match merged {
        Value::Array(entries) => entries.extend(refused.iter().map(|id| {
            json!({
                "sessionId": id, "status": "unavailable", "code": "FORBIDDEN",
                "message": "the session belongs to another user",
            })
        })),
        Value::Object(map) => {
            map.insert("refusedSessionIds".into(), json!(refused));
        }
        _ => {}
    }
}
