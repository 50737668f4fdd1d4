//! Two sessiongate replicas in front of one mock CLI fleet, sharing a real Redis
//! (`tests/support/redis.rs`): one turn at a time per session across both, one rate limit for
//! both; with Redis stopped each replica keeps serving from memory (logged once per outage) and
//! still serializes turns and counts requests itself; with Redis back, the limit is shared again.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use support::binary::Binary;
use support::jsonrpc::{
    all_at_once, attached_clients, create, error_of, jsonrpc_config, send_and_finish,
    session_params, CliFleet, RpcClient, RpcYaml,
};
use support::redis::RedisServer;
use support::{metric_value, poll_until, within, ConfigDir, Proxy};

const NODE: &str = "cli-0";

/// The token of user `alice` in [`TOKENS`].
const ALICE: &str = "alice-secret";
/// SHA-256 of [`ALICE`].
const TOKENS: &str =
    "- { sha256: 0c848abb03307b06cf70cd4e29c157dc81af5e94ab3eb1d0c59a120269572376, user: alice }\n";

const TURNS: &str = "    session_concurrency: 1\n    turn_timeout: 30s\n    max_queue: 16\n";

const FALLBACK_LOG: &str = "shared store: redis does not answer; serving from memory until it does";
const REDIS_UP_LOG: &str = "shared store: redis answers; using it";

fn redis_top(redis: &RedisServer) -> String {
    format!("redis:\n  url: {}\n", redis.url())
}

/// A replica running in this process.
async fn replica(fleet: &CliFleet, extra: RpcYaml<'_>) -> Proxy {
    Proxy::start_yaml(&jsonrpc_config(&fleet.members(), extra)).await
}

/// Wait until `proxy` has reached Redis (until then it serves from memory).
async fn wait_redis_up(proxy: &Proxy, up: bool) {
    let want = if up { 1.0 } else { 0.0 };
    poll_until("sessiongate_redis_up", 10, || async move {
        metric_value(&proxy.metrics_text().await, "sessiongate_redis_up", &[]) == Some(want)
    })
    .await;
}

/// A session created through `addr`; the creator is returned so the session stays loaded.
async fn new_session(addr: SocketAddr) -> (RpcClient, String) {
    let sid = uuid::Uuid::new_v4().to_string();
    let mut creator = RpcClient::connect(addr).await;
    create(&mut creator, &sid, json!({})).await;
    (creator, sid)
}

/// 10 senders through each of `a` and `b`, all at once, to one session; returns the answers.
async fn ten_through_each(a: SocketAddr, b: SocketAddr) -> Vec<Value> {
    let (_creator, sid) = new_session(a).await;
    let mut clients = attached_clients(a, &sid, 10).await;
    clients.extend(attached_clients(b, &sid, 10).await);
    all_at_once(clients, &sid).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turns_are_serialized_across_replicas_sharing_redis() {
    within(90, async {
        let redis = RedisServer::start().await;
        let fleet = CliFleet::start(1).await;
        let top = redis_top(&redis);
        let extra = RpcYaml {
            top: &top,
            pool: TURNS,
            ..RpcYaml::default()
        };
        let (a, b) = (replica(&fleet, extra).await, replica(&fleet, extra).await);
        wait_redis_up(&a, true).await;
        wait_redis_up(&b, true).await;
        let cli = fleet.get(NODE);
        cli.set_turn_duration(Duration::from_millis(30));

        let answers = ten_through_each(a.addr("cli"), b.addr("cli")).await;
        for answer in &answers {
            assert!(
                answer.get("result").is_some(),
                "every send is admitted: {answer}"
            );
        }
        assert_eq!(answers.len(), 20);
        assert_eq!(cli.turns_started(), 20);
        assert_eq!(
            cli.overlapping_turns(),
            0,
            "no two turns ran at once across replicas"
        );
        assert_eq!(cli.max_concurrent_turns(), 1);
        let a_metrics = a.metrics_text().await;
        assert_eq!(
            metric_value(
                &a_metrics,
                "sessiongate_store_fallback_total",
                &[("op", "lock")]
            ),
            Some(0.0),
            "every lock went through Redis"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_each_replica_locks_alone_and_turns_overlap() {
    within(90, async {
        let fleet = CliFleet::start(1).await;
        let extra = RpcYaml {
            pool: TURNS,
            ..RpcYaml::default()
        };
        let (a, b) = (replica(&fleet, extra).await, replica(&fleet, extra).await);
        let cli = fleet.get(NODE);
        cli.set_turn_duration(Duration::from_millis(30));

        let answers = ten_through_each(a.addr("cli"), b.addr("cli")).await;
        for answer in &answers {
            assert!(answer.get("result").is_some(), "{answer}");
        }
        assert_eq!(cli.turns_started(), 20);
        // The control: each replica serializes only its own senders.
        assert!(
            cli.overlapping_turns() > 0,
            "two replicas with their own locks did not overlap"
        );
        // Not bounded by 2: a holder's turn ends at the session's next idle or error, which may
        // be that of the other replica's turn (events do not say which turn they end).
        assert!(cli.max_concurrent_turns() > 1);
    })
    .await;
}

/// `connect` with alice's token, answered.
async fn alice(addr: SocketAddr) -> RpcClient {
    let mut client = RpcClient::connect(addr).await;
    let connected = client.call("connect", json!({ "token": ALICE })).await;
    assert!(connected.get("result").is_some(), "{connected}");
    client
}

/// The -32005 refusal of a limit of `limit` per minute, with `data.retryAfterMs` positive and
/// at most a window and a `limit`th of one (the store's bound).
fn assert_rate_limited(resp: &Value, limit: u64) {
    let err = error_of(resp);
    assert_eq!(err["code"], -32005, "{resp}");
    let retry = err["data"]["retryAfterMs"].as_u64().unwrap_or(0);
    assert!(retry > 0 && retry <= 60_000 + 60_000 / limit, "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_rate_limit_is_shared_by_replicas() {
    within(60, async {
        let redis = RedisServer::start().await;
        let fleet = CliFleet::start(1).await;
        let mut replicas = Vec::new();
        for _ in 0..2 {
            let dir = ConfigDir::new("");
            let tokens = dir.file("tokens.yaml", TOKENS);
            let top = format!(
                "{}identities:\n  tokens_file: {}\n",
                redis_top(&redis),
                tokens.display()
            );
            let listener = "    identity:\n      from: [token]\n      required: true\n    \
                            limits:\n      per_user: { requests: 6, per: 1m }\n";
            let extra = RpcYaml {
                top: &top,
                listener,
                ..RpcYaml::default()
            };
            dir.write(&jsonrpc_config(&fleet.members(), extra));
            let proxy = Proxy::start(dir).await;
            wait_redis_up(&proxy, true).await;
            replicas.push(proxy);
        }
        let (a, b) = (replicas[0].addr("cli"), replicas[1].addr("cli"));

        // Six requests of alice's: connect and two pings through each replica.
        let mut on_a = alice(a).await;
        let mut on_b = alice(b).await;
        for client in [&mut on_a, &mut on_b] {
            for _ in 0..2 {
                let pong = client.call("ping", json!({ "message": "hi" })).await;
                assert!(pong.get("result").is_some(), "{pong}");
            }
        }
        // The seventh is refused on either replica.
        assert_rate_limited(&on_a.call("ping", json!({})).await, 6);
        assert_rate_limited(&on_b.call("ping", json!({})).await, 6);
        assert_eq!(
            fleet.get(NODE).requests_for("ping"),
            4,
            "refused requests never reach the CLI"
        );
    })
    .await;
}

/// A config for the real binary: per-caller limit of 3 per minute (callers keyed by IP),
/// Redis shared.
fn limited_binary_config(fleet: &CliFleet, redis: &RedisServer) -> ConfigDir {
    let top = redis_top(redis);
    let extra = RpcYaml {
        top: &top,
        listener: "    limits:\n      per_user: { requests: 3, per: 1m }\n",
        ..RpcYaml::default()
    };
    ConfigDir::new(&jsonrpc_config(&fleet.members(), extra))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_is_logged_once_and_limits_are_counted_in_memory_until_redis_is_back() {
    within(90, async {
        let mut redis = RedisServer::start().await;
        let fleet = CliFleet::start(1).await;
        let config = limited_binary_config(&fleet, &redis);
        let mut a = Binary::spawn(config.path());
        let mut b = Binary::spawn(config.path());
        a.wait_log(REDIS_UP_LOG, |_| true).await;
        b.wait_log(REDIS_UP_LOG, |_| true).await;
        let (a_addr, b_addr) = (a.listener_addr("cli").await, b.listener_addr("cli").await);

        redis.stop();
        let mut client = RpcClient::connect(a_addr).await;
        for _ in 0..3 {
            let pong = client.call("ping", json!({})).await;
            assert!(
                pong.get("result").is_some(),
                "served during the outage: {pong}"
            );
        }
        assert_rate_limited(&client.call("ping", json!({})).await, 3);
        a.wait_log(FALLBACK_LOG, |_| true).await;
        // Let the probe (every second) fail a few more times: the outage is still logged once.
        // (No event marks a failed probe.)
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let pong = RpcClient::connect(b_addr)
            .await
            .call("ping", json!({}))
            .await;
        assert!(
            pong.get("result").is_some(),
            "the other replica counts on its own during the outage: {pong}"
        );

        redis.restart().await;
        a.wait_log(REDIS_UP_LOG, |_| true).await;
        b.wait_log(REDIS_UP_LOG, |_| true).await;
        assert_eq!(a.count_log(FALLBACK_LOG), 1, "one warning per outage");
        assert_eq!(b.count_log(FALLBACK_LOG), 1, "one warning per outage");

        // Redis came back empty: three requests across both replicas, then refused on both.
        let mut on_a = RpcClient::connect(a_addr).await;
        let mut on_b = RpcClient::connect(b_addr).await;
        for on_a_first in [true, false, true] {
            let client = if on_a_first { &mut on_a } else { &mut on_b };
            let pong = client.call("ping", json!({})).await;
            assert!(pong.get("result").is_some(), "shared again: {pong}");
        }
        assert_rate_limited(&on_b.call("ping", json!({})).await, 3);
        assert_rate_limited(&on_a.call("ping", json!({})).await, 3);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_one_replica_still_serializes_turns() {
    within(90, async {
        let mut redis = RedisServer::start().await;
        let fleet = CliFleet::start(1).await;
        let top = redis_top(&redis);
        let extra = RpcYaml {
            top: &top,
            pool: TURNS,
            ..RpcYaml::default()
        };
        let proxy = replica(&fleet, extra).await;
        wait_redis_up(&proxy, true).await;
        let addr = proxy.addr("cli");
        let (_creator, sid) = new_session(addr).await;
        let cli = fleet.get(NODE);
        cli.set_turn_duration(Duration::from_millis(30));

        redis.stop();
        let answers = all_at_once(attached_clients(addr, &sid, 10).await, &sid).await;
        for answer in &answers {
            assert!(
                answer.get("result").is_some(),
                "served from memory: {answer}"
            );
        }
        wait_redis_up(&proxy, false).await;
        assert_eq!(cli.turns_started(), 10);
        assert_eq!(cli.overlapping_turns(), 0);
        let text = proxy.metrics_text().await;
        let locks = metric_value(&text, "sessiongate_store_fallback_total", &[("op", "lock")]);
        assert!(
            locks.is_some_and(|n| n >= 10.0),
            "locks taken in memory: {locks:?}"
        );

        redis.restart().await;
        wait_redis_up(&proxy, true).await;
        let answers = all_at_once(attached_clients(addr, &sid, 10).await, &sid).await;
        for answer in &answers {
            assert!(answer.get("result").is_some(), "{answer}");
        }
        assert_eq!(cli.turns_started(), 20);
        assert_eq!(cli.overlapping_turns(), 0);
        let text = proxy.metrics_text().await;
        let after = metric_value(&text, "sessiongate_store_fallback_total", &[("op", "lock")]);
        assert_eq!(after, locks, "locks through Redis again");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_begun_during_an_outage_keeps_its_session_when_redis_is_back() {
    within(90, async {
        let mut redis = RedisServer::start().await;
        let fleet = CliFleet::start(1).await;
        let top = redis_top(&redis);
        // The lock lives 6s and is renewed every 2s: renewed through Redis once it is back.
        let pool = "    session_concurrency: 1\n    turn_timeout: 6s\n    max_queue: 4\n";
        let extra = RpcYaml {
            top: &top,
            pool,
            ..RpcYaml::default()
        };
        let proxy = replica(&fleet, extra).await;
        wait_redis_up(&proxy, true).await;
        let addr = proxy.addr("cli");
        let (_creator, sid) = new_session(addr).await;
        let mut clients = attached_clients(addr, &sid, 2).await;
        let mut second = clients.pop().expect("client");
        let mut first = clients.pop().expect("client");
        let cli = fleet.get(NODE);

        // The first turn begins while Redis is down: its lock is granted in memory.
        redis.stop();
        cli.set_turn_duration(Duration::from_secs(5));
        let answer = first
            .call(
                "session.send",
                session_params(&sid, json!({"prompt": "outage"})),
            )
            .await;
        assert!(answer.get("result").is_some(), "{answer}");
        wait_redis_up(&proxy, false).await;

        redis.restart().await;
        wait_redis_up(&proxy, true).await;
        assert_eq!(cli.turns_running(&sid), 1, "the first turn still runs");
        // At its next renewal the lock is taken in Redis too, so other replicas see it.
        let key = format!("sessiongate:lock:turn:fleet:{sid}");
        let client = redis::Client::open(redis.url()).expect("url");
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis");
        poll_until("the lock is in Redis", 5, || {
            let (mut conn, key) = (conn.clone(), key.clone());
            async move {
                let holder: Option<String> = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .expect("GET");
                holder.is_some()
            }
        })
        .await;
        assert_eq!(cli.turns_running(&sid), 1, "the first turn still runs");
        cli.set_turn_duration(Duration::from_millis(20));
        let answer = send_and_finish(&mut second, &sid, "after").await;
        assert!(answer.get("result").is_some(), "{answer}");
        assert_eq!(cli.turns_started(), 2);
        assert_eq!(
            cli.overlapping_turns(),
            0,
            "the second send waited for the turn begun during the outage"
        );
    })
    .await;
}
