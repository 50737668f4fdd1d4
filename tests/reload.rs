//! Reload: under traffic (every answer 2xx, only the changed upstream's keys move), refused
//! reloads (old config keeps serving, failures counted), and SIGHUP on the real binary binding
//! and closing listeners.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use support::binary::Binary;
use support::upstream::Fleet;
use support::{admin_route, client, metric_value, web_config, within, ConfigDir, Proxy};
use tokio::sync::mpsc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_reloads_under_traffic_keep_answers_2xx_and_untouched_keys_in_place() {
    within(120, async {
        let fleet = Fleet::start(&["u1", "u2", "u3", "u4"]).await;
        let (base, extra) = fleet.members.split_at(3);
        let u4 = &extra[0];
        let base_yaml = web_config(base, "", "");
        let with_u4 = |weight: u32| {
            format!(
                "{base_yaml}      - {{ name: u4, addr: \"{}\", weight: {weight} }}\n",
                u4.1
            )
        };
        // The changed upstream is always u4: added, reweighted, reweighted back, removed.
        let cycle = [with_u4(1), with_u4(2), with_u4(1), base_yaml.clone()];
        let proxy = Proxy::start_yaml(&base_yaml).await;

        let keys: Arc<Vec<String>> = Arc::new((0..200).map(|i| format!("k{i}")).collect());
        let mut owner = HashMap::new();
        let mut client = proxy.client("web").await;
        for key in keys.iter() {
            let reply = client.get("/", &[("x-session-id", key)]).await;
            owner.insert(key.clone(), reply.upstream().to_owned());
        }

        // Two clients loop until told to stop, reporting (key, status, upstream) per request.
        let stop = Arc::new(AtomicBool::new(false));
        // A small buffer keeps the clients in step with the reload loop.
        let (tx, mut results) = mpsc::channel::<(String, u16, String)>(4);
        let mut clients = Vec::new();
        for c in 0..2 {
            let (addr, keys, stop, tx) =
                (proxy.addr("web"), keys.clone(), stop.clone(), tx.clone());
            clients.push(tokio::spawn(async move {
                let mut client = client::Client::h1(addr).await;
                for i in 0..100_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let key = &keys[(i * 7 + c * 31) % keys.len()];
                    let reply = client
                        .try_get("/", &[("x-session-id", key)])
                        .await
                        .unwrap_or_else(|e| panic!("request during reloads failed: {e}"));
                    let upstream = reply
                        .headers
                        .get("x-upstream")
                        .map_or("-".into(), |v| v.to_str().unwrap().to_owned());
                    let sent = (key.clone(), reply.status.as_u16(), upstream);
                    if tx.send(sent).await.is_err() {
                        break;
                    }
                }
            }));
        }
        drop(tx);

        let mut checked = 0;
        let mut on_u4 = 0;
        for (round, yaml) in cycle.iter().cycle().take(20).enumerate() {
            let report = proxy
                .reload_with(yaml)
                .await
                .unwrap_or_else(|e| panic!("reload {round}: {e}"));
            assert_eq!(report.version, round as u64 + 2);
            // Let traffic flow against this config before the next reload.
            for _ in 0..25 {
                let (key, status, upstream) = results.recv().await.expect("client result");
                assert!(
                    (200..300).contains(&status),
                    "status {status} for {key} in round {round}"
                );
                assert!(
                    upstream == owner[&key] || upstream == "u4",
                    "{key} moved from {} to {upstream}, which the reload did not change",
                    owner[&key]
                );
                on_u4 += usize::from(upstream == "u4");
                checked += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
        while let Some((key, status, upstream)) = results.recv().await {
            assert!((200..300).contains(&status), "status {status} for {key}");
            assert!(upstream == owner[&key] || upstream == "u4");
        }
        for c in clients {
            c.await.expect("client task");
        }
        assert!(checked >= 500);
        assert!(
            on_u4 > 0,
            "u4 never served: the reloads did not take effect"
        );

        // The 20th reload restored the base config: every key is back on its owner.
        for key in keys.iter() {
            let reply = client.get("/", &[("x-session-id", key)]).await;
            assert_eq!(reply.upstream(), owner[key], "{key} after the last reload");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_reload_is_refused_and_the_old_config_keeps_serving() {
    within(30, async {
        let fleet = Fleet::start(&["u1", "u2", "u3"]).await;
        let good = web_config(&fleet.members, "", "");
        let proxy = Proxy::start_yaml(&good).await;
        let mut admin = proxy.admin_client().await;
        // A key owned by u1, which both bad files drop from the pool.
        let mut key = None;
        for i in 0..100 {
            let k = format!("key-{i}");
            if admin_route(&mut admin, "api", &k).await == "u1" {
                key = Some(k);
                break;
            }
        }
        let key = key.expect("a key owned by u1");
        let without_u1 = &fleet.members[1..];
        let serves_from_u1 = || async {
            let reply = client::get(proxy.addr("web"), "/", &[("x-session-id", &key)]).await;
            assert_eq!(reply.status, 200);
            assert_eq!(reply.upstream(), "u1", "the refused config took effect");
        };
        serves_from_u1().await;

        let broken_yaml = format!("{}\n  - name: [unclosed\n", web_config(without_u1, "", ""));
        let err = proxy
            .reload_with(&broken_yaml)
            .await
            .expect_err("invalid YAML");
        let msg = err.to_string();
        assert!(
            msg.contains(&*proxy.config.path().to_string_lossy()),
            "{msg}"
        );
        serves_from_u1().await;

        let semantic = web_config(without_u1, "", "    health:\n      fall: 0\n");
        let err = proxy.reload_with(&semantic).await.expect_err("fall: 0");
        assert!(
            err.to_string()
                .contains("pools.api.health.fall: must be >= 1"),
            "{err}"
        );
        serves_from_u1().await;

        let text = proxy.metrics_text().await;
        let reloads = |result| {
            metric_value(
                &text,
                "sessiongate_config_reloads_total",
                &[("result", result)],
            )
        };
        assert_eq!(reloads("failure"), Some(2.0), "{text}");
        assert_eq!(reloads("success"), Some(0.0));
        assert_eq!(
            metric_value(&text, "sessiongate_config_version", &[]),
            Some(1.0)
        );
        assert_eq!(proxy.server.snapshot().version, 1);

        // A good file afterwards is accepted and counted as a success.
        proxy.reload_with(&good).await.expect("good reload");
        let text = proxy.metrics_text().await;
        assert_eq!(
            metric_value(
                &text,
                "sessiongate_config_reloads_total",
                &[("result", "success")]
            ),
            Some(1.0)
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_binds_added_listeners_and_closes_removed_ones() {
    within(60, async {
        let fleet = Fleet::start(&["u1", "u2", "u3"]).await;
        let listener = |name: &str| {
            format!("  - {{ name: {name}, listen: 127.0.0.1:0, protocol: http, pool: api }}\n")
        };
        let config = |listeners: &str| {
            format!(
                "admin:\n  listen: 127.0.0.1:0\nlisteners:\n{listeners}pools:\n  api:\n    upstreams:\n{}",
                support::upstreams_yaml(&fleet.members)
            )
        };
        let dir = ConfigDir::new(&config(&(listener("old") + &listener("kept"))));
        let mut proxy = Binary::spawn(dir.path());
        let old = proxy.listener_addr("old").await;
        let kept = proxy.listener_addr("kept").await;
        assert_eq!(client::get(old, "/", &[]).await.status, 200);

        dir.write(&config(&(listener("kept") + &listener("new"))));
        proxy.signal("HUP").await;
        proxy
            .wait_log("configuration reloaded", |l| {
                l["fields"]["listeners_removed"] == "[\"old\"]"
            })
            .await;
        let new = proxy.listener_addr("new").await;
        let reply = client::get(new, "/x", &[("x-session-id", "s")]).await;
        assert_eq!(reply.status, 200);
        assert!(fleet.names().contains(&reply.upstream()));
        assert_eq!(client::get(kept, "/", &[]).await.status, 200, "kept listener");
        assert!(
            client::refused(old).await,
            "the removed listener still answers"
        );

        proxy.signal("TERM").await;
        assert_eq!(proxy.wait().await.code(), Some(0));
    })
    .await
}

/// A refused reload changes nothing that serves: neither a bad certificate (refused while the
/// snapshot is built) nor a port in use (refused after it was built) may apply the file's
/// `drain: true`, its per-session series bounds, or leave metric series of an upstream that
/// never went live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reload_changes_nothing_live() {
    within(60, async {
        let fleet = Fleet::start(&["u1", "u2", "u3", "u4"]).await;
        let base = &fleet.members[..3];
        let good = web_config(base, "", "");
        let proxy = Proxy::start_yaml(&good).await;
        let limits = proxy.server.metrics().sessions.limits();
        let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let bad_cert = proxy.config.file("bad.pem", "not a certificate");

        // u1 drained, u4 added, a smaller series bound; each file refused for its own reason.
        let refused_body = |listener: &str| {
            let mut members: Vec<String> = base
                .iter()
                .map(|(n, a)| {
                    let drain = if n == "u1" { ", drain: true" } else { "" };
                    format!("      - {{ name: {n}, addr: \"{a}\"{drain} }}\n")
                })
                .collect();
            members.push(format!("      - {{ name: u4, addr: \"{}\" }}\n", fleet.members[3].1));
            let yaml = web_config(&[], listener, "").replace(
                "admin:",
                "metrics:\n  max_session_series: 1\n  session_series_idle: 1s\nadmin:",
            );
            format!("{yaml}{}", members.concat())
        };
        let tls_listener = format!(
            "  - name: tls\n    listen: 127.0.0.1:0\n    protocol: http\n    pool: api\n    tls:\n      cert: {c}\n      key: {c}\n",
            c = bad_cert.display()
        );
        let busy_listener = format!(
            "  - name: busy\n    listen: {}\n    protocol: http\n    pool: api\n",
            held.local_addr().expect("addr")
        );
        for (why, listener) in [("certificate", tls_listener), ("port in use", busy_listener)] {
            let err = proxy
                .reload_with(&refused_body(&listener))
                .await
                .expect_err(why);
            assert_eq!(proxy.server.snapshot().version, 1, "{why}: {err}");

            let u1 = support::admin_upstream(proxy.admin(), "u1").await;
            assert_eq!(u1["draining"], false, "{why}: {u1}");
            let mut reached_u1 = 0;
            let mut client = proxy.client("web").await;
            for i in 0..300 {
                let key = format!("{why}-{i}");
                if client.get("/", &[("x-session-id", &key)]).await.upstream() == "u1" {
                    reached_u1 += 1;
                }
            }
            assert!(reached_u1 > 30, "{why}: {reached_u1} of 300 new keys reached u1");
            assert_eq!(proxy.server.metrics().sessions.limits(), limits, "{why}");
            let text = proxy.metrics_text().await;
            assert!(
                !text.contains("upstream=\"u4\""),
                "{why}: series of the refused upstream u4:\n{text}"
            );
        }

        // The same drain in a file that is accepted does apply.
        let accepted = refused_body("");
        proxy.reload_with(&accepted).await.expect("accepted reload");
        let u1 = support::admin_upstream(proxy.admin(), "u1").await;
        assert_eq!(u1["draining"], true, "{u1}");
        assert_eq!(proxy.server.metrics().sessions.limits().0, 1);
    })
    .await
}
