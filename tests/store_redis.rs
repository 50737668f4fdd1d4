//! The shared store against a real Redis (`tests/support/redis.rs`): two `Store`s on one Redis
//! behave as two proxy replicas sharing bindings, rate limits and locks; with Redis stopped,
//! every operation is still answered from memory, and the store goes back to Redis once it is
//! restarted; a hung Redis costs one call timeout, not one per operation. Redis keeps its own
//! clock, so lock expiry is waited for in real time.

mod support;

use std::time::{Duration, Instant};

use prometheus::Registry;
use sessiongate::metrics::Metrics;
use sessiongate::store::{SharedPins, Store, CALL_TIMEOUT};
use support::redis::RedisServer;
use support::{poll_until, within};

const MINUTE: Duration = Duration::from_secs(60);

const OPS: [&str; 7] = ["bind", "owner", "unbind", "rate", "lock", "renew", "unlock"];

/// One proxy replica's store on `redis`, once it has reached it.
async fn replica(redis: &RedisServer) -> (Store, Metrics) {
    let metrics = Metrics::new(Registry::new()).expect("metrics");
    let store = Store::with_redis(&redis.url(), &metrics).expect("store");
    wait_redis_up(&metrics).await;
    (store, metrics)
}

async fn wait_redis_up(metrics: &Metrics) {
    let up = metrics.redis_up.clone();
    poll_until("sessiongate_redis_up is 1", 10, move || {
        let answered = up.get() == 1;
        async move { answered }
    })
    .await;
}

/// `sessiongate_store_fallback_total` and `sessiongate_redis_errors_total` of each op.
fn fallbacks(metrics: &Metrics) -> Vec<(&'static str, u64)> {
    OPS.map(|op| {
        let served_from_memory = metrics.store_fallback_total.with_label_values(&[op]).get();
        (op, served_from_memory)
    })
    .to_vec()
}

fn errors(metrics: &Metrics) -> u64 {
    OPS.iter()
        .map(|op| metrics.redis_errors_total.with_label_values(&[op]).get())
        .sum()
}

/// A plain Redis connection, to look at the keys the store wrote.
async fn inspect(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis")
}

#[tokio::test]
async fn bindings_made_by_one_replica_are_seen_by_another() {
    within(30, async {
        let redis = RedisServer::start().await;
        let (a, a_metrics) = replica(&redis).await;
        let (b, b_metrics) = replica(&redis).await;

        a.bind("api", "s1", "alice", MINUTE).await;
        assert_eq!(b.owner("api", "s1").await.as_deref(), Some("alice"));
        assert_eq!(b.owner("api", "s2").await, None);
        assert_eq!(b.owner("web", "s1").await, None, "bindings are per pool");

        let mut conn = inspect(&redis).await;
        let user: Option<String> = redis::cmd("GET")
            .arg("sessiongate:owner:api:s1")
            .query_async(&mut conn)
            .await
            .expect("GET");
        assert_eq!(user.as_deref(), Some("alice"));
        let ttl_ms: i64 = redis::cmd("PTTL")
            .arg("sessiongate:owner:api:s1")
            .query_async(&mut conn)
            .await
            .expect("PTTL");
        assert!(ttl_ms > 50_000 && ttl_ms <= 60_000, "{ttl_ms}");

        a.unbind("api", "s1").await;
        let (c, _) = replica(&redis).await;
        assert_eq!(
            c.owner("api", "s1").await,
            None,
            "unbind deletes it in Redis"
        );
        let exists: bool = redis::cmd("EXISTS")
            .arg("sessiongate:owner:api:s1")
            .query_async(&mut conn)
            .await
            .expect("EXISTS");
        assert!(!exists);

        for metrics in [&a_metrics, &b_metrics] {
            assert!(fallbacks(metrics).iter().all(|(_, n)| *n == 0));
            assert_eq!(errors(metrics), 0);
        }
    })
    .await;
}

#[tokio::test]
async fn a_session_is_claimed_once_across_replicas() {
    within(30, async {
        let redis = RedisServer::start().await;
        let (a, _) = replica(&redis).await;
        let (b, _) = replica(&redis).await;
        let (first, second) = tokio::join!(
            a.claim("api", "s1", "alice", MINUTE),
            b.claim("api", "s1", "bob", MINUTE)
        );
        assert_eq!(first, second, "both replicas agree on one owner");
        let (c, _) = replica(&redis).await;
        assert_eq!(c.owner("api", "s1").await, Some(first));
    })
    .await;
}

#[tokio::test]
async fn the_rate_limit_is_shared_by_replicas() {
    within(30, async {
        let redis = RedisServer::start().await;
        let (a, _) = replica(&redis).await;
        let (b, _) = replica(&redis).await;

        let mut admitted = 0;
        for _ in 0..6 {
            for store in [&a, &b] {
                match store.rate("user:alice", 10, MINUTE).await {
                    Ok(()) => admitted += 1,
                    Err(retry) => assert!(
                        retry > Duration::ZERO && retry <= MINUTE + MINUTE / 10,
                        "{retry:?}"
                    ),
                }
            }
        }
        assert_eq!(admitted, 10, "10 per minute across both replicas");
        assert_eq!(b.rate("user:bob", 10, MINUTE).await, Ok(()), "per key");

        let ttl_ms: i64 = redis::cmd("PTTL")
            .arg("sessiongate:rate:user:alice")
            .query_async(&mut inspect(&redis).await)
            .await
            .expect("PTTL");
        assert!(
            ttl_ms > 100_000 && ttl_ms <= 120_000,
            "kept for two windows: {ttl_ms}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_lock_is_held_by_one_replica_at_a_time() {
    within(30, async {
        let redis = RedisServer::start().await;
        let (a, _) = replica(&redis).await;
        let (b, _) = replica(&redis).await;

        assert!(a.try_lock("session:s1", "a", MINUTE).await);
        assert!(!b.try_lock("session:s1", "b", MINUTE).await);
        assert!(
            !b.renew("session:s1", "b", MINUTE).await,
            "only the holder renews"
        );
        b.unlock("session:s1", "b").await;
        assert!(
            !b.try_lock("session:s1", "b", MINUTE).await,
            "only the holder releases"
        );
        assert!(a.renew("session:s1", "a", MINUTE).await);
        a.unlock("session:s1", "a").await;

        let ttl = Duration::from_millis(300);
        let taken_at = Instant::now();
        assert!(b.try_lock("session:s1", "b", ttl).await);
        assert!(!a.try_lock("session:s1", "a", MINUTE).await);
        let a = &a;
        poll_until("the lock expires", 5, move || {
            a.try_lock("session:s1", "a", MINUTE)
        })
        .await;
        assert!(
            taken_at.elapsed() >= ttl - Duration::from_millis(50),
            "expired after {:?}",
            taken_at.elapsed()
        );
        assert!(!b.renew("session:s1", "b", ttl).await, "b's lock expired");
    })
    .await;
}

#[tokio::test]
async fn a_redis_outage_is_served_from_memory_until_redis_is_back() {
    within(60, async {
        let mut redis = RedisServer::start().await;
        let (a, metrics) = replica(&redis).await;
        a.bind("api", "s1", "alice", MINUTE).await;
        assert!(fallbacks(&metrics).iter().all(|(_, n)| *n == 0));

        redis.stop();
        a.bind("api", "s2", "bob", MINUTE).await;
        assert_eq!(a.owner("api", "s2").await.as_deref(), Some("bob"));
        assert_eq!(a.owner("api", "s1").await.as_deref(), Some("alice"));
        assert_eq!(a.owner("api", "s3").await, None);
        assert_eq!(a.rate("user:alice", 1, MINUTE).await, Ok(()));
        assert!(a.rate("user:alice", 1, MINUTE).await.is_err());
        assert!(a.try_lock("session:s1", "a", MINUTE).await);
        assert!(!a.try_lock("session:s1", "b", MINUTE).await);
        assert!(a.renew("session:s1", "a", MINUTE).await);
        a.unlock("session:s1", "a").await;

        assert_eq!(metrics.redis_up.get(), 0);
        // Every operation that needed Redis was served from memory; s1 and s2 were known here,
        // and so was a's lock when b asked for it.
        let expected = [
            ("bind", 1),
            ("owner", 1),
            ("unbind", 0),
            ("rate", 2),
            ("lock", 1),
            ("renew", 1),
            ("unlock", 1),
        ];
        assert_eq!(fallbacks(&metrics), expected.to_vec());
        // The first call after the stop fails, unless the probe saw the outage first; later
        // calls do not try Redis.
        assert!(errors(&metrics) <= 1, "{}", errors(&metrics));

        redis.restart().await;
        wait_redis_up(&metrics).await;
        a.bind("api", "s4", "carol", MINUTE).await;
        let (b, _) = replica(&redis).await;
        assert_eq!(b.owner("api", "s4").await.as_deref(), Some("carol"));
        assert_eq!(
            b.owner("api", "s2").await,
            None,
            "bindings made during the outage stay in the replica that made them"
        );
        assert_eq!(a.owner("api", "s2").await.as_deref(), Some("bob"));
        assert!(a.try_lock("session:s1", "a", MINUTE).await);
        assert!(!b.try_lock("session:s1", "b", MINUTE).await);
        assert_eq!(
            fallbacks(&metrics),
            expected.to_vec(),
            "nothing served from memory since"
        );
    })
    .await;
}

#[tokio::test]
async fn a_hung_redis_costs_one_call_timeout_not_one_per_operation() {
    within(60, async {
        let redis = RedisServer::start().await;
        let (a, metrics) = replica(&redis).await;

        redis.freeze();
        let started = Instant::now();
        for i in 0..20 {
            a.bind("api", &format!("s{i}"), "alice", MINUTE).await;
        }
        let took = started.elapsed();
        // Twenty call timeouts would be 5s.
        assert!(took < CALL_TIMEOUT * 8, "20 binds took {took:?}");
        assert_eq!(metrics.redis_up.get(), 0);
        assert_eq!(
            metrics
                .store_fallback_total
                .with_label_values(&["bind"])
                .get(),
            20
        );
        assert!(errors(&metrics) <= 1, "{}", errors(&metrics));
        assert_eq!(a.owner("api", "s7").await.as_deref(), Some("alice"));

        redis.thaw();
        wait_redis_up(&metrics).await;
        a.bind("api", "t1", "carol", MINUTE).await;
        let (b, _) = replica(&redis).await;
        assert_eq!(b.owner("api", "t1").await.as_deref(), Some("carol"));
    })
    .await;
}

#[tokio::test]
async fn a_lock_granted_during_an_outage_is_taken_in_redis_at_its_renewal() {
    within(60, async {
        let mut redis = RedisServer::start().await;
        let (a, metrics) = replica(&redis).await;

        redis.stop();
        assert!(
            a.try_lock("session:s1", "a1", MINUTE).await,
            "granted in memory"
        );
        redis.restart().await;
        wait_redis_up(&metrics).await;

        // Redis came back empty, yet a's other holders are still refused.
        assert!(!a.try_lock("session:s1", "a2", MINUTE).await);
        let (b, _) = replica(&redis).await;
        // The renewal takes it in Redis, so other replicas see it from then on.
        assert!(a.renew("session:s1", "a1", MINUTE).await);
        let held: Option<String> = redis::cmd("GET")
            .arg("sessiongate:lock:session:s1")
            .query_async(&mut inspect(&redis).await)
            .await
            .expect("GET");
        assert_eq!(held.as_deref(), Some("a1"));
        assert!(!b.try_lock("session:s1", "b1", MINUTE).await);
        a.unlock("session:s1", "a1").await;
        assert!(b.try_lock("session:s1", "b1", MINUTE).await);
        // Another replica took it: a's late renewal fails and does not take it back.
        assert!(!a.renew("session:s1", "a1", MINUTE).await);
        assert!(!a.try_lock("session:s1", "a2", MINUTE).await);
    })
    .await;
}

/// The shared pin of `session` in `pool`, as Redis holds it, polled until it is `want` (pin
/// writes are written behind).
async fn wait_pin(pins: &SharedPins, session: &str, want: Option<&str>) {
    poll_until(&format!("pin of {session} is {want:?}"), 10, || async {
        pins.lookup(session).await.as_deref() == want
    })
    .await;
}

#[tokio::test]
async fn pins_written_by_one_replica_are_found_by_another() {
    within(60, async {
        let redis = RedisServer::start().await;
        let ((a, _), (b, metrics_b)) = (replica(&redis).await, replica(&redis).await);
        let ttl = Duration::from_secs(600);
        let (pins_a, pins_b) = (
            a.shared_pins("fleet", ttl).expect("redis"),
            b.shared_pins("fleet", ttl).expect("redis"),
        );
        assert!(Store::local().shared_pins("fleet", ttl).is_none());
        assert_eq!(pins_b.lookup("s1").await, None);
        pins_a.set("s1", "cli-0");
        pins_a.set("s2", "cli-0");
        pins_a.set("s3", "cli-1");
        wait_pin(&pins_b, "s3", Some("cli-1")).await;
        assert_eq!(pins_b.lookup("s1").await.as_deref(), Some("cli-0"));
        // Another pool's pins are its own.
        let other = b.shared_pins("web", ttl).expect("redis");
        assert_eq!(other.lookup("s1").await, None);
        // Each node's live sessions, whichever replica pinned them.
        pins_b.set("s4", "cli-0");
        wait_pin(&pins_a, "s4", Some("cli-0")).await;
        let mut live = pins_a.live_on("cli-0").await.expect("answered");
        live.sort();
        assert_eq!(live, ["s1", "s2", "s4"]);
        // A move takes the session off the old node's set.
        pins_b.set("s1", "cli-1");
        wait_pin(&pins_a, "s1", Some("cli-1")).await;
        assert_eq!(
            pins_a.live_on("cli-0").await.expect("answered").len(),
            2,
            "s1 moved away"
        );
        // A refresh does not move back a pin another replica moved.
        pins_a.refresh("s1", "cli-0");
        // A delete that names the wrong node leaves the pin; one naming its node removes it.
        pins_a.delete("s1", Some("cli-0"));
        pins_a.set("marker", "cli-2");
        wait_pin(&pins_b, "marker", Some("cli-2")).await;
        assert_eq!(pins_b.lookup("s1").await.as_deref(), Some("cli-1"));
        pins_a.delete("s1", Some("cli-1"));
        wait_pin(&pins_b, "s1", None).await;
        assert!(!pins_b
            .live_on("cli-1")
            .await
            .expect("answered")
            .contains(&"s1".to_owned()));
        // A node that left: its pins go, those moved elsewhere stay.
        assert_eq!(pins_b.drop_node("cli-0").await, Some(2));
        assert_eq!(pins_a.lookup("s2").await, None);
        assert_eq!(pins_a.lookup("s3").await.as_deref(), Some("cli-1"));
        assert_eq!(
            metrics_b
                .redis_errors_total
                .with_label_values(&["pin_write"])
                .get(),
            0
        );
    })
    .await;
}

#[tokio::test]
async fn a_pin_expires_from_redis_after_the_idle_ttl_unless_refreshed() {
    within(60, async {
        let redis = RedisServer::start().await;
        let (a, _) = replica(&redis).await;
        // A one-second idle TTL: pins live 2 s in Redis (TTL plus the refresh interval).
        let pins = a
            .shared_pins("fleet", Duration::from_secs(1))
            .expect("redis");
        assert_eq!(pins.refresh_every(), Duration::from_secs(1));
        pins.set("kept", "cli-0");
        pins.set("idle", "cli-0");
        wait_pin(&pins, "idle", Some("cli-0")).await;
        let mut redis_conn = inspect(&redis).await;
        let pttl: i64 = redis::cmd("PTTL")
            .arg("sessiongate:pin:fleet:idle")
            .query_async(&mut redis_conn)
            .await
            .expect("pttl");
        assert!((1_000..=2_000).contains(&pttl), "pin ttl {pttl} ms");
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(2_600) {
            pins.refresh("kept", "cli-0");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert_eq!(pins.lookup("idle").await, None, "expired");
        assert_eq!(pins.lookup("kept").await.as_deref(), Some("cli-0"));
        assert_eq!(pins.live_on("cli-0").await.expect("answered"), ["kept"]);
    })
    .await;
}
