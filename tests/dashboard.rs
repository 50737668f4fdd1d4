//! The Grafana dashboard (`docker/grafana/sessiongate.json`) against a real Prometheus: a
//! proxy with a mock CLI fleet and HTTP upstreams serves real traffic (errors, a reload, a
//! rate-limited request, an owner search, a redispatch), a `prometheus` child process scrapes
//! its admin `/metrics` every second, and every query of every panel must parse and return data.
//! Every metric the README documents must be in what Prometheus stored, and the exposition
//! under this traffic must pass `promtool check metrics`. `tests/tools.sh` installs both
//! binaries into target/tools.

mod support;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use support::client::{self, Client};
use support::jsonrpc::{error_of, id_on, session_params, CliFleet, RpcClient};
use support::metrics::{every_kind_config, promtool_check, readme_metrics, Members};
use support::redis::RedisServer;
use support::upstream::{named, refused_addr, serve_fn, Fleet};
use support::{metric_value, within, Proxy};
use tempfile::TempDir;

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/docker/grafana/sessiongate.json"
);

/// The `prometheus` binary: on PATH, else in target/tools (where tests/tools.sh puts it).
fn prometheus_binary() -> PathBuf {
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/prometheus");
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("prometheus"))
            .find(|p| p.is_file())
    });
    match on_path {
        Some(p) => p,
        None if tools.is_file() => tools,
        None => panic!(
            "the prometheus binary is missing: run tests/tools.sh (it installs Debian's \
             prometheus into target/tools) and put target/tools on PATH"
        ),
    }
}

/// A Prometheus server scraping one target; killed (and its storage removed) on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Prometheus {
    /// Start Prometheus scraping `target`'s `/metrics` every second, on a free port.
    async fn start(target: SocketAddr) -> Prometheus {
        let binary = prometheus_binary();
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: sessiongate\n    static_configs:\n      \
                 - targets: [\"{target}\"]\n"
            ),
        )
        .expect("write prometheus.yml");
        // Another process may take the port between our probe and Prometheus' bind: then
        // Prometheus exits, and another port is tried.
        for attempt in 0..5 {
            let addr = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port");
            let child = Command::new(&binary)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join(format!("data-{attempt}")).display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--log.level=warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
            let mut child = child;
            if wait_ready(&mut child, addr).await {
                return Prometheus {
                    child,
                    addr,
                    _dir: dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("prometheus did not become ready on any of 5 ports");
    }

    /// `GET path` on the HTTP API, parsed.
    async fn api(&self, path: &str) -> Value {
        let reply = client::get(self.addr, path, &[]).await;
        serde_json::from_str(&reply.body)
            .unwrap_or_else(|e| panic!("GET {path}: {e}: {} {}", reply.status, reply.body))
    }

    /// Evaluate `query` now: Prometheus' whole answer (`status`, `data`, `error`).
    async fn query(&self, query: &str) -> Value {
        let q: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("query", query)
            .finish();
        self.api(&format!("/api/v1/query?{q}")).await
    }

    /// The first sample's value of `query`, if it has one.
    async fn value(&self, query: &str) -> Option<f64> {
        let answer = self.query(query).await;
        answer["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
    }

    /// Wait until the target has been scraped `n` more times than now.
    async fn scrapes(&self, n: f64) {
        let count = "count_over_time(up{job=\"sessiongate\"}[1h])";
        let start = self.value(count).await.unwrap_or(0.0);
        for _ in 0..1500 {
            if self.value(count).await.unwrap_or(0.0) >= start + n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("prometheus did not scrape {n} more times within 30s");
    }
}

/// Poll `/-/ready` until it answers 200; false if the process exited first.
async fn wait_ready(child: &mut Child, addr: SocketAddr) -> bool {
    for _ in 0..1500 {
        if child.try_wait().expect("prometheus status").is_some() {
            return false;
        }
        let ready = tokio::time::timeout(Duration::from_secs(1), async {
            let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
            let authority = addr.to_string();
            let mut c = Client::handshake(tcp, &authority, "http", http::Version::HTTP_11)
                .await
                .ok()?;
            c.try_get("/-/ready", &[]).await.ok()
        })
        .await;
        if let Ok(Some(reply)) = ready {
            if reply.status == 200 {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every target expression of every panel (rows' nested panels included): (panel title, expr).
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &[Value], out: &mut Vec<(String, String)>) {
        for p in panels {
            let title = p["title"].as_str().unwrap_or_default().to_owned();
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push((title.clone(), expr.to_owned()));
                }
            }
            walk(p["panels"].as_array().map_or(&[], Vec::as_slice), out);
        }
    }
    let mut out = Vec::new();
    walk(
        dashboard["panels"].as_array().expect("panels").as_slice(),
        &mut out,
    );
    out
}

/// `expr` with Grafana's variables replaced as Grafana would with "All" selected: the
/// dashboard's own variables by `.*`, the built-in intervals by `1m`.
fn substitute(expr: &str, variables: &[String]) -> String {
    let mut out = expr
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$__range", "1m");
    for v in variables {
        out = out
            .replace(&format!("${{{v}}}"), ".*")
            .replace(&format!("${v}"), ".*");
    }
    assert!(!out.contains('$'), "a variable left in {out}");
    out
}

/// HTTP and JSON-RPC traffic of every kind the dashboard shows.
async fn traffic(proxy: &Proxy, round: usize) {
    let mut web = proxy.client("web").await;
    for i in 0..6 {
        let key = format!("k{round}-{i}");
        web.get("/x", &[("x-session-id", &key)]).await;
        // The flaky upstream answers 500 here, the others 200.
        web.get("/fail", &[("x-session-id", &key)]).await;
    }
    let mut cli = RpcClient::connect(proxy.addr("cli")).await;
    cli.result("ping", json!({})).await;
    for i in 0..3 {
        let id = format!("00000000-0000-4000-8000-0000000{round:02}{i:03}");
        cli.result("session.create", session_params(&id, json!({})))
            .await;
        cli.result(
            "session.send",
            session_params(&id, json!({ "prompt": "hi" })),
        )
        .await;
    }
    cli.result("session.list", json!({})).await;
    // A method outside the table.
    cli.call("vendor.experimental", json!({})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    // Fail before starting anything when the binary is missing.
    prometheus_binary();
    within(120, async {
        let redis = RedisServer::start().await;
        let clis = CliFleet::start(3).await;
        let mut fleet = clis.members();
        // A node that refuses connections: requests routed there are redispatched.
        fleet.push(("dead".to_owned(), refused_addr()));
        let web = Fleet::start(&["u1", "u2"]).await;
        let flaky = serve_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
            let mut resp = named("flaky", "flaky");
            if req.uri().path() == "/fail" {
                *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
            }
            resp
        })
        .await;
        let mut api = web.members.clone();
        api.push(("flaky".to_owned(), flaky.addr));
        let learned = Fleet::start(&["m1"]).await;
        let config = |api: &[(String, SocketAddr)]| {
            let members = Members {
                fleet: &fleet,
                api,
                learned: &learned.members,
            };
            every_kind_config(&members, &redis.url(), "1h")
        };
        let proxy = Proxy::start_yaml(&config(&api)).await;

        // The dead node: a session the ring puts there cannot be created (its state would
        // live there), a global call from a connection whose home it is goes to another
        // node (a redispatch), and the third failure ejects it (`passive:` in the config).
        let pool = proxy
            .server
            .snapshot()
            .pool("fleet")
            .expect("fleet")
            .clone();
        let mut cli = RpcClient::connect(proxy.addr("cli")).await;
        let refused = cli
            .call(
                "session.create",
                session_params(&id_on(&pool, "dead"), json!({})),
            )
            .await;
        error_of(&refused);
        let redispatched = || async {
            let text = proxy.metrics_text().await;
            metric_value(
                &text,
                "sessiongate_redispatches_total",
                &[("upstream", "dead")],
            ) >= Some(1.0)
        };
        // Each connection has a random home node: a few find the dead one.
        for _ in 0..200 {
            if redispatched().await {
                break;
            }
            let mut c = RpcClient::connect(proxy.addr("cli")).await;
            c.result("ping", json!({})).await;
        }
        assert!(
            redispatched().await,
            "no ping was redispatched from the dead node"
        );
        let refused = cli
            .call(
                "session.create",
                session_params(&id_on(&pool, "dead"), json!({})),
            )
            .await;
        error_of(&refused);
        // An owner search: a session no pin names.
        let unknown = "00000000-0000-4000-8000-00000000dead";
        let resumed = cli
            .call("session.resume", session_params(unknown, json!({})))
            .await;
        error_of(&resumed);
        traffic(&proxy, 0).await;
        let text = proxy.metrics_text().await;
        for (metric, labels) in [
            (
                "sessiongate_upstream_ejections_total",
                &[("upstream", "dead")][..],
            ),
            ("sessiongate_owner_discovery_total", &[][..]),
        ] {
            let total: f64 = text
                .lines()
                .filter(|l| l.starts_with(metric))
                .filter(|l| {
                    labels
                        .iter()
                        .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            assert!(total >= 1.0, "{metric}{labels:?} counted nothing:\n{text}");
        }

        let prometheus = Prometheus::start(proxy.admin()).await;
        prometheus.scrapes(1.0).await;

        // Between scrapes: more traffic, a refused and an applied reload (a new upstream),
        // and a rate-limited request (the listener allows 3 per session per minute).
        traffic(&proxy, 1).await;
        assert!(proxy.reload_with("listeners: [").await.is_err());
        api.push(("u3".to_owned(), web.members[0].1));
        proxy.reload_with(&config(&api)).await.expect("reload");
        let mut web_client = proxy.client("web").await;
        let statuses = {
            let mut s = Vec::new();
            for _ in 0..4 {
                s.push(
                    web_client
                        .get("/x", &[("x-session-id", "limited")])
                        .await
                        .status,
                );
            }
            s
        };
        assert_eq!(
            statuses.last().map(|s| s.as_u16()),
            Some(429),
            "{statuses:?}"
        );
        let text = proxy.metrics_text().await;
        assert!(
            metric_value(&text, "sessiongate_requests_total", &[("code", "429")]) >= Some(1.0),
            "the 429 is counted:\n{text}"
        );
        traffic(&proxy, 2).await;
        let text = proxy.metrics_text().await;
        promtool_check(&text).unwrap_or_else(|e| panic!("promtool rejects the exposition:\n{e}"));
        prometheus.scrapes(3.0).await;

        let dashboard: Value =
            serde_json::from_str(&std::fs::read_to_string(DASHBOARD).expect("read the dashboard"))
                .expect("the dashboard is JSON");
        assert!(dashboard["schemaVersion"].as_u64() >= Some(36));
        let variables: Vec<String> = dashboard["templating"]["list"]
            .as_array()
            .expect("templating variables")
            .iter()
            .filter_map(|v| v["name"].as_str().map(str::to_owned))
            .collect();
        let queries = dashboard_queries(&dashboard);
        assert!(queries.len() >= 20, "too few queries: {queries:?}");
        let mut failures = Vec::new();
        for (title, expr) in &queries {
            let query = substitute(expr, &variables);
            let answer = prometheus.query(&query).await;
            let results = answer["data"]["result"].as_array().map_or(0, Vec::len);
            eprintln!("{results:>4} series  {title}: {query}");
            if answer["status"] != "success" || results == 0 {
                failures.push(format!("{title}: {query}\n  -> {answer}"));
            }
        }
        assert!(
            failures.is_empty(),
            "dashboard queries that failed or returned nothing:\n{}",
            failures.join("\n")
        );

        // And Prometheus saw the traffic between scrapes, not only series at 0.
        for (what, query) in [
            (
                "an applied reload",
                "sum(increase(sessiongate_config_reloads_total{result=\"success\"}[5m]))",
            ),
            (
                "a refused reload",
                "sum(increase(sessiongate_config_reloads_total{result=\"failure\"}[5m]))",
            ),
            (
                "a rate-limited request",
                "sum(increase(sessiongate_requests_total{code=\"429\"}[5m]))",
            ),
            (
                "HTTP 500s",
                "sum(increase(sessiongate_requests_total{code=\"500\"}[5m]))",
            ),
        ] {
            let v = prometheus.value(query).await;
            assert!(v > Some(0.0), "{what}: {query} = {v:?}");
        }

        let names = prometheus.api("/api/v1/label/__name__/values").await;
        let names: Vec<&str> = names["data"]
            .as_array()
            .expect("metric names")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let missing: Vec<String> = readme_metrics()
            .iter()
            .map(|m| m.sample_name())
            .filter(|n| !names.contains(&n.as_str()))
            .collect();
        assert!(
            missing.is_empty(),
            "documented in the README but not scraped by Prometheus: {missing:?}"
        );
    })
    .await
}

#[test]
fn grafana_variables_are_substituted() {
    let vars = ["pool".to_owned(), "instance".to_owned()];
    assert_eq!(
        substitute(
            "rate(x{pool=~\"$pool\", instance=~\"${instance}\"}[$__rate_interval])",
            &vars
        ),
        "rate(x{pool=~\".*\", instance=~\".*\"}[1m])"
    );
}

#[test]
fn every_panel_has_a_query_and_uses_the_datasource_variable() {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).expect("read")).expect("JSON");
    for p in dashboard["panels"].as_array().expect("panels") {
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        assert!(
            p["targets"].as_array().is_some_and(|t| !t.is_empty()),
            "{} has no query",
            p["title"]
        );
    }
}
