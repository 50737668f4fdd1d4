//! The in-process store on virtual time, the sliding-window arithmetic, and a Redis store whose
//! Redis is not there.

use std::time::Duration;

use prometheus::Registry;
use proptest::prelude::*;
use tokio::time::advance;

use super::local::admit;
use super::*;

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn bindings_bind_owner_unbind() {
    let store = Store::local();
    assert_eq!(store.owner("api", "s1").await, None);
    store.bind("api", "s1", "alice", HOUR).await;
    assert_eq!(store.owner("api", "s1").await.as_deref(), Some("alice"));
    assert_eq!(
        store.owner("other", "s1").await,
        None,
        "bindings are per pool"
    );
    store.bind("api", "s1", "bob", HOUR).await;
    assert_eq!(store.owner("api", "s1").await.as_deref(), Some("bob"));
    store.unbind("api", "s1").await;
    assert_eq!(store.owner("api", "s1").await, None);
}

#[tokio::test(start_paused = true)]
async fn bindings_expire_after_their_ttl() {
    let store = Store::local();
    store
        .bind("api", "s1", "alice", Duration::from_secs(10))
        .await;
    advance(Duration::from_millis(9_999)).await;
    assert_eq!(store.owner("api", "s1").await.as_deref(), Some("alice"));
    advance(Duration::from_millis(1)).await;
    assert_eq!(store.owner("api", "s1").await, None);
}

#[tokio::test(start_paused = true)]
async fn the_first_claim_of_a_session_wins_until_its_binding_expires() {
    let store = Store::local();
    let ttl = Duration::from_secs(10);
    assert_eq!(&*store.claim("api", "s1", "alice", ttl).await, "alice");
    assert_eq!(&*store.claim("api", "s1", "bob", ttl).await, "alice");
    assert_eq!(
        &*store.claim("web", "s1", "bob", ttl).await,
        "bob",
        "per pool"
    );
    advance(ttl).await;
    assert_eq!(&*store.claim("api", "s1", "bob", ttl).await, "bob");
}

#[tokio::test]
async fn bindings_are_bounded_least_recently_used_first() {
    let store = Store::local_with_capacity(3);
    for session in ["s1", "s2", "s3"] {
        store.bind("api", session, "alice", HOUR).await;
    }
    // moka applies reads before writes when it catches up: let the writes land first.
    store.local.settle();
    // s1 is read, so s2 is now the least recently used.
    assert!(store.owner("api", "s1").await.is_some());
    store.local.settle();
    store.bind("api", "s4", "alice", HOUR).await;
    store.local.settle();
    assert_eq!(store.owner("api", "s2").await, None, "s2 evicted");
    for session in ["s1", "s3", "s4"] {
        assert!(
            store.owner("api", session).await.is_some(),
            "{session} kept"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn rate_limit_burst_at_the_start_of_a_window() {
    let store = Store::local();
    let second = Duration::from_secs(1);
    for i in 0..10 {
        assert_eq!(store.rate("user:alice", 10, second).await, Ok(()), "{i}");
    }
    // The ten just counted weigh fully until the next fixed window begins, then slide out:
    // one has room once a tenth of that window has passed.
    let retry = store.rate("user:alice", 10, second).await.unwrap_err();
    assert_eq!(retry, Duration::from_millis(1_100));
    assert_eq!(
        store.rate("user:alice", 10, second).await,
        Err(retry),
        "a refused request is not counted"
    );
    assert_eq!(store.rate("user:bob", 10, second).await, Ok(()), "per key");
    advance(retry - Duration::from_millis(1)).await;
    assert_eq!(
        store.rate("user:alice", 10, second).await,
        Err(Duration::from_millis(1))
    );
    advance(Duration::from_millis(1)).await;
    assert_eq!(store.rate("user:alice", 10, second).await, Ok(()));
    assert!(store.rate("user:alice", 10, second).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn rate_limit_burst_within_a_window() {
    let store = Store::local();
    let second = Duration::from_secs(1);
    advance(Duration::from_millis(500)).await;
    for i in 0..10 {
        assert_eq!(store.rate("user:alice", 10, second).await, Ok(()), "{i}");
    }
    let retry = store.rate("user:alice", 10, second).await.unwrap_err();
    assert!(retry > Duration::ZERO && retry <= second, "{retry:?}");
    assert_eq!(retry, Duration::from_millis(600));
    advance(retry).await;
    assert_eq!(store.rate("user:alice", 10, second).await, Ok(()));
    // A whole window later the counts are gone.
    advance(Duration::from_secs(2)).await;
    for i in 0..10 {
        assert_eq!(store.rate("user:alice", 10, second).await, Ok(()), "{i}");
    }
}

#[tokio::test]
async fn rate_limit_zero_refuses_everything() {
    let store = Store::local();
    let window = Duration::from_secs(5);
    assert_eq!(store.rate("user:alice", 0, window).await, Err(window));
}

/// Whether one more request fits at `at` ms after the state (`elapsed` into the current
/// fixed window, with counts `previous` and `current`) if nothing is admitted meanwhile.
fn fits_at(limit: u64, window: u64, elapsed: u64, previous: u64, current: u64, at: u64) -> bool {
    let (windows_on, elapsed) = ((elapsed + at) / window, (elapsed + at) % window);
    let (previous, current) = match windows_on {
        0 => (previous, current),
        1 => (current, 0),
        _ => (0, 0),
    };
    admit(limit, window, elapsed, previous, current).is_ok()
}

proptest! {
    /// `retry_after` is exact: refused a millisecond earlier, admitted then.
    #[test]
    fn retry_after_is_when_a_request_fits(
        limit in 1u64..1_000,
        window in 1u64..100_000,
        elapsed in 0u64..100_000,
        previous in 0u64..1_000,
        current in 0u64..1_000,
    ) {
        let (elapsed, previous, current) = (elapsed % window, previous % (limit + 1), current % (limit + 1));
        match admit(limit, window, elapsed, previous, current) {
            Ok(()) => prop_assert!(fits_at(limit, window, elapsed, previous, current, 0)),
            Err(wait) => {
                prop_assert!(wait > 0);
                prop_assert!(wait <= window + window.div_ceil(limit), "{wait}");
                prop_assert!(!fits_at(limit, window, elapsed, previous, current, wait - 1));
                prop_assert!(fits_at(limit, window, elapsed, previous, current, wait));
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn locks_are_exclusive_and_only_their_holder_renews_or_releases_them() {
    let store = Store::local();
    let ttl = Duration::from_secs(30);
    assert!(store.try_lock("session:s1", "a", ttl).await);
    assert!(!store.try_lock("session:s1", "b", ttl).await);
    assert!(
        !store.try_lock("session:s1", "a", ttl).await,
        "not reentrant"
    );
    assert!(store.try_lock("session:s2", "b", ttl).await, "per key");

    assert!(!store.renew("session:s1", "b", ttl).await);
    store.unlock("session:s1", "b").await;
    assert!(
        !store.try_lock("session:s1", "b", ttl).await,
        "b cannot release a's lock"
    );

    advance(Duration::from_secs(20)).await;
    assert!(store.renew("session:s1", "a", ttl).await);
    advance(Duration::from_secs(20)).await;
    assert!(
        !store.try_lock("session:s1", "b", ttl).await,
        "renewed to 30s from then"
    );

    store.unlock("session:s1", "a").await;
    assert!(!store.renew("session:s1", "a", ttl).await, "released");
    assert!(store.try_lock("session:s1", "b", ttl).await);
}

#[tokio::test(start_paused = true)]
async fn locks_expire_after_their_ttl() {
    let store = Store::local();
    let ttl = Duration::from_secs(30);
    assert!(store.try_lock("session:s1", "a", ttl).await);
    advance(ttl - Duration::from_millis(1)).await;
    assert!(!store.try_lock("session:s1", "b", ttl).await);
    advance(Duration::from_millis(1)).await;
    assert!(!store.renew("session:s1", "a", ttl).await, "expired");
    assert!(store.try_lock("session:s1", "b", ttl).await);
}

#[test]
fn ops_are_listed_in_discriminant_order() {
    for (index, op) in Op::ALL.into_iter().enumerate() {
        assert_eq!(op as usize, index, "{}", op.as_str());
    }
}

#[test]
fn an_unreadable_redis_url_is_refused_without_repeating_it() {
    let metrics = Metrics::new(Registry::new()).expect("metrics");
    for url in [
        "redis://:hunter2@localhost:notaport",
        "http://:hunter2@host/",
    ] {
        let error = Store::with_redis(url, &metrics).unwrap_err().to_string();
        assert!(error.starts_with("invalid Redis URL"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }
}

#[tokio::test]
async fn without_a_reachable_redis_every_operation_is_served_from_memory() {
    // A port nobody listens on: connections are refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port();
    let metrics = Metrics::new(Registry::new()).expect("metrics");
    let store =
        Store::with_redis(&format!("redis://:secret@127.0.0.1:{port}/2"), &metrics).expect("store");
    assert!(store.has_redis());
    let text = metrics.encode();
    for op in Op::ALL.map(Op::as_str) {
        for family in [
            "sessiongate_store_fallback_total",
            "sessiongate_redis_errors_total",
        ] {
            let zero = format!("{family}{{op=\"{op}\"}} 0\n");
            assert!(text.contains(&zero), "{zero} missing from:\n{text}");
        }
    }
    assert!(text.contains("sessiongate_redis_up 0\n"), "{text}");

    let ttl = Duration::from_secs(30);
    store.bind("api", "s1", "alice", ttl).await;
    assert_eq!(store.owner("api", "s1").await.as_deref(), Some("alice"));
    assert_eq!(store.owner("api", "s2").await, None);
    store.unbind("api", "s1").await;
    assert_eq!(store.rate("user:alice", 1, ttl).await, Ok(()));
    assert!(store.rate("user:alice", 1, ttl).await.is_err());
    assert!(store.try_lock("session:s1", "a", ttl).await);
    assert!(store.renew("session:s1", "a", ttl).await);
    store.unlock("session:s1", "a").await;

    let fallbacks = |op: &str| metrics.store_fallback_total.with_label_values(&[op]).get();
    // The owner of s1 was in memory; only s2's lookup needed Redis.
    let expected = [
        ("bind", 1),
        ("owner", 1),
        ("unbind", 1),
        ("rate", 2),
        ("lock", 1),
        ("renew", 1),
        ("unlock", 1),
    ];
    for (op, count) in expected {
        assert_eq!(fallbacks(op), count, "{op}");
    }
    assert_eq!(metrics.redis_up.get(), 0);
}
