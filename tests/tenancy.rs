//! Tenancy on the JSON-RPC listener, against fleets of in-process mock CLIs: identities from
//! `connect`'s token (required: refused with -32002 and cut off before anything reaches a node;
//! the node gets its own token, never the client's), ownership of sessions (another user's
//! session is -32003 for every session method, split requests refuse only the other user's ids,
//! fan-outs show only the caller's sessions, pruneOld never deletes another user's sessions),
//! the `unowned` rule for sessions the proxy did not see created, tenant pools with and without
//! `default_pool`, and method policies. Real sockets on 127.0.0.1:0, proxy in process.

mod support;

use std::collections::HashSet;

use serde_json::{json, Value};
use sessiongate::identity::token_hash;
use sessiongate::mockcli::MockCli;
use support::jsonrpc::{
    create, error_of, ids_per_upstream, jsonrpc_config, send, session_params, CliFleet, Recorder,
    RpcClient, RpcYaml,
};
use support::upstream::{self, Mock};
use support::{admin_route, client, upstreams_yaml, within, ConfigDir, Proxy};

const ALICE: &str = "alice-secret-token";
const BOB: &str = "bob-secret-token";
const CAROL: &str = "carol-secret-token";
const ERIN: &str = "erin-secret-token";
const NODE_TOKEN: &str = "the-nodes-own-token";

/// alice (tenant t1), bob (t1), carol (t2), erin (no tenant).
fn tokens() -> String {
    [
        (ALICE, "alice", Some("t1")),
        (BOB, "bob", Some("t1")),
        (CAROL, "carol", Some("t2")),
        (ERIN, "erin", None),
    ]
    .iter()
    .map(|(token, user, tenant)| match tenant {
        Some(t) => format!(
            "- {{ sha256: {}, user: {user}, tenant: {t} }}\n",
            token_hash(token)
        ),
        None => format!("- {{ sha256: {}, user: {user} }}\n", token_hash(token)),
    })
    .collect()
}

const REQUIRED: &str = "    identity: { from: [token], required: true }\n";

fn identities(extra: &str) -> String {
    format!("identities:\n  tokens_file: tokens.yaml\n{extra}")
}

/// A proxy from `yaml`, with `tokens.yaml` next to it.
async fn start_yaml(yaml: &str) -> Proxy {
    let dir = ConfigDir::new(yaml);
    dir.file("tokens.yaml", tokens());
    Proxy::start(dir).await
}

/// The `cli` listener in front of `fleet`, token identities required, `top_extra` under
/// `identities:` (2 spaces), `pool` lines for the pool.
async fn start(fleet: &CliFleet, top_extra: &str, pool: &str) -> Proxy {
    let top = identities(top_extra);
    let extra = RpcYaml {
        top: &top,
        listener: REQUIRED,
        pool,
    };
    start_yaml(&jsonrpc_config(&fleet.members(), extra)).await
}

/// A client of listener `cli` that said who it is with `token`.
async fn login(proxy: &Proxy, token: &str) -> RpcClient {
    let mut c = RpcClient::connect(proxy.addr("cli")).await;
    let resp = c.call("connect", json!({ "token": token })).await;
    assert!(resp.get("result").is_some(), "connect with {token}: {resp}");
    c
}

/// The error code and message of `resp`.
fn refusal(resp: &Value) -> (i64, String) {
    let err = error_of(resp);
    (
        err["code"].as_i64().expect("code"),
        err["message"].as_str().expect("message").to_owned(),
    )
}

/// Requests for `method` the whole fleet received.
fn fleet_requests(fleet: &CliFleet, method: &str) -> u64 {
    fleet.clis.iter().map(|c| c.requests_for(method)).sum()
}

fn served(fleet: &CliFleet) -> u64 {
    fleet.clis.iter().map(MockCli::requests_served).sum()
}

fn ids_in(list: &Value) -> HashSet<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("a list: {list}"))
        .iter()
        .map(|v| {
            v.as_str()
                .or_else(|| v["sessionId"].as_str())
                .expect("an id")
                .to_owned()
        })
        .collect()
}

fn set(ids: &[String]) -> HashSet<String> {
    ids.iter().cloned().collect()
}

/// Create `id` on `cli` directly, not through the proxy (a session from before the proxy).
async fn create_on_node(cli: &MockCli, id: &str) {
    let mut c = RpcClient::connect(cli.addr()).await;
    c.result("connect", json!({})).await;
    create(&mut c, id, json!({})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_identity_refuses_unknown_callers_before_any_node_hears_of_them() {
    std::env::set_var("SG_TENANCY_NODE_TOKEN_1", NODE_TOKEN);
    let fleet = CliFleet::start_with_token(2, Some(NODE_TOKEN)).await;
    let proxy = start(&fleet, "", "    token_env: SG_TENANCY_NODE_TOKEN_1\n").await;
    within(30, async {
        for (what, params) in [
            ("no token", json!({})),
            ("no params", Value::Null),
            ("unknown token", json!({ "token": "guess" })),
            ("empty token", json!({ "token": "" })),
            ("a node's token", json!({ "token": NODE_TOKEN })),
            ("a hash of a token", json!({ "token": token_hash(ALICE) })),
        ] {
            let mut c = RpcClient::connect(proxy.addr("cli")).await;
            let id = c.request("connect", params).await;
            // Pipelined behind the refused connect: never answered, never forwarded.
            c.request("session.create", json!({ "sessionId": "sneaky" }))
                .await;
            let frames = c.until_closed().await;
            assert_eq!(
                frames.len(),
                1,
                "{what}: one answer, then the close: {frames:?}"
            );
            assert_eq!(frames[0]["id"], id, "{what}: {frames:?}");
            let (code, _) = refusal(&frames[0]);
            assert_eq!(code, -32002, "{what}: {frames:?}");
        }

        // A request before `connect` on a listener where only tokens say who callers are.
        for (method, params) in [
            ("session.create", json!({ "sessionId": "early" })),
            ("sessions.list", json!({})),
            ("ping", json!({})),
        ] {
            let mut c = RpcClient::connect(proxy.addr("cli")).await;
            let id = c.request(method, params).await;
            let frames = c.until_closed().await;
            assert_eq!(frames.len(), 1, "{method}: {frames:?}");
            assert_eq!(frames[0]["id"], id);
            let (code, message) = refusal(&frames[0]);
            assert_eq!(code, -32002, "{method}: {frames:?}");
            assert!(message.contains("connect"), "{message}");
        }
        // A notification before `connect`: an error with id null, then the close.
        let mut c = RpcClient::connect(proxy.addr("cli")).await;
        c.send(&json!({"jsonrpc": "2.0", "method": "session.abort", "params": {"sessionId": "x"}}))
            .await;
        let frames = c.until_closed().await;
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(frames[0]["id"], Value::Null, "{frames:?}");
        assert_eq!(error_of(&frames[0])["code"], -32002);

        assert_eq!(served(&fleet), 0, "a refused caller reached a node");
        for method in [
            "connect",
            "session.create",
            "sessions.list",
            "ping",
            "session.abort",
        ] {
            assert_eq!(fleet_requests(&fleet, method), 0, "{method}");
        }
        assert!(fleet.holders("sneaky").is_empty() && fleet.holders("early").is_empty());

        // A known token works; the nodes (which accept only their own token) serve it.
        let mut alice = login(&proxy, ALICE).await;
        create(&mut alice, "alice-1", json!({})).await;
        send(&mut alice, "alice-1").await;
        assert_eq!(fleet.holders("alice-1").len(), 1);
        let list = alice.result("sessions.list", json!({})).await;
        assert_eq!(ids_in(&list["sessions"]), set(&["alice-1".into()]));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_get_their_own_token_never_the_clients() {
    std::env::set_var("SG_TENANCY_NODE_TOKEN_2", NODE_TOKEN);
    let recorders = [Recorder::start().await, Recorder::start().await];
    let members: Vec<(String, std::net::SocketAddr)> = recorders
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("rec-{i}"), r.addr))
        .collect();
    // The recorders answer for any session: let the caller touch the sessions it names.
    let top = identities("  unowned: allow\n");
    let extra = RpcYaml {
        top: &top,
        listener: REQUIRED,
        pool: "    token_env: SG_TENANCY_NODE_TOKEN_2\n",
    };
    let proxy = start_yaml(&jsonrpc_config(&members, extra)).await;
    within(30, async {
        let mut alice = login(&proxy, ALICE).await;
        // Sessions on both nodes: the connect is replayed on the second link.
        for i in 0..20 {
            let id = format!("s-{i}");
            alice
                .result("session.getMessages", json!({ "sessionId": id }))
                .await;
        }
        alice.result("sessions.list", json!({})).await;
        for (i, recorder) in recorders.iter().enumerate() {
            let frames = recorder.frames();
            let connects: Vec<&Value> =
                frames.iter().filter(|f| f["method"] == "connect").collect();
            assert!(!connects.is_empty(), "rec-{i} was connected: {frames:?}");
            for c in &connects {
                assert_eq!(c["params"]["token"], NODE_TOKEN, "rec-{i}: {c}");
            }
            for f in &frames {
                let text = f.to_string();
                assert!(
                    !text.contains(ALICE),
                    "the client's token reached rec-{i}: {text}"
                );
                assert!(!text.contains(&token_hash(ALICE)), "{text}");
            }
            assert!(frames.iter().any(|f| f["method"] == "session.getMessages"));
        }
    })
    .await
}

/// Alice's sessions, two per node, each created and prompted through the proxy.
async fn alices_sessions(proxy: &Proxy, alice: &mut RpcClient, per_node: usize) -> Vec<String> {
    let pool = proxy.server.snapshot().pool("fleet").expect("pool").clone();
    let ids: Vec<String> = ids_per_upstream(&pool, per_node)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    for id in &ids {
        create(alice, id, json!({})).await;
        send(alice, id).await;
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_sessions_are_forbidden_and_invisible() {
    let fleet = CliFleet::start(3).await;
    let proxy = start(&fleet, "  unowned: deny\n", "").await;
    within(60, async {
        let mut alice = login(&proxy, ALICE).await;
        let mine = alices_sessions(&proxy, &mut alice, 2).await;
        let mut holders: Vec<String> = mine.iter().flat_map(|id| fleet.holders(id)).collect();
        holders.sort();
        holders.dedup();
        assert_eq!(holders.len(), 3, "spread over the fleet");

        // Bob is in alice's tenant, but sessions belong to users.
        let mut bob = login(&proxy, BOB).await;
        let bobs: Vec<String> = (0..3).map(|i| format!("bob-own-{i}")).collect();
        for id in &bobs {
            create(&mut bob, id, json!({})).await;
            send(&mut bob, id).await;
        }

        let methods = [
            "session.resume",
            "session.send",
            "session.getMessages",
            "session.abort",
            "session.delete",
            "sessions.fork",
            "sessions.getMetadata",
            "sessions.delete",
            "sessions.close",
        ];
        let before: Vec<u64> = methods.iter().map(|m| fleet_requests(&fleet, m)).collect();
        for id in &mine {
            for method in methods {
                let params = session_params(id, json!({ "prompt": "mine now" }));
                let resp = bob.call(method, params).await;
                let (code, message) = refusal(&resp);
                assert_eq!(code, -32003, "{method} {id}: {resp}");
                assert!(message.contains(id.as_str()), "{method}: {message}");
            }
        }
        let after: Vec<u64> = methods.iter().map(|m| fleet_requests(&fleet, m)).collect();
        assert_eq!(
            before, after,
            "refused requests reached a node ({methods:?})"
        );
        let opens = fleet_requests(&fleet, "sessions.open");
        for id in &mine {
            for params in [
                json!({ "kind": "resume", "sessionId": id }),
                json!({ "kind": "attach", "sessionId": id }),
                json!({ "kind": "create", "options": { "sessionId": id } }),
            ] {
                let resp = bob.call("sessions.open", params.clone()).await;
                assert_eq!(refusal(&resp).0, -32003, "sessions.open {params}: {resp}");
            }
        }
        assert_eq!(fleet_requests(&fleet, "sessions.open"), opens);
        // The newest session of the fleet is alice's; bob's resumeLast never opens it.
        send(&mut alice, &mine[0]).await;
        let last = bob
            .result("sessions.open", json!({ "kind": "resumeLast" }))
            .await;
        assert!(
            last["sessionId"]
                .as_str()
                .is_none_or(|id| bobs.contains(&id.to_owned())),
            "{last}"
        );
        // Bob cannot take an id alice holds by creating it anew either.
        let resp = bob
            .call("session.create", json!({ "sessionId": &mine[0] }))
            .await;
        assert_eq!(refusal(&resp).0, -32003, "{resp}");
        for id in &mine {
            assert_eq!(fleet.holders(id).len(), 1, "{id} survived");
        }

        // Split requests: only alice's ids are refused.
        let bulk_before = fleet_requests(&fleet, "sessions.bulkDelete");
        let resp = bob
            .call(
                "sessions.bulkDelete",
                json!({ "sessionIds": [&mine[0], &mine[3]] }),
            )
            .await;
        let err = error_of(&resp);
        assert_eq!(err["code"], -32003, "{resp}");
        assert_eq!(
            ids_in(&err["data"]["refusedSessionIds"]),
            set(&[mine[0].clone(), mine[3].clone()]),
            "{resp}"
        );
        assert_eq!(fleet_requests(&fleet, "sessions.bulkDelete"), bulk_before);

        let mixed = bob
            .result(
                "sessions.bulkDelete",
                json!({ "sessionIds": [&mine[1], &bobs[0], &mine[4]] }),
            )
            .await;
        assert_eq!(
            ids_in(&mixed["refusedSessionIds"]),
            set(&[mine[1].clone(), mine[4].clone()]),
            "{mixed}"
        );
        let freed = mixed["freedBytes"].as_object().expect("freedBytes");
        assert_eq!(freed.len(), 1, "{mixed}");
        assert!(freed[&bobs[0]].as_u64().unwrap() > 0, "{mixed}");
        assert!(
            fleet.holders(&bobs[0]).is_empty(),
            "bob's own session deleted"
        );
        for id in &mine {
            assert_eq!(fleet.holders(id).len(), 1, "{id} survived bob's bulkDelete");
        }

        let in_use = bob
            .result(
                "sessions.checkInUse",
                json!({ "sessionIds": [&mine[2], &bobs[1]] }),
            )
            .await;
        assert_eq!(
            ids_in(&in_use["refusedSessionIds"]),
            set(&[mine[2].clone()]),
            "{in_use}"
        );
        assert!(!ids_in(&in_use["inUse"]).contains(&mine[2]), "{in_use}");

        // Enriching reads a session's summary: alice's are refused, bob's enriched.
        let enriched = bob
            .result(
                "sessions.enrichMetadata",
                json!({ "sessions": [{ "sessionId": &mine[2] }, { "sessionId": &bobs[1] }] }),
            )
            .await;
        assert_eq!(
            ids_in(&enriched["refusedSessionIds"]),
            set(&[mine[2].clone()]),
            "{enriched}"
        );
        assert_eq!(
            ids_in(&enriched["sessions"]),
            set(&[bobs[1].clone()]),
            "{enriched}"
        );
        assert!(
            enriched["sessions"][0]["summary"].is_string(),
            "bob's own is enriched: {enriched}"
        );
        let resp = bob
            .call(
                "sessions.enrichMetadata",
                json!({ "sessions": [{ "sessionId": &mine[2] }] }),
            )
            .await;
        assert_eq!(refusal(&resp).0, -32003, "{resp}");
        // A list answer names the refused ids as entries of their own.
        let meta = bob
            .result(
                "sessions.getClientMetadata",
                json!({ "sessionIds": [&mine[3], &bobs[1]] }),
            )
            .await;
        let entries = meta.as_array().expect("a list");
        let refused: Vec<&Value> = entries
            .iter()
            .filter(|e| e["sessionId"] == mine[3].as_str())
            .collect();
        assert_eq!(refused.len(), 1, "{meta}");
        assert_eq!(refused[0]["code"], "FORBIDDEN", "{meta}");
        assert_eq!(refused[0]["status"], "unavailable", "{meta}");

        // Fan-outs: each sees only their own.
        let bobs_left = set(&bobs[1..]);
        for method in ["session.list", "sessions.list"] {
            let list = bob.result(method, json!({})).await;
            assert_eq!(ids_in(&list["sessions"]), bobs_left, "bob's {method}");
            let list = alice.result(method, json!({})).await;
            assert_eq!(ids_in(&list["sessions"]), set(&mine), "alice's {method}");
        }
        let sizes = bob.result("sessions.getSizes", json!({})).await;
        let sized: HashSet<String> = sizes["sizes"]
            .as_object()
            .expect("sizes")
            .keys()
            .cloned()
            .collect();
        assert_eq!(sized, bobs_left, "{sizes}");
        let newest = bob
            .result("sessions.listNonEmptySessionIds", json!({ "limit": 50 }))
            .await;
        assert_eq!(ids_in(&newest["sessionIds"]), bobs_left, "{newest}");
        let last = bob.result("sessions.getLastForContext", json!({})).await;
        assert!(
            last["sessionId"]
                .as_str()
                .is_none_or(|id| bobs_left.contains(id)),
            "{last}"
        );
        let found = bob
            .result("sessions.findByPrefix", json!({ "prefix": &mine[0][..12] }))
            .await;
        assert_eq!(found, json!({}), "bob finds alice's session by prefix");

        // pruneOld by bob deletes bob's sessions only, whatever the nodes would prune.
        let dry = bob
            .result(
                "sessions.pruneOld",
                json!({ "olderThanDays": 0, "dryRun": true }),
            )
            .await;
        assert_eq!(ids_in(&dry["candidates"]), bobs_left, "{dry}");
        let pruned = bob
            .result("sessions.pruneOld", json!({ "olderThanDays": 0 }))
            .await;
        assert_eq!(ids_in(&pruned["deleted"]), bobs_left, "{pruned}");
        for id in &bobs {
            assert!(fleet.holders(id).is_empty(), "{id} pruned");
        }
        for id in &mine {
            assert_eq!(fleet.holders(id).len(), 1, "{id} survived bob's pruneOld");
        }
        let list = alice.result("sessions.list", json!({})).await;
        assert_eq!(ids_in(&list["sessions"]), set(&mine));

        // Alice, on a new connection, still owns hers.
        let mut again = login(&proxy, ALICE).await;
        let messages = again
            .call("session.resume", session_params(&mine[5], json!({})))
            .await;
        assert!(messages.get("result").is_some(), "{messages}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unowned_deny_refuses_sessions_the_proxy_did_not_see_created() {
    let fleet = CliFleet::start(1).await;
    let proxy = start(&fleet, "  unowned: deny\n", "").await;
    within(30, async {
        create_on_node(&fleet.clis[0], "alice-older").await;
        let mut alice = login(&proxy, ALICE).await;
        let resume_before = fleet_requests(&fleet, "session.resume");
        let resp = alice
            .call("session.resume", session_params("alice-older", json!({})))
            .await;
        assert_eq!(refusal(&resp).0, -32003, "{resp}");
        // Creating it again (which would reset it) is refused too.
        let resp = alice
            .call("session.create", json!({ "sessionId": "alice-older" }))
            .await;
        assert_eq!(refusal(&resp).0, -32003, "{resp}");
        assert_eq!(fleet_requests(&fleet, "session.resume"), resume_before);
        assert_eq!(
            fleet_requests(&fleet, "session.create"),
            1,
            "the direct one"
        );
        let list = alice.result("sessions.list", json!({})).await;
        assert!(ids_in(&list["sessions"]).is_empty(), "{list}");
        // An id nobody holds is free to create.
        create(&mut alice, "alice-new", json!({})).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unowned_allow_lets_anyone_touch_sessions_without_owner() {
    let fleet = CliFleet::start(1).await;
    let proxy = start(&fleet, "  unowned: allow\n", "").await;
    within(30, async {
        create_on_node(&fleet.clis[0], "older").await;
        let mut alice = login(&proxy, ALICE).await;
        alice
            .result("session.resume", session_params("older", json!({})))
            .await;
        send(&mut alice, "older").await;
        let mut bob = login(&proxy, BOB).await;
        let list = bob.result("sessions.list", json!({})).await;
        assert_eq!(ids_in(&list["sessions"]), set(&["older".into()]));
        // An owner still wins over `allow`.
        create(&mut alice, "alices", json!({})).await;
        let resp = bob
            .call("session.getMessages", session_params("alices", json!({})))
            .await;
        assert_eq!(refusal(&resp).0, -32003, "{resp}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unowned_prefix_allows_only_the_callers_prefix() {
    let fleet = CliFleet::start(2).await;
    let proxy = start(&fleet, "  unowned: { prefix: \"{user}-\" }\n", "").await;
    within(30, async {
        create_on_node(&fleet.clis[0], "alice-older").await;
        create_on_node(&fleet.clis[1], "bob-older").await;
        let mut alice = login(&proxy, ALICE).await;
        let mut bob = login(&proxy, BOB).await;

        alice
            .result("session.resume", session_params("alice-older", json!({})))
            .await;
        let resp = alice
            .call("session.resume", session_params("bob-older", json!({})))
            .await;
        assert_eq!(refusal(&resp).0, -32003, "{resp}");
        bob.result("session.resume", session_params("bob-older", json!({})))
            .await;
        let resp = bob
            .call(
                "session.getMessages",
                session_params("alice-older", json!({})),
            )
            .await;
        assert_eq!(refusal(&resp).0, -32003, "{resp}");
        assert_eq!(fleet.clis[0].requests_for("session.getMessages"), 0);

        let list = alice.result("sessions.list", json!({})).await;
        assert_eq!(ids_in(&list["sessions"]), set(&["alice-older".into()]));
        // An id of another user's prefix cannot be created either.
        let resp = alice
            .call("session.create", json!({ "sessionId": "bob-new" }))
            .await;
        assert_eq!(refusal(&resp).0, -32003, "{resp}");
        // Ids the proxy makes up carry the caller's prefix.
        let made = alice.result("session.create", json!({})).await;
        let id = made["sessionId"].as_str().expect("id");
        assert!(id.starts_with("alice-"), "{made}");
        assert_eq!(fleet.holders(id).len(), 1);
    })
    .await
}

/// Pools `p1` (fleet `one`) and `shared` (fleet `two`); tenant t1 and user erin go to p1,
/// others to `default_pool` when given.
fn tenant_yaml(one: &CliFleet, two: &CliFleet, default_pool: Option<&str>) -> String {
    let default = default_pool.map_or(String::new(), |p| format!("    default_pool: {p}\n"));
    format!(
        "admin:
  listen: 127.0.0.1:0
shutdown_grace: 2s
identities:
  tokens_file: tokens.yaml
listeners:
  - name: cli
    listen: 127.0.0.1:0
    protocol: jsonrpc
{REQUIRED}    tenants:
      - {{ tenant: t1, pool: p1 }}
      - {{ user: erin, pool: p1 }}
{default}pools:
  p1:
    fanout_timeout: 500ms
    upstreams:
{}  shared:
    fanout_timeout: 500ms
    upstreams:
{}",
        upstreams_yaml(&one.members()),
        upstreams_yaml(&two.members()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_land_on_their_own_pool_and_others_on_the_default() {
    let one = CliFleet::start(2).await;
    let two = CliFleet::start(2).await;
    let proxy = start_yaml(&tenant_yaml(&one, &two, Some("shared"))).await;
    within(30, async {
        for (token, user, home, other) in [
            (ALICE, "alice", &one, &two),
            (ERIN, "erin", &one, &two),
            (CAROL, "carol", &two, &one),
        ] {
            let other_before = served(other);
            let mut c = login(&proxy, token).await;
            let ids: Vec<String> = (0..6).map(|i| format!("{user}-{i}")).collect();
            for id in &ids {
                create(&mut c, id, json!({})).await;
                send(&mut c, id).await;
                assert_eq!(home.holders(id).len(), 1, "{user}'s {id} on its pool");
                assert!(other.holders(id).is_empty(), "{user}'s {id} elsewhere");
            }
            let list = c.result("sessions.list", json!({})).await;
            assert_eq!(ids_in(&list["sessions"]), set(&ids), "{user}");
            c.result("ping", json!({})).await;
            assert_eq!(served(other), other_before, "{user} reached the other pool");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_default_pool_unlisted_callers_are_refused() {
    let one = CliFleet::start(1).await;
    let two = CliFleet::start(1).await;
    let proxy = start_yaml(&tenant_yaml(&one, &two, None)).await;
    within(30, async {
        let mut carol = RpcClient::connect(proxy.addr("cli")).await;
        let id = carol.request("connect", json!({ "token": CAROL })).await;
        carol.request("sessions.list", json!({})).await;
        let frames = carol.until_closed().await;
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(frames[0]["id"], id);
        let (code, message) = refusal(&frames[0]);
        assert_eq!(code, -32003, "{message}");
        assert!(message.contains("t2/carol"), "{message}");
        assert_eq!(served(&one) + served(&two), 0);

        // Listed callers still get in.
        let mut alice = login(&proxy, ALICE).await;
        create(&mut alice, "alice-1", json!({})).await;
        assert_eq!(one.holders("alice-1").len(), 1);
        assert_eq!(served(&two), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_policies_deny_and_allow_by_glob() {
    let fleet = CliFleet::start(2).await;
    let policies = "  policies:
    - user: alice
      deny: [\"session.shell.*\", sessions.bulkDelete]
    - tenant: t2
      allow: [session.create, session.send, \"sessions.list\"]
";
    let proxy = start(&fleet, policies, "").await;
    within(30, async {
        let mut alice = login(&proxy, ALICE).await;
        create(&mut alice, "alice-1", json!({})).await;
        let before = served(&fleet);
        for (method, params) in [
            (
                "session.shell.exec",
                session_params("alice-1", json!({ "command": "ls" })),
            ),
            ("session.shell.kill", session_params("alice-1", json!({}))),
            ("sessions.bulkDelete", json!({ "sessionIds": ["alice-1"] })),
        ] {
            let resp = alice.call(method, params).await;
            let (code, message) = refusal(&resp);
            assert_eq!(code, -32003, "{method}: {resp}");
            assert!(message.contains(method), "{message}");
            assert!(message.contains("t1/alice"), "{message}");
        }
        assert_eq!(served(&fleet), before, "a denied method reached a node");
        // The connection stays up, and other methods (and other users) are not affected.
        send(&mut alice, "alice-1").await;
        let mut bob = login(&proxy, BOB).await;
        create(&mut bob, "bob-1", json!({})).await;
        let freed = bob
            .result("sessions.bulkDelete", json!({ "sessionIds": ["bob-1"] }))
            .await;
        assert!(
            freed["freedBytes"]["bob-1"].as_u64().unwrap() > 0,
            "{freed}"
        );

        // An allow list: only those methods (and connect).
        let mut carol = login(&proxy, CAROL).await;
        create(&mut carol, "carol-1", json!({})).await;
        send(&mut carol, "carol-1").await;
        carol.result("sessions.list", json!({})).await;
        let before = served(&fleet);
        for method in ["session.getMessages", "sessions.getSizes", "ping"] {
            let resp = carol
                .call(method, session_params("carol-1", json!({})))
                .await;
            let (code, message) = refusal(&resp);
            assert_eq!(code, -32003, "{method}: {resp}");
            assert!(message.contains(method), "{message}");
        }
        assert_eq!(
            served(&fleet),
            before,
            "a method off the allow list reached a node"
        );
    })
    .await
}

/// An HTTP upstream answering with what the proxy told it about the caller.
async fn echo_upstream(name: &str) -> Mock {
    let name = name.to_owned();
    upstream::serve_fn(move |req| {
        let name = name.clone();
        async move {
            let h = |k: &str| {
                req.headers()
                    .get(k)
                    .map_or("-".to_owned(), |v| v.to_str().unwrap().to_owned())
            };
            let body = format!(
                "user={} tenant={} auth={}",
                h("x-sessiongate-user"),
                h("x-sessiongate-tenant"),
                h("authorization")
            );
            upstream::named(&name, body)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_listener_keyed_on_identity_routes_each_caller_to_one_upstream() {
    let mut mocks = Vec::new();
    let mut members = Vec::new();
    for i in 0..4 {
        let name = format!("up-{i}");
        let mock = echo_upstream(&name).await;
        members.push((name, mock.addr));
        mocks.push(mock);
    }
    let yaml = format!(
        "admin:
  listen: 127.0.0.1:0
{}listeners:
  - name: web
    listen: 127.0.0.1:0
    protocol: http
    pool: api
    key:
      - identity: true
    identity: {{ from: [token], required: true }}
pools:
  api:
    upstreams:
{}",
        identities(""),
        upstreams_yaml(&members)
    );
    let proxy = start_yaml(&yaml).await;
    within(30, async {
        let web = proxy.addr("web");
        let mut admin = proxy.admin_client().await;
        for (token, user, tenant, key) in [
            (ALICE, "alice", "t1", "t1/alice"),
            (BOB, "bob", "t1", "t1/bob"),
            (CAROL, "carol", "t2", "t2/carol"),
            (ERIN, "erin", "-", "erin"),
        ] {
            let expected = admin_route(&mut admin, "api", key).await;
            let bearer = format!("Bearer {token}");
            for _ in 0..5 {
                // A fresh connection each time, and a forged identity header: the proxy's word
                // counts.
                let reply = client::get(
                    web,
                    "/",
                    &[
                        ("authorization", bearer.as_str()),
                        ("x-sessiongate-user", "mallory"),
                    ],
                )
                .await;
                assert_eq!(reply.status, 200, "{user}: {}", reply.body);
                assert_eq!(reply.upstream(), expected, "{user}");
                assert_eq!(
                    reply.body,
                    format!("user={user} tenant={tenant} auth=-"),
                    "{user}"
                );
            }
        }
        for headers in [
            vec![],
            vec![("authorization", "Bearer not-a-token")],
            vec![("x-sessiongate-user", "alice")],
        ] {
            let reply = client::get(web, "/", &headers).await;
            assert_eq!(reply.status, 401, "{headers:?}: {}", reply.body);
            assert!(
                reply.headers.contains_key("www-authenticate"),
                "{headers:?}"
            );
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_made_without_a_client_id_belong_to_their_maker() {
    let fleet = CliFleet::start(3).await;
    let proxy = start(&fleet, "  unowned: deny\n", "").await;
    within(30, async {
        let mut alice = login(&proxy, ALICE).await;
        let mut bob = login(&proxy, BOB).await;
        create(&mut alice, "alice-src", json!({})).await;
        send(&mut alice, "alice-src").await;

        // Ids the proxy or a node chose: a create without id, sessions.open create without
        // id, and a fork (the node names the copy).
        let made = alice.result("session.create", json!({})).await;
        let opened = alice
            .result("sessions.open", json!({ "kind": "create" }))
            .await;
        let forked = alice
            .result("sessions.fork", json!({ "sessionId": "alice-src" }))
            .await;
        let ids: Vec<String> = [&made, &opened, &forked]
            .iter()
            .map(|r| r["sessionId"].as_str().expect("an id").to_owned())
            .collect();
        for id in &ids {
            assert_eq!(fleet.holders(id).len(), 1, "{id} exists");
            let resp = bob
                .call("sessions.getMetadata", session_params(id, json!({})))
                .await;
            assert_eq!(refusal(&resp).0, -32003, "bob on alice's {id}: {resp}");
            let resp = alice
                .call("sessions.getMetadata", session_params(id, json!({})))
                .await;
            assert!(resp.get("result").is_some(), "alice on her {id}: {resp}");
        }
        let list = alice.result("sessions.list", json!({})).await;
        let mut all = ids.clone();
        all.push("alice-src".into());
        assert_eq!(ids_in(&list["sessions"]), set(&all), "{list}");
        let list = bob.result("sessions.list", json!({})).await;
        assert!(ids_in(&list["sessions"]).is_empty(), "{list}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_keeps_the_identity_it_began_with() {
    let fleet = CliFleet::start(1).await;
    let proxy = start(&fleet, "", "").await;
    within(30, async {
        let mut alice = login(&proxy, ALICE).await;
        create(&mut alice, "alice-1", json!({})).await;
        // connect again with the same token: fine; with another: refused and cut off.
        alice.result("connect", json!({ "token": ALICE })).await;
        let id = alice.request("connect", json!({ "token": BOB })).await;
        let frames = alice.until_closed().await;
        let answer = frames
            .iter()
            .find(|f| f["id"] == id)
            .unwrap_or_else(|| panic!("no answer: {frames:?}"));
        assert_eq!(refusal(answer).0, -32002, "{answer}");
        // A later unknown token on a known connection is refused too.
        let mut bob = login(&proxy, BOB).await;
        let id = bob.request("connect", json!({ "token": "guess" })).await;
        let frames = bob.until_closed().await;
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(frames[0]["id"], id);
        assert_eq!(refusal(&frames[0]).0, -32002);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_session_id_is_the_callers_own() {
    let fleet = CliFleet::start(1).await;
    let proxy = start(&fleet, "", "").await;
    within(30, async {
        let mut alice = login(&proxy, ALICE).await;
        let mut bob = login(&proxy, BOB).await;
        let last = bob.result("session.getLastId", json!({})).await;
        assert_eq!(last, json!({}), "nothing of bob's yet");
        create(&mut bob, "bob-1", json!({})).await;
        send(&mut bob, "bob-1").await;
        create(&mut alice, "alice-1", json!({})).await;
        send(&mut alice, "alice-1").await;
        // alice-1 is the node's newest.
        let last = alice.result("session.getLastId", json!({})).await;
        assert_eq!(last["sessionId"], "alice-1", "{last}");
        let last = bob.result("session.getLastId", json!({})).await;
        assert_ne!(
            last["sessionId"], "alice-1",
            "bob learns alice's session: {last}"
        );
        for method in ["session.getLastId", "sessions.getLastForContext"] {
            let last = bob.result(method, json!({})).await;
            assert!(
                last["sessionId"].as_str().is_none_or(|id| id == "bob-1"),
                "{method}: {last}"
            );
        }
    })
    .await
}

/// Lifecycle notifications a node sends every connection, for the sessions of `client` that
/// arrived so far (a round trip first, so the node's earlier notifications are in).
async fn lifecycle_ids(client: &mut RpcClient) -> HashSet<String> {
    client.result("ping", json!({})).await;
    client
        .received
        .iter()
        .filter(|m| m["method"] == "session.lifecycle")
        .filter_map(|m| m["params"]["sessionId"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_notifications_name_only_the_callers_sessions() {
    let fleet = CliFleet::start(1).await;
    let proxy = start(&fleet, "", "").await;
    within(30, async {
        let mut alice = login(&proxy, ALICE).await;
        let mut bob = login(&proxy, BOB).await;
        bob.result("ping", json!({})).await;
        create(&mut bob, "bob-1", json!({})).await;
        create(&mut alice, "alice-1", json!({})).await;
        send(&mut alice, "alice-1").await;
        let made = alice.result("session.create", json!({})).await;
        let generated = made["sessionId"].as_str().unwrap().to_owned();
        let seen = lifecycle_ids(&mut bob).await;
        assert!(seen.contains("bob-1"), "bob hears of his own: {seen:?}");
        assert!(
            !seen.contains("alice-1") && !seen.contains(&generated),
            "bob hears of alice's sessions: {seen:?}"
        );
        let seen = lifecycle_ids(&mut alice).await;
        assert!(seen.contains("alice-1"), "{seen:?}");
        assert!(seen.contains(&generated), "{seen:?}");
        assert!(!seen.contains("bob-1"), "{seen:?}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_redis_keep_users_to_their_sessions() {
    let redis = support::redis::RedisServer::start().await;
    let fleet = CliFleet::start(3).await;
    let top = format!("redis:\n  url: {}\n{}", redis.url(), identities(""));
    let extra = RpcYaml {
        top: &top,
        listener: REQUIRED,
        pool: "",
    };
    let yaml = jsonrpc_config(&fleet.members(), extra);
    let one = start_yaml(&yaml).await;
    let two = start_yaml(&yaml).await;
    within(60, async {
        // Both replicas reach Redis before anything is bound (else each keeps its own).
        for proxy in [&one, &two] {
            let up = proxy.server.metrics().redis_up.clone();
            support::poll_until("sessiongate_redis_up is 1", 10, move || {
                let up = up.clone();
                async move { up.get() == 1 }
            })
            .await;
        }
        let mut alice = login(&one, ALICE).await;
        let mine = alices_sessions(&one, &mut alice, 1).await;
        let made = alice.result("session.create", json!({})).await;
        let generated = made["sessionId"].as_str().unwrap().to_owned();

        let mut bob = login(&two, BOB).await;
        let before = served(&fleet);
        for id in mine.iter().chain([&generated]) {
            for method in ["session.getMessages", "session.resume", "sessions.delete"] {
                let resp = bob.call(method, session_params(id, json!({}))).await;
                assert_eq!(refusal(&resp).0, -32003, "{method} {id}: {resp}");
            }
            let resp = bob.call("session.create", json!({ "sessionId": id })).await;
            assert_eq!(refusal(&resp).0, -32003, "create {id}: {resp}");
        }
        assert_eq!(served(&fleet), before, "a refused request reached a node");
        let list = bob.result("sessions.list", json!({})).await;
        assert!(ids_in(&list["sessions"]).is_empty(), "{list}");
        let seen = lifecycle_ids(&mut bob).await;
        assert!(seen.is_empty(), "bob hears of alice's sessions: {seen:?}");

        // Alice, through the other replica, has all of hers.
        let mut again = login(&two, ALICE).await;
        let list = again.result("sessions.list", json!({})).await;
        let mut all = mine.clone();
        all.push(generated.clone());
        assert_eq!(ids_in(&list["sessions"]), set(&all), "{list}");
        again
            .result("session.resume", session_params(&mine[0], json!({})))
            .await;
        send(&mut again, &mine[0]).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_count_per_user_across_connections() {
    let fleet = CliFleet::start(1).await;
    let top = identities("");
    let listener = format!("{REQUIRED}    limits:\n      per_user: {{ requests: 5, per: 10m }}\n");
    let extra = RpcYaml {
        top: &top,
        listener: &listener,
        pool: "",
    };
    let proxy = start_yaml(&jsonrpc_config(&fleet.members(), extra)).await;
    within(30, async {
        // connect counts too: 1 + 4 pings.
        let mut alice = login(&proxy, ALICE).await;
        for _ in 0..4 {
            alice.result("ping", json!({})).await;
        }
        let pings = fleet_requests(&fleet, "ping");
        let resp = alice.call("ping", json!({})).await;
        let err = error_of(&resp);
        assert_eq!(err["code"], -32005, "{resp}");
        assert!(err["data"]["retryAfterMs"].as_u64().unwrap() > 0, "{resp}");
        // Another connection of the same user shares the budget.
        let mut again = RpcClient::connect(proxy.addr("cli")).await;
        let resp = again.call("connect", json!({ "token": ALICE })).await;
        assert_eq!(error_of(&resp)["code"], -32005, "{resp}");
        assert_eq!(
            fleet_requests(&fleet, "ping"),
            pings,
            "a limited request went on"
        );
        // Another user of the same tenant has a budget of its own.
        let mut bob = login(&proxy, BOB).await;
        bob.result("ping", json!({})).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_tenants_land_on_their_pool() {
    let (a, b) = (
        echo_upstream("p1-up").await,
        echo_upstream("shared-up").await,
    );
    let p1 = vec![("p1-up".to_owned(), a.addr)];
    let shared = vec![("shared-up".to_owned(), b.addr)];
    let yaml = |default: &str| {
        format!(
            "admin:
  listen: 127.0.0.1:0
{}listeners:
  - name: web
    listen: 127.0.0.1:0
    protocol: http
    identity: {{ from: [token], required: true }}
    tenants:
      - {{ tenant: t1, pool: p1 }}
{default}pools:
  p1:
    upstreams:
{}  shared:
    upstreams:
{}",
            identities(""),
            upstreams_yaml(&p1),
            upstreams_yaml(&shared)
        )
    };
    within(30, async {
        let proxy = start_yaml(&yaml("    default_pool: shared\n")).await;
        let web = proxy.addr("web");
        for (token, upstream) in [
            (ALICE, "p1-up"),
            (BOB, "p1-up"),
            (CAROL, "shared-up"),
            (ERIN, "shared-up"),
        ] {
            let bearer = format!("Bearer {token}");
            let reply = client::get(web, "/", &[("authorization", bearer.as_str())]).await;
            assert_eq!(reply.status, 200, "{token}: {}", reply.body);
            assert_eq!(reply.upstream(), upstream, "{token}");
        }
        let proxy = start_yaml(&yaml("")).await;
        let web = proxy.addr("web");
        let bearer = format!("Bearer {ALICE}");
        let reply = client::get(web, "/", &[("authorization", bearer.as_str())]).await;
        assert_eq!(reply.upstream(), "p1-up");
        let bearer = format!("Bearer {CAROL}");
        let reply = client::get(web, "/", &[("authorization", bearer.as_str())]).await;
        assert_eq!(reply.status, 403, "{}", reply.body);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_identity_optional_anonymous_callers_share_only_anonymous_sessions() {
    let fleet = CliFleet::start(2).await;
    let top = identities("");
    let extra = RpcYaml {
        top: &top,
        listener: "    identity: { from: [token], required: false }\n",
        pool: "",
    };
    let proxy = start_yaml(&jsonrpc_config(&fleet.members(), extra)).await;
    within(30, async {
        let mut anon = RpcClient::connect(proxy.addr("cli")).await;
        anon.result("connect", json!({})).await;
        create(&mut anon, "anon-1", json!({})).await;
        let mut alice = login(&proxy, ALICE).await;
        create(&mut alice, "alice-1", json!({})).await;

        let resp = alice
            .call("session.getMessages", session_params("anon-1", json!({})))
            .await;
        assert_eq!(refusal(&resp).0, -32003, "{resp}");
        let resp = anon
            .call("session.getMessages", session_params("alice-1", json!({})))
            .await;
        assert_eq!(refusal(&resp).0, -32003, "{resp}");
        // An unknown token is still refused where identities are optional.
        let mut guess = RpcClient::connect(proxy.addr("cli")).await;
        let resp = guess.call("connect", json!({ "token": "guess" })).await;
        assert_eq!(refusal(&resp).0, -32002, "{resp}");

        // Another anonymous caller shares the anonymous sessions (no identity to tell apart).
        let mut other = RpcClient::connect(proxy.addr("cli")).await;
        let list = other.result("sessions.list", json!({})).await;
        assert_eq!(ids_in(&list["sessions"]), set(&["anon-1".into()]), "{list}");
        let list = alice.result("sessions.list", json!({})).await;
        assert_eq!(
            ids_in(&list["sessions"]),
            set(&["alice-1".into()]),
            "{list}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_rereads_the_tokens_file() {
    let fleet = CliFleet::start(1).await;
    let proxy = start(&fleet, "", "").await;
    within(30, async {
        login(&proxy, BOB).await;
        // Bob's token revoked, dave's added.
        let tokens = format!(
            "- {{ sha256: {}, user: alice, tenant: t1 }}\n- {{ sha256: {}, user: dave }}\n",
            token_hash(ALICE),
            token_hash("dave-token")
        );
        proxy.config.file("tokens.yaml", tokens);
        proxy.server.reload().await.expect("reload");
        let mut bob = RpcClient::connect(proxy.addr("cli")).await;
        let resp = bob.call("connect", json!({ "token": BOB })).await;
        assert_eq!(refusal(&resp).0, -32002, "{resp}");
        let mut dave = login(&proxy, "dave-token").await;
        create(&mut dave, "dave-1", json!({})).await;
        login(&proxy, ALICE).await;
        // A broken file is refused; the tokens from before keep working.
        proxy
            .config
            .file("tokens.yaml", "- { sha256: nothex, user: x }\n");
        let err = proxy.server.reload().await.expect_err("a bad tokens file");
        assert!(err.to_string().contains("sha256"), "{err}");
        login(&proxy, "dave-token").await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_by_task_id_finds_only_the_callers_sessions() {
    let fleet = CliFleet::start(3).await;
    let proxy = start(&fleet, "", "").await;
    within(30, async {
        let mut alice = login(&proxy, ALICE).await;
        let mut bob = login(&proxy, BOB).await;
        create(&mut alice, "alice-task", json!({ "taskId": "task-7" })).await;
        let found = alice
            .result("sessions.findByTaskId", json!({ "taskId": "task-7" }))
            .await;
        assert_eq!(found["sessionId"], "alice-task", "{found}");
        let found = bob
            .result("sessions.findByTaskId", json!({ "taskId": "task-7" }))
            .await;
        assert!(found.get("sessionId").is_none(), "{found}");
    })
    .await
}
