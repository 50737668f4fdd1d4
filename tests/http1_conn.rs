//! The owned HTTP/1.1 connection (`proxy::h1`) as a client sees it: sequential, pipelined and
//! half-sent requests, request bodies (slow ones, and ones the upstream answers before reading),
//! streamed responses, upgrades, h2c, the idle timeout and shutdown. Between requests a
//! plain-TCP connection frees its buffers and waits for readability; nothing a client can see
//! may change for it, whatever the pauses.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use support::client::{full, Client};
use support::upstream::{self, Fleet, Mock};
use support::{web_config, within, Proxy};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

// ----- helpers ------------------------------------------------------------------------------

/// A client pausing: the proxy's side of the connection goes idle (buffers freed, waiting for
/// readability). Nothing signals that to the client, so the pause itself is the behaviour under
/// test.
async fn park_pause() {
    tokio::time::sleep(Duration::from_millis(150)).await;
}

/// One raw HTTP/1.1 client connection: requests are written byte for byte, so a test controls
/// exactly how they are split and pipelined.
struct Raw {
    conn: BufReader<TcpStream>,
}

/// A response read from a [`Raw`] connection.
#[derive(Debug)]
struct RawReply {
    status: u16,
    /// Header names lowercased.
    headers: Vec<(String, String)>,
    body: String,
}

impl RawReply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The proxy must never mark a keep-alive response as the connection's last.
    fn assert_keeps_alive(&self) {
        let close = self
            .header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("close"));
        assert!(!close, "Connection: close on {self:?}");
    }
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        Raw {
            conn: BufReader::new(tcp),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.conn.get_mut().write_all(bytes).await.expect("write");
    }

    /// Read one response: Content-Length or chunked body.
    async fn response(&mut self) -> RawReply {
        let status_line = self.line().await;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let line = self.line().await;
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once(':').expect("header line");
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
        let mut reply = RawReply {
            status,
            headers,
            body: String::new(),
        };
        let mut body = Vec::new();
        if let Some(len) = reply.header("content-length") {
            body.resize(len.parse().expect("content-length"), 0);
            self.conn.read_exact(&mut body).await.expect("body");
        } else if reply.header("transfer-encoding") == Some("chunked") {
            loop {
                let size = usize::from_str_radix(&self.line().await, 16).expect("chunk size");
                let mut chunk = vec![0; size + 2];
                self.conn.read_exact(&mut chunk).await.expect("chunk");
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        }
        reply.body = String::from_utf8(body).expect("utf-8 body");
        reply
    }

    async fn line(&mut self) -> String {
        let mut line = String::new();
        let n = self.conn.read_line(&mut line).await.expect("read");
        assert!(n > 0, "connection closed while a response was expected");
        line.trim_end_matches(['\r', '\n']).to_owned()
    }

    /// Whether the proxy closes the connection (end of stream, or reset) without sending more.
    async fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        match self.conn.read_to_end(&mut rest).await {
            Ok(_) => rest.is_empty(),
            Err(_) => true,
        }
    }
}

fn get(path: &str, key: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\nX-Session-Id: {key}\r\n\r\n")
}

fn post(path: &str, key: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nX-Session-Id: {key}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// An upstream answering `METHOD PATH BODY` for every request.
async fn echo_upstream() -> Mock {
    upstream::serve_fn(|req: Request<Incoming>| async move {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.expect("request body").to_bytes();
        let text = format!(
            "{} {} {}",
            parts.method,
            parts.uri.path(),
            String::from_utf8_lossy(&body)
        );
        upstream::named("echo", text)
    })
    .await
}

fn one_upstream(mock: &Mock, listener_extra: &str) -> String {
    web_config(&[("echo".to_owned(), mock.addr)], listener_extra, "")
}

// ----- through the proxy --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sequential_keep_alive_requests_on_one_connection_all_succeed() {
    within(60, async {
        let echo = echo_upstream().await;
        let proxy = Proxy::start_yaml(&one_upstream(&echo, "")).await;
        let mut client = proxy.client("web").await;
        for i in 0..300 {
            let key = format!("k{}", i % 7);
            let reply = if i % 3 == 0 {
                let req = client
                    .request(Method::POST, &format!("/post/{i}"))
                    .header("x-session-id", &key)
                    .body(full(format!("body {i}")))
                    .expect("request");
                let resp = client.send(req).await.expect("POST");
                support::Reply::read(resp).await.expect("reply")
            } else {
                client
                    .get(&format!("/get/{i}"), &[("x-session-id", &key)])
                    .await
            };
            assert_eq!(reply.status, 200, "request {i}: {reply:?}");
            let want = if i % 3 == 0 {
                format!("POST /post/{i} body {i}")
            } else {
                format!("GET /get/{i} ")
            };
            assert_eq!(reply.body, want);
            assert!(!reply.headers.contains_key("connection"), "{reply:?}");
            if i % 60 == 59 {
                park_pause().await;
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    within(30, async {
        let echo = echo_upstream().await;
        let proxy = Proxy::start_yaml(&one_upstream(&echo, "")).await;
        let mut raw = Raw::connect(proxy.addr("web")).await;
        let batch = [get("/1", "a"), post("/2", "b", "two"), get("/3", "c")].concat();
        raw.send(batch.as_bytes()).await;
        for want in ["GET /1 ", "POST /2 two", "GET /3 "] {
            let reply = raw.response().await;
            assert_eq!((reply.status, reply.body.as_str()), (200, want));
            reply.assert_keeps_alive();
        }
        // Parked once the pipeline has drained; a pipelined batch then opens the next round.
        park_pause().await;
        raw.send([get("/4", "d"), get("/5", "e")].concat().as_bytes())
            .await;
        for want in ["GET /4 ", "GET /5 "] {
            let reply = raw.response().await;
            assert_eq!((reply.status, reply.body.as_str()), (200, want));
            reply.assert_keeps_alive();
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_head_completed_later_is_answered() {
    within(30, async {
        let echo = echo_upstream().await;
        let proxy = Proxy::start_yaml(&one_upstream(&echo, "")).await;
        let mut raw = Raw::connect(proxy.addr("web")).await;
        let second = get("/second", "k");
        let (head, tail) = second.split_at(25);

        // A first request and half of the next in one write: the half is carried over the park.
        raw.send(format!("{}{head}", get("/first", "k")).as_bytes())
            .await;
        let reply = raw.response().await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "GET /first "));
        reply.assert_keeps_alive();
        park_pause().await;
        raw.send(tail.as_bytes()).await;
        let reply = raw.response().await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "GET /second "));
        reply.assert_keeps_alive();

        // Half a head on a parked connection, a pause longer than the park delay (a round that
        // began with half a head is not idle), then the rest.
        park_pause().await;
        let third = get("/third", "k");
        let (head, tail) = third.split_at(12);
        raw.send(head.as_bytes()).await;
        park_pause().await;
        raw.send(tail.as_bytes()).await;
        let reply = raw.response().await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "GET /third "));
        reply.assert_keeps_alive();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowly_arriving_request_body_is_forwarded_whole() {
    within(30, async {
        // The upstream reports the first chunk of a body, then answers with the whole body.
        let (first_chunk, mut got_first) = mpsc::channel::<()>(1);
        let slow = upstream::serve_fn(move |req: Request<Incoming>| {
            let first_chunk = first_chunk.clone();
            async move {
                let mut body = req.into_body();
                let mut all = Vec::new();
                while let Some(frame) = body.frame().await {
                    if let Ok(data) = frame.expect("frame").into_data() {
                        if all.is_empty() {
                            let _ = first_chunk.send(()).await;
                        }
                        all.extend_from_slice(&data);
                    }
                }
                upstream::named("slow", all)
            }
        })
        .await;
        let proxy = Proxy::start_yaml(&one_upstream(&slow, "")).await;
        let mut raw = Raw::connect(proxy.addr("web")).await;
        for round in 0..3 {
            raw.send(
                b"POST /upload HTTP/1.1\r\nHost: test\r\nX-Session-Id: s\r\nContent-Length: 11\r\n\r\nhello",
            )
            .await;
            got_first.recv().await.expect("first chunk reached the upstream");
            // Mid-body is not idle, however long the pause.
            park_pause().await;
            raw.send(b" world").await;
            let reply = raw.response().await;
            assert_eq!((reply.status, reply.body.as_str()), (200, "hello world"), "round {round}");
            reply.assert_keeps_alive();
            park_pause().await;
        }
    })
    .await
}

/// A raw HTTP/1.1 upstream that answers `early` as soon as it has a request head, and only then
/// reads (and discards) the request body, keeping the connection alive.
async fn early_upstream(answered: mpsc::Sender<()>) -> Mock {
    upstream::serve_streams(move |stream| {
        let answered = answered.clone();
        async move {
            let mut conn = BufReader::new(stream);
            loop {
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if conn.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
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
                let answer =
                    "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Upstream: early\r\n\r\nearly";
                if conn.get_mut().write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                let _ = answered.send(()).await;
                let mut body = vec![0; length];
                if conn.read_exact(&mut body).await.is_err() {
                    return;
                }
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_answering_before_reading_the_body_keeps_the_connection_usable() {
    within(30, async {
        let (answered, mut was_answered) = mpsc::channel(4);
        let early = early_upstream(answered).await;
        let proxy = Proxy::start_yaml(&one_upstream(&early, "")).await;
        let mut raw = Raw::connect(proxy.addr("web")).await;
        raw.send(
            b"POST /early HTTP/1.1\r\nHost: test\r\nX-Session-Id: e\r\nContent-Length: 10\r\n\r\n01234",
        )
        .await;
        was_answered.recv().await.expect("upstream answered");
        let reply = raw.response().await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "early"));
        reply.assert_keeps_alive();
        // Answered, but the request is not over: a pause here must not park.
        park_pause().await;
        // The rest of the body, a pause that parks, then another request.
        raw.send(b"56789").await;
        park_pause().await;
        raw.send(get("/after", "e").as_bytes()).await;
        let reply = raw.response().await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "early"));
        reply.assert_keeps_alive();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_response_then_more_requests_on_the_same_connection() {
    within(30, async {
        let release = Arc::new(Notify::new());
        let gate = release.clone();
        let sse = upstream::serve_fn(move |req: Request<Incoming>| {
            let gate = gate.clone();
            async move {
                if req.uri().path() != "/events" {
                    return upstream::named("sse", "plain");
                }
                let (tx, body) = upstream::channel_body();
                tokio::spawn(async move {
                    tx.send(Bytes::from("data: first\n\n")).await.unwrap();
                    gate.notified().await;
                    tx.send(Bytes::from("data: last\n\n")).await.unwrap();
                });
                let mut resp = Response::new(body);
                resp.headers_mut()
                    .insert("content-type", "text/event-stream".parse().unwrap());
                resp
            }
        })
        .await;
        let proxy = Proxy::start_yaml(&one_upstream(&sse, "")).await;
        let mut client = proxy.client("web").await;
        for _ in 0..3 {
            let req = client
                .request(Method::GET, "/events")
                .header("x-session-id", "sse")
                .body(support::client::empty())
                .unwrap();
            let resp = client.send(req).await.expect("events");
            assert_eq!(resp.status(), StatusCode::OK);
            let mut body = resp.into_body();
            let first = body
                .frame()
                .await
                .expect("frame")
                .expect("ok")
                .into_data()
                .unwrap();
            assert_eq!(first, "data: first\n\n");
            // Mid-response is not idle, however long the pause.
            park_pause().await;
            release.notify_one();
            let mut rest = Vec::new();
            while let Some(frame) = body.frame().await {
                rest.extend_from_slice(&frame.expect("frame").into_data().unwrap());
            }
            assert_eq!(rest, b"data: last\n\n");
            park_pause().await;
            let reply = client.get("/plain", &[("x-session-id", "sse")]).await;
            assert_eq!(
                (reply.status, reply.body.as_str()),
                (StatusCode::OK, "plain")
            );
        }
    })
    .await
}

/// An upstream answering plain requests with `plain` and WebSocket upgrades with an echo.
async fn ws_or_plain_upstream() -> Mock {
    upstream::serve_fn(|mut req: Request<Incoming>| async move {
        let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
            return upstream::named("ws", "plain");
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let upgraded = on_upgrade.await.expect("upstream upgrade");
            let mut ws =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            while let Some(Ok(msg)) = ws.next().await {
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    return;
                }
            }
        });
        let mut resp = Response::new(support::client::empty());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert("connection", "upgrade".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert(
            "sec-websocket-accept",
            derive_accept_key(key.as_bytes()).parse().unwrap(),
        );
        resp
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_after_parked_requests_still_tunnels() {
    within(30, async {
        let upstream = ws_or_plain_upstream().await;
        let proxy = Proxy::start_yaml(&one_upstream(&upstream, "")).await;
        let addr = proxy.addr("web");
        let mut raw = Raw::connect(addr).await;
        for _ in 0..2 {
            raw.send(get("/plain", "ws").as_bytes()).await;
            let reply = raw.response().await;
            assert_eq!((reply.status, reply.body.as_str()), (200, "plain"));
            park_pause().await;
        }
        assert!(raw.conn.buffer().is_empty(), "bytes past the last response");
        let tcp = raw.conn.into_inner();
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                format!("ws://{addr}/chat"),
            )
            .unwrap();
        request
            .headers_mut()
            .insert("x-session-id", "ws".parse().unwrap());
        let (mut ws, response) = tokio_tungstenite::client_async(request, tcp)
            .await
            .expect("WebSocket handshake through the proxy");
        assert_eq!(response.status(), 101);
        for msg in [
            Message::Text("hello".into()),
            Message::Binary(vec![1, 2, 3]),
        ] {
            ws.send(msg.clone()).await.unwrap();
            assert_eq!(ws.next().await.expect("echo").expect("frame"), msg);
        }
        ws.close(None).await.unwrap();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upgrade_leaves_the_connection_serving() {
    within(30, async {
        // The demo upstream answers 200 to everything, upgrades included.
        let fleet = Fleet::start(&["plain"]).await;
        let proxy = Proxy::start_yaml(&web_config(&fleet.members, "", "")).await;
        let mut client = proxy.client("web").await;
        let upgrade = [
            ("x-session-id", "u"),
            ("upgrade", "websocket"),
            ("connection", "upgrade"),
        ];
        for _ in 0..3 {
            let reply = client.get("/maybe-ws", &upgrade).await;
            assert_eq!(reply.status, 200, "{reply:?}");
            // hyper keeps the refused upgrade pending: this round must not park.
            park_pause().await;
            let reply = client.get("/after", &[("x-session-id", "u")]).await;
            assert_eq!(reply.status, 200, "{reply:?}");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_is_still_served() {
    within(30, async {
        let fleet = Fleet::start(&["a"]).await;
        let proxy = Proxy::start_yaml(&web_config(&fleet.members, "", "")).await;
        let mut client = Client::h2c(proxy.addr("web")).await;
        for _ in 0..3 {
            let reply = client.get("/h2", &[("x-session-id", "h")]).await;
            assert_eq!(reply.status, 200);
            assert_eq!(reply.version, Version::HTTP_2);
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_is_closed_after_header_read_timeout() {
    within(30, async {
        let echo = echo_upstream().await;
        let yaml = one_upstream(&echo, "    header_read_timeout: 300ms\n");
        let proxy = Proxy::start_yaml(&yaml).await;
        let mut raw = Raw::connect(proxy.addr("web")).await;
        raw.send(get("/once", "t").as_bytes()).await;
        let reply = raw.response().await;
        assert_eq!(reply.status, 200);
        let idle_from = Instant::now();
        assert!(raw.closed().await, "the proxy sent more than one response");
        let idle = idle_from.elapsed();
        assert!(
            idle >= Duration::from_millis(250) && idle < Duration::from_secs(10),
            "closed after {idle:?}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_a_parked_connection_promptly() {
    within(30, async {
        let echo = echo_upstream().await;
        let proxy = Proxy::start_yaml(&one_upstream(&echo, "")).await;
        let mut raw = Raw::connect(proxy.addr("web")).await;
        raw.send(get("/before", "p").as_bytes()).await;
        assert_eq!(raw.response().await.status, 200);
        park_pause().await;

        let started = Instant::now();
        let server = proxy.server.clone();
        let shutdown = tokio::spawn(async move { server.shutdown().await });
        assert!(raw.closed().await, "the proxy sent more than one response");
        assert_eq!(
            shutdown.await.expect("shutdown task"),
            0,
            "connections abandoned"
        );
        // Well within `shutdown_grace` (10s): nothing waited for the idle client.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "shutdown took {:?}",
            started.elapsed()
        );
    })
    .await
}
