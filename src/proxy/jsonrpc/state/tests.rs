//! The connection state's invariants: setup recording, batches, internal ids, and request
//! timeouts that pause while a node waits for the client (virtual time).

use super::*;

fn call(method: &'static str, n: u32) -> SetupCall {
    SetupCall {
        method,
        body: Bytes::from(format!(r#"{{"id":{n},"method":"{method}"}}"#)),
    }
}

#[test]
fn setup_calls_are_one_per_method_in_first_seen_order_and_bounded() {
    let mut state = ConnState::default();
    state.record_setup(call("connect", 0), Replay::Latest);
    state.record_setup(call("sessionFs.setProvider", 1), Replay::Latest);
    state.record_setup(call("connect", 2), Replay::Latest);
    let calls = state.setup_calls(None);
    let methods: Vec<&str> = calls.iter().map(|c| c.method).collect();
    assert_eq!(methods, ["connect", "sessionFs.setProvider"]);
    assert_eq!(
        calls[0].body,
        call("connect", 2).body,
        "the latest replaces the first"
    );
    let names: Vec<&'static str> = (0..100)
        .map(|i| &*Box::leak(format!("m{i}").into_boxed_str()))
        .collect();
    for (i, name) in names.iter().enumerate() {
        state.record_setup(call(name, i as u32), Replay::Latest);
    }
    assert_eq!(state.setup_calls(None).len(), MAX_SETUP_CALLS);
}

#[test]
fn cumulative_setup_calls_are_all_replayed_but_the_one_being_sent() {
    let mut state = ConnState::default();
    state.record_setup(call("connect", 0), Replay::Latest);
    state.record_setup(call("secrets.addFilterValues", 1), Replay::Every);
    state.record_setup(call("secrets.addFilterValues", 2), Replay::Every);
    let replay = state.setup_calls(Some("secrets.addFilterValues"));
    let bodies: Vec<&Bytes> = replay.iter().map(|c| &c.body).collect();
    assert_eq!(
        bodies,
        [
            &call("connect", 0).body,
            &call("secrets.addFilterValues", 1).body
        ]
    );
    assert_eq!(state.setup_calls(Some("connect")).len(), 2);
}

#[test]
fn batches_answer_once_full_in_request_order() {
    let mut state = ConnState::default();
    let batch = state.new_batch(3);
    let slot = |index| ReplyTo::Batch { batch, index };
    assert_eq!(state.fill(slot(2), Bytes::from_static(b"2")), None);
    assert_eq!(state.fill(slot(0), Bytes::from_static(b"0")), None);
    assert_eq!(
        state.fill(slot(1), Bytes::from_static(b"1")).as_deref(),
        Some(&b"[0,1,2]"[..])
    );
    assert_eq!(state.fill(slot(1), Bytes::from_static(b"1")), None, "gone");
    let direct = state.fill(ReplyTo::Direct, Bytes::from_static(b"x"));
    assert_eq!(direct.as_deref(), Some(&b"x"[..]));
}

#[tokio::test]
async fn internal_ids_round_trip_and_client_ids_are_not_internal() {
    let mut state = ConnState::default();
    let node: Arc<str> = Arc::from("a");
    let id = state.add_internal(node, Internal::Discard, Duration::from_secs(1));
    let json = serde_json::to_string(&id).unwrap();
    let n = parse_internal_id(&json).expect("internal");
    assert!(
        state.take_internal(n, "b").is_none(),
        "only the node it went to may answer"
    );
    assert!(matches!(
        state.take_internal(n, "a"),
        Some(Internal::Discard)
    ));
    assert_eq!(parse_internal_id("42"), None);
    assert_eq!(parse_internal_id("\"42\""), None);
}

/// Sleep (virtual time) until the next sweep finds something; what it found.
async fn next_fired(state: &mut ConnState) -> Vec<Fired> {
    loop {
        let at = state.next_sweep().expect("a deadline ahead");
        tokio::time::sleep_until(at).await;
        let fired = state.sweep(Instant::now());
        if !fired.is_empty() {
            return fired;
        }
    }
}

/// The client request ids among `fired`, sorted.
fn requests(fired: &[Fired]) -> Vec<String> {
    let mut ids: Vec<String> = fired
        .iter()
        .filter_map(|f| match f {
            Fired::Request(id, _) => Some(id.to_string()),
            Fired::Internal(..) => None,
        })
        .collect();
    ids.sort();
    ids
}

fn pending(node: &str, session: Option<&str>) -> Pending {
    let mut p = Pending::new(Arc::from(node), "session.send", ReplyTo::Direct);
    p.session = session.map(Arc::from);
    p
}

#[tokio::test(start_paused = true)]
async fn a_request_times_out_after_its_timeout() {
    let mut state = ConnState::default();
    let start = Instant::now();
    state.wait("1".into(), pending("a", None), Duration::from_secs(5));
    assert_eq!(requests(&next_fired(&mut state).await), ["1"]);
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert!(state.take("1").is_none(), "the sweep took it");
    assert_eq!(state.next_sweep(), None);
}

#[tokio::test(start_paused = true)]
async fn an_answered_request_never_times_out() {
    let mut state = ConnState::default();
    state.wait("1".into(), pending("a", None), Duration::from_secs(5));
    assert!(
        state.take_answered("1", "b").is_none(),
        "another node's answer"
    );
    assert!(state.take_answered("1", "a").is_some());
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(state.sweep(Instant::now()).is_empty());
    assert_eq!(state.next_sweep(), None, "nothing left to wait for");
}

#[tokio::test(start_paused = true)]
async fn the_clock_pauses_while_the_node_waits_for_the_client() {
    let mut state = ConnState::default();
    let start = Instant::now();
    state.wait("1".into(), pending("a", Some("s")), Duration::from_secs(5));
    state.wait(
        "2".into(),
        pending("a", Some("other")),
        Duration::from_secs(5),
    );
    state.wait("3".into(), pending("b", Some("s")), Duration::from_secs(5));
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Node a asks the client something about session s.
    let asked = server_request(&mut state, "a", Some("s"));
    tokio::time::sleep(Duration::from_secs(10)).await;
    // Requests 2 (another session) and 3 (another node) ran on; 1 is paused.
    assert_eq!(requests(&state.sweep(Instant::now())), ["2", "3"]);
    assert_eq!(state.next_sweep(), None, "the paused one has no deadline");
    assert!(state.take_server_request(asked).is_some());
    let resumed = Instant::now();
    assert_eq!(requests(&next_fired(&mut state).await), ["1"]);
    assert_eq!(
        resumed.elapsed(),
        Duration::from_secs(3),
        "what was left of it"
    );
    assert_eq!(start.elapsed(), Duration::from_secs(15));
}

#[tokio::test(start_paused = true)]
async fn a_server_request_without_a_session_pauses_all_of_its_nodes_requests() {
    let mut state = ConnState::default();
    server_request(&mut state, "a", None);
    state.wait("1".into(), pending("a", Some("s")), Duration::from_secs(1));
    state.wait("2".into(), pending("b", None), Duration::from_secs(2));
    assert_eq!(requests(&next_fired(&mut state).await), ["2"]);
    // Node a's link is gone: its server requests with it, and request 1 runs again.
    state.forget_server_requests_of("a");
    assert_eq!(requests(&next_fired(&mut state).await), ["1"]);
}

#[tokio::test(start_paused = true)]
async fn unanswered_questions_of_the_proxy_expire() {
    let mut state = ConnState::default();
    let (tx, rx) = oneshot::channel();
    state.add_internal(Arc::from("a"), Internal::Ask(tx), Duration::from_secs(1));
    match next_fired(&mut state).await.pop() {
        Some(Fired::Internal(node, Internal::Ask(reply))) => {
            assert_eq!(&*node, "a");
            reply.send(None).unwrap();
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(rx.await.unwrap(), None);
    assert!(state.take_internal_on("a").is_empty());
}

#[test]
fn server_requests_are_bounded_per_node() {
    let mut state = ConnState::default();
    for _ in 0..MAX_SERVER_REQUESTS {
        server_request(&mut state, "a", None);
    }
    assert_eq!(state.next_server_request("a"), None, "node a has too many");
    assert!(
        state.next_server_request("b").is_some(),
        "node b is not held back by a"
    );
    assert_eq!(state.take_all_server_requests().len(), MAX_SERVER_REQUESTS);
    assert!(state.next_server_request("a").is_some());
}

/// Node `node` sends the client a request about `session`: its proxy id.
fn server_request(state: &mut ConnState, node: &str, session: Option<&str>) -> u64 {
    let n = state.next_server_request(node).expect("room");
    let request = ServerRequest {
        upstream: Arc::from(node),
        id: RawValue::from_string(n.to_string()).unwrap(),
        session: session.map(Arc::from),
    };
    state.add_server_request(n, request);
    n
}

#[test]
fn ids_held_by_tasks_are_in_flight_and_proxy_ids_are_reserved() {
    let mut state = ConnState::default();
    state.lent("7".into());
    assert!(state.is_pending("7"));
    assert!(!state.pending_is_empty());
    state.returned("7");
    assert!(!state.is_pending("7"));
    assert!(is_reserved_id("\"sessiongate-3\""));
    assert!(!is_reserved_id("3"));
    assert!(!is_reserved_id("\"session-3\""));
}

#[test]
fn the_oldest_exchange_goes_first() {
    let mut state = ConnState::default();
    for i in 0..MAX_EXCHANGES + 10 {
        state.begin_exchange(&format!("r{i}"), Arc::from("a"));
    }
    assert_eq!(state.exchanges().len(), MAX_EXCHANGES);
    assert!(!state.exchanges().contains_key("r0"));
    assert!(state
        .exchanges()
        .contains_key(&*format!("r{}", MAX_EXCHANGES + 9)));
    state.end_exchange("r20");
    assert!(!state.exchanges().contains_key("r20"));
}
