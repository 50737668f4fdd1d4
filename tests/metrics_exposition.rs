//! The `/metrics` exposition is valid Prometheus text, checked by Prometheus' own `promtool
//! check metrics` after HTTP and JSON-RPC traffic has created every kind of series (histograms,
//! labelled counters, per-session series, health gauges, discovery). `tests/tools.sh` installs promtool.

mod support;

use serde_json::json;
use sessiongate::metrics::{
    HEALTH_STATES, JSONRPC_OUTCOMES, LINK_FAILURE_KINDS, OWNER_DISCOVERY_RESULTS, PIN_DROP_REASONS,
};
use support::jsonrpc::{jsonrpc_config, session_params, CliFleet, RpcClient, RpcYaml};
use support::metrics::{every_kind_config, promtool_check, readme_metrics, Members};
use support::upstream::{refused_addr, Fleet};
use support::{metric_value, web_config, within, Proxy};

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

/// The first scrape already has every metric the README documents, and every series whose
/// labels the config names, at 0: `rate()` and alerts work from the start, and a dashboard
/// tells "nothing happened" from "not exported".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_scrape_has_every_documented_metric_and_configured_series_at_zero() {
    within(30, async {
        let clis = CliFleet::start(2).await;
        let web = Fleet::start(&["u1", "u2"]).await;
        let learned = Fleet::start(&["m1"]).await;
        let members = Members {
            fleet: &clis.members(),
            api: &web.members,
            learned: &learned.members,
        };
        // Nothing listens there: the store's series exist with Redis configured, answering or
        // not, and no test traffic needs it.
        let redis = format!("redis://{}", refused_addr());
        let proxy = Proxy::start_yaml(&every_kind_config(&members, &redis, "1h")).await;
        let text = proxy.metrics_text().await;

        let missing: Vec<String> = readme_metrics()
            .iter()
            .map(|m| m.sample_name())
            .filter(|name| metric_value(&text, name, &[]).is_none())
            .collect();
        assert!(
            missing.is_empty(),
            "documented in the README but not in the first scrape: {missing:?}\n{text}"
        );

        // And the other way: nothing is exported that the README does not document.
        let documented: Vec<String> = readme_metrics().into_iter().map(|m| m.name).collect();
        let undocumented: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .filter(|name| !documented.iter().any(|d| d == name))
            .collect();
        assert!(
            undocumented.is_empty(),
            "exported but not in the README's table: {undocumented:?}"
        );

        let zero = |name: &str, labels: &[(&str, &str)]| {
            assert_eq!(
                metric_value(&text, name, labels),
                Some(0.0),
                "{name}{labels:?} at 0 in the first scrape:\n{text}"
            );
        };
        for listener in ["cli", "web", "mcp", "raw"] {
            zero(
                "sessiongate_connection_errors_total",
                &[("listener", listener), ("kind", "accept")],
            );
            zero("sessiongate_connections_total", &[("listener", listener)]);
        }
        // `web` has a rate limit: its 429s are counted from the first one on.
        zero(
            "sessiongate_requests_total",
            &[
                ("listener", "web"),
                ("pool", "api"),
                ("upstream", "none"),
                ("code", "429"),
            ],
        );
        // Only `fleet` has capped upstreams: only `cli` can refuse for a full fleet.
        zero(
            "sessiongate_admission_rejected_total",
            &[("listener", "cli"), ("reason", "fleet_full")],
        );
        // `web` has limits, so it can refuse for them; never for a full fleet.
        zero(
            "sessiongate_admission_rejected_total",
            &[("listener", "web"), ("reason", "rate_limited")],
        );
        assert_eq!(
            metric_value(
                &text,
                "sessiongate_admission_rejected_total",
                &[("listener", "web"), ("reason", "fleet_full")]
            ),
            None
        );
        // A discovered pool has no upstreams before its first answer.
        zero("sessiongate_discovery_upstreams", &[("pool", "found")]);
        zero(
            "sessiongate_discovery_lookups_total",
            &[("pool", "found"), ("result", "changed")],
        );
        for (name, _) in members.fleet {
            let at = [("pool", "fleet"), ("upstream", name.as_str())];
            for metric in [
                "sessiongate_redispatches_total",
                "sessiongate_fanout_skipped_total",
                "sessiongate_upstream_ejections_total",
                "sessiongate_placement_spills_total",
                "sessiongate_cleanup_deleted_sessions_total",
                "sessiongate_cleanup_freed_bytes_total",
                "sessiongate_sessions_already_in_use_total",
            ] {
                zero(metric, &at);
            }
            for kind in LINK_FAILURE_KINDS {
                zero(
                    "sessiongate_upstream_link_failures_total",
                    &[at[0], at[1], ("kind", kind)],
                );
            }
            for code in JSONRPC_OUTCOMES {
                zero(
                    "sessiongate_requests_total",
                    &[("listener", "cli"), at[0], at[1], ("code", code)],
                );
            }
        }
        for (pool, upstreams) in [("fleet", members.fleet), ("api", members.api)] {
            for (name, _) in upstreams {
                for to in HEALTH_STATES {
                    zero(
                        "sessiongate_upstream_health_transitions_total",
                        &[("pool", pool), ("upstream", name), ("to", to)],
                    );
                }
            }
        }
        for result in OWNER_DISCOVERY_RESULTS {
            zero(
                "sessiongate_owner_discovery_total",
                &[("pool", "fleet"), ("result", result)],
            );
        }
        for reason in PIN_DROP_REASONS {
            zero(
                "sessiongate_pins_dropped_total",
                &[("pool", "learned"), ("reason", reason)],
            );
        }
        zero(
            "sessiongate_pins_learned_total",
            &[("pool", "learned"), ("upstream", "m1")],
        );
        zero(
            "sessiongate_jsonrpc_request_duration_seconds_count",
            &[("pool", "fleet"), ("method", "other")],
        );
        zero(
            "sessiongate_session_request_duration_seconds_count",
            &[("pool", "fleet"), ("session", "_other")],
        );
        // Features a pool does not have get no series: no cleanup on `api`.
        assert_eq!(
            metric_value(
                &text,
                "sessiongate_cleanup_deleted_sessions_total",
                &[("pool", "api")]
            ),
            None
        );
        promtool_check(&text).unwrap_or_else(|e| panic!("promtool rejects the exposition:\n{e}"));
    })
    .await
}

/// A reload that adds an upstream exports its series at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_exports_the_series_of_new_upstreams() {
    within(30, async {
        let clis = CliFleet::start(3).await;
        let all = clis.members();
        let proxy = Proxy::start_yaml(&jsonrpc_config(&all[..2], RpcYaml::default())).await;
        let at = [("pool", "fleet"), ("upstream", "cli-2")];
        let text = proxy.metrics_text().await;
        assert_eq!(
            metric_value(&text, "sessiongate_redispatches_total", &at),
            None
        );
        proxy
            .reload_with(&jsonrpc_config(&all, RpcYaml::default()))
            .await
            .expect("reload");
        let text = proxy.metrics_text().await;
        for metric in [
            "sessiongate_redispatches_total",
            "sessiongate_fanout_skipped_total",
            "sessiongate_upstream_link_failures_total",
        ] {
            assert_eq!(
                metric_value(&text, metric, &at),
                Some(0.0),
                "{metric}:\n{text}"
            );
        }
    })
    .await
}

#[test]
fn promtool_rejects_a_broken_exposition() {
    // Guards the guard: the check above must be able to fail.
    let broken = "# TYPE x counter\nx{label=\"unterminated} 1\n";
    assert!(promtool_check(broken).is_err());
}
