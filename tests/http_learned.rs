//! HTTP learned affinity against upstreams that issue their own session ids, like MCP
//! Streamable HTTP servers: the id in a response (`Mcp-Session-Id`, or a `Set-Cookie`) pins the
//! session to the upstream that issued it; POSTs, GET streams and DELETEs with the id follow the
//! pin; DELETE unpins; a gone owner gets `on_owner_down`'s answer; reloads move no pinned
//! session. The upstreams answer 404 for ids they did not issue, so a misrouted request shows.

mod support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use http::{Method, Request, StatusCode};
use support::client::{empty, Client, Reply};
use support::issuing::{config, initialize, issuers, send, HEADER};
use support::upstream;
use support::{admin_json, metric_value, poll_until, within, ConfigDir, Proxy};

async fn route_of(proxy: &Proxy, key: &str) -> serde_json::Value {
    admin_json(proxy.admin(), &format!("/admin/route?pool=mcp&key={key}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_of_a_session_reaches_the_upstream_that_issued_it() {
    within(60, async {
        let fleet = issuers(&["m1", "m2", "m3"]).await;
        let proxy = Proxy::start_yaml(&config(&fleet.members, "")).await;
        let mut sessions = Vec::new();
        let mut client = proxy.client("mcp").await;
        for _ in 0..100 {
            sessions.push(initialize(&mut client).await);
        }
        let issuers: HashSet<&str> = sessions.iter().map(|(_, u)| u.as_str()).collect();
        assert_eq!(issuers.len(), 3, "initializes are spread: {issuers:?}");

        for (id, issuer) in &sessions {
            for method in [Method::POST, Method::GET, Method::POST] {
                let reply = send(&mut client, method.clone(), Some(id)).await;
                assert_eq!(reply.status, 200, "{method} {id}: {}", reply.body);
                assert_eq!(reply.upstream(), issuer, "{method} {id}");
            }
            let route = route_of(&proxy, id).await;
            assert_eq!(route["source"], "pin", "{route}");
            assert_eq!(route["name"], issuer.as_str(), "{route}");
        }
        let text = proxy.metrics_text().await;
        let learned: f64 = ["m1", "m2", "m3"]
            .iter()
            .filter_map(|u| {
                let labels = [("pool", "mcp"), ("upstream", *u)];
                metric_value(&text, "sessiongate_pins_learned_total", &labels)
            })
            .sum();
        assert_eq!(learned, 100.0, "each session learned once, not per answer");

        // DELETE reaches the issuer and unpins; the id then follows the ring, like any key.
        for (id, issuer) in &sessions {
            let reply = send(&mut client, Method::DELETE, Some(id)).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            assert_eq!(reply.upstream(), issuer);
            assert_eq!(route_of(&proxy, id).await["source"], "ring");
        }
        let text = proxy.metrics_text().await;
        let deleted = [("pool", "mcp"), ("reason", "deleted")];
        assert_eq!(
            metric_value(&text, "sessiongate_pins_dropped_total", &deleted),
            Some(100.0)
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_the_upstream_sets_is_learned_too() {
    within(30, async {
        let fleet = issuers(&["m1", "m2", "m3"]).await;
        // Learn only the cookie; requests carry only the cookie.
        let yaml =
            config(&fleet.members, "").replace("      - response_header: Mcp-Session-Id\n", "");
        let proxy = Proxy::start_yaml(&yaml).await;
        let mut client = proxy.client("mcp").await;
        for _ in 0..20 {
            let (id, issuer) = initialize(&mut client).await;
            let route = route_of(&proxy, &id).await;
            assert_eq!(route["source"], "pin", "{route}");
            assert_eq!(route["name"], issuer.as_str());
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_the_upstream_refuses_keeps_the_pin() {
    within(30, async {
        let refusing = upstream::serve_fn(|req: Request<hyper::body::Incoming>| async move {
            let mut resp = upstream::named("r1", "");
            if req.method() == Method::DELETE {
                *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            } else if !req.headers().contains_key(HEADER) {
                resp.headers_mut().insert(HEADER, "kept-1".parse().unwrap());
            }
            resp
        })
        .await;
        let fleet = issuers(&["m1", "m2"]).await;
        let mut members = fleet.members.clone();
        members.push(("r1".to_owned(), refusing.addr));
        let proxy = Proxy::start_yaml(&config(&members, "")).await;
        let mut client = proxy.client("mcp").await;
        // Initialize until r1 issues a session.
        let mut found = false;
        for _ in 0..60 {
            if initialize(&mut client).await.1 == "r1" {
                found = true;
                break;
            }
        }
        assert!(found, "r1 never chosen in 60 random placements");
        let reply = send(&mut client, Method::DELETE, Some("kept-1")).await;
        assert_eq!(reply.status, 405);
        let route = route_of(&proxy, "kept-1").await;
        assert_eq!(
            (route["source"].as_str(), route["name"].as_str()),
            (Some("pin"), Some("r1"))
        );
    })
    .await
}

/// Learn 30 sessions, then kill the issuer of some: what their next request gets.
async fn owner_down(rule: &str) -> (Vec<Reply>, Vec<Reply>, Proxy) {
    let mut fleet = issuers(&["m1", "m2", "m3"]).await;
    let pool = format!(
        "    on_owner_down: {rule}
    health: {{ probe: tcp, interval: 100ms, timeout: 50ms, fall: 1, rise: 1 }}
"
    );
    let proxy = Proxy::start_yaml(&config(&fleet.members, &pool)).await;
    let mut client = proxy.client("mcp").await;
    let mut sessions = Vec::new();
    for _ in 0..30 {
        sessions.push(initialize(&mut client).await);
    }
    drop(fleet.mocks.remove("m1"));
    let admin = proxy.admin();
    poll_until("m1 marked down", 10, || async move {
        support::admin_upstream(admin, "m1").await["healthy"] == false
    })
    .await;
    let (mut dead, mut live) = (Vec::new(), Vec::new());
    for (id, issuer) in &sessions {
        let reply = send(&mut client, Method::POST, Some(id)).await;
        match issuer.as_str() {
            "m1" => dead.push(reply),
            _ => {
                assert_eq!(reply.upstream(), issuer);
                live.push(reply);
            }
        }
    }
    assert!(!dead.is_empty() && !live.is_empty());
    (dead, live, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_owner_yields_404_under_not_found_and_nothing_reaches_another_upstream() {
    within(60, async {
        let (dead, live, proxy) = owner_down("not_found").await;
        for reply in &dead {
            assert_eq!(reply.status, 404, "{}", reply.body);
            assert!(
                !reply.headers.contains_key("x-upstream"),
                "answered by the proxy"
            );
        }
        assert!(live.iter().all(|r| r.status == 200));
        let text = proxy.metrics_text().await;
        let gone = [("pool", "mcp"), ("reason", "owner_gone")];
        let dropped = metric_value(&text, "sessiongate_pins_dropped_total", &gone);
        assert_eq!(dropped, Some(dead.len() as f64), "each 404 unpinned");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_owner_yields_503_under_error_and_is_replaced_under_failover() {
    within(60, async {
        let (dead, _, _proxy) = owner_down("error").await;
        assert!(dead
            .iter()
            .all(|r| r.status == 503 && !r.headers.contains_key("x-upstream")));

        let (dead, _, _proxy) = owner_down("failover").await;
        for reply in &dead {
            // Re-placed on a live upstream, which does not know the session.
            assert_eq!(reply.status, 404);
            assert!(["m2", "m3"].contains(&reply.upstream()), "{reply:?}");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_move_no_pinned_session_and_a_removed_upstream_serves_its_own_until_drained() {
    within(60, async {
        let fleet = issuers(&["m1", "m2", "m3", "m4"]).await;
        let three = &fleet.members[..3];
        let dir = ConfigDir::new(&config(
            three,
            "    drain_timeout: 1s\n    on_owner_down: not_found\n",
        ));
        let proxy = Proxy::start(dir).await;
        let mut client = proxy.client("mcp").await;
        let mut sessions = Vec::new();
        for _ in 0..60 {
            sessions.push(initialize(&mut client).await);
        }

        // A fourth upstream: every pinned session stays where it is.
        let four = config(
            &fleet.members,
            "    drain_timeout: 1s\n    on_owner_down: not_found\n",
        );
        proxy.reload_with(&four).await.expect("reload");
        for (id, issuer) in &sessions {
            let reply = send(&mut client, Method::POST, Some(id)).await;
            assert_eq!(
                (reply.status, reply.upstream()),
                (StatusCode::OK, issuer.as_str()),
                "{id}"
            );
        }

        // m1 removed: its sessions still reach it while it drains...
        let without_m1: Vec<_> = fleet.members[1..].to_vec();
        let yaml = config(
            &without_m1,
            "    drain_timeout: 1s\n    on_owner_down: not_found\n",
        );
        proxy.reload_with(&yaml).await.expect("reload");
        let on_m1: Vec<&String> = sessions
            .iter()
            .filter(|(_, u)| u == "m1")
            .map(|(id, _)| id)
            .collect();
        assert!(!on_m1.is_empty());
        for id in &on_m1 {
            let reply = send(&mut client, Method::POST, Some(id)).await;
            assert_eq!((reply.status, reply.upstream()), (StatusCode::OK, "m1"));
        }
        // ...and once drained, they get 404 from the proxy, not another upstream's answer.
        let id = on_m1[0].clone();
        let mut probe = proxy.client("mcp").await;
        let mut last = None;
        for _ in 0..100 {
            let reply = send(&mut probe, Method::POST, Some(&id)).await;
            if reply.status == StatusCode::NOT_FOUND {
                last = Some(reply);
                break;
            }
            assert_eq!(reply.upstream(), "m1", "while draining, only m1");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let reply = last.expect("404 after drain_timeout");
        assert!(
            !reply.headers.contains_key("x-upstream"),
            "the proxy answered"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_stream_keeps_its_sessions_pin_past_the_idle_ttl() {
    within(30, async {
        // Upstream h1 issues `h-1` and holds GET streams open (silent) until the test ends.
        let streams: Arc<Mutex<Vec<tokio::sync::mpsc::Sender<bytes::Bytes>>>> = Arc::default();
        let kept = streams.clone();
        let h1 = upstream::serve_fn(move |req: Request<hyper::body::Incoming>| {
            let kept = kept.clone();
            async move {
                if !req.headers().contains_key(HEADER) {
                    let mut resp = upstream::named("h1", "initialized");
                    resp.headers_mut().insert(HEADER, "h-1".parse().unwrap());
                    return resp;
                }
                if req.method() == Method::GET {
                    let (tx, body) = upstream::channel_body();
                    kept.lock().unwrap().push(tx);
                    let mut resp = http::Response::new(body);
                    resp.headers_mut()
                        .insert("x-upstream", "h1".parse().unwrap());
                    return resp;
                }
                upstream::named("h1", "ok")
            }
        })
        .await;
        let fleet = issuers(&["m2", "m3"]).await;
        let mut members = fleet.members.clone();
        members.push(("h1".to_owned(), h1.addr));
        let ttl = "    session_idle_ttl: 300ms\n";
        let proxy = Proxy::start_yaml(&config(&members, ttl)).await;
        let mut client = proxy.client("mcp").await;
        let mut found = false;
        for _ in 0..60 {
            if initialize(&mut client).await.1 == "h1" {
                found = true;
                break;
            }
        }
        assert!(found, "h1 never chosen in 60 random placements");

        let mut listener = proxy.client("mcp").await;
        let req = listener.request(Method::GET, "/mcp").header(HEADER, "h-1");
        let stream = listener.send(req.body(empty()).unwrap()).await.unwrap();
        assert_eq!(stream.headers()["x-upstream"], "h1");
        // Silent for three idle TTLs (moka's clock is real time: nothing to wait on but time).
        tokio::time::sleep(std::time::Duration::from_millis(900)).await;
        assert_eq!(
            route_of(&proxy, "h-1").await["source"],
            "pin",
            "held by the stream"
        );
        let reply = send(&mut client, Method::POST, Some("h-1")).await;
        assert_eq!(reply.upstream(), "h1");

        // Closed: the pin idles out like any other.
        drop(stream);
        drop(listener);
        streams.lock().unwrap().clear();
        tokio::time::sleep(std::time::Duration::from_millis(900)).await;
        assert_eq!(route_of(&proxy, "h-1").await["source"], "ring");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learned_session_belongs_to_the_caller_that_got_it() {
    within(30, async {
        let fleet = issuers(&["m1", "m2", "m3"]).await;
        let dir = ConfigDir::new("");
        let hash = |t: &str| sessiongate::identity::token_hash(t);
        dir.file(
            "tokens.yaml",
            format!(
                "- {{ sha256: {}, user: alice }}\n- {{ sha256: {}, user: bob }}\n",
                hash("alice-tok"),
                hash("bob-tok")
            ),
        );
        let yaml = config(&fleet.members, "").replace(
            "    learn:\n",
            "    identity: {{ from: [token], required: true }}\n    learn:\n",
        );
        let yaml = yaml.replace("{{", "{").replace("}}", "}");
        dir.write(&format!("identities:\n  tokens_file: tokens.yaml\n{yaml}"));
        let proxy = Proxy::start(dir).await;
        let mut client = proxy.client("mcp").await;
        let call = |client: &Client, token: &'static str, session: Option<String>| {
            let mut req = client.request(Method::POST, "/mcp");
            req = req.header("authorization", format!("Bearer {token}"));
            if let Some(id) = session {
                req = req.header(HEADER, id);
            }
            req.body(empty()).unwrap()
        };
        let resp = client.send(call(&client, "alice-tok", None)).await.unwrap();
        let reply = Reply::read(resp).await.unwrap();
        let id = reply.headers[HEADER].to_str().unwrap().to_owned();
        let resp = client
            .send(call(&client, "alice-tok", Some(id.clone())))
            .await
            .unwrap();
        assert_eq!(Reply::read(resp).await.unwrap().status, 200);
        let resp = client
            .send(call(&client, "bob-tok", Some(id.clone())))
            .await
            .unwrap();
        assert_eq!(
            Reply::read(resp).await.unwrap().status,
            403,
            "alice's session"
        );
        // An id nobody got from an upstream is nobody's (unowned: deny).
        let resp = client
            .send(call(&client, "bob-tok", Some("m1-s999".into())))
            .await
            .unwrap();
        assert_eq!(Reply::read(resp).await.unwrap().status, 403);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_sessions_respect_caps_and_a_full_pool_answers_503() {
    within(30, async {
        let fleet = issuers(&["m1", "m2"]).await;
        let proxy = Proxy::start_yaml(&config(
            &fleet.members,
            "    max_sessions_per_upstream: 3\n",
        ))
        .await;
        let mut client = proxy.client("mcp").await;
        let mut sessions = Vec::new();
        for _ in 0..6 {
            sessions.push(initialize(&mut client).await);
        }
        let per = |u: &str| sessions.iter().filter(|(_, s)| s == u).count();
        assert_eq!((per("m1"), per("m2")), (3, 3), "{sessions:?}");
        let full = send(&mut client, Method::POST, None).await;
        assert_eq!(full.status, 503, "{}", full.body);
        assert_eq!(full.headers["retry-after"], "1");
        assert!(
            !full.headers.contains_key("x-upstream"),
            "answered by the proxy"
        );
        // Existing sessions keep working; ending one frees its slot.
        let (id, issuer) = sessions[0].clone();
        assert_eq!(
            send(&mut client, Method::POST, Some(&id)).await.upstream(),
            issuer
        );
        assert_eq!(
            send(&mut client, Method::DELETE, Some(&id)).await.status,
            200
        );
        let (_, next) = initialize(&mut client).await;
        assert_eq!(next, issuer, "the freed slot");
    })
    .await
}
