//! JSON-RPC core v2 against a fleet of in-process mock CLIs: each routing class of the method
//! table (fan-out and merge, split by owner, create from a session, `sessions.open`, setup,
//! unknown), the fan-out failure policy, hardened framing (garbage, slowloris), request
//! timeouts (and their pause while a node waits for the client), a node sending garbage, and a
//! closing client ending its links. Real sockets on 127.0.0.1:0, proxy in process.

mod support;

use std::collections::HashSet;

use serde_json::{json, Value};
use sessiongate::mockcli::Fault;
use support::jsonrpc::{
    create, error_of, id_on, ids_per_upstream, send, session_params, RpcClient, RpcYaml, Setup,
};
use support::{metric_value, poll_until, within};

/// Sessions of every node, all created and prompted through the proxy, oldest prompt first.
async fn fleet_with_sessions(s: &Setup, per_node: usize) -> (RpcClient, Vec<(String, String)>) {
    let sessions = ids_per_upstream(&s.pool(), per_node);
    let mut c = s.client().await;
    for (id, _) in &sessions {
        create(&mut c, id, json!({})).await;
    }
    for (id, _) in &sessions {
        send(&mut c, id).await;
    }
    (c, sessions)
}

fn ids_of(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("a list: {list}"))
        .iter()
        .map(|v| {
            v.as_str().map_or_else(
                || v["sessionId"].as_str().unwrap().to_owned(),
                str::to_owned,
            )
        })
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sessions_namespace_sees_every_node() {
    let s = Setup::start(3, RpcYaml::default()).await;
    within(30, async {
        let (mut c, sessions) = fleet_with_sessions(&s, 3).await;
        let all = sorted(sessions.iter().map(|(id, _)| id.clone()).collect());

        let list = c.result("sessions.list", json!({})).await;
        assert_eq!(sorted(ids_of(&list["sessions"])), all, "sessions.list");
        let legacy = c.result("session.list", json!({})).await;
        assert_eq!(sorted(ids_of(&legacy["sessions"])), all, "session.list");

        let sizes = c.result("sessions.getSizes", json!({})).await;
        let sized: Vec<String> = sizes["sizes"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(sorted(sized), all);

        // Prompted oldest first: the newest are the last ones, whichever node holds them.
        let newest: Vec<String> = sessions.iter().rev().map(|(id, _)| id.clone()).collect();
        let non_empty = c
            .result("sessions.listNonEmptySessionIds", json!({"limit": 4}))
            .await;
        assert_eq!(ids_of(&non_empty["sessionIds"]), newest[..4]);
        let last = c.result("sessions.getLastForContext", json!({})).await;
        assert_eq!(last["sessionId"], newest[0].as_str());

        let (one, _) = &sessions[4];
        let found = c
            .result("sessions.findByPrefix", json!({"prefix": &one[..13]}))
            .await;
        assert_eq!(found["sessionId"], one.as_str());
        // One-character prefixes: the fleet-wide answer is an id only where exactly one
        // session (on any node) matches.
        let mut prefix_hits = 0;
        for p in "0123456789abcdef".chars() {
            let matching = all.iter().filter(|id| id.starts_with(p)).count();
            let found = c
                .result("sessions.findByPrefix", json!({"prefix": p.to_string()}))
                .await;
            match matching {
                1 => {
                    prefix_hits += 1;
                    assert!(found["sessionId"].as_str().unwrap().starts_with(p));
                }
                _ => assert_eq!(found, json!({}), "prefix {p} matches {matching}"),
            }
        }
        assert!(prefix_hits <= 9);
        // Two sessions with one prefix on one node and a third on another: ambiguous, though
        // only one node can name a match.
        let trio = |i: usize| format!("trio-{i:04}");
        let mut per_node: std::collections::HashMap<String, Vec<String>> = Default::default();
        for i in 0..1000 {
            let node = s
                .pool()
                .route(trio(i).as_bytes())
                .unwrap()
                .name()
                .to_owned();
            per_node.entry(node).or_default().push(trio(i));
        }
        let mut nodes = per_node.into_values();
        let (two, one) = (nodes.next().unwrap(), nodes.next().unwrap());
        for id in [&two[0], &two[1], &one[0]] {
            create(&mut c, id, json!({})).await;
        }
        let ambiguous = c
            .result("sessions.findByPrefix", json!({"prefix": "trio-"}))
            .await;
        assert_eq!(ambiguous, json!({}));
        let exact = c
            .result("sessions.findByPrefix", json!({"prefix": &one[0]}))
            .await;
        assert_eq!(exact["sessionId"], one[0].as_str());
        for id in [&two[0], &two[1], &one[0]] {
            c.result("session.delete", session_params(id, json!({})))
                .await;
        }

        let tasked = id_on(&s.pool(), "cli-2");
        create(&mut c, &tasked, json!({"taskId": "task-7"})).await;
        let by_task = c
            .result("sessions.findByTaskId", json!({"taskId": "task-7"}))
            .await;
        assert_eq!(by_task["sessionId"], tasked.as_str());
        let none = c
            .result("sessions.findByTaskId", json!({"taskId": "nope"}))
            .await;
        assert_eq!(none, json!({}));

        let dry = c
            .result(
                "sessions.pruneOld",
                json!({"olderThanDays": 0, "dryRun": true}),
            )
            .await;
        assert_eq!(sorted(ids_of(&dry["candidates"])), all, "{dry}");
        assert_eq!(dry["dryRun"], true);
        assert_eq!(dry["deleted"], json!([]));
        for (id, node) in &sessions {
            assert_eq!(s.fleet.holders(id), [node.as_str()]);
        }

        // A real round that spares all but one session on each of two nodes.
        let doomed: Vec<&String> = [&sessions[0], &sessions[3]]
            .iter()
            .map(|(id, _)| id)
            .collect();
        let keep: Vec<&String> = all.iter().filter(|id| !doomed.contains(id)).collect();
        let pruned = c
            .result(
                "sessions.pruneOld",
                json!({"olderThanDays": 0, "excludeSessionIds": keep}),
            )
            .await;
        assert_eq!(
            sorted(ids_of(&pruned["deleted"])),
            sorted(doomed.iter().map(|s| s.to_string()).collect())
        );
        assert_eq!(pruned["dryRun"], false);
        assert!(pruned["freedBytes"].as_u64().unwrap() > 0);
        for id in &doomed {
            assert!(s.fleet.holders(id).is_empty(), "{id} pruned from disk");
            assert!(s.pool().pins.get(id).is_none(), "{id} unpinned");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_of_sessions_is_split_by_owner_even_where_the_ring_does_not_say() {
    let s = Setup::start(3, RpcYaml::default()).await;
    within(30, async {
        let (mut c, sessions) = fleet_with_sessions(&s, 2).await;
        // Two sessions made straight on a node that is not their ring owner: only the fleet
        // knows where they are.
        let mut strays = Vec::new();
        for (node, other) in [("cli-0", "cli-1"), ("cli-2", "cli-0")] {
            let id = id_on(&s.pool(), other);
            let mut direct = RpcClient::connect(s.fleet.get(node).addr()).await;
            create(&mut direct, &id, json!({})).await;
            send(&mut direct, &id).await;
            strays.push((id, node.to_owned()));
        }
        let unknown = "00000000-0000-4000-8000-000000000000".to_owned();
        // Pinned sessions of every node, the strays and an id nobody has, interleaved.
        let mut order: Vec<String> = sessions.iter().map(|(id, _)| id.clone()).collect();
        order.insert(1, strays[0].0.clone());
        order.insert(3, unknown.clone());
        order.insert(5, strays[1].0.clone());

        let meta = c
            .result("sessions.getClientMetadata", json!({"sessionIds": &order}))
            .await;
        assert_eq!(ids_of(&meta), order, "answers in request order: {meta}");
        for entry in meta.as_array().unwrap() {
            let expected = if entry["sessionId"] == unknown.as_str() {
                "notFound"
            } else {
                "ok"
            };
            assert_eq!(entry["status"], expected, "{entry}");
        }
        let text = s.proxy.metrics_text().await;
        let found = metric_value(
            &text,
            "sessiongate_owner_discovery_total",
            &[("result", "found")],
        );
        assert_eq!(
            found,
            Some(2.0),
            "the strays were found by asking the fleet"
        );

        let in_use = c
            .result("sessions.checkInUse", json!({"sessionIds": &order}))
            .await;
        // This client's sessions are loaded; the strays' creator is gone, so they are not.
        let expected: Vec<String> = order
            .iter()
            .filter(|id| sessions.iter().any(|(s, _)| s == *id))
            .cloned()
            .collect();
        assert_eq!(ids_of(&in_use["inUse"]), expected);

        let before: Vec<u64> = s
            .fleet
            .clis
            .iter()
            .map(|cli| cli.requests_for("sessions.bulkDelete"))
            .collect();
        let deleted = c
            .result("sessions.bulkDelete", json!({"sessionIds": &order}))
            .await;
        let freed = deleted["freedBytes"].as_object().expect("freedBytes");
        assert_eq!(
            freed.keys().cloned().collect::<Vec<_>>(),
            order,
            "{deleted}"
        );
        for (id, bytes) in freed {
            let expected_positive = *id != unknown;
            assert_eq!(
                bytes.as_u64().unwrap() > 0,
                expected_positive,
                "{id}: {bytes}"
            );
            assert!(s.fleet.holders(id).is_empty(), "{id} deleted on disk");
            assert!(s.pool().pins.get(id).is_none(), "{id} unpinned");
        }
        for (cli, before) in s.fleet.clis.iter().zip(before) {
            assert_eq!(
                cli.requests_for("sessions.bulkDelete") - before,
                1,
                "{} gets one part of the split",
                cli.name()
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_is_pinned_where_its_source_lives() {
    let s = Setup::start(3, RpcYaml::default()).await;
    within(30, async {
        let (mut c, sessions) = fleet_with_sessions(&s, 2).await;
        let mut forks = Vec::new();
        for (id, node) in &sessions {
            let fork = c.result("sessions.fork", json!({"sessionId": id})).await;
            let fork = fork["sessionId"].as_str().expect("new id").to_owned();
            assert_eq!(s.fleet.holders(&fork), [node.as_str()], "fork of {id}");
            forks.push(fork);
        }
        let discoveries = || async {
            let text = s.proxy.metrics_text().await;
            ["found", "not_found"]
                .iter()
                .filter_map(|r| {
                    metric_value(&text, "sessiongate_owner_discovery_total", &[("result", r)])
                })
                .sum::<f64>()
        };
        let before = discoveries().await;
        let mut fresh = s.client().await;
        for fork in &forks {
            let resumed = fresh
                .result("session.resume", session_params(fork, json!({})))
                .await;
            assert_eq!(resumed["sessionId"], fork.as_str());
            send(&mut fresh, fork).await;
        }
        assert_eq!(
            discoveries().await,
            before,
            "no fleet-wide search for pinned forks"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_open_creates_resumes_and_resumes_the_fleets_last() {
    let s = Setup::start(3, RpcYaml::default()).await;
    within(30, async {
        let mut c = s.client().await;
        let opened = c.result("sessions.open", json!({"kind": "create"})).await;
        assert_eq!(opened["status"], "created");
        let id = opened["sessionId"].as_str().expect("id").to_owned();
        let owner = s.pool().route(id.as_bytes()).unwrap().name().to_owned();
        assert_eq!(
            s.fleet.holders(&id),
            [owner.as_str()],
            "placed on its ring owner"
        );
        assert!(s.pool().pins.get(&id).is_some(), "pinned");
        send(&mut c, &id).await;

        let mut other = s.client().await;
        let resumed = other
            .result("sessions.open", json!({"kind": "resume", "sessionId": &id}))
            .await;
        assert_eq!(resumed["status"], "resumed");
        let missing = other
            .result(
                "sessions.open",
                json!({"kind": "resume", "sessionId": "nope"}),
            )
            .await;
        assert_eq!(missing, json!({"status": "not_found"}));

        // The fleet's newest session lives on another node than the connection's home.
        let (mut c2, sessions) = fleet_with_sessions(&s, 1).await;
        let (newest, _) = sessions.last().unwrap();
        let last = c2
            .result("sessions.open", json!({"kind": "resumeLast"}))
            .await;
        assert_eq!(last["status"], "resumed", "{last}");
        assert_eq!(last["sessionId"], newest.as_str());
        send(&mut c2, newest).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_destructive_methods_are_never_replayed() {
    let s = Setup::start(3, RpcYaml::default()).await;
    let sessions = ids_per_upstream(&s.pool(), 1);
    within(30, async {
        let mut c = s.client().await;
        c.result("connect", json!({})).await;
        let unknown = c.call("frobnicate.everything", json!({"all": true})).await;
        assert_eq!(error_of(&unknown)["code"], -32601, "the home node answers");
        let victim = id_on(&s.pool(), "cli-1");
        c.result("sessions.bulkDelete", json!({"sessionIds": [&victim]}))
            .await;
        // New links to every node.
        for (id, _) in &sessions {
            create(&mut c, id, json!({})).await;
        }
        let count = |method: &str| -> Vec<u64> {
            s.fleet
                .clis
                .iter()
                .map(|cli| cli.requests_for(method))
                .collect()
        };
        assert_eq!(
            count("connect"),
            [1, 1, 1],
            "setup is replayed on every link"
        );
        assert_eq!(
            count("frobnicate.everything").iter().sum::<u64>(),
            1,
            "home only"
        );
        assert_eq!(count("sessions.bulkDelete"), [0, 1, 0], "its owner only");
    })
    .await;
    let text = s.proxy.metrics_text().await;
    assert_eq!(
        metric_value(
            &text,
            "sessiongate_jsonrpc_unknown_methods_total",
            &[("method", "frobnicate.everything")]
        ),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_is_skipped_or_refused_by_the_fan_out_policy() {
    let s = Setup::start(3, RpcYaml::default()).await;
    within(30, async {
        let (mut c, sessions) = fleet_with_sessions(&s, 1).await;
        s.fleet.get("cli-1").set_fault("sessions.list", Fault::Hang);
        let list = c.result("sessions.list", json!({})).await;
        let expected: HashSet<String> = sessions
            .iter()
            .filter(|(_, n)| n != "cli-1")
            .map(|(id, _)| id.clone())
            .collect();
        assert_eq!(
            ids_of(&list["sessions"])
                .into_iter()
                .collect::<HashSet<_>>(),
            expected
        );
        let text = s.proxy.metrics_text().await;
        assert_eq!(
            metric_value(
                &text,
                "sessiongate_fanout_skipped_total",
                &[("upstream", "cli-1")]
            ),
            Some(1.0)
        );

        let closed = s.proxy.config.path().to_owned();
        let yaml = std::fs::read_to_string(&closed).unwrap().replace(
            "    fanout_timeout: 500ms\n",
            "    fanout_timeout: 500ms\n    fanout_failure: closed\n",
        );
        s.proxy.reload_with(&yaml).await.expect("reload");
        let refused = c.call("sessions.list", json!({})).await;
        let err = error_of(&refused);
        assert_eq!(err["code"], -32001, "{refused}");
        assert!(
            err["message"].as_str().unwrap().contains("cli-1"),
            "{refused}"
        );
        assert_eq!(err["data"]["upstream"], "cli-1");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_get_a_parse_error_at_once_and_only_that_connection_closes() {
    let s = Setup::start(2, RpcYaml::default()).await;
    within(10, async {
        let mut ok = s.client().await;
        let mut bad = s.client().await;
        let mut garbage = vec![0u8; 4096];
        rand::Rng::fill(
            &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7),
            &mut garbage[..],
        );
        bad.send_bytes(&garbage).await;
        let frames = bad.until_closed().await;
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(frames[0]["error"]["code"], -32700);
        assert_eq!(frames[0]["id"], Value::Null);
        ok.result("ping", json!({})).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalling_mid_frame_is_cut_off_but_an_idle_one_is_not() {
    let s = Setup::start(
        1,
        RpcYaml {
            listener: "    frame_timeout: 300ms\n",
            ..Default::default()
        },
    )
    .await;
    within(10, async {
        let mut idle = s.client().await;
        let mut slow = s.client().await;
        slow.send_bytes(b"Content-Length: 50\r\n\r\n{\"jsonrpc\"")
            .await;
        let frames = slow.until_closed().await;
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(frames[0]["error"]["code"], -32600);
        assert!(frames[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not completed within 300ms"));
        // The idle connection has outlived the frame timeout several times over by now.
        let pong = idle.result("ping", json!({"message": "still here"})).await;
        assert_eq!(pong["message"], "pong: still here");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_its_node_never_answers_times_out_naming_method_and_node() {
    let s = Setup::start(
        2,
        RpcYaml {
            pool: "    request_timeout: 300ms\n",
            ..Default::default()
        },
    )
    .await;
    let id = id_on(&s.pool(), "cli-1");
    within(10, async {
        let mut c = s.client().await;
        create(&mut c, &id, json!({})).await;
        s.fleet
            .get("cli-1")
            .set_fault("session.getMessages", Fault::Hang);
        let resp = c
            .call("session.getMessages", session_params(&id, json!({})))
            .await;
        let err = error_of(&resp);
        assert_eq!(err["code"], -32007, "{resp}");
        let message = err["message"].as_str().unwrap();
        assert!(
            message.contains("session.getMessages") && message.contains("cli-1"),
            "{message}"
        );
        assert_eq!(err["data"]["upstream"], "cli-1");
        assert_eq!(err["data"]["method"], "session.getMessages");
        // The session and the link still work.
        send(&mut c, &id).await;
    })
    .await;
    let text = s.proxy.metrics_text().await;
    assert_eq!(
        metric_value(
            &text,
            "sessiongate_requests_total",
            &[("upstream", "cli-1"), ("code", "timeout")]
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeout_pauses_while_the_node_waits_for_the_clients_answer() {
    let s = Setup::start(
        1,
        RpcYaml {
            pool: "    request_timeout: 300ms\n",
            ..Default::default()
        },
    )
    .await;
    let id = id_on(&s.pool(), "cli-0");
    within(10, async {
        let mut c = s.client().await;
        create(&mut c, &id, json!({"hooks": true})).await;
        let sent = c
            .request("session.send", session_params(&id, json!({"prompt": "hi"})))
            .await;
        let hook = c.server_request("hooks.invoke").await;
        // A person takes their time to answer a prompt: longer than request_timeout.
        tokio::time::sleep(std::time::Duration::from_millis(900)).await;
        c.send(&json!({"jsonrpc": "2.0", "id": hook["id"], "result": {}}))
            .await;
        let answer = c.response(&sent).await;
        assert!(answer["result"]["messageId"].is_string(), "{answer}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_a_node_drops_its_link_and_nothing_else() {
    let s = Setup::start(2, RpcYaml::default()).await;
    let sessions = ids_per_upstream(&s.pool(), 1);
    let (on_0, on_1) = (&sessions[0].0, &sessions[1].0);
    within(10, async {
        let mut c = s.client().await;
        create(&mut c, on_0, json!({})).await;
        create(&mut c, on_1, json!({})).await;
        s.fleet
            .get("cli-0")
            .set_fault("session.getMessages", Fault::Garbage);
        let resp = c
            .call("session.getMessages", session_params(on_0, json!({})))
            .await;
        let err = error_of(&resp);
        assert_eq!(err["code"], -32001, "{resp}");
        assert_eq!(err["data"]["upstream"], "cli-0");
        // The other node on the same client connection is untouched.
        send(&mut c, on_1).await;
        // A new link to the node that misbehaved works once it behaves.
        s.fleet.get("cli-0").clear_faults();
        c.result("session.resume", session_params(on_0, json!({})))
            .await;
        send(&mut c, on_0).await;
    })
    .await;
    let text = s.proxy.metrics_text().await;
    assert_eq!(
        metric_value(
            &text,
            "sessiongate_upstream_link_failures_total",
            &[("upstream", "cli-0"), ("kind", "malformed")]
        ),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_client_ends_its_links() {
    let s = Setup::start(3, RpcYaml::default()).await;
    within(20, async {
        let (c, _) = fleet_with_sessions(&s, 1).await;
        for cli in &s.fleet.clis {
            assert_eq!(cli.connections(), 1, "{} has the client's link", cli.name());
        }
        drop(c);
        poll_until("every link closed", 5, || async {
            s.fleet.clis.iter().all(|cli| cli.connections() == 0)
        })
        .await;
        poll_until("the gauges back to zero", 5, || async {
            let text = s.proxy.metrics_text().await;
            metric_value(
                &text,
                "sessiongate_connections_active",
                &[("listener", "cli")],
            ) == Some(0.0)
                && s.fleet.clis.iter().all(|cli| {
                    metric_value(
                        &text,
                        "sessiongate_upstream_connections_active",
                        &[("upstream", cli.name())],
                    ) == Some(0.0)
                })
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_sending_while_a_node_waits_for_it_lets_the_node_go_on() {
    let s = Setup::start(1, RpcYaml::default()).await;
    let id = id_on(&s.pool(), "cli-0");
    within(10, async {
        let mut c = s.client().await;
        create(&mut c, &id, json!({"hooks": true})).await;
        let sent = c
            .request("session.send", session_params(&id, json!({"prompt": "hi"})))
            .await;
        c.server_request("hooks.invoke").await;
        // The client will never answer the hook: it is done sending.
        c.shutdown_write().await;
        // The proxy answers the hook for it, so the node's turn goes on and ends.
        let answer = c.response(&sent).await;
        assert!(answer["result"]["messageId"].is_string(), "{answer}");
        c.until_closed().await;
    })
    .await;
    let hooks = s.fleet.get("cli-0").hook_answers();
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    assert_eq!(
        hooks[0]["error"]["message"], "the client went away",
        "{hooks:?}"
    );
    poll_until("the link closed", 5, || async {
        s.fleet.get("cli-0").connections() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_reading_costs_its_requests_not_the_connection() {
    // A node that accepts and never reads nor answers.
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (addr, keep) = (blackhole.local_addr().expect("addr"), held.clone());
    std::thread::spawn(move || {
        for stream in blackhole.incoming().flatten() {
            keep.lock().unwrap().push(stream);
        }
    });
    let fleet = support::jsonrpc::CliFleet::start(1).await;
    let mut members = fleet.members();
    members.push(("hole".into(), addr));
    let yaml = support::jsonrpc::jsonrpc_config(
        &members,
        RpcYaml {
            pool: "    request_timeout: 500ms\n",
            ..Default::default()
        },
    );
    let proxy = support::Proxy::start_yaml(&yaml).await;
    let pool = proxy.server.snapshot().pool("fleet").unwrap().clone();
    let (in_hole, on_cli) = (id_on(&pool, "hole"), id_on(&pool, "cli-0"));
    within(30, async {
        let mut c = RpcClient::connect(proxy.addr("cli")).await;
        create(&mut c, &on_cli, json!({})).await;
        // Far more than the node's socket buffers and the link's queue (256 frames) hold.
        let big = "x".repeat(64 * 1024);
        let mut to_hole = Vec::new();
        for _ in 0..600 {
            let params = session_params(&in_hole, json!({ "prompt": &big }));
            to_hole.push(c.request("session.send", params).await);
        }
        let healthy = c
            .request("session.getMessages", session_params(&on_cli, json!({})))
            .await;
        let answer = c.response(&healthy).await;
        assert!(answer["result"]["events"].is_array(), "{answer}");
        for id in &to_hole {
            let failed = c.response(id).await;
            assert!(failed.get("error").is_some(), "{failed}");
        }
    })
    .await;
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_the_clients_own() {
    let s = Setup::start(2, RpcYaml::default()).await;
    within(10, async {
        let mut c = s.client().await;
        let reserved = json!("sessiongate-1");
        c.send(&json!({"jsonrpc": "2.0", "id": &reserved, "method": "ping"}))
            .await;
        let answer = c.response(&reserved).await;
        assert_eq!(answer["error"]["code"], -32600, "{answer}");
        // One id twice in a batch, the first answered by a task of the proxy.
        c.send(&json!([
            {"jsonrpc": "2.0", "id": 7, "method": "sessions.list", "params": {}},
            {"jsonrpc": "2.0", "id": 7, "method": "ping"},
        ]))
        .await;
        let batch = c.wait_for("the batch", Value::is_array).await;
        assert!(batch[0]["result"]["sessions"].is_array(), "{batch}");
        assert_eq!(batch[1]["error"]["code"], -32600, "{batch}");
    })
    .await;
}
