//! Session drill-down over real sockets: `/admin/sessions/{id}` against a mock CLI that delays
//! answers by known amounts (latency quantiles within the histogram's documented error),
//! errors and requests in flight, the last methods, unknown sessions, and the
//! `/admin/sessions?top=N&by=…` lists with their bad parameters; the owner with identities;
//! the requests of learned HTTP sessions.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use sessiongate::identity::token_hash;
use sessiongate::mockcli::Fault;
use sessiongate::sessions::histogram::RELATIVE_ERROR;
use support::jsonrpc::{
    create, error_of, jsonrpc_config, session_params, CliFleet, RpcClient, RpcYaml, Setup,
};
use support::{admin_json, client, poll_until, within, ConfigDir, Proxy};

const FAST: Duration = Duration::from_millis(20);
const SLOW: Duration = Duration::from_millis(200);

fn ms(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drill_down_reports_latency_errors_in_flight_and_the_last_methods() {
    let s = Setup::start(
        1,
        RpcYaml {
            pool: "    request_timeout: 400ms\n",
            ..Default::default()
        },
    )
    .await;
    let admin = s.proxy.admin();
    let cli = s.fleet.get("cli-0");
    within(30, async {
        let mut c = s.client().await;
        let (sid, other) = ("drill-fast-slow", "drill-<b>&timeouts");
        create(&mut c, sid, json!({})).await;
        create(&mut c, other, json!({})).await;

        // Ten answers ~20 ms late, then one ~200 ms late.
        cli.set_fault("session.getMessages", Fault::Delay(FAST));
        for _ in 0..10 {
            c.result("session.getMessages", session_params(sid, json!({})))
                .await;
        }
        cli.set_fault("session.getMessages", Fault::Delay(SLOW));
        c.result("session.getMessages", session_params(sid, json!({})))
            .await;

        let d = admin_json(admin, &format!("/admin/sessions/{sid}")).await;
        assert_eq!(d["session"], sid);
        assert_eq!(d["pool"], "fleet");
        assert_eq!(d["node"], "cli-0");
        assert_eq!(d["addr"], cli.addr().to_string());
        assert!(d["user"].is_null(), "no identities: no user: {d}");
        assert_eq!(d["requests"], 12, "the create and 11 reads: {d}");
        assert_eq!(
            (d["errors"].as_u64(), d["in_flight"].as_u64()),
            (Some(0), Some(0))
        );
        let lat = &d["latency_ms"];
        let (p50, p90, p99, max) = (
            ms(&lat["p50"]),
            ms(&lat["p90"]),
            ms(&lat["p99"]),
            ms(&lat["max"]),
        );
        let fast = FAST.as_secs_f64() * 1000.0;
        let slow = SLOW.as_secs_f64() * 1000.0;
        // A real sample is at least the delay, plus the proxy's and loopback's few ms.
        let within_error = |q: f64, at_least: f64, at_most: f64| {
            q >= at_least / (1.0 + RELATIVE_ERROR) && q <= at_most * (1.0 + RELATIVE_ERROR)
        };
        // Two cores shared with other builds: a fast read may take a few ms more, so the
        // median (robust to one such read) gets the slack, p90 only has to be a fast read's.
        assert!(within_error(p50, fast, fast + 15.0), "p50 {p50}: {d}");
        assert!(
            p90 >= fast / (1.0 + RELATIVE_ERROR) && p90 < slow / (1.0 + RELATIVE_ERROR),
            "p90 {p90}: {d}"
        );
        assert!(max >= slow, "max {max}: {d}");
        assert!(within_error(p99, slow, max) && p99 <= max, "p99 {p99}: {d}");
        for field in ["pinned_since", "last_activity"] {
            let t = d[field].as_str().unwrap_or_default();
            assert!(humantime::parse_rfc3339(t).is_ok(), "{field}: {t:?}");
        }
        let recent = d["recent"].as_array().expect("recent");
        assert_eq!(recent.len(), 10, "the last ten only: {d}");
        assert_eq!(recent[0]["method"], "session.getMessages");
        assert_eq!(recent[0]["outcome"], "ok");
        assert!(ms(&recent[0]["latency_ms"]) >= slow, "newest first: {d}");
        assert!(
            recent[1..].iter().all(|r| {
                let l = ms(&r["latency_ms"]);
                l >= fast && l < slow
            }),
            "{d}"
        );

        // A read the node never answers: in flight, then a timeout (an error).
        cli.set_fault("session.getMessages", Fault::Hang);
        let encoded = "drill-%3Cb%3E%26timeouts";
        let id = c
            .request("session.getMessages", session_params(other, json!({})))
            .await;
        poll_until("the hung read is in flight", 5, || async {
            admin_json(admin, &format!("/admin/sessions/{encoded}")).await["in_flight"] == 1
        })
        .await;
        let resp = c.response(&id).await;
        assert_eq!(error_of(&resp)["code"], -32007, "{resp}");
        let d = admin_json(admin, &format!("/admin/sessions/{encoded}")).await;
        assert_eq!(d["session"], other);
        assert_eq!(
            (d["requests"].as_u64(), d["errors"].as_u64()),
            (Some(2), Some(1)),
            "{d}"
        );
        assert_eq!(d["in_flight"], 0);
        assert_eq!(d["recent"][0]["outcome"], "timeout");
        assert!(ms(&d["latency_ms"]["max"]) >= 400.0, "{d}");

        // Unknown sessions: 404 with a JSON error.
        let reply = client::get(admin, "/admin/sessions/no-such-session", &[]).await;
        assert_eq!(reply.status, 404, "{}", reply.body);
        let body: Value = serde_json::from_str(&reply.body).expect("JSON");
        assert!(body["error"].as_str().unwrap().contains("no-such-session"));
        let reply = client::get(admin, &format!("/admin/sessions/{sid}?pool=elsewhere"), &[]).await;
        assert_eq!(reply.status, 404, "another pool: {}", reply.body);

        // Top lists.
        let ids = |v: &Value| -> Vec<String> {
            v["sessions"]
                .as_array()
                .expect("sessions")
                .iter()
                .map(|s| s["session"].as_str().unwrap().to_owned())
                .collect()
        };
        let by_requests = admin_json(admin, "/admin/sessions?by=requests").await;
        assert_eq!(ids(&by_requests), [sid, other]);
        assert_eq!(
            (by_requests["live"].as_u64(), by_requests["top"].as_u64()),
            (Some(2), Some(20))
        );
        assert_eq!(by_requests["sessions"][0]["requests"], 12);
        assert_eq!(by_requests["sessions"][0]["node"], "cli-0");
        assert_eq!(
            ids(&admin_json(admin, "/admin/sessions?by=errors").await),
            [other, sid]
        );
        assert_eq!(
            ids(&admin_json(admin, "/admin/sessions?by=p99").await),
            [other, sid]
        );
        assert_eq!(
            ids(&admin_json(admin, "/admin/sessions").await),
            [other, sid],
            "recent first"
        );
        let one = admin_json(admin, "/admin/sessions?top=1&by=requests").await;
        assert_eq!(ids(&one), [sid]);
        assert_eq!(one["by"], "requests");
        for bad in ["top=0", "top=abc", "top=1001", "by=latency", "sort=p99"] {
            let reply = client::get(admin, &format!("/admin/sessions?{bad}"), &[]).await;
            assert_eq!(reply.status, 400, "{bad}: {}", reply.body);
            let body: Value = serde_json::from_str(&reply.body).expect("JSON");
            assert!(body["error"].is_string(), "{bad}: {body}");
        }

        // A deleted session is gone from the table at once.
        c.result("session.delete", session_params(sid, json!({})))
            .await;
        let reply = client::get(admin, &format!("/admin/sessions/{sid}"), &[]).await;
        assert_eq!(reply.status, 404, "deleted: {}", reply.body);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_identities_the_drill_down_names_the_sessions_owner() {
    const TOKEN: &str = "drill-alice-token";
    let fleet = CliFleet::start(1).await;
    let extra = RpcYaml {
        top: "identities:\n  tokens_file: tokens.yaml\n",
        listener: "    identity: { from: [token], required: true }\n",
        ..Default::default()
    };
    let dir = ConfigDir::new(&jsonrpc_config(&fleet.members(), extra));
    dir.file(
        "tokens.yaml",
        format!("- {{ sha256: {}, user: alice }}\n", token_hash(TOKEN)),
    );
    let proxy = Proxy::start(dir).await;
    within(30, async {
        let mut c = RpcClient::connect(proxy.addr("cli")).await;
        let resp = c.call("connect", json!({ "token": TOKEN })).await;
        assert!(resp.get("result").is_some(), "connect: {resp}");
        create(&mut c, "alices-session", json!({})).await;
        let d = admin_json(proxy.admin(), "/admin/sessions/alices-session").await;
        assert_eq!(d["user"], "alice", "{d}");
        assert_eq!(d["requests"], 1, "the create: {d}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learned_http_sessions_count_their_requests() {
    use support::issuing;
    let fleet = issuing::issuers(&["m1"]).await;
    let proxy = Proxy::start_yaml(&issuing::config(&fleet.members, "")).await;
    within(30, async {
        let mut c = proxy.client("mcp").await;
        let (id, _) = issuing::initialize(&mut c).await;
        for _ in 0..3 {
            let reply = issuing::send(&mut c, http::Method::POST, Some(&id)).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
        }
        let d = admin_json(proxy.admin(), &format!("/admin/sessions/{id}")).await;
        assert_eq!(
            (d["pool"].as_str(), d["node"].as_str()),
            (Some("mcp"), Some("m1")),
            "{d}"
        );
        assert_eq!(
            d["requests"], 3,
            "the requests after the pin was learned: {d}"
        );
        assert_eq!(d["errors"], 0);
        assert_eq!(d["recent"][0]["method"], "POST");
        assert_eq!(d["in_flight"], 0);
    })
    .await;
}
