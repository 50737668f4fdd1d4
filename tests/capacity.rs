//! Capacity: bounded-load placement of new sessions (live max/mean within `load_factor`, where
//! the ring alone is uneven), per-node session caps (`-32006` when every node is full, a delete
//! frees a slot), existing sessions never moving, and the live counts admin and metrics show.

mod support;

use std::collections::HashMap;

use serde_json::{json, Value};
use support::jsonrpc::{jsonrpc_config, session_params, CliFleet, RpcClient, RpcYaml};
use support::{admin_json, admin_post, metric_value, within, Proxy};

/// Create `n` sessions with fresh ids through `client`, pipelined in windows; each id with the
/// node that holds it afterwards (from the mock fleet).
async fn create_many(client: &mut RpcClient, prefix: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for window in (0..n).collect::<Vec<_>>().chunks(100) {
        let mut pending = Vec::new();
        for i in window {
            let id = format!("{prefix}-{i}");
            let rid = client
                .request("session.create", session_params(&id, json!({})))
                .await;
            pending.push((id, rid));
        }
        for (id, rid) in pending {
            let resp = client.response(&rid).await;
            assert!(resp.get("result").is_some(), "{id}: {resp}");
            ids.push(id);
        }
    }
    ids
}

/// Live sessions per node, as the mock fleet holds them.
fn spread(fleet: &CliFleet, ids: &[String]) -> HashMap<String, usize> {
    let mut per = HashMap::new();
    for id in ids {
        let holders = fleet.holders(id);
        assert_eq!(holders.len(), 1, "{id} on {holders:?}");
        *per.entry(holders[0].clone()).or_default() += 1;
    }
    per
}

fn max_over_mean(per: &HashMap<String, usize>, nodes: usize) -> f64 {
    let total: usize = per.values().sum();
    let max = per.values().copied().max().unwrap_or(0);
    max as f64 / (total as f64 / nodes as f64)
}

/// 2,000 sessions on 4 nodes whose ring is lopsided on purpose (2 points each).
async fn place_2000(
    pool_extra: &str,
) -> (f64, HashMap<String, usize>, Proxy, CliFleet, Vec<String>) {
    let fleet = CliFleet::start(4).await;
    let pool = format!("    hash:\n      vnodes: 2\n{pool_extra}");
    let extra = RpcYaml {
        pool: &pool,
        ..Default::default()
    };
    let proxy = Proxy::start_yaml(&jsonrpc_config(&fleet.members(), extra)).await;
    let mut client = RpcClient::connect(proxy.addr("cli")).await;
    let ids = create_many(&mut client, "s", 2000).await;
    let per = spread(&fleet, &ids);
    (max_over_mean(&per, 4), per, proxy, fleet, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_load_keeps_every_node_within_the_factor_of_the_mean() {
    within(120, async {
        let (ring_only, per, _proxy, _fleet, _) = place_2000("").await;
        eprintln!("ring alone: max/mean {ring_only:.3} {per:?}");
        assert!(
            ring_only > 1.25,
            "the lopsided ring must need the bound: {per:?}"
        );

        let (bounded, per, proxy, fleet, ids) = place_2000("      load_factor: 1.25\n").await;
        eprintln!("load_factor 1.25: max/mean {bounded:.3} {per:?}");
        assert!(bounded <= 1.25, "max/mean {bounded} {per:?}");

        // Admin and metrics agree with where the sessions are.
        let ups = admin_json(proxy.admin(), "/admin/upstreams").await;
        for u in ups["upstreams"].as_array().unwrap() {
            let name = u["name"].as_str().unwrap();
            assert_eq!(u["live_sessions"].as_u64(), Some(per[name] as u64), "{u}");
        }
        let text = proxy.metrics_text().await;
        let spills: f64 = fleet
            .members()
            .iter()
            .filter_map(|(name, _)| {
                let labels = [("pool", "fleet"), ("upstream", name.as_str())];
                metric_value(&text, "sessiongate_placement_spills_total", &labels)
            })
            .sum();
        assert!(spills > 0.0, "spills counted");
        let live = [("pool", "fleet"), ("upstream", "cli-0")];
        assert_eq!(
            metric_value(&text, "sessiongate_sessions_live", &live),
            Some(per["cli-0"] as f64)
        );

        // Existing sessions never move: a fresh connection resumes each where it was placed.
        let mut fresh = RpcClient::connect(proxy.addr("cli")).await;
        for id in ids.iter().step_by(20) {
            let before = fleet.holders(id);
            let result = fresh
                .result("session.resume", session_params(id, json!({})))
                .await;
            assert_eq!(result["sessionId"].as_str(), Some(id.as_str()));
            assert_eq!(fleet.holders(id), before, "{id} moved");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_fleet_refuses_new_sessions_until_one_is_deleted() {
    within(60, async {
        let fleet = CliFleet::start(4).await;
        let extra = RpcYaml {
            pool: "    max_sessions_per_upstream: 10\n",
            ..Default::default()
        };
        let proxy = Proxy::start_yaml(&jsonrpc_config(&fleet.members(), extra)).await;
        let mut client = RpcClient::connect(proxy.addr("cli")).await;
        let ids = create_many(&mut client, "cap", 40).await;
        let per = spread(&fleet, &ids);
        assert!(per.values().all(|&n| n == 10), "{per:?}");

        let refused = client
            .call("session.create", session_params("cap-41", json!({})))
            .await;
        assert_eq!(refused["error"]["code"], -32006, "{refused}");
        assert!(refused["error"]["data"]["retryAfterMs"].as_u64().unwrap() > 0);
        assert!(fleet.holders("cap-41").is_empty(), "nothing reached a node");
        // Existing sessions keep working.
        let resumed = client
            .result("session.resume", session_params(&ids[0], json!({})))
            .await;
        assert_eq!(resumed["sessionId"], Value::String(ids[0].clone()));

        let freed = fleet.holders(&ids[0]);
        let deleted = client
            .result("session.delete", session_params(&ids[0], json!({})))
            .await;
        assert_eq!(deleted["success"], true, "{deleted}");
        client
            .result("session.create", session_params("cap-42", json!({})))
            .await;
        // The freed slot took it: the deleted session's node.
        assert_eq!(fleet.holders("cap-42"), freed);
        // A dry run of a change: cli-3 removed, caps raised to 12.
        let members = fleet.members();
        let next = jsonrpc_config(
            &members[..3],
            RpcYaml {
                pool: "    max_sessions_per_upstream: 12\n",
                ..Default::default()
            },
        );
        let (status, plan) = admin_post(proxy.admin(), "/admin/reload?dry_run=true", &next).await;
        assert_eq!(status, 200, "{plan}");
        let live = plan["pools"][0]["live_sessions"]
            .as_array()
            .unwrap()
            .clone();
        for entry in &live {
            let name = entry["upstream"].as_str().unwrap();
            // Full again: the freed slot was taken.
            let now = 10;
            assert_eq!(entry["before"].as_u64(), Some(now as u64), "{entry}");
            let (after, cap) = match name {
                "cli-3" => (0, Value::Null),
                _ => (now as u64, json!(12)),
            };
            assert_eq!(
                (entry["after"].as_u64(), &entry["max_sessions"]),
                (Some(after), &cap),
                "{entry}"
            );
        }
        assert_eq!(live.len(), 4);

        let text = proxy.metrics_text().await;
        let labels = [("listener", "cli"), ("reason", "fleet_full")];
        assert_eq!(
            metric_value(&text, "sessiongate_admission_rejected_total", &labels),
            Some(1.0)
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_at_its_inflight_limit_is_not_read_until_answers_come_back() {
    within(30, async {
        let fleet = CliFleet::start(1).await;
        let extra = RpcYaml {
            listener: "    max_inflight_per_connection: 3\n",
            pool: "    request_timeout: 1s\n",
            ..Default::default()
        };
        let proxy = Proxy::start_yaml(&jsonrpc_config(&fleet.members(), extra)).await;
        let node = fleet.get("cli-0");
        node.set_fault("ping", sessiongate::mockcli::Fault::Hang);
        let mut client = RpcClient::connect(proxy.addr("cli")).await;
        let mut ids = Vec::new();
        for _ in 0..10 {
            ids.push(client.request("ping", json!({})).await);
        }
        // The first three time out (-32007); only then does the proxy read on.
        for id in &ids[..3] {
            let resp = client.response(id).await;
            assert_eq!(resp["error"]["code"], -32007, "{resp}");
        }
        let seen = node.requests_for("ping");
        assert!((3..=6).contains(&seen), "the node saw {seen} pings, not 10");
        node.clear_faults();
        for id in &ids[3..] {
            let resp = client.response(id).await;
            assert!(
                resp.get("result").is_some() || resp["error"]["code"] == -32007,
                "{resp}"
            );
        }
    })
    .await
}
