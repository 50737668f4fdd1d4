//! One upstream link: a connection from the proxy to one CLI node on behalf of one client. It
//! connects, replays the client's setup calls (consuming their answers), then forwards frames;
//! its reader hands every upstream frame to the connection: answers to waiting requests,
//! server-initiated requests (given proxy-unique ids), and notifications (passed through).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::FramedRead;
use tracing::{debug, warn};

use super::conn::{Conn, Endpoint, ServerRequest};
use super::route::Tracked;
use crate::config::Secret;
use crate::upstream::prober;
use crate::wire::codec::{encode_frame, write_frames, FrameCodec};
use crate::wire::message::{self, parse_envelope, MessageKind};

/// Frames queued for one link before the client loop waits.
const LINK_QUEUE: usize = 256;
/// Prefix of the ids of requests the proxy sends on its own behalf; the CLI echoes string ids.
const INTERNAL_PREFIX: &str = "sessiongate-";

/// The id of a proxy-internal request, as JSON.
pub(super) fn internal_id(n: u64) -> String {
    format!("{INTERNAL_PREFIX}{n}")
}

/// `Some(n)` if `raw` is the id of a proxy-internal request.
fn parse_internal_id(raw: &str) -> Option<u64> {
    raw.strip_prefix('"')?
        .strip_suffix('"')?
        .strip_prefix(INTERNAL_PREFIX)?
        .parse()
        .ok()
}

/// Put the node's connection token into `connect`'s `params.token` (clients never see it).
pub(super) fn with_token(body: &Bytes, token: Option<&Secret>) -> Bytes {
    match token {
        None => body.clone(),
        Some(t) => message::with_param(body, "token", Value::String(t.expose().to_owned()))
            .unwrap_or_else(|_| body.clone()),
    }
}

/// Start a link to `target`; frames sent on the returned channel go out after the replay.
pub(super) fn open(
    conn: Arc<Conn>,
    target: Endpoint,
    replay: Vec<Bytes>,
    generation: u64,
) -> mpsc::Sender<Bytes> {
    let (tx, rx) = mpsc::channel(LINK_QUEUE);
    tokio::spawn(run(conn, target, replay, rx, generation));
    tx
}

async fn run(
    conn: Arc<Conn>,
    target: Endpoint,
    replay: Vec<Bytes>,
    rx: mpsc::Receiver<Bytes>,
    generation: u64,
) {
    let (connect_timeout, fanout_timeout, max_frame) = {
        let snapshot = conn.ctx.shared.load();
        let pool = snapshot.pool(&conn.pool_name);
        let listener = snapshot.listener(&conn.listener);
        (
            pool.map_or(std::time::Duration::from_secs(2), |p| {
                p.config.connect_timeout
            }),
            pool.map_or(std::time::Duration::from_secs(5), |p| {
                p.config.fanout_timeout
            }),
            listener.map_or(crate::wire::codec::DEFAULT_MAX_FRAME_BYTES, |l| {
                l.config.max_frame_bytes
            }),
        )
    };
    let connected =
        match tokio::time::timeout(connect_timeout, TcpStream::connect(&*target.addr)).await {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err("connect timed out".to_owned()),
        };
    let stream = match connected {
        Ok(stream) => stream,
        Err(why) => return failed(&conn, &target, generation, LinkFailure::Connect, &why).await,
    };
    let _ = stream.set_nodelay(true);
    let open = conn
        .ctx
        .metrics
        .upstream_connections_active
        .with_label_values(&[&conn.pool_name, &target.name]);
    open.inc();
    let (read, mut write) = stream.into_split();
    let mut reader = tokio::spawn(read_upstream(
        conn.clone(),
        target.name.clone(),
        FramedRead::new(read, FrameCodec::new(max_frame)),
    ));

    // Replay the connection's setup so this node sees the same client, and wait for each
    // answer: a node may refuse calls until `connect` has completed. Frames the client sends
    // meanwhile wait in `rx`.
    let mut why = "";
    let mut frame = BytesMut::new();
    for call in replay {
        let n = conn.next_internal_id();
        let (reply_tx, reply_rx) = oneshot::channel();
        conn.lock()
            .internal
            .insert(n, (target.name.clone(), reply_tx));
        let Ok(mut body) = message::with_id(&call, &internal_id(n)) else {
            continue;
        };
        if parse_envelope(&body).is_ok_and(|e| e.method.as_deref() == Some("connect")) {
            body = with_token(&body, target.token.as_ref());
        }
        frame.clear();
        encode_frame(&body, &mut frame);
        if write.write_all(&frame).await.is_err() {
            why = "write failed";
            break;
        }
        if tokio::time::timeout(fanout_timeout, reply_rx)
            .await
            .is_err()
        {
            warn!(upstream = %target.name, "setup replay got no answer in time; continuing");
        }
    }
    drop(frame);

    if why.is_empty() {
        // From here this task is the link's writer: frames go from the client loop's channel
        // to the socket with no other task in between.
        why = tokio::select! {
            written = write_frames(write, rx) => if written.is_ok() { "" } else { "write failed" },
            _ = &mut reader => "connection lost",
            _ = conn.closing.cancelled() => "",
        };
    }
    open.dec();
    if !why.is_empty() && !conn.closing.is_cancelled() {
        failed(&conn, &target, generation, LinkFailure::Dropped, why).await;
    }
}

/// How a link failed; the `kind` label of the link-failure metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LinkFailure {
    /// The node refused or never answered the connection: it saw nothing.
    Connect,
    /// An open link closed or failed to write: the node may have seen requests.
    Dropped,
}

impl LinkFailure {
    fn as_str(self) -> &'static str {
        match self {
            LinkFailure::Connect => "connect",
            LinkFailure::Dropped => "dropped",
        }
    }
}

async fn failed(
    conn: &Arc<Conn>,
    target: &Endpoint,
    generation: u64,
    kind: LinkFailure,
    why: &str,
) {
    let label = kind.as_str();
    warn!(upstream = %target.name, addr = %target.addr, error = why, "upstream link {label} failed");
    let metrics = &conn.ctx.metrics;
    metrics
        .upstream_link_failures_total
        .with_label_values(&[&conn.pool_name, &target.name, label])
        .inc();
    if let Some(pool) = conn.ctx.shared.load().pool(&conn.pool_name) {
        if let Some(up) = pool.upstream(&target.name) {
            prober::passive_failure(metrics, up, pool.config.passive.as_ref(), why);
        }
    }
    conn.link_failed(&target.name, generation, kind, why).await;
}

/// Read frames from a node until it closes, dispatching each.
async fn read_upstream(
    conn: Arc<Conn>,
    upstream: Arc<str>,
    mut frames: FramedRead<tokio::net::tcp::OwnedReadHalf, FrameCodec>,
) {
    while let Some(frame) = frames.next().await {
        match frame {
            Ok(body) => dispatch(&conn, &upstream, body).await,
            Err(e) => return debug!(upstream = %upstream, error = %e, "upstream link read ended"),
        }
    }
}

async fn dispatch(conn: &Arc<Conn>, upstream: &Arc<str>, body: Bytes) {
    // Parse from a second handle on the same buffer so `body` can be moved on.
    let frame = body.clone();
    let env = match parse_envelope(&frame) {
        Ok(env) => env,
        Err(e) => {
            return debug!(upstream = %upstream, error = %e, "unparseable frame from upstream; dropped")
        }
    };
    match env.kind {
        MessageKind::Notification => {
            let _ = conn.to_client.send(body).await;
        }
        MessageKind::Request => {
            let Some(id) = env.id.map(|raw| raw.to_owned()) else {
                return;
            };
            let proxy_id = {
                let mut state = conn.lock();
                state.next_server_request += 1;
                let n = state.next_server_request;
                state.server_requests.insert(
                    n,
                    ServerRequest {
                        upstream: upstream.clone(),
                        id,
                    },
                );
                n
            };
            match message::with_id(&body, &proxy_id) {
                Ok(rewritten) => {
                    let _ = conn.to_client.send(rewritten).await;
                }
                Err(e) => debug!(error = %e, "cannot rewrite server request id"),
            }
        }
        MessageKind::Response => {
            let raw = env.id.map_or("null", RawValue::get);
            if let Some(n) = parse_internal_id(raw) {
                let waiter = conn.lock().internal.remove(&n);
                if let Some((_, tx)) = waiter {
                    let _ = tx.send(body);
                }
                return;
            }
            let pending = conn.lock().pending.remove(raw);
            let Some(pending) = pending else {
                return debug!(upstream = %upstream, id = raw, "answer to no pending request; dropped");
            };
            let failed = env.has_error;
            if failed && pending.resend.is_some() && is_session_not_found(&body) {
                // A resume of a session the proxy has no pin for missed on the ring owner:
                // ask the rest of the fleet before answering.
                let (conn, upstream, id) = (conn.clone(), upstream.clone(), Box::<str>::from(raw));
                tokio::spawn(async move {
                    super::fanout::discover_owner(conn, upstream, id, pending, body).await
                });
                return;
            }
            learn(conn, upstream, &pending, failed, &body);
            conn.observe(&pending, if failed { "error" } else { "ok" });
            conn.reply(pending.slot, body).await;
            conn.drained.notify_one();
        }
        MessageKind::Invalid => {
            debug!(upstream = %upstream, "invalid message from upstream; dropped")
        }
    }
}

/// What an answer teaches the pin table: a successful create or resume pins the session to the
/// node that answered; a successful delete forgets it.
pub(super) fn learn(
    conn: &Conn,
    upstream: &Arc<str>,
    pending: &super::conn::Pending,
    failed: bool,
    body: &[u8],
) {
    let Some(session) = &pending.session else {
        return;
    };
    // Most answers teach nothing: skip the snapshot load for them.
    if failed || pending.tracked == Tracked::Other {
        return;
    }
    let snapshot = conn.ctx.shared.load();
    let Some(pool) = snapshot.pool(&conn.pool_name) else {
        return;
    };
    match pending.tracked {
        Tracked::Create | Tracked::Resume => {
            let addr = match pool.upstream(upstream) {
                Some(u) => Arc::from(u.addr()),
                None => match pool.pins.get(session) {
                    Some(pin) => pin.addr,
                    None => return,
                },
            };
            pool.pins.pin(
                session,
                crate::sessions::Pin {
                    upstream: upstream.clone(),
                    addr,
                },
            );
            conn.ctx
                .metrics
                .pinned_sessions
                .with_label_values(&[&conn.pool_name])
                .set(pool.pins.len() as i64);
        }
        Tracked::Delete if memchr_success(body) => pool.pins.unpin(session),
        _ => {}
    }
}

fn memchr_success(body: &[u8]) -> bool {
    body.windows(14).any(|w| w == b"\"success\":true")
}

/// The CLI's "Session not found" errors (resume, send and getMessages spell it alike).
pub(super) fn is_session_not_found(body: &[u8]) -> bool {
    body.windows(17).any(|w| w == b"Session not found")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_ids_round_trip_and_client_ids_are_not_internal() {
        let id = serde_json::to_string(&internal_id(42)).unwrap();
        assert_eq!(parse_internal_id(&id), Some(42));
        assert_eq!(parse_internal_id("42"), None);
        assert_eq!(parse_internal_id("\"42\""), None);
    }

    #[test]
    fn token_goes_into_connect_params() {
        let body = Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":0,"method":"connect","params":{"token":"client"}}"#,
        );
        let out = with_token(&body, Some(&Secret("node-secret".into())));
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["params"]["token"], "node-secret");
        assert_eq!(with_token(&body, None), body);
    }

    #[test]
    fn recognises_session_not_found() {
        let body = br#"{"jsonrpc":"2.0","id":3,"error":{"code":-32603,"message":"Request session.resume failed with message: Failed to load session events: Session not found: abc"}}"#;
        assert!(is_session_not_found(body));
        assert!(!is_session_not_found(
            br#"{"jsonrpc":"2.0","id":3,"result":{}}"#
        ));
    }
}
