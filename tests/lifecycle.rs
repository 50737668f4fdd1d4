//! Graceful shutdown: a request in flight when shutdown begins still gets its answer, new
//! connections are refused, and the process exits 0 — for the in-process server and for SIGTERM
//! on the real binary.

mod support;

use std::sync::Arc;

use support::binary::Binary;
use support::client::{self, Client, Reply};
use support::upstream::{self, Mock};
use support::{web_config, within, ConfigDir, Proxy};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

/// An upstream that tells the test a request arrived, then holds the answer until released.
struct Held {
    mock: Mock,
    arrived: mpsc::Receiver<()>,
    release: Arc<Notify>,
}

async fn held_upstream() -> Held {
    let (tx, arrived) = mpsc::channel(1);
    let release = Arc::new(Notify::new());
    let gate = release.clone();
    let mock = upstream::serve_fn(move |_req| {
        let (tx, gate) = (tx.clone(), gate.clone());
        async move {
            let _ = tx.send(()).await;
            gate.notified().await;
            upstream::named("held", "finished")
        }
    })
    .await;
    Held {
        mock,
        arrived,
        release,
    }
}

fn config(held: &Held) -> String {
    web_config(&[("held".to_owned(), held.mock.addr)], "", "")
}

/// Start a request on its own connection and wait until the upstream holds it.
async fn in_flight(addr: std::net::SocketAddr, held: &mut Held) -> JoinHandle<Reply> {
    let mut client = Client::h1(addr).await;
    let request = tokio::spawn(async move { client.get("/slow", &[]).await });
    held.arrived
        .recv()
        .await
        .expect("request reached the upstream");
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_request_in_flight_and_refuses_new_ones() {
    within(30, async {
        let mut held = held_upstream().await;
        let proxy = Proxy::start_yaml(&config(&held)).await;
        let addr = proxy.addr("web");
        let request = in_flight(addr, &mut held).await;

        let server = proxy.server.clone();
        let shutdown = tokio::spawn(async move { server.shutdown().await });
        proxy.shutdown.token.cancelled().await;
        assert!(client::refused(addr).await, "accepted after shutdown began");
        assert!(
            !shutdown.is_finished(),
            "shutdown did not wait for the request"
        );

        held.release.notify_one();
        let reply = request.await.expect("client task");
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, "finished");
        assert_eq!(
            shutdown.await.expect("shutdown task"),
            0,
            "connections abandoned"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_0() {
    within(60, async {
        let mut held = held_upstream().await;
        let dir = ConfigDir::new(&config(&held));
        let mut proxy = Binary::spawn(dir.path());
        let addr = proxy.listener_addr("web").await;
        let request = in_flight(addr, &mut held).await;

        proxy.signal("TERM").await;
        proxy
            .wait_log("stopped accepting; draining connections", |_| true)
            .await;
        assert!(client::refused(addr).await, "accepted after SIGTERM");

        held.release.notify_one();
        let reply = request.await.expect("client task");
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, "finished");
        assert_eq!(proxy.wait().await.code(), Some(0));
        proxy.wait_log("stopped", |_| true).await;
    })
    .await
}
