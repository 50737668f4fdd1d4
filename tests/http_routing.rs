//! HTTP routing: every key source reaches the key's ring owner, `no_key` behaves, affinity and
//! balance over 1,000 keys, forwarding headers, and the proxy's own 502/504 answers.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use http::{HeaderMap, Request, StatusCode};
use support::upstream::{self, Fleet};
use support::{admin_route, client, web_config, within, Proxy};

const NAMES: [&str; 3] = ["u1", "u2", "u3"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_source_routes_to_the_keys_owner() {
    within(60, async {
        let fleet = Fleet::start(&NAMES).await;
        // `reject` makes a source that fails to find its key answer 400 instead of a random hit.
        let proxy =
            Proxy::start_yaml(&web_config(&fleet.members, "    no_key: reject\n", "")).await;
        let mut client = proxy.client("web").await;
        let mut admin = proxy.admin_client().await;
        let mut owners = HashSet::new();
        for i in 0..24 {
            let key = format!("key-{i}");
            let owner = admin_route(&mut admin, "api", &key).await;
            let cookie = format!("theme=dark; session_id={key}; lang=en");
            let replies = [
                ("header", client.get("/x", &[("x-session-id", &key)]).await),
                ("cookie", client.get("/x", &[("cookie", &cookie)]).await),
                (
                    "query",
                    client.get(&format!("/x?a=1&session={key}"), &[]).await,
                ),
                (
                    "path",
                    client.get(&format!("/sessions/{key}/messages"), &[]).await,
                ),
            ];
            for (source, reply) in &replies {
                assert_eq!(reply.status, 200, "{source} {key}: {}", reply.body);
                assert_eq!(reply.upstream(), owner, "{source} key {key}");
            }
            owners.insert(owner);
        }
        assert_eq!(owners.len(), 3, "24 keys should reach all three upstreams");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_source_present_wins() {
    within(30, async {
        let fleet = Fleet::start(&NAMES).await;
        let proxy = Proxy::start_yaml(&web_config(&fleet.members, "", "")).await;
        let mut admin = proxy.admin_client().await;
        let header_owner = admin_route(&mut admin, "api", "from-header").await;
        // A query key owned by a different upstream, so the winner is visible.
        let mut query_key = None;
        for i in 0..100 {
            let k = format!("from-query-{i}");
            if admin_route(&mut admin, "api", &k).await != header_owner {
                query_key = Some(k);
                break;
            }
        }
        let query_key = query_key.expect("a key on another upstream");
        let reply = client::get(
            proxy.addr("web"),
            &format!("/sessions/p?session={query_key}"),
            &[("x-session-id", "from-header")],
        )
        .await;
        assert_eq!(reply.upstream(), header_owner, "header precedes query");
        let reply = client::get(
            proxy.addr("web"),
            &format!("/sessions/from-header?session={query_key}"),
            &[],
        )
        .await;
        assert_ne!(reply.upstream(), header_owner, "query precedes path");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_reject_answers_400_naming_the_sources() {
    within(30, async {
        let fleet = Fleet::start(&NAMES).await;
        let proxy =
            Proxy::start_yaml(&web_config(&fleet.members, "    no_key: reject\n", "")).await;
        let reply = client::get(proxy.addr("web"), "/no/key/here", &[("cookie", "other=1")]).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert!(
            reply.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain"),
            "{reply:?}"
        );
        for source in [
            "header x-session-id",
            "cookie session_id",
            "query parameter session",
            "path /sessions/{key}",
        ] {
            assert!(
                reply.body.contains(source),
                "{source:?} in {:?}",
                reply.body
            );
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_random_still_answers_from_any_upstream() {
    within(30, async {
        let fleet = Fleet::start(&NAMES).await;
        let proxy =
            Proxy::start_yaml(&web_config(&fleet.members, "    no_key: random\n", "")).await;
        let mut client = proxy.client("web").await;
        let mut hit = HashSet::new();
        for _ in 0..60 {
            let reply = client.get("/anything", &[]).await;
            assert_eq!(reply.status, 200);
            hit.insert(reply.upstream().to_owned());
        }
        // 60 random picks all landing on one or two of three upstreams: odds below 1e-10.
        assert_eq!(hit.len(), 3, "keyless requests spread: {hit:?}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_keys_stick_to_their_owner_and_balance() {
    within(120, async {
        let fleet = Fleet::start(&NAMES).await;
        let proxy =
            Proxy::start_yaml(&web_config(&fleet.members, "    no_key: reject\n", "")).await;
        const KEYS: usize = 1000;
        const WORKERS: usize = 4;
        let mut tasks = Vec::new();
        for w in 0..WORKERS {
            let (web, admin) = (proxy.addr("web"), proxy.admin());
            tasks.push(tokio::spawn(async move {
                let keys: Vec<String> = (w..KEYS)
                    .step_by(WORKERS)
                    .map(|i| format!("user-{i}"))
                    .collect();
                let mut first = HashMap::new();
                let mut client = client::Client::h1(web).await;
                for key in &keys {
                    let reply = client.get("/", &[("x-session-id", key)]).await;
                    assert_eq!(reply.status, 200);
                    first.insert(key.clone(), reply.upstream().to_owned());
                }
                // Second pass on a new connection, after every other key has been sent once.
                let mut client = client::Client::h1(web).await;
                let mut admin = client::Client::h1(admin).await;
                for key in &keys {
                    let reply = client.get(&format!("/?session={key}"), &[]).await;
                    assert_eq!(reply.upstream(), first[key], "key {key} moved");
                    let routed = admin_route(&mut admin, "api", key).await;
                    assert_eq!(routed, first[key], "/admin/route disagrees for {key}");
                }
                first
            }));
        }
        let mut load: HashMap<String, usize> = HashMap::new();
        for t in tasks {
            for (_, upstream) in t.await.expect("worker") {
                *load.entry(upstream).or_default() += 1;
            }
        }
        assert_eq!(load.values().sum::<usize>(), KEYS);
        assert_eq!(load.len(), 3, "{load:?}");
        let mean = KEYS as f64 / 3.0;
        let max = *load.values().max().unwrap() as f64;
        assert!(max / mean <= 1.3, "max/mean = {:.3} ({load:?})", max / mean);
    })
    .await
}

/// Headers the upstream saw, one `name: value` per line.
async fn echo_headers(req: Request<hyper::body::Incoming>) -> http::Response<support::Body> {
    let mut lines: Vec<String> = req
        .headers()
        .iter()
        .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?")))
        .collect();
    lines.sort();
    let mut resp = upstream::named("echo", lines.join("\n"));
    let h = resp.headers_mut();
    h.insert("connection", "x-resp-private".parse().unwrap());
    h.insert("x-resp-private", "1".parse().unwrap());
    h.insert("keep-alive", "timeout=9".parse().unwrap());
    h.insert("x-resp-kept", "yes".parse().unwrap());
    resp
}

fn seen(body: &str) -> HeaderMap {
    let mut map = HeaderMap::new();
    for line in body.lines() {
        let (k, v) = line.split_once(": ").expect("name: value");
        map.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    map
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_stripped_and_forwarding_headers_set() {
    within(30, async {
        let echo = upstream::serve_fn(echo_headers).await;
        let members = [("echo".to_owned(), echo.addr)];
        let proxy = Proxy::start_yaml(&web_config(&members, "", "")).await;
        let reply = client::get(
            proxy.addr("web"),
            "/h",
            &[
                ("connection", "keep-alive, X-Private"),
                ("x-private", "secret"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("te", "trailers"),
                ("x-end-to-end", "kept"),
                ("x-forwarded-for", "203.0.113.7"),
            ],
        )
        .await;
        assert_eq!(reply.status, 200);
        let upstream_saw = seen(&reply.body);
        for gone in [
            "connection",
            "x-private",
            "keep-alive",
            "proxy-connection",
            "te",
        ] {
            assert!(
                !upstream_saw.contains_key(gone),
                "{gone} forwarded: {upstream_saw:?}"
            );
        }
        assert_eq!(upstream_saw["x-end-to-end"], "kept");
        assert_eq!(upstream_saw["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
        assert_eq!(upstream_saw["x-forwarded-proto"], "http");
        // And on the way back.
        for gone in ["x-resp-private", "keep-alive"] {
            assert!(
                !reply.headers.contains_key(gone),
                "{gone} returned: {reply:?}"
            );
        }
        assert_eq!(reply.headers["x-resp-kept"], "yes");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_502_and_upstream_too_slow_is_504() {
    within(30, async {
        let down = upstream::refused_addr();
        let silent = upstream::silent().await;
        let yaml = format!(
            "admin:
  listen: 127.0.0.1:0
listeners:
  - {{ name: down, listen: 127.0.0.1:0, protocol: http, pool: down }}
  - {{ name: slow, listen: 127.0.0.1:0, protocol: http, pool: slow }}
pools:
  down:
    upstreams:
      - {{ name: gone, addr: \"{down}\" }}
  slow:
    request_timeout: 200ms
    upstreams:
      - {{ name: mute, addr: \"{}\" }}
",
            silent.addr
        );
        let proxy = Proxy::start_yaml(&yaml).await;

        let reply = client::get(proxy.addr("down"), "/", &[]).await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
        assert!(reply.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
        assert!(reply.body.len() < 200, "short reason: {:?}", reply.body);
        assert!(
            reply.body.contains("gone") && reply.body.contains("connect"),
            "{:?}",
            reply.body
        );

        let started = Instant::now();
        let reply = client::get(proxy.addr("slow"), "/", &[]).await;
        let took = started.elapsed();
        assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{reply:?}");
        assert!(reply.body.contains("mute"), "{:?}", reply.body);
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(5),
            "answered after {took:?}"
        );
    })
    .await
}
