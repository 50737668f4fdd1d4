//! One turn at a time per session (`session_concurrency: 1`) through one in-process proxy: many
//! clients sending to one session have their turns run one after another (the mock CLI counts
//! overlapping turns), a full line is refused with -32004 before anything reaches the CLI, and a
//! turn that never ends gives the session up at `turn_timeout`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::jsonrpc::{
    all_at_once, attached_clients, create, error_of, send_and_finish, session_params, RpcClient,
    RpcYaml, Setup,
};
use support::within;
use tokio::sync::Barrier;
use tokio::time::Instant;

/// The mock CLI's name in a one-node fleet.
const NODE: &str = "cli-0";

/// A one-node fleet and a proxy with `pool` lines, and one session created on it by `creator`
/// (kept open so the session stays loaded).
async fn session_setup(pool: &str) -> (Setup, RpcClient, String) {
    let setup = Setup::start(
        1,
        RpcYaml {
            pool,
            ..RpcYaml::default()
        },
    )
    .await;
    let sid = uuid::Uuid::new_v4().to_string();
    let mut creator = setup.client().await;
    create(&mut creator, &sid, json!({})).await;
    (setup, creator, sid)
}

/// `n` clients of the proxy, each attached to `sid`.
async fn attached(setup: &Setup, sid: &str, n: usize) -> Vec<RpcClient> {
    attached_clients(setup.proxy.addr("cli"), sid, n).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_senders_to_one_session_take_turns_one_at_a_time() {
    within(60, async {
        let (setup, _creator, sid) =
            session_setup("    session_concurrency: 1\n    turn_timeout: 20s\n    max_queue: 32\n")
                .await;
        let cli = setup.fleet.get(NODE);
        cli.set_turn_duration(Duration::from_millis(40));
        let clients = attached(&setup, &sid, 20).await;

        let answers = all_at_once(clients, &sid).await;
        assert_eq!(answers.len(), 20);
        for answer in &answers {
            assert!(
                answer.get("result").is_some(),
                "every send is admitted: {answer}"
            );
        }
        assert_eq!(cli.turns_started(), 20);
        assert_eq!(cli.requests_for("session.send"), 20);
        assert_eq!(
            cli.overlapping_turns(),
            0,
            "no two turns of the session ran at once"
        );
        assert_eq!(cli.max_concurrent_turns(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_session_concurrency_the_same_senders_overlap() {
    within(60, async {
        let (setup, _creator, sid) = session_setup("").await;
        let cli = setup.fleet.get(NODE);
        cli.set_turn_duration(Duration::from_millis(40));
        let clients = attached(&setup, &sid, 20).await;

        let answers = all_at_once(clients, &sid).await;
        for answer in &answers {
            assert!(answer.get("result").is_some(), "{answer}");
        }
        assert_eq!(cli.turns_started(), 20);
        // The control: the detector sees what the turn lock prevents.
        assert!(
            cli.overlapping_turns() > 0,
            "20 concurrent 40ms turns did not overlap"
        );
        assert!(cli.max_concurrent_turns() > 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_line_refuses_the_next_send_before_it_reaches_the_cli() {
    within(60, async {
        let (setup, _creator, sid) =
            session_setup("    session_concurrency: 1\n    turn_timeout: 30s\n    max_queue: 2\n")
                .await;
        let cli = setup.fleet.get(NODE);
        let mut clients = attached(&setup, &sid, 4).await;

        // The first send's turn runs long; the turns after it are short.
        cli.set_turn_duration(Duration::from_secs(3));
        let mut holder = clients.remove(0);
        let first = holder
            .call(
                "session.send",
                session_params(&sid, json!({"prompt": "long"})),
            )
            .await;
        assert!(first.get("result").is_some(), "{first}");
        cli.set_turn_duration(Duration::from_millis(20));

        // Three more at once: two fit in the line (max_queue 2), one does not. Which one is
        // refused depends on arrival order, so answers are collected as they come.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let barrier = Arc::new(Barrier::new(3));
        let mut tasks = tokio::task::JoinSet::new();
        for (i, mut client) in clients.into_iter().enumerate() {
            let (barrier, sid, tx) = (barrier.clone(), sid.clone(), tx.clone());
            tasks.spawn(async move {
                barrier.wait().await;
                let answer = send_and_finish(&mut client, &sid, &format!("queued {i}")).await;
                tx.send(answer).expect("collector");
            });
        }
        drop(tx);

        let refused = rx.recv().await.expect("an answer");
        let err = error_of(&refused);
        assert_eq!(err["code"], -32004, "{refused}");
        assert!(
            err["message"].as_str().is_some_and(|m| m.contains("busy")),
            "{refused}"
        );
        assert!(
            err["data"]["retryAfterMs"]
                .as_u64()
                .is_some_and(|ms| ms > 0),
            "{refused}"
        );
        // Refused while the first turn still runs, and nothing but the first send reached the
        // CLI.
        assert_eq!(cli.turns_running(&sid), 1);
        assert_eq!(cli.requests_for("session.send"), 1);

        let mut admitted = 0;
        while let Some(answer) = rx.recv().await {
            assert!(answer.get("result").is_some(), "queued sends run: {answer}");
            admitted += 1;
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("sender task");
        }
        assert_eq!(admitted, 2);
        assert_eq!(
            cli.requests_for("session.send"),
            3,
            "the refused send never reached the CLI"
        );
        assert_eq!(cli.turns_started(), 3);
        assert_eq!(cli.overlapping_turns(), 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_that_never_ends_gives_the_session_up_at_turn_timeout() {
    within(60, async {
        const TURN_TIMEOUT: Duration = Duration::from_millis(600);
        let (setup, _creator, sid) = session_setup(
            "    session_concurrency: 1\n    turn_timeout: 600ms\n    max_queue: 4\n",
        )
        .await;
        let cli = setup.fleet.get(NODE);
        let mut clients = attached(&setup, &sid, 2).await;
        let mut waiter = clients.pop().expect("client");
        let mut holder = clients.pop().expect("client");

        // The CLI never reports the end of this turn (within the test).
        cli.set_turn_duration(Duration::from_secs(600));
        let first = holder
            .call(
                "session.send",
                session_params(&sid, json!({"prompt": "hang"})),
            )
            .await;
        assert!(first.get("result").is_some(), "{first}");
        let first_at = Instant::now();
        cli.set_turn_duration(Duration::from_millis(20));

        let second = send_and_finish(&mut waiter, &sid, "next").await;
        assert!(
            second.get("result").is_some(),
            "the queued send proceeds once the hung turn times out: {second}"
        );
        // It went on only after the proxy gave the first turn up: the CLI still runs that one.
        assert!(
            first_at.elapsed() >= TURN_TIMEOUT - Duration::from_millis(100),
            "the second send went on after {:?}",
            first_at.elapsed()
        );
        assert_eq!(cli.requests_for("session.send"), 2);
        assert_eq!(cli.turns_running(&sid), 1, "the hung turn still runs");
        assert_eq!(cli.turns_started(), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turns_of_different_sessions_do_not_wait_for_each_other() {
    within(60, async {
        let (setup, mut creator, busy) =
            session_setup("    session_concurrency: 1\n    turn_timeout: 30s\n    max_queue: 4\n")
                .await;
        let other = uuid::Uuid::new_v4().to_string();
        create(&mut creator, &other, json!({})).await;
        let cli = setup.fleet.get(NODE);

        // A turn of `busy` that runs all through the test.
        cli.set_turn_duration(Duration::from_secs(600));
        let mut holder = attached(&setup, &busy, 1).await.remove(0);
        let first = holder
            .call(
                "session.send",
                session_params(&busy, json!({"prompt": "long"})),
            )
            .await;
        assert!(first.get("result").is_some(), "{first}");

        cli.set_turn_duration(Duration::from_millis(20));
        let mut client = attached(&setup, &other, 1).await.remove(0);
        for i in 0..3 {
            let answer = send_and_finish(&mut client, &other, &format!("other {i}")).await;
            assert!(answer.get("result").is_some(), "{answer}");
        }
        assert_eq!(cli.turns_running(&busy), 1);
        assert_eq!(cli.turns_started(), 4);
        assert_eq!(cli.overlapping_turns(), 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_send_gives_its_turn_back_at_once() {
    within(20, async {
        // A lock kept after a failed send would hold the next send for 10s or more.
        let (setup, _creator, sid) =
            session_setup("    session_concurrency: 1\n    turn_timeout: 10s\n    max_queue: 4\n")
                .await;
        let cli = setup.fleet.get(NODE);
        // A session the CLI does not have: it answers each send with an error.
        let mut stranger = setup.client().await;
        let unknown = uuid::Uuid::new_v4().to_string();
        let started = Instant::now();
        for _ in 0..3 {
            let answer = stranger
                .call(
                    "session.send",
                    session_params(&unknown, json!({"prompt": "x"})),
                )
                .await;
            assert!(answer.get("error").is_some(), "{answer}");
            assert_ne!(answer["error"]["code"], -32004, "{answer}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "three failed sends took {:?}",
            started.elapsed()
        );
        assert_eq!(cli.requests_for("session.send"), 3);
        assert_eq!(cli.turns_started(), 0);

        // And the session's own turns still run.
        let mut client = attached(&setup, &sid, 1).await.remove(0);
        cli.set_turn_duration(Duration::from_millis(20));
        let answer = send_and_finish(&mut client, &sid, "ok").await;
        assert!(answer.get("result").is_some(), "{answer}");
    })
    .await;
}
