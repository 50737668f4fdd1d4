//! Parked connections (`proxy::h1::parked`): a plain-TCP HTTP/1.1 connection idle for
//! `PARK_AFTER` leaves its task for the parker and comes back when bytes arrive. The client
//! must not be able to tell: its next requests are answered on the same connection, whole or
//! in pieces, first request or later; a parked connection still counts as open, closes at its
//! deadline, when the client goes, and at shutdown, and every gauge comes back to zero.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::upstream::Fleet;
use support::{metric_value, poll_until, web_config, within, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\nX-Session-Id: parked\r\n\r\n")
}

/// Read one response with a `Content-Length` body; its status and body.
async fn response(tcp: &mut TcpStream) -> (u16, String) {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let n = tcp.read(&mut byte).await.expect("read head");
        assert_eq!(n, 1, "closed before a response head: {got:?}");
        got.push(byte[0]);
    }
    let head = String::from_utf8(got).expect("head");
    let status = head[9..12].parse().expect("status");
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .expect("content-length");
    let mut body = vec![0; len];
    tcp.read_exact(&mut body).await.expect("body");
    (status, String::from_utf8(body).expect("body text"))
}

/// Whether the proxy closed the connection without sending anything more.
async fn closed(tcp: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    match tcp.read_to_end(&mut rest).await {
        Ok(_) => rest.is_empty(),
        Err(_) => true,
    }
}

async fn gauge(proxy: &Proxy, name: &str) -> f64 {
    let text = proxy.metrics_text().await;
    metric_value(&text, name, &[("listener", "web")]).unwrap_or(-1.0)
}

async fn parked_until(proxy: &Proxy, n: f64) {
    poll_until(&format!("{n} connections parked"), 10, || async {
        gauge(proxy, "sessiongate_connections_parked").await == n
    })
    .await;
}

/// A proxy in front of one upstream `a`, with extra listener lines (the fleet must stay alive).
async fn proxy_with(listener_extra: &str) -> (Fleet, Proxy) {
    let fleet = Fleet::start(&["a"]).await;
    let proxy = Proxy::start_yaml(&web_config(&fleet.members, listener_extra, "")).await;
    (fleet, proxy)
}

async fn connect(addr: SocketAddr) -> TcpStream {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    tcp
}

/// A connection that made one request and then parked (the only one parked so far).
async fn parked_connection(proxy: &Proxy) -> TcpStream {
    let mut tcp = connect(proxy.addr("web")).await;
    tcp.write_all(get("/once").as_bytes()).await.unwrap();
    assert_eq!(response(&mut tcp).await.0, 200);
    parked_until(proxy, 1.0).await;
    tcp
}

/// Nothing parked and no connection open.
async fn all_freed(proxy: &Proxy) {
    parked_until(proxy, 0.0).await;
    poll_until("no connection open", 10, || async {
        gauge(proxy, "sessiongate_connections_active").await == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_answers_its_next_requests_on_the_same_connection() {
    within(30, async {
        let (_fleet, proxy) = proxy_with("").await;
        let mut tcp = connect(proxy.addr("web")).await;
        tcp.write_all(get("/one").as_bytes()).await.unwrap();
        assert_eq!(response(&mut tcp).await.0, 200);
        parked_until(&proxy, 1.0).await;
        // Parked, it still counts as an open connection.
        assert_eq!(gauge(&proxy, "sessiongate_connections_active").await, 1.0);

        // A whole request wakes it.
        tcp.write_all(get("/two").as_bytes()).await.unwrap();
        let (status, body) = response(&mut tcp).await;
        assert_eq!(status, 200);
        assert!(body.starts_with("a answered GET /two "), "{body}");
        parked_until(&proxy, 1.0).await;

        // So does half of one; the rest follows later.
        let request = get("/three");
        let (first, rest) = request.as_bytes().split_at(10);
        tcp.write_all(first).await.unwrap();
        parked_until(&proxy, 0.0).await;
        tcp.write_all(rest).await.unwrap();
        assert_eq!(response(&mut tcp).await.0, 200);

        let text = proxy.metrics_text().await;
        assert_eq!(
            metric_value(
                &text,
                "sessiongate_connections_total",
                &[("listener", "web")]
            ),
            Some(1.0),
            "every request came on the one connection"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_parked_before_its_first_request_is_served() {
    within(30, async {
        let (_fleet, proxy) = proxy_with("").await;
        let mut tcp = connect(proxy.addr("web")).await;
        parked_until(&proxy, 1.0).await;
        tcp.write_all(get("/first").as_bytes()).await.unwrap();
        let (status, body) = response(&mut tcp).await;
        assert_eq!(status, 200);
        assert!(body.starts_with("a answered GET /first "), "{body}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_closes_at_its_deadline_and_frees_its_place() {
    within(30, async {
        let (_fleet, proxy) = proxy_with("    header_read_timeout: 1s\n").await;
        let idle_from = Instant::now();
        let mut tcp = parked_connection(&proxy).await;
        assert!(
            closed(&mut tcp).await,
            "the proxy sent more than one response"
        );
        let idle = idle_from.elapsed();
        assert!(
            idle >= Duration::from_millis(900) && idle < Duration::from_secs(10),
            "closed after {idle:?}"
        );
        all_freed(&proxy).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_the_client_closes_is_freed() {
    within(30, async {
        let (_fleet, proxy) = proxy_with("").await;
        let tcp = parked_connection(&proxy).await;
        drop(tcp);
        all_freed(&proxy).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_holds_its_place_under_max_connections() {
    within(30, async {
        let (_fleet, proxy) = proxy_with("    max_connections: 1\n").await;
        let first = parked_connection(&proxy).await;

        // The second connection waits in the backlog: not accepted while the first is open.
        let mut second = connect(proxy.addr("web")).await;
        second.write_all(get("/two").as_bytes()).await.unwrap();
        let text = proxy.metrics_text().await;
        assert_eq!(
            metric_value(
                &text,
                "sessiongate_connections_total",
                &[("listener", "web")]
            ),
            Some(1.0)
        );
        drop(first);
        assert_eq!(response(&mut second).await.0, 200);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_parked_connections_and_waits_for_nothing() {
    within(30, async {
        let (_fleet, proxy) = proxy_with("").await;
        let mut clients = Vec::new();
        for _ in 0..3 {
            let mut tcp = connect(proxy.addr("web")).await;
            tcp.write_all(get("/once").as_bytes()).await.unwrap();
            assert_eq!(response(&mut tcp).await.0, 200);
            clients.push(tcp);
        }
        parked_until(&proxy, 3.0).await;
        let started = Instant::now();
        assert_eq!(proxy.server.shutdown().await, 0, "connections abandoned");
        for tcp in &mut clients {
            assert!(closed(tcp).await, "the proxy sent more than one response");
        }
        // Well within `shutdown_grace` (10s): nothing waited for the idle clients.
        assert!(started.elapsed() < Duration::from_secs(5));
    })
    .await
}
