//! The built-in demo fleet behind `sessiongate demo`: small HTTP upstreams that answer with their
//! own name, bound at the addresses the demo config lists, so the proxy in front of them can be
//! tried with nothing but curl.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The demo config, compiled in so `sessiongate demo` works from any directory.
pub const DEMO_CONFIG: &str = include_str!("../config/demo.yaml");

/// Serve a named HTTP upstream on `listener` until `stop`: every request is answered with the
/// upstream's name, the request line and the session key headers it saw; `/healthz` says ok.
pub async fn http_upstream(listener: TcpListener, name: String, stop: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => continue,
            },
        };
        let name = name.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let name = name.clone();
                async move { Ok::<_, Infallible>(answer(&name, &req)) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

fn answer(name: &str, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let header = |h: &str| {
        req.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    let body = if req.uri().path() == "/healthz" {
        "ok\n".to_owned()
    } else {
        format!(
            "{name} answered {} {} (x-session-id: {}, x-forwarded-for: {})\n",
            req.method(),
            req.uri(),
            header("x-session-id"),
            header("x-forwarded-for"),
        )
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut().insert(
        "x-upstream",
        http::HeaderValue::from_str(name).unwrap_or(http::HeaderValue::from_static("?")),
    );
    resp
}

/// Bind and serve one demo upstream per `(name, addr)`.
pub async fn start_http_upstreams(
    upstreams: &[(String, SocketAddr)],
    stop: &CancellationToken,
) -> std::io::Result<Vec<SocketAddr>> {
    let mut bound = Vec::new();
    for (name, addr) in upstreams {
        let listener = TcpListener::bind(addr).await?;
        bound.push(listener.local_addr()?);
        tokio::spawn(http_upstream(listener, name.clone(), stop.clone()));
    }
    Ok(bound)
}
