//! One owned HTTP/1.1 client connection: read a head, admit and forward the request, relay the
//! answer, repeat. The connection's task owns its client stream, its read and write buffers
//! and, during an exchange, the upstream socket; nothing else touches them. Idle, a plain-TCP
//! connection frees its buffers and waits for readability; `header_read_timeout` bounds both
//! the wait for a request and the reading of its head; on shutdown an idle connection closes at
//! once and a busy one after its exchange (its response says `Connection: close`).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Either};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::buffers;
use super::chunked::Chunked;
use super::client::{Client, Prefixed};
use super::parse::{self, Framing, HeadError, Parsed, RequestHead, ResponseHead};
use super::relay::{self, RelayError};
use super::write::{self, ToClient};
use crate::proxy::http::{local, Conn, Failure, Forward, LogFacts, Logged, ProxyBody};
use crate::upstream::conns::UpstreamConn;

/// The first bytes of every HTTP/2 connection (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serve one HTTP/1.1 client connection until it closes, fails, idles past
/// `header_read_timeout` or shutdown ends it.
pub async fn serve<T>(io: Client<T>, conn: Conn)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(header_read_timeout) = conn.header_read_timeout() else {
        return; // the listener was removed meanwhile
    };
    let shutdown = conn.ctx.shutdown.token.clone();
    let mut c = Connection {
        io,
        conn,
        buf: BytesMut::new(),
        out: Vec::new(),
    };
    let mut first = true;
    loop {
        match c.next_head(header_read_timeout, &shutdown, first).await {
            Next::Request(head) => {
                // Boxed: the exchange's state is allocated while it runs, so an idle
                // connection's task stays small.
                let keep_alive = Box::pin(c.exchange(head, &shutdown)).await;
                if !keep_alive || shutdown.is_cancelled() {
                    break;
                }
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
}

/// How the client sent its request, for how its answer goes back.
#[derive(Debug, Clone, Copy)]
struct Side {
    http10: bool,
    keep_alive: bool,
    head_request: bool,
}

impl Side {
    fn to_client(self, close: bool) -> ToClient {
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
struct Ended {
    status: StatusCode,
    bytes_out: Option<u64>,
    keep_alive: bool,
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
    async fn next_head(
        &mut self,
        timeout: Duration,
        shutdown: &CancellationToken,
        mut first: bool,
    ) -> Next {
        let deadline = Instant::now() + timeout;
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
            if idle && self.io.parks() {
                // Between requests: hold only the socket (the buffers go back to the thread's
                // spares).
                buffers::give_read(std::mem::take(&mut self.buf));
                buffers::give_write(std::mem::take(&mut self.out));
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
                _ = tokio::time::sleep_until(deadline) => return match idle {
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
fn discard_body(buf: &mut BytesMut, framing: Framing) -> bool {
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
async fn answer<W: AsyncWrite + Unpin>(
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

/// What of the request body is still to come from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyLeft {
    Done,
    Length(u64),
    Chunked,
}

/// Why no response head came back from the upstream.
#[derive(Debug, thiserror::Error)]
enum HeadFailure {
    #[error("upstream closed the connection before answering")]
    Closed { before_any_byte: bool },
    #[error("{error}")]
    Io {
        error: std::io::Error,
        before_any_byte: bool,
    },
    #[error("{0}")]
    Malformed(parse::ResponseError),
    #[error("client went away")]
    ClientGone,
}

impl HeadFailure {
    /// A reused socket the upstream had closed while idle: the request can go again on a new
    /// one.
    fn stale(&self) -> bool {
        matches!(
            self,
            HeadFailure::Closed {
                before_any_byte: true
            } | HeadFailure::Io {
                before_any_byte: true,
                ..
            }
        )
    }
}

/// One forwarded request: the borrowed parts of its connection.
struct Exchange<'c, T> {
    conn: &'c Conn,
    io: &'c mut Client<T>,
    buf: &'c mut BytesMut,
    out: &'c mut Vec<u8>,
    side: Side,
    shutdown: &'c CancellationToken,
}

impl<T> Exchange<'_, T>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn forward(
        self,
        fwd: Forward<'_>,
        mut parts: http::request::Parts,
        framing: Framing,
        upgrade: bool,
    ) -> Ended {
        let Exchange {
            conn,
            io,
            buf,
            out,
            side,
            shutdown,
        } = self;
        if let Err(why) = conn.rewrite(&mut parts, upgrade) {
            let unread = discard_body(buf, framing);
            let ended = answer(io, out, local(StatusCode::BAD_REQUEST, why), side, unread).await;
            conn.done(fwd, ended.status);
            return ended;
        }
        out.clear();
        write::request_head(out, &parts, framing);
        // Only an idempotent request may be sent again after a socket failed under it
        // (RFC 9110 §9.2.2); any other is sent only on a socket checked to be still open.
        let idempotent = parts.method.is_idempotent();
        drop(parts);
        // The body bytes already read go with the head, in one write.
        let mut scanner = Chunked::new();
        let left = match framing {
            Framing::Length(n) => {
                let take = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
                out.extend_from_slice(&buf[..take]);
                buf.advance(take);
                match n - take as u64 {
                    0 => BodyLeft::Done,
                    rest => BodyLeft::Length(rest),
                }
            }
            Framing::Chunked => match scanner.scan(buf, |_| {}) {
                Ok(p) => {
                    out.extend_from_slice(&buf[..p.used]);
                    buf.advance(p.used);
                    match p.done {
                        true => BodyLeft::Done,
                        false => BodyLeft::Chunked,
                    }
                }
                Err(e) => {
                    let resp = local(StatusCode::BAD_REQUEST, e.to_string());
                    let ended = answer(io, out, resp, side, true).await;
                    conn.done(fwd, ended.status);
                    return ended;
                }
            },
            Framing::UntilClose => BodyLeft::Done,
        };
        let upstream = fwd.upstream().clone();
        let deadline = Instant::now() + fwd.pool().config.request_timeout;
        let mut fresh = false;
        loop {
            let checked_out = match fresh {
                true => None,
                false => upstream.conns.checkout(),
            };
            let checked_out = checked_out.filter(|up| idempotent || still_open(&up.stream));
            let mut up = match checked_out {
                Some(up) => up,
                None => match timeout_at(deadline, upstream.conns.connect()).await {
                    Ok(Ok(up)) => up,
                    Ok(Err(e)) => {
                        return failed(
                            conn,
                            fwd,
                            io,
                            out,
                            Failure::Connect(e.to_string()),
                            side,
                            left,
                        )
                        .await
                    }
                    Err(_) => {
                        return failed(conn, fwd, io, out, Failure::Timeout, side, left).await
                    }
                },
            };
            if left != BodyLeft::Done {
                return streaming(
                    conn, fwd, io, buf, out, up, scanner, left, side, deadline, shutdown,
                )
                .await;
            }
            let head = timeout_at(deadline, async {
                up.stream
                    .write_all(out)
                    .await
                    .map_err(|error| HeadFailure::Io {
                        error,
                        before_any_byte: true,
                    })?;
                read_final_head(&mut up.stream, io, side.head_request).await
            })
            .await;
            let (head, len, ubuf) = match head {
                Err(_) => return failed(conn, fwd, io, out, Failure::Timeout, side, left).await,
                Ok(Ok(head)) => head,
                Ok(Err(e)) if e.stale() && up.reused && !fresh && idempotent => {
                    fresh = true;
                    continue;
                }
                Ok(Err(HeadFailure::ClientGone)) => {
                    conn.done(fwd, StatusCode::BAD_GATEWAY);
                    return gone();
                }
                Ok(Err(e)) => {
                    return failed(
                        conn,
                        fwd,
                        io,
                        out,
                        Failure::Request(e.to_string()),
                        side,
                        left,
                    )
                    .await
                }
            };
            let upgrading = upgrade && head.status == StatusCode::SWITCHING_PROTOCOLS;
            let (mut ended, reusable, mut ubuf, unwritten) = respond(
                conn,
                fwd,
                &mut up.stream,
                io,
                out,
                head,
                len,
                ubuf,
                side,
                upgrading,
                shutdown,
            )
            .await;
            if upgrading && ended.keep_alive {
                tunnel(io, buf, &mut up.stream, &mut ubuf).await;
                return Ended {
                    keep_alive: false,
                    ..ended
                };
            }
            if reusable {
                upstream.conns.give_back(up);
            }
            buffers::give_read(ubuf);
            if unwritten && io.write_all(out).await.is_err() {
                ended.keep_alive = false;
            }
            return ended;
        }
    }
}

/// An idle upstream socket has seen nothing since its last answer (no close, no stray bytes):
/// one non-blocking read that must find nothing to read.
fn still_open(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// The upstream did not answer: the proxy's own 502 or 504.
async fn failed<W: AsyncWrite + Unpin>(
    conn: &Conn,
    fwd: Forward<'_>,
    io: &mut W,
    out: &mut Vec<u8>,
    failure: Failure,
    side: Side,
    left: BodyLeft,
) -> Ended {
    let resp = conn.upstream_failed(&fwd, failure);
    let ended = answer(io, out, resp, side, left != BodyLeft::Done).await;
    conn.done(fwd, ended.status);
    ended
}

fn gone() -> Ended {
    Ended {
        status: StatusCode::BAD_GATEWAY,
        bytes_out: None,
        keep_alive: false,
    }
}

/// A request whose body is still arriving: the body goes up while the answer comes down, as
/// an upstream may answer (or ask to continue) before it has the whole body.
#[allow(clippy::too_many_arguments)]
async fn streaming<T>(
    conn: &Conn,
    fwd: Forward<'_>,
    io: &mut Client<T>,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    mut up: UpstreamConn,
    mut scanner: Chunked,
    left: BodyLeft,
    side: Side,
    deadline: Instant,
    shutdown: &CancellationToken,
) -> Ended
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let upstream = fwd.upstream().clone();
    if timeout_at(deadline, up.stream.write_all(out))
        .await
        .is_err()
    {
        return failed(conn, fwd, io, out, Failure::Timeout, side, left).await;
    }
    let (ended, reusable, sent) = {
        let (mut up_read, mut up_write) = up.stream.split();
        let (mut client_read, mut client_write) = tokio::io::split(io);
        let send_body = async {
            match left {
                BodyLeft::Length(n) => relay::length(&mut client_read, buf, &mut up_write, n).await,
                BodyLeft::Chunked => {
                    relay::chunked(&mut client_read, buf, &mut up_write, &mut scanner, false).await
                }
                BodyLeft::Done => Ok(()),
            }
        };
        let answer_it = async {
            let head = read_final_head(&mut up_read, &mut client_write, side.head_request);
            match timeout_at(deadline, head).await {
                Err(_) => {
                    let ended = failed(
                        conn,
                        fwd,
                        &mut client_write,
                        out,
                        Failure::Timeout,
                        side,
                        left,
                    );
                    (ended.await, false)
                }
                Ok(Err(HeadFailure::ClientGone)) => {
                    conn.done(fwd, StatusCode::BAD_GATEWAY);
                    (gone(), false)
                }
                Ok(Err(e)) => {
                    let failure = Failure::Request(e.to_string());
                    let ended = failed(conn, fwd, &mut client_write, out, failure, side, left);
                    (ended.await, false)
                }
                Ok(Ok((head, len, ubuf))) => {
                    let (mut ended, reusable, ubuf, unwritten) = respond(
                        conn,
                        fwd,
                        &mut up_read,
                        &mut client_write,
                        out,
                        head,
                        len,
                        ubuf,
                        side,
                        false,
                        shutdown,
                    )
                    .await;
                    buffers::give_read(ubuf);
                    if unwritten && client_write.write_all(out).await.is_err() {
                        ended.keep_alive = false;
                    }
                    (ended, reusable)
                }
            }
        };
        tokio::pin!(send_body);
        tokio::pin!(answer_it);
        let mut sent: Option<Result<(), RelayError>> = None;
        let (ended, reusable) = loop {
            tokio::select! {
                r = &mut send_body, if sent.is_none() => {
                    let client_failed = matches!(
                        r,
                        Err(RelayError::Read(_) | RelayError::Truncated | RelayError::Malformed(_))
                    );
                    sent = Some(r);
                    if client_failed {
                        // The client went away or sent a broken body: nothing more to do.
                        debug!("client request body failed; closing");
                        return gone();
                    }
                }
                answered = &mut answer_it => break answered,
            }
        };
        // Answered: the rest of the body still goes up (an early answer keeps the
        // connection).
        let sent = match sent {
            Some(sent) => sent,
            None if ended.keep_alive => send_body.await,
            None => Err(RelayError::Truncated),
        };
        (ended, reusable, sent)
    };
    let mut ended = ended;
    if sent.is_err() {
        ended.keep_alive = false;
    }
    if reusable && sent.is_ok() {
        upstream.conns.give_back(up);
    }
    ended
}

/// Read the upstream's final response head, passing informational ones (100, 103) to the
/// client as they come: the head, its length and the bytes read (the head first).
async fn read_final_head<R, W>(
    up: &mut R,
    client: &mut W,
    head_request: bool,
) -> Result<(ResponseHead, usize, BytesMut), HeadFailure>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut ubuf = buffers::read_buffer();
    let mut any = false;
    loop {
        if !ubuf.is_empty() {
            match parse::response(&ubuf, head_request) {
                Ok(Parsed::Complete(head, len))
                    if head.status.is_informational()
                        && head.status != StatusCode::SWITCHING_PROTOCOLS =>
                {
                    client
                        .write_all(&ubuf[..len])
                        .await
                        .map_err(|_| HeadFailure::ClientGone)?;
                    ubuf.advance(len);
                    continue;
                }
                Ok(Parsed::Complete(head, len)) => return Ok((head, len, ubuf)),
                Ok(Parsed::Partial) => {}
                Err(e) => return Err(HeadFailure::Malformed(e)),
            }
        }
        match relay::fill(up, &mut ubuf).await {
            Ok(true) => any = true,
            Ok(false) => {
                return Err(HeadFailure::Closed {
                    before_any_byte: !any,
                })
            }
            Err(error) => {
                return Err(HeadFailure::Io {
                    error,
                    before_any_byte: !any,
                })
            }
        }
    }
}

/// Pass the upstream's answer to the client: settle it with [`Conn::answered`], write its head
/// (with a small body in the same write), relay the rest of its body. Returns how it ended,
/// whether the upstream socket can serve another exchange, the bytes read past the head (after
/// a 101, the tunnel's first bytes), and whether the whole answer is still in `out` for the
/// caller to write (a body that came with its head: the socket can go back first).
#[allow(clippy::too_many_arguments)]
async fn respond<R, W>(
    conn: &Conn,
    fwd: Forward<'_>,
    up: &mut R,
    client: &mut W,
    out: &mut Vec<u8>,
    head: ResponseHead,
    len: usize,
    mut ubuf: BytesMut,
    side: Side,
    upgrading: bool,
    shutdown: &CancellationToken,
) -> (Ended, bool, BytesMut, bool)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let status = head.status;
    let learned = fwd.learns(status).then(|| header_map(&ubuf[..len], &head));
    // Held while the body streams: an open stream is the session's activity.
    let _hold = conn.answered(&fwd, status, learned.as_ref()).await;
    conn.done(fwd, status);
    let dechunk = head.framing == Framing::Chunked && side.http10;
    let close = !side.keep_alive
        || head.framing == Framing::UntilClose
        || dechunk
        || shutdown.is_cancelled()
        || (status == StatusCode::SWITCHING_PROTOCOLS && !upgrading);
    let to = ToClient {
        chunked: head.framing == Framing::Chunked && !side.http10,
        close: close && !upgrading,
        keep_alive_10: side.http10 && !close,
        upgrade: upgrading,
    };
    out.clear();
    write::response_head(out, &ubuf[..len], &head, to);
    ubuf.advance(len);
    let bytes_out = match head.framing {
        Framing::Length(n) => Some(n),
        _ => None,
    };
    let mut ended = Ended {
        status,
        bytes_out,
        keep_alive: !to.close,
    };
    // A small body already read goes in the same write as the head.
    let mut rest = head.framing;
    if let Framing::Length(n) = rest {
        let take = ubuf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
        out.extend_from_slice(&ubuf[..take]);
        ubuf.advance(take);
        rest = Framing::Length(n - take as u64);
    }
    if rest == Framing::Length(0) && !upgrading {
        // The whole answer is in `out`: the caller writes it, after giving the upstream
        // socket back, so the next request (from any client) finds it idle.
        let reusable = head.keep_alive && ubuf.is_empty();
        return (ended, reusable, ubuf, true);
    }
    if client.write_all(out).await.is_err() {
        ended.keep_alive = false;
        return (ended, false, ubuf, false);
    }
    if upgrading {
        return (ended, false, ubuf, false);
    }
    let relayed = match rest {
        Framing::Length(0) => Ok(()),
        Framing::Length(n) => relay::length(up, &mut ubuf, client, n).await,
        Framing::Chunked => {
            relay::chunked(up, &mut ubuf, client, &mut Chunked::new(), dechunk).await
        }
        Framing::UntilClose => relay::until_close(up, &mut ubuf, client).await,
    };
    if let Err(e) = &relayed {
        debug!(error = %e, "response body relay ended early");
        ended.keep_alive = false;
    }
    let reusable = relayed.is_ok() && head.keep_alive && ubuf.is_empty();
    (ended, reusable, ubuf, false)
}

/// The response fields as a map, for learning a session from them.
fn header_map(raw: &[u8], head: &ResponseHead) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(head.fields.len());
    for (name, value) in &head.fields {
        let name = HeaderName::from_bytes(&raw[name.clone()]);
        let value = HeaderValue::from_bytes(&raw[value.clone()]);
        if let (Ok(name), Ok(value)) = (name, value) {
            map.append(name, value);
        }
    }
    map
}

/// After a 101: the bytes each side sent past its head, then bytes both ways until either
/// side closes.
async fn tunnel<T>(
    client: &mut Client<T>,
    from_client: &mut BytesMut,
    up: &mut TcpStream,
    from_up: &mut BytesMut,
) where
    T: AsyncRead + AsyncWrite + Unpin,
{
    if !from_up.is_empty() && client.write_all(from_up).await.is_err() {
        return;
    }
    if !from_client.is_empty() && up.write_all(from_client).await.is_err() {
        return;
    }
    from_client.clear();
    if let Err(e) = tokio::io::copy_bidirectional(client, up).await {
        debug!(error = %e, "upgraded connection ended with an error");
    }
}
