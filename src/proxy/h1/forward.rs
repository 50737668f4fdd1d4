//! Forwarding one admitted request on the owned HTTP/1.1 path: its head (and the body bytes
//! already read) onto an upstream socket from the idle stack or a new one, within
//! `request_timeout`; a body still arriving relayed while the answer comes down; a reused socket
//! the upstream closed sent again only for an idempotent request; the proxy's own 502/504 when no
//! answer head comes back.

use bytes::{Buf, BytesMut};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::buffers;
use super::chunked::Chunked;
use super::client::Client;
use super::conn::{answer, discard_body, Ended, Side};
use super::parse::{self, Framing};
use super::relay::{self, RelayError};
use super::respond::{read_final_head, respond, tunnel};
use super::write;
use crate::proxy::http::{local, Conn, Failure, Forward};
use crate::upstream::conns::UpstreamConn;

/// What of the request body is still to come from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyLeft {
    Done,
    Length(u64),
    Chunked,
}

/// Why no response head came back from the upstream.
#[derive(Debug, thiserror::Error)]
pub(super) enum HeadFailure {
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
    #[error("no answer within the request timeout")]
    TimedOut,
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
pub(super) struct Exchange<'c, T> {
    pub(super) conn: &'c Conn,
    pub(super) io: &'c mut Client<T>,
    pub(super) buf: &'c mut BytesMut,
    pub(super) out: &'c mut Vec<u8>,
    pub(super) side: Side,
    pub(super) shutdown: &'c CancellationToken,
}

impl<T> Exchange<'_, T>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    pub(super) async fn forward(
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
            let (head, len, ubuf) = match head.unwrap_or(Err(HeadFailure::TimedOut)) {
                Ok(head) => head,
                Err(e) if e.stale() && up.reused && !fresh && idempotent => {
                    fresh = true;
                    continue;
                }
                Err(e) => return unanswered(conn, fwd, io, out, e, side, left).await,
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

/// No answer head came back: the proxy's own 502 or 504, or nothing for a client gone.
async fn unanswered<W: AsyncWrite + Unpin>(
    conn: &Conn,
    fwd: Forward<'_>,
    io: &mut W,
    out: &mut Vec<u8>,
    why: HeadFailure,
    side: Side,
    left: BodyLeft,
) -> Ended {
    let failure = match why {
        HeadFailure::ClientGone => {
            conn.done(fwd, StatusCode::BAD_GATEWAY);
            return gone();
        }
        HeadFailure::TimedOut => Failure::Timeout,
        why => Failure::Request(why.to_string()),
    };
    failed(conn, fwd, io, out, failure, side, left).await
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
            match timeout_at(deadline, head)
                .await
                .unwrap_or(Err(HeadFailure::TimedOut))
            {
                Err(e) => {
                    let ended = unanswered(conn, fwd, &mut client_write, out, e, side, left);
                    (ended.await, false)
                }
                Ok((head, len, ubuf)) => {
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
