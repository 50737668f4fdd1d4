//! Session pins shared by replicas through a real Redis (`tests/support/redis.rs`). Sessions
//! are placed by load (a cap of 5 per node on 4 mock CLIs), so many do not live on their ring
//! owner: a replica that does not know their pins would have to ask the fleet for each. With
//! Redis, a second replica and a restarted one resume every session where it lives without a
//! single owner search; a replica without Redis (the control) searches for each one off its
//! ring owner; with Redis stopped, a fresh replica still serves every session (by owner
//! discovery), and fleet-wide cleanup keeps the sessions any replica pins live.

mod support;

use std::net::SocketAddr;

use serde_json::{json, Value};
use support::issuing;
use support::jsonrpc::{
    create, jsonrpc_config, send, session_params, CliFleet, RpcClient, RpcYaml,
};
use support::redis::RedisServer;
use support::{admin_json, admin_post, metric_value, poll_until, within, Proxy};

/// Bounded-load placement with a cap of 5 live sessions per node.
const CAPPED: &str = "    hash: { load_factor: 1.25 }\n    max_sessions_per_upstream: 5\n";

fn redis_top(redis: &RedisServer) -> String {
    format!("redis:\n  url: {}\n", redis.url())
}

async fn replica(fleet: &CliFleet, top: &str, pool: &str) -> Proxy {
    let extra = RpcYaml {
        top,
        pool,
        ..RpcYaml::default()
    };
    Proxy::start_yaml(&jsonrpc_config(&fleet.members(), extra)).await
}

async fn wait_redis_up(proxy: &Proxy) {
    poll_until("sessiongate_redis_up is 1", 10, || async move {
        metric_value(&proxy.metrics_text().await, "sessiongate_redis_up", &[]) == Some(1.0)
    })
    .await;
}

/// Owner searches `proxy` made, found or not.
async fn owner_searches(proxy: &Proxy) -> f64 {
    let text = proxy.metrics_text().await;
    ["found", "not_found"]
        .iter()
        .filter_map(|r| {
            metric_value(
                &text,
                "sessiongate_owner_discovery_total",
                &[("pool", "fleet"), ("result", r)],
            )
        })
        .sum()
}

/// Resume every session through `addr` and check it was resumed on the node that holds it.
async fn resume_all(addr: SocketAddr, fleet: &CliFleet, sessions: &[String]) {
    let mut c = RpcClient::connect(addr).await;
    for id in sessions {
        let result = c
            .result("session.resume", session_params(id, json!({})))
            .await;
        let holder = &fleet.holders(id)[0];
        let path = result["workspacePath"].as_str().expect("workspacePath");
        assert!(
            path.contains(&format!("/{holder}/")),
            "{id} resumed on {path}"
        );
        send(&mut c, id).await;
    }
}

/// Sessions created through `addr`, each sent to once (so the CLI's prune would consider it).
async fn create_sessions(addr: SocketAddr, n: usize) -> Vec<String> {
    let mut c = RpcClient::connect(addr).await;
    let mut ids = Vec::new();
    for _ in 0..n {
        let id = uuid::Uuid::new_v4().to_string();
        create(&mut c, &id, json!({})).await;
        send(&mut c, &id).await;
        ids.push(id);
    }
    ids
}

/// How many of `sessions` live on another node than their ring owner in `proxy`'s pool.
fn off_ring(proxy: &Proxy, fleet: &CliFleet, sessions: &[String]) -> usize {
    let snapshot = proxy.server.snapshot();
    let pool = snapshot.pool("fleet").expect("pool");
    sessions
        .iter()
        .filter(|id| {
            let owner = pool.owner(id.as_bytes()).expect("owner");
            fleet.holders(id) != [owner.name()]
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_redis_resume_every_session_without_owner_searches() {
    within(120, async {
        let redis = RedisServer::start().await;
        let fleet = CliFleet::start(4).await;
        let top = redis_top(&redis);
        let first = replica(&fleet, &top, CAPPED).await;
        wait_redis_up(&first).await;
        let sessions = create_sessions(first.addr("cli"), 20).await;
        let moved = off_ring(&first, &fleet, &sessions);
        assert!(
            moved > 0,
            "placement by load put some sessions off their ring owner"
        );

        // A second replica, and the first one restarted: every session where it lives, no
        // owner search.
        let second = replica(&fleet, &top, CAPPED).await;
        wait_redis_up(&second).await;
        resume_all(second.addr("cli"), &fleet, &sessions).await;
        assert_eq!(owner_searches(&second).await, 0.0);
        drop(first);
        let restarted = replica(&fleet, &top, CAPPED).await;
        wait_redis_up(&restarted).await;
        resume_all(restarted.addr("cli"), &fleet, &sessions).await;
        assert_eq!(owner_searches(&restarted).await, 0.0);

        // The control: a replica without Redis searches for each session off its ring owner.
        let alone = replica(&fleet, "", CAPPED).await;
        resume_all(alone.addr("cli"), &fleet, &sessions).await;
        assert_eq!(owner_searches(&alone).await, moved as f64);

        // Redis stopped: nothing fails. A fresh replica finds the sessions by owner discovery,
        // the restarted one keeps serving from its own pins; both count the outage.
        let mut redis = redis;
        redis.stop();
        let fresh = replica(&fleet, &top, CAPPED).await;
        resume_all(fresh.addr("cli"), &fleet, &sessions).await;
        assert_eq!(owner_searches(&fresh).await, moved as f64);
        let text = fresh.metrics_text().await;
        let lookups_from_memory = metric_value(
            &text,
            "sessiongate_store_fallback_total",
            &[("op", "pin_lookup")],
        );
        assert!(
            lookups_from_memory >= Some(moved as f64),
            "{lookups_from_memory:?}"
        );
        resume_all(restarted.addr("cli"), &fleet, &sessions).await;
        assert_eq!(owner_searches(&restarted).await, 0.0);
    })
    .await;
}

const CLEANUP: &str = "    cleanup: { older_than: 0s, every: 1h }\n";

/// The session ids a cleanup round through `proxy`'s admin deleted or would delete.
async fn cleanup_round(proxy: &Proxy, dry_run: bool) -> Vec<String> {
    let query = if dry_run { "&dry_run=true" } else { "" };
    let (status, report) = admin_post(
        proxy.admin(),
        &format!("/admin/cleanup?pool=fleet{query}"),
        "",
    )
    .await;
    assert_eq!(status, 200, "{report}");
    let key = if dry_run { "candidates" } else { "deleted" };
    let mut ids: Vec<String> = report["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .flat_map(|n| n[key].as_array().cloned().unwrap_or_default())
        .map(|v: Value| v.as_str().expect("id").to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_keeps_the_sessions_every_replica_pins_live() {
    within(120, async {
        let redis = RedisServer::start().await;
        let fleet = CliFleet::start(2).await;
        let top = redis_top(&redis);
        let pool = format!("{CAPPED}{CLEANUP}");
        let (a, b) = (
            replica(&fleet, &top, &pool).await,
            replica(&fleet, &top, &pool).await,
        );
        wait_redis_up(&a).await;
        wait_redis_up(&b).await;
        let through_a = create_sessions(a.addr("cli"), 3).await;
        // Sessions on the nodes that no replica pins: made directly, as an old session would be.
        let mut direct = Vec::new();
        for cli in &fleet.clis {
            let mut c = RpcClient::connect(cli.addr()).await;
            let id = uuid::Uuid::new_v4().to_string();
            create(&mut c, &id, json!({})).await;
            send(&mut c, &id).await;
            direct.push(id);
        }
        direct.sort();
        // B pins none of A's sessions itself; Redis tells it they are live.
        poll_until("A's pins reached redis", 10, || async {
            cleanup_round(&b, true).await == direct
        })
        .await;
        assert_eq!(cleanup_round(&b, false).await, direct);
        for id in &through_a {
            assert_eq!(fleet.holders(id).len(), 1, "{id} kept");
        }
        for id in &direct {
            assert!(fleet.holders(id).is_empty(), "{id} deleted");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_session_learned_by_one_replica_is_followed_by_another() {
    within(60, async {
        let redis = RedisServer::start().await;
        let fleet = issuing::issuers(&["m1", "m2", "m3"]).await;
        let shared = format!(
            "{}{}",
            redis_top(&redis),
            issuing::config(&fleet.members, "")
        );
        let (a, b) = (
            Proxy::start_yaml(&shared).await,
            Proxy::start_yaml(&shared).await,
        );
        wait_redis_up(&a).await;
        wait_redis_up(&b).await;
        let mut through_a = a.client("mcp").await;
        let mut sessions = Vec::new();
        for _ in 0..30 {
            sessions.push(issuing::initialize(&mut through_a).await);
        }
        // Each issuer answers 404 for ids it did not issue: a request B sent by the ring to
        // another upstream would show.
        let mut through_b = b.client("mcp").await;
        for (id, issuer) in &sessions {
            let reply = issuing::send(&mut through_b, http::Method::POST, Some(id)).await;
            assert_eq!(reply.status, 200, "{id}: {}", reply.body);
            assert_eq!(reply.upstream(), issuer, "{id}");
        }
        // A replica started now knows every pin; a delete through B unpins for the others.
        let restarted = Proxy::start_yaml(&shared).await;
        wait_redis_up(&restarted).await;
        let route = |key: String| {
            let admin = restarted.admin();
            async move { admin_json(admin, &format!("/admin/route?pool=mcp&key={key}")).await }
        };
        for (id, issuer) in &sessions {
            let route = route(id.clone()).await;
            assert_eq!(
                (&route["source"], &route["name"]),
                (&json!("pin"), &json!(issuer))
            );
        }
        let (deleted, issuer) = &sessions[0];
        let reply = issuing::send(&mut through_b, http::Method::DELETE, Some(deleted)).await;
        assert_eq!(
            (reply.status.as_u16(), reply.upstream()),
            (200, issuer.as_str())
        );
        let fresh = Proxy::start_yaml(&shared).await;
        wait_redis_up(&fresh).await;
        poll_until("the delete reached redis", 10, || async {
            let path = format!("/admin/route?pool=mcp&key={deleted}");
            admin_json(fresh.admin(), &path).await["source"] == "ring"
        })
        .await;
        assert_eq!(route(sessions[1].0.clone()).await["source"], "pin");
    })
    .await;
}
