//! Upstream HTTP connection pooling with hyper-util's client (keep-alive reuse bounded by
//! `pool_max_idle_per_upstream`), behind a connector that applies the connect timeout and keeps
//! `sessiongate_upstream_connections_active` exact by counting open sockets.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::body::Incoming;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::IntGauge;
use tokio::net::TcpStream;
use tower_service::Service;

use crate::config::PoolConfig;
use crate::metrics::Metrics;

/// The client used to forward HTTP requests to one upstream; cheap to clone.
pub type HttpClient = Client<UpstreamConnector, Incoming>;

pub fn http_client(pool: &PoolConfig, upstream: &str, metrics: &Metrics) -> HttpClient {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(pool.connect_timeout));
    http.set_nodelay(true);
    let connector = UpstreamConnector {
        inner: http,
        open: metrics
            .upstream_connections_active
            .with_label_values(&[&pool.name, upstream]),
    };
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(pool.pool_max_idle_per_upstream)
        .pool_idle_timeout(pool.pool_idle_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .set_host(false)
        .build(connector)
}

/// Connects to an upstream and counts the connection while it is open.
#[derive(Clone, Debug)]
pub struct UpstreamConnector {
    inner: HttpConnector,
    open: IntGauge,
}

impl Service<Uri> for UpstreamConnector {
    type Response = CountedIo;
    type Error = <HttpConnector as Service<Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<CountedIo, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = self.inner.call(dst);
        let open = self.open.clone();
        Box::pin(async move {
            let io = connecting.await?;
            open.inc();
            Ok(CountedIo { io, open })
        })
    }
}

/// A TCP stream that decrements the open-connection gauge when dropped.
pub struct CountedIo {
    io: TokioIo<TcpStream>,
    open: IntGauge,
}

impl Drop for CountedIo {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl Connection for CountedIo {
    fn connected(&self) -> Connected {
        // Plain HTTP/1 over TCP: nothing to negotiate. The inner connector's version would attach
        // the socket addresses to every response (an allocation per request nobody reads).
        Connected::new()
    }
}

impl Read for CountedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl Write for CountedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}
