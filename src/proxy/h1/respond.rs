//! The upstream's answer on the owned HTTP/1.1 path: its final head (informational ones passed
//! on as they come), settled with the session state, written to the client with a small body
//! in the same write, the rest of the body relayed by its framing; after a 101, the tunnel.

use bytes::{Buf, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::buffers;
use super::chunked::Chunked;
use super::client::Client;
use super::conn::{Ended, Side};
use super::forward::HeadFailure;
use super::parse::{self, Framing, Parsed, ResponseHead};
use super::relay;
use super::write::{self, ToClient};
use crate::proxy::http::{Conn, Forward};

/// Read the upstream's final response head, passing informational ones (100, 103) to the
/// client as they come: the head, its length and the bytes read (the head first).
pub(super) async fn read_final_head<R, W>(
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
pub(super) async fn respond<R, W>(
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
pub(super) async fn tunnel<T>(
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
