//! Fleet-wide session cleanup (`cleanup:` and `POST /admin/cleanup`): `sessions.pruneOld` on
//! every node with the node's token, sessions pinned live kept, a dry run deleting nothing,
//! deletions counted per node, and a node that is down reported while the others are cleaned.

mod support;

use serde_json::{json, Value};
use support::jsonrpc::{
    create, jsonrpc_config, send, session_params, CliFleet, RpcClient, RpcYaml,
};
use support::{admin_post, metric_value, within, Proxy};

const TOKEN: &str = "cleanup-s3cret";

/// A session created and messaged directly on `node` (so the proxy never pinned it).
async fn direct_session(fleet: &CliFleet, node: &str, id: &str) {
    let mut c = RpcClient::connect(fleet.get(node).addr()).await;
    c.result("connect", json!({ "token": TOKEN })).await;
    create(&mut c, id, json!({})).await;
    send(&mut c, id).await;
}

fn ids(v: &Value) -> Vec<String> {
    let mut ids: Vec<String> = v
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|id| id.as_str().expect("id").to_owned())
        .collect();
    ids.sort();
    ids
}

fn node<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["upstream"] == name))
        .unwrap_or_else(|| panic!("no node {name} in {report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_prunes_every_node_but_keeps_pinned_sessions() {
    // Only this test reads this variable.
    std::env::set_var("SG_CLEANUP_TEST_TOKEN", TOKEN);
    let fleet = CliFleet::start_with_token(3, Some(TOKEN)).await;
    // `every: 365d`: the scheduled round will not come during the test; rounds run on demand.
    let pool = "    token_env: SG_CLEANUP_TEST_TOKEN
    cleanup:
      older_than: 0s
      every: 365d
";
    let extra = RpcYaml {
        pool,
        ..Default::default()
    };
    let proxy = Proxy::start_yaml(&jsonrpc_config(&fleet.members(), extra)).await;
    let admin = proxy.admin();
    let nodes = ["cli-0", "cli-1", "cli-2"];
    within(30, async {
        // Per node: `old-N` unpinned, `resumed-N` pinned by a resume through the proxy,
        // `live-N` created through the proxy (pinned). All received a message.
        let mut c = RpcClient::connect(proxy.addr("cli")).await;
        c.result("connect", json!({})).await;
        for (i, name) in nodes.iter().enumerate() {
            direct_session(&fleet, name, &format!("old-{i}")).await;
            direct_session(&fleet, name, &format!("resumed-{i}")).await;
            let resumed = c
                .result(
                    "session.resume",
                    session_params(&format!("resumed-{i}"), json!({})),
                )
                .await;
            assert_eq!(resumed["sessionId"], format!("resumed-{i}"), "{resumed}");
        }
        let live: Vec<String> = (0..6).map(|i| format!("live-{i}")).collect();
        for id in &live {
            create(&mut c, id, json!({})).await;
            send(&mut c, id).await;
        }

        // A dry run lists each node's unpinned sessions and deletes nothing.
        let (status, report) =
            admin_post(admin, "/admin/cleanup?pool=fleet&dry_run=true", "").await;
        assert_eq!(status, 200, "{report}");
        assert_eq!(report["dry_run"], true, "{report}");
        assert_eq!(report["sessions"], 3, "{report}");
        for (i, name) in nodes.iter().enumerate() {
            let n = node(&report, name);
            assert_eq!(ids(&n["candidates"]), vec![format!("old-{i}")], "{report}");
            assert!(n["deleted"].as_array().unwrap().is_empty(), "{report}");
            assert!(n["freed_bytes"].as_u64().unwrap() > 0, "{report}");
            assert_eq!(n["error"], Value::Null, "{report}");
            assert_eq!(fleet.holders(&format!("old-{i}")), vec![name.to_string()]);
        }
        let metrics = proxy.metrics_text().await;
        let deleted = "sessiongate_cleanup_deleted_sessions_total";
        assert_eq!(
            metric_value(&metrics, deleted, &[("upstream", "cli-0")]).unwrap_or(0.0),
            0.0,
            "a dry run counts nothing"
        );

        // A real round deletes them; the pinned ones stay.
        let (status, report) = admin_post(admin, "/admin/cleanup?pool=fleet", "").await;
        assert_eq!(status, 200, "{report}");
        assert_eq!(report["dry_run"], false, "{report}");
        let mut freed = 0;
        for (i, name) in nodes.iter().enumerate() {
            let n = node(&report, name);
            assert_eq!(ids(&n["deleted"]), vec![format!("old-{i}")], "{report}");
            freed += n["freed_bytes"].as_u64().unwrap();
            assert!(fleet.holders(&format!("old-{i}")).is_empty());
            assert_eq!(
                fleet.holders(&format!("resumed-{i}")),
                vec![name.to_string()]
            );
        }
        assert_eq!(report["freed_bytes"], freed, "{report}");
        for id in &live {
            assert_eq!(fleet.holders(id).len(), 1, "{id} kept");
        }
        let metrics = proxy.metrics_text().await;
        for name in nodes {
            let labels = [("pool", "fleet"), ("upstream", name)];
            assert_eq!(
                metric_value(&metrics, deleted, &labels),
                Some(1.0),
                "{name}"
            );
            let bytes = "sessiongate_cleanup_freed_bytes_total";
            assert!(metric_value(&metrics, bytes, &labels).unwrap_or(0.0) > 0.0);
        }

        // A node that is down is reported; the others are cleaned.
        direct_session(&fleet, "cli-0", "old-again").await;
        fleet.get("cli-2").kill();
        let (status, report) = admin_post(admin, "/admin/cleanup?pool=fleet", "").await;
        assert_eq!(status, 200, "{report}");
        assert_eq!(report["failed"], 1, "{report}");
        assert!(node(&report, "cli-2")["error"].is_string(), "{report}");
        assert_eq!(
            ids(&node(&report, "cli-0")["deleted"]),
            vec!["old-again"],
            "{report}"
        );
        assert!(fleet.holders("old-again").is_empty());
        for id in &live {
            assert_eq!(fleet.holders(id).len(), 1, "{id} kept");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_cleanup_needs_a_known_pool_and_defaults_to_a_week() {
    let fleet = CliFleet::start(1).await;
    let proxy = Proxy::start_yaml(&jsonrpc_config(&fleet.members(), RpcYaml::default())).await;
    let admin = proxy.admin();
    within(30, async {
        let mut c = RpcClient::connect(fleet.get("cli-0").addr()).await;
        create(&mut c, "fresh", json!({})).await;
        send(&mut c, "fresh").await;
        let (status, report) = admin_post(admin, "/admin/cleanup", "").await;
        assert_eq!(status, 400, "{report}");
        let (status, report) = admin_post(admin, "/admin/cleanup?pool=nope", "").await;
        assert_eq!(status, 404, "{report}");
        // No `cleanup:`: older than 7 days, so a fresh session is kept.
        let (status, report) = admin_post(admin, "/admin/cleanup?pool=fleet", "").await;
        assert_eq!(status, 200, "{report}");
        assert_eq!(report["older_than_days"], 7.0, "{report}");
        assert_eq!(report["sessions"], 0, "{report}");
        assert_eq!(fleet.holders("fresh"), vec!["cli-0"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_rounds_run_until_a_reload_removes_cleanup() {
    let fleet = CliFleet::start(2).await;
    let scheduled = "    cleanup: { older_than: 0s, every: 200ms }\n";
    let extra = RpcYaml {
        pool: scheduled,
        ..Default::default()
    };
    let proxy = Proxy::start_yaml(&jsonrpc_config(&fleet.members(), extra)).await;
    within(30, async {
        let mut c = RpcClient::connect(proxy.addr("cli")).await;
        c.result("connect", json!({})).await;
        create(&mut c, "live", json!({})).await;
        send(&mut c, "live").await;
        for name in ["cli-0", "cli-1"] {
            let id = format!("old-{name}");
            let mut d = RpcClient::connect(fleet.get(name).addr()).await;
            create(&mut d, &id, json!({})).await;
            send(&mut d, &id).await;
        }
        // The metric is the only sign of a scheduled round.
        support::poll_until("both nodes cleaned on schedule", 10, || async {
            let metrics = proxy.metrics_text().await;
            ["cli-0", "cli-1"].iter().all(|name| {
                let labels = [("pool", "fleet"), ("upstream", *name)];
                metric_value(
                    &metrics,
                    "sessiongate_cleanup_deleted_sessions_total",
                    &labels,
                ) == Some(1.0)
            })
        })
        .await;
        assert!(fleet.holders("old-cli-0").is_empty());
        assert!(fleet.holders("old-cli-1").is_empty());
        assert_eq!(fleet.holders("live").len(), 1, "pinned live: kept");

        // Without `cleanup:` the schedule stops.
        let plain = jsonrpc_config(&fleet.members(), RpcYaml::default());
        proxy.reload_with(&plain).await.expect("reload");
        let mut d = RpcClient::connect(fleet.get("cli-0").addr()).await;
        create(&mut d, "after", json!({})).await;
        send(&mut d, "after").await;
        // Nothing signals a round that does not happen: give five intervals.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        assert_eq!(fleet.holders("after"), vec!["cli-0"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_redis_run_one_round_of_a_pool_at_a_time() {
    use sessiongate::mockcli::Fault;
    use support::redis::RedisServer;
    let redis = RedisServer::start().await;
    let fleet = CliFleet::start(2).await;
    let top = format!("redis:\n  url: {}\n", redis.url());
    let extra = RpcYaml {
        top: &top,
        ..Default::default()
    };
    // A node that never answers keeps a round (and its lock) open for the fan-out timeout.
    let yaml = jsonrpc_config(&fleet.members(), extra)
        .replace("fanout_timeout: 500ms", "fanout_timeout: 3s");
    let (a, b) = (
        Proxy::start_yaml(&yaml).await,
        Proxy::start_yaml(&yaml).await,
    );
    within(30, async {
        for proxy in [&a, &b] {
            support::poll_until("sessiongate_redis_up", 10, || async move {
                metric_value(&proxy.metrics_text().await, "sessiongate_redis_up", &[]) == Some(1.0)
            })
            .await;
        }
        fleet
            .get("cli-1")
            .set_fault("sessions.pruneOld", Fault::Hang);
        let admin_a = a.admin();
        let first =
            tokio::spawn(async move { admin_post(admin_a, "/admin/cleanup?pool=fleet", "").await });
        let cli_1 = fleet.get("cli-1");
        support::eventually("replica a's round reached cli-1", || {
            cli_1.requests_for("sessions.pruneOld") == 1
        })
        .await;
        let (status, refused) = admin_post(b.admin(), "/admin/cleanup?pool=fleet", "").await;
        assert_eq!(status, 409, "{refused}");
        let (status, report) = first.await.expect("round");
        assert_eq!(status, 200, "{report}");
        assert!(node(&report, "cli-1")["error"].is_string(), "{report}");
        assert_eq!(node(&report, "cli-0")["error"], Value::Null, "{report}");
        // The round released the lock: the other replica runs the next one.
        fleet.get("cli-1").clear_faults();
        let (status, report) = admin_post(b.admin(), "/admin/cleanup?pool=fleet", "").await;
        assert_eq!(status, 200, "{report}");
        assert_eq!(report["failed"], 0, "{report}");
    })
    .await;
}
