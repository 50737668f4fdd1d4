//! An in-process mock of a headless Copilot CLI server (`copilot --headless --port N`) for unit
//! tests, benches and the demo (cargo feature `demo`): JSON-RPC 2.0 over LSP framing
//! ([`FrameCodec`]) on 127.0.0.1, mirroring the wire shapes of the real CLI (`@github/copilot`
//! 1.0.102, the version the interop suite in `tests/interop/` runs) — `connect` with an optional
//! connection token (-32001 AUTHENTICATION_REQUIRED / -32002 AUTHENTICATION_FAILED), the global
//! methods, sessions that live in server-level state ("on disk") and survive [`MockCli::kill`] +
//! [`MockCli::revive`], `session.event` fan-out to the connections attached to a session and
//! `session.lifecycle` to every connection, the exact `Session not found` errors, and one
//! server→client request (`hooks.invoke` before answering `session.send` when the session was
//! created or resumed with `hooks: true`), which holds the `session.send` response until the
//! client answers — the case that proves a proxy keeps both directions flowing.
//!
//! Each connection has a reader (requests are handled in arrival order, synchronously, so the
//! notifications one request causes are queued around its response exactly as described below) and
//! a writer task fed by a bounded queue; a client that lets [`OUTBOX_FRAMES`] frames pile up is
//! disconnected, and frames over 64 MiB close the connection (codec limit), so memory stays bounded.
//! Responses echo the client's raw `id` byte for byte. Like the real CLI, a session is *loaded*
//! while at least one connection is attached to it (created or resumed it and has not detached or
//! closed): `session.send`, `session.getMessages` and `session.abort` need a loaded session, any
//! connection may call them, and the events go to the attached connections only.
//!
//! The server-scoped `sessions.*` namespace (module `sessions`) works on every session on disk:
//! `sessions.list` (with `metadataLimit`), `getMetadata`, `fork`, `bulkDelete`, `checkInUse`,
//! `pruneOld`, `findByPrefix`, `findByTaskId`, `getLastForContext`, `getSizes`,
//! `listNonEmptySessionIds`, `open` (kinds `create`, `resume`, `resumeLast`, `attach`; an unknown
//! session is `{"status": "not_found"}`, a result), `delete`, `close` (unloads), `save`,
//! `releaseLock`, `getClientMetadata` and `enrichMetadata`. A session's size is the length of its
//! persisted events as JSON lines (at least 1).
//!
//! For proxy tests, [`MockCli::set_fault`] arms a [`Fault`] for one method — [`Fault::Hang`] (never
//! answered), [`Fault::Delay`] (answered late, overtaken by later answers), [`Fault::Garbage`]
//! (bytes that are not a frame instead of the answer) or [`Fault::Close`] (the connection is
//! closed instead) — on every connection, before authentication, until [`MockCli::clear_faults`]
//! and across kill/revive; [`MockCli::requests_for`] counts the requests per method, so a test
//! can tell whether a request reached this node.
//!
//! Turns: `session.send` is answered `{messageId}` at once, followed by `user.message`; the turn
//! then runs for [`MockCliOptions::turn_duration`] (changeable with [`MockCli::set_turn_duration`];
//! zero, the default, ends it at once) and ends with `session.error` then `session.idle` (and
//! lifecycle `session.updated`). A send to a session whose turn is still running starts a turn
//! alongside it (each ends after its own duration) and is counted by
//! [`MockCli::overlapping_turns`], with [`MockCli::max_concurrent_turns`] the most turns one
//! session ever ran at once: the detector for proxies that must serialize turns. Running turns
//! die with the process ([`MockCli::kill`]), without their closing events.
//!
//! Deliberate divergences from the real CLI (1.0.102):
//! - `session.create` persists its `session.start` event at once, so a created-but-never-messaged
//!   session is listed, has metadata, and is resumable (the real CLI needs a first message).
//! - `session.lifecycle` `session.created` is sent once (the real CLI sends it twice), and only the
//!   events that matter for routing are emitted: `session.start`, `session.resume`,
//!   `user.message`, `session.error` (`"mock: no model"`), `session.idle` (ephemeral), plus
//!   lifecycle `session.created` / `session.updated`. No `pending_messages.modified`,
//!   `tools_updated`, `session.shutdown` on detach, etc.
//! - Lifecycle notifications reach only connections that may call methods (authenticated, or any
//!   on a server without token); unobserved on the real CLI.
//! - `version` is `mock-<name>`; `context.cwd` is `/mock`; `session.abort` on a loaded session
//!   answers `{}` and a missing `params.sessionId` answers -32602 (both unobserved).
//! - A frame-level error (bad header, oversized frame) closes the connection.
//! - `sessions.checkInUse` reports the requested sessions that are loaded (attached to some
//!   connection); the real CLI reports sessions locked by another process, which one mock process
//!   cannot have.
//! - `taskId` on `session.create` and in `sessions.open` options is a mock convenience that gives
//!   `sessions.findByTaskId` something to find; such sessions' list entries carry `mcTaskId`.
//! - Only an explicit `name` (`session.create`, `sessions.open` options, `sessions.fork`) makes a
//!   session named; a fork without one answers `"<summary> (fork)"` but stays unnamed (listed
//!   under its summary, prunable without `includeNamed`). A fork copies the events verbatim (ids
//!   and the source's `session.start` included), is unloaded, and gets no lifecycle notification;
//!   the `sessions.*` methods send no notifications beyond those of the `session.create` /
//!   `session.resume` that `sessions.open` stands for.
//! - `sessions.pruneOld` lists ids in `skipped`, fills `candidates` on a dry run and `deleted`
//!   otherwise (never both), and prunes loaded sessions too; `sessions.getClientMetadata` always
//!   answers empty `metadata`; `sessions.enrichMetadata` overwrites `summary`, `name`,
//!   `clientName` and `context` of a known record.

mod faults;
mod sessions;
#[cfg(test)]
mod tests;

pub use faults::Fault;

use std::collections::{BTreeSet, HashMap};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::wire::codec::{encode_frame, FrameCodec};
use crate::wire::message::{
    error_response, parse_envelope, MessageKind, ParseError, INTERNAL_ERROR, INVALID_REQUEST,
    METHOD_NOT_FOUND,
};

/// Frames queued for one connection before it counts as stuck and is dropped.
pub const OUTBOX_FRAMES: usize = 4096;

const PROTOCOL_VERSION: u64 = 3;
const CWD: &str = "/mock";
const AUTHENTICATION_REQUIRED: i64 = -32001;
const AUTHENTICATION_FAILED: i64 = -32002;
const INVALID_PARAMS: i64 = -32602;
const NOT_RECOGNIZABLE: &str = "not a recognizable JSON-RPC request, notification, or response";
/// How many queued bytes one write to a connection's socket gathers at most.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// How to run one mock server.
#[derive(Debug, Clone, Default)]
pub struct MockCliOptions {
    /// Appears as `version: "mock-<name>"` in `connect` and `status.get`.
    pub name: String,
    /// Like `COPILOT_CONNECTION_TOKEN`: when set, `connect` must carry it in `params.token`.
    pub token: Option<String>,
    /// How long a turn runs between the answer to `session.send` (and `user.message`) and its
    /// closing `session.error` + `session.idle`. Zero (the default): all at once.
    pub turn_duration: Duration,
}

/// Handle to a running mock CLI server. Cloning shares the same server. Dropping the handle does
/// not stop the server: cancel the `stop` token given to [`MockCli::start`] or call
/// [`MockCli::shutdown`].
#[derive(Clone)]
pub struct MockCli {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    version: String,
    token: Option<String>,
    addr: SocketAddr,
    /// A child of the caller's `stop`: cancelled for good by it or by `shutdown()`.
    stop: CancellationToken,
    requests: AtomicU64,
    /// Armed faults and per-method request counts: survive kill/revive.
    faults: faults::Faults,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Incarnation counter: bumped by every (re)start, so a stale accept loop never touches a newer
    /// incarnation.
    generation: u64,
    /// The running incarnation's token; `None` while killed.
    life: Option<CancellationToken>,
    listener: Option<TcpListener>,
    /// "On disk": survives kill/revive.
    sessions: HashMap<String, Session>,
    conns: HashMap<u64, Conn>,
    /// Server→client requests waiting for an answer, by (connection, server request id).
    pending: HashMap<(u64, u64), oneshot::Sender<()>>,
    hook_answers: Vec<Value>,
    next_conn: u64,
    /// Global modification counter: orders sessions modified within the same millisecond.
    seq: u64,
    /// How long the turns started from now on run.
    turn_duration: Duration,
    /// The turns running, by session: their numbers. Cleared by kill (the process died).
    running: HashMap<String, BTreeSet<u64>>,
    /// Turn counts, kept across kill/revive.
    turns: TurnStats,
}

/// What the turn detector saw.
#[derive(Default)]
struct TurnStats {
    /// Turns started (the number of the next one).
    started: u64,
    /// Turns started while another turn of the same session was running.
    overlapping: u64,
    /// The most turns one session ran at once.
    max_concurrent: usize,
}

struct Conn {
    /// Wire bytes (whole frames, or a fault's garbage) for the connection's writer.
    tx: mpsc::Sender<Bytes>,
    token: CancellationToken,
    authed: bool,
    next_server_id: u64,
}

struct Session {
    start: SystemTime,
    modified: SystemTime,
    seq: u64,
    summary: String,
    /// Persisted events (what `session.getMessages` returns).
    events: Vec<Value>,
    /// Connections that created or resumed the session and are still open.
    attached: BTreeSet<u64>,
    /// The connection that registered hooks (`hooks: true`), if still attached.
    hooks: Option<u64>,
    /// A name given explicitly (`session.create`, `sessions.open` options, `sessions.fork`): shown
    /// instead of the summary, and keeps `sessions.pruneOld` away unless `includeNamed`.
    name: Option<String>,
    /// Mock convenience: `taskId` from `session.create` / `sessions.open` options, for
    /// `sessions.findByTaskId` (listed as `mcTaskId`).
    task_id: Option<String>,
}

/// Which method `State::create` / `State::resume` answer for: the `session.*` shape (the session
/// result, not-found as an error) or the `sessions.open` one (a status, not-found as a result).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    Session,
    Open,
}

/// Whether a connection's reader keeps going after a frame.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

type Reply = Result<Value, (i64, String)>;

impl MockCli {
    /// Binds `addr` (use `127.0.0.1:0` for a free port) and serves until `stop` is cancelled or
    /// [`MockCli::shutdown`] is called.
    pub async fn start(
        addr: SocketAddr,
        opts: MockCliOptions,
        stop: CancellationToken,
    ) -> std::io::Result<MockCli> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            version: format!("mock-{}", opts.name),
            name: opts.name,
            token: opts.token,
            addr,
            stop: stop.child_token(),
            requests: AtomicU64::new(0),
            faults: faults::Faults::default(),
            state: Mutex::new(State {
                turn_duration: opts.turn_duration,
                ..State::default()
            }),
        });
        Inner::go_live(&inner, listener);
        Ok(MockCli { inner })
    }

    /// The bound address (stable across [`MockCli::revive`]).
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Whether the session exists "on disk" (loaded or not).
    pub fn has_session(&self, id: &str) -> bool {
        self.inner.lock().sessions.contains_key(id)
    }

    /// Every session on disk, most recently modified first.
    pub fn session_ids(&self) -> Vec<String> {
        let st = self.inner.lock();
        st.sorted_sessions()
            .into_iter()
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Client connections currently open.
    pub fn connections(&self) -> usize {
        self.inner.lock().conns.len()
    }

    /// Requests received (every message with a `method` and an `id`), errors included.
    pub fn requests_served(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    /// Every client response to a `hooks.invoke` request so far, as received (whole JSON-RPC
    /// response objects, `result` or `error` included), oldest first.
    pub fn hook_answers(&self) -> Vec<Value> {
        self.inner.lock().hook_answers.clone()
    }

    /// Turns started so far (sends delivered to a loaded session), across kill/revive.
    pub fn turns_started(&self) -> u64 {
        self.inner.lock().turns.started
    }

    /// Turns started while another turn of the same session was still running: nonzero means
    /// some client (or proxy) let two turns of one session overlap.
    pub fn overlapping_turns(&self) -> u64 {
        self.inner.lock().turns.overlapping
    }

    /// The most turns one session has run at once (1 if turns never overlapped, 0 if none ran).
    pub fn max_concurrent_turns(&self) -> usize {
        self.inner.lock().turns.max_concurrent
    }

    /// Turns of session `id` running now.
    pub fn turns_running(&self, id: &str) -> usize {
        self.inner.lock().running.get(id).map_or(0, BTreeSet::len)
    }

    /// How long the turns started from now on run (see [`MockCliOptions::turn_duration`]);
    /// turns already running keep theirs.
    pub fn set_turn_duration(&self, duration: Duration) {
        self.inner.lock().turn_duration = duration;
    }

    /// Whether the server is accepting connections (not killed, not shut down).
    pub fn is_alive(&self) -> bool {
        self.inner.lock().life.is_some()
    }

    /// Simulates the process dying: stops accepting (the port is closed when this returns) and
    /// drops every open connection. Sessions stay on disk, unloaded. Idempotent.
    pub fn kill(&self) {
        self.inner.lock().kill();
    }

    /// Restarts a killed server on the same address with the same sessions on disk (all
    /// unloaded). A no-op if it is running; an error after shutdown or if the port was taken.
    pub async fn revive(&self) -> std::io::Result<()> {
        let gone = || std::io::Error::other("mock CLI was shut down");
        if self.inner.stop.is_cancelled() {
            return Err(gone());
        }
        if self.is_alive() {
            return Ok(());
        }
        let listener = TcpListener::bind(self.inner.addr).await?;
        if self.inner.stop.is_cancelled() {
            return Err(gone());
        }
        Inner::go_live(&self.inner, listener);
        Ok(())
    }

    /// Stops the server for good (like cancelling `stop`): kill, and refuse to revive.
    pub fn shutdown(&self) {
        self.inner.stop.cancel();
        self.kill();
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Installs `listener` as a new incarnation and spawns its accept loop (unless one is running).
    fn go_live(inner: &Arc<Inner>, listener: TcpListener) {
        let mut st = inner.lock();
        if st.life.is_some() {
            return;
        }
        st.generation += 1;
        let life = inner.stop.child_token();
        st.life = Some(life.clone());
        st.listener = Some(listener);
        tokio::spawn(accept_loop(inner.clone(), st.generation, life));
    }

    fn poll_accept(
        &self,
        generation: u64,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::io::Result<(TcpStream, SocketAddr)>>> {
        let st = self.lock();
        match &st.listener {
            Some(listener) if st.generation == generation => listener.poll_accept(cx).map(Some),
            _ => Poll::Ready(None),
        }
    }

    fn register(inner: &Arc<Inner>, generation: u64, stream: TcpStream) {
        let mut st = inner.lock();
        let Some(life) = st.life.as_ref().filter(|_| st.generation == generation) else {
            return;
        };
        let token = life.child_token();
        let (tx, rx) = mpsc::channel(OUTBOX_FRAMES);
        let id = st.next_conn;
        st.next_conn += 1;
        st.conns.insert(
            id,
            Conn {
                tx,
                token: token.clone(),
                authed: inner.token.is_none(),
                next_server_id: 1,
            },
        );
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_conn(inner.clone(), id, stream, token, rx));
    }
}

async fn accept_loop(inner: Arc<Inner>, generation: u64, life: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = life.cancelled() => break,
            accepted = poll_fn(|cx| inner.poll_accept(generation, cx)) => accepted,
        };
        match accepted {
            None => break,
            Some(Ok((stream, _))) => Inner::register(&inner, generation, stream),
            // Out of descriptors and the like: back off briefly instead of spinning.
            Some(Err(_)) => tokio::select! {
                _ = life.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            },
        }
    }
    let mut st = inner.lock();
    if st.generation == generation {
        st.kill();
    }
}

async fn serve_conn(
    inner: Arc<Inner>,
    conn: u64,
    stream: TcpStream,
    token: CancellationToken,
    rx: mpsc::Receiver<Bytes>,
) {
    let (read, write) = stream.into_split();
    let reader = async {
        read_loop(&inner, conn, read).await;
        // Dropping the connection's sender lets the writer flush what is queued, then end.
        inner.lock().drop_conn(conn);
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = token.cancelled() => {}
        _ = write_wire(write, rx) => {}
        _ = reader => {}
    }
    inner.lock().drop_conn(conn);
}

async fn read_loop(inner: &Arc<Inner>, conn: u64, read: OwnedReadHalf) {
    let mut frames = FramedRead::new(read, FrameCodec::default());
    while let Some(Ok(body)) = frames.next().await {
        if on_frame(inner, conn, body) == Flow::Close {
            break;
        }
    }
}

/// Writes the queued wire bytes, several queue items per socket write, until the queue closes.
/// The mock's own writer rather than `write_frames` so that a fault can put bytes on the wire that
/// are not a frame.
async fn write_wire(mut out: OwnedWriteHalf, mut rx: mpsc::Receiver<Bytes>) -> std::io::Result<()> {
    let mut batch = BytesMut::new();
    while let Some(first) = rx.recv().await {
        batch.extend_from_slice(&first);
        while batch.len() < WRITE_BATCH_BYTES {
            match rx.try_recv() {
                Ok(more) => batch.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        out.write_all(&batch).await?;
        batch.clear();
        if batch.capacity() > 1 << 20 {
            // Don't keep a large frame's buffer for the life of the connection.
            batch = BytesMut::new();
        }
    }
    out.shutdown().await
}

#[derive(Deserialize)]
struct ParamsOnly {
    #[serde(default)]
    params: Value,
}

fn on_frame(inner: &Arc<Inner>, conn: u64, body: Bytes) -> Flow {
    let env = match parse_envelope(&body) {
        Ok(env) => env,
        Err(e) => {
            let message = match &e {
                _ if e.code() == INVALID_REQUEST => NOT_RECOGNIZABLE.to_owned(),
                ParseError::Json(json) => json.to_string(),
                other => other.to_string(),
            };
            let frame = error_response(None, e.code(), &message, None);
            inner.lock().send(conn, frame);
            return Flow::Continue;
        }
    };
    let (method, id) = match (env.kind, env.method.as_deref(), env.id) {
        (MessageKind::Request, Some(method), Some(id)) => (method, id),
        (MessageKind::Response, _, Some(id)) => {
            on_response(inner, conn, id, &body);
            return Flow::Continue;
        }
        _ => {
            let frame = error_response(None, INVALID_REQUEST, NOT_RECOGNIZABLE, None);
            inner.lock().send(conn, frame);
            return Flow::Continue;
        }
    };
    inner.requests.fetch_add(1, Ordering::Relaxed);
    match inner.faults.on_request(method) {
        None => {
            handle_request(inner, conn, method, id, &body);
            Flow::Continue
        }
        Some(fault) => faults::inject(inner, conn, fault, method, id, &body),
    }
}

/// Answers one request whose fault, if any, has been applied: authentication, then the method.
fn handle_request(inner: &Arc<Inner>, conn: u64, method: &str, id: &RawValue, body: &[u8]) {
    let params = serde_json::from_slice::<ParamsOnly>(body)
        .map(|p| p.params)
        .unwrap_or(Value::Null);
    let mut st = inner.lock();
    let Some(authed) = st.conns.get(&conn).map(|c| c.authed) else {
        // Closed meanwhile (killed, or while a delayed request waited): no one to answer, and no
        // session may get a dead connection attached.
        return;
    };
    if !authed && method != "connect" {
        let frame = error_response(
            Some(id),
            AUTHENTICATION_REQUIRED,
            "AUTHENTICATION_REQUIRED",
            None,
        );
        return st.send(conn, frame);
    }
    let sid = params.get("sessionId").and_then(Value::as_str);
    let hooks = params.get("hooks").and_then(Value::as_bool) == Some(true);
    let reply = match (method, sid) {
        ("connect", _) => connect(inner, &mut st, conn, &params),
        ("ping", _) => Ok(ping(&params)),
        ("status.get", _) => Ok(json!({"version": inner.version, "protocolVersion": PROTOCOL_VERSION})),
        ("auth.getStatus", _) => {
            Ok(json!({"isAuthenticated": false, "statusMessage": "Not authenticated"}))
        }
        ("models.list", _) => Err((
            INTERNAL_ERROR,
            "Request models.list failed with message: Not authenticated. Please authenticate first."
                .to_owned(),
        )),
        ("session.getForeground", _) => Ok(json!({})),
        ("session.getLastId", _) => Ok(match st.sorted_sessions().first() {
            Some((id, _)) => json!({ "sessionId": id }),
            None => json!({}),
        }),
        ("session.list", _) => Ok(st.list(&params)),
        ("session.create", _) => match params.get("sessionId") {
            None | Some(Value::Null) => {
                let sid = uuid::Uuid::new_v4().to_string();
                return st.create(inner, conn, id, &sid, &params, Answer::Session);
            }
            Some(Value::String(sid)) => {
                return st.create(inner, conn, id, sid, &params, Answer::Session)
            }
            Some(_) => Err((INVALID_PARAMS, "Invalid params: sessionId must be a string".into())),
        },
        (
            "session.resume" | "session.send" | "session.getMessages" | "session.getMetadata"
            | "session.delete" | "session.detach" | "session.abort",
            None,
        ) => Err((INVALID_PARAMS, "Invalid params: sessionId is required".into())),
        ("session.resume", Some(sid)) => {
            return st.resume(inner, conn, id, sid, hooks, Answer::Session)
        }
        ("session.send", Some(sid)) => {
            let prompt = params.get("prompt").and_then(Value::as_str).unwrap_or("");
            return send_message(inner, &mut st, conn, id, sid, prompt);
        }
        ("session.getMessages", Some(sid)) => match st.loaded(sid) {
            Some(s) => Ok(json!({ "events": s.events })),
            None => Err(not_found("session.getMessages", sid)),
        },
        ("session.abort", Some(sid)) => match st.loaded(sid) {
            Some(_) => Ok(json!({})),
            None => Err(not_found_for("session.send", sid)),
        },
        ("session.getMetadata", Some(sid)) => Ok(match st.sessions.get(sid) {
            Some(s) => json!({ "session": list_entry(sid, s) }),
            None => json!({}),
        }),
        ("session.delete", Some(sid)) => Ok(match st.sessions.remove(sid) {
            Some(_) => json!({"success": true}),
            None => json!({"success": false, "error": format!("Session file not found for {sid}")}),
        }),
        ("session.detach", Some(sid)) => {
            if let Some(s) = st.sessions.get_mut(sid) {
                s.detach(conn);
            }
            Ok(json!({"success": true}))
        }
        (namespaced, _) if namespaced.starts_with("sessions.") => {
            return sessions::handle(inner, &mut st, conn, id, namespaced, &params)
        }
        (other, _) => Err((METHOD_NOT_FOUND, format!("Unhandled method {other}"))),
    };
    st.respond(conn, id, reply);
}

fn connect(inner: &Inner, st: &mut State, conn: u64, params: &Value) -> Reply {
    if let Some(expected) = &inner.token {
        if params.get("token").and_then(Value::as_str) != Some(expected.as_str()) {
            return Err((AUTHENTICATION_FAILED, "AUTHENTICATION_FAILED".to_owned()));
        }
        if let Some(c) = st.conns.get_mut(&conn) {
            c.authed = true;
        }
    }
    Ok(json!({
        "ok": true,
        "protocolVersion": PROTOCOL_VERSION,
        "version": inner.version,
        "taskKinds": ["agent", "shell", "client"],
    }))
}

fn ping(params: &Value) -> Value {
    let message = match params.get("message") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    json!({
        "message": format!("pong: {message}"),
        "timestamp": humantime::format_rfc3339_nanos(SystemTime::now()).to_string(),
        "protocolVersion": PROTOCOL_VERSION,
    })
}

/// `session.send`: answered at once, or — when a connection registered hooks for the session —
/// after that connection answers the `hooks.invoke` request sent first.
fn send_message(
    inner: &Arc<Inner>,
    st: &mut State,
    conn: u64,
    id: &RawValue,
    sid: &str,
    prompt: &str,
) {
    let Some(session) = st.loaded(sid) else {
        return st.respond(conn, id, Err(not_found_for("session.send", sid)));
    };
    let Some(hook_conn) = session.hooks else {
        return st.deliver(inner, conn, id, sid, prompt);
    };
    let Some(c) = st.conns.get_mut(&hook_conn) else {
        return st.deliver(inner, conn, id, sid, prompt);
    };
    let server_id = c.next_server_id;
    c.next_server_id += 1;
    let request = json!({
        "jsonrpc": "2.0",
        "id": server_id,
        "method": "hooks.invoke",
        "params": {"sessionId": sid, "hookType": "userPromptSubmitted", "input": {"prompt": prompt}},
    });
    let (answered, wait) = oneshot::channel();
    st.pending.insert((hook_conn, server_id), answered);
    st.send(hook_conn, to_bytes(&request));
    let (inner, id, sid, prompt) = (
        inner.clone(),
        id.to_owned(),
        sid.to_owned(),
        prompt.to_owned(),
    );
    tokio::spawn(async move {
        let answered = wait.await.is_ok();
        let mut st = inner.lock();
        if answered {
            st.deliver(&inner, conn, &id, &sid, &prompt);
        } else {
            let reason = "Request session.send failed with message: hooks.invoke was not answered";
            st.respond(conn, &id, Err((INTERNAL_ERROR, reason.to_owned())));
        }
    });
}

/// A client's response: completes the matching server request, if any; stray ones are ignored.
fn on_response(inner: &Inner, conn: u64, id: &RawValue, body: &[u8]) {
    let Ok(server_id) = id.get().parse::<u64>() else {
        return;
    };
    let mut st = inner.lock();
    if let Some(waiting) = st.pending.remove(&(conn, server_id)) {
        st.hook_answers
            .push(serde_json::from_slice(body).unwrap_or(Value::Null));
        let _ = waiting.send(());
    }
}

impl State {
    /// Queues a message (a JSON body) for `conn`, framed.
    fn send(&self, conn: u64, body: Bytes) {
        self.queue(conn, framed(&body));
    }

    /// Queues wire bytes for `conn`; a connection whose queue is full is dropped.
    fn queue(&self, conn: u64, wire: Bytes) {
        if let Some(c) = self.conns.get(&conn) {
            if let Err(mpsc::error::TrySendError::Full(_)) = c.tx.try_send(wire) {
                c.token.cancel();
            }
        }
    }

    fn respond(&self, conn: u64, id: &RawValue, reply: Reply) {
        #[derive(Serialize)]
        struct Success<'a> {
            jsonrpc: &'static str,
            id: &'a RawValue,
            result: &'a Value,
        }
        let frame = match reply {
            Ok(result) => match serde_json::to_vec(&Success {
                jsonrpc: "2.0",
                id,
                result: &result,
            }) {
                Ok(v) => Bytes::from(v),
                Err(_) => error_response(Some(id), INTERNAL_ERROR, "serialization failed", None),
            },
            Err((code, message)) => error_response(Some(id), code, &message, None),
        };
        self.send(conn, frame);
    }

    fn notify_all(&self, method: &str, params: Value) {
        let wire = framed(&to_bytes(
            &json!({"jsonrpc": "2.0", "method": method, "params": params}),
        ));
        for (&conn, c) in &self.conns {
            if c.authed {
                self.queue(conn, wire.clone());
            }
        }
    }

    fn lifecycle(&self, kind: &str, sid: &str) {
        if let Some(s) = self.sessions.get(sid) {
            let params = json!({
                "type": kind,
                "sessionId": sid,
                "metadata": {"startTime": ts(s.start), "modifiedTime": ts(s.modified)},
            });
            self.notify_all("session.lifecycle", params);
        }
    }

    fn emit(&self, sid: &str, event: &Value, to: impl IntoIterator<Item = u64>) {
        let params = json!({"sessionId": sid, "event": event});
        let wire = framed(&to_bytes(
            &json!({"jsonrpc": "2.0", "method": "session.event", "params": params}),
        ));
        for conn in to {
            self.queue(conn, wire.clone());
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// The session, if it exists and some connection holds it loaded.
    fn loaded(&self, sid: &str) -> Option<&Session> {
        self.sessions.get(sid).filter(|s| !s.attached.is_empty())
    }

    fn sorted_sessions(&self) -> Vec<(&String, &Session)> {
        let mut all: Vec<_> = self.sessions.iter().collect();
        all.sort_by_key(|(_, s)| std::cmp::Reverse((s.modified, s.seq)));
        all
    }

    /// [`State::sorted_sessions`] seen from `cwd`: all of them from the mock's cwd or none given,
    /// none from anywhere else.
    fn sessions_in(&self, cwd: Option<&str>) -> Vec<(&String, &Session)> {
        match cwd {
            Some(cwd) if cwd != CWD => Vec::new(),
            _ => self.sorted_sessions(),
        }
    }

    fn list(&self, params: &Value) -> Value {
        let cwd = params.pointer("/filter/cwd").and_then(Value::as_str);
        let sessions: Vec<Value> = self
            .sessions_in(cwd)
            .into_iter()
            .map(|(id, s)| list_entry(id, s))
            .collect();
        json!({ "sessions": sessions })
    }

    /// `session.create` (or `sessions.open` kind `create`; `opts` holds `hooks`, `name` and
    /// `taskId`): a fresh session (an existing one with this id is reset, like the real CLI),
    /// lifecycle before the response, `session.start` after it.
    fn create(
        &mut self,
        inner: &Inner,
        conn: u64,
        id: &RawValue,
        sid: &str,
        opts: &Value,
        answer: Answer,
    ) {
        let hooks = opts.get("hooks").and_then(Value::as_bool) == Some(true);
        let text = |field: &str| opts.get(field).and_then(Value::as_str).map(str::to_owned);
        let now = SystemTime::now();
        let seq = self.next_seq();
        let (mut attached, old_hooks) = match self.sessions.remove(sid) {
            Some(old) => (old.attached, old.hooks),
            None => (BTreeSet::new(), None),
        };
        attached.insert(conn);
        let mut session = Session {
            attached,
            hooks: if hooks {
                Some(conn)
            } else {
                old_hooks.filter(|&h| h != conn)
            },
            name: text("name"),
            task_id: text("taskId"),
            ..Session::new(now, seq)
        };
        let start = session.record(
            "session.start",
            json!({
                "sessionId": sid,
                "version": 1,
                "producer": "copilot-agent",
                "copilotVersion": inner.version,
                "startTime": ts(now),
                "contextTier": null,
                "context": {"cwd": CWD},
                "remoteSteerable": false,
                "alreadyInUse": false,
            }),
            false,
        );
        let result = match answer {
            Answer::Session => session_result(inner, sid, &session),
            Answer::Open => sessions::opened("created", sid),
        };
        let to: Vec<u64> = session.attached.iter().copied().collect();
        self.sessions.insert(sid.to_owned(), session);
        self.lifecycle("session.created", sid);
        self.respond(conn, id, Ok(result));
        self.emit(sid, &start, to);
    }

    /// `session.resume` (or `sessions.open` kind `resume`): attach `conn`; `session.resume` goes
    /// to the connections already attached, then the response, then the same event to the
    /// resuming connection.
    fn resume(
        &mut self,
        inner: &Inner,
        conn: u64,
        id: &RawValue,
        sid: &str,
        hooks: bool,
        answer: Answer,
    ) {
        let seq = self.next_seq();
        let Some(session) = self.sessions.get_mut(sid) else {
            let message = format!(
                "Request session.resume failed with message: Failed to load session events: \
                 Session not found: {sid}"
            );
            let reply = match answer {
                Answer::Session => Err((INTERNAL_ERROR, message)),
                Answer::Open => Ok(json!({"status": "not_found"})),
            };
            return self.respond(conn, id, reply);
        };
        let was_active = !session.attached.is_empty();
        let others: Vec<u64> = session
            .attached
            .iter()
            .copied()
            .filter(|&c| c != conn)
            .collect();
        let events_bytes = session.events_bytes();
        let event_count = session.events.len();
        let now = SystemTime::now();
        let event = session.record(
            "session.resume",
            json!({
                "resumeTime": ts(now),
                "contextTier": null,
                "sessionLimits": null,
                "context": {"cwd": CWD},
                "remoteSteerable": false,
                "eventsFileSizeBytes": events_bytes,
                "eventCount": event_count,
                "alreadyInUse": false,
                "sessionWasActive": was_active,
            }),
            false,
        );
        session.seq = seq;
        session.attached.insert(conn);
        if hooks {
            session.hooks = Some(conn);
        }
        let result = match answer {
            Answer::Session => session_result(inner, sid, session),
            Answer::Open => sessions::opened("resumed", sid),
        };
        self.emit(sid, &event, others);
        self.lifecycle("session.updated", sid);
        self.respond(conn, id, Ok(result));
        self.emit(sid, &event, [conn]);
    }

    /// The unauthenticated turn: `{messageId}`, then `user.message` to the attached connections;
    /// after the turn duration (at once if zero) `session.error` and `session.idle` to the
    /// connections attached then, and lifecycle `session.updated` to all.
    fn deliver(&mut self, inner: &Arc<Inner>, conn: u64, id: &RawValue, sid: &str, prompt: &str) {
        let seq = self.next_seq();
        let Some(session) = self
            .sessions
            .get_mut(sid)
            .filter(|s| !s.attached.is_empty())
        else {
            return self.respond(conn, id, Err(not_found_for("session.send", sid)));
        };
        session.seq = seq;
        if session.summary.is_empty() {
            session.summary = summary_of(prompt);
        }
        let user = session.record("user.message", json!({ "content": prompt }), false);
        let to: Vec<u64> = session.attached.iter().copied().collect();
        let message_id = uuid::Uuid::new_v4().to_string();
        self.respond(conn, id, Ok(json!({ "messageId": message_id })));
        self.emit(sid, &user, to);
        let turn = self.begin_turn(sid);
        let duration = self.turn_duration;
        if duration.is_zero() {
            return self.end_turn(sid, turn);
        }
        let Some(life) = self.life.clone() else {
            return;
        };
        let (inner, sid) = (inner.clone(), sid.to_owned());
        tokio::spawn(async move {
            tokio::select! {
                // Killed: the turn died with the process (kill forgot it).
                _ = life.cancelled() => {}
                _ = tokio::time::sleep(duration) => inner.lock().end_turn(&sid, turn),
            }
        });
    }

    /// A turn of `sid` starts: counted, and checked against the turns running there.
    fn begin_turn(&mut self, sid: &str) -> u64 {
        let turn = self.turns.started;
        self.turns.started += 1;
        let running = self.running.entry(sid.to_owned()).or_default();
        if !running.is_empty() {
            self.turns.overlapping += 1;
        }
        running.insert(turn);
        self.turns.max_concurrent = self.turns.max_concurrent.max(running.len());
        turn
    }

    /// Turn `turn` of `sid` ends, if still running: `session.error` and `session.idle` to the
    /// connections attached to the session (if it still exists), lifecycle `session.updated`.
    fn end_turn(&mut self, sid: &str, turn: u64) {
        let Some(running) = self.running.get_mut(sid) else {
            return;
        };
        if !running.remove(&turn) {
            return;
        }
        if running.is_empty() {
            self.running.remove(sid);
        }
        let Some(session) = self.sessions.get_mut(sid) else {
            return;
        };
        let events = [
            session.record(
                "session.error",
                json!({"errorType": "query", "message": "mock: no model"}),
                false,
            ),
            session.record("session.idle", json!({}), true),
        ];
        let to: Vec<u64> = session.attached.iter().copied().collect();
        for event in &events {
            self.emit(sid, event, to.iter().copied());
        }
        self.lifecycle("session.updated", sid);
    }

    /// Closes a connection's bookkeeping: no longer attached anywhere (sessions it alone held are
    /// unloaded), its pending server requests abandoned.
    fn drop_conn(&mut self, conn: u64) {
        if let Some(c) = self.conns.remove(&conn) {
            c.token.cancel();
        }
        for session in self.sessions.values_mut() {
            session.detach(conn);
        }
        self.pending.retain(|&(c, _), _| c != conn);
    }

    /// The process "dies": the listener is closed now, every connection is cancelled, every
    /// session unloaded.
    fn kill(&mut self) {
        if let Some(life) = self.life.take() {
            life.cancel();
        }
        self.listener = None;
        for (_, c) in self.conns.drain() {
            c.token.cancel();
        }
        self.pending.clear();
        self.running.clear();
        for session in self.sessions.values_mut() {
            session.attached.clear();
            session.hooks = None;
        }
    }
}

impl Session {
    /// A session with no events, no name, attached nowhere.
    fn new(now: SystemTime, seq: u64) -> Session {
        Session {
            start: now,
            modified: now,
            seq,
            summary: String::new(),
            events: Vec::new(),
            attached: BTreeSet::new(),
            hooks: None,
            name: None,
            task_id: None,
        }
    }

    /// What list entries show as `name`: the given name, else the summary.
    fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.summary)
    }

    /// Whether the session ever received a message (`sessions.pruneOld` ignores the others).
    fn has_messages(&self) -> bool {
        self.events.iter().any(|e| e["type"] == "user.message")
    }

    /// Length of the persisted events as JSON lines, the way the real CLI stores them.
    fn events_bytes(&self) -> usize {
        self.events.iter().map(|e| e.to_string().len() + 1).sum()
    }

    /// What the session occupies on disk, for `sessions.getSizes` and what deleting it frees.
    fn size_bytes(&self) -> u64 {
        u64::try_from(self.events_bytes())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Builds an event (persisted unless `ephemeral`, which also bumps `modifiedTime`).
    fn record(&mut self, kind: &str, data: Value, ephemeral: bool) -> Value {
        let now = SystemTime::now();
        let parent = self
            .events
            .last()
            .and_then(|e| e.get("id"))
            .cloned()
            .unwrap_or(Value::Null);
        let mut event = json!({
            "type": kind,
            "data": data,
            "id": uuid::Uuid::new_v4().to_string(),
            "timestamp": ts(now),
            "parentId": parent,
        });
        if ephemeral {
            event["ephemeral"] = Value::Bool(true);
        } else {
            self.events.push(event.clone());
            self.modified = self.modified.max(now);
        }
        event
    }

    fn detach(&mut self, conn: u64) {
        self.attached.remove(&conn);
        if self.hooks == Some(conn) {
            self.hooks = None;
        }
    }
}

fn session_result(inner: &Inner, sid: &str, s: &Session) -> Value {
    json!({
        "sessionId": sid,
        "nativeSessionId": sid,
        "startTime": ts(s.start),
        "isRemote": false,
        "mode": "interactive",
        "workspacePath": format!("/mock/{}/session-state/{sid}", inner.name),
        "capabilities": {
            "ui": {"elicitation": false, "mcpApps": false, "canvases": false},
            "extensions": false,
        },
        "modelState": {},
    })
}

fn list_entry(sid: &str, s: &Session) -> Value {
    let mut entry = json!({
        "sessionId": sid,
        "startTime": ts(s.start),
        "modifiedTime": ts(s.modified),
        "isRemote": false,
        "isDetached": false,
        "summary": s.summary,
        "name": s.display_name(),
        "clientName": "sdk",
        "context": {"cwd": CWD},
    });
    if let Some(task_id) = &s.task_id {
        entry["mcTaskId"] = json!(task_id);
    }
    entry
}

/// A session's summary: the start of its first prompt.
fn summary_of(prompt: &str) -> String {
    prompt.chars().take(80).collect()
}

fn not_found(method: &str, sid: &str) -> (i64, String) {
    (
        INTERNAL_ERROR,
        format!("Request {method} failed with message: Session not found: {sid}"),
    )
}

fn not_found_for(method: &str, sid: &str) -> (i64, String) {
    (
        INTERNAL_ERROR,
        format!("Request {method} failed with message: Session not found for sessionId: {sid}"),
    )
}

/// ISO-8601 UTC with milliseconds and `Z`, like the CLI's `startTime` / `modifiedTime`.
fn ts(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn to_bytes(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

/// A JSON body as wire bytes: `Content-Length` header, then the body.
fn framed(body: &[u8]) -> Bytes {
    let mut wire = BytesMut::with_capacity(body.len() + 32);
    encode_frame(body, &mut wire);
    wire.freeze()
}
