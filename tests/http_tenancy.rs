//! Tenancy on HTTP listeners: bearer identities (401, the token never forwarded), sessions
//! owned by the first caller to send their key (403 for others), rate limits per user, session
//! and HTTP method (429 with `Retry-After`), and tenant pools.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http::{Method, Request};
use sessiongate::identity::token_hash;
use support::client::{empty, Reply};
use support::upstream::{self, Mock};
use support::{upstreams_yaml, within, ConfigDir, Proxy};

const ALICE: &str = "alice-token-3f9a";
const BOB: &str = "bob-token-77c1";
const CAROL: &str = "carol-token-0d2e";

/// An upstream that counts requests and echoes who the proxy said the caller is, and whether an
/// `Authorization` header reached it.
async fn echo_caller(name: &'static str) -> (Mock, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let mock = upstream::serve_fn(move |req: Request<hyper::body::Incoming>| {
        counter.fetch_add(1, Ordering::SeqCst);
        let header = |n: &str| {
            req.headers()
                .get(n)
                .map_or("-".to_owned(), |v| v.to_str().unwrap_or("?").to_owned())
        };
        let body = format!(
            "user={} tenant={} auth={}",
            header("x-sessiongate-user"),
            header("x-sessiongate-tenant"),
            header("authorization")
        );
        async move { upstream::named(name, body) }
    })
    .await;
    (mock, seen)
}

fn tokens_yaml() -> String {
    format!(
        "- {{ sha256: {}, user: alice, tenant: acme }}\n\
         - {{ sha256: {}, user: bob, tenant: acme }}\n\
         - {{ sha256: {}, user: carol, tenant: globex }}\n",
        token_hash(ALICE),
        token_hash(BOB),
        token_hash(CAROL)
    )
}

/// One HTTP listener `web` keyed on `X-Session-Id`, identities required; `listener_extra` lines
/// are indented 4 spaces; `pools` replaces the single pool `api` of `members`.
fn config(
    members: &[(String, std::net::SocketAddr)],
    listener_extra: &str,
    pools: &str,
) -> ConfigDir {
    let pools = if pools.is_empty() {
        format!("  api:\n    upstreams:\n{}", upstreams_yaml(members))
    } else {
        pools.to_owned()
    };
    let dir = ConfigDir::new("");
    dir.file("tokens.yaml", tokens_yaml());
    dir.write(&format!(
        "admin:
  listen: 127.0.0.1:0
identities:
  tokens_file: tokens.yaml
listeners:
  - name: web
    listen: 127.0.0.1:0
    protocol: http
    pool: api
    key:
      - header: X-Session-Id
    identity:
      from: [token]
      required: true
{listener_extra}pools:
{pools}"
    ));
    dir
}

async fn get(proxy: &Proxy, token: Option<&str>, session: Option<&str>) -> Reply {
    request(proxy, Method::GET, token, session).await
}

async fn request(
    proxy: &Proxy,
    method: Method,
    token: Option<&str>,
    session: Option<&str>,
) -> Reply {
    let mut client = proxy.client("web").await;
    let mut req = client.request(method, "/work");
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    if let Some(session) = session {
        req = req.header("x-session-id", session);
    }
    // A client claiming to be someone else: the proxy must overwrite it.
    req = req.header("x-sessiongate-user", "root");
    let resp = client.send(req.body(empty()).unwrap()).await.expect("send");
    Reply::read(resp).await.expect("read")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_or_unknown_token_is_401_and_nothing_reaches_the_upstream() {
    within(30, async {
        let (mock, seen) = echo_caller("u1").await;
        let members = [("u1".to_owned(), mock.addr)];
        let proxy = Proxy::start(config(&members, "", "")).await;
        for token in [None, Some("not-a-known-token")] {
            let reply = get(&proxy, token, Some("s1")).await;
            assert_eq!(reply.status, 401, "{token:?}: {}", reply.body);
            assert_eq!(
                reply.headers["www-authenticate"],
                "Bearer realm=\"sessiongate\""
            );
            assert!(!reply.body.contains("not-a-known-token"), "{}", reply.body);
        }
        assert_eq!(seen.load(Ordering::SeqCst), 0);

        let reply = get(&proxy, Some(ALICE), Some("s1")).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(
            reply.body, "user=alice tenant=acme auth=-",
            "the token stays here"
        );
        assert_eq!(seen.load(Ordering::SeqCst), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_key_belongs_to_the_first_user_who_sends_it() {
    within(30, async {
        let (mock, seen) = echo_caller("u1").await;
        let members = [("u1".to_owned(), mock.addr)];
        let proxy = Proxy::start(config(&members, "", "")).await;

        assert_eq!(get(&proxy, Some(ALICE), Some("alice-s")).await.status, 200);
        let before = seen.load(Ordering::SeqCst);
        for method in [Method::GET, Method::POST, Method::DELETE] {
            let reply = request(&proxy, method.clone(), Some(BOB), Some("alice-s")).await;
            assert_eq!(reply.status, 403, "{method}: {}", reply.body);
            assert!(!reply.body.contains("alice-s"), "the key is not echoed");
        }
        assert_eq!(
            seen.load(Ordering::SeqCst),
            before,
            "nothing of bob's got through"
        );
        assert_eq!(get(&proxy, Some(ALICE), Some("alice-s")).await.status, 200);
        assert_eq!(get(&proxy, Some(BOB), Some("bob-s")).await.status, 200);
        assert_eq!(get(&proxy, Some(ALICE), Some("bob-s")).await.status, 403);
        // Requests without a session key belong to no one.
        assert_eq!(get(&proxy, Some(BOB), None).await.status, 200);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_with_retry_after() {
    within(30, async {
        let (mock, seen) = echo_caller("u1").await;
        let members = [("u1".to_owned(), mock.addr)];
        let limits = "    limits:
      per_user: { requests: 4, per: 1m }
      per_method: { requests: 2, per: 1m }
";
        let proxy = Proxy::start(config(&members, limits, "")).await;
        let session = |i: usize| format!("alice-{i}");
        for i in 0..2 {
            let reply = get(&proxy, Some(ALICE), Some(&session(i))).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
        }
        // A third GET is over the per-method limit; a POST is not.
        let reply = get(&proxy, Some(ALICE), Some(&session(2))).await;
        assert_eq!(reply.status, 429, "{}", reply.body);
        assert!(reply.body.contains("(method)"), "{}", reply.body);
        let retry: u64 = reply.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        // Sliding window: the full window still counts in part during the next one, so the wait
        // may exceed the window (up to 1.5 of it for a limit of 2).
        assert!((1..=90).contains(&retry), "Retry-After {retry}");
        for i in 3..5 {
            let reply = request(&proxy, Method::POST, Some(ALICE), Some(&session(i))).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
        }
        // Four admitted: the per-user limit is reached for every method.
        let reply = request(&proxy, Method::PUT, Some(ALICE), Some(&session(5))).await;
        assert_eq!(reply.status, 429, "{}", reply.body);
        assert!(reply.body.contains("(user)"), "{}", reply.body);
        assert_eq!(seen.load(Ordering::SeqCst), 4);
        // Bob has his own allowance.
        assert_eq!(get(&proxy, Some(BOB), Some("bob-1")).await.status, 200);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_route_to_their_own_pool() {
    within(30, async {
        let (acme, acme_seen) = echo_caller("acme-1").await;
        let (shared, shared_seen) = echo_caller("shared-1").await;
        let pools = format!(
            "  api:\n    upstreams:\n{}  acme:\n    upstreams:\n{}",
            upstreams_yaml(&[("shared-1".to_owned(), shared.addr)]),
            upstreams_yaml(&[("acme-1".to_owned(), acme.addr)]),
        );
        let tenants = "    tenants:\n      - { tenant: acme, pool: acme }\n";
        let dir = config(&[], tenants, &pools);
        let yaml = std::fs::read_to_string(dir.path()).unwrap();
        dir.write(&yaml.replace("    pool: api\n", "    default_pool: api\n"));
        let proxy = Proxy::start(dir).await;
        for (token, upstream) in [(ALICE, "acme-1"), (BOB, "acme-1"), (CAROL, "shared-1")] {
            let reply = get(&proxy, Some(token), None).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            assert_eq!(reply.upstream(), upstream, "{}", reply.body);
        }
        assert_eq!(acme_seen.load(Ordering::SeqCst), 2);
        assert_eq!(shared_seen.load(Ordering::SeqCst), 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_default_pool_unlisted_tenants_are_refused() {
    within(30, async {
        let (acme, _) = echo_caller("acme-1").await;
        let pools = format!(
            "  acme:\n    upstreams:\n{}",
            upstreams_yaml(&[("acme-1".to_owned(), acme.addr)])
        );
        let dir = config(
            &[],
            "    tenants:\n      - { tenant: acme, pool: acme }\n",
            &pools,
        );
        // No listener pool: tenants only.
        let yaml = std::fs::read_to_string(dir.path())
            .unwrap()
            .replace("    pool: api\n", "");
        dir.write(&yaml);
        let proxy = Proxy::start(dir).await;
        assert_eq!(get(&proxy, Some(ALICE), None).await.status, 200);
        let reply = get(&proxy, Some(CAROL), None).await;
        assert_eq!(reply.status, 403, "{}", reply.body);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_naming_a_session_ambiguously_is_refused() {
    within(30, async {
        let (mock, seen) = echo_caller("u1").await;
        let members = [("u1".to_owned(), mock.addr)];
        let dir = config(&members, "", "");
        let yaml = std::fs::read_to_string(dir.path()).unwrap();
        dir.write(&yaml.replace(
            "      - header: X-Session-Id\n",
            "      - header: X-Session-Id\n      - query: session\n",
        ));
        let proxy = Proxy::start(dir).await;
        assert_eq!(get(&proxy, Some(ALICE), Some("s-123")).await.status, 200);
        let before = seen.load(Ordering::SeqCst);

        let mut client = proxy.client("web").await;
        let bearer = format!("Bearer {BOB}");
        let cases: [(&str, Vec<(&str, &str)>); 6] = [
            ("/work?session=s%2D123", vec![]),
            ("/work?session=bob-1&session=s-123", vec![]),
            ("/work?sess%69on=s-123&session=bob-1", vec![]),
            ("/work", vec![("x-session-id", "bob-1, s-123")]),
            ("/work?session=s-123", vec![("x-session-id", "bob-1")]),
            ("/work", vec![("x-session-id", "\"s-123\"")]),
        ];
        for (path, headers) in cases {
            let mut req = client
                .request(Method::GET, path)
                .header("authorization", &bearer);
            for (k, v) in &headers {
                req = req.header(*k, *v);
            }
            let resp = client.send(req.body(empty()).unwrap()).await.unwrap();
            let reply = Reply::read(resp).await.unwrap();
            assert_eq!(reply.status, 400, "{path} {headers:?}: {}", reply.body);
        }
        assert_eq!(
            seen.load(Ordering::SeqCst),
            before,
            "nothing reached the upstream"
        );
        // The same key twice is one session.
        let mut req = client.request(Method::GET, "/work?session=bob-2");
        req = req
            .header("authorization", &bearer)
            .header("x-session-id", "bob-2");
        let resp = client.send(req.body(empty()).unwrap()).await.unwrap();
        assert_eq!(Reply::read(resp).await.unwrap().status, 200);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_cannot_use_up_a_sessions_limit() {
    within(30, async {
        let (mock, _) = echo_caller("u1").await;
        let members = [("u1".to_owned(), mock.addr)];
        let limits = "    limits:\n      per_session: { requests: 2, per: 1m }\n";
        let proxy = Proxy::start(config(&members, limits, "")).await;
        assert_eq!(get(&proxy, Some(ALICE), Some("alice-s")).await.status, 200);
        for _ in 0..5 {
            assert_eq!(get(&proxy, Some(BOB), Some("alice-s")).await.status, 403);
        }
        assert_eq!(get(&proxy, Some(ALICE), Some("alice-s")).await.status, 200);
        let third = get(&proxy, Some(ALICE), Some("alice-s")).await;
        assert_eq!(
            third.status, 429,
            "the owner's own third request: {}",
            third.body
        );
    })
    .await
}
