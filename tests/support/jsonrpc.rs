//! JSON-RPC test helpers: a framed client speaking the CLI's LSP framing through the proxy's own
//! [`FrameCodec`], a fleet of in-process mock CLI servers ([`MockCli`]), the YAML for a
//! `protocol: jsonrpc` listener in front of them, and session ids chosen by ring owner.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use serde_json::{json, Value};
use sessiongate::mockcli::{MockCli, MockCliOptions};
use sessiongate::snapshot::Pool;
use sessiongate::wire::codec::{encode_frame, FrameCodec};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::{upstreams_yaml, Proxy};

/// Upper bound on any single wait for a frame, so a broken proxy fails a test instead of
/// hanging it.
pub const WAIT: Duration = Duration::from_secs(10);

/// One client connection speaking framed JSON-RPC. Frames that arrive while the test waits for
/// something else are kept (in order) for later waits; every frame received is also logged.
pub struct RpcClient {
    read: FramedRead<OwnedReadHalf, FrameCodec>,
    write: OwnedWriteHalf,
    next_id: u64,
    inbox: VecDeque<Value>,
    /// Every frame received so far, in arrival order.
    pub received: Vec<Value>,
}

impl RpcClient {
    pub async fn connect(addr: SocketAddr) -> RpcClient {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (read, write) = stream.into_split();
        RpcClient {
            read: FramedRead::new(read, FrameCodec::default()),
            write,
            next_id: 0,
            inbox: VecDeque::new(),
            received: Vec::new(),
        }
    }

    /// Close the sending half (the client is done sending; it still reads).
    pub async fn shutdown_write(&mut self) {
        self.write.shutdown().await.expect("shutdown");
    }

    /// Write raw bytes (no framing added): for malformed input.
    pub async fn send_bytes(&mut self, raw: &[u8]) {
        self.write.write_all(raw).await.expect("write");
    }

    /// Write one frame with `body`.
    pub async fn send_frame(&mut self, body: &[u8]) {
        let mut buf = BytesMut::new();
        encode_frame(body, &mut buf);
        self.send_bytes(&buf).await;
    }

    pub async fn send(&mut self, msg: &Value) {
        self.send_frame(msg.to_string().as_bytes()).await;
    }

    /// Send a request with the next numeric id (from 0, like the SDK); returns the id.
    pub async fn request(&mut self, method: &str, params: Value) -> Value {
        let id = json!(self.next_id);
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        id
    }

    /// Send a request and wait for its response (success or error).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.request(method, params).await;
        self.response(&id).await
    }

    /// Send a request and return its `result`, failing the test on an error response.
    pub async fn result(&mut self, method: &str, params: Value) -> Value {
        let resp = self.call(method, params.clone()).await;
        match resp.get("result") {
            Some(result) => result.clone(),
            None => panic!("{method} {params} answered {resp}"),
        }
    }

    /// The next frame from the connection (not the inbox); `None` once it closed.
    async fn read_frame(&mut self) -> Option<Value> {
        let frame = tokio::time::timeout(WAIT, self.read.next())
            .await
            .unwrap_or_else(|_| panic!("no frame within {WAIT:?}"));
        match frame {
            Some(Ok(body)) => {
                let v: Value = serde_json::from_slice(&body)
                    .unwrap_or_else(|e| panic!("frame is not JSON ({e}): {body:?}"));
                self.received.push(v.clone());
                Some(v)
            }
            _ => None,
        }
    }

    /// The first frame (kept ones first) matching `pred`; the others stay for later waits.
    pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.inbox.iter().position(&pred) {
            return self.inbox.remove(i).expect("index in range");
        }
        loop {
            match self.read_frame().await {
                Some(v) if pred(&v) => return v,
                Some(v) => self.inbox.push_back(v),
                None => panic!("connection closed while waiting for {what}"),
            }
        }
    }

    /// The response to our request `id` (a frame with that id and no `method`).
    pub async fn response(&mut self, id: &Value) -> Value {
        let what = format!("the response to id {id}");
        self.wait_for(&what, |m| {
            m.get("method").is_none() && m.get("id") == Some(id)
        })
        .await
    }

    /// The next server-initiated request (`method` and `id`) for `method`.
    pub async fn server_request(&mut self, method: &str) -> Value {
        self.wait_for(method, |m| {
            m.get("method").and_then(Value::as_str) == Some(method) && m.get("id").is_some()
        })
        .await
    }

    /// A `session.event` notification of `kind` for `session`.
    pub async fn event(&mut self, session: &str, kind: &str) -> Value {
        let what = format!("event {kind} of {session}");
        self.wait_for(&what, |m| {
            m["method"] == "session.event"
                && m["params"]["sessionId"] == session
                && m["params"]["event"]["type"] == kind
        })
        .await
    }

    /// Read until the peer closes the connection (bounded by [`WAIT`] per frame); returns the
    /// frames that came before the close, kept ones included.
    pub async fn until_closed(&mut self) -> Vec<Value> {
        let mut before: Vec<Value> = self.inbox.drain(..).collect();
        for _ in 0..10_000 {
            match self.read_frame().await {
                Some(v) => before.push(v),
                None => return before,
            }
        }
        panic!("connection still open after 10000 frames");
    }

    /// Forget the frames kept for later waits: the next wait sees only frames that arrive
    /// from now on (e.g. the events after a response, not those before it).
    pub fn forget_kept(&mut self) {
        self.inbox.clear();
    }

    /// How many responses (frames without `method`) carrying `id` were received so far.
    pub fn responses_to(&self, id: &Value) -> usize {
        self.received
            .iter()
            .filter(|m| m.get("method").is_none() && m.get("id") == Some(id))
            .count()
    }
}

/// `{"sessionId": id}` merged with `extra` (an object).
pub fn session_params(id: &str, extra: Value) -> Value {
    let mut params = json!({ "sessionId": id });
    if let Value::Object(more) = extra {
        params.as_object_mut().expect("object").extend(more);
    }
    params
}

/// Mock CLI servers `cli-0`, `cli-1`, … on 127.0.0.1:0; all stop when dropped.
pub struct CliFleet {
    pub clis: Vec<MockCli>,
    stop: CancellationToken,
}

impl CliFleet {
    pub async fn start(n: usize) -> CliFleet {
        CliFleet::start_with_token(n, None).await
    }

    /// Every server requires `token` in `connect` (like `COPILOT_CONNECTION_TOKEN`).
    pub async fn start_with_token(n: usize, token: Option<&str>) -> CliFleet {
        let stop = CancellationToken::new();
        let mut clis = Vec::new();
        for i in 0..n {
            let opts = MockCliOptions {
                name: format!("cli-{i}"),
                token: token.map(str::to_owned),
                ..MockCliOptions::default()
            };
            let cli = MockCli::start("127.0.0.1:0".parse().expect("addr"), opts, stop.clone())
                .await
                .expect("mock CLI starts");
            clis.push(cli);
        }
        CliFleet { clis, stop }
    }

    /// `(name, addr)` of every server, for [`jsonrpc_config`].
    pub fn members(&self) -> Vec<(String, SocketAddr)> {
        self.clis
            .iter()
            .map(|c| (c.name().to_owned(), c.addr()))
            .collect()
    }

    pub fn get(&self, name: &str) -> &MockCli {
        self.clis
            .iter()
            .find(|c| c.name() == name)
            .unwrap_or_else(|| panic!("no mock CLI named {name}"))
    }

    /// Names of the servers that hold session `id` on disk.
    pub fn holders(&self, id: &str) -> Vec<String> {
        self.clis
            .iter()
            .filter(|c| c.has_session(id))
            .map(|c| c.name().to_owned())
            .collect()
    }
}

impl Drop for CliFleet {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Extra YAML for [`jsonrpc_config`]: `top` lines at the top level, `listener` lines for the
/// `cli` listener and `pool` lines for pool `fleet` (indented 4 spaces, like the generated ones).
#[derive(Default, Clone, Copy)]
pub struct RpcYaml<'a> {
    pub top: &'a str,
    pub listener: &'a str,
    pub pool: &'a str,
}

/// A config with one JSON-RPC listener `cli` in front of pool `fleet` (fan-out timeout 500ms).
pub fn jsonrpc_config(members: &[(String, SocketAddr)], extra: RpcYaml<'_>) -> String {
    format!(
        "admin:
  listen: 127.0.0.1:0
shutdown_grace: 2s
{top}listeners:
  - name: cli
    listen: 127.0.0.1:0
    protocol: jsonrpc
    pool: fleet
{listener}pools:
  fleet:
    fanout_timeout: 500ms
{pool}    upstreams:
{ups}",
        top = extra.top,
        listener = extra.listener,
        pool = extra.pool,
        ups = upstreams_yaml(members)
    )
}

/// `per` fresh session ids (UUID v4) for each upstream of `pool`, chosen by where the pool
/// routes them now: `(session id, upstream name)`, grouped by upstream in pool order.
pub fn ids_per_upstream(pool: &Pool, per: usize) -> Vec<(String, String)> {
    let mut found: HashMap<String, Vec<String>> = HashMap::new();
    let names: Vec<String> = pool
        .upstream_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    for _ in 0..100_000 {
        if names
            .iter()
            .all(|n| found.get(n).is_some_and(|v| v.len() >= per))
        {
            break;
        }
        let id = uuid::Uuid::new_v4().to_string();
        let Some(up) = pool.route(id.as_bytes()) else {
            panic!("pool {} routes nothing", pool.name());
        };
        let ids = found.entry(up.name().to_owned()).or_default();
        if ids.len() < per {
            ids.push(id);
        }
    }
    names
        .iter()
        .flat_map(|n| {
            let ids = found.remove(n).unwrap_or_default();
            assert_eq!(ids.len(), per, "found too few ids for {n}");
            ids.into_iter().map(move |id| (id, n.clone()))
        })
        .collect()
}

/// One session id whose current route in `pool` is `upstream`.
pub fn id_on(pool: &Pool, upstream: &str) -> String {
    for _ in 0..100_000 {
        let id = uuid::Uuid::new_v4().to_string();
        if pool
            .route(id.as_bytes())
            .is_some_and(|u| u.name() == upstream)
        {
            return id;
        }
    }
    panic!("no session id routes to {upstream}");
}

/// A fake CLI node that records every frame it receives and answers each request with a
/// result (`{"sessionId": …}` when the request named one, else `{}`). For checking what the
/// proxy sends a node, which the mock CLI does not expose.
pub struct Recorder {
    pub addr: SocketAddr,
    frames: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    _stop: tokio_util::sync::DropGuard,
}

impl Recorder {
    pub async fn start() -> Recorder {
        use futures_util::SinkExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let frames = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (log, token) = (frames.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = token.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => return,
                    },
                };
                let (log, token) = (log.clone(), token.clone());
                tokio::spawn(async move {
                    let mut framed = tokio_util::codec::Framed::new(stream, FrameCodec::default());
                    loop {
                        let frame = tokio::select! {
                            _ = token.cancelled() => return,
                            frame = framed.next() => frame,
                        };
                        let Some(Ok(body)) = frame else { return };
                        let Ok(msg) = serde_json::from_slice::<Value>(&body) else {
                            continue;
                        };
                        log.lock().expect("lock").push(msg.clone());
                        if msg.get("method").is_none() || msg.get("id").is_none() {
                            continue;
                        }
                        let result = match msg["params"].get("sessionId") {
                            Some(id) => json!({ "sessionId": id }),
                            None => json!({}),
                        };
                        let answer = json!({"jsonrpc": "2.0", "id": msg["id"], "result": result});
                        let bytes = bytes::Bytes::from(answer.to_string());
                        if framed.send(bytes).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Recorder {
            addr,
            frames,
            _stop: stop.drop_guard(),
        }
    }

    /// Every frame received so far, on any connection, in arrival order.
    pub fn frames(&self) -> Vec<Value> {
        self.frames.lock().expect("lock").clone()
    }
}

/// A mock fleet and a proxy in front of it (listener `cli`, pool `fleet`).
pub struct Setup {
    pub fleet: CliFleet,
    pub proxy: Proxy,
}

impl Setup {
    pub async fn start(nodes: usize, extra: RpcYaml<'_>) -> Setup {
        let fleet = CliFleet::start(nodes).await;
        let proxy = Proxy::start_yaml(&jsonrpc_config(&fleet.members(), extra)).await;
        Setup { fleet, proxy }
    }

    pub fn pool(&self) -> Arc<Pool> {
        self.proxy
            .server
            .snapshot()
            .pool("fleet")
            .expect("pool fleet")
            .clone()
    }

    pub async fn client(&self) -> RpcClient {
        RpcClient::connect(self.proxy.addr("cli")).await
    }
}

/// Create `id` through `client` and check the answer names it.
pub async fn create(client: &mut RpcClient, id: &str, extra: Value) {
    let result = client
        .result("session.create", session_params(id, extra))
        .await;
    assert_eq!(result["sessionId"], id, "create answer: {result}");
}

/// Send a fresh prompt to `id` and check the answer; returns the prompt.
pub async fn prompt(client: &mut RpcClient, id: &str) -> String {
    static PROMPTS: AtomicU64 = AtomicU64::new(0);
    let prompt = format!("hello {id} #{}", PROMPTS.fetch_add(1, Ordering::Relaxed));
    let result = client
        .result(
            "session.send",
            session_params(id, json!({ "prompt": prompt })),
        )
        .await;
    assert!(result["messageId"].is_string(), "send answer: {result}");
    prompt
}

/// [`prompt`], then wait for the `user.message` event it causes (the client must be attached
/// to the session: it created or resumed it).
pub async fn send(client: &mut RpcClient, id: &str) {
    let prompt = prompt(client, id).await;
    let what = format!("user.message {prompt}");
    client
        .wait_for(&what, |m| {
            m["method"] == "session.event"
                && m["params"]["event"]["type"] == "user.message"
                && m["params"]["event"]["data"]["content"] == prompt.as_str()
        })
        .await;
}

/// Every response the client received answers an id it sent (no proxy-internal ids), exactly
/// once.
pub fn one_answer_per_request(client: &RpcClient, sent: usize) {
    for frame in &client.received {
        if frame.get("method").is_none() && !frame.is_array() {
            let id = frame["id"].as_u64();
            assert!(
                id.is_some_and(|n| (n as usize) < sent),
                "answer to an id the client never sent: {frame}"
            );
        }
    }
    for n in 0..sent {
        assert_eq!(client.responses_to(&json!(n)), 1, "answers to id {n}");
    }
}

/// The error object of a response, failing the test if it succeeded.
pub fn error_of(resp: &Value) -> &Value {
    resp.get("error")
        .unwrap_or_else(|| panic!("expected an error, got {resp}"))
}

/// The -32001 "server unavailable" error naming `session`, with `data.retryAfterMs`.
pub fn assert_unavailable(resp: &Value, session: &str) {
    let err = error_of(resp);
    assert_eq!(err["code"], -32001, "{resp}");
    let message = err["message"].as_str().expect("message");
    assert!(
        message.contains(session),
        "message names the session: {message}"
    );
    assert!(message.contains("unavailable"), "{message}");
    assert!(err["data"]["retryAfterMs"].as_u64().is_some(), "{resp}");
}

/// `n` clients of the listener at `addr`, each attached to `sid` (resumed), so each sees the
/// session's events.
pub async fn attached_clients(addr: SocketAddr, sid: &str, n: usize) -> Vec<RpcClient> {
    let mut clients = Vec::new();
    for _ in 0..n {
        let mut client = RpcClient::connect(addr).await;
        let resumed = client
            .result("session.resume", session_params(sid, json!({})))
            .await;
        assert_eq!(resumed["sessionId"], sid, "{resumed}");
        clients.push(client);
    }
    clients
}

/// Send a prompt to `sid`; when it is answered, wait for the end of the turn it began (the
/// first `session.idle` after the answer; the client must be attached). Returns the answer.
pub async fn send_and_finish(client: &mut RpcClient, sid: &str, prompt: &str) -> Value {
    let answer = client
        .call(
            "session.send",
            session_params(sid, json!({ "prompt": prompt })),
        )
        .await;
    if answer.get("result").is_some() {
        assert!(answer["result"]["messageId"].is_string(), "{answer}");
        // Events kept from before the answer belong to earlier turns.
        client.forget_kept();
        client.event(sid, "session.idle").await;
    }
    answer
}

/// Every client sends one prompt to `sid` at once (released together by a barrier), each
/// waiting for the end of its turn; returns the answers.
pub async fn all_at_once(clients: Vec<RpcClient>, sid: &str) -> Vec<Value> {
    let barrier = Arc::new(tokio::sync::Barrier::new(clients.len()));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut client) in clients.into_iter().enumerate() {
        let (barrier, sid) = (barrier.clone(), sid.to_owned());
        tasks.spawn(async move {
            barrier.wait().await;
            send_and_finish(&mut client, &sid, &format!("prompt {i}")).await
        });
    }
    let mut answers = Vec::new();
    while let Some(answer) = tasks.join_next().await {
        answers.push(answer.expect("sender task"));
    }
    answers
}
