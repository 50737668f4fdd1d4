//! The pure merge rules of fan-out and split answers (`proxy::jsonrpc::merge`) on arbitrary
//! JSON: the input is cut at 0xff bytes (never in UTF-8) into parts, each part that parses is
//! one node's `result`, and the first is also a split request's `params`. Checked: no panic;
//! each merge keeps its promise (a session list sorted newest first without duplicate ids, a
//! unique id only when every node agrees, sizes and prune totals that add up, newest ids
//! without duplicates within the limit); a split request cut over three nodes whose answers
//! echo their share merges back to the answer for the whole list, in request order.
#![no_main]

use std::collections::{HashMap, HashSet};

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use sessiongate::proxy::jsonrpc::merge;
use sessiongate::proxy::jsonrpc::methods::{Merge, Split};

const MERGES: [Merge; 7] = [
    Merge::SessionList,
    Merge::UniqueId,
    Merge::FirstId,
    Merge::NewestSession,
    Merge::Sizes,
    Merge::NewestIds,
    Merge::Prune,
];
const SPLITS: [Split; 4] = [
    Split::FreedBytes,
    Split::InUse,
    Split::ClientMetadata,
    Split::Enrich,
];

fuzz_target!(|data: &[u8]| {
    let Some((&choice, data)) = data.split_first() else {
        return;
    };
    let results: Vec<Value> = data
        .split(|&b| b == 0xff)
        .filter_map(|part| serde_json::from_slice(part).ok())
        .collect();
    merges(MERGES[usize::from(choice) % MERGES.len()], &results, choice);
    if let Some(params) = results.first() {
        split(
            SPLITS[usize::from(choice >> 4) % SPLITS.len()],
            params,
            &results[1..],
        );
    }
});

fn text<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
    v.get(field).and_then(Value::as_str)
}

fn merges(kind: Merge, results: &[Value], choice: u8) {
    let merged = merge::results(kind, results.to_vec());
    let ids: Vec<&str> = results
        .iter()
        .filter_map(|r| text(r, "sessionId"))
        .collect();
    match kind {
        Merge::SessionList => {
            let sessions = merged["sessions"].as_array().expect("sessions");
            let total: usize = results
                .iter()
                .filter_map(|r| r.get("sessions")?.as_array().map(Vec::len))
                .sum();
            assert!(sessions.len() <= total);
            let modified = |s: &Value| text(s, "modifiedTime").unwrap_or("").to_owned();
            assert!(sessions
                .windows(2)
                .all(|w| modified(&w[0]) >= modified(&w[1])));
            let mut seen = HashSet::new();
            for sid in sessions.iter().filter_map(|s| text(s, "sessionId")) {
                assert!(seen.insert(sid), "{sid} twice");
            }
        }
        Merge::UniqueId => match text(&merged, "sessionId") {
            Some(one) => assert!(!ids.is_empty() && ids.iter().all(|id| *id == one)),
            None => assert!(ids.iter().collect::<HashSet<_>>().len() != 1),
        },
        Merge::FirstId | Merge::NewestSession => {
            assert_eq!(text(&merged, "sessionId"), ids.first().copied())
        }
        Merge::Sizes => {
            let sizes = merged["sizes"].as_object().expect("sizes");
            let keys: HashSet<&String> = results
                .iter()
                .filter_map(|r| r.get("sizes")?.as_object())
                .flat_map(|m| m.keys())
                .collect();
            assert_eq!(sizes.len(), keys.len());
        }
        Merge::NewestIds => {
            // With times from the results' session lists and a limit from the input.
            let per_node: Vec<Vec<String>> = results.iter().map(merge::session_ids).collect();
            let modified: HashMap<String, String> = merge::session_list(results.to_vec())
                .iter()
                .filter_map(|s| {
                    Some((
                        text(s, "sessionId")?.into(),
                        text(s, "modifiedTime")?.into(),
                    ))
                })
                .collect();
            let limit = usize::from(choice >> 3);
            let merged = merge::newest_ids(per_node.clone(), &modified, Some(limit));
            let out = merged["sessionIds"].as_array().expect("sessionIds");
            let all: HashSet<&String> = per_node.iter().flatten().collect();
            assert_eq!(out.len(), all.len().min(limit));
            let mut seen = HashSet::new();
            for id in out {
                let id = id.as_str().expect("an id");
                assert!(seen.insert(id) && all.contains(&id.to_owned()));
            }
            let newest: Vec<(String, Option<String>)> = all
                .iter()
                .map(|id| (id.to_string(), modified.get(*id).cloned()))
                .collect();
            let chosen = merge::newest_session(newest.clone());
            match text(&chosen, "sessionId") {
                Some(id) => {
                    let best = newest.iter().map(|(_, t)| t).max().expect("a candidate");
                    assert_eq!(modified.get(id), best.as_ref());
                }
                None => assert!(newest.is_empty()),
            }
        }
        Merge::Prune => {
            let list_len = |field: &str| -> usize {
                results
                    .iter()
                    .map(|r| {
                        r.get(field)
                            .and_then(Value::as_array)
                            .map_or(0, |l| l.iter().filter(|v| v.is_string()).count())
                    })
                    .sum()
            };
            for field in ["deleted", "candidates", "skipped"] {
                assert_eq!(
                    merged[field].as_array().expect(field).len(),
                    list_len(field)
                );
            }
            let freed = results
                .iter()
                .filter_map(|r| r.get("freedBytes")?.as_u64())
                .fold(0u64, u64::saturating_add);
            assert_eq!(merged["freedBytes"].as_u64(), Some(freed));
        }
    }
}

fn split(kind: Split, params: &Value, others: &[Value]) {
    // Whatever the nodes answer, merging does not panic.
    let order: Vec<String> = others
        .iter()
        .filter_map(|v| text(v, "sessionId"))
        .map(str::to_owned)
        .collect();
    merge::split_results(kind, &order, others.to_vec());

    let Some(elements) = merge::split_elements(kind, params) else {
        return;
    };
    // Three nodes, each element placed by its id; each node answers for exactly its share.
    let mut shares: [Vec<(String, Value)>; 3] = Default::default();
    for (id, element) in &elements {
        shares[id.len() % 3].push((id.clone(), element.clone()));
    }
    let mut answers = Vec::new();
    for share in &shares {
        let part =
            merge::split_params(kind, params, share.iter().map(|(_, e)| e.clone()).collect());
        let list = part[kind.list_field()].as_array().expect("the list");
        assert_eq!(list.len(), share.len());
        let ids = share.iter().map(|(id, _)| id.clone());
        answers.push(match kind {
            Split::FreedBytes => json!({"freedBytes": ids.map(|id| (id, json!(1))).collect::<serde_json::Map<_, _>>()}),
            Split::InUse => json!({"inUse": ids.collect::<Vec<_>>()}),
            Split::ClientMetadata => ids.map(|id| json!({"sessionId": id})).collect(),
            Split::Enrich => json!({"sessions": list}),
        });
    }
    let order: Vec<String> = elements.iter().map(|(id, _)| id.clone()).collect();
    let merged = merge::split_results(kind, &order, answers);
    match kind {
        Split::FreedBytes => {
            let unique: Vec<&String> = {
                let mut seen = HashSet::new();
                order.iter().filter(|id| seen.insert(*id)).collect()
            };
            let keys: Vec<&String> = merged["freedBytes"]
                .as_object()
                .expect("freedBytes")
                .keys()
                .collect();
            assert_eq!(keys, unique);
        }
        Split::InUse => assert_eq!(merged["inUse"], json!(order)),
        Split::ClientMetadata => {
            let expected: Vec<Value> = order.iter().map(|id| json!({"sessionId": id})).collect();
            assert_eq!(merged, Value::Array(expected));
        }
        Split::Enrich => {
            let expected: Vec<&Value> = elements.iter().map(|(_, e)| e).collect();
            assert_eq!(merged["sessions"], json!(expected));
        }
    }
}
