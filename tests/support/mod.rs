//! Shared helpers for the integration tests: config files in a tempdir, an in-process proxy,
//! mock upstreams ([`upstream`]), small HTTP clients ([`client`]), test certificates ([`tls`]),
//! the real binary as a child process ([`binary`]), a real Redis server ([`redis`]) and a DNS
//! server ([`dns`]).
//! Everything binds 127.0.0.1:0.

// Each test file uses its own subset of these helpers.
#![allow(dead_code, unused_imports)]

pub mod binary;
pub mod client;
pub mod issuing;
pub mod tls;
pub mod upstream;
// JSON-RPC client, mock CLI fleet and config; killable upstreams (jsonrpc_routing.rs, health.rs).
pub mod jsonrpc;
pub mod nodes;
// A real redis-server on a free port, stoppable for outages (store_redis.rs).
pub mod redis;
// A DNS server in the test process whose records the test changes (discovery.rs).
pub mod dns;
// The README's metric table and a config naming every kind of labelled series.
pub mod metrics;
// Broken upstreams: a killable child process, half answers, a throttling relay (faults_*.rs).
pub mod faults;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;
use sessiongate::error::ReloadError;
use sessiongate::metrics::Metrics;
use sessiongate::reload::ReloadReport;
use sessiongate::server::Server;
use sessiongate::shutdown::Shutdown;
use tempfile::TempDir;

pub use client::{Body, Client, Reply};

/// Run `fut`, failing the test if it takes longer than `secs` seconds.
pub async fn within<T>(secs: u64, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {secs}s"),
    }
}

/// Wait until `cond` holds, for state that offers no signal to wait on (a counter updated
/// after a socket closes). Checks every 10ms, for at most 5s.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not true within 5s: {what}");
}

/// A temporary folder holding `sessiongate.yaml` and any files it refers to (certificates).
pub struct ConfigDir {
    dir: TempDir,
    path: PathBuf,
}

impl ConfigDir {
    pub fn new(yaml: &str) -> ConfigDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sessiongate.yaml");
        let config = ConfigDir { dir, path };
        config.write(yaml);
        config
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replace the config file's contents (a reload will read them).
    pub fn write(&self, yaml: &str) {
        std::fs::write(&self.path, yaml).expect("write config");
    }

    /// Write another file next to the config and return its path.
    pub fn file(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write file");
        path
    }
}

/// `upstreams:` list items for a pool, one `- { name, addr }` per upstream.
pub fn upstreams_yaml<'a>(upstreams: impl IntoIterator<Item = &'a (String, SocketAddr)>) -> String {
    upstreams
        .into_iter()
        .map(|(name, addr)| format!("      - {{ name: {name}, addr: \"{addr}\" }}\n"))
        .collect()
}

/// A config with one HTTP listener `web` keyed by all four HTTP sources, in front of pool
/// `api`. `listener_extra` and `pool_extra` are extra YAML lines, indented for their block
/// (4 spaces).
pub fn web_config(
    upstreams: &[(String, SocketAddr)],
    listener_extra: &str,
    pool_extra: &str,
) -> String {
    format!(
        "admin:
  listen: 127.0.0.1:0
shutdown_grace: 10s
listeners:
  - name: web
    listen: 127.0.0.1:0
    protocol: http
    pool: api
    key:
      - header: X-Session-Id
      - cookie: session_id
      - query: session
      - path: /sessions/{{key}}
{listener_extra}pools:
  api:
    hash:
      vnodes: 160
    connect_timeout: 2s
    request_timeout: 10s
{pool_extra}    upstreams:
{}",
        upstreams_yaml(upstreams)
    )
}

/// A proxy running in this process, started from a config file in a tempdir.
pub struct Proxy {
    pub server: Arc<Server>,
    /// The proxy's shutdown handle (a clone): tests can watch `token` to see shutdown begin.
    pub shutdown: Shutdown,
    pub config: ConfigDir,
}

impl Proxy {
    pub async fn start(config: ConfigDir) -> Proxy {
        let shutdown = Shutdown::new();
        let metrics = Metrics::new(Registry::new()).expect("metrics");
        let server = Server::start(config.path(), metrics, shutdown.clone())
            .await
            .unwrap_or_else(|e| panic!("proxy did not start: {e}"));
        Proxy {
            server,
            shutdown,
            config,
        }
    }

    pub async fn start_yaml(yaml: &str) -> Proxy {
        Proxy::start(ConfigDir::new(yaml)).await
    }

    /// The bound address of proxy listener `name`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.server
            .listener_addr(name)
            .unwrap_or_else(|| panic!("no listener named {name}"))
    }

    pub fn admin(&self) -> SocketAddr {
        self.server.admin_addr()
    }

    /// An HTTP/1.1 keep-alive client connected to listener `name`.
    pub async fn client(&self, name: &str) -> Client {
        Client::h1(self.addr(name)).await
    }

    /// A client for the admin listener.
    pub async fn admin_client(&self) -> Client {
        Client::h1(self.admin()).await
    }

    /// Rewrite the config file and reload it.
    pub async fn reload_with(&self, yaml: &str) -> Result<ReloadReport, ReloadError> {
        self.config.write(yaml);
        self.server.reload().await
    }

    /// The `/metrics` text, fetched over the admin listener.
    pub async fn metrics_text(&self) -> String {
        let reply = client::get(self.admin(), "/metrics", &[]).await;
        assert_eq!(reply.status, 200, "GET /metrics");
        reply.body
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Stop the accept loops and connections this proxy spawned on the test runtime.
        self.shutdown.token.cancel();
    }
}

/// The upstream name `GET /admin/route?pool=P&key=K` reports for `key`.
pub async fn admin_route(admin: &mut Client, pool: &str, key: &str) -> String {
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("pool", pool)
        .append_pair("key", key)
        .finish();
    let reply = admin.get(&format!("/admin/route?{query}"), &[]).await;
    assert_eq!(reply.status, 200, "admin route for {key}: {}", reply.body);
    let json: serde_json::Value = serde_json::from_str(&reply.body).expect("route JSON");
    assert_eq!(json["key"], key);
    json["name"].as_str().expect("name").to_owned()
}

/// The value of a Prometheus sample: the first line of `text` for `name` whose labels include
/// every `label="value"` pair given.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Wait until the async check `cond` holds, for state that only an endpoint shows (an admin
/// page, a metric). Checks every 20ms, for at most `secs` seconds.
pub async fn poll_until<F, Fut>(what: &str, secs: u64, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not true within {secs}s: {what}");
}

/// `GET path` on the admin listener, parsed as JSON (status checked to be 200).
pub async fn admin_json(admin: SocketAddr, path: &str) -> serde_json::Value {
    let reply = client::get(admin, path, &[]).await;
    assert_eq!(reply.status, 200, "GET {path}: {}", reply.body);
    serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("GET {path}: {e}: {}", reply.body))
}

/// `POST path` with `body` on the admin listener: the status and the body parsed as JSON.
pub async fn admin_post(
    admin: SocketAddr,
    path: &str,
    body: &str,
) -> (http::StatusCode, serde_json::Value) {
    let mut admin = Client::h1(admin).await;
    let req = admin
        .request(http::Method::POST, path)
        .body(client::full(body.to_owned()))
        .expect("request");
    let resp = admin
        .send(req)
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let reply = Reply::read(resp)
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let json = serde_json::from_str(&reply.body)
        .unwrap_or_else(|e| panic!("POST {path}: {e}: {}", reply.body));
    (reply.status, json)
}

/// The entry of `GET /admin/upstreams` for upstream `name`.
pub async fn admin_upstream(admin: SocketAddr, name: &str) -> serde_json::Value {
    let all = admin_json(admin, "/admin/upstreams").await;
    all["upstreams"]
        .as_array()
        .and_then(|list| list.iter().find(|u| u["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no upstream {name} in {all}"))
}
