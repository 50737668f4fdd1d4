//! Upstream discovery (`discover:`) against a real DNS server on loopback whose records the
//! tests change: SRV discovery of a mock CLI fleet under traffic (a node joins and only its keys
//! move, a node leaves and drains, a pod's address changes and nothing moves on the ring),
//! reloads that keep the discovered set, failed lookups that keep the last good set (counted,
//! logged once per streak, on the real binary), plain A records, and config validation.

mod support;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use serde_json::json;
use sessiongate::config::{Config, ConfigError};
use sessiongate::mockcli::{MockCli, MockCliOptions};
use sessiongate::snapshot::Pool;
use support::binary::Binary;
use support::dns::DnsServer;
use support::jsonrpc::{create, id_on, prompt, send, CliFleet, RpcClient};
use support::{admin_json, metric_value, poll_until, within, ConfigDir, Proxy};
use tokio_util::sync::CancellationToken;

const SRV: &str = "_rpc._tcp.cli.test";
const LOCAL: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// A JSON-RPC listener `cli` in front of pool `fleet`, discovered by `discover` (a flow map's
/// fields), looked up every 200ms.
fn discovered_config(discover: &str, pool_extra: &str) -> String {
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
    fanout_timeout: 500ms
{pool_extra}    discover: {{ {discover}, every: 200ms }}
"
    )
}

fn srv_config(dns: &DnsServer, pool_extra: &str) -> String {
    discovered_config(
        &format!("dns_srv: {SRV}, resolver: \"{}\"", dns.addr()),
        pool_extra,
    )
}

/// SRV records for `nodes` of `fleet` (`cli-N.cli.test` at each node's port) and their A records.
fn publish(dns: &DnsServer, fleet: &CliFleet, nodes: &[&str]) {
    let targets: Vec<(String, u16)> = nodes
        .iter()
        .map(|n| (format!("{n}.cli.test"), fleet.get(n).addr().port()))
        .collect();
    for (host, _) in &targets {
        dns.set_a(host, &[LOCAL]);
    }
    let refs: Vec<(&str, u16)> = targets.iter().map(|(h, p)| (h.as_str(), *p)).collect();
    dns.set_srv(SRV, &refs);
}

fn pool(proxy: &Proxy) -> Arc<Pool> {
    proxy.server.snapshot().pool("fleet").expect("pool").clone()
}

/// `(name, addr)` of the pool's upstreams now, sorted.
fn upstreams(proxy: &Proxy) -> Vec<(String, String)> {
    let mut list: Vec<(String, String)> = pool(proxy)
        .upstreams
        .iter()
        .map(|u| (u.name().to_owned(), u.addr().to_owned()))
        .collect();
    list.sort();
    list
}

async fn wait_upstreams(proxy: &Proxy, what: &str, cond: impl Fn(&[(String, String)]) -> bool) {
    poll_until(what, 10, || {
        let now = upstreams(proxy);
        let ok = cond(&now);
        async move { ok }
    })
    .await;
}

/// Where each of `keys` goes now (ring owner among upstreams that take work).
fn owners(pool: &Pool, keys: &[String]) -> HashMap<String, String> {
    keys.iter()
        .map(|k| {
            let up = pool.route(k.as_bytes()).expect("a node takes work");
            (k.clone(), up.name().to_owned())
        })
        .collect()
}

fn lookups(text: &str, result: &str) -> f64 {
    metric_value(
        text,
        "sessiongate_discovery_lookups_total",
        &[("pool", "fleet"), ("result", result)],
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_discovery_follows_the_fleet_under_traffic() {
    let fleet = CliFleet::start(4).await;
    let dns = DnsServer::start().await;
    publish(&dns, &fleet, &["cli-0", "cli-1", "cli-2"]);
    let proxy = Proxy::start_yaml(&srv_config(&dns, "    drain_timeout: 30s\n")).await;

    within(60, async {
        // (1) Three nodes, named by their SRV target host, at the SRV port.
        wait_upstreams(&proxy, "3 discovered nodes", |u| u.len() == 3).await;
        let expected: Vec<(String, String)> = ["cli-0", "cli-1", "cli-2"]
            .iter()
            .map(|n| (format!("{n}.cli.test"), fleet.get(n).addr().to_string()))
            .collect();
        assert_eq!(upstreams(&proxy), expected);
        let listed = admin_json(proxy.admin(), "/admin/upstreams").await;
        assert_eq!(
            listed["upstreams"][0]["discovered_from"],
            format!("dns_srv {SRV}")
        );
        assert_eq!(listed["discovered"]["fleet"], format!("dns_srv {SRV}"));
        let text = proxy.metrics_text().await;
        let gauge = metric_value(
            &text,
            "sessiongate_discovery_upstreams",
            &[("pool", "fleet")],
        );
        assert_eq!(gauge, Some(3.0));
        assert!(lookups(&text, "changed") >= 1.0);

        // Traffic: two sessions on each node, prompted throughout.
        let before = pool(&proxy);
        let mut sessions: Vec<(String, String)> = Vec::new();
        for node in ["cli-0", "cli-1", "cli-2"] {
            for _ in 0..2 {
                sessions.push((id_on(&before, &format!("{node}.cli.test")), node.to_owned()));
            }
        }
        let mut c = RpcClient::connect(proxy.addr("cli")).await;
        assert_eq!(c.result("connect", json!({})).await["ok"], true);
        for (id, node) in &sessions {
            create(&mut c, id, json!({})).await;
            assert_eq!(
                fleet.holders(id),
                std::slice::from_ref(node),
                "{id} created on {node}"
            );
        }
        let keys: Vec<String> = (0..2000).map(|i| format!("key-{i}")).collect();
        let owner_before = owners(&before, &keys);
        let (stop, traffic) = traffic(proxy.addr("cli"), sessions.iter().map(|s| s.0.clone()));

        // (2) A fourth node joins: keys move only to it.
        let (changed_at, queries) = (std::time::Instant::now(), dns.queries());
        publish(&dns, &fleet, &["cli-0", "cli-1", "cli-2", "cli-3"]);
        wait_upstreams(&proxy, "cli-3 joins", |u| u.len() == 4).await;
        eprintln!(
            "cli-3 joined {:?} after its records were published ({} DNS queries meanwhile)",
            changed_at.elapsed(),
            dns.queries() - queries
        );
        let owner_after = owners(&pool(&proxy), &keys);
        let mut moved = 0;
        for k in &keys {
            if owner_after[k] != owner_before[k] {
                assert_eq!(
                    owner_after[k], "cli-3.cli.test",
                    "{k} moved between old nodes"
                );
                moved += 1;
            }
        }
        assert!(
            (200..=800).contains(&moved),
            "{moved} of 2000 keys moved to the 4th node"
        );
        // The status page lists the change among the reloads.
        let page = support::client::get(proxy.admin(), "/", &[]).await.body;
        assert!(
            page.contains("discovery") && page.contains("+[cli-3.cli.test]"),
            "{page}"
        );

        // (3) cli-1 leaves: it drains; its pinned sessions keep answering from it.
        publish(&dns, &fleet, &["cli-0", "cli-2", "cli-3"]);
        wait_upstreams(&proxy, "cli-1 leaves", |u| {
            u.len() == 3 && !u.iter().any(|(n, _)| n == "cli-1.cli.test")
        })
        .await;
        let served = fleet.get("cli-1").requests_served();
        for (id, node) in &sessions {
            send(&mut c, id).await;
            assert_eq!(
                fleet.holders(id),
                std::slice::from_ref(node),
                "{id} stayed on {node}"
            );
        }
        assert!(fleet.get("cli-1").requests_served() > served);
        let now = pool(&proxy);
        for k in &keys {
            assert_ne!(now.route(k.as_bytes()).unwrap().name(), "cli-1.cli.test");
        }

        // (5) cli-2's pod moves: same name, new address (another IP, another port).
        let stop_moved = CancellationToken::new();
        let opts = MockCliOptions {
            name: "cli-2-moved".into(),
            ..MockCliOptions::default()
        };
        let moved_node = MockCli::start("127.0.0.2:0".parse().unwrap(), opts, stop_moved.clone())
            .await
            .expect("a mock CLI on 127.0.0.2");
        let ring_before = owners(&pool(&proxy), &keys);
        dns.set_a("cli-2.cli.test", &[Ipv4Addr::new(127, 0, 0, 2)]);
        dns.set_srv(
            SRV,
            &[
                ("cli-0.cli.test", fleet.get("cli-0").addr().port()),
                ("cli-2.cli.test", moved_node.addr().port()),
                ("cli-3.cli.test", fleet.get("cli-3").addr().port()),
            ],
        );
        let new_addr = moved_node.addr().to_string();
        wait_upstreams(&proxy, "cli-2's new address", |u| {
            u.iter()
                .any(|(n, a)| n == "cli-2.cli.test" && *a == new_addr)
        })
        .await;
        assert_eq!(owners(&pool(&proxy), &keys), ring_before, "nothing moved");
        // New links to cli-2 go to the new address (a link already open to the old one stays
        // until it closes, as after a reload that changes an address; a moved pod's is gone).
        let id = id_on(&pool(&proxy), "cli-2.cli.test");
        let mut fresh = RpcClient::connect(proxy.addr("cli")).await;
        assert_eq!(fresh.result("connect", json!({})).await["ok"], true);
        create(&mut fresh, &id, json!({})).await;
        assert!(
            moved_node.has_session(&id),
            "{id} created at cli-2's new address"
        );

        stop.cancel();
        let (sent, failures) = traffic.await.expect("traffic");
        assert!(sent > 0);
        assert_eq!(
            failures,
            Vec::<String>::new(),
            "failed prompts under traffic"
        );
        stop_moved.cancel();
    })
    .await;
}

/// Prompt `sessions` round robin on one connection until `stop`: (prompts sent, failures).
fn traffic(
    addr: SocketAddr,
    sessions: impl Iterator<Item = String>,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<(usize, Vec<String>)>,
) {
    let sessions: Vec<String> = sessions.collect();
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move {
        let mut c = RpcClient::connect(addr).await;
        assert_eq!(c.result("connect", json!({})).await["ok"], true);
        let (mut sent, mut failures) = (0, Vec::new());
        for id in sessions.iter().cycle() {
            if token.is_cancelled() {
                break;
            }
            let resp = c
                .call(
                    "session.send",
                    json!({ "sessionId": id, "prompt": "under traffic" }),
                )
                .await;
            if resp.get("error").is_some() {
                failures.push(format!("{id}: {resp}"));
            }
            sent += 1;
        }
        (sent, failures)
    });
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_discovered_set_and_a_new_target_is_looked_up() {
    let fleet = CliFleet::start(3).await;
    let dns = DnsServer::start().await;
    publish(&dns, &fleet, &["cli-0", "cli-1"]);
    let proxy = Proxy::start_yaml(&srv_config(&dns, "")).await;
    within(30, async {
        wait_upstreams(&proxy, "2 discovered nodes", |u| u.len() == 2).await;
        let found = upstreams(&proxy);
        // Another setting changes; the file still lists no upstreams.
        let yaml = srv_config(&dns, "    drain_timeout: 5s\n");
        let predicted = proxy.server.dry_run(Some(&yaml));
        assert!(predicted.valid, "{:?}", predicted.error);
        let plan = &predicted.pools[0];
        assert!(plan.added.is_empty() && plan.removed.is_empty(), "{plan:?}");
        assert_eq!(plan.moved_share, 0.0);
        let report = proxy.reload_with(&yaml).await.expect("reload");
        let diff = &report.pools[0];
        assert!(diff.added.is_empty() && diff.removed.is_empty(), "{diff:?}");
        assert_eq!(diff.moved_share, 0.0);
        assert_eq!(
            diff.discovered_from.as_deref(),
            Some("dns_srv _rpc._tcp.cli.test")
        );
        assert_eq!(
            upstreams(&proxy),
            found,
            "the discovered set survives a reload"
        );

        // A new target: looked up at once.
        let other = "_rpc._tcp.other.test";
        dns.set_srv(
            other,
            &[("cli-2.cli.test", fleet.get("cli-2").addr().port())],
        );
        dns.set_a("cli-2.cli.test", &[LOCAL]);
        let yaml = discovered_config(
            &format!("dns_srv: {other}, resolver: \"{}\"", dns.addr()),
            "",
        );
        proxy.reload_with(&yaml).await.expect("reload");
        wait_upstreams(&proxy, "the new target's node", |u| {
            u.len() == 1 && u[0].0 == "cli-2.cli.test"
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_lookups_keep_the_last_good_set() {
    let fleet = CliFleet::start(2).await;
    let dns = DnsServer::start().await;
    publish(&dns, &fleet, &["cli-0", "cli-1"]);
    let config = ConfigDir::new(&srv_config(&dns, ""));
    let mut proxy = Binary::spawn(config.path());
    let admin = proxy.listener_addr("admin").await;
    let cli = proxy.listener_addr("cli").await;
    let metrics = || async move { support::client::get(admin, "/metrics", &[]).await.body };
    let gauge = |text: &str| {
        metric_value(
            text,
            "sessiongate_discovery_upstreams",
            &[("pool", "fleet")],
        )
    };
    within(60, async {
        proxy
            .wait_log("discovery: pool diff", |l| l["fields"]["version"] == 2)
            .await;
        let failed = "discovery: lookup failed; keeping the last good set until it answers";
        let recovered = "discovery: lookups answer again";

        // SERVFAIL: counted as errors, logged once for the streak, the two nodes kept.
        dns.servfail(true);
        let at = lookups(&metrics().await, "error");
        poll_until("3 failed lookups", 10, || async {
            lookups(&metrics().await, "error") >= at + 3.0
        })
        .await;
        assert_eq!(gauge(&metrics().await), Some(2.0));
        proxy.wait_log(failed, |_| true).await;
        assert_eq!(proxy.count_log(failed), 1, "one warning per failure streak");
        let mut c = RpcClient::connect(cli).await;
        assert_eq!(c.result("connect", json!({})).await["ok"], true);
        let created = c.result("session.create", json!({})).await;
        assert!(created["sessionId"].is_string(), "{created}");

        dns.servfail(false);
        proxy.wait_log(recovered, |_| true).await;

        // An empty answer (no ready pods): kept too, counted as empty.
        dns.set_srv(SRV, &[]);
        poll_until("an empty answer", 10, || async {
            lookups(&metrics().await, "empty") >= 2.0
        })
        .await;
        assert_eq!(gauge(&metrics().await), Some(2.0));
        proxy.wait_log(failed, |_| true).await;

        // The nameserver goes away: still the last good set.
        publish(&dns, &fleet, &["cli-0", "cli-1"]);
        proxy.wait_log(recovered, |_| true).await;
        dns.stop();
        let at = lookups(&metrics().await, "error");
        poll_until("lookups fail against a closed port", 10, || async {
            lookups(&metrics().await, "error") >= at + 2.0
        })
        .await;
        assert_eq!(gauge(&metrics().await), Some(2.0));
        let prompted = prompt(&mut c, created["sessionId"].as_str().unwrap()).await;
        assert!(!prompted.is_empty());
        proxy.wait_log(failed, |_| true).await;
        assert_eq!(
            proxy.count_log(failed),
            3,
            "one warning per streak: {failed}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_dns_discovers_addresses_at_one_port() {
    // Three nodes at the same port on three loopback addresses, like pods behind A records.
    let stop = CancellationToken::new();
    let start = |ip: &str, port: u16, name: &str| {
        let opts = MockCliOptions {
            name: name.into(),
            ..MockCliOptions::default()
        };
        let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        MockCli::start(addr, opts, stop.clone())
    };
    let first = start("127.0.0.1", 0, "a").await.expect("node a");
    let port = first.addr().port();
    let second = start("127.0.0.2", port, "b").await.expect("node b");
    let third = start("127.0.0.3", port, "c").await.expect("node c");
    let dns = DnsServer::start().await;
    dns.set_a("fleet.test", &[LOCAL, Ipv4Addr::new(127, 0, 0, 2)]);
    let yaml = discovered_config(
        &format!(
            "dns: fleet.test, port: {port}, resolver: \"{}\"",
            dns.addr()
        ),
        "",
    );
    let proxy = Proxy::start_yaml(&yaml).await;
    within(30, async {
        wait_upstreams(&proxy, "two addresses", |u| u.len() == 2).await;
        let names: Vec<String> = upstreams(&proxy).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, [first.addr().to_string(), second.addr().to_string()]);

        dns.set_a(
            "fleet.test",
            &[
                LOCAL,
                Ipv4Addr::new(127, 0, 0, 2),
                Ipv4Addr::new(127, 0, 0, 3),
            ],
        );
        wait_upstreams(&proxy, "a third address", |u| u.len() == 3).await;
        let id = id_on(&pool(&proxy), &third.addr().to_string());
        let mut c = RpcClient::connect(proxy.addr("cli")).await;
        assert_eq!(c.result("connect", json!({})).await["ok"], true);
        create(&mut c, &id, json!({})).await;
        assert!(third.has_session(&id), "{id} on the third address");
    })
    .await;
    stop.cancel();
}

#[test]
fn discover_config_errors_name_their_field() {
    let pool = |body: &str| {
        format!(
            "listeners:\n  - {{ name: cli, listen: 127.0.0.1:0, protocol: jsonrpc, pool: fleet }}\npools:\n  fleet:\n{body}"
        )
    };
    let cases: &[(&str, &str, &str)] = &[
        (
            "    discover: { dns_srv: _a._tcp.x, dns: x, every: 1s }\n",
            "pools.fleet.discover",
            "exactly one of dns_srv, dns",
        ),
        (
            "    discover: { every: 1s }\n",
            "pools.fleet.discover",
            "exactly one of dns_srv, dns",
        ),
        (
            "    discover: { dns_srv: _a._tcp.x, port: 80 }\n",
            "pools.fleet.discover.port",
            "only with dns",
        ),
        (
            "    discover: { dns: x.test }\n",
            "pools.fleet.discover.port",
            "required with dns",
        ),
        (
            "    discover: { dns_srv: _a._tcp.x, every: 0s }\n",
            "pools.fleet.discover.every",
            "greater than 0",
        ),
        (
            "    discover: { dns_srv: _a._tcp.x, resolver: \"dns.local:53\" }\n",
            "pools.fleet.discover.resolver",
            "invalid address",
        ),
        (
            "    discover: { dns_srv: \"bad name!\" }\n",
            "pools.fleet.discover.dns_srv",
            "invalid DNS name",
        ),
        (
            "    discover: { dns_srv: _a._tcp.x }\n    upstreams: [{ addr: 127.0.0.1:1 }]\n",
            "pools.fleet.upstreams",
            "not allowed with discover",
        ),
        (
            "    hash: { vnodes: 10 }\n",
            "pools.fleet.upstreams",
            "or set discover",
        ),
    ];
    for (body, path, message) in cases {
        let err = Config::parse(&pool(body), Path::new("sessiongate.yaml"))
            .expect_err(&format!("refused: {body}"));
        let ConfigError::Invalid { errors, .. } = err else {
            panic!("not a field error: {err}");
        };
        assert!(
            errors
                .iter()
                .any(|e| e.path == *path && e.message.contains(message)),
            "{body}: expected {path}: {message}; got {errors:?}"
        );
    }
    // And what is valid: a bare resolver IP means port 53.
    let ok = pool("    discover: { dns: fleet.test, port: 4321, resolver: 10.0.0.10 }\n");
    let config = Config::parse(&ok, Path::new("sessiongate.yaml")).expect("valid");
    let discover = config.pools["fleet"].discover.as_ref().expect("discover");
    assert_eq!(discover.resolver, Some("10.0.0.10:53".parse().unwrap()));
    assert!(config.pools["fleet"].upstreams.is_empty());
}
