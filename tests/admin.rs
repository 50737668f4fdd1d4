//! The admin listener after real traffic: the metric families and their labels, `/healthz`,
//! `/readyz`, and `/admin/ring`.

mod support;

use support::upstream::Fleet;
use support::{client, metric_value, poll_until, web_config, within, Proxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_endpoints_after_traffic() {
    within(30, async {
        let fleet = Fleet::start(&["u1", "u2", "u3"]).await;
        let proxy =
            Proxy::start_yaml(&web_config(&fleet.members, "    no_key: reject\n", "")).await;
        let mut client = proxy.client("web").await;
        let mut per_upstream = std::collections::HashMap::<String, u32>::new();
        for i in 0..30 {
            let key = format!("m{i}");
            let reply = client.get("/", &[("x-session-id", &key)]).await;
            assert_eq!(reply.status, 200);
            *per_upstream.entry(reply.upstream().to_owned()).or_default() += 1;
        }
        assert_eq!(client.get("/", &[]).await.status, 400);

        let text = proxy.metrics_text().await;
        for (upstream, n) in &per_upstream {
            let web = [("listener", "web"), ("pool", "api"), ("upstream", upstream)];
            let ok = [web.as_slice(), &[("code", "200")]].concat();
            assert_eq!(
                metric_value(&text, "sessiongate_requests_total", &ok),
                Some(f64::from(*n)),
                "{upstream}\n{text}"
            );
            assert_eq!(
                metric_value(&text, "sessiongate_request_duration_seconds_count", &web),
                Some(f64::from(*n)),
                "{upstream}"
            );
        }
        let rejected = [("listener", "web"), ("upstream", "none"), ("code", "400")];
        assert_eq!(
            metric_value(&text, "sessiongate_requests_total", &rejected),
            Some(1.0)
        );
        assert!(text.contains("# TYPE sessiongate_request_duration_seconds histogram"));
        // Our keep-alive client is the listener's one open connection.
        assert_eq!(
            metric_value(
                &text,
                "sessiongate_connections_active",
                &[("listener", "web")]
            ),
            Some(1.0)
        );
        // The proxy keeps its upstream connections alive in its pool after the requests.
        let upstream_open: f64 = fleet
            .names()
            .iter()
            .map(|u| {
                metric_value(
                    &text,
                    "sessiongate_upstream_connections_active",
                    &[("pool", "api"), ("upstream", u)],
                )
                .unwrap_or_else(|| panic!("upstream_connections_active for {u}"))
            })
            .sum();
        assert!(
            upstream_open >= 3.0,
            "pooled upstream connections: {upstream_open}"
        );
        for result in ["success", "failure"] {
            assert_eq!(
                metric_value(
                    &text,
                    "sessiongate_config_reloads_total",
                    &[("result", result)]
                ),
                Some(0.0)
            );
        }
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            metric_value(&text, "sessiongate_build_info", &[("version", version)]),
            Some(1.0)
        );

        let admin = proxy.admin();
        let healthz = support::client::get(admin, "/healthz", &[]).await;
        assert_eq!(healthz.status, 200);
        let readyz = support::client::get(admin, "/readyz", &[]).await;
        assert_eq!(readyz.status, 200, "{}", readyz.body);

        let ring = support::client::get(admin, "/admin/ring?pool=api", &[]).await;
        assert_eq!(ring.status, 200);
        let ring: serde_json::Value = serde_json::from_str(&ring.body).unwrap();
        let shares: f64 = ring["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["share"].as_f64().unwrap())
            .sum();
        assert!((shares - 1.0).abs() < 1e-9, "shares sum to {shares}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connections_gauge_follows_clients_opening_and_closing() {
    within(30, async {
        let fleet = Fleet::start(&["u1"]).await;
        let proxy = Proxy::start_yaml(&web_config(&fleet.members, "", "")).await;
        let active = || async {
            let text = proxy.metrics_text().await;
            metric_value(
                &text,
                "sessiongate_connections_active",
                &[("listener", "web")],
            )
        };
        let mut a = proxy.client("web").await;
        let mut b = proxy.client("web").await;
        for client in [&mut a, &mut b] {
            assert_eq!(client.get("/", &[("x-session-id", "k")]).await.status, 200);
        }
        assert_eq!(active().await, Some(2.0));
        drop(a);
        poll_until("one client connection left", 10, || async {
            active().await == Some(1.0)
        })
        .await;
        drop(b);
        poll_until("no client connection left", 10, || async {
            active().await == Some(0.0)
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_guards_admin_paths_and_optionally_the_probes() {
    const TOKEN: &str = "admin-secret-5b1e0c";
    std::env::set_var("SG_ADMIN_TEST_TOKEN", TOKEN);
    within(30, async {
        let fleet = Fleet::start(&["u1"]).await;
        let base = web_config(&fleet.members, "", "");
        let guarded = base.replace(
            "  listen: 127.0.0.1:0\nshutdown_grace",
            "  listen: 127.0.0.1:0\n  token_env: SG_ADMIN_TEST_TOKEN\nshutdown_grace",
        );
        assert_ne!(guarded, base);
        let proxy = Proxy::start_yaml(&guarded).await;
        let admin = proxy.admin();
        let get = |path: &'static str, token: Option<&'static str>| async move {
            let auth = token.map(|t| format!("Bearer {t}"));
            let headers: Vec<(&str, &str)> =
                auth.iter().map(|a| ("authorization", a.as_str())).collect();
            client::get(admin, path, &headers).await
        };
        for path in [
            "/admin/ring?pool=api",
            "/admin/upstreams",
            "/admin/route?pool=api&key=k",
            "/admin/sessions?top=5",
            "/",
        ] {
            for token in [None, Some("wrong")] {
                let reply = get(path, token).await;
                assert_eq!(reply.status, 401, "{path} {token:?}: {}", reply.body);
                assert!(reply.headers.contains_key("www-authenticate"));
            }
            let reply = get(path, Some(TOKEN)).await;
            assert_eq!(reply.status, 200, "{path}: {}", reply.body);
            assert!(!reply.body.contains(TOKEN), "{path} shows the token");
        }
        for path in ["/metrics", "/healthz", "/readyz"] {
            assert_eq!(get(path, None).await.status, 200, "{path} stays open");
        }
        assert!(!get("/metrics", None).await.body.contains(TOKEN));

        // Protected probes: the same token, now for everything. A reload applies it.
        let protected = guarded.replace(
            "  token_env: SG_ADMIN_TEST_TOKEN\n",
            "  token_env: SG_ADMIN_TEST_TOKEN\n  protect_probes: true\n",
        );
        proxy.reload_with(&protected).await.expect("reload");
        for path in ["/metrics", "/healthz", "/readyz"] {
            assert_eq!(get(path, None).await.status, 401, "{path}");
            assert_eq!(get(path, Some(TOKEN)).await.status, 200, "{path}");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_against_a_guarded_admin_sends_the_files_token() {
    std::env::set_var("SG_ADMIN_CHECK_TOKEN", "check-token-9f1");
    within(30, async {
        let fleet = Fleet::start(&["u1"]).await;
        let yaml = web_config(&fleet.members, "", "").replace(
            "  listen: 127.0.0.1:0\nshutdown_grace",
            "  listen: 127.0.0.1:0\n  token_env: SG_ADMIN_CHECK_TOKEN\nshutdown_grace",
        );
        let proxy = Proxy::start_yaml(&yaml).await;
        let url = format!("http://{}", proxy.admin());
        let config = proxy.config.path().to_owned();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_sessiongate"))
                .args(["check", "--against", &url, "--config"])
                .arg(&config)
                .output()
                .expect("run sessiongate")
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("\"live_sessions\""), "{stdout}");
        assert!(!stdout.contains("check-token-9f1"));
    })
    .await
}
