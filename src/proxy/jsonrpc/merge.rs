//! Pure functions that turn the answers of several nodes into one answer: one per result shape
//! of the fan-out methods ([`Merge`]), and the split of a request over a list of sessions into
//! per-node requests and the merge of their answers in request order ([`Split`]). Inputs are
//! the nodes' `result` values (nodes that failed or stayed silent are simply absent).

use std::collections::{HashMap, HashSet};

use serde_json::{json, Map, Value};

use super::methods::{Merge, Split};

/// Merge the results of the shapes that need nothing but the results. `NewestSession` and
/// `NewestIds` need modification times the caller reads first: see [`newest_session`] and
/// [`newest_ids`].
pub fn results(kind: Merge, results: Vec<Value>) -> Value {
    match kind {
        Merge::SessionList => json!({ "sessions": session_list(results) }),
        Merge::UniqueId => unique_id(results),
        Merge::FirstId | Merge::NewestSession => first_id(results),
        Merge::Sizes => sizes(results),
        Merge::NewestIds => {
            let ids: Vec<Vec<String>> = results.iter().map(session_ids).collect();
            newest_ids(ids, &HashMap::new(), None)
        }
        Merge::Prune => prune(results),
    }
}

/// Sessions from every result, deduplicated by `sessionId` (the newest copy wins), newest
/// `modifiedTime` first. Times are ISO-8601 UTC strings, which sort as text.
pub fn session_list(results: impl IntoIterator<Item = Value>) -> Vec<Value> {
    let mut by_id: HashMap<String, Value> = HashMap::new();
    let mut anonymous = Vec::new();
    for mut result in results {
        let Some(Value::Array(sessions)) = result.get_mut("sessions").map(Value::take) else {
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

fn session_id(result: &Value) -> Option<&str> {
    result.get("sessionId").and_then(Value::as_str)
}

/// The one session id the results agree on; `{}` when none matched or several did.
pub fn unique_id(results: Vec<Value>) -> Value {
    let ids: HashSet<&str> = results.iter().filter_map(session_id).collect();
    match ids.into_iter().collect::<Vec<_>>()[..] {
        [one] => json!({ "sessionId": one }),
        _ => json!({}),
    }
}

/// The first result (in the order given) that names a session; `{}` if none does.
pub fn first_id(results: Vec<Value>) -> Value {
    match results.iter().find_map(session_id) {
        Some(id) => json!({ "sessionId": id }),
        None => json!({}),
    }
}

/// The candidate modified last: `(id, modifiedTime)` pairs, a candidate whose time could not be
/// read counting as oldest.
pub fn newest_session(candidates: Vec<(String, Option<String>)>) -> Value {
    candidates
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1))
        .map_or_else(|| json!({}), |(id, _)| json!({ "sessionId": id }))
}

/// The union of the `sizes` maps.
pub fn sizes(results: Vec<Value>) -> Value {
    let mut all = Map::new();
    for mut result in results {
        if let Some(Value::Object(sizes)) = result.get_mut("sizes").map(Value::take) {
            all.extend(sizes);
        }
    }
    json!({ "sizes": all })
}

/// The `sessionIds` of one result.
pub fn session_ids(result: &Value) -> Vec<String> {
    string_list(result, "sessionIds")
}

fn string_list(value: &Value, field: &str) -> Vec<String> {
    value
        .get(field)
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Each node's newest-first list interleaved into one newest-first list by `modified`
/// (id → modifiedTime; ids without a time keep their node's order after the dated ones),
/// deduplicated, cut to `limit`.
pub fn newest_ids(
    per_node: Vec<Vec<String>>,
    modified: &HashMap<String, String>,
    limit: Option<usize>,
) -> Value {
    let mut seen = HashSet::new();
    let mut all: Vec<(usize, String)> = Vec::new();
    for ids in per_node {
        for (rank, id) in ids.into_iter().enumerate() {
            if seen.insert(id.clone()) {
                all.push((rank, id));
            }
        }
    }
    // Newest time first; among equal (or missing) times, each node's own rank.
    all.sort_by(|(ra, a), (rb, b)| modified.get(b).cmp(&modified.get(a)).then(ra.cmp(rb)));
    let ids: Vec<String> = all
        .into_iter()
        .map(|(_, id)| id)
        .take(limit.unwrap_or(usize::MAX))
        .collect();
    json!({ "sessionIds": ids })
}

/// `sessions.pruneOld`: lists concatenated, bytes summed, a dry run only if every node's was.
pub fn prune(results: Vec<Value>) -> Value {
    let mut deleted = Vec::new();
    let mut candidates = Vec::new();
    let mut skipped = Vec::new();
    let mut freed = 0u64;
    let mut dry_run = true;
    for r in &results {
        deleted.extend(string_list(r, "deleted"));
        candidates.extend(string_list(r, "candidates"));
        skipped.extend(string_list(r, "skipped"));
        let bytes = r.get("freedBytes").and_then(Value::as_u64).unwrap_or(0);
        freed = freed.saturating_add(bytes);
        dry_run &= r.get("dryRun").and_then(Value::as_bool).unwrap_or(false);
    }
    json!({
        "deleted": deleted,
        "candidates": candidates,
        "skipped": skipped,
        "freedBytes": freed,
        "dryRun": dry_run && !results.is_empty(),
    })
}

/// The elements of a split request's list with the session id each names, in request order;
/// `None` if `params` has no such list. Elements without a usable id are left out (their node
/// cannot be known; the CLI would reject them anyway).
pub fn split_elements(kind: Split, params: &Value) -> Option<Vec<(String, Value)>> {
    let list = params.get(kind.list_field())?.as_array()?;
    Some(
        list.iter()
            .filter_map(|element| {
                let id = match kind {
                    Split::Enrich => element.get("sessionId")?.as_str()?,
                    _ => element.as_str()?,
                };
                Some((id.to_owned(), element.clone()))
            })
            .collect(),
    )
}

/// `params` for one node: the same request with the list cut to that node's elements.
pub fn split_params(kind: Split, params: &Value, elements: Vec<Value>) -> Value {
    let mut params = params.clone();
    if let Some(obj) = params.as_object_mut() {
        obj.insert(kind.list_field().to_owned(), Value::Array(elements));
    }
    params
}

/// The nodes' results put back together in the order of `order` (the request's ids).
pub fn split_results(kind: Split, order: &[String], results: Vec<Value>) -> Value {
    match kind {
        Split::FreedBytes => {
            let mut freed: HashMap<String, Value> = HashMap::new();
            for mut r in results {
                if let Some(Value::Object(map)) = r.get_mut("freedBytes").map(Value::take) {
                    freed.extend(map);
                }
            }
            let mut out = Map::new();
            for id in order {
                if let Some(bytes) = freed.remove(id) {
                    out.insert(id.clone(), bytes);
                }
            }
            json!({ "freedBytes": out })
        }
        Split::InUse => {
            let in_use: HashSet<String> = results
                .iter()
                .flat_map(|r| string_list(r, "inUse"))
                .collect();
            let ids: Vec<&String> = order.iter().filter(|id| in_use.contains(*id)).collect();
            json!({ "inUse": ids })
        }
        Split::ClientMetadata => {
            let entries = results.into_iter().flat_map(|r| match r {
                Value::Array(list) => list,
                _ => Vec::new(),
            });
            Value::Array(in_order(order, entries))
        }
        Split::Enrich => {
            let entries = results.into_iter().flat_map(|mut r| {
                match r.get_mut("sessions").map(Value::take) {
                    Some(Value::Array(list)) => list,
                    _ => Vec::new(),
                }
            });
            json!({ "sessions": in_order(order, entries) })
        }
    }
}

/// Entries (objects with `sessionId`) in the order their ids appear in `order`; entries the
/// order does not name are dropped.
fn in_order(order: &[String], entries: impl Iterator<Item = Value>) -> Vec<Value> {
    let mut by_id: HashMap<String, Vec<Value>> = HashMap::new();
    for e in entries {
        if let Some(id) = session_id(&e).map(str::to_owned) {
            by_id.entry(id).or_default().push(e);
        }
    }
    order
        .iter()
        .filter_map(|id| {
            let list = by_id.get_mut(id)?;
            (!list.is_empty()).then(|| list.remove(0))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_lists_dedupe_by_id_newest_first() {
        let a = json!({"sessions": [
            {"sessionId": "s1", "modifiedTime": "2026-11-22T04:00:00.000Z"},
            {"sessionId": "s2", "modifiedTime": "2026-11-22T05:00:00.000Z"},
        ]});
        let b = json!({"sessions": [
            {"sessionId": "s3", "modifiedTime": "2026-11-22T04:30:00.000Z"},
            {"sessionId": "s1", "modifiedTime": "2026-11-22T06:00:00.000Z", "copy": "newer"},
        ]});
        let merged = results(Merge::SessionList, vec![a, b, json!({})]);
        let ids: Vec<&str> = merged["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["sessionId"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["s1", "s2", "s3"]);
        assert_eq!(merged["sessions"][0]["copy"], "newer");
    }

    #[test]
    fn id_merges() {
        let found = |id: &str| json!({ "sessionId": id });
        let cases = [
            (
                Merge::UniqueId,
                vec![json!({}), found("a"), json!({})],
                json!({"sessionId": "a"}),
            ),
            (
                Merge::UniqueId,
                vec![found("a"), found("a")],
                json!({"sessionId": "a"}),
            ),
            (Merge::UniqueId, vec![found("a"), found("b")], json!({})),
            (Merge::UniqueId, vec![json!({}), json!({})], json!({})),
            (
                Merge::FirstId,
                vec![json!({}), found("b"), found("c")],
                json!({"sessionId": "b"}),
            ),
            (Merge::FirstId, vec![], json!({})),
        ];
        for (kind, answers, want) in cases {
            assert_eq!(results(kind, answers.clone()), want, "{kind:?} {answers:?}");
        }
    }

    #[test]
    fn newest_session_compares_modification_times() {
        let pick = newest_session(vec![
            ("old".into(), Some("2026-01-01T00:00:00.000Z".into())),
            ("unknown".into(), None),
            ("new".into(), Some("2026-06-01T00:00:00.000Z".into())),
        ]);
        assert_eq!(pick, json!({"sessionId": "new"}));
        assert_eq!(newest_session(vec![]), json!({}));
    }

    #[test]
    fn sizes_are_the_union() {
        let merged = results(
            Merge::Sizes,
            vec![
                json!({"sizes": {"a": 1, "b": 2}}),
                json!({"sizes": {"c": 3}}),
            ],
        );
        assert_eq!(merged, json!({"sizes": {"a": 1, "b": 2, "c": 3}}));
    }

    #[test]
    fn newest_ids_interleave_by_time_and_respect_the_limit() {
        let times: HashMap<String, String> = [
            ("a1", "2026-01-03"),
            ("a2", "2026-01-01"),
            ("b1", "2026-01-04"),
            ("b2", "2026-01-02"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let per_node = vec![
            vec!["a1".into(), "a2".into()],
            vec!["b1".into(), "b2".into()],
        ];
        assert_eq!(
            newest_ids(per_node.clone(), &times, None),
            json!({"sessionIds": ["b1", "a1", "b2", "a2"]})
        );
        assert_eq!(
            newest_ids(per_node, &times, Some(3)),
            json!({"sessionIds": ["b1", "a1", "b2"]})
        );
    }

    #[test]
    fn prune_concatenates_and_sums() {
        let merged = prune(vec![
            json!({"deleted": [], "candidates": ["a"], "skipped": ["n"], "freedBytes": 10, "dryRun": true}),
            json!({"deleted": [], "candidates": ["b", "c"], "skipped": [], "freedBytes": 5, "dryRun": true}),
        ]);
        assert_eq!(
            merged,
            json!({"deleted": [], "candidates": ["a", "b", "c"], "skipped": ["n"], "freedBytes": 15, "dryRun": true})
        );
        let real = prune(vec![
            json!({"deleted": ["a"], "candidates": [], "skipped": [], "freedBytes": 1, "dryRun": false}),
            json!({"deleted": ["b"], "candidates": [], "skipped": [], "freedBytes": 2, "dryRun": false}),
        ]);
        assert_eq!(real["deleted"], json!(["a", "b"]));
        assert_eq!(real["dryRun"], false);
        assert_eq!(prune(vec![])["dryRun"], false);
    }

    #[test]
    fn split_requests_and_their_answers_in_request_order() {
        let order: Vec<String> = ["c", "a", "x", "b"].iter().map(|s| s.to_string()).collect();
        let params = json!({"sessionIds": ["c", "a", "x", "b", 7]});
        let elements = split_elements(Split::FreedBytes, &params).unwrap();
        let ids: Vec<&str> = elements.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["c", "a", "x", "b"], "a non-string id is left out");
        assert_eq!(
            split_params(Split::InUse, &params, vec![json!("a")]),
            json!({"sessionIds": ["a"]})
        );

        let freed = split_results(
            Split::FreedBytes,
            &order,
            vec![
                json!({"freedBytes": {"a": 1, "b": 2}}),
                json!({"freedBytes": {"c": 3, "x": 0}}),
            ],
        );
        let keys: Vec<&String> = freed["freedBytes"].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["c", "a", "x", "b"]);

        let in_use = split_results(
            Split::InUse,
            &order,
            vec![json!({"inUse": ["b"]}), json!({"inUse": ["c"]})],
        );
        assert_eq!(in_use, json!({"inUse": ["c", "b"]}));

        let meta = split_results(
            Split::ClientMetadata,
            &order,
            vec![
                json!([{"sessionId": "a", "status": "ok"}, {"sessionId": "b", "status": "ok"}]),
                json!([{"sessionId": "c", "status": "ok"}, {"sessionId": "x", "status": "notFound"}]),
            ],
        );
        let ids: Vec<&str> = meta
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["sessionId"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["c", "a", "x", "b"]);

        let records = json!({"sessions": [{"sessionId": "b"}, {"sessionId": "a"}]});
        let elements = split_elements(Split::Enrich, &records).unwrap();
        assert_eq!(elements[0].0, "b");
        let enriched = split_results(
            Split::Enrich,
            &["b".into(), "a".into()],
            vec![
                json!({"sessions": [{"sessionId": "a", "summary": "A"}]}),
                json!({"sessions": [{"sessionId": "b", "summary": "B"}]}),
            ],
        );
        assert_eq!(enriched["sessions"][0]["summary"], "B");
        assert_eq!(enriched["sessions"][1]["summary"], "A");
    }

    #[test]
    fn a_silent_node_leaves_its_ids_out() {
        let order: Vec<String> = vec!["a".into(), "b".into()];
        let freed = split_results(
            Split::FreedBytes,
            &order,
            vec![json!({"freedBytes": {"b": 2}})],
        );
        assert_eq!(freed, json!({"freedBytes": {"b": 2}}));
    }
}
