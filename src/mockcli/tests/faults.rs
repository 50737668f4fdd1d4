//! Fault injection ([`Fault`]) and per-method request counts, over real sockets.

use std::time::Instant;

use super::*;
use crate::mockcli::faults::GARBAGE;
use crate::wire::codec::FrameError;

#[tokio::test]
async fn hang_is_counted_never_answered_and_the_connection_serves_on() {
    let cli = mock("f", None).await;
    cli.set_fault("session.list", Fault::Hang);
    let mut c = Client::connect(&cli).await;
    c.request("session.list", json!({})).await;
    // Requests are handled in order, so an answer to the hung one would come before these.
    for message in ["later", "even later"] {
        let (before, pong) = c.call("ping", json!({ "message": message })).await;
        assert!(before.is_empty(), "{before:?}");
        assert_eq!(pong["result"]["message"], format!("pong: {message}"));
    }
    assert_eq!(cli.requests_for("session.list"), 1);
    assert_eq!(cli.connections(), 1);
    cli.clear_faults();
    assert_eq!(
        c.result("session.list", json!({})).await,
        json!({"sessions": []})
    );
    assert_eq!(cli.requests_for("session.list"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_answers_late_and_later_requests_overtake_it() {
    let cli = mock("f", None).await;
    let delay = Duration::from_millis(500);
    cli.set_fault("session.create", Fault::Delay(delay));
    let mut c = Client::connect(&cli).await;
    let mut other = Client::connect(&cli).await;
    other.result("ping", json!({})).await;
    let started = Instant::now();
    let slow = c
        .request("session.create", json!({ "sessionId": SID }))
        .await;
    let fast = c.request("ping", json!({"message": "fast"})).await;
    let first = c.recv().await;
    assert_eq!(first["id"], fast, "{first}");
    // Neither this connection nor another waits for the delayed request.
    assert_eq!(
        other.result("ping", json!({"message": "x"})).await["message"],
        "pong: x"
    );
    assert!(!cli.has_session(SID), "handled before its delay");
    let (before, resp) = c.until_response(&slow).await;
    assert!(started.elapsed() >= delay);
    assert_eq!(resp["result"]["sessionId"], SID);
    // Handled as a whole after the delay: the lifecycle comes just before the answer.
    let lifecycles: Vec<_> = before.iter().filter_map(lifecycle_type).collect();
    assert_eq!(lifecycles, ["session.created"]);
    assert!(cli.has_session(SID));
    assert_eq!(cli.requests_for("session.create"), 1);
}

#[tokio::test]
async fn garbage_breaks_the_clients_framing_but_not_the_connection() {
    let cli = mock("f", None).await;
    cli.set_fault("session.list", Fault::Garbage);
    let mut c = Client::connect(&cli).await;
    c.request("session.list", json!({})).await;
    let pong = c.request("ping", json!({"message": "after"})).await;
    let decoded = tokio::time::timeout(WAIT, c.read.next())
        .await
        .expect("timed out waiting for a frame")
        .expect("connection closed");
    assert!(
        matches!(decoded, Err(FrameError::MalformedHeader(_))),
        "{decoded:?}"
    );
    // The decoder stops at its error; past the garbage the server answers the next requests. (A
    // fresh reader decodes what was buffered only once more bytes arrive: hence a second ping.)
    let unread = c.read.read_buffer().clone();
    assert!(unread.starts_with(GARBAGE), "{unread:?}");
    let mut read = FramedRead::new(c.read.into_inner(), FrameCodec::default());
    read.read_buffer_mut()
        .extend_from_slice(&unread[GARBAGE.len()..]);
    let mut c = Client {
        read,
        write: c.write,
        next_id: c.next_id,
    };
    let again = c.request("ping", json!({"message": "again"})).await;
    for (id, message) in [(pong, "pong: after"), (again, "pong: again")] {
        let resp = c.recv().await;
        assert_eq!(resp["id"], id);
        assert_eq!(resp["result"]["message"], message);
    }
    assert_eq!(cli.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_drops_that_connection_and_survives_kill_and_revive() {
    let cli = mock("f", None).await;
    cli.set_fault("session.create", Fault::Close);
    let mut closed = Client::connect(&cli).await;
    let mut bystander = Client::connect(&cli).await;
    closed.result("ping", json!({})).await;
    bystander.result("ping", json!({})).await;
    closed
        .request("session.create", json!({ "sessionId": SID }))
        .await;
    // Sent before the close is seen: never read, so never counted.
    closed.request("ping", json!({})).await;
    assert!(closed.next().await.is_none());
    assert!(!cli.has_session(SID));
    assert_eq!(cli.requests_for("ping"), 2);
    assert_eq!(
        bystander.result("ping", json!({"message": "on"})).await["message"],
        "pong: on"
    );
    assert_eq!(cli.connections(), 1);

    cli.kill();
    cli.revive().await.unwrap();
    let mut c = Client::connect(&cli).await;
    c.request("session.create", json!({ "sessionId": SID }))
        .await;
    assert!(c.next().await.is_none());
    cli.clear_faults();
    let mut c = Client::connect(&cli).await;
    let created = c
        .result("session.create", json!({ "sessionId": SID }))
        .await;
    assert_eq!(created["sessionId"], SID);
    assert_eq!(cli.requests_for("session.create"), 3);
}

#[tokio::test]
async fn requests_for_counts_every_connection_and_incarnation() {
    let cli = mock("t", Some("sekret")).await;
    let mut a = Client::connect(&cli).await;
    let mut b = Client::connect(&cli).await;
    // Rejected requests count too.
    let (_, resp) = a.call("ping", json!({})).await;
    assert_eq!(resp["error"]["code"], -32001);
    for c in [&mut a, &mut b] {
        c.result("connect", json!({"token": "sekret"})).await;
        c.result("ping", json!({})).await;
    }
    b.call("no.such.method", json!({})).await;
    cli.kill();
    cli.revive().await.unwrap();
    let mut c = Client::connect(&cli).await;
    c.result("connect", json!({"token": "sekret"})).await;
    c.result("session.list", json!({})).await;
    for (method, expected) in [
        ("connect", 3),
        ("ping", 3),
        ("no.such.method", 1),
        ("session.list", 1),
        ("session.create", 0),
    ] {
        assert_eq!(cli.requests_for(method), expected, "{method}");
    }
    assert_eq!(cli.requests_served(), 8);
}
