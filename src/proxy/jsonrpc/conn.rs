//! One client connection: the client read loop, the per-connection state shared with the
//! upstream links (requests in flight, server-initiated requests, recorded setup calls, open
//! links), and replies (single or batched) back to the client. The read loop never waits for an
//! answer: both directions keep flowing, as the CLI needs when it holds a response until the
//! client answers its own request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::fanout;
use super::link::{self, LinkFailure};
use super::route::{destination, method_label, tracked, Destination, Tracked};
use crate::config::{KeySource, OnOwnerDown, Secret};
use crate::proxy::Context;
use crate::sessions::Pin;
use crate::snapshot::{ListenerRuntime, Pool};
use crate::wire::codec::{write_frames, FrameCodec, FrameError};
use crate::wire::message::{
    self, parse_envelope, MessageKind, INVALID_REQUEST, SERVER_UNAVAILABLE,
};

/// Frames waiting for the client writer; bounded so a slow client slows its upstreams down
/// instead of growing memory.
const CLIENT_QUEUE: usize = 256;
/// Distinct setup methods remembered per connection; more are forwarded but not replayed.
const MAX_SETUP_CALLS: usize = 32;
/// How long a client is told to wait before retrying when its session's node is unavailable.
const RETRY_AFTER_MS: u64 = 1000;

/// A node a link goes to.
pub(super) use crate::upstream::Endpoint;

impl Endpoint {
    /// The node `pin` points at: the pool's upstream of that name, or, for one a reload removed
    /// and that still drains, its pinned address with the token it had.
    fn of(pool: &Pool, pin: &Pin) -> Endpoint {
        match pool.upstream(&pin.upstream) {
            Some(u) => u.endpoint.clone(),
            None => Endpoint {
                name: pin.upstream.clone(),
                addr: pin.addr.clone(),
                token: pool.pins.retired_token(&pin.upstream),
            },
        }
    }

    pub fn pin(&self) -> Pin {
        Pin {
            upstream: self.name.clone(),
            addr: self.addr.clone(),
        }
    }
}

/// A client request waiting for its answer.
pub(super) struct Pending {
    pub upstream: Arc<str>,
    /// The method's metric label (`other` for unknown methods): no allocation per request.
    pub method: &'static str,
    pub tracked: Tracked,
    pub session: Option<Arc<str>>,
    pub started: Instant,
    pub slot: Option<BatchSlot>,
    /// The request itself, kept for `session.resume` without a pin so owner discovery can send
    /// it again to the node that has the session.
    pub resend: Option<Bytes>,
    /// Set when any node may answer: the request goes to another one if its node refuses the
    /// link (HAProxy's `option redispatch`, for requests that are not bound to a session).
    pub redispatch: Option<Redispatch>,
}

/// A request that may move to another node while no node has seen it yet.
pub(super) struct Redispatch {
    /// The request as the client sent it, before a node's token went into `connect`.
    body: Bytes,
    /// Nodes that refused the link for it, passed over when choosing the next one.
    refused: Vec<Arc<str>>,
}

/// A request a node sent to the client, under the proxy id the client sees.
pub(super) struct ServerRequest {
    pub upstream: Arc<str>,
    pub id: Box<RawValue>,
}

/// An open link, as the client loop sees it.
pub(super) struct LinkHandle {
    pub tx: mpsc::Sender<Bytes>,
    pub generation: u64,
    /// The node's connection token, for setup `connect`s forwarded to this link.
    pub token: Option<Secret>,
}

#[derive(Default)]
pub(super) struct ConnState {
    pub pending: HashMap<Box<str>, Pending>,
    pub server_requests: HashMap<u64, ServerRequest>,
    pub next_server_request: u64,
    /// Requests the proxy itself sent (setup replay, fan-outs): internal id → (node, reply).
    pub internal: HashMap<u64, (Arc<str>, oneshot::Sender<Bytes>)>,
    pub links: HashMap<Arc<str>, LinkHandle>,
    /// Connection-scoped setup calls, in order, to replay on each new link: as the client sent
    /// them, so each link puts its own node's token into `connect`. One per method (the latest
    /// call replaces an earlier one in place), at most [`MAX_SETUP_CALLS`].
    pub setup: Vec<(Option<String>, Bytes)>,
}

/// Everything one client connection shares with its links and fan-out tasks.
pub(super) struct Conn {
    pub ctx: Context,
    pub listener: Arc<str>,
    pub pool_name: Arc<str>,
    pub to_client: mpsc::Sender<Bytes>,
    pub closing: CancellationToken,
    pub drained: Notify,
    state: Mutex<ConnState>,
    next_internal: AtomicU64,
    next_generation: AtomicU64,
    /// The key whose ring owner is this connection's home node.
    home_key: Vec<u8>,
}

/// Serve one JSON-RPC client connection until it closes.
pub async fn serve(
    stream: TcpStream,
    ctx: Context,
    listener: Arc<str>,
    peer: SocketAddr,
    runtime: Arc<ListenerRuntime>,
) {
    let (read, write) = stream.into_split();
    let (to_client, rx) = mpsc::channel(CLIENT_QUEUE);
    let home_key = if runtime.config.key.contains(&KeySource::ClientIp) {
        peer.ip().to_string().into_bytes()
    } else {
        rand::random::<[u8; 16]>().to_vec()
    };
    let conn = Arc::new(Conn {
        ctx,
        listener,
        pool_name: Arc::from(runtime.pool.name()),
        to_client,
        closing: CancellationToken::new(),
        drained: Notify::new(),
        state: Mutex::new(ConnState::default()),
        next_internal: AtomicU64::new(1),
        next_generation: AtomicU64::new(1),
        home_key,
    });
    let max_frame = runtime.config.max_frame_bytes;
    drop(runtime);
    let writer = tokio::spawn(write_frames(write, rx));
    conn.read_client(FramedRead::new(read, FrameCodec::new(max_frame)))
        .await;
    // Closing ends every link; the writer finishes once the last sender is gone.
    conn.closing.cancel();
    drop(conn);
    let _ = writer.await;
}

impl Conn {
    pub(super) fn lock(&self) -> MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn next_internal_id(&self) -> u64 {
        self.next_internal.fetch_add(1, Ordering::Relaxed)
    }

    async fn read_client(
        self: &Arc<Self>,
        mut frames: FramedRead<tokio::net::tcp::OwnedReadHalf, FrameCodec>,
    ) {
        let shutdown = self.ctx.shutdown.token.clone();
        let mut shutting_down = false;
        loop {
            let frame = tokio::select! {
                frame = frames.next() => frame,
                _ = shutdown.cancelled(), if !shutting_down => {
                    shutting_down = true;
                    if self.lock().pending.is_empty() {
                        return;
                    }
                    continue;
                }
                _ = self.drained.notified(), if shutting_down => {
                    if self.lock().pending.is_empty() {
                        return;
                    }
                    continue;
                }
            };
            let body = match frame {
                None => return,
                Some(Ok(body)) => body,
                Some(Err(FrameError::Io(e))) => {
                    return debug!(error = %e, "client connection ended")
                }
                Some(Err(e)) => {
                    // The stream can't be re-synchronised after a framing error: answer, close.
                    debug!(error = %e, "bad frame from client; closing");
                    let code = match e {
                        FrameError::FrameTooLarge { .. } | FrameError::HeaderTooLarge { .. } => {
                            INVALID_REQUEST
                        }
                        _ => message::PARSE_ERROR,
                    };
                    self.reply(
                        None,
                        message::error_response(None, code, &e.to_string(), None),
                    )
                    .await;
                    return;
                }
            };
            let ok = if message::is_batch(&body) {
                self.on_batch(body, shutting_down).await
            } else {
                self.on_message(body, None, shutting_down).await
            };
            if !ok {
                return;
            }
        }
    }

    /// Handle one client message. `false` means the input was malformed and the connection
    /// must close (the error has been sent).
    pub(super) async fn on_message(
        self: &Arc<Self>,
        body: Bytes,
        slot: Option<BatchSlot>,
        shutting_down: bool,
    ) -> bool {
        let env = match parse_envelope(&body) {
            Ok(env) => env,
            Err(e) => {
                let err = message::error_response(None, e.code(), &e.to_string(), None);
                let in_batch = slot.is_some();
                self.reply(slot, err).await;
                return in_batch;
            }
        };
        match env.kind {
            MessageKind::Invalid => {
                let err = message::error_response(
                    env.id,
                    INVALID_REQUEST,
                    "invalid JSON-RPC message",
                    None,
                );
                let in_batch = slot.is_some();
                self.reply(slot, err).await;
                in_batch
            }
            MessageKind::Response => {
                self.answer_server_request(env.id, &body).await;
                true
            }
            MessageKind::Request | MessageKind::Notification => {
                if shutting_down && env.kind == MessageKind::Request {
                    let data = json!({ "retryAfterMs": RETRY_AFTER_MS });
                    let err = message::error_response(
                        env.id,
                        SERVER_UNAVAILABLE,
                        "sessiongate is shutting down",
                        Some(&data),
                    );
                    self.reply(slot, err).await;
                    return true;
                }
                let method = env.method.as_deref().unwrap_or_default();
                let session = env.session_id.as_deref();
                let id = env.id.map(|raw| raw.get());
                self.route(&body, method, session, id, slot).await;
                true
            }
        }
    }

    /// Decide where a request or notification goes and send it there.
    async fn route(
        self: &Arc<Self>,
        body: &Bytes,
        method: &str,
        session: Option<&str>,
        id: Option<&str>,
        slot: Option<BatchSlot>,
    ) {
        let snapshot = self.ctx.shared.load_full();
        let Some(pool) = snapshot.listener(&self.listener).map(|l| l.pool.clone()) else {
            return self.fail(id, slot, "listener is being removed", None).await;
        };
        drop(snapshot);
        let mut body = body.clone();
        let mut resend = None;
        let mut session: Option<Arc<str>> = session.map(Arc::from);
        let dest = destination(method, session.is_some());
        let mut pinned = false;
        let target = match dest {
            Destination::Session => {
                let sid = session.as_deref().unwrap_or_default();
                let pin = pool.pins.get(sid);
                pinned = pin.is_some();
                match pin {
                    Some(pin) => match pool.upstream(&pin.upstream) {
                        Some(u)
                            if !u.state.is_available()
                                && pool.config.on_owner_down == OnOwnerDown::Error =>
                        {
                            let msg = format!(
                                "session {sid}: its server {} is unavailable",
                                pin.upstream
                            );
                            return self.fail(id, slot, &msg, Some(&pin.upstream)).await;
                        }
                        Some(u) if !u.state.is_available() => {
                            // Failover (shared storage): re-place on the ring.
                            pool.pins.unpin(sid);
                            pool.route(sid.as_bytes()).map(|u| u.endpoint.clone())
                        }
                        _ => Some(Endpoint::of(&pool, &pin)),
                    },
                    None => {
                        if method == "session.resume" && pool.upstreams.len() > 1 {
                            resend = Some(body.clone());
                        }
                        pool.route(sid.as_bytes()).map(|u| u.endpoint.clone())
                    }
                }
            }
            Destination::CreateWithoutId => {
                let sid = uuid::Uuid::new_v4().to_string();
                match message::with_param(&body, "sessionId", Value::String(sid.clone())) {
                    Ok(rewritten) => body = rewritten,
                    Err(e) => return self.fail_with(id, slot, e.code(), &e.to_string()).await,
                }
                let target = pool.route(sid.as_bytes()).map(|u| u.endpoint.clone());
                session = Some(Arc::from(sid));
                target
            }
            Destination::FanOutList => {
                let conn = self.clone();
                let id = id.map(Box::<str>::from);
                tokio::spawn(
                    async move { fanout::list_sessions(conn, pool, id, body, slot).await },
                );
                return;
            }
            Destination::Global | Destination::Setup => {
                pool.route(&self.home_key).map(|u| u.endpoint.clone())
            }
        };
        let Some(target) = target else {
            let msg = match &session {
                Some(s) => format!("session {s}: no server available in pool {}", pool.name()),
                None => format!("no server available in pool {}", pool.name()),
            };
            return self.fail(id, slot, &msg, None).await;
        };
        // Recorded as the client sent it: another node must never get this node's token.
        // Only requests are replayed: a notification has no answer for the proxy to consume.
        let setup = (dest == Destination::Setup && id.is_some()).then(|| body.clone());
        // Any node may take a global read, a setup call or a new session; a request for an
        // existing session may not (its state lives on one node's disk).
        let movable = match dest {
            Destination::Global | Destination::Setup | Destination::CreateWithoutId => true,
            Destination::Session => method == "session.create" && !pinned,
            Destination::FanOutList => false,
        };
        let redispatch = movable.then(|| Redispatch {
            body: body.clone(),
            refused: Vec::new(),
        });
        if method == "connect" {
            body = link::with_token(&body, target.token.as_ref());
        }
        if let Some(id) = id {
            let pending = Pending {
                upstream: target.name.clone(),
                method: method_label(method),
                tracked: tracked(method),
                session,
                started: Instant::now(),
                slot,
                resend,
                redispatch,
            };
            self.lock().pending.insert(Box::from(id), pending);
        }
        self.send(&target, body, setup).await;
    }

    /// Send `body` to `target`, opening a link if needed. `setup` is the client's setup call
    /// (before any token was put in): it is recorded, and also sent, with a proxy id and each
    /// node's own token, to the other links already open.
    pub(super) async fn send(
        self: &Arc<Self>,
        target: &Endpoint,
        body: Bytes,
        setup: Option<Bytes>,
    ) {
        let (tx, others) = {
            let mut state = self.lock();
            let tx = match state.links.get(&target.name) {
                Some(link) => link.tx.clone(),
                None => {
                    let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
                    // A setup call being sent (first time, again, or redispatched) goes as
                    // itself, so the replay leaves out the recorded call of its method.
                    let method = method_of(&body);
                    let replay = state
                        .setup
                        .iter()
                        .filter(|(recorded, _)| recorded.is_none() || *recorded != method)
                        .map(|(_, call)| call.clone())
                        .collect();
                    let tx = link::open(self.clone(), target.clone(), replay, generation);
                    state.links.insert(
                        target.name.clone(),
                        LinkHandle {
                            tx: tx.clone(),
                            generation,
                            token: target.token.clone(),
                        },
                    );
                    tx
                }
            };
            let mut others = Vec::new();
            if let Some(call) = &setup {
                record_setup(&mut state.setup, method_of(call), call.clone());
                for (name, link) in &state.links {
                    if *name != target.name {
                        others.push((name.clone(), link.tx.clone(), link.token.clone()));
                    }
                }
            }
            (tx, others)
        };
        let _ = tx.send(body).await;
        let Some(call) = setup.filter(|_| !others.is_empty()) else {
            return;
        };
        let is_connect =
            parse_envelope(&call).is_ok_and(|e| e.method.as_deref() == Some("connect"));
        for (name, tx, token) in others {
            // The reply is the proxy's to consume: register it and let it drop.
            let internal = self.next_internal_id();
            let (reply_tx, _) = oneshot::channel();
            self.lock().internal.insert(internal, (name, reply_tx));
            let call = if is_connect {
                link::with_token(&call, token.as_ref())
            } else {
                call.clone()
            };
            if let Ok(rewritten) = message::with_id(&call, &link::internal_id(internal)) {
                let _ = tx.send(rewritten).await;
            }
        }
    }

    /// The client answered a request a node sent: map the id back and forward it there.
    async fn answer_server_request(self: &Arc<Self>, id: Option<&RawValue>, body: &[u8]) {
        let Some(proxy_id) = id.and_then(|raw| raw.get().parse::<u64>().ok()) else {
            return debug!("client response with an id the proxy never issued; dropped");
        };
        let (origin, tx) = {
            let mut state = self.lock();
            let Some(origin) = state.server_requests.remove(&proxy_id) else {
                return debug!(
                    proxy_id,
                    "client response for an unknown server request; dropped"
                );
            };
            let tx = state.links.get(&origin.upstream).map(|l| l.tx.clone());
            (origin, tx)
        };
        match (tx, message::with_id(body, &*origin.id)) {
            (Some(tx), Ok(rewritten)) => {
                let _ = tx.send(rewritten).await;
            }
            _ => {
                debug!(upstream = %origin.upstream, "server request's link is gone; answer dropped")
            }
        }
    }

    /// Split a batch, route each element, and answer with one array in the original order.
    async fn on_batch(self: &Arc<Self>, body: Bytes, shutting_down: bool) -> bool {
        let elements = match message::split_batch(&body) {
            Ok(elements) => elements,
            Err(e) => {
                self.reply(
                    None,
                    message::error_response(None, e.code(), &e.to_string(), None),
                )
                .await;
                return false;
            }
        };
        if elements.is_empty() {
            let err = message::error_response(None, INVALID_REQUEST, "empty batch", None);
            self.reply(None, err).await;
            return true;
        }
        // Everything but notifications and responses is answered: requests and bad elements.
        let answered: Vec<bool> = elements
            .iter()
            .map(|raw| match parse_envelope(raw.get().as_bytes()) {
                Ok(env) => !matches!(env.kind, MessageKind::Notification | MessageKind::Response),
                Err(_) => true,
            })
            .collect();
        let batch = Batch::new(answered.iter().filter(|a| **a).count());
        let mut index = 0;
        for (raw, answered) in elements.iter().zip(answered) {
            let slot = answered.then(|| {
                index += 1;
                BatchSlot {
                    batch: batch.clone(),
                    index: index - 1,
                }
            });
            let element = body.slice_ref(raw.get().as_bytes());
            Box::pin(self.on_message(element, slot, shutting_down)).await;
        }
        true
    }

    /// Deliver an answer to the client: directly, or into its batch.
    pub(super) async fn reply(&self, slot: Option<BatchSlot>, body: Bytes) {
        let body = match slot {
            None => Some(body),
            Some(slot) => slot.fill(body),
        };
        if let Some(body) = body {
            let _ = self.to_client.send(body).await;
        }
    }

    /// Answer a request with "server unavailable" (-32001) and `data.retryAfterMs`.
    pub(super) async fn fail(
        &self,
        id: Option<&str>,
        slot: Option<BatchSlot>,
        message: &str,
        upstream: Option<&str>,
    ) {
        let Some(id) = id else { return };
        let data = match upstream {
            Some(u) => json!({ "retryAfterMs": RETRY_AFTER_MS, "upstream": u }),
            None => json!({ "retryAfterMs": RETRY_AFTER_MS }),
        };
        let raw = RawValue::from_string(id.to_owned()).ok();
        let err = message::error_response(raw.as_deref(), SERVER_UNAVAILABLE, message, Some(&data));
        self.reply(slot, err).await;
    }

    async fn fail_with(&self, id: Option<&str>, slot: Option<BatchSlot>, code: i64, message: &str) {
        let Some(id) = id else { return };
        let raw = RawValue::from_string(id.to_owned()).ok();
        self.reply(
            slot,
            message::error_response(raw.as_deref(), code, message, None),
        )
        .await;
    }

    /// A link to `upstream` failed to connect or dropped: forget it and answer every request
    /// still waiting on it, so the client sees an error instead of a hang. When the node
    /// refused the link (nothing reached it), requests any node may answer go to the next
    /// usable node instead.
    pub(super) async fn link_failed(
        self: &Arc<Self>,
        upstream: &Arc<str>,
        generation: u64,
        kind: LinkFailure,
        why: &str,
    ) {
        let failed: Vec<(Box<str>, Pending)> = {
            let mut state = self.lock();
            if state
                .links
                .get(upstream)
                .is_some_and(|l| l.generation == generation)
            {
                state.links.remove(upstream);
            }
            state.internal.retain(|_, (node, _)| node != upstream);
            state.server_requests.retain(|_, r| r.upstream != *upstream);
            let ids: Vec<Box<str>> = state
                .pending
                .iter()
                .filter(|(_, p)| p.upstream == *upstream)
                .map(|(id, _)| id.clone())
                .collect();
            ids.into_iter()
                .filter_map(|id| state.pending.remove_entry(&id))
                .collect()
        };
        for (id, mut pending) in failed {
            if kind == LinkFailure::Connect {
                if let Some(r) = pending.redispatch.as_mut() {
                    r.refused.push(upstream.clone());
                }
                if let Some((target, body)) = self.redispatch_target(&pending) {
                    self.ctx
                        .metrics
                        .redispatches_total
                        .with_label_values(&[&self.pool_name, upstream])
                        .inc();
                    debug!(from = %upstream, to = %target.name, "request redispatched");
                    pending.upstream = target.name.clone();
                    self.lock().pending.insert(id, pending);
                    self.send(&target, body, None).await;
                    continue;
                }
            }
            let msg = match &pending.session {
                Some(s) => format!("session {s}: its server {upstream} is unavailable ({why})"),
                None => format!("server {upstream} is unavailable ({why})"),
            };
            self.observe(&pending, "unavailable");
            self.fail(Some(&id), pending.slot, &msg, Some(upstream))
                .await;
        }
        self.drained.notify_one();
    }

    /// Where a request whose node refused the link goes next, with the body to send there;
    /// `None` if it must fail instead (bound to a session, or no other node usable).
    fn redispatch_target(&self, pending: &Pending) -> Option<(Endpoint, Bytes)> {
        let r = pending.redispatch.as_ref()?;
        let snapshot = self.ctx.shared.load();
        let listener = snapshot.listener(&self.listener)?;
        // The same key that placed it, so every client connection spreads the same way.
        let key = pending
            .session
            .as_deref()
            .map_or(&self.home_key[..], str::as_bytes);
        let target = listener
            .pool
            .route_avoiding(key, &r.refused)?
            .endpoint
            .clone();
        let body = if pending.method == "connect" {
            link::with_token(&r.body, target.token.as_ref())
        } else {
            r.body.clone()
        };
        Some((target, body))
    }

    /// Record latency and outcome metrics for a finished request.
    pub(super) fn observe(&self, pending: &Pending, outcome: &str) {
        let m = &self.ctx.metrics;
        let secs = pending.started.elapsed().as_secs_f64();
        m.requests_total
            .with_label_values(&[&self.listener, &self.pool_name, &pending.upstream, outcome])
            .inc();
        m.request_duration
            .with_label_values(&[&self.listener, &self.pool_name, &pending.upstream])
            .observe(secs);
        m.jsonrpc_request_duration
            .with_label_values(&[&self.pool_name, pending.method])
            .observe(secs);
        if let Some(session) = &pending.session {
            m.sessions.observe(&self.pool_name, session, secs);
        }
    }
}

fn method_of(body: &[u8]) -> Option<String> {
    parse_envelope(body).ok()?.method.map(|m| m.into_owned())
}

/// Remember a setup call for replay: a repeated method replaces its earlier call (the node's
/// setting is what the latest call said), and the list is bounded.
fn record_setup(setup: &mut Vec<(Option<String>, Bytes)>, method: Option<String>, call: Bytes) {
    if let Some(slot) = setup.iter_mut().find(|(m, _)| *m == method) {
        slot.1 = call;
    } else if setup.len() < MAX_SETUP_CALLS {
        setup.push((method, call));
    } else {
        debug!(
            ?method,
            "too many distinct setup calls; this one is not replayed on new links"
        );
    }
}

/// Collects the answers of one client batch.
pub(super) struct Batch {
    slots: Mutex<(Vec<Option<Bytes>>, usize)>,
}

impl Batch {
    fn new(answers: usize) -> Arc<Batch> {
        Arc::new(Batch {
            slots: Mutex::new((vec![None; answers], answers)),
        })
    }
}

/// The place of one answer in a batch.
#[derive(Clone)]
pub(super) struct BatchSlot {
    batch: Arc<Batch>,
    index: usize,
}

impl BatchSlot {
    /// Put an answer in place; the whole array once it is the last one.
    fn fill(self, body: Bytes) -> Option<Bytes> {
        let mut guard = self.batch.slots.lock().unwrap_or_else(|e| e.into_inner());
        let (slots, left) = &mut *guard;
        if slots[self.index].replace(body).is_none() {
            *left -= 1;
        }
        if *left > 0 {
            return None;
        }
        let mut out = BytesMut::new();
        out.extend_from_slice(b"[");
        for (i, s) in slots.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b",");
            }
            out.extend_from_slice(s.as_deref().unwrap_or(b"null"));
        }
        out.extend_from_slice(b"]");
        Some(out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_calls_are_one_per_method_in_first_seen_order_and_bounded() {
        let mut setup = Vec::new();
        let call = |m: &str, n: u32| Bytes::from(format!(r#"{{"id":{n},"method":"{m}"}}"#));
        record_setup(&mut setup, Some("connect".into()), call("connect", 0));
        record_setup(
            &mut setup,
            Some("sessionFs.setProvider".into()),
            call("sessionFs.setProvider", 1),
        );
        record_setup(&mut setup, Some("connect".into()), call("connect", 2));
        let methods: Vec<_> = setup.iter().map(|(m, _)| m.clone().unwrap()).collect();
        assert_eq!(methods, ["connect", "sessionFs.setProvider"]);
        assert_eq!(
            setup[0].1,
            call("connect", 2),
            "the latest connect replaces the first"
        );
        for i in 0..100 {
            record_setup(&mut setup, Some(format!("m{i}")), call("m", i));
        }
        assert_eq!(setup.len(), MAX_SETUP_CALLS);
    }
}
