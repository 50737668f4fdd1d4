//! The `jsonrpc` listener against a fleet of in-process mock CLI servers (issue 3 §2-§6): one
//! client connection, many nodes; per-message routing, setup replay, tokens, `session.list`
//! fan-out, server-initiated requests, batches, pins across reloads, owner discovery, failures,
//! bad input and per-session metrics. Real sockets on 127.0.0.1:0, proxy in process.

mod support;

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sessiongate::ring::Ring;
use sessiongate::snapshot::Pool;
use support::jsonrpc::{
    assert_unavailable, create, error_of, id_on, ids_per_upstream, jsonrpc_config,
    one_answer_per_request, prompt, send, session_params, CliFleet, Recorder, RpcClient, RpcYaml,
    Setup,
};
use support::upstream;
use support::{admin_route, admin_upstream, metric_value, poll_until, within, Proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_global_reads_go_to_the_connections_home_node() {
    let s = Setup::start(
        4,
        RpcYaml {
            listener: "    key:\n      - client_ip: true\n",
            ..Default::default()
        },
    )
    .await;
    // With a client identity, home is the ring owner of the client's IP.
    let mut admin = s.proxy.admin_client().await;
    let home = admin_route(&mut admin, "fleet", "127.0.0.1").await;
    let version = format!("mock-{home}");

    within(10, async {
        let mut c = s.client().await;
        let connected = c
            .result("connect", json!({"supportedTaskKinds": ["agent"]}))
            .await;
        assert_eq!(connected["ok"], true);
        assert_eq!(connected["protocolVersion"], 3);
        assert_eq!(connected["version"], version);
        for i in 0..3 {
            let pong = c.result("ping", json!({ "message": i.to_string() })).await;
            assert_eq!(pong["message"], format!("pong: {i}"));
        }
        assert_eq!(c.result("status.get", json!({})).await["version"], version);
        assert_eq!(
            c.result("auth.getStatus", json!({})).await["isAuthenticated"],
            false
        );
        assert_eq!(
            c.result("session.getForeground", json!({})).await,
            json!({})
        );
        assert_eq!(c.result("session.getLastId", json!({})).await, json!({}));
        // The home node's own error passes through unchanged.
        let models = c.call("models.list", json!({})).await;
        assert_eq!(error_of(&models)["code"], -32603);

        // A second connection from the same client IP has the same home.
        let mut c2 = s.client().await;
        assert_eq!(c2.result("status.get", json!({})).await["version"], version);
        one_answer_per_request(&c, 9);
    })
    .await;
    for cli in &s.fleet.clis {
        let expected = if cli.name() == home { 10 } else { 0 };
        assert_eq!(
            cli.requests_served(),
            expected,
            "requests on {}",
            cli.name()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_spread_over_the_fleet_and_each_message_reaches_its_holder() {
    let s = Setup::start(4, RpcYaml::default()).await;
    let sessions = ids_per_upstream(&s.pool(), 2);
    within(20, async {
        let mut c = s.client().await;
        for (id, _) in &sessions {
            create(&mut c, id, json!({})).await;
        }
        for (id, node) in &sessions {
            assert_eq!(s.fleet.holders(id), [node.as_str()], "holder of {id}");
        }
        for cli in &s.fleet.clis {
            assert_eq!(cli.session_ids().len(), 2, "sessions on {}", cli.name());
        }
        for (id, _) in &sessions {
            send(&mut c, id).await;
            let events = c
                .result("session.getMessages", session_params(id, json!({})))
                .await;
            let kinds: Vec<&str> = events["events"]
                .as_array()
                .expect("events")
                .iter()
                .map(|e| e["type"].as_str().unwrap_or_default())
                .collect();
            assert_eq!(kinds, ["session.start", "user.message", "session.error"]);
            let meta = c
                .result("session.getMetadata", session_params(id, json!({})))
                .await;
            assert_eq!(meta["session"]["sessionId"], id.as_str());
        }
        one_answer_per_request(&c, sessions.len() * 4);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_without_an_id_gets_a_uuid_v4_placed_on_its_ring_owner() {
    let s = Setup::start(3, RpcYaml::default()).await;
    let mut admin = s.proxy.admin_client().await;
    within(20, async {
        let mut c = s.client().await;
        let mut seen = HashSet::new();
        for _ in 0..6 {
            let result = c.result("session.create", json!({})).await;
            let id = result["sessionId"].as_str().expect("sessionId").to_owned();
            let uuid = uuid::Uuid::parse_str(&id).expect("a UUID");
            assert_eq!(uuid.get_version_num(), 4, "{id}");
            assert!(seen.insert(id.clone()), "ids are fresh");
            let owner = admin_route(&mut admin, "fleet", &id).await;
            assert_eq!(s.fleet.holders(&id), [owner], "session {id}");
            send(&mut c, &id).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_calls_are_replayed_on_each_new_link_and_their_answers_consumed() {
    let s = Setup::start(3, RpcYaml::default()).await;
    let sessions = ids_per_upstream(&s.pool(), 1);
    within(20, async {
        let mut c = s.client().await;
        let connected = c
            .result("connect", json!({"supportedTaskKinds": ["agent"]}))
            .await;
        assert_eq!(connected["ok"], true);
        // The mock does not implement it: the client sees the home node's answer, once.
        let provider = c
            .call("sessionFs.setProvider", json!({"initialCwd": "/work"}))
            .await;
        assert_eq!(error_of(&provider)["code"], -32601);
        for (id, _) in &sessions {
            create(&mut c, id, json!({})).await;
            send(&mut c, id).await;
        }
        // Each node saw connect and setProvider (the home node from the client, the others as
        // replays on their new link), then the create and the send.
        for cli in &s.fleet.clis {
            assert_eq!(cli.requests_served(), 4, "requests on {}", cli.name());
        }
        // A setup call made once links are open goes to every one of them too.
        let plugins = c.call("plugins.builtin.set", json!({"plugins": []})).await;
        assert_eq!(error_of(&plugins)["code"], -32601);
        for (id, _) in &sessions {
            send(&mut c, id).await;
        }
        for cli in &s.fleet.clis {
            assert_eq!(cli.requests_served(), 6, "requests on {}", cli.name());
        }
        one_answer_per_request(&c, 2 + sessions.len() * 3 + 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pools_token_goes_into_every_links_connect_and_never_to_the_client() {
    const TOKEN: &str = "s3cret";
    // Only this test reads this variable.
    std::env::set_var("SG_JSONRPC_ROUTING_TOKEN", TOKEN);
    let fleet = CliFleet::start_with_token(3, Some(TOKEN)).await;
    let extra = RpcYaml {
        pool: "    token_env: SG_JSONRPC_ROUTING_TOKEN\n",
        ..Default::default()
    };
    let proxy = Proxy::start_yaml(&jsonrpc_config(&fleet.members(), extra)).await;
    let pool = proxy.server.snapshot().pool("fleet").expect("pool").clone();
    let sessions = ids_per_upstream(&pool, 1);

    within(20, async {
        // The mocks do enforce the token.
        let mut direct = RpcClient::connect(fleet.clis[0].addr()).await;
        assert_eq!(
            error_of(&direct.call("ping", json!({})).await)["code"],
            -32001
        );
        assert_eq!(
            error_of(&direct.call("connect", json!({})).await)["code"],
            -32002
        );

        let mut c = RpcClient::connect(proxy.addr("cli")).await;
        let connected = c.result("connect", json!({})).await;
        assert_eq!(connected["ok"], true);
        for (id, _) in &sessions {
            create(&mut c, id, json!({})).await;
            send(&mut c, id).await;
        }
        for (id, node) in &sessions {
            assert_eq!(fleet.holders(id), [node.as_str()]);
        }
        // A client guessing a token gets the node's token put in its place.
        let mut guess = RpcClient::connect(proxy.addr("cli")).await;
        let connected = guess.result("connect", json!({"token": "guess"})).await;
        assert_eq!(connected["ok"], true);
        assert_eq!(guess.result("ping", json!({})).await["message"], "pong: ");

        for frame in c.received.iter().chain(&guess.received) {
            assert!(!frame.to_string().contains(TOKEN), "token leaked: {frame}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_token_is_never_replayed_to_another_node() {
    const TOKEN: &str = "tok-0";
    // Only this test reads this variable.
    std::env::set_var("SG_JSONRPC_ROUTING_NODE_TOKEN", TOKEN);
    let fleet = CliFleet::start_with_token(1, Some(TOKEN)).await;
    let recorder = Recorder::start().await;
    // Name the token-less node so that the client's home (ring owner of its IP) is cli-0.
    let other = (0..50_000)
        .map(|i| format!("rec-{i}"))
        .find(|name| {
            let ring = Ring::build([("cli-0", 1), (name.as_str(), 1)], 160);
            ring.owner(b"127.0.0.1") == Some(0)
        })
        .expect("a name");
    let members = vec![fleet.members()[0].clone(), (other.clone(), recorder.addr)];
    let extra = RpcYaml {
        listener: "    key:\n      - client_ip: true\n",
        ..Default::default()
    };
    let yaml = jsonrpc_config(&members, extra).replace(
        "{ name: cli-0,",
        "{ name: cli-0, token_env: SG_JSONRPC_ROUTING_NODE_TOKEN,",
    );
    let proxy = Proxy::start_yaml(&yaml).await;
    let pool = proxy.server.snapshot().pool("fleet").expect("pool").clone();
    within(10, async {
        let mut c = RpcClient::connect(proxy.addr("cli")).await;
        let connected = c
            .result("connect", json!({"supportedTaskKinds": ["agent"]}))
            .await;
        assert_eq!(connected["version"], "mock-cli-0", "home is the token node");
        let id = id_on(&pool, &other);
        create(&mut c, &id, json!({})).await;
        let frames = recorder.frames();
        let replayed = frames
            .iter()
            .find(|f| f["method"] == "connect")
            .unwrap_or_else(|| panic!("connect replayed to {other}: {frames:?}"));
        assert_eq!(replayed["params"]["supportedTaskKinds"], json!(["agent"]));
        for frame in &frames {
            assert!(
                !frame.to_string().contains(TOKEN),
                "cli-0's token sent to {other}: {frame}"
            );
        }
        let on_token_node = id_on(&pool, "cli-0");
        create(&mut c, &on_token_node, json!({})).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_list_merges_every_node_newest_first_and_skips_silent_and_dead_ones() {
    let fleet = CliFleet::start(3).await;
    let mute = upstream::silent().await;
    let mut members = fleet.members();
    members.push(("mute".to_owned(), mute.addr));
    let proxy = Proxy::start_yaml(&jsonrpc_config(&members, RpcYaml::default())).await;
    let pool = proxy.server.snapshot().pool("fleet").expect("pool").clone();
    let sessions: Vec<(String, String)> = ids_per_upstream(&pool, 2)
        .into_iter()
        .filter(|(_, node)| node != "mute")
        .collect();

    within(20, async {
        let mut c = RpcClient::connect(proxy.addr("cli")).await;
        for (id, _) in &sessions {
            create(&mut c, id, json!({})).await;
        }
        for (id, _) in sessions.iter().step_by(2) {
            send(&mut c, id).await;
        }
        // The same session also on a second node: the list shows it once, the newer copy.
        let (dup, dup_home) = sessions[0].clone();
        let other = fleet
            .clis
            .iter()
            .find(|cli| cli.name() != dup_home)
            .expect("another node");
        let mut direct = RpcClient::connect(other.addr()).await;
        direct
            .result("session.create", session_params(&dup, json!({})))
            .await;
        let mut copies = Vec::new();
        for cli in [fleet.get(&dup_home), other] {
            let mut d = RpcClient::connect(cli.addr()).await;
            let list = d.result("session.list", json!({})).await;
            let entry = list["sessions"]
                .as_array()
                .and_then(|l| l.iter().find(|e| e["sessionId"] == dup.as_str()))
                .cloned()
                .expect("copy listed");
            copies.push(entry);
        }
        let newest = copies
            .iter()
            .map(|e| e["modifiedTime"].as_str().expect("time").to_owned())
            .max()
            .expect("two copies");

        let started = Instant::now();
        let list = c.result("session.list", json!({})).await;
        let waited = started.elapsed();
        let listed = list["sessions"].as_array().expect("sessions");
        let ids: Vec<&str> = listed
            .iter()
            .map(|e| e["sessionId"].as_str().expect("id"))
            .collect();
        let unique: BTreeSet<&str> = ids.iter().copied().collect();
        assert_eq!(ids.len(), unique.len(), "deduplicated: {ids:?}");
        let expected: BTreeSet<&str> = sessions.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(unique, expected);
        let times: Vec<&str> = listed
            .iter()
            .map(|e| e["modifiedTime"].as_str().expect("modifiedTime"))
            .collect();
        assert!(
            times.windows(2).all(|w| w[0] >= w[1]),
            "newest first: {times:?}"
        );
        let merged = listed
            .iter()
            .find(|e| e["sessionId"] == dup.as_str())
            .expect("dup listed");
        assert_eq!(merged["modifiedTime"], newest.as_str());
        // The silent node was waited for up to the fan-out timeout, then skipped.
        assert!(
            waited >= Duration::from_millis(450) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
        let metrics = proxy.metrics_text().await;
        let skipped = |node: &str| {
            metric_value(
                &metrics,
                "sessiongate_fanout_skipped_total",
                &[("pool", "fleet"), ("upstream", node)],
            )
        };
        assert_eq!(skipped("mute"), Some(1.0));
        assert_eq!(
            skipped("cli-0"),
            Some(0.0),
            "exported from the start, never skipped"
        );

        // A dead node is skipped too; the answer still comes, with everything else.
        let dead = &sessions.last().expect("sessions").1;
        fleet.get(dead).kill();
        let started = Instant::now();
        let list = c.result("session.list", json!({})).await;
        assert!(started.elapsed() < Duration::from_secs(3));
        let ids: BTreeSet<&str> = list["sessions"]
            .as_array()
            .expect("sessions")
            .iter()
            .map(|e| e["sessionId"].as_str().expect("id"))
            .collect();
        let alive: BTreeSet<&str> = sessions
            .iter()
            .filter(|(id, node)| node != dead || *id == dup)
            .map(|(id, _)| id.as_str())
            .collect();
        assert_eq!(ids, alive);
        let metrics = proxy.metrics_text().await;
        let dead_skipped = metric_value(
            &metrics,
            "sessiongate_fanout_skipped_total",
            &[("pool", "fleet"), ("upstream", dead)],
        );
        assert_eq!(dead_skipped, Some(1.0));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_requests_from_two_nodes_get_distinct_ids_and_answers_return_to_the_asker() {
    let s = Setup::start(3, RpcYaml::default()).await;
    let pool = s.pool();
    let a = id_on(&pool, "cli-0");
    let b = id_on(&pool, "cli-1");
    within(20, async {
        let mut c = s.client().await;
        create(&mut c, &a, json!({"hooks": true})).await;
        create(&mut c, &b, json!({"hooks": true})).await;
        let send_a = c
            .request("session.send", session_params(&a, json!({"prompt": "pa"})))
            .await;
        let send_b = c
            .request("session.send", session_params(&b, json!({"prompt": "pb"})))
            .await;
        // Both nodes ask with their own id 1; the client sees two different ids.
        let first = c.server_request("hooks.invoke").await;
        let second = c.server_request("hooks.invoke").await;
        assert_ne!(first["id"], second["id"], "{first} / {second}");
        let mut asked = BTreeSet::new();
        for req in [&first, &second] {
            let session = req["params"]["sessionId"].as_str().expect("sessionId");
            asked.insert(session.to_owned());
            c.send(&json!({
                "jsonrpc": "2.0",
                "id": req["id"],
                "result": { "answeredFor": session },
            }))
            .await;
        }
        assert_eq!(asked, BTreeSet::from([a.clone(), b.clone()]));
        for id in [&send_a, &send_b] {
            let resp = c.response(id).await;
            assert!(resp["result"]["messageId"].is_string(), "{resp}");
        }
        for (node, session) in [("cli-0", &a), ("cli-1", &b)] {
            let answers = s.fleet.get(node).hook_answers();
            assert_eq!(answers.len(), 1, "answers on {node}: {answers:?}");
            assert_eq!(answers[0]["id"], 1, "the node's own id is restored");
            assert_eq!(answers[0]["result"]["answeredFor"], session.as_str());
        }
        assert!(s.fleet.get("cli-2").hook_answers().is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_split_by_route_and_answered_in_order() {
    let s = Setup::start(3, RpcYaml::default()).await;
    let pool = s.pool();
    let a = id_on(&pool, "cli-0");
    let b = id_on(&pool, "cli-1");
    within(20, async {
        let mut c = s.client().await;
        create(&mut c, &a, json!({})).await;
        create(&mut c, &b, json!({})).await;
        let batch = json!([
            {"jsonrpc": "2.0", "id": 100, "method": "ping", "params": {"message": "batch"}},
            {"jsonrpc": "2.0", "id": 101, "method": "session.getMessages", "params": {"sessionId": a}},
            {"jsonrpc": "2.0", "method": "session.log", "params": {"sessionId": b, "message": "note"}},
            {"jsonrpc": "2.0", "id": 103, "params": {}},
            {"jsonrpc": "2.0", "id": 102, "method": "session.getMessages", "params": {"sessionId": b}},
        ]);
        c.send(&batch).await;
        let answer = c.wait_for("the batch answer", Value::is_array).await;
        let answers = answer.as_array().expect("array");
        assert_eq!(answers.len(), 4, "{answer}");
        assert_eq!(answers[0]["id"], 100);
        assert_eq!(answers[0]["result"]["message"], "pong: batch");
        assert_eq!(answers[1]["id"], 101);
        assert_eq!(answers[1]["result"]["events"][0]["data"]["sessionId"], a.as_str());
        assert_eq!(answers[2]["id"], 103);
        assert_eq!(answers[2]["error"]["code"], -32600);
        assert_eq!(answers[3]["id"], 102);
        assert_eq!(answers[3]["result"]["events"][0]["data"]["sessionId"], b.as_str());
        // Nothing else answers the batch's ids, and the connection goes on.
        assert_eq!(c.result("ping", json!({})).await["message"], "pong: ");
        for id in 100..=103 {
            assert_eq!(c.responses_to(&json!(id)), 0, "loose answer to {id}");
        }
        assert_eq!(c.received.iter().filter(|f| f.is_array()).count(), 1);
    })
    .await;
}

/// Session ids on each of `old` upstreams, half of which the ring over `new` gives to another
/// upstream: `(id, old owner, moves)`.
fn ids_some_moving(pool: &Pool, new: &[&str], per: usize) -> Vec<(String, String, bool)> {
    let ring = Ring::build(new.iter().map(|n| (*n, 1)), pool.config.vnodes);
    let mut out = Vec::new();
    for name in pool.upstream_names() {
        let (mut moving, mut staying) = (0, 0);
        for _ in 0..100_000 {
            if moving == per && staying == per {
                break;
            }
            let id = id_on(pool, name);
            let owner = new[ring.owner(id.as_bytes()).expect("owner")];
            let moves = owner != name;
            let count = if moves { &mut moving } else { &mut staying };
            if *count < per {
                *count += 1;
                out.push((id, name.to_owned(), moves));
            }
        }
        assert_eq!((moving, staying), (per, per), "ids for {name}");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_keep_live_sessions_on_their_node_after_a_reload_adds_one() {
    let fleet = CliFleet::start(4).await;
    let members = fleet.members();
    let proxy = Proxy::start_yaml(&jsonrpc_config(&members[..3], RpcYaml::default())).await;
    let pool = proxy.server.snapshot().pool("fleet").expect("pool").clone();
    let sessions = ids_some_moving(&pool, &["cli-0", "cli-1", "cli-2", "cli-3"], 2);

    within(30, async {
        let mut c = RpcClient::connect(proxy.addr("cli")).await;
        for (id, _, _) in &sessions {
            create(&mut c, id, json!({})).await;
            send(&mut c, id).await;
        }
        let report = proxy
            .reload_with(&jsonrpc_config(&members, RpcYaml::default()))
            .await
            .expect("reload");
        assert_eq!(report.pools[0].added, ["cli-3"]);
        let pool = proxy.server.snapshot().pool("fleet").expect("pool").clone();
        for (id, _, moves) in &sessions {
            let owner = pool.route(id.as_bytes()).expect("route").name().to_owned();
            assert_eq!(owner == "cli-3", *moves, "ring owner of {id} is {owner}");
        }
        // On the same connection and on a new one: every session still reaches its node.
        let mut fresh = RpcClient::connect(proxy.addr("cli")).await;
        for (id, node, _) in &sessions {
            send(&mut c, id).await;
            prompt(&mut fresh, id).await;
            assert_eq!(fleet.holders(id), [node.as_str()]);
        }
        let new_node = fleet.get("cli-3");
        assert!(new_node.session_ids().is_empty());
        assert_eq!(
            new_node.requests_served(),
            0,
            "no traffic went to the new node"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_removed_by_reload_keeps_its_pinned_sessions_until_drain_timeout() {
    const TOKEN: &str = "s3cret-drain";
    // Only this test reads this variable.
    std::env::set_var("SG_JSONRPC_ROUTING_DRAIN_TOKEN", TOKEN);
    let fleet = CliFleet::start_with_token(3, Some(TOKEN)).await;
    let members = fleet.members();
    let pool_yaml = "    token_env: SG_JSONRPC_ROUTING_DRAIN_TOKEN\n    drain_timeout: 1s\n";
    let extra = RpcYaml {
        pool: pool_yaml,
        ..Default::default()
    };
    let proxy = Proxy::start_yaml(&jsonrpc_config(&members, extra)).await;
    let pool = proxy.server.snapshot().pool("fleet").expect("pool").clone();
    let sessions = ids_per_upstream(&pool, 2);
    let removed: Vec<&String> = sessions
        .iter()
        .filter(|(_, node)| node == "cli-2")
        .map(|(id, _)| id)
        .collect();

    within(20, async {
        let mut c = RpcClient::connect(proxy.addr("cli")).await;
        assert_eq!(c.result("connect", json!({})).await["ok"], true);
        for (id, _) in &sessions {
            create(&mut c, id, json!({})).await;
        }
        let report = proxy
            .reload_with(&jsonrpc_config(&members[..2], extra))
            .await
            .expect("reload");
        assert_eq!(report.pools[0].removed, ["cli-2"]);
        // Its pinned sessions stay reachable: on the open link, and on a new link from a new
        // connection (which must carry the node's token).
        let mut fresh = RpcClient::connect(proxy.addr("cli")).await;
        assert_eq!(fresh.result("connect", json!({})).await["ok"], true);
        for id in &removed {
            send(&mut c, id).await;
            prompt(&mut fresh, id).await;
        }
        for _ in 0..5 {
            let created = fresh.result("session.create", json!({})).await;
            let id = created["sessionId"].as_str().expect("id");
            assert!(!fleet.get("cli-2").has_session(id), "nothing new on cli-2");
        }
        // After drain_timeout its pins go: the session is looked for on the ring.
        let pool = proxy.server.snapshot().pool("fleet").expect("pool").clone();
        support::eventually("cli-2's pins are dropped", || {
            pool.pins.count_on("cli-2") == 0
        })
        .await;
        let resp = c
            .call("session.getMessages", session_params(removed[0], json!({})))
            .await;
        let message = error_of(&resp)["message"].as_str().expect("message");
        assert!(message.contains("Session not found"), "{resp}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_proxy_finds_moved_sessions_by_owner_discovery() {
    let fleet = CliFleet::start(4).await;
    let members = fleet.members();
    let sessions = {
        let first = Proxy::start_yaml(&jsonrpc_config(&members[..3], RpcYaml::default())).await;
        let pool = first.server.snapshot().pool("fleet").expect("pool").clone();
        let sessions = ids_some_moving(&pool, &["cli-0", "cli-1", "cli-2", "cli-3"], 2);
        within(20, async {
            let mut c = RpcClient::connect(first.addr("cli")).await;
            for (id, _, _) in &sessions {
                create(&mut c, id, json!({})).await;
                send(&mut c, id).await;
            }
        })
        .await;
        sessions
    };
    // A new proxy process (no pins) with a fourth node on the ring.
    let proxy = Proxy::start_yaml(&jsonrpc_config(&members, RpcYaml::default())).await;
    let moved = sessions.iter().filter(|(_, _, moves)| *moves).count();
    assert!(moved > 0);

    within(20, async {
        let mut c = RpcClient::connect(proxy.addr("cli")).await;
        for (id, node, _) in &sessions {
            let result = c
                .result("session.resume", session_params(id, json!({})))
                .await;
            assert_eq!(result["sessionId"], id.as_str());
            let path = result["workspacePath"].as_str().expect("workspacePath");
            assert!(path.contains(&format!("/{node}/")), "resumed on {path}");
        }
        for (id, _, _) in &sessions {
            send(&mut c, id).await;
        }
        let unknown = uuid::Uuid::new_v4().to_string();
        let resp = c
            .call("session.resume", session_params(&unknown, json!({})))
            .await;
        let expected = format!(
            "Request session.resume failed with message: Failed to load session events: \
             Session not found: {unknown}"
        );
        assert_eq!(
            resp["error"],
            json!({"code": -32603, "message": expected}),
            "{resp}"
        );
        one_answer_per_request(&c, sessions.len() * 2 + 1);
    })
    .await;
    assert!(fleet.get("cli-3").session_ids().is_empty());
    let metrics = proxy.metrics_text().await;
    let discovered = |result: &str| {
        metric_value(
            &metrics,
            "sessiongate_owner_discovery_total",
            &[("pool", "fleet"), ("result", result)],
        )
    };
    assert_eq!(discovered("found"), Some(moved as f64));
    assert_eq!(discovered("not_found"), Some(1.0));
}

/// Probe every 100ms and take a node out at the first failure.
const FAST_HEALTH: &str = "    health:
      probe: tcp
      interval: 100ms
      timeout: 100ms
      fall: 1
      rise: 1
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_owner_gets_a_prompt_error_and_other_sessions_keep_working() {
    let s = Setup::start(
        3,
        RpcYaml {
            pool: FAST_HEALTH,
            ..Default::default()
        },
    )
    .await;
    let sessions = ids_per_upstream(&s.pool(), 1);
    let (a, a_node) = sessions[0].clone();
    let admin = s.proxy.admin();
    within(20, async {
        let mut c = s.client().await;
        for (id, _) in &sessions {
            create(&mut c, id, json!({})).await;
            send(&mut c, id).await;
        }
        s.fleet.get(&a_node).kill();
        // Whether or not the probes noticed yet: an error naming the session, not a hang.
        let resp = c
            .call("session.send", session_params(&a, json!({"prompt": "x"})))
            .await;
        assert_unavailable(&resp, &a);
        for (id, _) in &sessions[1..] {
            send(&mut c, id).await;
        }
        poll_until("the dead node is marked unhealthy", 5, || async {
            admin_upstream(admin, &a_node).await["healthy"] == false
        })
        .await;
        let resp = c
            .call("session.getMessages", session_params(&a, json!({})))
            .await;
        assert_unavailable(&resp, &a);
        assert_eq!(resp["error"]["data"]["upstream"], a_node.as_str());
        // Refused by the proxy for a node known to be down: still counted against that node.
        let text = s.proxy.metrics_text().await;
        let labels = [("upstream", a_node.as_str()), ("code", "unavailable")];
        let refused = metric_value(&text, "sessiongate_requests_total", &labels);
        assert!(refused.is_some_and(|n| n >= 1.0), "{refused:?}");
        for (id, _) in &sessions[1..] {
            send(&mut c, id).await;
        }

        // Every node down: each kind of request is answered at once with an error.
        for cli in &s.fleet.clis {
            cli.kill();
        }
        let started = Instant::now();
        let (b, _) = &sessions[1];
        let resp = c
            .call("session.send", session_params(b, json!({"prompt": "x"})))
            .await;
        assert_unavailable(&resp, b);
        let new_id = uuid::Uuid::new_v4().to_string();
        let resp = c
            .call("session.create", session_params(&new_id, json!({})))
            .await;
        assert_unavailable(&resp, &new_id);
        for method in ["ping", "session.list"] {
            let resp = c.call(method, json!({})).await;
            assert_eq!(error_of(&resp)["code"], -32001, "{method}: {resp}");
        }
        assert!(started.elapsed() < Duration::from_secs(3));
        poll_until("every node is marked unhealthy", 5, || async {
            let all = support::admin_json(admin, "/admin/upstreams").await;
            all["upstreams"]
                .as_array()
                .is_some_and(|l| l.iter().all(|u| u["healthy"] == false))
        })
        .await;
        let started = Instant::now();
        for method in ["ping", "session.list", "session.create"] {
            let resp = c.call(method, json!({})).await;
            assert_eq!(error_of(&resp)["code"], -32001, "{method}: {resp}");
        }
        let resp = c.call("session.send", session_params(b, json!({}))).await;
        assert_unavailable(&resp, b);
        assert!(started.elapsed() < Duration::from_secs(1));
    })
    .await;
}

/// Probes too slow to notice a node dying during a test and no passive ejection: the proxy
/// still believes a killed node is up, as it does in the moments before its probes catch up.
const BLIND_HEALTH: &str = "    health:
      probe: tcp
      interval: 60s
    passive:
      consecutive_failures: 0
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_any_node_may_answer_move_on_when_their_node_refuses_the_link() {
    let s = Setup::start(
        3,
        RpcYaml {
            listener: "    key:\n      - client_ip: true\n",
            pool: BLIND_HEALTH,
            ..Default::default()
        },
    )
    .await;
    let mut admin = s.proxy.admin_client().await;
    let home = admin_route(&mut admin, "fleet", "127.0.0.1").await;
    let pool = s.pool();
    // The home key's next owner clockwise once the dead home is passed over.
    let next = pool
        .route_avoiding(b"127.0.0.1", &[Arc::from(home.as_str())])
        .expect("another node")
        .name()
        .to_owned();
    let new_on_dead = id_on(&pool, &home);
    let (old_on_dead, on_live) = {
        let ids = ids_per_upstream(&pool, 1);
        let dead = ids.iter().find(|(_, n)| *n == home).expect("an id on home");
        let live = ids
            .iter()
            .find(|(_, n)| *n != home)
            .expect("an id elsewhere");
        (dead.0.clone(), live.clone())
    };
    within(20, async {
        let mut c = s.client().await;
        create(&mut c, &old_on_dead, json!({})).await;
        create(&mut c, &on_live.0, json!({})).await;
        s.fleet.get(&home).kill();

        // A second client: its `connect` and global reads would go to the dead home node.
        let mut c2 = s.client().await;
        let connected = c2
            .result("connect", json!({"supportedTaskKinds": ["agent"]}))
            .await;
        assert_eq!(connected["version"], format!("mock-{next}"));
        let pong = c2.result("ping", json!({ "message": "1" })).await;
        assert_eq!(pong["message"], "pong: 1");
        // A new session whose ring owner is dead is created on a live node and stays there.
        create(&mut c2, &new_on_dead, json!({})).await;
        send(&mut c2, &new_on_dead).await;
        let generated = c2.result("session.create", json!({})).await;
        let generated = generated["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_owned();
        send(&mut c2, &generated).await;
        // A session that lives on the dead node is not moved: its state is on that disk.
        let resp = c2
            .call(
                "session.send",
                session_params(&old_on_dead, json!({"prompt": "x"})),
            )
            .await;
        assert_unavailable(&resp, &old_on_dead);
        // The client is not attached to this one; the answer is enough.
        prompt(&mut c2, &on_live.0).await;
        one_answer_per_request(&c2, 8);

        for id in [&new_on_dead, &generated] {
            let holders = s.fleet.holders(id);
            assert_eq!(holders.len(), 1, "{id} on {holders:?}");
            assert_ne!(holders[0], home, "{id} was placed on the dead node");
        }
    })
    .await;
    let metrics = s.proxy.metrics_text().await;
    let moved = metric_value(
        &metrics,
        "sessiongate_redispatches_total",
        &[("pool", "fleet"), ("upstream", &home)],
    )
    .unwrap_or(0.0);
    assert!(moved >= 2.0, "connect and ping were redispatched: {moved}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_dropping_mid_request_fails_that_request_only() {
    let s = Setup::start(3, RpcYaml::default()).await;
    let pool = s.pool();
    let a = id_on(&pool, "cli-0");
    let b = id_on(&pool, "cli-1");
    within(20, async {
        let mut c = s.client().await;
        create(&mut c, &a, json!({"hooks": true})).await;
        create(&mut c, &b, json!({})).await;
        let held = c
            .request("session.send", session_params(&a, json!({"prompt": "x"})))
            .await;
        // The node asks the client first and holds the answer until it gets one: it dies
        // instead.
        let hook = c.server_request("hooks.invoke").await;
        s.fleet.get("cli-0").kill();
        let resp = c.response(&held).await;
        assert_unavailable(&resp, &a);
        // Answering the dead node's request now is harmless.
        c.send(&json!({"jsonrpc": "2.0", "id": hook["id"], "result": {}}))
            .await;
        send(&mut c, &b).await;
        assert_eq!(c.responses_to(&held), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_an_error_then_closes_only_that_connection() {
    let s = Setup::start(
        3,
        RpcYaml {
            listener: "    max_frame_bytes: 1024\n",
            ..Default::default()
        },
    )
    .await;
    within(20, async {
        let mut bystander = s.client().await;
        assert_eq!(
            bystander.result("ping", json!({})).await["message"],
            "pong: "
        );
        let cases: [(&str, &[u8], i64, bool); 4] = [
            (
                "malformed header",
                b"Content-Length 5\r\n\r\nhello",
                -32700,
                false,
            ),
            (
                "no Content-Length",
                b"Content-Type: x\r\n\r\n{}",
                -32700,
                false,
            ),
            (
                "oversized length",
                b"Content-Length: 5000\r\n\r\n",
                -32600,
                false,
            ),
            // After some good traffic (a link is open), a body that is not JSON.
            (
                "non-JSON body",
                b"Content-Length: 5\r\n\r\nhello",
                -32700,
                true,
            ),
        ];
        for (what, bytes, code, warm_up) in cases {
            let mut bad = s.client().await;
            if warm_up {
                assert_eq!(bad.result("ping", json!({})).await["message"], "pong: ");
            }
            bad.send_bytes(bytes).await;
            let frames = bad.until_closed().await;
            assert_eq!(frames.len(), 1, "{what}: {frames:?}");
            assert_eq!(frames[0]["error"]["code"], code, "{what}: {}", frames[0]);
            assert_eq!(frames[0]["id"], Value::Null, "{what}");
            let pong = bystander.result("ping", json!({ "message": what })).await;
            assert_eq!(pong["message"], format!("pong: {what}"));
        }
    })
    .await;
}

/// The `session` labels of `sessiongate_session_request_duration_seconds` series of `pool`.
fn session_series(metrics: &str, pool: &str) -> BTreeSet<String> {
    let pool = format!("pool=\"{pool}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("sessiongate_session_request_duration_seconds_count{"))
        .filter(|l| l.contains(&pool))
        .filter_map(|l| {
            let rest = &l[l.find("session=\"")? + "session=\"".len()..];
            Some(rest[..rest.find('"')?].to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_session_latency_series_are_recorded_and_capped() {
    for cap in [None, Some(2)] {
        let top = cap.map(|n| format!("metrics:\n  max_session_series: {n}\n"));
        let s = Setup::start(
            4,
            RpcYaml {
                top: top.as_deref().unwrap_or(""),
                ..Default::default()
            },
        )
        .await;
        let sessions = ids_per_upstream(&s.pool(), 1);
        within(20, async {
            let mut c = s.client().await;
            for (id, _) in &sessions {
                create(&mut c, id, json!({})).await;
                send(&mut c, id).await;
            }
        })
        .await;
        let metrics = s.proxy.metrics_text().await;
        let series = session_series(&metrics, "fleet");
        let ids: BTreeSet<String> = sessions.iter().map(|(id, _)| id.clone()).collect();
        match cap {
            None => {
                // Every session has a series of its own; the overflow series exists from the
                // start but counted nothing.
                let own: BTreeSet<String> =
                    series.iter().filter(|s| *s != "_other").cloned().collect();
                assert_eq!(own, ids);
                let other = metric_value(
                    &metrics,
                    "sessiongate_session_request_duration_seconds_count",
                    &[("pool", "fleet"), ("session", "_other")],
                );
                assert_eq!(other, Some(0.0));
                for id in &ids {
                    let count = metric_value(
                        &metrics,
                        "sessiongate_session_request_duration_seconds_count",
                        &[("pool", "fleet"), ("session", id)],
                    );
                    assert_eq!(count, Some(2.0), "create and send of {id}");
                }
            }
            Some(cap) => {
                assert!(series.contains("_other"), "{series:?}");
                let own: BTreeSet<String> = series.into_iter().filter(|s| s != "_other").collect();
                assert_eq!(own.len(), cap, "{own:?}");
                assert!(own.is_subset(&ids));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_re_places_a_session_whose_node_is_down() {
    let extra = format!("    on_owner_down: failover\n{FAST_HEALTH}");
    let s = Setup::start(
        3,
        RpcYaml {
            pool: &extra,
            ..Default::default()
        },
    )
    .await;
    let id = id_on(&s.pool(), "cli-0");
    let admin = s.proxy.admin();
    within(20, async {
        let mut c = s.client().await;
        create(&mut c, &id, json!({})).await;
        send(&mut c, &id).await;
        // Shared storage, as failover assumes: every other node can load the session too.
        for cli in &s.fleet.clis[1..] {
            let mut direct = RpcClient::connect(cli.addr()).await;
            direct
                .result("session.create", session_params(&id, json!({})))
                .await;
        }
        s.fleet.get("cli-0").kill();
        poll_until("cli-0 is marked unhealthy", 5, || async {
            admin_upstream(admin, "cli-0").await["healthy"] == false
        })
        .await;
        let mut admin_http = s.proxy.admin_client().await;
        let successor = admin_route(&mut admin_http, "fleet", &id).await;
        assert_ne!(successor, "cli-0");
        let result = c
            .result("session.resume", session_params(&id, json!({})))
            .await;
        let path = result["workspacePath"].as_str().expect("workspacePath");
        assert!(
            path.contains(&format!("/{successor}/")),
            "resumed on {path}"
        );
        let pin = s.pool().pins.get(&id).expect("pinned again");
        assert_eq!(&*pin.upstream, successor.as_str());
        send(&mut c, &id).await;
    })
    .await;
}
