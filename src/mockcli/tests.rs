//! Drives the mock over real sockets with a tiny framed JSON-RPC client; the fault injection and
//! the `sessions.*` namespace have their own test files, on the same helpers.

mod faults;
mod sessions;
mod turns;

use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::wire::codec::encode_frame;

/// Upper bound on any single wait, so a broken server fails a test instead of hanging it.
const WAIT: Duration = Duration::from_secs(10);

struct Client {
    read: FramedRead<OwnedReadHalf, FrameCodec>,
    write: OwnedWriteHalf,
    next_id: u64,
}

impl Client {
    async fn connect(cli: &MockCli) -> Client {
        let stream = TcpStream::connect(cli.addr()).await.unwrap();
        let (read, write) = stream.into_split();
        Client {
            read: FramedRead::new(read, FrameCodec::default()),
            write,
            next_id: 0,
        }
    }

    async fn send_raw(&mut self, body: &[u8]) {
        let mut buf = BytesMut::new();
        encode_frame(body, &mut buf);
        self.write.write_all(&buf).await.unwrap();
    }

    async fn send(&mut self, msg: &Value) {
        self.send_raw(msg.to_string().as_bytes()).await;
    }

    /// Sends a request with the next numeric id; returns the id.
    async fn request(&mut self, method: &str, params: Value) -> Value {
        let id = json!(self.next_id);
        self.next_id += 1;
        let msg = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.send(&msg).await;
        id
    }

    /// The next frame, or `None` once the server closed the connection.
    async fn next(&mut self) -> Option<Value> {
        let frame = tokio::time::timeout(WAIT, self.read.next())
            .await
            .expect("timed out waiting for a frame");
        match frame {
            Some(Ok(body)) => Some(serde_json::from_slice(&body).unwrap()),
            _ => None,
        }
    }

    async fn recv(&mut self) -> Value {
        self.next().await.expect("connection closed")
    }

    /// Reads until the response to client request `id`; returns (frames before it, response).
    async fn until_response(&mut self, id: &Value) -> (Vec<Value>, Value) {
        let mut before = Vec::new();
        loop {
            let msg = self.recv().await;
            if msg.get("method").is_none() && msg.get("id") == Some(id) {
                return (before, msg);
            }
            before.push(msg);
        }
    }

    /// Request + response; the notifications that came first are returned too.
    async fn call(&mut self, method: &str, params: Value) -> (Vec<Value>, Value) {
        let id = self.request(method, params).await;
        self.until_response(&id).await
    }

    async fn result(&mut self, method: &str, params: Value) -> Value {
        let (_, resp) = self.call(method, params).await;
        resp.get("result")
            .cloned()
            .unwrap_or_else(|| panic!("{method} failed: {resp}"))
    }

    /// Reads until a server request or notification named `method`; returns that frame.
    async fn until_method(&mut self, method: &str) -> Value {
        loop {
            let msg = self.recv().await;
            if msg["method"] == method {
                return msg;
            }
        }
    }

    /// Reads until a `session.event` of type `kind`; returns every frame read, that one last.
    async fn until_event(&mut self, kind: &str) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let msg = self.recv().await;
            let done = event_type(&msg) == Some(kind);
            seen.push(msg);
            if done {
                return seen;
            }
        }
    }
}

async fn mock(name: &str, token: Option<&str>) -> MockCli {
    let opts = MockCliOptions {
        name: name.into(),
        token: token.map(Into::into),
        ..Default::default()
    };
    MockCli::start(
        "127.0.0.1:0".parse().unwrap(),
        opts,
        CancellationToken::new(),
    )
    .await
    .unwrap()
}

fn event_type(msg: &Value) -> Option<&str> {
    (msg["method"] == "session.event").then(|| msg["params"]["event"]["type"].as_str())?
}

fn lifecycle_type(msg: &Value) -> Option<&str> {
    (msg["method"] == "session.lifecycle").then(|| msg["params"]["type"].as_str())?
}

fn is_iso_millis(s: &str) -> bool {
    // 2026-11-22T04:46:43.066Z
    s.len() == 24 && s.ends_with('Z') && s.as_bytes()[19] == b'.' && s.as_bytes()[10] == b'T'
}

const SID: &str = "11111111-2222-4333-8444-555555555555";

#[tokio::test]
async fn connect_ping_and_global_methods() {
    let cli = mock("a", None).await;
    assert_eq!(cli.name(), "a");
    let mut c = Client::connect(&cli).await;
    // No token: methods work before connect.
    let pong = c.result("ping", json!({"message": "early"})).await;
    assert_eq!(pong["message"], "pong: early");
    let connected = c
        .result("connect", json!({"supportedTaskKinds": ["agent"]}))
        .await;
    assert_eq!(
        connected,
        json!({"ok": true, "protocolVersion": 3, "version": "mock-a", "taskKinds": ["agent", "shell", "client"]})
    );
    let pong = c.result("ping", json!({"message": "hello"})).await;
    assert_eq!(pong["message"], "pong: hello");
    assert_eq!(pong["protocolVersion"], 3);
    let stamp = pong["timestamp"].as_str().unwrap();
    assert!(stamp.ends_with('Z') && stamp.len() == 30, "{stamp}");
    assert_eq!(
        c.result("status.get", json!({})).await,
        json!({"version": "mock-a", "protocolVersion": 3})
    );
    assert_eq!(
        c.result("auth.getStatus", json!({})).await,
        json!({"isAuthenticated": false, "statusMessage": "Not authenticated"})
    );
    assert_eq!(c.result("session.getLastId", json!({})).await, json!({}));
    assert_eq!(
        c.result("session.getForeground", json!({})).await,
        json!({})
    );
    assert_eq!(
        c.result("session.list", json!({})).await,
        json!({"sessions": []})
    );
    assert_eq!(cli.connections(), 1);
    assert_eq!(cli.requests_served(), 8);
}

#[tokio::test]
async fn protocol_errors_keep_the_connection_open() {
    let cli = mock("a", None).await;
    let mut c = Client::connect(&cli).await;
    let (_, resp) = c.call("no.such.method", json!({})).await;
    assert_eq!(
        resp,
        json!({"jsonrpc": "2.0", "id": 0, "error": {"code": -32601, "message": "Unhandled method no.such.method"}})
    );
    // String ids are echoed byte for byte.
    c.send_raw(br#"{"jsonrpc":"2.0","id":"abc","method":"ping","params":{"message":"s"}}"#)
        .await;
    let resp = c.recv().await;
    assert_eq!(resp["id"], "abc");
    assert_eq!(resp["result"]["message"], "pong: s");

    c.send_raw(b"{x").await;
    assert_eq!(
        c.recv().await,
        json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "key must be a string at line 1 column 2"}})
    );
    let invalid = json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32600, "message": NOT_RECOGNIZABLE}});
    for body in [
        &br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#[..],
        br#"{"jsonrpc":"2.0","method":"ping","params":{}}"#,
        br#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#,
        b"42",
    ] {
        c.send_raw(body).await;
        assert_eq!(c.recv().await, invalid, "{}", String::from_utf8_lossy(body));
    }
    // A stray response (no server request pending) is ignored; odd params never panic.
    c.send(&json!({"jsonrpc": "2.0", "id": 99, "result": {}}))
        .await;
    for params in [
        json!([1, 2]),
        json!(null),
        json!("x"),
        json!({"sessionId": 5}),
    ] {
        for method in ["session.create", "session.send", "session.resume", "ping"] {
            let (_, resp) = c.call(method, params.clone()).await;
            assert!(resp.get("result").is_some() || resp.get("error").is_some());
        }
    }
    assert_eq!(c.result("ping", json!({})).await["message"], "pong: ");
    assert_eq!(cli.connections(), 1);
}

#[tokio::test]
async fn oversized_or_broken_frames_close_the_connection() {
    let cli = mock("a", None).await;
    let mut c = Client::connect(&cli).await;
    c.write
        .write_all(b"Content-Length: 67108865\r\n\r\n")
        .await
        .unwrap();
    assert!(c.next().await.is_none());
    let mut c = Client::connect(&cli).await;
    c.write
        .write_all(b"Content-Length: x\r\n\r\n{}")
        .await
        .unwrap();
    assert!(c.next().await.is_none());
    // The server is still fine.
    let mut c = Client::connect(&cli).await;
    assert_eq!(
        c.result("ping", json!({"message": "ok"})).await["message"],
        "pong: ok"
    );
}

#[tokio::test]
async fn create_orders_lifecycle_response_and_start_event() {
    let cli = mock("a", None).await;
    let mut c = Client::connect(&cli).await;
    let id = c
        .request("session.create", json!({"sessionId": SID, "hooks": false}))
        .await;
    let lifecycle = c.recv().await;
    assert_eq!(lifecycle_type(&lifecycle), Some("session.created"));
    assert_eq!(lifecycle["params"]["sessionId"], SID);
    let meta = &lifecycle["params"]["metadata"];
    assert!(is_iso_millis(meta["startTime"].as_str().unwrap()), "{meta}");
    assert!(
        is_iso_millis(meta["modifiedTime"].as_str().unwrap()),
        "{meta}"
    );
    let resp = c.recv().await;
    assert_eq!(resp["id"], id);
    let result = &resp["result"];
    assert_eq!(result["sessionId"], SID);
    assert_eq!(result["nativeSessionId"], SID);
    assert_eq!(result["isRemote"], false);
    assert_eq!(result["mode"], "interactive");
    assert!(is_iso_millis(result["startTime"].as_str().unwrap()));
    let start = c.recv().await;
    assert_eq!(event_type(&start), Some("session.start"));
    let event = &start["params"]["event"];
    assert_eq!(start["params"]["sessionId"], SID);
    assert_eq!(event["data"]["sessionId"], SID);
    assert_eq!(event["data"]["context"]["cwd"], "/mock");
    assert_eq!(event["parentId"], Value::Null);
    assert!(event.get("ephemeral").is_none());
    assert!(cli.has_session(SID));

    // No id: the server generates a UUID v4 and returns it.
    let (_, resp) = c.call("session.create", json!({})).await;
    let generated = resp["result"]["sessionId"].as_str().unwrap().to_owned();
    let uuid = uuid::Uuid::parse_str(&generated).unwrap();
    assert_eq!(uuid.get_version_num(), 4);
    assert!(cli.has_session(&generated));
    let mut ids = cli.session_ids();
    ids.sort();
    let mut expected = vec![SID.to_owned(), generated];
    expected.sort();
    assert_eq!(ids, expected);
}

#[tokio::test]
async fn not_found_errors_are_exact() {
    let cli = mock("a", None).await;
    let mut c = Client::connect(&cli).await;
    let other = "99999999-2222-4333-8444-555555555555";
    let cases = [
        (
            "session.resume",
            "Request session.resume failed with message: Failed to load session events: Session not found: ",
        ),
        (
            "session.send",
            "Request session.send failed with message: Session not found for sessionId: ",
        ),
        (
            "session.getMessages",
            "Request session.getMessages failed with message: Session not found: ",
        ),
    ];
    for (method, prefix) in cases {
        let (_, resp) = c.call(method, json!({"sessionId": other})).await;
        let id = resp["id"].clone();
        assert_eq!(
            resp,
            json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32603, "message": format!("{prefix}{other}")}})
        );
    }
    assert_eq!(
        c.result("session.getMetadata", json!({"sessionId": other}))
            .await,
        json!({})
    );
    assert_eq!(
        c.result("session.delete", json!({"sessionId": other}))
            .await,
        json!({"success": false, "error": format!("Session file not found for {other}")})
    );
    assert_eq!(
        c.result("session.detach", json!({"sessionId": other}))
            .await,
        json!({"success": true})
    );
    // A failed resume creates nothing.
    assert!(!cli.has_session(other));
    assert!(cli.session_ids().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn send_with_hooks_holds_the_response_until_the_hook_is_answered() {
    let cli = mock("a", None).await;
    let mut c = Client::connect(&cli).await;
    c.result("session.create", json!({"sessionId": SID, "hooks": true}))
        .await;
    c.until_event("session.start").await;
    // The client's id 1 is live while the server's own request id 1 is in flight.
    c.next_id = 1;
    let send_id = c
        .request(
            "session.send",
            json!({"sessionId": SID, "prompt": "hi there"}),
        )
        .await;
    let hook = c.recv().await;
    assert_eq!(
        hook,
        json!({"jsonrpc": "2.0", "id": 1, "method": "hooks.invoke", "params": {
            "sessionId": SID, "hookType": "userPromptSubmitted", "input": {"prompt": "hi there"}}})
    );
    // The connection keeps serving while the send is held: the ping is answered, the send is not.
    c.send_raw(br#"{"jsonrpc":"2.0","id":"p","method":"ping","params":{"message":"still here"}}"#)
        .await;
    let pong = c.recv().await;
    assert_eq!(pong["id"], "p", "send answered before its hook: {pong}");
    assert!(cli.hook_answers().is_empty());
    let answer = json!({"jsonrpc": "2.0", "id": 1, "result": {"modifiedPrompt": "HI"}});
    c.send(&answer).await;
    let resp = c.recv().await;
    assert_eq!(resp["id"], send_id);
    assert!(resp["result"]["messageId"].is_string(), "{resp}");
    assert_eq!(cli.hook_answers(), vec![answer]);
    let events = c.until_event("session.idle").await;
    let kinds: Vec<_> = events.iter().filter_map(event_type).collect();
    assert_eq!(kinds, ["user.message", "session.error", "session.idle"]);
    assert_eq!(
        events[1]["params"]["event"]["data"]["message"],
        "mock: no model"
    );
    assert_eq!(events[2]["params"]["event"]["ephemeral"], true);

    // Server ids count up per connection.
    c.request("session.send", json!({"sessionId": SID, "prompt": "again"}))
        .await;
    let hook = c.until_method("hooks.invoke").await;
    assert_eq!(hook["id"], 2);
    c.send(&json!({"jsonrpc": "2.0", "id": 2, "error": {"code": -1, "message": "no"}}))
        .await;
    let (_, resp) = c.until_response(&json!(2)).await;
    assert!(resp["result"]["messageId"].is_string());
    assert_eq!(cli.hook_answers().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hooked_send_from_another_connection_asks_the_hook_owner() {
    let cli = mock("a", None).await;
    let mut owner = Client::connect(&cli).await;
    let mut other = Client::connect(&cli).await;
    owner
        .result("session.create", json!({"sessionId": SID, "hooks": true}))
        .await;
    let send_id = other
        .request("session.send", json!({"sessionId": SID, "prompt": "x"}))
        .await;
    let hook = owner.until_method("hooks.invoke").await;
    owner
        .send(&json!({"jsonrpc": "2.0", "id": hook["id"], "result": {}}))
        .await;
    let (_, resp) = other.until_response(&send_id).await;
    assert!(resp["result"]["messageId"].is_string());

    // The hook owner goes away mid-send: the held send fails instead of hanging.
    let send_id = other
        .request("session.send", json!({"sessionId": SID, "prompt": "y"}))
        .await;
    owner.until_method("hooks.invoke").await;
    drop(owner);
    let (_, resp) = other.until_response(&send_id).await;
    assert_eq!(resp["error"]["code"], -32603, "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_go_to_attached_connections_lifecycle_to_all() {
    let cli = mock("a", None).await;
    let mut a = Client::connect(&cli).await;
    let mut observer = Client::connect(&cli).await;
    let mut resumer = Client::connect(&cli).await;
    // Make sure all three are registered before anything is broadcast.
    for c in [&mut a, &mut observer, &mut resumer] {
        c.result("ping", json!({})).await;
    }
    a.result("session.create", json!({"sessionId": SID})).await;
    a.until_event("session.start").await;
    let (before, _) = observer.call("ping", json!({})).await;
    assert_eq!(before.len(), 1);
    assert_eq!(lifecycle_type(&before[0]), Some("session.created"));

    // Resume: the attached connection sees session.resume; the resumer gets it after its response.
    let (before, resp) = resumer
        .call("session.resume", json!({"sessionId": SID}))
        .await;
    assert_eq!(resp["result"]["sessionId"], SID);
    assert!(before.iter().all(|m| event_type(m).is_none()), "{before:?}");
    let after = resumer.recv().await;
    assert_eq!(event_type(&after), Some("session.resume"));
    let data = &after["params"]["event"]["data"];
    assert_eq!(data["eventCount"], 1);
    assert_eq!(data["sessionWasActive"], true);
    let seen = a.until_event("session.resume").await;
    assert!(seen
        .iter()
        .all(|m| lifecycle_type(m).is_some() || event_type(m).is_some()));

    // A send from the observer (not attached) works, but its events go to a and the resumer only.
    let (mut observed, resp) = observer
        .call("session.send", json!({"sessionId": SID, "prompt": "hello"}))
        .await;
    assert!(resp["result"]["messageId"].is_string());
    for c in [&mut a, &mut resumer] {
        let kinds: Vec<_> = c
            .until_event("session.idle")
            .await
            .iter()
            .filter_map(event_type)
            .map(str::to_owned)
            .collect();
        assert_eq!(kinds, ["user.message", "session.error", "session.idle"]);
    }
    // Everything the send caused is queued for the observer before this ping's response.
    let (before, _) = observer.call("ping", json!({})).await;
    observed.extend(before);
    assert!(
        observed.iter().all(|m| event_type(m).is_none()),
        "{observed:?}"
    );
    let lifecycles: Vec<_> = observed.iter().filter_map(lifecycle_type).collect();
    // One from the resume, one from the send.
    assert_eq!(lifecycles, ["session.updated", "session.updated"]);

    let events = a
        .result("session.getMessages", json!({"sessionId": SID}))
        .await;
    let kinds: Vec<_> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kinds,
        [
            "session.start",
            "session.resume",
            "user.message",
            "session.error"
        ]
    );
    let list = events["events"].as_array().unwrap();
    for pair in list.windows(2) {
        assert_eq!(pair[1]["parentId"], pair[0]["id"]);
    }
}

#[tokio::test]
async fn detach_and_close_unload_the_session() {
    let cli = mock("a", None).await;
    let mut a = Client::connect(&cli).await;
    a.result("session.create", json!({"sessionId": SID})).await;
    assert_eq!(
        a.result("session.detach", json!({"sessionId": SID})).await,
        json!({"success": true})
    );
    // Unloaded: send fails until someone resumes.
    let (_, resp) = a
        .call("session.send", json!({"sessionId": SID, "prompt": "x"}))
        .await;
    assert_eq!(resp["error"]["code"], -32603);
    a.result("session.resume", json!({"sessionId": SID})).await;
    a.result("session.send", json!({"sessionId": SID, "prompt": "x"}))
        .await;
    drop(a);
    // A new connection finds it on disk but not loaded (the drop is seen asynchronously, so wait
    // for the server's connection count to reach zero through a request round trip).
    let mut b = Client::connect(&cli).await;
    loop {
        b.result("ping", json!({})).await;
        if cli.connections() == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let (_, resp) = b
        .call("session.getMessages", json!({"sessionId": SID}))
        .await;
    assert_eq!(resp["error"]["code"], -32603);
    assert!(cli.has_session(SID));
    let events = b.result("session.resume", json!({"sessionId": SID})).await;
    assert_eq!(events["sessionId"], SID);
}

#[tokio::test]
async fn list_metadata_last_id_and_delete() {
    let cli = mock("a", None).await;
    let mut c = Client::connect(&cli).await;
    let ids = [
        "00000000-0000-4000-8000-000000000001",
        "00000000-0000-4000-8000-000000000002",
        "00000000-0000-4000-8000-000000000003",
    ];
    for id in ids {
        c.result("session.create", json!({"sessionId": id})).await;
    }
    c.result(
        "session.send",
        json!({"sessionId": ids[0], "prompt": "first prompt"}),
    )
    .await;
    let list = c.result("session.list", json!({})).await;
    let sessions = list["sessions"].as_array().unwrap();
    let order: Vec<_> = sessions
        .iter()
        .map(|s| s["sessionId"].as_str().unwrap())
        .collect();
    assert_eq!(order, [ids[0], ids[2], ids[1]]);
    assert_eq!(cli.session_ids(), order);
    let first = &sessions[0];
    assert_eq!(first["summary"], "first prompt");
    assert_eq!(first["name"], "first prompt");
    assert_eq!(first["clientName"], "sdk");
    assert_eq!(first["isRemote"], false);
    assert_eq!(first["isDetached"], false);
    assert_eq!(first["context"], json!({"cwd": "/mock"}));
    for s in sessions {
        let (start, modified) = (
            s["startTime"].as_str().unwrap(),
            s["modifiedTime"].as_str().unwrap(),
        );
        assert!(is_iso_millis(start) && is_iso_millis(modified), "{s}");
        assert!(modified >= start);
    }
    let filtered = c
        .result("session.list", json!({"filter": {"cwd": "/elsewhere"}}))
        .await;
    assert_eq!(filtered, json!({"sessions": []}));
    assert_eq!(
        c.result("session.getLastId", json!({})).await,
        json!({"sessionId": ids[0]})
    );
    assert_eq!(
        c.result("session.getMetadata", json!({"sessionId": ids[0]}))
            .await,
        json!({"session": first})
    );
    assert_eq!(
        c.result("session.delete", json!({"sessionId": ids[0]}))
            .await,
        json!({"success": true})
    );
    assert!(!cli.has_session(ids[0]));
    assert_eq!(
        c.result("session.getLastId", json!({})).await,
        json!({"sessionId": ids[2]})
    );

    // Re-creating an existing id resets its history.
    c.result("session.send", json!({"sessionId": ids[1], "prompt": "p"}))
        .await;
    c.result("session.create", json!({"sessionId": ids[1]}))
        .await;
    let events = c
        .result("session.getMessages", json!({"sessionId": ids[1]}))
        .await;
    assert_eq!(events["events"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn token_required_failed_and_ok() {
    let cli = mock("t", Some("sekret")).await;
    let mut c = Client::connect(&cli).await;
    let mut idle = Client::connect(&cli).await;
    let (_, resp) = c.call("ping", json!({})).await;
    assert_eq!(
        resp,
        json!({"jsonrpc": "2.0", "id": 0, "error": {"code": -32001, "message": "AUTHENTICATION_REQUIRED"}})
    );
    let failed = |id: u64| json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32002, "message": "AUTHENTICATION_FAILED"}});
    let (_, resp) = c.call("connect", json!({"token": "wrong"})).await;
    assert_eq!(resp, failed(1));
    let (_, resp) = c.call("connect", json!({"supportedTaskKinds": []})).await;
    assert_eq!(resp, failed(2));
    let (_, resp) = c.call("session.list", json!({})).await;
    assert_eq!(resp["error"]["code"], -32001);
    let ok = c.result("connect", json!({"token": "sekret"})).await;
    assert_eq!(ok["ok"], true);
    assert_eq!(ok["version"], "mock-t");
    assert_eq!(
        c.result("ping", json!({"message": "in"})).await["message"],
        "pong: in"
    );
    c.result("session.create", json!({"sessionId": SID})).await;
    // The unauthenticated connection got no lifecycle: its first frame is its own error.
    let (before, resp) = idle.call("ping", json!({})).await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(resp["error"]["code"], -32001);
    assert_eq!(cli.requests_served(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_closes_and_refuses_revive_keeps_the_disk() {
    let cli = mock("k", None).await;
    let addr = cli.addr();
    let mut a = Client::connect(&cli).await;
    a.result("session.create", json!({"sessionId": SID, "hooks": true}))
        .await;
    let mut b = Client::connect(&cli).await;
    b.result("ping", json!({})).await;
    assert_eq!(cli.connections(), 2);

    cli.kill();
    assert!(!cli.is_alive());
    assert_eq!(cli.connections(), 0);
    for c in [&mut a, &mut b] {
        while c.next().await.is_some() {}
    }
    assert!(TcpStream::connect(addr).await.is_err(), "port still open");
    assert!(cli.has_session(SID));
    cli.kill(); // idempotent

    cli.revive().await.unwrap();
    assert_eq!(cli.addr(), addr);
    cli.revive().await.unwrap(); // no-op while alive
    let mut c = Client::connect(&cli).await;
    let (_, resp) = c
        .call("session.send", json!({"sessionId": SID, "prompt": "x"}))
        .await;
    assert_eq!(resp["error"]["code"], -32603, "unloaded after the restart");
    let (_, resp) = c.call("session.resume", json!({"sessionId": SID})).await;
    assert_eq!(resp["result"]["sessionId"], SID);
    // Hooks registered before the kill died with the connection: the send is answered directly.
    let (before, resp) = c
        .call("session.send", json!({"sessionId": SID, "prompt": "after"}))
        .await;
    assert!(resp["result"]["messageId"].is_string());
    assert!(before.iter().all(|m| m["method"] != "hooks.invoke"));
    let events = c
        .result("session.getMessages", json!({"sessionId": SID}))
        .await;
    let kinds: Vec<_> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kinds,
        [
            "session.start",
            "session.resume",
            "user.message",
            "session.error"
        ]
    );
}

#[tokio::test]
async fn stop_token_and_shutdown_end_the_server_for_good() {
    let stop = CancellationToken::new();
    let opts = MockCliOptions {
        name: "s".into(),
        ..Default::default()
    };
    let cli = MockCli::start("127.0.0.1:0".parse().unwrap(), opts.clone(), stop.clone())
        .await
        .unwrap();
    let mut c = Client::connect(&cli).await;
    c.result("ping", json!({})).await;
    stop.cancel();
    while c.next().await.is_some() {}
    assert!(cli.revive().await.is_err());

    let other = mock("s2", None).await;
    let mut c = Client::connect(&other).await;
    c.result("ping", json!({})).await;
    other.shutdown();
    assert!(!other.is_alive());
    while c.next().await.is_some() {}
    assert!(TcpStream::connect(other.addr()).await.is_err());
    assert!(other.revive().await.is_err());
}

#[tokio::test]
async fn header_and_body_in_separate_segments_and_coalesced_frames() {
    let cli = mock("a", None).await;
    let mut stream = TcpStream::connect(cli.addr()).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let body = br#"{"jsonrpc":"2.0","id":7,"method":"ping","params":{"message":"x"}}"#;
    stream
        .write_all(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes())
        .await
        .unwrap();
    stream.write_all(body).await.unwrap();
    // Two frames in one write.
    let mut two = BytesMut::new();
    encode_frame(br#"{"jsonrpc":"2.0","id":8,"method":"ping"}"#, &mut two);
    encode_frame(br#"{"jsonrpc":"2.0","id":9,"method":"ping"}"#, &mut two);
    stream.write_all(&two).await.unwrap();
    let mut frames = FramedRead::new(stream, FrameCodec::default());
    for id in [7, 8, 9] {
        let body = tokio::time::timeout(WAIT, frames.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["id"], id);
    }
    // Exactly `Content-Length` framing on the way out, no other headers.
    let mut raw = frames.into_inner();
    raw.write_all(b"Content-Length: 2\r\n\r\n[]").await.unwrap();
    let mut buf = vec![0u8; 16];
    raw.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"Content-Length: ");
}
