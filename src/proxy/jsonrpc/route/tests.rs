//! The routing decision, table-driven: a real pool built from a config (no sockets), pins and
//! health set per case, and the decision summarised as text.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use super::*;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::jsonrpc::methods;
use crate::snapshot::Snapshot;

const YAML: &str = "
listeners:
  - { name: cli, listen: 127.0.0.1:0, protocol: jsonrpc, pool: fleet }
pools:
  fleet:
    on_owner_down: ON_OWNER_DOWN
    upstreams:
      - { name: a, addr: 127.0.0.1:1 }
      - { name: b, addr: 127.0.0.1:2 }
      - { name: c, addr: 127.0.0.1:3 }
";

fn pool(on_owner_down: &str) -> Arc<Pool> {
    let yaml = YAML.replace("ON_OWNER_DOWN", on_owner_down);
    let config = Config::parse(&yaml, Path::new("t.yaml")).expect("config");
    let metrics = Metrics::new(prometheus::Registry::new()).expect("metrics");
    let snapshot = Snapshot::build(
        config,
        Path::new("t.yaml"),
        None,
        &metrics,
        &crate::store::Store::local(),
    )
    .expect("build");
    snapshot.pool("fleet").expect("pool").clone()
}

fn down(pool: &Pool, name: &str) {
    let u = pool.upstream(name).expect("upstream");
    u.state.record_passive_failure(
        1,
        Duration::from_secs(60),
        "test",
        tokio::time::Instant::now(),
    );
    assert!(!u.state.is_available());
}

fn pin(pool: &Pool, session: &str, node: &str) {
    let endpoint = pool.upstream(node).expect("upstream").endpoint.clone();
    pool.pins.pin(session, endpoint.pin());
}

/// A session id whose ring owner is `node` and that has no pin yet.
fn owned_by(pool: &Pool, node: &str) -> String {
    (0..10_000)
        .map(|i| format!("s-{i}"))
        .find(|s| {
            pool.owner(s.as_bytes()).is_some_and(|u| u.name() == node) && pool.pins.get(s).is_none()
        })
        .expect("an id for the node")
}

fn fixed_id() -> String {
    "new-id".into()
}

/// The decision for `method` with `params`, as text: `forward NODE [session=S] [flags]`,
/// `setup NODE`, `fanout KIND`, `split KIND`, `open-last`, `refuse CODE: MESSAGE`.
fn decide_text(pool: &Pool, method: &str, params: Value) -> String {
    let body = Bytes::from(
        json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string(),
    );
    let env = message::parse_envelope(&body).expect("envelope");
    let req = Request {
        method,
        class: methods::lookup(method).class,
        session: env.session_id.as_deref(),
        body: &body,
    };
    let mut exchanges: HashMap<Box<str>, Arc<str>> = HashMap::default();
    exchanges.insert(Box::from("r-1"), Arc::from("c"));
    let facts = ConnFacts {
        home_key: b"home",
        exchanges: &exchanges,
        new_session_id: &fixed_id,
    };
    match decide(&req, pool, &facts) {
        Decision::Forward(f) => {
            let mut text = format!("forward {}", f.to.name);
            if let Some(s) = &f.session {
                text += &format!(" session={s}");
            }
            for (flag, on) in [
                ("discover", f.discover),
                ("redispatch", f.redispatch),
                ("unpin", f.unpin),
                ("rewritten", f.rewritten.is_some()),
                ("creates", f.creates),
            ] {
                if on {
                    text += &format!(" {flag}");
                }
            }
            text
        }
        Decision::Setup { to, replay } => format!("setup {} {replay:?}", to.name),
        Decision::FanOut(m) => format!("fanout {m:?}"),
        Decision::Split(s) => format!("split {s:?}"),
        Decision::OpenLast => "open-last".into(),
        Decision::Refuse(r) => format!("refuse {}: {}", r.code, r.message),
    }
}

#[test]
fn routing_table() {
    let p = pool("error");
    let home = p.route(b"home").expect("home").name().to_owned();
    let on_b = owned_by(&p, "b");
    let pinned_to_c = owned_by(&p, "a");
    pin(&p, &pinned_to_c, "c");
    let cases: Vec<(&str, Value, String)> = vec![
        (
            "connect",
            json!({"token": "t"}),
            format!("setup {home} Latest"),
        ),
        (
            "secrets.addFilterValues",
            json!({"values": ["x"]}),
            format!("setup {home} Every"),
        ),
        ("ping", json!({}), format!("forward {home} redispatch")),
        ("runtime.shutdown", json!({}), format!("forward {home}")),
        ("no.such.method", json!({}), format!("forward {home}")),
        (
            "no.such.method",
            json!({"sessionId": on_b}),
            format!("forward b session={on_b}"),
        ),
        (
            "session.send",
            json!({"sessionId": on_b}),
            format!("forward b session={on_b}"),
        ),
        (
            "session.resume",
            json!({"sessionId": on_b}),
            format!("forward b session={on_b} discover"),
        ),
        (
            "session.send",
            json!({"sessionId": pinned_to_c}),
            format!("forward c session={pinned_to_c}"),
        ),
        ("session.send", json!({}), format!("forward {home}")),
        (
            "sessions.transferRemoteControl",
            json!({"toSessionId": on_b}),
            format!("forward b session={on_b}"),
        ),
        (
            "session.create",
            json!({"sessionId": on_b}),
            format!("forward b session={on_b} redispatch creates"),
        ),
        (
            "session.create",
            json!({}),
            format!(
                "forward {} session=new-id redispatch rewritten creates",
                p.route(b"new-id").unwrap().name()
            ),
        ),
        (
            "sessions.fork",
            json!({"sessionId": pinned_to_c}),
            format!("forward c session={pinned_to_c}"),
        ),
        (
            "sessions.open",
            json!({"kind": "create"}),
            format!(
                "forward {} session=new-id redispatch rewritten creates",
                p.route(b"new-id").unwrap().name()
            ),
        ),
        (
            "sessions.open",
            json!({"kind": "create", "options": {"sessionId": on_b}}),
            format!("forward b session={on_b} redispatch creates"),
        ),
        (
            "sessions.open",
            json!({"kind": "attach", "sessionId": pinned_to_c}),
            format!("forward c session={pinned_to_c}"),
        ),
        (
            "sessions.open",
            json!({"kind": "resumeLast"}),
            "open-last".into(),
        ),
        ("session.list", json!({}), "fanout SessionList".into()),
        (
            "sessions.pruneOld",
            json!({"olderThanDays": 1}),
            "fanout Prune".into(),
        ),
        (
            "sessions.bulkDelete",
            json!({"sessionIds": []}),
            "split FreedBytes".into(),
        ),
        (
            "llmInference.httpResponseStart",
            json!({"requestId": "r-1"}),
            "forward c".into(),
        ),
        (
            "llmInference.httpResponseStart",
            json!({"requestId": "unknown"}),
            format!("forward {home}"),
        ),
    ];
    for (method, params, want) in cases {
        assert_eq!(
            decide_text(&p, method, params.clone()),
            want,
            "{method} {params}"
        );
    }
}

#[test]
fn loading_an_unpinned_session_may_discover_its_owner() {
    let p = pool("error");
    let on_a = owned_by(&p, "a");
    for method in ["session.resume", "sessions.fork"] {
        assert_eq!(
            decide_text(&p, method, json!({"sessionId": on_a})),
            format!("forward a session={on_a} discover"),
            "{method}"
        );
    }
    assert_eq!(
        decide_text(
            &p,
            "sessions.open",
            json!({"kind": "resume", "sessionId": on_a})
        ),
        format!("forward a session={on_a} discover")
    );
    pin(&p, &on_a, "a");
    assert_eq!(
        decide_text(&p, "session.resume", json!({"sessionId": on_a})),
        format!("forward a session={on_a}"),
        "a pinned session needs no discovery"
    );
}

#[test]
fn a_pinned_session_whose_node_is_down() {
    let p = pool("error");
    let s = owned_by(&p, "a");
    pin(&p, &s, "a");
    down(&p, "a");
    let text = decide_text(&p, "session.send", json!({"sessionId": s}));
    assert!(
        text.starts_with("refuse -32001: ") && text.contains(&s) && text.contains("unavailable"),
        "{text}"
    );
    // An unpinned session on a down node is placed clockwise (it is not known to live there).
    let t = owned_by(&p, "a");
    assert!(decide_text(&p, "session.create", json!({"sessionId": t})).starts_with("forward "));
    assert!(!decide_text(&p, "session.create", json!({"sessionId": t})).starts_with("forward a"));

    let f = pool("failover");
    let s = owned_by(&f, "a");
    pin(&f, &s, "a");
    down(&f, "a");
    let text = decide_text(&f, "session.send", json!({"sessionId": s}));
    assert!(
        text.ends_with(" unpin") && !text.starts_with("forward a"),
        "{text}"
    );
}

#[test]
fn no_usable_node_is_refused() {
    let p = pool("error");
    for n in ["a", "b", "c"] {
        down(&p, n);
    }
    for (method, params) in [
        ("ping", json!({})),
        ("connect", json!({})),
        ("session.create", json!({})),
        ("session.send", json!({"sessionId": "x"})),
    ] {
        let text = decide_text(&p, method, params);
        assert_eq!(
            text, "refuse -32001: no server in pool fleet can take work",
            "{method}"
        );
    }
}
