//! The admin listener (loopback by default): `/metrics`, `/healthz`, `/readyz`, and the
//! operator endpoints under `/admin/` (route lookup, ring shares, reload).

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
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let mut resp = text(StatusCode::OK, server.metrics().encode());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => readyz(server),
        (&Method::GET, "/admin/route") => route_lookup(server, &query),
        (&Method::GET, "/admin/ring") => ring(server, &query),
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
            "/metrics" | "/healthz" | "/readyz" | "/admin/route" | "/admin/ring" | "/admin/reload",
        ) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
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

fn route_lookup(server: &Server, query: &HashMap<String, String>) -> AdminResponse {
    let (Some(pool), Some(key)) = (query.get("pool"), query.get("key")) else {
        return error(StatusCode::BAD_REQUEST, "usage: /admin/route?pool=P&key=K");
    };
    let snapshot = server.snapshot();
    let Some(p) = snapshot.pool(pool) else {
        return error(StatusCode::NOT_FOUND, &format!("no pool named {pool:?}"));
    };
    match p.route(key.as_bytes()) {
        Some(u) => json_response(
            StatusCode::OK,
            &json!({ "pool": pool, "key": key, "upstream": u.addr(), "name": u.name() }),
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
                "healthy": u.state.is_healthy(),
                "draining": u.state.is_draining(),
            })
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({ "pool": pool, "vnodes": p.config.vnodes, "version": snapshot.version, "upstreams": upstreams }),
    )
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
