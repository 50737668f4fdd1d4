//! Mock upstreams on 127.0.0.1:0: a fleet of named HTTP servers (the demo's), HTTP servers
//! built from a closure, one that never answers, and an address nothing listens on. Each stops
//! when its handle is dropped.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::client::{full, Body, BoxError};

/// Named HTTP upstreams that answer every request with their name (header `x-upstream`).
pub struct Fleet {
    pub members: Vec<(String, SocketAddr)>,
    _stop: DropGuard,
}

impl Fleet {
    pub async fn start(names: &[&str]) -> Fleet {
        let stop = CancellationToken::new();
        let mut members = Vec::new();
        for name in names {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            members.push((name.to_string(), listener.local_addr().expect("addr")));
            tokio::spawn(sessiongate::demo::http_upstream(
                listener,
                name.to_string(),
                stop.clone(),
            ));
        }
        Fleet {
            members,
            _stop: stop.drop_guard(),
        }
    }

    pub fn names(&self) -> Vec<&str> {
        self.members.iter().map(|(n, _)| n.as_str()).collect()
    }
}

/// A mock server; it stops accepting when dropped.
pub struct Mock {
    pub addr: SocketAddr,
    _stop: DropGuard,
}

/// Serve HTTP/1.1 and h2c (with upgrades) on 127.0.0.1:0, answering each request with `f`.
pub async fn serve_fn<F, Fut>(f: F) -> Mock
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    serve_streams(move |stream| {
        let f = f.clone();
        async move {
            let service = hyper::service::service_fn(move |req| {
                let f = f.clone();
                async move { Ok::<_, std::convert::Infallible>(f(req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        }
    })
    .await
}

/// Accept TCP connections on 127.0.0.1:0 and hand each to `f` on its own task.
pub async fn serve_streams<F, Fut>(f: F) -> Mock
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = token.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => return,
                },
            };
            let token = token.clone();
            let conn = f(stream);
            tokio::spawn(async move {
                tokio::select! {
                    _ = conn => {}
                    _ = token.cancelled() => {}
                }
            });
        }
    });
    Mock {
        addr,
        _stop: stop.drop_guard(),
    }
}

/// An upstream that accepts connections and reads requests but never answers.
pub async fn silent() -> Mock {
    serve_streams(|mut stream| async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await
}

/// An address on which nothing listens: connecting to it is refused.
pub fn refused_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// A response whose body is `text` and whose `x-upstream` header is `name`.
pub fn named(name: &str, text: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(full(text));
    resp.headers_mut()
        .insert("x-upstream", name.parse().expect("header value"));
    resp
}

/// A response body fed chunk by chunk through the returned sender; it ends when the sender is
/// dropped.
pub fn channel_body() -> (mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = mpsc::channel(4);
    (tx, http_body_util::BodyExt::boxed(ChannelBody(rx)))
}

struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}
