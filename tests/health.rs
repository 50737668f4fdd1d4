//! Upstream health and operations (issue 4 §1-§5, §7): rise/fall thresholds, flapping and
//! passive ejection over virtual time with a scripted probe; then, on real sockets, routing that
//! follows health with traffic running, passive ejection on live traffic, drain (HTTP keys and
//! pinned JSON-RPC sessions), the reload dry run against what a reload then does, and the
//! prompt 503 when every node is down.

mod support;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use prometheus::Registry;
use serde_json::json;
use sessiongate::config::{Config, HealthConfig, PassiveConfig};
use sessiongate::metrics::Metrics;
use sessiongate::ring::Ring;
use sessiongate::snapshot::Snapshot;
use sessiongate::upstream::health::HealthCheck;
use sessiongate::upstream::{prober, Upstream, UpstreamState};
use support::client::Client;
use support::jsonrpc::{id_on, ids_per_upstream, jsonrpc_config, session_params, CliFleet};
use support::jsonrpc::{RpcClient, RpcYaml};
use support::nodes::{HttpNode, Resetter};
use support::upstream::Fleet;
use support::{
    admin_json, admin_post, admin_route, admin_upstream, metric_value, poll_until, web_config,
    within, Proxy,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------------------------------------
// Thresholds over virtual time: `run_prober` with a probe whose answers the test scripts.

/// A probe answering from a script (`true` = healthy; healthy once the script runs out). Each
/// call reports its (virtual) time and whether the upstream was available when it was made,
/// which is the state every earlier probe left: the prober records a probe before making the
/// next one, so this is exact whatever the scheduling.
struct Scripted {
    script: Mutex<VecDeque<bool>>,
    state: Arc<UpstreamState>,
    calls: mpsc::UnboundedSender<Step>,
}

/// One probe call: when, and the availability before it.
#[derive(Debug, Clone, Copy)]
struct Step {
    at: Instant,
    available: bool,
}

impl HealthCheck for Scripted {
    fn probe(&self, _timeout: Duration) -> BoxFuture<'_, Result<(), String>> {
        let ok = self
            .script
            .lock()
            .expect("lock")
            .pop_front()
            .unwrap_or(true);
        let _ = self.calls.send(Step {
            at: Instant::now(),
            available: self.state.is_available(),
        });
        Box::pin(async move {
            if ok {
                Ok(())
            } else {
                Err("scripted failure".to_owned())
            }
        })
    }
}

/// One upstream `a` of pool `p`, its prober running on the scripted probe.
struct Prober {
    up: Arc<Upstream>,
    health: HealthConfig,
    passive: Option<PassiveConfig>,
    metrics: Metrics,
    calls: mpsc::UnboundedReceiver<Step>,
    last: Option<Instant>,
    _stop: tokio_util::sync::DropGuard,
}

impl Prober {
    /// `pool_yaml`: the pool's `health:` / `passive:` blocks (4-space indent).
    fn start(pool_yaml: &str, script: impl IntoIterator<Item = bool>) -> Prober {
        let yaml = format!(
            "admin:\n  listen: 127.0.0.1:0\npools:\n  p:\n{pool_yaml}    upstreams:\n      - {{ name: a, addr: \"127.0.0.1:9\" }}\n"
        );
        let source = Path::new("health-test.yaml");
        let config = Config::parse(&yaml, source).expect("valid config");
        let metrics = Metrics::new(Registry::new()).expect("metrics");
        let snapshot = Snapshot::build(
            config,
            source,
            None,
            &metrics,
            &sessiongate::store::Store::local(),
        )
        .expect("snapshot");
        let pool = snapshot.pool("p").expect("pool p");
        let up = pool.upstreams[0].clone();
        let (tx, calls) = mpsc::unbounded_channel();
        let check = Scripted {
            script: Mutex::new(script.into_iter().collect()),
            state: up.state.clone(),
            calls: tx,
        };
        let stop = CancellationToken::new();
        tokio::spawn(prober::run_prober(
            up.clone(),
            Box::new(check),
            pool.config.health.clone(),
            metrics.clone(),
            stop.clone(),
        ));
        Prober {
            up,
            health: pool.config.health.clone(),
            passive: pool.config.passive.clone(),
            metrics,
            calls,
            last: None,
            _stop: stop.drop_guard(),
        }
    }

    /// Wait (in virtual time) for the next probe call, checking the jittered spacing of probes
    /// (interval ±10%).
    async fn step(&mut self) -> Step {
        let step = self.calls.recv().await.expect("prober running");
        let interval = self.health.interval;
        if let Some(last) = self.last {
            let gap = step.at - last;
            assert!(
                gap >= interval.mul_f64(0.9) && gap <= interval.mul_f64(1.1),
                "a probe came {gap:?} after the previous one"
            );
        }
        self.last = Some(step.at);
        step
    }

    fn transitions(&self, to: &str) -> u64 {
        self.metrics
            .upstream_health_transitions_total
            .with_label_values(&["p", "a", to])
            .get()
    }
}

const ONE_SECOND_PROBES: &str = "    health:
      interval: 1s
      timeout: 500ms
      rise: 2
      fall: 3
";

#[tokio::test(start_paused = true)]
async fn fall_failures_take_an_upstream_down_and_rise_successes_bring_it_back() {
    // Probe 1 passes, 2-5 fail, 6-7 pass, later ones pass.
    let script = [true, false, false, false, false, true, true];
    let started = Instant::now();
    let mut p = Prober::start(ONE_SECOND_PROBES, script);
    let first = p.step().await;
    assert!(
        first.at - started <= Duration::from_secs(1),
        "first probe within one interval"
    );
    assert!(first.available, "initially healthy");
    let first_failure = p.step().await;
    assert!(first_failure.available, "probe 1 passed");
    assert!(p.step().await.available, "one failure is below fall=3");
    let third_failure = p.step().await;
    assert!(third_failure.available, "two failures are below fall=3");
    let after = p.step().await;
    assert!(!after.available, "the third failure took it down");
    assert!(!p.up.state.accepts_new_work());
    // Down (fall - 1) intervals (±10% jitter) after the first failure, not before.
    let took = third_failure.at - first_failure.at;
    assert!(
        took >= Duration::from_millis(1800) && took <= Duration::from_millis(2200),
        "{took:?}"
    );
    let last = p.up.state.last_probe().expect("last probe");
    assert!(!last.ok && last.error.as_deref() == Some("scripted failure"));
    assert_eq!(p.transitions("down"), 1);
    let healthy = p.metrics.upstream_healthy.with_label_values(&["p", "a"]);
    assert_eq!(healthy.get(), 0);

    assert!(!p.step().await.available, "after probe 5, a failure");
    assert!(!p.step().await.available, "one success is below rise=2");
    assert!(p.step().await.available, "the second success brought it up");
    assert_eq!(p.transitions("up"), 1);
    assert_eq!(p.transitions("down"), 1);
    assert_eq!(healthy.get(), 1);
    let probed = p
        .metrics
        .upstream_probe_duration
        .with_label_values(&["p", "a"])
        .get_sample_count();
    assert!(probed >= 7, "{probed} probe durations recorded");
}

#[tokio::test(start_paused = true)]
async fn a_flapping_upstream_never_flips() {
    let pool =
        "    health:\n      interval: 1s\n      timeout: 500ms\n      rise: 2\n      fall: 2\n";
    let mut p = Prober::start(pool, (0..40).map(|i| i % 2 == 1));
    for i in 0..41 {
        assert!(p.step().await.available, "before probe {i}");
    }
    assert_eq!((p.transitions("down"), p.transitions("up")), (0, 0));

    // The same from an initially unhealthy state: it never comes up.
    let pool = format!("{pool}      initial: unhealthy\n");
    let mut p = Prober::start(&pool, (0..40).map(|i| i % 2 == 0));
    for i in 0..41 {
        assert!(!p.step().await.available, "before probe {i}");
    }
    assert_eq!((p.transitions("down"), p.transitions("up")), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn passive_ejection_lasts_eject_for_then_needs_rise_passing_probes() {
    let pool = format!(
        "{ONE_SECOND_PROBES}    passive:\n      consecutive_failures: 3\n      eject_for: 10s\n"
    );
    // Every probe passes: only live traffic takes it out.
    let mut p = Prober::start(&pool, []);
    p.step().await;
    p.step().await;
    let passive = p.passive.clone().expect("passive config");
    let fail = |p: &Prober| prober::passive_failure(&p.metrics, &p.up, Some(&passive), "reset");
    let ejections = p
        .metrics
        .upstream_ejections_total
        .with_label_values(&["p", "a"]);

    // A success in between ends the streak.
    fail(&p);
    fail(&p);
    p.up.state.record_passive_success();
    fail(&p);
    fail(&p);
    assert!(
        p.up.state.is_available(),
        "two failures in a row are below 3"
    );
    let ejected_at = Instant::now();
    fail(&p);
    assert!(!p.up.state.is_available() && p.up.state.is_ejected());
    assert_eq!(ejections.get(), 1);
    assert_eq!(p.transitions("down"), 1);
    fail(&p);
    assert_eq!(
        ejections.get(),
        1,
        "one ejection, however many more failures"
    );

    // Passing probes during the ejection do not count; after it, rise=2 of them bring it back.
    let mut previous = p.step().await;
    assert!(!previous.available);
    let mut flipped_by = None;
    for _ in 0..30 {
        let step = p.step().await;
        if step.available {
            flipped_by = Some(previous.at);
            break;
        }
        previous = step;
    }
    let flipped_by = flipped_by.expect("back within 30 probes");
    // The second probe at or after the end of the ejection brought it back.
    let end = ejected_at + passive.eject_for;
    assert!(
        flipped_by >= end + Duration::from_millis(900)
            && flipped_by <= end + Duration::from_millis(2200),
        "back {:?} after the ejection",
        flipped_by - ejected_at
    );
    assert_eq!(p.transitions("up"), 1);
    assert_eq!(ejections.get(), 1);
}

// ---------------------------------------------------------------------------------------------
// Routing follows health, on real sockets.

const HTTP_HEALTH: &str = "    health:
      probe: http
      interval: 100ms
      timeout: 100ms
      fall: 2
      rise: 2
    passive:
      consecutive_failures: 0
";

/// The upstream that answers each key (every answer must be 200).
async fn answering(client: &mut Client, keys: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let reply = client.get("/", &[("x-session-id", key)]).await;
        assert_eq!(reply.status, 200, "key {key}: {}", reply.body);
        out.push(reply.upstream().to_owned());
    }
    out
}

/// Keys whose upstream changed between `before` and `after`.
fn moved(keys: &[String], before: &[String], after: &[String]) -> Vec<(String, String, String)> {
    keys.iter()
        .zip(before.iter().zip(after))
        .filter(|(_, (b, a))| b != a)
        .map(|(k, (b, a))| (k.clone(), b.clone(), a.clone()))
        .collect()
}

/// One request of the background traffic: when it started and ended, its status, who
/// answered. It was routed in between.
type Sample = (Instant, Instant, u16, Option<String>);

/// Requests on a loop (keys `bg-0..300`) until `stop`, on one keep-alive connection.
fn traffic(
    addr: std::net::SocketAddr,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Vec<Sample>> {
    tokio::spawn(async move {
        let mut samples = Vec::new();
        let mut client = Client::h1(addr).await;
        for i in 0..200_000 {
            if stop.is_cancelled() {
                break;
            }
            let key = format!("bg-{}", i % 300);
            let at = Instant::now();
            match client.try_get("/", &[("x-session-id", &key)]).await {
                Ok(reply) => {
                    let up = reply
                        .headers
                        .get("x-upstream")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    samples.push((at, Instant::now(), reply.status.as_u16(), up));
                }
                Err(_) => client = Client::h1(addr).await,
            }
        }
        samples
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_follows_health_and_drain_and_only_the_affected_keys_move() {
    let nodes = [
        HttpNode::start("a").await,
        HttpNode::start("b").await,
        HttpNode::start("c").await,
        HttpNode::start("d").await,
    ];
    let members: Vec<_> = nodes.iter().map(HttpNode::member).collect();
    let proxy = Proxy::start_yaml(&web_config(&members, "", HTTP_HEALTH)).await;
    let admin = proxy.admin();
    let keys: Vec<String> = (0..300).map(|i| format!("key-{i}")).collect();
    let names = ["a", "b", "c", "d"];
    let ring = Ring::build(names.iter().map(|n| (*n, 1)), 160);
    let dead = &nodes[1];

    let stop = CancellationToken::new();
    let background = traffic(proxy.addr("web"), stop.clone());
    let mut client = proxy.client("web").await;
    let before = answering(&mut client, &keys).await;
    for n in names {
        assert!(before.iter().any(|u| u == n), "{n} owns some keys");
    }

    // Kill b: once it is marked down, its keys go to the next node clockwise, no other moves.
    let killed_at = Instant::now();
    dead.kill().await;
    poll_until("b is marked down", 5, || async {
        admin_upstream(admin, "b").await["healthy"] == false
    })
    .await;
    let down_at = Instant::now();
    assert!(down_at - killed_at < Duration::from_secs(2));
    let entry = admin_upstream(admin, "b").await;
    assert_eq!(entry["accepts_new_work"], false);
    assert_eq!(entry["last_probe"]["ok"], false);
    assert!(entry["last_probe"]["error"]
        .as_str()
        .is_some_and(|e| !e.is_empty()));
    let failed_over = answering(&mut client, &keys).await;
    let changes = moved(&keys, &before, &failed_over);
    assert!(!changes.is_empty());
    for (key, from, to) in &changes {
        assert_eq!(from, "b", "only b's keys move ({key} went {from} -> {to})");
        let next = ring
            .candidates(key.as_bytes())
            .map(|i| names[i])
            .find(|n| *n != "b")
            .expect("a successor");
        assert_eq!(to, next, "{key} goes to the next node clockwise");
    }
    assert_eq!(changes.len(), before.iter().filter(|u| *u == "b").count());
    // Health follows the upstream's name across a reload.
    let weights =
        web_config(&members, "", HTTP_HEALTH).replace("{ name: a,", "{ name: a, weight: 1,");
    proxy.reload_with(&weights).await.expect("reload");
    assert_eq!(admin_upstream(admin, "b").await["healthy"], false);
    assert_eq!(answering(&mut client, &keys).await, failed_over);

    // Restart b on its port: once up again, its keys return.
    let restarted_at = Instant::now();
    dead.restart().await;
    poll_until("b is marked up", 5, || async {
        admin_upstream(admin, "b").await["healthy"] == true
    })
    .await;
    let hits = dead.hits();
    assert_eq!(answering(&mut client, &keys).await, before);
    assert!(dead.hits() > hits, "b serves its keys again");

    // Drain c: its keys go elsewhere, nothing new reaches it; undrain: they return.
    let (status, body) = admin_post(admin, "/admin/upstreams/c/drain", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["draining"], true);
    let drained_at = Instant::now();
    let drained_routes = answering(&mut client, &keys).await;
    assert!(
        drained_routes.iter().all(|u| u != "c"),
        "no key reaches a draining upstream"
    );
    let changes = moved(&keys, &before, &drained_routes);
    assert!(!changes.is_empty());
    assert!(
        changes.iter().all(|(_, from, _)| from == "c"),
        "{changes:?}"
    );
    assert_eq!(changes.len(), before.iter().filter(|u| *u == "c").count());

    let all = admin_json(admin, "/admin/upstreams").await;
    let list = all["upstreams"].as_array().expect("upstreams");
    assert_eq!(list.len(), 4);
    for (entry, node) in list.iter().zip(&nodes) {
        let name = node.name.as_str();
        assert_eq!(entry["pool"], "api");
        assert_eq!(entry["name"], name);
        assert_eq!(entry["addr"], node.addr.to_string());
        assert_eq!(entry["weight"], 1);
        assert_eq!(entry["healthy"], true, "{entry}");
        assert_eq!(entry["ejected"], false);
        assert_eq!(entry["draining"], name == "c");
        assert_eq!(entry["accepts_new_work"], name != "c");
        assert_eq!(entry["live_sessions"], 0);
        assert!(entry["open_connections"].as_i64().is_some_and(|n| n >= 0));
        assert_eq!(entry["last_probe"]["ok"], true, "{entry}");
        assert!(entry["last_probe"]["latency_ms"].as_f64().is_some());
        assert!(entry["last_probe"]["at"].is_string());
    }
    let metrics = proxy.metrics_text().await;
    let gauge =
        |name: &str, up: &str| metric_value(&metrics, name, &[("pool", "api"), ("upstream", up)]);
    assert_eq!(gauge("sessiongate_upstream_draining", "c"), Some(1.0));
    assert_eq!(gauge("sessiongate_upstream_draining", "a"), Some(0.0));

    let undrain_at = Instant::now();
    let (status, body) = admin_post(admin, "/admin/upstreams/c/undrain", "").await;
    assert_eq!((status.as_u16(), &body["draining"]), (200, &json!(false)));
    assert_eq!(answering(&mut client, &keys).await, before);

    stop.cancel();
    let samples = within(10, background).await.expect("traffic task");
    assert!(
        samples.len() > 100,
        "traffic ran: {} requests",
        samples.len()
    );
    // Every request made entirely between b being seen down and its restart was answered,
    // never by b.
    let while_down: Vec<_> = samples
        .iter()
        .filter(|(start, end, _, _)| *start > down_at && *end < restarted_at)
        .collect();
    assert!(!while_down.is_empty());
    for (_, _, status, up) in while_down {
        assert_eq!(*status, 200);
        assert_ne!(up.as_deref(), Some("b"));
    }
    // Nothing made entirely while c was drained reached it.
    let while_drained: Vec<_> = samples
        .iter()
        .filter(|(start, end, _, _)| *start > drained_at && *end < undrain_at)
        .collect();
    assert!(!while_drained.is_empty());
    for (_, _, status, up) in while_drained {
        assert_eq!(*status, 200);
        assert_ne!(up.as_deref(), Some("c"));
    }

    let metrics = proxy.metrics_text().await;
    let gauge =
        |name: &str, up: &str| metric_value(&metrics, name, &[("pool", "api"), ("upstream", up)]);
    assert_eq!(gauge("sessiongate_upstream_healthy", "b"), Some(1.0));
    assert_eq!(gauge("sessiongate_upstream_draining", "c"), Some(0.0));
    assert!(gauge("sessiongate_upstream_probe_duration_seconds_count", "a").unwrap_or(0.0) >= 2.0);
    let flips = |to: &str| {
        metric_value(
            &metrics,
            "sessiongate_upstream_health_transitions_total",
            &[("pool", "api"), ("upstream", "b"), ("to", to)],
        )
    };
    assert_eq!((flips("down"), flips("up")), (Some(1.0), Some(1.0)));
    // The others never flipped: their series exist from the start, at 0.
    for other in ["a", "c", "d"] {
        for to in ["up", "down"] {
            let flips = metric_value(
                &metrics,
                "sessiongate_upstream_health_transitions_total",
                &[("pool", "api"), ("upstream", other), ("to", to)],
            );
            assert_eq!(flips, Some(0.0), "{other} never flipped");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_traffic_failures_eject_an_upstream_until_eject_for_and_probes_pass() {
    let (a, b) = (HttpNode::start("a").await, HttpNode::start("b").await);
    let resetter = Resetter::start().await;
    let members = vec![a.member(), b.member(), ("r".to_owned(), resetter.addr())];
    // tcp probes pass on the resetter (it accepts); only live requests fail.
    let pool_extra = "    health:
      probe: tcp
      interval: 100ms
      timeout: 100ms
      fall: 2
      rise: 2
    passive:
      consecutive_failures: 3
      eject_for: 2s
";
    let proxy = Proxy::start_yaml(&web_config(&members, "", pool_extra)).await;
    let admin = proxy.admin();
    let pool = proxy.server.snapshot().pool("api").expect("pool").clone();
    let r_keys: Vec<String> = (0..)
        .map(|i| format!("key-{i}"))
        .filter(|k| pool.route(k.as_bytes()).is_some_and(|u| u.name() == "r"))
        .take(10)
        .collect();

    within(20, async {
        let mut client = proxy.client("web").await;
        let mut third = Instant::now();
        for (i, key) in r_keys[..3].iter().enumerate() {
            third = Instant::now();
            let reply = client.get("/", &[("x-session-id", key)]).await;
            assert_eq!(reply.status, 502, "{}", reply.body);
            assert_eq!(resetter.requests(), i as u64 + 1);
        }
        let entry = admin_upstream(admin, "r").await;
        assert_eq!(entry["ejected"], true, "{entry}");
        assert_eq!(entry["healthy"], true, "probes still pass");
        assert_eq!(entry["accepts_new_work"], false);
        // Ejected: its keys are served by the others and nothing reaches it.
        let mut served = Vec::new();
        for key in &r_keys {
            let reply = client.get("/", &[("x-session-id", key)]).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            served.push(reply.upstream().to_owned());
        }
        assert!(served.iter().all(|u| u == "a" || u == "b"), "{served:?}");
        assert_eq!(
            resetter.requests(),
            3,
            "no request reached the ejected upstream"
        );
        let metrics = proxy.metrics_text().await;
        let labels = [("pool", "api"), ("upstream", "r")];
        assert_eq!(
            metric_value(&metrics, "sessiongate_upstream_ejections_total", &labels),
            Some(1.0)
        );
        assert_eq!(
            metric_value(&metrics, "sessiongate_upstream_healthy", &labels),
            Some(0.0)
        );

        poll_until("r returns", 5, || async {
            admin_upstream(admin, "r").await["ejected"] == false
        })
        .await;
        assert!(
            third.elapsed() >= Duration::from_secs(2),
            "not before eject_for"
        );
        let reply = client.get("/", &[("x-session-id", &r_keys[0])]).await;
        assert_eq!(reply.status, 502, "its keys reach it again");
        assert_eq!(resetter.requests(), 4);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_cli_node_keeps_its_pinned_sessions_and_places_new_ones_elsewhere() {
    let fleet = CliFleet::start(3).await;
    let proxy = Proxy::start_yaml(&jsonrpc_config(&fleet.members(), RpcYaml::default())).await;
    let admin = proxy.admin();
    let pool = proxy.server.snapshot().pool("fleet").expect("pool").clone();
    let sessions = ids_per_upstream(&pool, 2);
    let prompt = |id: &str| session_params(id, json!({"prompt": "hi"}));

    within(20, async {
        let mut c = RpcClient::connect(proxy.addr("cli")).await;
        for (id, _) in &sessions {
            c.result("session.create", session_params(id, json!({})))
                .await;
        }
        let (status, _) = admin_post(admin, "/admin/upstreams/cli-0/drain", "").await;
        assert_eq!(status, 200);
        let entry = admin_upstream(admin, "cli-0").await;
        assert_eq!(entry["draining"], true);
        assert_eq!(entry["healthy"], true);
        assert_eq!(entry["live_sessions"], 2);
        assert!(
            entry["open_connections"].as_i64().is_some_and(|n| n >= 1),
            "{entry}"
        );

        // Pinned sessions on the draining node keep working.
        for (id, _) in &sessions {
            let result = c.result("session.send", prompt(id)).await;
            assert!(result["messageId"].is_string());
        }
        // New sessions whose ring owner is the draining node go elsewhere.
        let mut admin_http = Client::h1(admin).await;
        for _ in 0..3 {
            let id = owned_by(&pool, "cli-0");
            c.result("session.create", session_params(&id, json!({})))
                .await;
            let placed = admin_route(&mut admin_http, "fleet", &id).await;
            assert_ne!(placed, "cli-0");
            assert_eq!(fleet.holders(&id), [placed]);
        }
        for _ in 0..10 {
            let result = c.result("session.create", json!({})).await;
            let id = result["sessionId"].as_str().expect("id");
            assert!(!fleet.get("cli-0").has_session(id));
        }
        assert_eq!(fleet.get("cli-0").session_ids().len(), 2);

        // Undrained, it takes new sessions again.
        admin_post(admin, "/admin/upstreams/cli-0/undrain", "").await;
        let id = id_on(&pool, "cli-0");
        c.result("session.create", session_params(&id, json!({})))
            .await;
        assert_eq!(fleet.holders(&id), ["cli-0"]);
    })
    .await;
}

/// A fresh session id whose ring owner (ignoring health and drain) is `upstream`.
fn owned_by(pool: &sessiongate::snapshot::Pool, upstream: &str) -> String {
    for _ in 0..100_000 {
        let id = uuid::Uuid::new_v4().to_string();
        if pool
            .owner(id.as_bytes())
            .is_some_and(|u| u.name() == upstream)
        {
            return id;
        }
    }
    panic!("no id owned by {upstream}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dry_run_predicts_the_moved_share_of_the_reload_that_follows() {
    let fleet = Fleet::start(&["a", "b", "c", "d"]).await;
    let three = web_config(&fleet.members[..3], "", "");
    let four = web_config(&fleet.members, "", "");
    let proxy = Proxy::start_yaml(&three).await;
    let admin = proxy.admin();
    let keys: Vec<String> = (0..20_000).map(|i| format!("user-{i}")).collect();
    let routes = |proxy: &Proxy| -> Vec<String> {
        let snapshot = proxy.server.snapshot();
        let pool = snapshot.pool("api").expect("pool");
        keys.iter()
            .map(|k| pool.route(k.as_bytes()).expect("route").name().to_owned())
            .collect()
    };
    let before = routes(&proxy);

    let (status, plan) = admin_post(admin, "/admin/reload?dry_run=true", &four).await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["valid"], true);
    let pool = &plan["pools"][0];
    assert_eq!(pool["pool"], "api");
    assert_eq!(pool["added"], json!(["d"]));
    assert_eq!(pool["removed"], json!([]));
    let predicted = pool["moved_share"].as_f64().expect("moved_share");
    let gains: f64 = pool["per_upstream"]
        .as_array()
        .expect("per_upstream")
        .iter()
        .filter(|u| u["upstream"] == "d")
        .map(|u| u["gains"].as_f64().expect("gains"))
        .sum();
    assert!((gains - predicted).abs() < 1e-9, "d gains what moves");
    // Nothing was applied.
    assert_eq!(proxy.server.snapshot().version, 1);
    assert_eq!(routes(&proxy), before);

    let report = proxy.reload_with(&four).await.expect("reload");
    assert!((report.pools[0].moved_share - predicted).abs() < 1e-9);
    let after = routes(&proxy);
    let changed = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    let actual = changed as f64 / keys.len() as f64;
    assert!(
        (actual - predicted).abs() <= 0.02,
        "predicted {predicted:.4}, moved {actual:.4}"
    );
    assert!(after.iter().zip(&before).all(|(a, b)| a == b || a == "d"));

    for bad in ["pools:\n  api:\n    upstreams: []\n", "listeners: [\n"] {
        let (status, plan) = admin_post(admin, "/admin/reload?dry_run=true", bad).await;
        assert_eq!(status, 400, "{plan}");
        assert_eq!(plan["valid"], false);
        assert!(
            plan["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{plan}"
        );
    }
    assert_eq!(proxy.server.snapshot().version, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonrpc_probes_ping_with_the_nodes_token_and_follow_a_restart() {
    const TOKEN: &str = "probe-s3cret";
    // Only this test reads this variable.
    std::env::set_var("SG_HEALTH_PROBE_TOKEN", TOKEN);
    let fleet = CliFleet::start_with_token(2, Some(TOKEN)).await;
    let probes = "    health:
      probe: jsonrpc
      interval: 100ms
      timeout: 100ms
      fall: 1
      rise: 1
";
    let with_token = format!("{probes}    token_env: SG_HEALTH_PROBE_TOKEN\n");
    let extra = RpcYaml {
        pool: &with_token,
        ..Default::default()
    };
    let proxy = Proxy::start_yaml(&jsonrpc_config(&fleet.members(), extra)).await;
    let admin = proxy.admin();
    // Without the token the same nodes fail the probe.
    let extra = RpcYaml {
        pool: probes,
        ..Default::default()
    };
    let tokenless = Proxy::start_yaml(&jsonrpc_config(&fleet.members(), extra)).await;

    let probed_ok = |admin, name: &'static str| async move {
        admin_upstream(admin, name).await["last_probe"]["ok"] == true
    };
    poll_until("cli-0 passes a probe", 5, || probed_ok(admin, "cli-0")).await;
    poll_until("cli-1 passes a probe", 5, || probed_ok(admin, "cli-1")).await;
    assert!(
        fleet.get("cli-0").requests_served() >= 2,
        "connect and ping"
    );
    poll_until("the token-less proxy sees cli-0 down", 5, || async {
        admin_upstream(tokenless.admin(), "cli-0").await["healthy"] == false
    })
    .await;
    let entry = admin_upstream(tokenless.admin(), "cli-0").await;
    let error = entry["last_probe"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("AUTHENTICATION"), "{entry}");
    drop(tokenless);

    // Killed, it goes down; revived, the probe reconnects and it comes back.
    fleet.get("cli-0").kill();
    poll_until("cli-0 is down", 5, || async {
        admin_upstream(admin, "cli-0").await["healthy"] == false
    })
    .await;
    assert_eq!(admin_upstream(admin, "cli-1").await["healthy"], true);
    fleet.get("cli-0").revive().await.expect("revive");
    poll_until("cli-0 is up again", 5, || async {
        admin_upstream(admin, "cli-0").await["healthy"] == true
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_down_is_answered_503_at_once() {
    let nodes = [HttpNode::start("a").await, HttpNode::start("b").await];
    let members: Vec<_> = nodes.iter().map(HttpNode::member).collect();
    let health = "    health:
      probe: http
      interval: 100ms
      timeout: 100ms
      fall: 1
      rise: 1
";
    let proxy = Proxy::start_yaml(&web_config(&members, "", health)).await;
    let admin = proxy.admin();
    let mut client = proxy.client("web").await;
    let reply = client.get("/", &[("x-session-id", "k")]).await;
    assert_eq!(reply.status, 200);
    for node in &nodes {
        node.kill().await;
    }
    poll_until("every upstream is marked down", 5, || async {
        let all = admin_json(admin, "/admin/upstreams").await;
        all["upstreams"]
            .as_array()
            .is_some_and(|l| l.iter().all(|u| u["healthy"] == false))
    })
    .await;
    let started = Instant::now();
    for key in ["k", "other", "third"] {
        let reply = client.get("/", &[("x-session-id", key)]).await;
        assert_eq!(reply.status, 503, "{}", reply.body);
        assert!(
            reply.body.contains("no upstream available"),
            "{}",
            reply.body
        );
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    let ready = support::client::get(admin, "/readyz", &[]).await;
    assert_eq!(ready.status, 503);
}
