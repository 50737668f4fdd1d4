//! Fault injection: upstreams that accept and never answer, answer half a response or half a
//! frame and close, or answer through a link throttled to 20 bytes/s, in front of the real
//! binary. Timeouts fire (HTTP 504, JSON-RPC `-32007`), broken answers give clear errors (502,
//! `-32001`), the proxy's memory and descriptors stay bounded over repeated rounds, upstream
//! sockets are closed, and a healthy upstream next to them keeps answering.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use support::binary::Binary;
use support::client::Client;
use support::faults::{
    answers_then_closes, throttled, until_sample, HALF_BODY, HALF_FRAME, HALF_HEAD,
};
use support::jsonrpc::{CliFleet, RpcClient};
use support::nodes::HttpNode;
use support::upstream::silent;
use support::{within, ConfigDir};
use tokio::task::JoinSet;

/// Rounds after the warm-up one, and concurrent requests per fault per round.
const ROUNDS: usize = 4;
const PER_ROUND: usize = 25;
/// Generous: the proxy's resident set may grow by this much over the rounds after the first.
const RSS_BOUND_KIB: u64 = 16 * 1024;

/// One listener `NAME` of `protocol` in front of a pool `NAME` with one upstream at `addr`;
/// `request_timeout: 1s`, passive ejection off (every request meets the fault itself).
fn config(protocol: &str, upstreams: &[(&str, SocketAddr)]) -> String {
    let mut listeners = String::new();
    let mut pools = String::new();
    for (name, addr) in upstreams {
        listeners += &format!(
            "  - {{ name: {name}, listen: \"127.0.0.1:0\", protocol: {protocol}, pool: {name} }}\n"
        );
        pools += &format!(
            "  {name}:
    connect_timeout: 1s
    request_timeout: 1s
    passive: {{ consecutive_failures: 0 }}
    upstreams:
      - {{ name: {name}, addr: \"{addr}\" }}
"
        );
    }
    format!(
        "admin:\n  listen: 127.0.0.1:0\nshutdown_grace: 2s\nlisteners:\n{listeners}pools:\n{pools}"
    )
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .count()
}

/// What one HTTP request on a fresh connection got: the status, or the client's error.
async fn http_once(addr: SocketAddr) -> (Result<u16, String>, Duration) {
    let started = Instant::now();
    let mut client = Client::h1(addr).await;
    let got = client
        .try_get("/", &[])
        .await
        .map(|r| r.status.as_u16())
        .map_err(|e| e.to_string());
    (got, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_upstreams_that_stall_or_break_time_out_cleanly() {
    within(90, async {
        let ok = HttpNode::start("ok").await;
        let slow_target = HttpNode::start("slow").await;
        let never = silent().await;
        let half_head = answers_then_closes(HALF_HEAD).await;
        let half_body = answers_then_closes(HALF_BODY).await;
        let slow = throttled(slow_target.addr, 20).await;
        let faults = [
            ("silent", never.addr),
            ("halfhead", half_head.addr),
            ("halfbody", half_body.addr),
            ("slow", slow.addr),
        ];
        let dir = ConfigDir::new(&config("http", &[&faults[..], &[("ok", ok.addr)]].concat()));
        let mut proxy = Binary::spawn(dir.path());
        let admin = proxy.listener_addr("admin").await;
        let mut addrs = Vec::new();
        for (name, _) in faults {
            addrs.push((name, proxy.listener_addr(name).await));
        }
        let ok_addr = proxy.listener_addr("ok").await;
        let mut ok_client = Client::h1(ok_addr).await;

        let mut slowest = std::collections::BTreeMap::<&str, Duration>::new();
        // What each fault produced: "504", "502", or the client's error (the body broke).
        let mut outcomes = std::collections::BTreeMap::<(&str, String), usize>::new();
        let mut rss = Vec::new();
        let mut fds = Vec::new();
        for round in 0..=ROUNDS {
            let mut requests = JoinSet::new();
            for (name, addr) in &addrs {
                for _ in 0..PER_ROUND {
                    let (name, addr) = (*name, *addr);
                    requests.spawn(async move { (name, http_once(addr).await) });
                }
            }
            // The healthy upstream answers while the others misbehave.
            for _ in 0..20 {
                assert_eq!(ok_client.get("/", &[]).await.status, 200);
            }
            while let Some(done) = requests.join_next().await {
                let (name, (got, took)) = done.expect("request task");
                match (name, &got) {
                    ("silent" | "slow", Ok(504)) => {
                        assert!(
                            took >= Duration::from_millis(900),
                            "{name}: 504 after {took:?}"
                        );
                    }
                    ("halfhead", Ok(502)) => {}
                    // The head went out before the body broke: the client must see the break.
                    ("halfbody", Ok(502) | Err(_)) => {}
                    _ => panic!("{name}: got {got:?}"),
                }
                assert!(took < Duration::from_secs(3), "{name}: took {took:?}");
                let worst = slowest.entry(name).or_default();
                *worst = (*worst).max(took);
                let what = match got {
                    Ok(status) => status.to_string(),
                    Err(e) => format!("client error: {e}"),
                };
                *outcomes.entry((name, what)).or_default() += 1;
            }
            for (name, _) in &addrs {
                let labels = [("listener", *name)];
                until_sample(admin, "sessiongate_connections_active", &labels, 0.0, 5).await;
                let labels = [("pool", *name), ("upstream", *name)];
                until_sample(
                    admin,
                    "sessiongate_upstream_connections_active",
                    &labels,
                    0.0,
                    5,
                )
                .await;
            }
            rss.push(proxy.rss_kib());
            fds.push(open_fds(proxy.pid()));
            if round == 0 {
                eprintln!(
                    "HTTP stall: after the warm-up round {} KiB, {} fds",
                    rss[0], fds[0]
                );
            }
        }
        let growth = rss[ROUNDS].saturating_sub(rss[0]);
        eprintln!(
            "HTTP stall: {} requests per fault; outcomes {outcomes:?}; slowest answer per fault \
             {slowest:?}; RSS per round {rss:?} KiB (growth after warm-up {growth} KiB); fds per \
             round {fds:?}",
            (ROUNDS + 1) * PER_ROUND
        );
        assert!(growth < RSS_BOUND_KIB, "RSS grew {growth} KiB: {rss:?}");
        assert!(fds[ROUNDS] <= fds[0] + 4, "descriptors leak: {fds:?}");
        assert_eq!(ok_client.get("/", &[]).await.status, 200);
    })
    .await
}

/// One `ping` on a fresh connection: the response and how long it took.
async fn ping_once(addr: SocketAddr) -> (serde_json::Value, Duration) {
    let started = Instant::now();
    let mut client = RpcClient::connect(addr).await;
    let resp = client.call("ping", json!({ "message": "fault" })).await;
    (resp, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonrpc_nodes_that_stall_or_break_time_out_cleanly() {
    within(90, async {
        let fleet = CliFleet::start(2).await;
        let never = silent().await;
        let half_frame = answers_then_closes(HALF_FRAME).await;
        let slow = throttled(fleet.clis[1].addr(), 20).await;
        let faults = [
            ("silent", never.addr),
            ("halfframe", half_frame.addr),
            ("slow", slow.addr),
        ];
        let all = [&faults[..], &[("ok", fleet.clis[0].addr())]].concat();
        let dir = ConfigDir::new(&config("jsonrpc", &all));
        let mut proxy = Binary::spawn(dir.path());
        let admin = proxy.listener_addr("admin").await;
        let mut addrs = Vec::new();
        for (name, _) in faults {
            addrs.push((name, proxy.listener_addr(name).await));
        }
        let mut ok_client = RpcClient::connect(proxy.listener_addr("ok").await).await;

        let mut slowest = std::collections::BTreeMap::<&str, Duration>::new();
        let mut rss = Vec::new();
        let mut fds = Vec::new();
        for _ in 0..=ROUNDS {
            let mut requests = JoinSet::new();
            for (name, addr) in &addrs {
                for _ in 0..PER_ROUND {
                    let (name, addr) = (*name, *addr);
                    requests.spawn(async move { (name, ping_once(addr).await) });
                }
            }
            for _ in 0..20 {
                let pong = ok_client.result("ping", json!({ "message": "ok" })).await;
                assert!(pong.is_object(), "{pong}");
            }
            while let Some(done) = requests.join_next().await {
                let (name, (resp, took)) = done.expect("request task");
                let err = &resp["error"];
                match name {
                    "silent" | "slow" => {
                        assert_eq!(err["code"], -32007, "{name}: {resp}");
                        assert_eq!(err["data"]["upstream"], name, "{resp}");
                        assert_eq!(err["data"]["method"], "ping", "{resp}");
                        assert!(took >= Duration::from_millis(900), "{name}: after {took:?}");
                    }
                    _ => assert_eq!(err["code"], -32001, "{name}: {resp}"),
                }
                assert!(took < Duration::from_secs(3), "{name}: took {took:?}");
                let worst = slowest.entry(name).or_default();
                *worst = (*worst).max(took);
            }
            for (name, _) in &addrs {
                let labels = [("listener", *name)];
                until_sample(admin, "sessiongate_connections_active", &labels, 0.0, 5).await;
                let labels = [("pool", *name), ("upstream", *name)];
                until_sample(
                    admin,
                    "sessiongate_upstream_connections_active",
                    &labels,
                    0.0,
                    5,
                )
                .await;
            }
            rss.push(proxy.rss_kib());
            fds.push(open_fds(proxy.pid()));
        }
        let growth = rss[ROUNDS].saturating_sub(rss[0]);
        eprintln!(
            "JSON-RPC stall: {} requests per fault; slowest answer per fault {slowest:?}; RSS \
             per round {rss:?} KiB (growth after warm-up {growth} KiB); fds per round {fds:?}",
            (ROUNDS + 1) * PER_ROUND
        );
        assert!(growth < RSS_BOUND_KIB, "RSS grew {growth} KiB: {rss:?}");
        assert!(fds[ROUNDS] <= fds[0] + 4, "descriptors leak: {fds:?}");
        let pong = ok_client
            .result("ping", json!({ "message": "after" }))
            .await;
        assert!(pong.is_object());
    })
    .await
}
