//! The admin listener (loopback by default): `/metrics`, `/healthz`, `/readyz`, the operator
//! endpoints under `/admin/` (route lookup, ring shares, reload, session cleanup, session
//! drill-down in [`sessions`]) and the HTML status page at `/` ([`status`]).

mod html;
pub mod sessions;
mod status;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;
use tracing::debug;

use crate::server::Server;

type AdminResponse = Response<Full<Bytes>>;

pub async fn serve(listener: TcpListener, server: Arc<Server>) {
    let token = server.ctx.shutdown.token.clone();
    loop {
        let (stream, _) = tokio::select! {
            _ = token.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let server = server.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(route(&server, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn route(server: &Server, req: Request<Incoming>) -> AdminResponse {
    if let Some(refused) = unauthorized(server, &req) {
        return refused;
    }
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            refresh_session_gauges(server);
            let mut resp = text(StatusCode::OK, server.metrics().encode());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        (&Method::GET, "/") => html_response(status::page(server)),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => readyz(server),
        (&Method::GET, "/admin/route") => route_lookup(server, &query).await,
        (&Method::GET, "/admin/ring") => ring(server, &query),
        (&Method::GET, "/admin/upstreams") => upstreams(server),
        (&Method::GET, "/admin/sessions") => sessions::list(server, &query),
        (&Method::GET, path) if path.starts_with("/admin/sessions/") => {
            sessions::one(server, &path["/admin/sessions/".len()..], &query)
        }
        (&Method::POST, path) if path.starts_with("/admin/upstreams/") => {
            drain(server, path, &query)
        }
        (&Method::POST, "/admin/cleanup") => cleanup(server, &query).await,
        (&Method::POST, "/admin/reload") if dry_run_asked(&query) => {
            let body = match read_body(req).await {
                Ok(body) => body,
                Err(resp) => return resp,
            };
            let report = server.dry_run((!body.trim().is_empty()).then_some(body.as_str()));
            let status = if report.valid {
                StatusCode::OK
            } else {
                StatusCode::BAD_REQUEST
            };
            json_response(status, &serde_json::to_value(&report).unwrap_or_default())
        }
        (&Method::POST, "/admin/reload") => match server.reload().await {
            Ok(report) => json_response(
                StatusCode::OK,
                &json!({ "result": "success", "report": report }),
            ),
            Err(e) => json_response(
                StatusCode::BAD_REQUEST,
                &json!({ "result": "failure", "error": e.to_string() }),
            ),
        },
        (
            _,
            "/" | "/metrics" | "/healthz" | "/readyz" | "/admin/route" | "/admin/ring"
            | "/admin/reload" | "/admin/cleanup" | "/admin/sessions",
        ) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// With `admin.token_env` set, `/admin/*` and the status page `/` (it shows session ids), and
/// the probes and metrics if protected, need `Authorization: Bearer <token>`. Read from the
/// snapshot, so a reload rotates the token.
/// The 401 to answer, if the request lacks the token it needs.
fn unauthorized(server: &Server, req: &Request<Incoming>) -> Option<AdminResponse> {
    let snapshot = server.snapshot();
    let auth = &snapshot.config.admin_auth;
    let token = auth.token.as_ref()?;
    let probe = matches!(req.uri().path(), "/metrics" | "/healthz" | "/readyz");
    if probe && !auth.protect_probes {
        return None;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    // Compared as digests, so the time taken says nothing about the token.
    let digest = |t: &str| ring::digest::digest(&ring::digest::SHA256, t.as_bytes());
    match presented {
        Some(p) if digest(p).as_ref() == digest(token.expose().trim()).as_ref() => None,
        _ => {
            let mut resp = error(StatusCode::UNAUTHORIZED, "a bearer token is required");
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"sessiongate-admin\""),
            );
            Some(resp)
        }
    }
}

/// Per-pool session gauges, read from the pin tables when scraped (O(upstreams)).
fn refresh_session_gauges(server: &Server) {
    let snapshot = server.snapshot();
    let metrics = server.metrics();
    for pool in snapshot.pools() {
        let pinned = pool.pins.len();
        metrics
            .pinned_sessions
            .with_label_values(&[pool.name()])
            .set(pinned as i64);
        for u in &pool.upstreams {
            metrics
                .sessions_live
                .with_label_values(&[pool.name(), u.name()])
                .set(pool.pins.live_on(u.name()) as i64);
        }
    }
}

fn readyz(server: &Server) -> AdminResponse {
    let snapshot = server.snapshot();
    let down: Vec<&str> = snapshot
        .pools()
        .filter(|p| !p.routable())
        .map(|p| p.name())
        .collect();
    if down.is_empty() {
        text(StatusCode::OK, "ready\n")
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: no routable upstream in pool(s) {}\n",
                down.join(", ")
            ),
        )
    }
}

async fn route_lookup(server: &Server, query: &HashMap<String, String>) -> AdminResponse {
    let (Some(pool), Some(key)) = (query.get("pool"), query.get("key")) else {
        return error(StatusCode::BAD_REQUEST, "usage: /admin/route?pool=P&key=K");
    };
    let snapshot = server.snapshot();
    let Some(p) = snapshot.pool(pool) else {
        return error(StatusCode::NOT_FOUND, &format!("no pool named {pool:?}"));
    };
    // A pinned key (a JSON-RPC session, or an HTTP session learned from a response) goes to
    // its pin while that upstream serves (a removed one while it drains); `ring` says where the
    // ring alone would send it, `pin` where it is pinned even when that upstream is down.
    // With `redis:`, a pin another replica recorded counts (and is kept here from then on).
    let ring = p.route(key.as_bytes());
    let ring_name = ring.map(|u| u.name());
    let pin = p.recall_pin(key).await;
    let pin_name = pin.as_ref().map(|pin| &*pin.upstream);
    let pin_serves = pin
        .as_ref()
        .is_some_and(|pin| match p.upstream(&pin.upstream) {
            Some(u) => u.state.is_available(),
            None => p
                .pins
                .retired(&pin.upstream)
                .is_some_and(|u| u.state.is_available()),
        });
    if let (Some(pin), true) = (&pin, pin_serves) {
        return json_response(
            StatusCode::OK,
            &json!({
                "pool": pool, "key": key, "upstream": &*pin.addr, "name": &*pin.upstream,
                "source": "pin", "pin": pin_name, "ring": ring_name,
            }),
        );
    }
    match ring {
        Some(u) => json_response(
            StatusCode::OK,
            &json!({
                "pool": pool, "key": key, "upstream": u.addr(), "name": u.name(),
                "source": "ring", "pin": pin_name, "ring": ring_name,
                // A NEW session with this key may be placed elsewhere (bounded load, caps).
                "load_dependent": p.places_by_load(),
            }),
        ),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("no upstream available in pool {pool}"),
        ),
    }
}

fn ring(server: &Server, query: &HashMap<String, String>) -> AdminResponse {
    let snapshot = server.snapshot();
    let Some(pool) = query.get("pool") else {
        return error(StatusCode::BAD_REQUEST, "usage: /admin/ring?pool=P");
    };
    let Some(p) = snapshot.pool(pool) else {
        return error(StatusCode::NOT_FOUND, &format!("no pool named {pool:?}"));
    };
    let shares = p.ring.shares();
    let upstreams: Vec<_> = p
        .upstreams
        .iter()
        .zip(shares)
        .map(|(u, share)| {
            json!({
                "name": u.name(),
                "addr": u.addr(),
                "weight": u.config.weight,
                "share": share,
                "healthy": u.state.is_available(),
                "draining": u.state.is_draining(),
            })
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({ "pool": pool, "vnodes": p.config.vnodes, "version": snapshot.version, "upstreams": upstreams }),
    )
}

/// The request body as text, at most 1 MiB (a config file).
async fn read_body(req: Request<Incoming>) -> Result<String, AdminResponse> {
    use http_body_util::{BodyExt, Limited};
    let collected = Limited::new(req.into_body(), 1 << 20)
        .collect()
        .await
        .map_err(|e| {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("cannot read body: {e}"),
            )
        })?;
    String::from_utf8(collected.to_bytes().to_vec())
        .map_err(|_| error(StatusCode::BAD_REQUEST, "body is not UTF-8"))
}

/// `?dry_run=true` (or `=1`).
fn dry_run_asked(query: &HashMap<String, String>) -> bool {
    query
        .get("dry_run")
        .is_some_and(|v| v == "true" || v == "1")
}

/// Every upstream: health, drain, ejection, live sessions, open connections, last probe.
fn upstreams(server: &Server) -> AdminResponse {
    let snapshot = server.snapshot();
    let metrics = server.metrics();
    let mut pools: Vec<_> = snapshot.pools().collect();
    pools.sort_by(|a, b| a.name().cmp(b.name()));
    let list: Vec<_> = pools
        .iter()
        .flat_map(|p| p.upstreams.iter().map(move |u| (p, u)))
        .map(|(p, u)| {
            let live = p.pins.live_on(u.name());
            let mut entry = json!({
                "pool": p.name(),
                "name": u.name(),
                "addr": u.addr(),
                "weight": u.config.weight,
                "healthy": u.state.is_healthy(),
                "ejected": u.state.is_ejected(),
                "draining": u.state.is_draining(),
                "accepts_new_work": u.state.accepts_new_work(),
                "live_sessions": live,
                "max_sessions": u.config.max_sessions,
                "headroom": u.config.max_sessions.map(|cap| cap.saturating_sub(live)),
                "open_connections": metrics.upstream_connections_active.with_label_values(&[p.name(), u.name()]).get(),
                "last_probe": u.state.last_probe(),
            });
            if let Some(d) = &p.config.discover {
                entry["discovered_from"] = json!(d.target.to_string());
            }
            entry
        })
        .collect();
    let mut body = json!({ "version": snapshot.version, "upstreams": list });
    // Discovered pools by source, so one still waiting for its first answer shows too.
    let discovered: serde_json::Map<String, serde_json::Value> = pools
        .iter()
        .filter_map(|p| {
            Some((
                p.name().to_owned(),
                json!(p.config.discover.as_ref()?.target.to_string()),
            ))
        })
        .collect();
    if !discovered.is_empty() {
        body["discovered"] = serde_json::Value::Object(discovered);
    }
    json_response(StatusCode::OK, &body)
}

/// `POST /admin/upstreams/{name}/drain` or `/undrain`, optionally `?pool=P` when names repeat.
fn drain(server: &Server, path: &str, query: &HashMap<String, String>) -> AdminResponse {
    let rest = &path["/admin/upstreams/".len()..];
    let (name, drain) = match rest.rsplit_once('/') {
        Some((name, "drain")) => (name, true),
        Some((name, "undrain")) => (name, false),
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "usage: POST /admin/upstreams/{name}/drain or /undrain",
            )
        }
    };
    let snapshot = server.snapshot();
    let matches: Vec<_> = snapshot
        .pools()
        .filter(|p| query.get("pool").is_none_or(|want| want == p.name()))
        .filter_map(|p| p.upstream(name).map(|u| (p, u)))
        .collect();
    let (pool, up) = match matches.as_slice() {
        [one] => *one,
        [] => {
            return error(
                StatusCode::NOT_FOUND,
                &format!("no upstream named {name:?}"),
            )
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("{name:?} is in several pools; add ?pool=P"),
            )
        }
    };
    up.state.set_admin_drain(drain);
    server
        .metrics()
        .upstream_draining
        .with_label_values(&[pool.name(), up.name()])
        .set(up.state.is_draining() as i64);
    tracing::info!(
        pool = pool.name(),
        upstream = up.name(),
        drain,
        "admin drain changed"
    );
    json_response(
        StatusCode::OK,
        &json!({ "pool": pool.name(), "upstream": up.name(), "draining": up.state.is_draining() }),
    )
}

/// `POST /admin/cleanup?pool=P[&dry_run=true]`: one cleanup round now with the pool's
/// `cleanup:` settings (defaults without one), answered with every node's report.
async fn cleanup(server: &Server, query: &HashMap<String, String>) -> AdminResponse {
    let Some(pool) = query.get("pool") else {
        return error(
            StatusCode::BAD_REQUEST,
            "usage: POST /admin/cleanup?pool=P[&dry_run=true]",
        );
    };
    let snapshot = server.snapshot();
    let Some(p) = snapshot.pool(pool) else {
        return error(StatusCode::NOT_FOUND, &format!("no pool named {pool:?}"));
    };
    let config = p.config.cleanup.clone().unwrap_or_default();
    let dry_run = config.dry_run || dry_run_asked(query);
    // Run as a task of its own, so a client going away does not cut the round short (it holds
    // the pool's cleanup lock until it ends).
    let (ctx, pool) = (server.ctx.clone(), p.clone());
    let round =
        server.ctx.shutdown.tracker.spawn(async move {
            crate::cleanup::run_round(&ctx, &pool, &config, dry_run, None).await
        });
    match round.await {
        Ok(Ok(report)) => json_response(
            StatusCode::OK,
            &serde_json::to_value(&report).unwrap_or_default(),
        ),
        Ok(Err(e)) => error(StatusCode::CONFLICT, &e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> AdminResponse {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn html_response(body: String) -> AdminResponse {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // The page is self-contained: nothing else may load into it, and no other site may frame it.
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    resp
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> AdminResponse {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn error(status: StatusCode, message: &str) -> AdminResponse {
    json_response(status, &json!({ "error": message }))
}
