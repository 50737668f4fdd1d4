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
use futures_util::StreamExt;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, warn};

use super::fanout::{self, Owner};
use super::link::{self, Link, LinkFailure, LinkSettings, LINK_QUEUE};
use super::methods::{self, Class, Learn, Replay};
use super::route::{self, ConnFacts, Decision, Forward, Request};
use super::state::{
    parse_internal_id, ClientId, ConnState, Fired, HashMap, Internal, Pending, Redispatch, ReplyTo,
    ServerRequest, SetupCall,
};
use crate::config::{KeySource, Secret};
use crate::proxy::Context;
use crate::snapshot::{ListenerRuntime, Pool};
use crate::upstream::{prober, Endpoint};
use crate::wire::codec::{write_frames, FrameCodec, FrameError};
use crate::wire::message::{
    self, parse_envelope, MessageKind, INTERNAL_ERROR, INVALID_REQUEST, SERVER_UNAVAILABLE,
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
/// Events handled in one go before the connection task looks at its other inputs again.
const EVENT_BATCH: usize = 64;
/// How long the writer may take to flush the last frames to a closing client.
const FLUSH_GRACE: Duration = Duration::from_secs(5);
/// How long a client is told to wait before retrying when its session's node is unavailable.
pub const RETRY_AFTER_MS: u64 = 1000;
/// sessiongate: a node accepted a request and did not answer within `request_timeout`.
pub const UPSTREAM_TIMEOUT: i64 = -32007;

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
    /// A fan-out's answer for the client.
    Answer { reply: ReplyTo, body: Bytes },
    /// Owner discovery found where a session lives: send the request there.
    Resend {
        id: ClientId,
        pending: Box<Pending>,
        to: Endpoint,
        body: Bytes,
    },
    /// Owner discovery found the session nowhere: the client gets the node's answer.
    NotFound {
        pending: Box<Pending>,
        answer: Bytes,
    },
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
        pool_name: Arc::from(runtime.pool.name()),
        max_frame_bytes: runtime.config.max_frame_bytes,
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
    // Dropping the connection ends its links and fan-outs and lets the writer finish.
    drop(conn);
    let _ = tokio::time::timeout(FLUSH_GRACE, writer).await;
}

struct Conn {
    ctx: Context,
    listener: Arc<str>,
    pool_name: Arc<str>,
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
}

impl Conn {
    async fn run(&mut self, mut reader: FrameReader<OwnedReadHalf>) {
        let shutdown = self.ctx.shutdown.token.clone();
        let mut reading = true;
        loop {
            if self.client_gone
                || (self.draining && self.state.pending_is_empty() && self.work.is_empty())
            {
                return;
            }
            let read_client = reading
                && self.outbox.len() < OUTBOX_PAUSE_CLIENT
                && !self.links.values().any(Link::blocked);
            let read_events = self.outbox.len() < OUTBOX_PAUSE_LINKS;
            let client_room = (!self.outbox.is_empty()).then(|| self.to_client.clone());
            let link_room = self
                .links
                .iter()
                .find_map(|(name, l)| l.waiting_for_room().map(|tx| (name.clone(), tx)));
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
                Some((node, permit)) = link_room_for(link_room) => Input::LinkRoom(node, permit),
                frame = reader.next(), if read_client => Input::Client(frame),
                Some(_) = self.work.join_next(), if !self.work.is_empty() => Input::Reaped,
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
                    // The client finished sending; answers still in flight are delivered.
                    reading = false;
                    self.draining = true;
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
                Input::Reaped => {}
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

    fn pool(&self) -> Option<Arc<Pool>> {
        let snapshot = self.ctx.shared.load();
        snapshot.listener(&self.listener).map(|l| l.pool.clone())
    }

    // ---- the client side ------------------------------------------------------------------

    /// `false` means the input was malformed and the connection must close (the error has
    /// been sent).
    fn on_client_frame(&mut self, body: Bytes) -> bool {
        if message::is_batch(&body) {
            return self.on_batch(body);
        }
        self.on_message(body, ReplyTo::Direct)
    }

    fn on_message(&mut self, body: Bytes, reply: ReplyTo) -> bool {
        let in_batch = reply != ReplyTo::Direct;
        let env = match parse_envelope(&body) {
            Ok(env) => env,
            Err(e) => {
                let err = message::error_response(None, e.code(), &e.to_string(), None);
                self.reply(reply, err);
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
                self.reply(reply, err);
                in_batch
            }
            MessageKind::Response => {
                self.client_answer(env.id, &body);
                true
            }
            MessageKind::Request | MessageKind::Notification => {
                let id = env.id.map(|raw| ClientId::from(raw.get()));
                let name = env.method.as_deref().unwrap_or_default();
                let session = env.session_id.as_deref();
                self.client_request(name, session, id, &body, reply);
                true
            }
        }
    }

    /// Split a batch, route each element, and answer with one array in the original order.
    fn on_batch(&mut self, body: Bytes) -> bool {
        let elements = match message::split_batch(&body) {
            Ok(elements) => elements,
            Err(e) => {
                let err = message::error_response(None, e.code(), &e.to_string(), None);
                self.reply(ReplyTo::Direct, err);
                return false;
            }
        };
        if elements.is_empty() {
            let err = message::error_response(None, INVALID_REQUEST, "empty batch", None);
            self.reply(ReplyTo::Direct, err);
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
        let count = answered.iter().filter(|a| **a).count();
        let batch = (count > 0).then(|| self.state.new_batch(count));
        let mut index = 0;
        for (raw, answered) in elements.iter().zip(answered) {
            let reply = match (batch, answered) {
                (Some(batch), true) => {
                    index += 1;
                    ReplyTo::Batch {
                        batch,
                        index: index - 1,
                    }
                }
                _ => ReplyTo::Direct,
            };
            self.on_message(body.slice_ref(raw.get().as_bytes()), reply);
        }
        true
    }

    fn client_request(
        &mut self,
        name: &str,
        session: Option<&str>,
        id: Option<ClientId>,
        body: &Bytes,
        reply: ReplyTo,
    ) {
        let method = methods::lookup(name);
        if method.class == Class::Unknown {
            self.ctx.metrics.unknown_method(&self.pool_name, name);
        }
        if let Some(id) = &id {
            if self.draining {
                let data = json!({ "retryAfterMs": RETRY_AFTER_MS });
                let err = error_for(
                    id,
                    SERVER_UNAVAILABLE,
                    "sessiongate is shutting down",
                    &data,
                );
                return self.reply(reply, err);
            }
            if self.state.is_pending(id) {
                let msg = "a request with this id is already in flight";
                let err = error_for(id, INVALID_REQUEST, msg, &Value::Null);
                return self.reply(reply, err);
            }
        }
        let Some(pool) = self.pool() else {
            return self.fail(id.as_deref(), reply, "listener is being removed", None);
        };
        let req = Request {
            method: name,
            class: method.class,
            session,
            body,
        };
        let facts = ConnFacts {
            home_key: &self.home_key,
            exchanges: self.state.exchanges(),
            new_session_id,
        };
        match route::decide(&req, &pool, &facts) {
            Decision::Forward(f) => self.forward(f, name, method.label, id, body, reply, &pool),
            Decision::Setup { to, replay } => {
                self.setup(to, replay, method.label, id, body, reply, &pool)
            }
            Decision::Refuse(r) => {
                if let Some(id) = id {
                    let data = match &r.upstream {
                        Some(u) => json!({ "retryAfterMs": RETRY_AFTER_MS, "upstream": &**u }),
                        None if r.code == SERVER_UNAVAILABLE => {
                            json!({ "retryAfterMs": RETRY_AFTER_MS })
                        }
                        None => Value::Null,
                    };
                    self.reply(reply, error_for(&id, r.code, &r.message, &data));
                }
            }
            // Fan-outs answer requests; a notification of these methods has nothing to do.
            _ if id.is_none() => {}
            Decision::FanOut(merge) => {
                let task = fanout::fan_out(self.owner(), pool, merge, id, body.clone(), reply);
                self.work.spawn(task);
            }
            Decision::Split(split) => {
                let task = fanout::split(self.owner(), pool, split, id, body.clone(), reply);
                self.work.spawn(task);
            }
            Decision::OpenLast => {
                let task = fanout::open_last(self.owner(), pool, id, body.clone(), reply);
                self.work.spawn(task);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn forward(
        &mut self,
        f: Forward,
        name: &str,
        label: &'static str,
        id: Option<ClientId>,
        body: &Bytes,
        reply: ReplyTo,
        pool: &Pool,
    ) {
        if let (true, Some(session)) = (f.unpin, &f.session) {
            pool.pins.unpin(session);
        }
        if name == "llmInference.httpResponseChunk" {
            self.maybe_end_exchange(body);
        }
        let sent = f.rewritten.unwrap_or_else(|| body.clone());
        if let Some(id) = id {
            let mut pending = Pending::new(f.to.name.clone(), label, reply);
            pending.learn = methods::learn(label);
            pending.session = f.session;
            pending.discover = f.discover.then(|| sent.clone());
            pending.redispatch = f.redispatch.then(|| Redispatch {
                body: sent.clone(),
                refused: Vec::new(),
            });
            self.state.wait(id, pending, pool.config.request_timeout);
        }
        self.send_to(&f.to, sent, None, pool);
    }

    /// A setup call: recorded, sent home, and copied to every other open link (whose answer
    /// the proxy consumes).
    #[allow(clippy::too_many_arguments)]
    fn setup(
        &mut self,
        to: Endpoint,
        replay: Replay,
        label: &'static str,
        id: Option<ClientId>,
        body: &Bytes,
        reply: ReplyTo,
        pool: &Pool,
    ) {
        let call = SetupCall {
            method: label,
            body: body.clone(),
        };
        self.state.record_setup(call.clone(), replay);
        if let Some(id) = id {
            let mut pending = Pending::new(to.name.clone(), label, reply);
            pending.redispatch = Some(Redispatch {
                body: body.clone(),
                refused: Vec::new(),
            });
            self.state.wait(id, pending, pool.config.request_timeout);
        }
        let others: Vec<Arc<str>> = self
            .links
            .keys()
            .filter(|n| **n != to.name)
            .cloned()
            .collect();
        let sent = for_node(&call, to.token.as_ref());
        self.send_to(&to, sent, Some(label), pool);
        for node in others {
            let internal = self.state.add_internal(
                node.clone(),
                Internal::Discard,
                pool.config.fanout_timeout,
            );
            let Some(link) = self.links.get_mut(&node) else {
                continue;
            };
            let copy = for_node(&call, link.endpoint.token.as_ref());
            if let Ok(copy) = message::with_id(&copy, &internal) {
                link.send(copy);
            }
        }
    }

    /// Send `body` to `to`, opening a link if needed. `setup`: the method of a setup call being
    /// sent, which a new link's replay leaves out (the call goes as itself).
    fn send_to(&mut self, to: &Endpoint, body: Bytes, setup: Option<&str>, pool: &Pool) {
        if !self.links.contains_key(&to.name) {
            self.open_link(to, setup, pool);
        }
        if let Some(link) = self.links.get_mut(&to.name) {
            link.send(body);
        }
    }

    fn open_link(&mut self, to: &Endpoint, setup: Option<&str>, pool: &Pool) {
        self.next_generation += 1;
        let generation = self.next_generation;
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let settings = LinkSettings {
            connect_timeout: pool.config.connect_timeout,
            max_frame_bytes: self.max_frame_bytes,
            open: self
                .ctx
                .metrics
                .upstream_connections_active
                .with_label_values(&[&self.pool_name, &to.name]),
        };
        self.link_tasks.spawn(link::run(
            to.clone(),
            generation,
            rx,
            self.events_tx.clone(),
            settings,
        ));
        let replay = self.state.setup_calls(setup);
        let labels = [&*self.listener, &*self.pool_name, &*to.name];
        let metrics = &self.ctx.metrics;
        let stats = link::LinkStats {
            ok: metrics
                .requests_total
                .with_label_values(&[labels[0], labels[1], labels[2], "ok"]),
            duration: metrics.request_duration.with_label_values(&labels),
        };
        let link = Link::new(to.clone(), generation, tx, replay, stats);
        self.links.insert(to.name.clone(), link);
        self.advance_replay(&to.name, pool.config.fanout_timeout);
    }

    /// Send a link's next setup call to replay (the replay ends, and what waited goes out,
    /// when none is left).
    fn advance_replay(&mut self, node: &Arc<str>, timeout: Duration) {
        loop {
            let Some(link) = self.links.get_mut(node) else {
                return;
            };
            let Some(call) = link.next_replay() else {
                return;
            };
            let body = for_node(&call, link.endpoint.token.as_ref());
            let id = self
                .state
                .add_internal(node.clone(), Internal::Replay, timeout);
            match message::with_id(&body, &id) {
                Ok(body) => {
                    if let Some(link) = self.links.get_mut(node) {
                        link.send_replay(body);
                    }
                    return;
                }
                // Not an object (it was forwarded as is): nothing to wait for.
                Err(_) => drop(self.state.take_internal_by_id(&id)),
            }
        }
    }

    /// The client answered a request a node sent: map the id back and forward it there.
    fn client_answer(&mut self, id: Option<&RawValue>, body: &[u8]) {
        let Some(n) = id.and_then(|raw| raw.get().parse::<u64>().ok()) else {
            return debug!("client response with an id the proxy never issued; dropped");
        };
        let Some(request) = self.state.take_server_request(n) else {
            return debug!(n, "client response for an unknown server request; dropped");
        };
        let Some(link) = self.links.get_mut(&request.upstream) else {
            return debug!(upstream = %request.upstream, "server request's link is gone; answer dropped");
        };
        if let Ok(rewritten) = message::with_id(body, &*request.id) {
            link.send(rewritten);
        }
    }

    fn maybe_end_exchange(&mut self, body: &[u8]) {
        let Ok(msg) = serde_json::from_slice::<Value>(body) else {
            return;
        };
        let params = &msg["params"];
        let ends = params["end"] == true || !params["error"].is_null();
        if let (true, Some(request)) = (ends, params["requestId"].as_str()) {
            self.state.end_exchange(request);
        }
    }

    // ---- events ---------------------------------------------------------------------------

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Upstream {
                node,
                generation,
                body,
            } => {
                if self.is_current(&node, generation) {
                    self.on_upstream(node, body);
                }
            }
            Event::LinkDown {
                node,
                generation,
                kind,
                why,
            } => {
                if self.is_current(&node, generation) {
                    self.link_down(&node, kind, &why);
                }
            }
            Event::Ask { to, body, reply } => {
                let Some(pool) = self.pool() else {
                    return drop(reply.send(None));
                };
                let internal = self.state.add_internal(
                    to.name.clone(),
                    Internal::Ask(reply),
                    pool.config.fanout_timeout,
                );
                match message::with_id(&body, &internal) {
                    Ok(body) => self.send_to(&to, body, None, &pool),
                    Err(_) => drop(self.state.take_internal_by_id(&internal)),
                }
            }
            Event::Answer { reply, body } => self.reply(reply, body),
            Event::Resend {
                id,
                mut pending,
                to,
                body,
            } => {
                let Some(pool) = self.pool() else {
                    return self.fail(Some(&id), pending.reply, "listener is being removed", None);
                };
                pending.upstream = to.name.clone();
                self.state.wait(id, *pending, pool.config.request_timeout);
                self.send_to(&to, body, None, &pool);
            }
            Event::NotFound { pending, answer } => {
                self.observe(&pending, "error");
                self.reply(pending.reply, answer);
            }
        }
    }

    fn is_current(&self, node: &str, generation: u64) -> bool {
        self.links
            .get(node)
            .is_some_and(|l| l.generation == generation)
    }

    /// A frame from `node`.
    fn on_upstream(&mut self, node: Arc<str>, body: Bytes) {
        let env = match parse_envelope(&body) {
            Ok(env) => env,
            Err(e) => return self.link_down(&node, LinkFailure::Malformed, &e.to_string()),
        };
        match env.kind {
            MessageKind::Notification => self.send_client(body),
            MessageKind::Request => {
                let Some(id) = env.id.map(RawValue::to_owned) else {
                    return;
                };
                if env.method.as_deref() == Some("llmInference.httpRequestStart") {
                    if let Ok(msg) = serde_json::from_slice::<Value>(&body) {
                        if let Some(request) = msg["params"]["requestId"].as_str() {
                            self.state.begin_exchange(request, node.clone());
                        }
                    }
                }
                let request = ServerRequest {
                    upstream: node.clone(),
                    id,
                    session: env.session_id.as_deref().map(Arc::from),
                };
                match self.state.add_server_request(request) {
                    Some(n) => match message::with_id(&body, &n) {
                        Ok(rewritten) => self.send_client(rewritten),
                        Err(e) => debug!(error = %e, "cannot rewrite server request id"),
                    },
                    None => {
                        let msg = "too many requests waiting for the client";
                        let err = message::error_response(env.id, INTERNAL_ERROR, msg, None);
                        if let Some(link) = self.links.get_mut(&node) {
                            link.send(err);
                        }
                    }
                }
            }
            MessageKind::Response => {
                let raw = env.id.map_or("null", RawValue::get);
                if let Some(n) = parse_internal_id(raw) {
                    return self.internal_answer(n, &node, body);
                }
                let Some(pending) = self.state.take_answered(raw, &node) else {
                    return debug!(upstream = %node, id = raw, "answer to no waiting request; dropped");
                };
                let (id, failed) = (ClientId::from(raw), env.has_error);
                self.answered(id, node, pending, body, failed);
            }
            MessageKind::Invalid => {
                self.link_down(&node, LinkFailure::Malformed, "invalid JSON-RPC message")
            }
        }
    }

    fn internal_answer(&mut self, n: u64, node: &Arc<str>, body: Bytes) {
        let Some((_, kind)) = self.state.take_internal(n) else {
            return;
        };
        match kind {
            Internal::Replay => {
                let timeout = self
                    .pool()
                    .map_or(Duration::from_secs(5), |p| p.config.fanout_timeout);
                self.advance_replay(node, timeout);
            }
            Internal::Ask(reply) => drop(reply.send(Some(body))),
            Internal::Discard => {}
        }
    }

    /// `node` answered the client's request `id`.
    fn answered(
        &mut self,
        id: ClientId,
        node: Arc<str>,
        mut pending: Pending,
        body: Bytes,
        failed: bool,
    ) {
        // Most answers teach nothing: no snapshot load for them.
        let needs_pool = pending.discover.is_some() || (!failed && pending.learn != Learn::Nothing);
        let pool = if needs_pool { self.pool() } else { None };
        if let (Some(resend), Some(pool)) = (pending.discover.take(), &pool) {
            if fanout::is_not_found(pending.method, &body, failed) {
                let pending = Box::new(pending);
                let task = fanout::discover_owner(
                    self.owner(),
                    pool.clone(),
                    node,
                    id,
                    pending,
                    resend,
                    body,
                );
                self.work.spawn(task);
                return;
            }
        }
        if let (false, Some(pool)) = (failed, &pool) {
            self.learn(pool, &node, &pending, &body);
        }
        self.observe(&pending, if failed { "error" } else { "ok" });
        self.reply(pending.reply, body);
    }

    /// What a successful answer teaches the pin table.
    fn learn(&self, pool: &Pool, node: &Arc<str>, pending: &Pending, body: &[u8]) {
        let pin = || {
            self.links
                .get(node)
                .map(|l| l.endpoint.pin())
                .or_else(|| pool.upstream(node).map(|u| u.endpoint.pin()))
        };
        match pending.learn {
            Learn::Nothing => return,
            Learn::PinRequested => {
                if let (Some(session), Some(pin)) = (&pending.session, pin()) {
                    pool.pins.pin(session, pin);
                }
            }
            Learn::PinAnswered => {
                let Ok(msg) = serde_json::from_slice::<Value>(body) else {
                    return;
                };
                let result = &msg["result"];
                let opened = !matches!(result["status"].as_str(), Some("not_found"));
                if let (true, Some(session), Some(pin)) =
                    (opened, result["sessionId"].as_str(), pin())
                {
                    pool.pins.pin(session, pin);
                }
            }
            Learn::Unpin => {
                // `session.delete` reports failure in its result; `sessions.delete` by error.
                let deleted = pending.method != "session.delete"
                    || body.windows(14).any(|w| w == b"\"success\":true");
                if let (true, Some(session)) = (deleted, &pending.session) {
                    pool.pins.unpin(session);
                }
            }
        }
        self.ctx
            .metrics
            .pinned_sessions
            .with_label_values(&[&self.pool_name])
            .set(pool.pins.len() as i64);
    }

    fn on_timer(&mut self, fired: Fired) {
        match fired {
            Fired::Request(id, pending) => {
                let timeout = self
                    .pool()
                    .map_or(Duration::ZERO, |p| p.config.request_timeout);
                let msg = format!(
                    "{}: server {} did not answer within {timeout:?}",
                    pending.method, pending.upstream
                );
                warn!(upstream = %pending.upstream, method = pending.method, "request timed out");
                let data = json!({
                    "upstream": &*pending.upstream,
                    "method": pending.method,
                    "timeoutMs": timeout.as_millis() as u64,
                });
                self.observe(&pending, "timeout");
                self.reply(pending.reply, error_for(&id, UPSTREAM_TIMEOUT, &msg, &data));
            }
            Fired::Internal(node, Internal::Replay) => {
                warn!(upstream = %node, "setup replay got no answer in time; continuing");
                let timeout = self
                    .pool()
                    .map_or(Duration::from_secs(5), |p| p.config.fanout_timeout);
                self.advance_replay(&node, timeout);
            }
            Fired::Internal(_, Internal::Ask(reply)) => drop(reply.send(None)),
            Fired::Internal(_, Internal::Discard) => {}
        }
    }

    /// The link to `node` is gone: forget it and answer every request still waiting on it, so
    /// the client sees an error instead of a hang. When the node refused the link (nothing
    /// reached it), requests any node may answer go to the next usable node instead.
    fn link_down(&mut self, node: &Arc<str>, kind: LinkFailure, why: &str) {
        // Dropping the link's sender ends its task.
        self.links.remove(node);
        let label = kind.as_str();
        warn!(upstream = %node, error = why, "upstream link {label} failure");
        let metrics = &self.ctx.metrics;
        metrics
            .upstream_link_failures_total
            .with_label_values(&[&self.pool_name, node, label])
            .inc();
        let pool = self.pool();
        if let Some(up) = pool.as_ref().and_then(|p| p.upstream(node).map(|u| (p, u))) {
            prober::passive_failure(metrics, up.1, up.0.config.passive.as_ref(), why);
        }
        for internal in self.state.take_internal_on(node) {
            if let Internal::Ask(reply) = internal {
                let _ = reply.send(None);
            }
        }
        self.state.forget_server_requests_of(node);
        for (id, mut pending) in self.state.take_all_on(node) {
            if let (LinkFailure::Connect, Some(pool)) = (kind, &pool) {
                if let Some((to, body)) = self.redispatch_target(pool, node, &mut pending) {
                    self.ctx
                        .metrics
                        .redispatches_total
                        .with_label_values(&[&self.pool_name, node])
                        .inc();
                    debug!(from = %node, to = %to.name, "request redispatched");
                    // A setup call goes as itself: a new link's replay leaves it out.
                    let setup = matches!(methods::lookup(pending.method).class, Class::Setup(_))
                        .then_some(pending.method);
                    pending.upstream = to.name.clone();
                    self.state.wait(id, pending, pool.config.request_timeout);
                    self.send_to(&to, body, setup, pool);
                    continue;
                }
            }
            let msg = match &pending.session {
                Some(s) => format!("session {s}: its server {node} is unavailable ({why})"),
                None => format!("server {node} is unavailable ({why})"),
            };
            self.observe(&pending, "unavailable");
            self.fail(Some(&id), pending.reply, &msg, Some(node));
        }
    }

    /// Where a request whose node refused the link goes next, with the body to send there;
    /// `None` if it must fail instead (bound to a session, or no other node usable).
    fn redispatch_target(
        &self,
        pool: &Pool,
        refused_by: &Arc<str>,
        pending: &mut Pending,
    ) -> Option<(Endpoint, Bytes)> {
        let r = pending.redispatch.as_mut()?;
        r.refused.push(refused_by.clone());
        // The same key that placed it, so every client connection spreads the same way.
        let key = pending
            .session
            .as_deref()
            .map_or(&self.home_key[..], str::as_bytes);
        let target = pool.route_avoiding(key, &r.refused)?.endpoint.clone();
        let body = if pending.method == "connect" {
            with_token(&r.body, target.token.as_ref())
        } else {
            r.body.clone()
        };
        Some((target, body))
    }

    // ---- replies and metrics ----------------------------------------------------------------

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

    /// Record latency and outcome metrics for a finished request.
    fn observe(&mut self, pending: &Pending, outcome: &str) {
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
    }
}

/// Waits for room in the client's queue; never, without a queue to wait on.
async fn room(tx: Option<mpsc::Sender<Bytes>>) -> Option<mpsc::OwnedPermit<Bytes>> {
    match tx {
        Some(tx) => tx.reserve_owned().await.ok(),
        None => std::future::pending().await,
    }
}

async fn link_room_for(
    waiting: Option<(Arc<str>, mpsc::Sender<Bytes>)>,
) -> Option<(Arc<str>, mpsc::OwnedPermit<Bytes>)> {
    let (node, tx) = waiting?;
    let permit = tx.reserve_owned().await.ok()?;
    Some((node, permit))
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
