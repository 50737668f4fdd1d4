//! The server-scoped `sessions.*` namespace, over real sockets.

use super::*;

const OTHER: &str = "99999999-2222-4333-8444-555555555555";

/// `session.create` with `params`; returns the session id.
async fn create(c: &mut Client, params: Value) -> String {
    let created = c.result("session.create", params).await;
    created["sessionId"].as_str().unwrap().to_owned()
}

/// A turn on a loaded session: after it, the session has a `user.message`.
async fn say(c: &mut Client, sid: &str, prompt: &str) {
    c.result("session.send", json!({"sessionId": sid, "prompt": prompt}))
        .await;
}

/// The error object of a request that must fail.
async fn error(c: &mut Client, method: &str, params: Value) -> Value {
    let (_, resp) = c.call(method, params).await;
    resp.get("error")
        .cloned()
        .unwrap_or_else(|| panic!("{method} succeeded: {resp}"))
}

fn session_ids(entries: &Value) -> Vec<&str> {
    entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sessionId"].as_str().unwrap())
        .collect()
}

/// What a session occupies on disk: its persisted events as JSON lines.
fn events_size(events: &Value) -> u64 {
    let events = events.as_array().unwrap();
    events.iter().map(|e| e.to_string().len() as u64 + 1).sum()
}

#[tokio::test]
async fn list_with_metadata_limit_and_get_metadata() {
    let cli = mock("s", None).await;
    let mut c = Client::connect(&cli).await;
    let named = create(&mut c, json!({"name": "release notes", "taskId": "task-7"})).await;
    let plain = create(&mut c, json!({})).await;
    say(&mut c, &plain, "fix the build").await;

    let full = c.result("sessions.list", json!({})).await;
    assert_eq!(full, c.result("session.list", json!({})).await);
    let entries = &full["sessions"];
    assert_eq!(session_ids(entries), [plain.as_str(), named.as_str()]);
    assert_eq!(entries[0]["name"], "fix the build");
    assert!(entries[0].get("mcTaskId").is_none());
    assert_eq!(entries[1]["name"], "release notes");
    assert_eq!(entries[1]["summary"], "");
    assert_eq!(entries[1]["mcTaskId"], "task-7");

    let basic = |entry: &Value| {
        json!({
            "sessionId": entry["sessionId"],
            "startTime": entry["startTime"],
            "modifiedTime": entry["modifiedTime"],
            "isRemote": false,
            "isDetached": false,
        })
    };
    for (limit, expected) in [
        (0, json!([basic(&entries[0]), basic(&entries[1])])),
        (1, json!([entries[0], basic(&entries[1])])),
        (2, entries.clone()),
        (5, entries.clone()),
    ] {
        let listed = c
            .result("sessions.list", json!({ "metadataLimit": limit }))
            .await;
        assert_eq!(listed["sessions"], expected, "metadataLimit {limit}");
    }
    for (cwd, expected) in [("/mock", entries.clone()), ("/elsewhere", json!([]))] {
        let listed = c
            .result("sessions.list", json!({"filter": {"cwd": cwd}}))
            .await;
        assert_eq!(listed["sessions"], expected, "cwd {cwd}");
    }
    assert_eq!(
        c.result("sessions.getMetadata", json!({ "sessionId": named }))
            .await,
        json!({"session": entries[1]})
    );
    assert_eq!(
        c.result("sessions.getMetadata", json!({ "sessionId": OTHER }))
            .await,
        json!({})
    );
}

#[tokio::test]
async fn fork_copies_the_persisted_events() {
    let cli = mock("s", None).await;
    let mut c = Client::connect(&cli).await;
    create(&mut c, json!({ "sessionId": SID })).await;
    say(&mut c, SID, "hello world").await;
    let source = c
        .result("session.getMessages", json!({ "sessionId": SID }))
        .await["events"]
        .clone();
    assert_eq!(source.as_array().unwrap().len(), 3);

    let forked = c.result("sessions.fork", json!({ "sessionId": SID })).await;
    let fork = forked["sessionId"].as_str().unwrap().to_owned();
    assert_eq!(uuid::Uuid::parse_str(&fork).unwrap().get_version_num(), 4);
    assert_eq!(
        forked,
        json!({"sessionId": fork, "name": "hello world (fork)"})
    );
    assert_eq!(cli.session_ids().first(), Some(&fork), "newest first");
    // On disk, not loaded; resumed, its history is the source's.
    let err = error(&mut c, "session.getMessages", json!({ "sessionId": fork })).await;
    assert_eq!(err["code"], -32603);
    c.result("session.resume", json!({ "sessionId": fork }))
        .await;
    let events = c
        .result("session.getMessages", json!({ "sessionId": fork }))
        .await["events"]
        .clone();
    assert_eq!(
        events.as_array().unwrap()[..3],
        source.as_array().unwrap()[..]
    );
    assert_eq!(events[3]["type"], "session.resume");
    let meta = c
        .result("sessions.getMetadata", json!({ "sessionId": fork }))
        .await;
    assert_eq!(meta["session"]["summary"], "hello world");

    // Up to (not including) an event, under a given name.
    let upto = c
        .result(
            "sessions.fork",
            json!({"sessionId": SID, "name": "mine", "toEventId": source[1]["id"]}),
        )
        .await;
    assert_eq!(upto["name"], "mine");
    let upto = upto["sessionId"].as_str().unwrap().to_owned();
    let meta = c
        .result("sessions.getMetadata", json!({ "sessionId": upto }))
        .await;
    assert_eq!(meta["session"]["name"], "mine");
    assert_eq!(meta["session"]["summary"], "");
    let sizes = c.result("sessions.getSizes", json!({})).await;
    assert_eq!(sizes["sizes"][&upto], events_size(&json!([source[0]])));

    assert_eq!(
        error(&mut c, "sessions.fork", json!({ "sessionId": OTHER })).await,
        json!({"code": -32603, "message": format!(
            "Request sessions.fork failed with message: Cannot fork session {OTHER}: \
             no persisted or in-memory events found")})
    );
}

#[tokio::test]
async fn sizes_check_in_use_and_bulk_delete() {
    let cli = mock("s", None).await;
    let mut c = Client::connect(&cli).await;
    let loaded = create(&mut c, json!({})).await;
    let unloaded = create(&mut c, json!({})).await;
    assert_eq!(
        c.result("sessions.close", json!({ "sessionId": unloaded }))
            .await,
        json!({})
    );
    say(&mut c, &loaded, "something to store").await;

    let sizes = c.result("sessions.getSizes", json!({})).await["sizes"].clone();
    assert_eq!(sizes.as_object().unwrap().len(), 2, "{sizes}");
    let events = c
        .result("session.getMessages", json!({ "sessionId": loaded }))
        .await["events"]
        .clone();
    let loaded_size = events_size(&events);
    assert_eq!(sizes[&loaded], loaded_size);
    assert!(sizes[&unloaded].as_u64().unwrap() >= 1);

    let in_use = c
        .result(
            "sessions.checkInUse",
            json!({"sessionIds": [unloaded, loaded, OTHER]}),
        )
        .await;
    assert_eq!(in_use, json!({"inUse": [loaded]}));

    let freed = c
        .result(
            "sessions.bulkDelete",
            json!({"sessionIds": [loaded, OTHER, loaded]}),
        )
        .await;
    let mut expected = serde_json::Map::new();
    expected.insert(loaded.clone(), json!(loaded_size));
    expected.insert(OTHER.to_owned(), json!(0));
    assert_eq!(freed, json!({ "freedBytes": expected }));
    assert_eq!(cli.session_ids(), std::slice::from_ref(&unloaded));
    let sizes = c.result("sessions.getSizes", json!({})).await["sizes"].clone();
    assert_eq!(
        sizes.as_object().unwrap().keys().collect::<Vec<_>>(),
        [&unloaded]
    );
}

#[tokio::test]
async fn prune_old_ignores_the_unmessaged_skips_the_named_and_honours_dry_run() {
    let cli = mock("s", None).await;
    let mut c = Client::connect(&cli).await;
    let quiet = create(&mut c, json!({})).await;
    let plain = create(&mut c, json!({})).await;
    say(&mut c, &plain, "plain").await;
    let named = create(&mut c, json!({"name": "keep me"})).await;
    say(&mut c, &named, "named").await;
    let excluded = create(&mut c, json!({})).await;
    say(&mut c, &excluded, "excluded").await;
    let sizes = c.result("sessions.getSizes", json!({})).await["sizes"].clone();
    let size_of = |ids: &[&str]| -> u64 { ids.iter().map(|id| sizes[*id].as_u64().unwrap()).sum() };
    let (plain, named, excluded) = (plain.as_str(), named.as_str(), excluded.as_str());

    // (params, deleted, candidates, skipped), in order: dry runs first, each real one removes.
    type Ids<'a> = Vec<&'a str>;
    let cases: [(Value, Ids, Ids, Ids); 6] = [
        (json!({"olderThanDays": 1}), vec![], vec![], vec![]),
        (json!({"olderThanDays": 0.5}), vec![], vec![], vec![]),
        (
            json!({"olderThanDays": 0, "dryRun": true, "excludeSessionIds": [excluded]}),
            vec![],
            vec![plain],
            vec![named],
        ),
        (
            json!({"olderThanDays": 0, "dryRun": true, "includeNamed": true,
                   "excludeSessionIds": [excluded]}),
            vec![],
            vec![named, plain],
            vec![],
        ),
        (
            json!({"olderThanDays": 0, "excludeSessionIds": [excluded]}),
            vec![plain],
            vec![],
            vec![named],
        ),
        (
            json!({"olderThanDays": 0, "includeNamed": true}),
            vec![excluded, named],
            vec![],
            vec![],
        ),
    ];
    for (params, deleted, candidates, skipped) in cases {
        let dry_run = params["dryRun"] == true;
        let before = cli.session_ids();
        let pruned = c.result("sessions.pruneOld", params.clone()).await;
        assert_eq!(
            pruned,
            json!({
                "deleted": deleted,
                "candidates": candidates,
                "skipped": skipped,
                "freedBytes": size_of(&deleted) + size_of(&candidates),
                "dryRun": dry_run,
            }),
            "{params}"
        );
        let mut expected = before;
        expected.retain(|id| !deleted.contains(&id.as_str()));
        assert_eq!(cli.session_ids(), expected, "{params}");
    }
    // Never messaged: never a candidate, however old.
    assert_eq!(cli.session_ids(), [quiet]);
}

#[tokio::test]
async fn lookups_by_prefix_task_context_and_messages() {
    let cli = mock("s", None).await;
    let mut c = Client::connect(&cli).await;
    assert_eq!(
        c.result("sessions.getLastForContext", json!({})).await,
        json!({})
    );
    assert_eq!(
        c.result("sessions.listNonEmptySessionIds", json!({})).await,
        json!({"sessionIds": []})
    );
    let ids = [
        "aaaa1111-0000-4000-8000-000000000001",
        "aaaa2222-0000-4000-8000-000000000002",
        "bbbb3333-0000-4000-8000-000000000003",
    ];
    create(&mut c, json!({"sessionId": ids[0]})).await;
    create(&mut c, json!({"sessionId": ids[1], "taskId": "task-2"})).await;
    create(&mut c, json!({"sessionId": ids[2]})).await;
    say(&mut c, ids[0], "first").await;
    say(&mut c, ids[2], "third").await;
    let found = |sid: &str| json!({ "sessionId": sid });

    let cases = [
        (
            "sessions.findByPrefix",
            json!({"prefix": "aaaa1"}),
            found(ids[0]),
        ),
        (
            "sessions.findByPrefix",
            json!({"prefix": "aaaa"}),
            json!({}),
        ),
        (
            "sessions.findByPrefix",
            json!({"prefix": ids[2]}),
            found(ids[2]),
        ),
        ("sessions.findByPrefix", json!({"prefix": "c"}), json!({})),
        (
            "sessions.findByTaskId",
            json!({"taskId": "task-2"}),
            found(ids[1]),
        ),
        (
            "sessions.findByTaskId",
            json!({"taskId": "task-9"}),
            json!({}),
        ),
        ("sessions.getLastForContext", json!({}), found(ids[2])),
        (
            "sessions.getLastForContext",
            json!({"context": {"cwd": "/mock"}}),
            found(ids[2]),
        ),
        (
            "sessions.getLastForContext",
            json!({"context": {"cwd": "/elsewhere"}}),
            json!({}),
        ),
        (
            "sessions.listNonEmptySessionIds",
            json!({}),
            json!({"sessionIds": [ids[2], ids[0]]}),
        ),
        (
            "sessions.listNonEmptySessionIds",
            json!({"limit": 1}),
            json!({"sessionIds": [ids[2]]}),
        ),
    ];
    for (method, params, expected) in cases {
        assert_eq!(
            c.result(method, params.clone()).await,
            expected,
            "{method} {params}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_creates_resumes_and_attaches() {
    let cli = mock("s", None).await;
    let mut a = Client::connect(&cli).await;
    let mut b = Client::connect(&cli).await;
    let mut c = Client::connect(&cli).await;
    let opened =
        |status: &str, sid: &str| json!({"status": status, "sessionId": sid, "startupPrompts": []});
    let not_found = json!({"status": "not_found"});
    assert_eq!(
        a.result("sessions.open", json!({"kind": "resumeLast"}))
            .await,
        not_found
    );

    // create: as session.create (lifecycle, answer, session.start), with name and task id.
    let options = json!({"sessionId": SID, "name": "n", "taskId": "t"});
    let (before, resp) = a
        .call(
            "sessions.open",
            json!({"kind": "create", "options": options}),
        )
        .await;
    assert_eq!(resp["result"], opened("created", SID));
    let lifecycles: Vec<_> = before.iter().filter_map(lifecycle_type).collect();
    assert_eq!(lifecycles, ["session.created"]);
    assert_eq!(event_type(&a.recv().await), Some("session.start"));
    assert_eq!(
        a.result("sessions.findByTaskId", json!({"taskId": "t"}))
            .await,
        json!({ "sessionId": SID })
    );
    let meta = a
        .result("sessions.getMetadata", json!({ "sessionId": SID }))
        .await;
    assert_eq!(meta["session"]["name"], "n");
    let generated = a.result("sessions.open", json!({"kind": "create"})).await;
    let sid = generated["sessionId"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(sid).unwrap().get_version_num(), 4);
    assert_eq!(generated, opened("created", sid));

    // resume: as session.resume; an unknown session is a status, not an error.
    assert_eq!(
        b.result("sessions.open", json!({"kind": "resume", "sessionId": SID}))
            .await,
        opened("resumed", SID)
    );
    assert_eq!(event_type(&b.recv().await), Some("session.resume"));
    assert_eq!(
        b.result(
            "sessions.open",
            json!({"kind": "resume", "sessionId": OTHER})
        )
        .await,
        not_found
    );

    // attach: joins a loaded session without an event of its own, and then gets its events.
    assert_eq!(
        c.result("sessions.open", json!({"kind": "attach", "sessionId": SID}))
            .await,
        opened("resumed", SID)
    );
    say(&mut a, SID, "hi").await;
    let seen = c.until_event("session.idle").await;
    let kinds: Vec<_> = seen.iter().filter_map(event_type).collect();
    assert_eq!(kinds, ["user.message", "session.error", "session.idle"]);
    assert_eq!(
        a.result("sessions.close", json!({ "sessionId": SID }))
            .await,
        json!({})
    );
    assert_eq!(
        a.result("sessions.checkInUse", json!({ "sessionIds": [SID] }))
            .await,
        json!({"inUse": []})
    );
    assert_eq!(
        c.result("sessions.open", json!({"kind": "attach", "sessionId": SID}))
            .await,
        not_found
    );

    // resumeLast: the newest-modified session (the one just messaged).
    assert_eq!(
        c.result("sessions.open", json!({"kind": "resumeLast"}))
            .await,
        opened("resumed", SID)
    );
    assert_eq!(
        c.until_event("session.resume").await.last().unwrap()["params"]["sessionId"],
        SID
    );

    // Hooks go in the options, as for session.create.
    let hooked = a
        .result(
            "sessions.open",
            json!({"kind": "create", "options": {"hooks": true}}),
        )
        .await;
    let send = a
        .request(
            "session.send",
            json!({"sessionId": hooked["sessionId"], "prompt": "p"}),
        )
        .await;
    let hook = a.until_method("hooks.invoke").await;
    a.send(&json!({"jsonrpc": "2.0", "id": hook["id"], "result": {}}))
        .await;
    let (_, resp) = a.until_response(&send).await;
    assert!(resp["result"]["messageId"].is_string(), "{resp}");
}

#[tokio::test]
async fn delete_close_save_and_release_lock() {
    let cli = mock("s", None).await;
    let mut c = Client::connect(&cli).await;
    create(&mut c, json!({ "sessionId": SID })).await;
    for method in ["sessions.save", "sessions.releaseLock", "sessions.close"] {
        for sid in [SID, OTHER] {
            assert_eq!(
                c.result(method, json!({ "sessionId": sid })).await,
                json!({}),
                "{method} {sid}"
            );
        }
    }
    // Closed: on disk, unloaded.
    assert!(cli.has_session(SID));
    let err = error(
        &mut c,
        "session.send",
        json!({"sessionId": SID, "prompt": "x"}),
    )
    .await;
    assert_eq!(err["code"], -32603);
    for _ in 0..2 {
        assert_eq!(
            c.result("sessions.delete", json!({ "sessionId": SID }))
                .await,
            json!({})
        );
        assert!(!cli.has_session(SID));
    }
}

#[tokio::test]
async fn client_metadata_and_enrich_keep_the_request_order() {
    let cli = mock("s", None).await;
    let mut c = Client::connect(&cli).await;
    let quiet = create(&mut c, json!({})).await;
    let talked = create(&mut c, json!({"name": "named"})).await;
    say(&mut c, &talked, "talk").await;

    let statuses = c
        .result(
            "sessions.getClientMetadata",
            json!({"sessionIds": [OTHER, talked, quiet], "keys": ["k"]}),
        )
        .await;
    assert_eq!(
        statuses,
        json!([
            {"sessionId": OTHER, "status": "notFound"},
            {"sessionId": talked, "status": "ok", "metadata": {}},
            {"sessionId": quiet, "status": "ok", "metadata": {}},
        ])
    );

    let enriched = c
        .result(
            "sessions.enrichMetadata",
            json!({"sessions": [
                {"sessionId": talked, "startTime": "kept", "summary": "stale"},
                {"sessionId": OTHER, "custom": 1},
                {"sessionId": quiet},
                42,
            ]}),
        )
        .await;
    let context = json!({"cwd": "/mock"});
    assert_eq!(
        enriched,
        json!({"sessions": [
            {"sessionId": talked, "startTime": "kept", "summary": "talk", "name": "named",
             "clientName": "sdk", "context": context},
            {"sessionId": OTHER, "custom": 1},
            {"sessionId": quiet, "summary": "", "name": "", "clientName": "sdk", "context": context},
            42,
        ]})
    );
}

#[tokio::test]
async fn missing_or_malformed_params_are_invalid_params() {
    let cli = mock("s", None).await;
    let mut c = Client::connect(&cli).await;
    let cases = [
        ("sessions.getMetadata", json!({}), "sessionId is required"),
        ("sessions.fork", json!({}), "sessionId is required"),
        (
            "sessions.fork",
            json!({"sessionId": 5}),
            "sessionId must be a string",
        ),
        ("sessions.bulkDelete", json!({}), "sessionIds is required"),
        (
            "sessions.bulkDelete",
            json!({"sessionIds": [1]}),
            "sessionIds must be an array of strings",
        ),
        (
            "sessions.checkInUse",
            json!({"sessionIds": "x"}),
            "sessionIds must be an array of strings",
        ),
        ("sessions.pruneOld", json!({}), "olderThanDays is required"),
        (
            "sessions.pruneOld",
            json!({"olderThanDays": -1}),
            "olderThanDays must be a non-negative number",
        ),
        ("sessions.findByPrefix", json!({}), "prefix is required"),
        ("sessions.findByTaskId", json!(null), "taskId is required"),
        ("sessions.open", json!({}), "kind is required"),
        (
            "sessions.open",
            json!({"kind": "resume"}),
            "sessionId is required",
        ),
        (
            "sessions.open",
            json!({"kind": "attach"}),
            "sessionId is required",
        ),
        (
            "sessions.open",
            json!({"kind": "teleport"}),
            "unsupported kind teleport",
        ),
        (
            "sessions.open",
            json!({"kind": "create", "options": {"sessionId": 5}}),
            "options.sessionId must be a string",
        ),
        ("sessions.delete", json!({}), "sessionId is required"),
        ("sessions.close", json!({}), "sessionId is required"),
        ("sessions.save", json!({}), "sessionId is required"),
        ("sessions.releaseLock", json!({}), "sessionId is required"),
        (
            "sessions.getClientMetadata",
            json!({}),
            "sessionIds is required",
        ),
        ("sessions.enrichMetadata", json!({}), "sessions is required"),
        (
            "sessions.enrichMetadata",
            json!({"sessions": {}}),
            "sessions must be an array",
        ),
    ];
    for (method, params, detail) in cases {
        assert_eq!(
            error(&mut c, method, params.clone()).await,
            json!({"code": -32602, "message": format!("Invalid params: {detail}")}),
            "{method} {params}"
        );
    }
    assert_eq!(
        error(&mut c, "sessions.nope", json!({})).await,
        json!({"code": -32601, "message": "Unhandled method sessions.nope"})
    );
    assert!(cli.session_ids().is_empty());
}
