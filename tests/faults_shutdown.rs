//! Fault injection: SIGTERM under load. Twenty HTTP requests held by a slow upstream and five
//! JSON-RPC requests delayed by a node are in flight, and keep-alive clients keep sending, when the
//! real binary gets SIGTERM: new connections are refused at once, every request in flight gets
//! its answer within the grace period, no client sees an error status, and the process exits 0.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sessiongate::mockcli::Fault;
use support::binary::Binary;
use support::client::{self, Client};
use support::jsonrpc::{session_params, CliFleet, RpcClient};
use support::nodes::HttpNode;
use support::upstream::{self, named};
use support::{eventually, upstreams_yaml, within, ConfigDir};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const HELD: usize = 20;
const GRACE: Duration = Duration::from_secs(10);

fn config(
    api: &[(String, std::net::SocketAddr)],
    slow: &[(String, std::net::SocketAddr)],
    fleet: &[(String, std::net::SocketAddr)],
) -> String {
    format!(
        "admin:
  listen: 127.0.0.1:0
shutdown_grace: 10s
listeners:
  - {{ name: web, listen: \"127.0.0.1:0\", protocol: http, pool: api }}
  - {{ name: held, listen: \"127.0.0.1:0\", protocol: http, pool: slow }}
  - {{ name: cli, listen: \"127.0.0.1:0\", protocol: jsonrpc, pool: fleet }}
pools:
  api:
    upstreams:
{}  slow:
    request_timeout: 30s
    upstreams:
{}  fleet:
    request_timeout: 30s
    upstreams:
{}",
        upstreams_yaml(api),
        upstreams_yaml(slow),
        upstreams_yaml(fleet)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_in_flight_work_refuses_new_connections_and_exits_0() {
    within(60, async {
        let ok = HttpNode::start("ok").await;
        let arrived = Arc::new(AtomicU64::new(0));
        let gate = CancellationToken::new();
        let (count, open) = (arrived.clone(), gate.clone());
        let slow = upstream::serve_fn(move |_req| {
            let (count, open) = (count.clone(), open.clone());
            async move {
                count.fetch_add(1, Ordering::SeqCst);
                open.cancelled().await;
                named("slow", "finished")
            }
        })
        .await;
        let fleet = CliFleet::start(1).await;
        let dir = ConfigDir::new(&config(
            &[ok.member()],
            &[("slow".to_owned(), slow.addr)],
            &fleet.members(),
        ));
        let mut proxy = Binary::spawn(dir.path());
        let web = proxy.listener_addr("web").await;
        let held_addr = proxy.listener_addr("held").await;
        let cli = proxy.listener_addr("cli").await;

        // Keep-alive load on `web` until the proxy closes the connection.
        let stop = Arc::new(AtomicBool::new(false));
        let mut load = Vec::new();
        for t in 0..4 {
            let stop = stop.clone();
            load.push(tokio::spawn(async move {
                let mut client = Client::h1(web).await;
                let (mut answered, mut bad) = (0u64, Vec::new());
                for i in 0..1_000_000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let key = format!("k{t}-{i}");
                    match client.try_get(&format!("/?session={key}"), &[]).await {
                        Ok(r) if r.status == 200 => answered += 1,
                        Ok(r) => bad.push(r.status.as_u16()),
                        // Closed by the draining proxy between requests: the end of this client.
                        Err(_) => break,
                    }
                }
                (answered, bad)
            }));
        }

        let mut held = Vec::new();
        for _ in 0..HELD {
            let mut client = Client::h1(held_addr).await;
            held.push(tokio::spawn(
                async move { client.try_get("/slow", &[]).await },
            ));
        }
        eventually("every held request reached the slow upstream", || {
            arrived.load(Ordering::SeqCst) == HELD as u64
        })
        .await;

        let node = &fleet.clis[0];
        let mut rpc = RpcClient::connect(cli).await;
        let sid = uuid::Uuid::new_v4().to_string();
        rpc.result("session.create", session_params(&sid, json!({})))
            .await;
        node.set_fault("session.getMessages", Fault::Delay(Duration::from_secs(1)));
        let mut pending = Vec::new();
        for _ in 0..5 {
            pending.push(
                rpc.request("session.getMessages", session_params(&sid, json!({})))
                    .await,
            );
        }
        eventually("the delayed JSON-RPC requests reached the node", || {
            node.requests_for("session.getMessages") == 5
        })
        .await;

        let term = Instant::now();
        proxy.signal("TERM").await;
        proxy
            .wait_log("stopped accepting; draining connections", |_| true)
            .await;
        assert!(client::refused(web).await, "web accepted after SIGTERM");
        assert!(
            client::refused(held_addr).await,
            "held accepted after SIGTERM"
        );
        assert!(
            TcpStream::connect(cli).await.is_err(),
            "cli accepted after SIGTERM"
        );

        gate.cancel();
        for request in held {
            let reply = request
                .await
                .expect("held client")
                .expect("a held request was cut by the shutdown");
            assert_eq!(reply.status, 200);
            assert_eq!(reply.body, "finished");
        }
        for id in &pending {
            let resp = rpc.response(id).await;
            assert!(resp.get("result").is_some(), "in-flight JSON-RPC: {resp}");
        }
        let status = proxy.wait().await;
        let drained = term.elapsed();
        stop.store(true, Ordering::SeqCst);
        let mut answered = 0;
        for task in load {
            let (n, bad) = task.await.expect("load client");
            assert!(bad.is_empty(), "load got statuses {bad:?}");
            answered += n;
        }
        assert_eq!(status.code(), Some(0));
        assert!(drained < GRACE, "exit took {drained:?}");
        assert!(answered > 0);
        eprintln!(
            "SIGTERM: {HELD} held HTTP + 5 delayed JSON-RPC requests answered, {answered} load \
             requests all 200, exit 0 {drained:?} after the signal"
        );
    })
    .await
}
