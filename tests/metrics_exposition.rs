//! The `/metrics` exposition is valid Prometheus text, checked by Prometheus' own `promtool
//! check metrics` after HTTP and JSON-RPC traffic has created every kind of series (histograms,
//! labelled counters, per-session series, health gauges, discovery). `tests/tools.sh` installs promtool.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::json;
use support::jsonrpc::{jsonrpc_config, session_params, CliFleet, RpcClient, RpcYaml};
use support::upstream::Fleet;
use support::{web_config, within, Proxy};

/// Run `promtool check metrics` on `text`; its complaints, if any.
fn promtool_check(text: &str) -> Result<(), String> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_metrics_pass_promtool() {
    within(30, async {
        let fleet = Fleet::start(&["u1", "u2", "u3"]).await;
        let health = "    health: { probe: http, path: /healthz, interval: 100ms, timeout: 100ms, rise: 1, fall: 1 }\n";
        let proxy = Proxy::start_yaml(&web_config(&fleet.members, "", health)).await;
        let mut client = proxy.client("web").await;
        for key in ["a", "b", "c", "d"] {
            assert_eq!(client.get("/x", &[("x-session-id", key)]).await.status, 200);
        }
        let text = proxy.metrics_text().await;
        for family in [
            "sessiongate_requests_total",
            "sessiongate_request_duration_seconds_bucket",
            "sessiongate_upstream_healthy",
            "sessiongate_build_info",
        ] {
            assert!(text.contains(family), "{family} missing from:\n{text}");
        }
        promtool_check(&text).unwrap_or_else(|e| panic!("promtool rejects the exposition:\n{e}"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonrpc_metrics_pass_promtool() {
    within(30, async {
        let fleet = CliFleet::start(3).await;
        let proxy = Proxy::start_yaml(&jsonrpc_config(&fleet.members(), RpcYaml::default())).await;
        let mut c = RpcClient::connect(proxy.addr("cli")).await;
        c.result("ping", json!({})).await;
        for i in 0..4 {
            let id = format!("00000000-0000-4000-8000-00000000000{i}");
            c.result("session.create", session_params(&id, json!({})))
                .await;
            c.result(
                "session.send",
                session_params(&id, json!({ "prompt": "hi" })),
            )
            .await;
        }
        c.result("session.list", json!({})).await;
        let text = proxy.metrics_text().await;
        for family in [
            "sessiongate_session_request_duration_seconds_bucket",
            "sessiongate_jsonrpc_request_duration_seconds_bucket",
            "sessiongate_pinned_sessions",
        ] {
            assert!(text.contains(family), "{family} missing from:\n{text}");
        }
        promtool_check(&text).unwrap_or_else(|e| panic!("promtool rejects the exposition:\n{e}"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_metrics_pass_promtool() {
    within(30, async {
        let fleet = CliFleet::start(2).await;
        let dns = support::dns::DnsServer::start().await;
        let members = fleet.members();
        let targets: Vec<(String, u16)> = members
            .iter()
            .map(|(n, a)| (format!("{n}.cli.test"), a.port()))
            .collect();
        for (host, _) in &targets {
            dns.set_a(host, &[std::net::Ipv4Addr::LOCALHOST]);
        }
        let refs: Vec<(&str, u16)> = targets.iter().map(|(h, p)| (h.as_str(), *p)).collect();
        dns.set_srv("_rpc._tcp.cli.test", &refs);
        let discover = format!(
            "    discover: {{ dns_srv: _rpc._tcp.cli.test, every: 100ms, resolver: \"{}\" }}\n",
            dns.addr()
        );
        // The pool's static list is replaced by discover:.
        let yaml = jsonrpc_config(&[], RpcYaml::default()).replace("    upstreams:\n", &discover);
        let proxy = Proxy::start_yaml(&yaml).await;
        let mut text = String::new();
        for _ in 0..250 {
            text = proxy.metrics_text().await;
            if text.contains("sessiongate_discovery_upstreams{pool=\"fleet\"} 2") {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(
            text.contains("sessiongate_discovery_lookups_total{pool=\"fleet\",result=\"changed\"}"),
            "discovery series missing from:\n{text}"
        );
        promtool_check(&text).unwrap_or_else(|e| panic!("promtool rejects the exposition:\n{e}"));
    })
    .await
}

#[test]
fn promtool_rejects_a_broken_exposition() {
    // Guards the guard: the check above must be able to fail.
    let broken = "# TYPE x counter\nx{label=\"unterminated} 1\n";
    assert!(promtool_check(broken).is_err());
}
