//! One client connection, owned by one task. The task reads the client's frames, routes each
//! request ([`super::route`]), and is the only one that touches the connection's state
//! ([`super::state`]) and its links ([`super::link`]): link tasks and fan-out tasks send it
//! [`Event`]s. A separate writer task sends frames to the client, so a slow client never stops
//! the reading of its requests (the CLI holds a response until the client answers a request of
//! its own). Nothing here waits on a bounded queue: a full link queue or client queue pauses the
//! reading of the client (or of the links) instead, so timers and other nodes keep going.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesOrdered, FuturesUnordered};
use futures_util::StreamExt;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, warn};

mod client;
mod gate;
mod links;
mod turns;
mod upstream;

use gate::{Admission, Routed, Verdict};
use turns::Turn;

use super::fanout::{self, Owner};
use super::link::{self, Link, LinkFailure, LinkSettings, LINK_QUEUE};
use super::methods::{self, Class, Learn, Replay};
use super::route::{self, ConnFacts, Decision, Forward, Request};
use super::state::{
    is_reserved_id, parse_internal_id, ClientId, ConnState, Fired, HashMap, Internal, Pending,
    Redispatch, ReplyTo, ServerRequest, SetupCall,
};
use super::turns::{NoTurn, TurnLock, TURN_METHODS};
use crate::config::{IdentitySource, KeySource, Limits, Secret};
use crate::identity::{Identities, Identity};
use crate::limits;
use crate::proxy::Context;
use crate::sessions::stats::Outcome;
use crate::snapshot::{ListenerRuntime, Pool, Snapshot};
use crate::upstream::{prober, Endpoint};
use crate::wire::codec::{write_frames, FrameCodec, FrameError};
use crate::wire::message::{
    self, parse_envelope, MessageKind, AUTHENTICATION_FAILED, FLEET_FULL, FORBIDDEN,
    INTERNAL_ERROR, INVALID_REQUEST, RATE_LIMITED, SERVER_UNAVAILABLE, SESSION_BUSY,
    UPSTREAM_TIMEOUT,
};
use crate::wire::reader::FrameReader;

/// Frames waiting for the client writer.
const CLIENT_QUEUE: usize = 256;
/// Events from links and fan-outs waiting for the connection task.
const EVENTS_QUEUE: usize = 1024;
/// Frames held for the client beyond its queue before the links stop being read.
const OUTBOX_PAUSE_LINKS: usize = 256;
/// ... and before the client itself stops being read (its own error replies pile up there).
const OUTBOX_PAUSE_CLIENT: usize = 1024;
/// Fan-outs, splits and discoveries in progress before the client stops being read.
const MAX_WORK: usize = 64;
/// Events handled in one go before the connection task looks at its other inputs again.
const EVENT_BATCH: usize = 64;
/// How long the writer may take to flush the last frames to a closing client.
const FLUSH_GRACE: Duration = Duration::from_secs(5);
/// How long a client is told to wait before retrying when its session's node is unavailable.
pub const RETRY_AFTER_MS: u64 = 1000;

/// What link and fan-out tasks tell the connection task.
#[derive(Debug)]
pub enum Event {
    /// A frame from a node.
    Upstream {
        node: Arc<str>,
        generation: u64,
        body: Bytes,
    },
    /// A link failed to connect, closed or sent garbage.
    LinkDown {
        node: Arc<str>,
        generation: u64,
        kind: LinkFailure,
        why: String,
    },
    /// A fan-out asks a node something on the proxy's behalf.
    Ask {
        to: Endpoint,
        body: Bytes,
        reply: oneshot::Sender<Option<Bytes>>,
    },
    /// A fan-out's answer for the client's request `id`.
    Answer {
        id: ClientId,
        reply: ReplyTo,
        body: Bytes,
    },
    /// Owner discovery found where a session lives: send the request there.
    Resend {
        id: ClientId,
        pending: Box<Pending>,
        to: Endpoint,
        body: Bytes,
    },
    /// Owner discovery found the session nowhere: the client gets the node's answer.
    NotFound {
        id: ClientId,
        pending: Box<Pending>,
        answer: Bytes,
    },
}

/// Serve one JSON-RPC client connection until it closes. `cert`: the identity of the client
/// certificate of an mTLS connection.
pub async fn serve<IO>(
    stream: IO,
    ctx: Context,
    listener: Arc<str>,
    peer: SocketAddr,
    runtime: Arc<ListenerRuntime>,
    cert: Option<Identity>,
) where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (read, write) = tokio::io::split(stream);
    let (to_client, client_rx) = mpsc::channel(CLIENT_QUEUE);
    let writer = AbortOnDropHandle::new(tokio::spawn(write_frames(write, client_rx)));
    let home_key = if runtime.config.key.contains(&KeySource::ClientIp) {
        peer.ip().to_string().into_bytes()
    } else {
        rand::random::<[u8; 16]>().to_vec()
    };
    let reader = FrameReader::new(
        read,
        FrameCodec::new(runtime.config.max_frame_bytes),
        Some(runtime.config.frame_timeout),
    );
    let (events_tx, events) = mpsc::channel(EVENTS_QUEUE);
    let mut conn = Conn {
        pool_name: Arc::from(runtime.default_pool().map_or("none", |p| p.name())),
        caller: None,
        cert,
        closing: false,
        binds: runtime.config.identity.is_some() && ctx.shared.load().identities.is_some(),
        peer_ip: peer.ip(),
        holder: Arc::from(uuid::Uuid::new_v4().to_string()),
        admissions: FuturesOrdered::new(),
        turn_waits: FuturesUnordered::new(),
        turns_taken: 0,
        turns: HashMap::default(),
        store_tasks: JoinSet::new(),
        max_frame_bytes: runtime.config.max_frame_bytes,
        max_inflight: runtime.config.max_inflight_per_connection,
        ctx,
        listener,
        home_key,
        state: ConnState::default(),
        links: HashMap::default(),
        method_durations: HashMap::default(),
        sweep: Box::pin(tokio::time::sleep(Duration::ZERO)),
        next_generation: 0,
        link_tasks: JoinSet::new(),
        work: JoinSet::new(),
        work_requests: HashMap::default(),
        work_logged: HashMap::default(),
        events_tx,
        events,
        to_client,
        outbox: VecDeque::new(),
        draining: false,
        client_gone: false,
    };
    drop(runtime);
    conn.run(reader).await;
    conn.flush_outbox().await;
    conn.release_turns().await;
    // Dropping the connection ends its links and fan-outs and lets the writer finish.
    drop(conn);
    let _ = tokio::time::timeout(FLUSH_GRACE, writer).await;
}

struct Conn {
    ctx: Context,
    listener: Arc<str>,
    /// The pool this connection routes into (its caller's, once known); for metric labels.
    pool_name: Arc<str>,
    /// Who the client is, once it said so (`connect`'s token) or its certificate did.
    caller: Option<Identity>,
    /// The client certificate's identity (mTLS).
    cert: Option<Identity>,
    /// The client was refused (no identity, no pool): close once the answer is out.
    closing: bool,
    /// Sessions have owners on this listener: creates bind them, others are checked.
    binds: bool,
    peer_ip: std::net::IpAddr,
    /// This connection, as the holder of turn locks.
    holder: Arc<str>,
    /// Requests waiting for admission, answered in order.
    admissions: FuturesOrdered<Admission>,
    /// Sends waiting for their session's turn.
    turn_waits: FuturesUnordered<Admission>,
    /// Turns this connection has asked for (numbering their lock holders).
    turns_taken: u64,
    /// Turn locks this connection holds, by session.
    turns: HashMap<Arc<str>, Turn>,
    /// Writes to the shared store (bindings, lock renewals and releases).
    store_tasks: JoinSet<()>,
    /// The listener's `max_inflight_per_connection`: reading pauses at this many pending.
    max_inflight: usize,
    max_frame_bytes: usize,
    /// The key whose ring owner is this connection's home node.
    home_key: Vec<u8>,
    state: ConnState,
    links: HashMap<Arc<str>, Link>,
    /// `sessiongate_jsonrpc_request_duration_seconds` per method, resolved once per connection.
    method_durations: HashMap<&'static str, prometheus::Histogram>,
    /// Fires when the earliest request deadline may have passed.
    sweep: Pin<Box<tokio::time::Sleep>>,
    next_generation: u64,
    link_tasks: JoinSet<()>,
    /// Fan-outs, splits and owner discoveries in progress.
    work: JoinSet<()>,
    /// The request each of them answers.
    work_requests: HashMap<tokio::task::Id, (ClientId, ReplyTo)>,
    /// Requests answered by such a task that the access log sampled.
    work_logged: HashMap<ClientId, WorkNote>,
    events_tx: mpsc::Sender<Event>,
    events: mpsc::Receiver<Event>,
    to_client: mpsc::Sender<Bytes>,
    /// Frames for the client that did not fit in its queue, in order.
    outbox: VecDeque<Bytes>,
    /// No new requests (shutdown, or the client finished sending): finish what is in flight.
    draining: bool,
    client_gone: bool,
}

/// What woke the connection task.
enum Input {
    Client(Option<Result<Bytes, FrameError>>),
    Event(Event),
    Sweep,
    ClientRoom(mpsc::OwnedPermit<Bytes>),
    LinkRoom(Arc<str>, mpsc::OwnedPermit<Bytes>),
    Shutdown,
    Reaped,
    Admitted(Box<(Routed, Verdict)>),
    /// A fan-out task ended: how, and which task.
    WorkDone(Result<tokio::task::Id, tokio::task::JoinError>),
}

impl Conn {
    async fn run<R: AsyncRead + Unpin>(&mut self, mut reader: FrameReader<R>) {
        let shutdown = self.ctx.shutdown.token.clone();
        let mut reading = true;
        loop {
            if self.to_client.is_closed() {
                self.client_gone = true;
            }
            if self.client_gone
                || self.closing
                || (self.draining
                    && self.state.pending_is_empty()
                    && self.work.is_empty()
                    && self.admissions.is_empty()
                    && self.turn_waits.is_empty())
            {
                return;
            }
            let read_client = reading
                && self.outbox.len() < OUTBOX_PAUSE_CLIENT
                && self.state.pending_len() < self.max_inflight
                && self.work.len() + self.admissions.len() + self.turn_waits.len() < MAX_WORK
                && !self.links.values().any(Link::blocked);
            if !read_client {
                // The proxy is not reading: a frame the client began is not the client's delay.
                reader.suspend();
            }
            let read_events = self.outbox.len() < OUTBOX_PAUSE_LINKS;
            let client_room = (!self.outbox.is_empty()).then(|| self.to_client.clone());
            let link_rooms: FuturesUnordered<_> = self
                .links
                .iter()
                .filter_map(|(name, l)| l.waiting_for_room().map(|tx| (name.clone(), tx)))
                .map(|(name, tx)| async move { (name, tx.reserve_owned().await) })
                .collect();
            let mut link_rooms = link_rooms;
            let next_sweep = self.state.next_sweep();
            if let Some(at) = next_sweep {
                if self.sweep.deadline() != at {
                    self.sweep.as_mut().reset(at);
                }
            }
            // Unbiased: a node flooding events must not starve the client's requests.
            let input = tokio::select! {
                Some(event) = self.events.recv(), if read_events => Input::Event(event),
                () = &mut self.sweep, if next_sweep.is_some() => Input::Sweep,
                Some(permit) = room(client_room) => Input::ClientRoom(permit),
                Some((node, Ok(permit))) = link_rooms.next(), if !link_rooms.is_empty() => {
                    Input::LinkRoom(node, permit)
                }
                frame = reader.next(), if read_client => Input::Client(frame),
                Some(admitted) = self.admissions.next(), if !self.admissions.is_empty() => {
                    Input::Admitted(Box::new(admitted))
                }
                Some(admitted) = self.turn_waits.next(), if !self.turn_waits.is_empty() => {
                    Input::Admitted(Box::new(admitted))
                }
                Some(_) = self.store_tasks.join_next(), if !self.store_tasks.is_empty() => {
                    Input::Reaped
                }
                Some(done) = self.work.join_next_with_id(), if !self.work.is_empty() => {
                    Input::WorkDone(done.map(|(id, ())| id))
                }
                Some(_) = self.link_tasks.join_next(), if !self.link_tasks.is_empty() => {
                    Input::Reaped
                }
                _ = shutdown.cancelled(), if !self.draining => Input::Shutdown,
            };
            match input {
                Input::Event(event) => {
                    self.on_event(event);
                    // Take what else is queued now, without a round through the select.
                    for _ in 0..EVENT_BATCH {
                        if self.outbox.len() >= OUTBOX_PAUSE_LINKS {
                            break;
                        }
                        match self.events.try_recv() {
                            Ok(event) => self.on_event(event),
                            Err(_) => break,
                        }
                    }
                }
                Input::Sweep => {
                    for fired in self.state.sweep(tokio::time::Instant::now()) {
                        self.on_timer(fired);
                    }
                }
                Input::ClientRoom(permit) => {
                    if let Some(frame) = self.outbox.pop_front() {
                        permit.send(frame);
                    }
                    while let Some(frame) = self.outbox.pop_front() {
                        if let Err(e) = self.to_client.try_send(frame) {
                            match e {
                                mpsc::error::TrySendError::Full(frame) => {
                                    self.outbox.push_front(frame);
                                    break;
                                }
                                mpsc::error::TrySendError::Closed(_) => self.client_gone = true,
                            }
                        }
                    }
                }
                Input::LinkRoom(node, permit) => {
                    if let Some(link) = self.links.get_mut(&node) {
                        link.send_reserved(permit);
                    }
                }
                Input::Client(None) => {
                    // The client finished sending; answers still in flight are delivered, but
                    // what nodes asked the client will never be answered: they are told so.
                    reading = false;
                    self.draining = true;
                    for request in self.state.take_all_server_requests() {
                        let msg = "the client went away";
                        let err =
                            message::error_response(Some(&request.id), INTERNAL_ERROR, msg, None);
                        if let Some(link) = self.links.get_mut(&request.upstream) {
                            link.send(err);
                        }
                    }
                }
                Input::Client(Some(Err(FrameError::Io(e)))) => {
                    return debug!(error = %e, "client connection ended");
                }
                Input::Client(Some(Err(e))) => {
                    // The stream can't be re-synchronised after a framing error: answer, close.
                    debug!(error = %e, "bad frame from client; closing");
                    let code = match e {
                        FrameError::FrameTooLarge { .. }
                        | FrameError::HeaderTooLarge { .. }
                        | FrameError::Timeout(_) => INVALID_REQUEST,
                        _ => message::PARSE_ERROR,
                    };
                    let err = message::error_response(None, code, &e.to_string(), None);
                    self.send_client(err);
                    return;
                }
                Input::Client(Some(Ok(body))) => {
                    if !self.on_client_frame(body) {
                        return;
                    }
                }
                Input::Shutdown => self.draining = true,
                Input::Admitted(admitted) => self.admitted(*admitted),
                Input::Reaped => {}
                Input::WorkDone(Ok(task)) => {
                    self.work_requests.remove(&task);
                }
                Input::WorkDone(Err(e)) => {
                    // A task that panicked or was cut off still owes its request an answer.
                    if let Some((id, reply)) = self.work_requests.remove(&e.id()) {
                        warn!(error = %e, "a fan-out task failed");
                        self.state.returned(&id);
                        let msg = "sessiongate failed to answer this request";
                        self.reply(reply, error_for(&id, INTERNAL_ERROR, msg, &Value::Null));
                    }
                }
            }
        }
    }

    /// Give the writer what the outbox still holds, for a bounded time.
    async fn flush_outbox(&mut self) {
        let deadline = tokio::time::sleep(FLUSH_GRACE);
        tokio::pin!(deadline);
        while let Some(frame) = self.outbox.pop_front() {
            tokio::select! {
                sent = self.to_client.send(frame) => if sent.is_err() { return },
                _ = &mut deadline => return,
            }
        }
    }

    /// Run `task`, which answers the client's request `id`, as work of this connection.
    fn spawn_work(
        &mut self,
        id: ClientId,
        reply: ReplyTo,
        task: impl std::future::Future<Output = ()> + Send + 'static,
        noted: Option<WorkNote>,
    ) {
        self.state.lent(id.clone());
        if let Some(noted) = noted.filter(|_| self.ctx.access_log.sampled()) {
            self.work_logged.insert(id.clone(), noted);
        }
        let handle = self.work.spawn(task);
        self.work_requests.insert(handle.id(), (id, reply));
    }

    /// The pool this connection routes into now: its caller's.
    fn pool(&self) -> Option<Arc<Pool>> {
        let snapshot = self.ctx.shared.load();
        let listener = snapshot.listener(&self.listener)?;
        Some(listener.route_for(self.caller.as_ref())?.pool.clone())
    }

    fn owner(&self) -> Owner {
        Owner::new(
            self.events_tx.clone(),
            self.ctx.metrics.clone(),
            self.pool_name.clone(),
        )
    }

    /// Deliver an answer: directly, or into its batch.
    fn reply(&mut self, reply: ReplyTo, body: Bytes) {
        if let Some(frame) = self.state.fill(reply, body) {
            self.send_client(frame);
        }
    }

    fn send_client(&mut self, frame: Bytes) {
        if !self.outbox.is_empty() {
            return self.outbox.push_back(frame);
        }
        match self.to_client.try_send(frame) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(frame)) => self.outbox.push_back(frame),
            Err(mpsc::error::TrySendError::Closed(_)) => self.client_gone = true,
        }
    }

    /// Answer a request with "server unavailable" (-32001) and `data.retryAfterMs`.
    fn fail(&mut self, id: Option<&str>, reply: ReplyTo, message: &str, upstream: Option<&str>) {
        let Some(id) = id else { return };
        let data = match upstream {
            Some(u) => json!({ "retryAfterMs": RETRY_AFTER_MS, "upstream": u }),
            None => json!({ "retryAfterMs": RETRY_AFTER_MS }),
        };
        self.reply(reply, error_for(id, SERVER_UNAVAILABLE, message, &data));
    }

    /// Record latency and outcome metrics for a finished request, and its access log line.
    fn observe(&mut self, pending: &Pending, outcome: &'static str, bytes_out: usize) {
        self.log_request(LoggedRequest {
            method: pending.method,
            session: pending.session.as_ref(),
            upstream: Some(&pending.upstream),
            outcome,
            started: pending.started,
            bytes_in: pending.bytes_in as usize,
            bytes_out,
        });
        let m = &self.ctx.metrics;
        let secs = pending.started.elapsed().as_secs_f64();
        // The common case, a node's answer on its link, uses the link's own handles.
        match self
            .links
            .get(&pending.upstream)
            .filter(|_| outcome == "ok")
        {
            Some(link) => {
                link.stats.ok.inc();
                link.stats.duration.observe(secs);
            }
            None => {
                let labels = [&*self.listener, &*self.pool_name, &*pending.upstream];
                m.requests_total
                    .with_label_values(&[labels[0], labels[1], labels[2], outcome])
                    .inc();
                m.request_duration.with_label_values(&labels).observe(secs);
            }
        }
        self.method_durations
            .entry(pending.method)
            .or_insert_with(|| {
                m.jsonrpc_request_duration
                    .with_label_values(&[&self.pool_name, pending.method])
            })
            .observe(secs);
        if let Some(session) = &pending.session {
            m.sessions.observe(&self.pool_name, session, secs);
        }
        self.record_session(pending, outcome);
    }

    /// The session's own figures (`/admin/sessions`). A request that made its pin (a create)
    /// had none when sent: it is looked up now, after the answer pinned it.
    fn record_session(&self, pending: &Pending, outcome: &str) {
        let elapsed = pending.started.elapsed();
        let outcome = Outcome::from_label(outcome);
        match (&pending.stats, &pending.session) {
            (Some(in_flight), _) => in_flight.stats().record(pending.method, elapsed, outcome),
            (None, Some(session)) if pending.learn != Learn::Nothing => {
                if let Some(stats) = self.pool().and_then(|p| p.pins.stats(session)) {
                    stats.record(pending.method, elapsed, outcome);
                }
            }
            _ => {}
        }
    }
}

/// A request a task answers (a fan-out, a split), as the access log will need it at the answer.
pub(super) struct WorkNote {
    method: &'static str,
    started: tokio::time::Instant,
    bytes_in: usize,
}

impl WorkNote {
    pub(super) fn new(method: &'static str, body: &[u8]) -> WorkNote {
        WorkNote {
            method,
            started: tokio::time::Instant::now(),
            bytes_in: body.len(),
        }
    }
}

/// A finished request, for the access log.
pub(super) struct LoggedRequest<'a> {
    pub method: &'static str,
    pub session: Option<&'a Arc<str>>,
    /// `None`: answered by the proxy (a refusal, a merged fan-out).
    pub upstream: Option<&'a Arc<str>>,
    pub outcome: &'static str,
    pub started: tokio::time::Instant,
    pub bytes_in: usize,
    pub bytes_out: usize,
}

impl Conn {
    /// One access log line for a request the client sent, when the access log samples it.
    pub(super) fn log_request(&self, r: LoggedRequest<'_>) {
        if self.ctx.access_log.sampled() {
            self.log_sampled(r);
        }
    }

    /// The answer a task gave the request `id`, logged if it was sampled when it began.
    pub(super) fn log_work_answer(&mut self, id: &ClientId, answer: &[u8]) {
        let Some(WorkNote {
            method,
            started,
            bytes_in,
        }) = self.work_logged.remove(id)
        else {
            return;
        };
        let failed = parse_envelope(answer).is_ok_and(|env| env.has_error);
        self.log_sampled(LoggedRequest {
            method,
            session: None,
            upstream: None,
            outcome: if failed { "error" } else { "ok" },
            started,
            bytes_in,
            bytes_out: answer.len(),
        });
    }

    /// A request the proxy refused (a policy, a limit, a full fleet): answered at once.
    pub(super) fn log_refused(&self, method: &'static str, bytes_in: usize, bytes_out: usize) {
        self.log_request(LoggedRequest {
            method,
            session: None,
            upstream: None,
            outcome: "refused",
            started: tokio::time::Instant::now(),
            bytes_in,
            bytes_out,
        });
    }

    fn log_sampled(&self, r: LoggedRequest<'_>) {
        self.ctx.access_log.log(crate::access_log::Record {
            time: std::time::SystemTime::now(),
            protocol: "jsonrpc",
            listener: self.listener.clone(),
            pool: self.pool_name.clone(),
            upstream: r.upstream.cloned(),
            session: r.session.map_or(crate::access_log::Session::None, |s| {
                crate::access_log::Session::Id(s.clone())
            }),
            user: self.caller.as_ref().map(|c| c.user.clone()),
            method: r.method.into(),
            outcome: r.outcome.into(),
            latency: r.started.elapsed(),
            bytes_in: Some(r.bytes_in as u64),
            bytes_out: Some(r.bytes_out as u64),
        });
    }
}

/// Waits for room in the client's queue; never, without a queue to wait on.
async fn room(tx: Option<mpsc::Sender<Bytes>>) -> Option<mpsc::OwnedPermit<Bytes>> {
    match tx {
        Some(tx) => tx.reserve_owned().await.ok(),
        None => std::future::pending().await,
    }
}

fn new_session_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A JSON-RPC error answering the client's request `id` (its JSON text).
fn error_for(id: &str, code: i64, message: &str, data: &Value) -> Bytes {
    let raw = RawValue::from_string(id.to_owned()).ok();
    let data = (!data.is_null()).then_some(data);
    message::error_response(raw.as_deref(), code, message, data)
}

/// A setup call as it goes to one node: `connect` carries that node's token.
fn for_node(call: &SetupCall, token: Option<&Secret>) -> Bytes {
    if call.method == "connect" {
        with_token(&call.body, token)
    } else {
        call.body.clone()
    }
}

/// Put the node's connection token into `connect`'s `params.token` (clients never see it).
fn with_token(body: &Bytes, token: Option<&Secret>) -> Bytes {
    match token {
        None => body.clone(),
        Some(t) => message::with_param(body, "token", Value::String(t.expose().to_owned()))
            .unwrap_or_else(|_| body.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
