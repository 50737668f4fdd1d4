//! The README's metric table, parsed, so tests check the code against the documentation
//! (metrics_exposition.rs, dashboard.rs); a config that names every kind of listener and pool
//! the metrics have label sets for; `promtool check metrics` (tests/tools.sh installs it).

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use super::upstreams_yaml;

/// One row name of the README's `## Metrics` table.
#[derive(Debug, Clone)]
pub struct Documented {
    pub name: String,
    /// Exposed as `_bucket`, `_sum` and `_count` series.
    pub histogram: bool,
}

impl Documented {
    /// The name a scrape shows samples under (`_bucket` for histograms).
    pub fn sample_name(&self) -> String {
        match self.histogram {
            true => format!("{}_bucket", self.name),
            false => self.name.clone(),
        }
    }
}

/// Every metric the README's `## Metrics` table names (first column, in backticks).
pub fn readme_metrics() -> Vec<Documented> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("read README.md");
    let section = readme
        .split("\n## Metrics\n")
        .nth(1)
        .expect("README has a ## Metrics section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut out = Vec::new();
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let first = row.split('|').nth(1).unwrap_or_default();
        let histogram = first.contains("(histogram)");
        for name in first.split('`').skip(1).step_by(2) {
            out.push(Documented {
                name: name.to_owned(),
                histogram,
            });
        }
    }
    assert!(
        out.len() >= 30,
        "the README table parsed into too few metrics: {out:?}"
    );
    out
}

/// Upstreams of [`every_kind_config`].
pub struct Members<'a> {
    /// JSON-RPC pool `fleet` (listener `cli`).
    pub fleet: &'a [(String, SocketAddr)],
    /// HTTP pool `api` (listener `web`, rate limited per session; TCP listener `raw`).
    pub api: &'a [(String, SocketAddr)],
    /// HTTP pool `learned` (listener `mcp`, which learns `Mcp-Session-Id`).
    pub learned: &'a [(String, SocketAddr)],
}

/// Listeners of every protocol and pools with every optional feature that has metrics:
/// `redis:` (store series), caps and `load_factor` (spills, `fleet_full`), `passive:`
/// (ejections), `cleanup:`, `learn:`, `limits:` (429s). `fleet_probe_interval` sets how often
/// the JSON-RPC pool is probed (long: nodes stay as they are until passive ejection notices,
/// after 3 failures).
pub fn every_kind_config(
    members: &Members<'_>,
    redis_url: &str,
    fleet_probe_interval: &str,
) -> String {
    format!(
        "admin:
  listen: 127.0.0.1:0
shutdown_grace: 2s
redis:
  url: {redis_url}
listeners:
  - name: cli
    listen: 127.0.0.1:0
    protocol: jsonrpc
    pool: fleet
  - name: web
    listen: 127.0.0.1:0
    protocol: http
    pool: api
    key:
      - header: X-Session-Id
    limits:
      per_session: {{ requests: 3, per: 1m }}
  - name: mcp
    listen: 127.0.0.1:0
    protocol: http
    pool: learned
    learn:
      - response_header: Mcp-Session-Id
  - name: raw
    listen: 127.0.0.1:0
    protocol: tcp
    pool: api
    key:
      - client_ip: true
pools:
  fleet:
    hash: {{ load_factor: 1.25 }}
    health: {{ probe: jsonrpc, interval: {fleet_probe_interval}, timeout: 1s, rise: 1, fall: 1 }}
    passive: {{ consecutive_failures: 3, eject_for: 1h }}
    fanout_timeout: 500ms
    max_sessions_per_upstream: 50
    cleanup: {{ older_than: 7d, every: 24h }}
    upstreams:
{fleet}  api:
    health: {{ probe: http, path: /healthz, interval: 200ms, timeout: 200ms, rise: 1, fall: 1 }}
    passive: {{ consecutive_failures: 3, eject_for: 1s }}
    upstreams:
{api}  learned:
    upstreams:
{learned}  found:
    # Discovered: nothing answers at this resolver, so the pool stays empty; its series exist.
    discover: {{ dns: cli.test, port: 4321, every: 1h, resolver: \"{resolver}\" }}
",
        fleet = upstreams_yaml(members.fleet),
        api = upstreams_yaml(members.api),
        learned = upstreams_yaml(members.learned),
        resolver = super::upstream::refused_addr(),
    )
}

/// Run `promtool check metrics` on `text`; its complaints, if any.
pub fn promtool_check(text: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool not found: run tests/tools.sh (it installs it into target/tools) and put it on PATH");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write metrics to promtool");
    let out = child.wait_with_output().expect("promtool ran");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
