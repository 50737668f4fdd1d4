//! Timed turns and the overlap detector. The bookkeeping runs on a paused clock, through
//! connections registered without a socket ([`FakeConn`]); one test checks the wire order in
//! real time.

use std::time::Instant;

use super::*;

/// A client connection without a socket: requests go straight to the handler, the frames the
/// server queues for it are read from its queue. Lets a test run on a paused clock.
struct FakeConn {
    cli: MockCli,
    id: u64,
    rx: mpsc::Receiver<Bytes>,
    next_id: u64,
}

impl FakeConn {
    fn open(cli: &MockCli) -> FakeConn {
        let mut st = cli.inner.lock();
        let (tx, rx) = mpsc::channel(OUTBOX_FRAMES);
        let id = st.next_conn;
        st.next_conn += 1;
        let token = st.life.as_ref().expect("running").child_token();
        let conn = Conn {
            tx,
            token,
            authed: true,
            next_server_id: 1,
        };
        st.conns.insert(id, conn);
        FakeConn {
            cli: cli.clone(),
            id,
            rx,
            next_id: 0,
        }
    }

    /// Handles a request; returns every frame queued for this connection by then.
    fn call(&mut self, method: &str, params: Value) -> Vec<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let body = body.to_string();
        let raw_id = RawValue::from_string(id.to_string()).unwrap();
        handle_request(&self.cli.inner, self.id, method, &raw_id, body.as_bytes());
        self.drain()
    }

    /// The frames queued for this connection so far, as JSON.
    fn drain(&mut self) -> Vec<Value> {
        let mut frames = Vec::new();
        while let Ok(wire) = self.rx.try_recv() {
            let at = wire
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .expect("a framed message");
            frames.push(serde_json::from_slice(&wire[at + 4..]).unwrap());
        }
        frames
    }

    /// The `session.event` types among the frames queued so far.
    fn events(&mut self) -> Vec<String> {
        self.drain()
            .iter()
            .filter_map(event_type)
            .map(str::to_owned)
            .collect()
    }
}

async fn timed_mock(turn: Duration) -> MockCli {
    let opts = MockCliOptions {
        name: "t".into(),
        turn_duration: turn,
        ..Default::default()
    };
    let stop = CancellationToken::new();
    MockCli::start("127.0.0.1:0".parse().unwrap(), opts, stop)
        .await
        .unwrap()
}

fn send(c: &mut FakeConn, sid: &str) -> Vec<Value> {
    c.call("session.send", json!({"sessionId": sid, "prompt": "go"}))
}

/// Lets the turn tasks woken at the current (paused) instant run.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_turn_runs_for_its_duration_and_ends_with_error_then_idle() {
    let cli = timed_mock(Duration::from_millis(100)).await;
    let mut c = FakeConn::open(&cli);
    c.call("session.create", json!({ "sessionId": SID }));
    c.drain();

    let frames = send(&mut c, SID);
    assert!(frames[0]["result"]["messageId"].is_string(), "{frames:?}");
    let kinds: Vec<_> = frames.iter().filter_map(event_type).collect();
    assert_eq!(kinds, ["user.message"], "answered at once: {frames:?}");
    assert_eq!(cli.turns_running(SID), 1);

    tokio::time::sleep(Duration::from_millis(99)).await;
    settle().await;
    assert!(c.drain().is_empty(), "still running");
    assert_eq!(cli.turns_running(SID), 1);

    tokio::time::sleep(Duration::from_millis(2)).await;
    settle().await;
    let frames = c.drain();
    let kinds: Vec<_> = frames.iter().filter_map(event_type).collect();
    assert_eq!(kinds, ["session.error", "session.idle"], "{frames:?}");
    assert_eq!(
        frames.last().and_then(lifecycle_type),
        Some("session.updated")
    );
    assert_eq!(cli.turns_running(SID), 0);
    assert_eq!(cli.turns_started(), 1);
    assert_eq!(cli.overlapping_turns(), 0);
    assert_eq!(cli.max_concurrent_turns(), 1);

    // The error is persisted after the message; idle is ephemeral.
    let events = c.call("session.getMessages", json!({ "sessionId": SID }));
    let kinds: Vec<_> = events[0]["result"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["session.start", "user.message", "session.error"]);
}

#[tokio::test(start_paused = true)]
async fn a_send_during_a_running_turn_is_an_overlap() {
    const OTHER: &str = "99999999-2222-4333-8444-555555555555";
    let cli = timed_mock(Duration::from_millis(100)).await;
    let mut a = FakeConn::open(&cli);
    let mut b = FakeConn::open(&cli);
    a.call("session.create", json!({ "sessionId": SID }));
    b.call("session.resume", json!({ "sessionId": SID }));
    a.call("session.create", json!({ "sessionId": OTHER }));

    send(&mut a, SID);
    // A turn of another session at the same time is no overlap.
    send(&mut a, OTHER);
    assert_eq!(cli.overlapping_turns(), 0);
    tokio::time::sleep(Duration::from_millis(50)).await;
    send(&mut b, SID);
    assert_eq!(cli.overlapping_turns(), 1);
    assert_eq!(cli.max_concurrent_turns(), 2);
    assert_eq!(cli.turns_running(SID), 2);
    a.drain();

    // Each turn ends after its own duration, each with its own error + idle.
    tokio::time::sleep(Duration::from_millis(60)).await;
    settle().await;
    assert_eq!(cli.turns_running(SID), 1);
    assert_eq!(cli.turns_running(OTHER), 0);
    let idles = a.events().iter().filter(|k| *k == "session.idle").count();
    assert_eq!(idles, 2, "the first turn of each session ended");
    tokio::time::sleep(Duration::from_millis(50)).await;
    settle().await;
    assert_eq!(cli.turns_running(SID), 0);
    assert_eq!(a.events(), ["session.error", "session.idle"]);

    // Turns one after the other are not overlaps.
    for _ in 0..3 {
        send(&mut b, SID);
        tokio::time::sleep(Duration::from_millis(101)).await;
        settle().await;
    }
    assert_eq!(cli.turns_started(), 6);
    assert_eq!(cli.overlapping_turns(), 1);
    assert_eq!(cli.max_concurrent_turns(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_duration_can_change_and_zero_ends_turns_at_once() {
    let cli = timed_mock(Duration::ZERO).await;
    let mut c = FakeConn::open(&cli);
    c.call("session.create", json!({ "sessionId": SID }));
    c.drain();
    for _ in 0..3 {
        let kinds: Vec<_> = send(&mut c, SID)
            .iter()
            .filter_map(event_type)
            .map(str::to_owned)
            .collect();
        assert_eq!(kinds, ["user.message", "session.error", "session.idle"]);
    }
    assert_eq!(cli.turns_started(), 3);
    assert_eq!(cli.overlapping_turns(), 0);
    assert_eq!(cli.max_concurrent_turns(), 1);

    // A long turn keeps its duration when the setting changes; later turns get the new one.
    cli.set_turn_duration(Duration::from_secs(10));
    send(&mut c, SID);
    cli.set_turn_duration(Duration::from_millis(10));
    send(&mut c, SID);
    assert_eq!(cli.overlapping_turns(), 1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    settle().await;
    assert_eq!(cli.turns_running(SID), 1, "the long one runs on");
    tokio::time::sleep(Duration::from_secs(10)).await;
    settle().await;
    assert_eq!(cli.turns_running(SID), 0);
}

#[tokio::test(start_paused = true)]
async fn a_killed_server_forgets_its_running_turns_but_keeps_the_counts() {
    let cli = timed_mock(Duration::from_millis(100)).await;
    let mut c = FakeConn::open(&cli);
    c.call("session.create", json!({ "sessionId": SID }));
    send(&mut c, SID);
    assert_eq!(cli.turns_running(SID), 1);
    cli.kill();
    assert_eq!(cli.turns_running(SID), 0);
    cli.revive().await.unwrap();

    // The turn died with the process: a send after the restart does not overlap it, and the
    // dead turn never reports idle.
    let mut c = FakeConn::open(&cli);
    c.call("session.resume", json!({ "sessionId": SID }));
    c.drain();
    send(&mut c, SID);
    assert_eq!(cli.overlapping_turns(), 0);
    assert_eq!(cli.turns_started(), 2);
    tokio::time::sleep(Duration::from_millis(150)).await;
    settle().await;
    let idles = c.events().iter().filter(|k| *k == "session.idle").count();
    assert_eq!(idles, 1, "only the live turn ends");
}

#[tokio::test]
async fn over_the_wire_the_idle_comes_after_the_turn_duration() {
    let turn = Duration::from_millis(50);
    let cli = timed_mock(turn).await;
    let mut c = Client::connect(&cli).await;
    c.result("session.create", json!({ "sessionId": SID }))
        .await;
    c.until_event("session.start").await;
    let started = Instant::now();
    let (_, resp) = c
        .call("session.send", json!({"sessionId": SID, "prompt": "hi"}))
        .await;
    assert!(resp["result"]["messageId"].is_string(), "{resp}");
    let kinds: Vec<_> = c
        .until_event("session.idle")
        .await
        .iter()
        .filter_map(event_type)
        .map(str::to_owned)
        .collect();
    assert!(started.elapsed() >= turn, "{:?}", started.elapsed());
    assert_eq!(kinds, ["user.message", "session.error", "session.idle"]);
    assert_eq!(cli.overlapping_turns(), 0);
}
