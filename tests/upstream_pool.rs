//! Upstream keep-alive reuse (src/upstream/conns.rs for HTTP/1.1, pool.rs for HTTP/2) seen from
//! outside: how many connections an upstream accepts for a given traffic pattern,
//! `sessiongate_upstream_connections_active`, and sockets the upstream closes while idle.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use hyper_util::rt::TokioIo;
use support::client::{empty, full, Client};
use support::upstream::{channel_body, serve_streams, Mock};
use support::{metric_value, poll_until, web_config, within, Proxy};

/// What the test upstream does with each request.
#[derive(Clone, Copy)]
enum Answer {
    /// 200 with a short body, keep-alive.
    Ok,
    /// 200 with `Connection: close`.
    Close,
    /// 204, no body.
    NoContent,
    /// 200 with a body that never ends.
    Endless,
}

/// An HTTP/1.1 upstream that counts the connections that carried a request (health probes
/// connect too, and are not counted).
async fn counting_upstream(answer: Answer) -> (Mock, Arc<AtomicUsize>) {
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let mock = serve_streams(move |stream| {
        let count = count.clone();
        let counted = Arc::new(AtomicBool::new(false));
        async move {
            let service = hyper::service::service_fn(move |_req| {
                if !counted.swap(true, Ordering::SeqCst) {
                    count.fetch_add(1, Ordering::SeqCst);
                }
                async move {
                    let resp = match answer {
                        Answer::Ok => Response::new(full("hello\n")),
                        Answer::Close => Response::builder()
                            .header("connection", "close")
                            .body(full("bye\n"))
                            .expect("response"),
                        Answer::NoContent => Response::builder()
                            .status(StatusCode::NO_CONTENT)
                            .body(empty())
                            .expect("response"),
                        Answer::Endless => {
                            let (tx, body) = channel_body();
                            tokio::spawn(async move {
                                let chunk = Bytes::from(vec![b'x'; 16 * 1024]);
                                while tx.send(chunk.clone()).await.is_ok() {}
                            });
                            Response::new(body)
                        }
                    };
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    })
    .await;
    (mock, accepted)
}

fn config(upstream: SocketAddr, pool_extra: &str) -> String {
    web_config(&[("u1".to_string(), upstream)], "", pool_extra)
}

async fn open_upstream_connections(proxy: &Proxy) -> f64 {
    let text = proxy.metrics_text().await;
    let labels = [("pool", "api"), ("upstream", "u1")];
    metric_value(&text, "sessiongate_upstream_connections_active", &labels).unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_share_one_upstream_connection() {
    within(30, async {
        let (upstream, accepted) = counting_upstream(Answer::Ok).await;
        let proxy = Proxy::start_yaml(&config(upstream.addr, "")).await;
        // Separate client connections too: the pool belongs to the upstream, not the client.
        for _ in 0..4 {
            let mut client = proxy.client("web").await;
            for i in 0..5 {
                let reply = client.get("/", &[("x-session-id", &format!("k{i}"))]).await;
                assert_eq!(reply.status, 200);
                assert_eq!(reply.body, "hello\n");
            }
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(open_upstream_connections(&proxy).await, 1.0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_bodies_return_their_connection() {
    within(30, async {
        let (upstream, accepted) = counting_upstream(Answer::NoContent).await;
        let proxy = Proxy::start_yaml(&config(upstream.addr, "")).await;
        let mut client = proxy.client("web").await;
        for _ in 0..5 {
            assert_eq!(client.get("/", &[("x-session-id", "a")]).await.status, 204);
            let head = client
                .request(Method::HEAD, "/")
                .header("x-session-id", "a")
                .body(empty())
                .expect("request");
            let resp = client.send(head).await.expect("HEAD");
            assert_eq!(resp.status(), 204);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_closing_after_each_answer_costs_the_client_nothing() {
    within(30, async {
        let (upstream, accepted) = counting_upstream(Answer::Close).await;
        let proxy = Proxy::start_yaml(&config(upstream.addr, "")).await;
        let mut client = proxy.client("web").await;
        for _ in 0..10 {
            let reply = client.get("/", &[("x-session-id", "a")]).await;
            assert_eq!(reply.status, 200);
            assert_eq!(reply.body, "bye\n");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 10);
        poll_until("closed upstream connections uncounted", 10, || async {
            open_upstream_connections(&proxy).await == 0.0
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_beyond_the_bound_or_past_the_timeout_close() {
    within(30, async {
        let (upstream, accepted) = counting_upstream(Answer::Ok).await;
        let extra = "    pool_max_idle_per_upstream: 2\n    pool_idle_timeout: 300ms\n";
        let proxy = Proxy::start_yaml(&config(upstream.addr, extra)).await;
        // Eight requests in flight at once need eight upstream connections.
        let addr = proxy.addr("web");
        let gate = Arc::new(tokio::sync::Barrier::new(8));
        let mut clients = Vec::new();
        for i in 0..8 {
            let gate = gate.clone();
            clients.push(tokio::spawn(async move {
                let mut client = Client::h1(addr).await;
                gate.wait().await;
                client.get("/", &[("x-session-id", &format!("c{i}"))]).await
            }));
        }
        for c in clients {
            assert_eq!(c.await.expect("client").status, 200);
        }
        let opened = accepted.load(Ordering::SeqCst);
        assert!((1..=8).contains(&opened), "{opened} upstream connections");
        // At most two stay idle; then the timeout closes those too.
        poll_until("at most 2 idle upstream connections", 10, || async {
            open_upstream_connections(&proxy).await <= 2.0
        })
        .await;
        poll_until("idle upstream connections closed", 10, || async {
            open_upstream_connections(&proxy).await == 0.0
        })
        .await;
        // And the next request simply opens a new one.
        let reply = support::client::get(addr, "/", &[("x-session-id", "after")]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(accepted.load(Ordering::SeqCst), opened + 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_abandoned_mid_body_does_not_return_its_connection() {
    within(30, async {
        let (endless, endless_accepted) = counting_upstream(Answer::Endless).await;
        let proxy = Proxy::start_yaml(&config(endless.addr, "")).await;
        for round in 1..=2 {
            let mut client = proxy.client("web").await;
            let req = client
                .request(Method::GET, "/")
                .header("x-session-id", "a")
                .body(empty())
                .expect("request");
            let resp = client.send(req).await.expect("response head");
            assert_eq!(resp.status(), 200);
            let mut body = resp.into_body();
            let first = http_body_util::BodyExt::frame(&mut body).await;
            assert!(first.is_some_and(|f| f.is_ok()), "a first chunk");
            drop(body);
            drop(client);
            // The abandoned connection is closed, not pooled: the next round opens another.
            poll_until("abandoned upstream connection closed", 10, || async {
                open_upstream_connections(&proxy).await == 0.0
            })
            .await;
            assert_eq!(endless_accepted.load(Ordering::SeqCst), round);
        }
    })
    .await;
}

/// A raw upstream that answers one request per connection with a keep-alive answer, then closes
/// the socket anyway (as an upstream whose idle timeout is shorter than the proxy's does) and
/// reports each close.
async fn closing_while_idle(closed: tokio::sync::mpsc::UnboundedSender<()>) -> Mock {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    serve_streams(move |stream| {
        let closed = closed.clone();
        async move {
            let mut conn = BufReader::new(stream);
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if conn.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return; // a health probe's connect, or a client gone
                }
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse().expect("content-length");
                    }
                }
            }
            let mut body = vec![0; length];
            conn.read_exact(&mut body).await.expect("body");
            let answer = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
            conn.get_mut()
                .write_all(answer.as_bytes())
                .await
                .expect("answer");
            drop(conn);
            let _ = closed.send(());
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_the_upstream_closed_while_idle_cost_no_request_whatever_its_method() {
    within(30, async {
        let (closed_tx, mut closed) = tokio::sync::mpsc::unbounded_channel();
        let upstream = closing_while_idle(closed_tx).await;
        let proxy = Proxy::start_yaml(&config(upstream.addr, "")).await;
        let mut client = proxy.client("web").await;
        // Each answer leaves an idle socket the upstream then closes: a GET may be sent again
        // on a new socket, a POST must never meet the closed one.
        for (i, method) in [
            Method::GET,
            Method::POST,
            Method::POST,
            Method::GET,
            Method::PUT,
        ]
        .into_iter()
        .enumerate()
        {
            let req = client
                .request(method.clone(), "/")
                .header("x-session-id", "a")
                .body(full(format!("body {i}")))
                .expect("request");
            let resp = client.send(req).await.expect("answer");
            assert_eq!(resp.status(), StatusCode::OK, "{method} #{i}");
            closed.recv().await.expect("the upstream closed its socket");
        }
    })
    .await;
}
