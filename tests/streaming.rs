//! Bodies and upgrades stream through the proxy: WebSocket echo, a 256 MiB request body with the
//! proxy's peak RSS far below it, and a response whose first chunk arrives before the last one
//! exists.

mod support;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Method;
use http_body_util::BodyExt;
use hyper::body::Frame;
use support::binary::Binary;
use support::client::{BoxError, Client};
use support::upstream::{self, Mock};
use support::{web_config, within, ConfigDir, Proxy};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

fn one_upstream(name: &str, mock: &Mock) -> String {
    web_config(&[(name.to_owned(), mock.addr)], "", "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_proxy() {
    within(30, async {
        let echo = upstream::serve_streams(|stream| async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    return;
                }
            }
        })
        .await;
        let proxy = Proxy::start_yaml(&one_upstream("ws", &echo)).await;
        let addr = proxy.addr("web");

        let mut request = format!("ws://{addr}/chat").into_client_request().unwrap();
        request
            .headers_mut()
            .insert("x-session-id", "ws-1".parse().unwrap());
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut ws, response) = tokio_tungstenite::client_async(request, tcp)
            .await
            .expect("WebSocket handshake through the proxy");
        assert_eq!(response.status(), 101);

        let big: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
        for msg in [
            Message::Text("hello".into()),
            Message::Binary(vec![0, 1, 2, 255]),
            Message::Binary(big),
            Message::Text("bye".into()),
        ] {
            ws.send(msg.clone()).await.unwrap();
            let back = ws.next().await.expect("echo").expect("frame");
            assert_eq!(back, msg);
        }
        ws.close(None).await.unwrap();
    })
    .await
}

/// A request body of `chunks` × `chunk`, produced as it is sent (never held whole).
struct Repeat {
    chunk: Bytes,
    left: usize,
}

impl hyper::body::Body for Repeat {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        self.left -= 1;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.clone()))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_request_body_streams_with_low_proxy_memory() {
    within(300, async {
        // The upstream counts what arrives and answers with the count.
        let counter = upstream::serve_fn(|req| async move {
            let mut body = req.into_body();
            let mut n = 0u64;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.expect("body frame").into_data() {
                    n += data.len() as u64;
                }
            }
            upstream::named("counter", n.to_string())
        })
        .await;
        let dir = ConfigDir::new(&one_upstream("counter", &counter));
        let mut proxy = Binary::spawn(dir.path());
        let addr = proxy.listener_addr("web").await;

        const CHUNK: usize = 256 * 1024;
        const CHUNKS: usize = 1024;
        let body = Repeat {
            chunk: Bytes::from(vec![b'x'; CHUNK]),
            left: CHUNKS,
        };
        let mut client = Client::h1(addr).await;
        let req = client
            .request(Method::POST, "/upload")
            .header("x-session-id", "big")
            .body(body.boxed())
            .unwrap();
        let resp = client.send(req).await.expect("upload");
        let reply = support::client::Reply::read(resp).await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body, (CHUNK * CHUNKS).to_string(), "bytes received");

        let peak_mib = proxy.peak_rss_kib() / 1024;
        assert!(
            peak_mib < 64,
            "proxy peak RSS {peak_mib} MiB for a 256 MiB body"
        );
        proxy.signal("TERM").await;
        assert_eq!(proxy.wait().await.code(), Some(0));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_response_flushes_each_chunk_as_it_arrives() {
    within(30, async {
        let release = Arc::new(Notify::new());
        let upstream_release = release.clone();
        let sse = upstream::serve_fn(move |_req| {
            let release = upstream_release.clone();
            async move {
                let (tx, body) = upstream::channel_body();
                tokio::spawn(async move {
                    tx.send(Bytes::from("data: first\n\n")).await.unwrap();
                    // The last event does not exist until the test has seen the first.
                    release.notified().await;
                    tx.send(Bytes::from("data: last\n\n")).await.unwrap();
                });
                let mut resp = http::Response::new(body);
                resp.headers_mut()
                    .insert("content-type", "text/event-stream".parse().unwrap());
                resp
            }
        })
        .await;
        let proxy = Proxy::start_yaml(&one_upstream("sse", &sse)).await;
        let mut client = proxy.client("web").await;
        let req = client
            .request(Method::GET, "/events")
            .body(support::client::empty())
            .unwrap();
        let resp = client.send(req).await.expect("response head");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let mut body = resp.into_body();

        let mut seen = Vec::new();
        while !seen.ends_with(b"data: first\n\n") {
            let frame = body.frame().await.expect("first event").unwrap();
            seen.extend_from_slice(&frame.into_data().unwrap_or_default());
            assert!(seen.len() <= 13, "unexpected bytes: {seen:?}");
        }
        release.notify_one();
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(rest, "data: last\n\n");
    })
    .await
}
