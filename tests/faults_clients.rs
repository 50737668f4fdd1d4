//! Fault injection: clients that vanish. HTTP clients that reset the connection halfway through
//! a request body or while an upstream streams to them (SSE), and a JSON-RPC client that goes
//! with requests pending on a node: the real binary frees what they held (the connection gauges
//! return to where they were, the upstream sees its side closed, the session has nothing in
//! flight) and the same upstreams keep serving others.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::json;
use sessiongate::mockcli::Fault;
use sessiongate::wire::codec::encode_frame;
use support::binary::Binary;
use support::client::Client;
use support::faults::{sample, until_sample};
use support::jsonrpc::{session_params, CliFleet, RpcClient};
use support::upstream::{self, channel_body};
use support::{admin_json, eventually, poll_until, upstreams_yaml, within, ConfigDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const VANISHING: usize = 10;

fn config(protocol: &str, pool: &str, members: &[(String, SocketAddr)]) -> String {
    config_timeout(protocol, pool, members, "30s")
}

fn config_timeout(
    protocol: &str,
    pool: &str,
    members: &[(String, SocketAddr)],
    request_timeout: &str,
) -> String {
    format!(
        "admin:
  listen: 127.0.0.1:0
shutdown_grace: 2s
listeners:
  - {{ name: front, listen: \"127.0.0.1:0\", protocol: {protocol}, pool: {pool} }}
pools:
  {pool}:
    request_timeout: {request_timeout}
    upstreams:
{}",
        upstreams_yaml(members)
    )
}

/// Upstream-side counts: requests that arrived, and bodies or streams that ended because the
/// other side went away.
#[derive(Default)]
struct Seen {
    arrived: AtomicU64,
    broken: AtomicU64,
}

/// Connect, send `head` and `body` raw, wait (up to 2s) until `arrived` counts this request,
/// then reset the connection (zero linger: RST, no FIN). Whether the request arrived.
async fn send_and_reset(addr: SocketAddr, head: &str, body: &[u8], seen: &Seen, nth: u64) -> bool {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(head.as_bytes()).await.expect("write head");
    tcp.write_all(body).await.expect("write body");
    let mut arrived = false;
    for _ in 0..200 {
        arrived = seen.arrived.load(Ordering::SeqCst) >= nth;
        if arrived {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tcp.set_zero_linger().expect("SO_LINGER 0");
    drop(tcp);
    arrived
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_clients_that_reset_mid_body_free_the_upstream_connection() {
    within(60, async {
        let seen = Arc::new(Seen::default());
        let counts = seen.clone();
        let up = upstream::serve_fn(move |req| {
            let counts = counts.clone();
            async move {
                counts.arrived.fetch_add(1, Ordering::SeqCst);
                match req.into_body().collect().await {
                    Ok(body) => upstream::named("body", format!("{}", body.to_bytes().len())),
                    Err(_) => {
                        counts.broken.fetch_add(1, Ordering::SeqCst);
                        upstream::named("body", "broken")
                    }
                }
            }
        })
        .await;
        let members = [("body".to_owned(), up.addr)];
        let dir = ConfigDir::new(&config("http", "api", &members));
        let mut proxy = Binary::spawn(dir.path());
        let front = proxy.listener_addr("front").await;
        let admin = proxy.listener_addr("admin").await;

        let head =
            format!("POST /upload HTTP/1.1\r\nhost: {front}\r\ncontent-length: 100000\r\n\r\n");
        let mut reached = 0;
        for n in 1..=VANISHING as u64 {
            if !send_and_reset(front, &head, &[b'x'; 1000], &seen, n).await {
                break;
            }
            reached += 1;
        }
        // The clients broke these requests, not the upstream: its health must not suffer.
        let upstream_labels = [("pool", "api"), ("upstream", "body")];
        let ejections = sample(
            admin,
            "sessiongate_upstream_ejections_total",
            &upstream_labels,
        )
        .await;
        assert_eq!(
            (reached, ejections),
            (VANISHING, 0.0),
            "clients that reset mid-upload must not count as failures of the upstream \
             (passive ejection, `consecutive_failures: 5` by default): after {reached} resets \
             the healthy upstream was ejected and the next request never reached it, so any \
             client could take every upstream of a pool out"
        );
        eventually("the upstream saw every body break", || {
            seen.broken.load(Ordering::SeqCst) == VANISHING as u64
        })
        .await;
        until_connections(admin, 0.0, &upstream_labels, 0.0).await;

        // The same upstream still serves a whole request.
        let mut client = Client::h1(front).await;
        let req = client
            .request(http::Method::POST, "/upload")
            .body(support::client::full(vec![b'y'; 5000]))
            .expect("request");
        let reply = support::Reply::read(client.send(req).await.expect("POST"))
            .await
            .expect("answer");
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, "5000");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_clients_that_drop_a_stream_free_the_upstream_stream() {
    within(60, async {
        let seen = Arc::new(Seen::default());
        let counts = seen.clone();
        let up = upstream::serve_fn(move |_req| {
            let counts = counts.clone();
            async move {
                counts.arrived.fetch_add(1, Ordering::SeqCst);
                let (tx, body) = channel_body();
                // Events every 20ms until the body is dropped (the proxy let go of it).
                tokio::spawn(async move {
                    let mut ticker = tokio::time::interval(Duration::from_millis(20));
                    for i in 0..3000 {
                        ticker.tick().await;
                        let event = Bytes::from(format!("data: tick {i}\n\n"));
                        if tx.send(event).await.is_err() {
                            counts.broken.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                });
                let mut resp = http::Response::new(body);
                resp.headers_mut()
                    .insert("content-type", "text/event-stream".parse().expect("value"));
                resp
            }
        })
        .await;
        let members = [("sse".to_owned(), up.addr)];
        let dir = ConfigDir::new(&config("http", "api", &members));
        let mut proxy = Binary::spawn(dir.path());
        let front = proxy.listener_addr("front").await;
        let admin = proxy.listener_addr("admin").await;

        let head =
            format!("GET /events HTTP/1.1\r\nhost: {front}\r\naccept: text/event-stream\r\n\r\n");
        for n in 1..=VANISHING as u64 {
            let mut tcp = TcpStream::connect(front).await.expect("connect");
            tcp.write_all(head.as_bytes()).await.expect("write");
            // Read until the first event has come through, then vanish.
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !String::from_utf8_lossy(&got).contains("data: tick") {
                let n = tcp.read(&mut buf).await.expect("read");
                assert!(n > 0, "stream closed before its first event");
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(seen.arrived.load(Ordering::SeqCst), n);
            if n % 2 == 0 {
                tcp.set_zero_linger().expect("SO_LINGER 0");
            }
            drop(tcp);
        }
        eventually("the upstream saw every stream dropped", || {
            seen.broken.load(Ordering::SeqCst) == VANISHING as u64
        })
        .await;
        let upstream_labels = [("pool", "api"), ("upstream", "sse")];
        until_connections(admin, 0.0, &upstream_labels, 0.0).await;
    })
    .await
}

/// Open a raw connection to `front` and send five `session.getMetadata` requests for `sid`.
async fn five_pending(front: SocketAddr, sid: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(front).await.expect("connect");
    let mut frames = bytes::BytesMut::new();
    for id in 0..5 {
        let msg = json!({"jsonrpc": "2.0", "id": id, "method": "session.getMetadata",
                         "params": session_params(sid, json!({}))});
        encode_frame(msg.to_string().as_bytes(), &mut frames);
    }
    tcp.write_all(&frames).await.expect("write frames");
    tcp
}

/// The pool's `request_timeout`: a vanished client's pending requests must not wait for it.
const RPC_TIMEOUT_SECS: u64 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jsonrpc_client_that_vanishes_with_requests_pending_frees_them() {
    within(60, async {
        let fleet = CliFleet::start(1).await;
        let node = &fleet.clis[0];
        let timeout = format!("{RPC_TIMEOUT_SECS}s");
        let dir = ConfigDir::new(&config_timeout(
            "jsonrpc",
            "fleet",
            &fleet.members(),
            &timeout,
        ));
        let mut proxy = Binary::spawn(dir.path());
        let front = proxy.listener_addr("front").await;
        let admin = proxy.listener_addr("admin").await;
        let link_labels = [("pool", "fleet"), ("upstream", "cli-0")];

        // The one who stays: sessions on the same node, used before and after.
        let mut stays = RpcClient::connect(front).await;
        let (kept, gone) = (
            uuid::Uuid::new_v4().to_string(),
            uuid::Uuid::new_v4().to_string(),
        );
        for sid in [&kept, &gone] {
            stays
                .result("session.create", session_params(sid, json!({})))
                .await;
        }
        let links_before = sample(
            admin,
            "sessiongate_upstream_connections_active",
            &link_labels,
        )
        .await;
        assert!(
            links_before >= 1.0,
            "no link counted for the staying client"
        );
        node.set_fault("session.getMetadata", Fault::Hang);
        let path = format!("/admin/sessions/{gone}");

        // Reset (RST): the proxy reads the error at once.
        let mut figures = Vec::new();
        for (round, reset) in [(1, true), (2, false)] {
            let vanishing = five_pending(front, &gone).await;
            eventually("the hung requests reached the node", || {
                node.requests_for("session.getMetadata") == 5 * round
            })
            .await;
            poll_until("five requests in flight", 5, || async {
                admin_json(admin, &path).await["in_flight"] == 5
            })
            .await;
            if reset {
                vanishing.set_zero_linger().expect("SO_LINGER 0");
            }
            let left = std::time::Instant::now();
            drop(vanishing);
            poll_until(
                "nothing in flight for the vanished client",
                RPC_TIMEOUT_SECS + 3,
                || async { admin_json(admin, &path).await["in_flight"] == 0 },
            )
            .await;
            let freed = left.elapsed();
            until_connections(admin, 1.0, &link_labels, links_before).await;
            figures.push((if reset { "RST" } else { "FIN" }, freed));
        }
        eprintln!("JSON-RPC client gone with 5 requests pending: freed after {figures:?}");
        assert!(
            figures[0].1 < Duration::from_secs(RPC_TIMEOUT_SECS),
            "a reset client's pending requests waited for request_timeout: {figures:?}"
        );

        node.clear_faults();
        let meta = stays
            .result("session.getMetadata", session_params(&kept, json!({})))
            .await;
        assert!(meta.is_object(), "{meta}");
        let messages = stays
            .result("session.getMessages", session_params(&kept, json!({})))
            .await;
        assert!(!messages.is_null());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jsonrpc_client_that_vanishes_while_its_node_waits_for_its_answer_is_freed() {
    within(60, async {
        let fleet = CliFleet::start(1).await;
        let timeout = format!("{RPC_TIMEOUT_SECS}s");
        let dir = ConfigDir::new(&config_timeout(
            "jsonrpc",
            "fleet",
            &fleet.members(),
            &timeout,
        ));
        let mut proxy = Binary::spawn(dir.path());
        let front = proxy.listener_addr("front").await;
        let admin = proxy.listener_addr("admin").await;

        // The node asks the client (`hooks.invoke`) before it answers `session.send`: the
        // request's clock pauses while the node waits for the client.
        let mut client = RpcClient::connect(front).await;
        let sid = uuid::Uuid::new_v4().to_string();
        client
            .result(
                "session.create",
                session_params(&sid, json!({ "hooks": true })),
            )
            .await;
        client
            .request(
                "session.send",
                session_params(&sid, json!({ "prompt": "hi" })),
            )
            .await;
        client.server_request("hooks.invoke").await;
        let path = format!("/admin/sessions/{sid}");
        assert_eq!(admin_json(admin, &path).await["in_flight"], 1);

        // The client closes its connection without answering: nobody can answer the node now.
        drop(client);
        let left = std::time::Instant::now();
        poll_until(
            "nothing in flight once the client is gone",
            RPC_TIMEOUT_SECS + 3,
            || async { admin_json(admin, &path).await["in_flight"] == 0 },
        )
        .await;
        let link_labels = [("pool", "fleet"), ("upstream", "cli-0")];
        until_connections(admin, 0.0, &link_labels, 0.0).await;
        eprintln!(
            "JSON-RPC client gone while its node waited for it: freed after {:?}",
            left.elapsed()
        );
    })
    .await
}

/// Wait until the front listener holds `clients` connections and the upstream (`labels`)
/// `upstream` ones (5 s at most).
async fn until_connections(
    admin: std::net::SocketAddr,
    clients: f64,
    labels: &[(&str, &str)],
    upstream: f64,
) {
    let front = [("listener", "front")];
    until_sample(admin, "sessiongate_connections_active", &front, clients, 5).await;
    let name = "sessiongate_upstream_connections_active";
    until_sample(admin, name, labels, upstream, 5).await;
}
