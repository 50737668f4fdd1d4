//! Fault injection: an upstream process SIGKILLed under load, HTTP and JSON-RPC, in front of the
//! real binary. Its clients get a clear error (502/503/504; `-32001`) within the configured
//! timeouts, nothing reaches it once its probes marked it down (it is restarted on the same port
//! and counts what arrives), and the keys and sessions of the other upstreams see no error.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::binary::Binary;
use support::client::Client;
use support::faults::{sample, ChildUpstream, Speaks};
use support::jsonrpc::{session_params, CliFleet, RpcClient};
use support::nodes::HttpNode;
use support::{admin_route, eventually, poll_until, upstreams_yaml, within, ConfigDir};

/// Probes every 200ms; one failure takes an upstream down, and it never comes back during the
/// test (`rise: 1000`), so a restarted process must receive nothing but probes.
const HEALTH: &str = "interval: 200ms, timeout: 200ms, rise: 1000, fall: 1";

/// The pool's `request_timeout`: every error must come sooner than this (plus scheduling slack).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// One request of the load: which kind of key, when it started, how long it took, what came back.
struct Outcome {
    victim_key: bool,
    started: Instant,
    took: Duration,
    /// HTTP: the status and the answering upstream; JSON-RPC: "ok" or the error code.
    result: Result<(u16, String), String>,
}

type Log = Arc<Mutex<Vec<Outcome>>>;

fn http_config(members: &[(String, std::net::SocketAddr)]) -> String {
    format!(
        "admin:
  listen: 127.0.0.1:0
shutdown_grace: 2s
listeners:
  - name: web
    listen: 127.0.0.1:0
    protocol: http
    pool: api
    key:
      - header: X-Session-Id
pools:
  api:
    health: {{ probe: http, path: /healthz, {HEALTH} }}
    connect_timeout: 1s
    request_timeout: 2s
    upstreams:
{}",
        upstreams_yaml(members)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_upstream_sigkilled_under_load() {
    within(60, async {
        let mut victim = ChildUpstream::start(Speaks::Http, "victim").await;
        let (a, b) = (HttpNode::start("a").await, HttpNode::start("b").await);
        let dir = ConfigDir::new(&http_config(&[victim.member(), a.member(), b.member()]));
        let mut proxy = Binary::spawn(dir.path());
        let web = proxy.listener_addr("web").await;
        let admin = proxy.listener_addr("admin").await;

        // 60 keys, split by the upstream the ring gives them now.
        let mut admin_client = Client::h1(admin).await;
        let mut keys = Vec::new();
        for i in 0..60 {
            let key = format!("user-{i}");
            let on_victim = admin_route(&mut admin_client, "api", &key).await == "victim";
            keys.push((key, on_victim));
        }
        assert!(keys.iter().any(|k| k.1) && keys.iter().any(|k| !k.1));

        let log: Log = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for t in 0..4 {
            let (log, stop, done) = (log.clone(), stop.clone(), done.clone());
            let mine: Vec<_> = keys.iter().skip(t).step_by(4).cloned().collect();
            tasks.push(tokio::spawn(async move {
                let mut client = Client::h1(web).await;
                for i in 0..50_000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let (key, victim_key) = &mine[i % mine.len()];
                    let started = Instant::now();
                    let result = match client.try_get("/", &[("x-session-id", key)]).await {
                        Ok(reply) => {
                            let from = reply
                                .headers
                                .get("x-upstream")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-")
                                .to_owned();
                            Ok((reply.status.as_u16(), from))
                        }
                        Err(e) => {
                            // The proxy closed the connection: carry on with a new one so the
                            // test still sees what follows.
                            client = Client::h1(web).await;
                            Err(e.to_string())
                        }
                    };
                    log.lock().expect("lock").push(Outcome {
                        victim_key: *victim_key,
                        started,
                        took: started.elapsed(),
                        result,
                    });
                    done.fetch_add(1, Ordering::SeqCst);
                }
            }));
        }
        progress(&done, 200).await;

        let killed = Instant::now();
        victim.sigkill().await;
        let victim_labels = [("pool", "api"), ("upstream", "victim")];
        poll_until("victim marked down", 10, || async {
            sample(admin, "sessiongate_upstream_healthy", &victim_labels).await == 0.0
        })
        .await;
        let down = Instant::now();
        progress(&done, 400).await;

        victim.restart().await;
        eventually("the restarted victim is probed", || victim.probes() >= 2).await;
        progress(&done, 400).await;
        stop.store(true, Ordering::SeqCst);
        for task in tasks {
            task.await.expect("load task");
        }

        let log = log.lock().expect("lock");
        let others: Vec<_> = log.iter().filter(|o| !o.victim_key).collect();
        let bad: Vec<_> = others
            .iter()
            .filter(|o| !matches!(&o.result, Ok((200, _))))
            .map(|o| &o.result)
            .collect();
        assert!(bad.is_empty(), "other keys saw errors: {bad:?}");

        let mut errors = 0;
        let mut slowest_error = Duration::ZERO;
        for o in log.iter().filter(|o| o.victim_key && o.started >= killed) {
            match &o.result {
                Ok((200, _)) => {}
                Ok((502..=504, _)) => {
                    errors += 1;
                    slowest_error = slowest_error.max(o.took);
                }
                other => panic!("a victim key got {other:?} after the kill"),
            }
        }
        assert!(
            slowest_error <= REQUEST_TIMEOUT + Duration::from_secs(1),
            "an error took {slowest_error:?}"
        );
        // Once marked down (plus one probe interval for requests already routed), victim keys
        // are served by the others.
        let settled = down + Duration::from_millis(200);
        let after: Vec<_> = log
            .iter()
            .filter(|o| o.victim_key && o.started >= settled)
            .collect();
        assert!(
            !after.is_empty(),
            "no victim key was asked after it went down"
        );
        for o in &after {
            match &o.result {
                Ok((200, from)) if from != "victim" => {}
                other => panic!("a victim key after the down mark got {other:?}"),
            }
        }
        assert_eq!(
            victim.hits(),
            0,
            "requests reached the restarted, down victim"
        );
        assert!(a.hits() > 0 && b.hits() > 0);
        eprintln!(
            "HTTP SIGKILL: {} requests ({} on other keys, 0 errors); {errors} victim-key errors \
             (502/503/504), slowest {slowest_error:?}; marked down {:?} after the kill",
            log.len(),
            others.len(),
            down - killed
        );
    })
    .await
}

fn jsonrpc_config(members: &[(String, std::net::SocketAddr)]) -> String {
    format!(
        "admin:
  listen: 127.0.0.1:0
shutdown_grace: 2s
listeners:
  - name: cli
    listen: 127.0.0.1:0
    protocol: jsonrpc
    pool: fleet
pools:
  fleet:
    health: {{ probe: jsonrpc, {HEALTH} }}
    connect_timeout: 1s
    request_timeout: 2s
    fanout_timeout: 500ms
    upstreams:
{}",
        upstreams_yaml(members)
    )
}

/// A fresh session id whose ring owner is (or is not) `victim`, asked from the running proxy.
async fn session_id(admin: &mut Client, on_victim: bool) -> String {
    for _ in 0..1000 {
        let id = uuid::Uuid::new_v4().to_string();
        if (admin_route(admin, "fleet", &id).await == "victim") == on_victim {
            return id;
        }
    }
    panic!("no session id found");
}

fn outcome_of(resp: &Value) -> Result<(u16, String), String> {
    match resp.get("error") {
        None => Ok((0, "ok".to_owned())),
        Some(err) => Err(err["code"].to_string() + " " + &err["message"].to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonrpc_upstream_sigkilled_under_load() {
    within(60, async {
        let mut victim = ChildUpstream::start(Speaks::JsonRpc, "victim").await;
        let fleet = CliFleet::start(2).await;
        let mut members = fleet.members();
        members.push(victim.member());
        let dir = ConfigDir::new(&jsonrpc_config(&members));
        let mut proxy = Binary::spawn(dir.path());
        let cli = proxy.listener_addr("cli").await;
        let admin = proxy.listener_addr("admin").await;
        let mut admin_client = Client::h1(admin).await;

        let log: Log = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let on_victim = session_id(&mut admin_client, true).await;
            let elsewhere = session_id(&mut admin_client, false).await;
            let mut client = RpcClient::connect(cli).await;
            for id in [&on_victim, &elsewhere] {
                let made = client
                    .result("session.create", session_params(id, json!({})))
                    .await;
                assert_eq!(made["sessionId"], id.as_str());
            }
            let (log, stop, done) = (log.clone(), stop.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..50_000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let (id, victim_key) = match i % 2 {
                        0 => (&on_victim, true),
                        _ => (&elsewhere, false),
                    };
                    let started = Instant::now();
                    let resp = client
                        .call("session.getMessages", session_params(id, json!({})))
                        .await;
                    log.lock().expect("lock").push(Outcome {
                        victim_key,
                        started,
                        took: started.elapsed(),
                        result: outcome_of(&resp),
                    });
                    client.forget_kept();
                    done.fetch_add(1, Ordering::SeqCst);
                }
            }));
        }
        progress(&done, 200).await;
        let new_on_victim = session_id(&mut admin_client, true).await;

        let killed = Instant::now();
        victim.sigkill().await;
        let victim_labels = [("pool", "fleet"), ("upstream", "victim")];
        poll_until("victim marked down", 10, || async {
            sample(admin, "sessiongate_upstream_healthy", &victim_labels).await == 0.0
        })
        .await;
        let down = Instant::now();
        progress(&done, 400).await;

        victim.restart().await;
        eventually("the restarted victim is probed", || victim.probes() >= 2).await;
        progress(&done, 400).await;
        // A new session whose ring owner is the down victim is placed on another node.
        let mut late = RpcClient::connect(cli).await;
        let made = late
            .result("session.create", session_params(&new_on_victim, json!({})))
            .await;
        assert_eq!(made["sessionId"], new_on_victim.as_str());
        assert_eq!(
            fleet.holders(&new_on_victim).len(),
            1,
            "placed on a mock CLI"
        );
        stop.store(true, Ordering::SeqCst);
        for task in tasks {
            task.await.expect("load task");
        }

        let mut link_failures = 0.0;
        for kind in ["connect", "dropped"] {
            let labels = [("pool", "fleet"), ("upstream", "victim"), ("kind", kind)];
            link_failures +=
                sample(admin, "sessiongate_upstream_link_failures_total", &labels).await;
        }
        assert!(link_failures >= 1.0, "the dropped links were not counted");
        let log = log.lock().expect("lock");
        let others: Vec<_> = log.iter().filter(|o| !o.victim_key).collect();
        let bad: Vec<_> = others
            .iter()
            .filter(|o| o.result.is_err())
            .map(|o| &o.result)
            .collect();
        assert!(bad.is_empty(), "other sessions saw errors: {bad:?}");
        let mut errors = 0;
        let mut slowest_error = Duration::ZERO;
        for o in log.iter().filter(|o| o.victim_key && o.started >= killed) {
            if let Err(e) = &o.result {
                assert!(e.starts_with("-32001 "), "victim session error: {e}");
                errors += 1;
                slowest_error = slowest_error.max(o.took);
            }
        }
        assert!(
            slowest_error <= REQUEST_TIMEOUT + Duration::from_secs(1),
            "an error took {slowest_error:?}"
        );
        // Pinned to a down node: every request after the down mark is refused by the proxy.
        let settled = down + Duration::from_millis(200);
        let after: Vec<_> = log
            .iter()
            .filter(|o| o.victim_key && o.started >= settled)
            .collect();
        assert!(!after.is_empty());
        assert!(
            after.iter().all(|o| o.result.is_err()),
            "a session pinned to the down victim was answered"
        );
        assert_eq!(
            victim.hits(),
            0,
            "requests reached the restarted, down victim"
        );
        eprintln!(
            "JSON-RPC SIGKILL: {} requests ({} on other sessions, 0 errors); {errors} -32001 on \
             the victim's sessions, slowest {slowest_error:?}; marked down {:?} after the kill",
            log.len(),
            others.len(),
            down - killed
        );
    })
    .await
}

/// Wait until the load has finished `by` more requests.
async fn progress(done: &Arc<AtomicU64>, by: u64) {
    let target = done.load(Ordering::SeqCst) + by;
    poll_until("load made progress", 20, || {
        let done = done.clone();
        async move { done.load(Ordering::SeqCst) >= target }
    })
    .await
}
