//! One owned HTTP/1.1 client connection: read a head, admit the request, forward it
//! ([`super::forward`]) and pass the answer back ([`super::respond`]), repeat. The
//! connection's task owns its client stream, its read and write buffers and, during an
//! exchange, the upstream socket; nothing else touches them. Idle, a plain-TCP connection frees
//! its buffers and waits for readability, and after [`PARK_AFTER`] parks
//! ([`super::parked`]), its task ending until bytes arrive; `header_read_timeout` bounds both
//! the wait for a request (parked or not) and the reading of its head; on shutdown an idle
//! connection closes at once and a busy one after its exchange (its response says
//! `Connection: close`).

use std::future::Future;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use http::header::{HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Either};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::buffers;
use super::chunked::Chunked;
use super::client::{Client, Prefixed};
use super::forward::Exchange;
use super::parked::{Parked, PARK_AFTER};
use super::parse::{self, Framing, HeadError, Parsed, RequestHead};
use super::relay;
use super::write::{self, ToClient};
use crate::proxy::http::{Conn, LogFacts, Logged, ProxyBody};

/// The first bytes of every HTTP/2 connection (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// None of these is an `async fn`: an async fn keeps its arguments and the locals moved out of
// them side by side in its future, and a connection's future is its task's size for as long as
// the client stays connected.

/// Serve one HTTP/1.1 client connection until it closes, fails, idles past
/// `header_read_timeout`, parks ([`super::parked`]) or shutdown ends it.
pub fn serve<T>(io: Client<T>, conn: Conn) -> impl Future<Output = ()>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    run(Connection::new(io, conn), true, None)
}

/// Serve a parked connection that became readable: its wait for a request goes on, bounded by
/// the deadline it parked with.
pub(super) fn resume(
    stream: TcpStream,
    conn: Conn,
    deadline: Instant,
    first: bool,
) -> impl Future<Output = ()> {
    let io = Client::<TcpStream>::Tcp(stream);
    run(Connection::new(io, conn), first, Some(deadline))
}

// An `async fn` would store `c` twice (argument and local) for the connection's life.
#[allow(clippy::manual_async_fn)]
fn run<T>(
    mut c: Connection<T>,
    mut first: bool,
    mut resumed: Option<Instant>,
) -> impl Future<Output = ()>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async move {
        let Some(header_read_timeout) = c.conn.header_read_timeout() else {
            return; // the listener was removed meanwhile
        };
        let shutdown = c.conn.ctx.shutdown.token.clone();
        loop {
            // One clock read per wait: the deadline and the moment to park come from it.
            let now = Instant::now();
            let deadline = resumed.take().unwrap_or(now + header_read_timeout);
            match c
                .next_head(deadline, now + PARK_AFTER, &shutdown, first)
                .await
            {
                Next::Request(head) => {
                    // Boxed: the exchange's state is allocated while it runs, so an idle
                    // connection's task stays small.
                    let keep_alive = Box::pin(c.exchange(head, &shutdown)).await;
                    if !keep_alive || shutdown.is_cancelled() {
                        break;
                    }
                }
                Next::Park => {
                    let Connection { io, conn, .. } = c;
                    if let Client::Tcp(stream) = io {
                        park(stream, conn, deadline, first);
                    }
                    return;
                }
                Next::H2c => {
                    let Connection { io, conn, buf, .. } = c;
                    if let Client::Tcp(stream) = io {
                        let prefix = buf.freeze();
                        let io = Prefixed { prefix, stream };
                        Box::pin(crate::proxy::http::serve_h2(io, Arc::new(conn))).await;
                    }
                    return;
                }
                Next::Refused(status, why) => {
                    c.refuse(status, why).await;
                    break;
                }
                Next::Closed => break,
            }
            first = false;
        }
        let _ = c.io.shutdown().await;
    }
}

/// Hand an idle connection to the parker (dropping it, which closes it, if its socket cannot
/// leave tokio's reactor).
fn park(stream: TcpStream, conn: Conn, deadline: Instant, first: bool) {
    let ctx = conn.ctx.clone();
    match stream.into_std() {
        Ok(stream) => ctx.parking.park(Parked {
            stream,
            conn,
            deadline,
            first,
            span: tracing::Span::current(),
        }),
        Err(e) => tracing::debug!(error = %e, "could not park an idle connection; closing it"),
    }
}

/// What waiting for the next request gave.
// Made once per request and moved straight into the exchange: boxing the head would cost an
// allocation per request for nothing.
#[allow(clippy::large_enum_variant)]
enum Next {
    Request(RequestHead),
    /// The HTTP/2 prior-knowledge preface.
    H2c,
    /// A head that cannot be served: answered with this status, then the connection closes.
    Refused(StatusCode, String),
    /// Closed by the client, idle past the timeout, or shutdown while idle.
    Closed,
    /// Idle for [`PARK_AFTER`]: the connection parks.
    Park,
}

/// How the client sent its request, for how its answer goes back.
#[derive(Debug, Clone, Copy)]
pub(super) struct Side {
    pub(super) http10: bool,
    pub(super) keep_alive: bool,
    pub(super) head_request: bool,
}

impl Side {
    pub(super) fn to_client(self, close: bool) -> ToClient {
        let close = close || !self.keep_alive;
        ToClient {
            chunked: false,
            close,
            keep_alive_10: self.http10 && !close,
            upgrade: false,
        }
    }
}

/// How an exchange ended, for the access log and the connection.
pub(super) struct Ended {
    pub(super) status: StatusCode,
    pub(super) bytes_out: Option<u64>,
    pub(super) keep_alive: bool,
}

struct Connection<T> {
    io: Client<T>,
    conn: Conn,
    /// Bytes read from the client and not yet used.
    buf: BytesMut,
    /// Heads (and small bodies) being written.
    out: Vec<u8>,
}

impl<T> Connection<T>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn new(io: Client<T>, conn: Conn) -> Connection<T> {
        Connection {
            io,
            conn,
            buf: BytesMut::new(),
            out: Vec::new(),
        }
    }

    /// The next request head; `park_at`: when an idle plain-TCP connection parks, if it would
    /// still be open then.
    async fn next_head(
        &mut self,
        deadline: Instant,
        park_at: Instant,
        shutdown: &CancellationToken,
        mut first: bool,
    ) -> Next {
        loop {
            if !self.buf.is_empty() {
                // A plain-TCP connection's first bytes may be the HTTP/2 preface (h2c).
                let mut maybe_h2c = false;
                if first && self.io.parks() {
                    let n = self.buf.len().min(H2_PREFACE.len());
                    match (self.buf[..n] == H2_PREFACE[..n], n == H2_PREFACE.len()) {
                        (true, true) => return Next::H2c,
                        (true, false) => maybe_h2c = true, // too few bytes to tell: read on
                        (false, _) => {}
                    }
                }
                first = maybe_h2c;
                if !maybe_h2c {
                    match parse::request(&mut self.buf) {
                        Ok(Parsed::Complete(head, _)) => return Next::Request(head),
                        Ok(Parsed::Partial) => {}
                        Err(e) => return refused(e),
                    }
                }
            }
            let idle = self.buf.is_empty();
            let mut wake_at = deadline;
            if idle && self.io.parks() {
                // Between requests: hold only the socket (the buffers go back to the thread's
                // spares).
                buffers::give_read(std::mem::take(&mut self.buf));
                buffers::give_write(std::mem::take(&mut self.out));
                let ctx = &self.conn.ctx;
                if park_at < deadline
                    && ctx
                        .parking
                        .available(&ctx.shutdown, &ctx.metrics.connections_parked)
                {
                    wake_at = park_at;
                }
            }
            let (io, buf) = (&mut self.io, &mut self.buf);
            let read = async move {
                if buf.capacity() == 0 {
                    io.ready().await?;
                    *buf = buffers::read_buffer();
                }
                relay::fill(io, buf).await
            };
            let filled = tokio::select! {
                biased;
                _ = shutdown.cancelled(), if idle => return Next::Closed,
                filled = read => filled,
                _ = tokio::time::sleep_until(wake_at) => return match idle {
                    true if wake_at < deadline => Next::Park,
                    true => Next::Closed,
                    false => Next::Refused(
                        StatusCode::REQUEST_TIMEOUT,
                        "request head not received in time".into(),
                    ),
                },
            };
            match filled {
                Ok(true) => {}
                Ok(false) | Err(_) => return Next::Closed,
            }
        }
    }

    /// Answer a head that cannot be served, and close.
    async fn refuse(&mut self, status: StatusCode, why: String) {
        self.out.clear();
        let side = Side {
            http10: false,
            keep_alive: false,
            head_request: false,
        };
        let headers = plain_text();
        let body = format!("{why}\n");
        write::local_response(
            &mut self.out,
            status,
            &headers,
            body.as_bytes(),
            side.to_client(true),
            false,
        );
        let _ = self.io.write_all(&self.out).await;
        self.conn
            .ctx
            .metrics
            .requests_total
            .with_label_values(&[&self.conn.listener, "none", "none", status.as_str()])
            .inc();
    }

    /// One request and its answer; whether the connection stays open.
    async fn exchange(&mut self, head: RequestHead, shutdown: &CancellationToken) -> bool {
        if self.out.capacity() == 0 {
            self.out = buffers::write_buffer();
        }
        let conn = &self.conn;
        let logged = conn
            .ctx
            .access_log
            .sampled()
            .then(|| Logged::new(&head.method, &head.uri, &head.headers));
        let mut facts = logged.as_ref().map(|_| LogFacts::default());
        let side = Side {
            http10: head.version == Version::HTTP_10,
            keep_alive: head.keep_alive,
            head_request: head.method == Method::HEAD,
        };
        let (framing, upgrade) = (head.framing, head.upgrade);
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.method = head.method;
        parts.uri = head.uri;
        parts.version = head.version;
        parts.headers = head.headers;
        let snapshot = conn.ctx.shared.load_full();
        let ended = match conn.admit(&snapshot, &mut parts, &mut facts).await {
            Err(resp) => {
                let unread = discard_body(&mut self.buf, framing);
                answer(&mut self.io, &mut self.out, resp, side, unread).await
            }
            Ok(fwd) => {
                let exchange = Exchange {
                    conn,
                    io: &mut self.io,
                    buf: &mut self.buf,
                    out: &mut self.out,
                    side,
                    shutdown,
                };
                exchange.forward(fwd, parts, framing, upgrade).await
            }
        };
        if let (Some(logged), Some(facts)) = (logged, facts) {
            self.conn.log(logged, facts, ended.status, ended.bytes_out);
        }
        ended.keep_alive
    }
}

fn refused(e: HeadError) -> Next {
    Next::Refused(e.status(), e.to_string())
}

fn plain_text() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers
}

/// Drop a request body the proxy will not forward, when it is already all in `buf`;
/// `true`: it is not, and the connection must close.
pub(super) fn discard_body(buf: &mut BytesMut, framing: Framing) -> bool {
    match framing {
        Framing::Length(n) if buf.len() as u64 >= n => {
            buf.advance(n as usize);
            false
        }
        Framing::Length(_) => true,
        Framing::Chunked => {
            let mut scanner = Chunked::new();
            match scanner.scan(buf, |_| {}) {
                Ok(p) if p.done => {
                    buf.advance(p.used);
                    false
                }
                _ => true,
            }
        }
        Framing::UntilClose => true,
    }
}

/// Write one of the proxy's own answers; `unread_body`: the request's body was not all read,
/// so the connection closes after it.
pub(super) async fn answer<W: AsyncWrite + Unpin>(
    io: &mut W,
    out: &mut Vec<u8>,
    resp: Response<ProxyBody>,
    side: Side,
    unread_body: bool,
) -> Ended {
    let (parts, body) = resp.into_parts();
    let body = match body {
        Either::Right(full) => full
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default(),
        Either::Left(_) => bytes::Bytes::new(),
    };
    let to = side.to_client(unread_body);
    out.clear();
    write::local_response(
        out,
        parts.status,
        &parts.headers,
        &body,
        to,
        side.head_request,
    );
    let written = io.write_all(out).await.is_ok();
    Ended {
        status: parts.status,
        bytes_out: Some(body.len() as u64),
        keep_alive: written && !to.close,
    }
}
