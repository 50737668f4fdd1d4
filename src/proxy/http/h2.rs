//! HTTP/2 client connections (ALPN h2, and h2c by prior knowledge), served by hyper: each
//! request is admitted by [`Conn::admit`] and forwarded through the upstream's hyper HTTP/1.1
//! client pool, bodies streamed both ways. (HTTP/1.1 clients take the owned path,
//! [`crate::proxy::h1`].)

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use super::{Conn, Failure, LogFacts, Logged, ProxyBody};

/// Serve one HTTP/2 connection until it closes or shutdown asks it to finish (in-flight
/// streams complete, new ones are refused).
pub async fn serve<IO>(io: IO, conn: Arc<Conn>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shutdown = conn.ctx.shutdown.token.clone();
    let service = hyper::service::service_fn(move |req| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(handle(&conn, req).await) }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new());
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let ended = tokio::select! {
        res = connection.as_mut() => res,
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = ended {
        debug!(error = %e, "client connection ended with an error");
    }
}

/// Serve one request, and log it when the access log samples it.
async fn handle(conn: &Conn, req: Request<Incoming>) -> Response<ProxyBody> {
    if !conn.ctx.access_log.sampled() {
        return forward(conn, req, &mut None).await;
    }
    let logged = Logged::new(req.method(), req.uri(), req.headers());
    let mut facts = Some(LogFacts::default());
    let resp = forward(conn, req, &mut facts).await;
    let out = super::content_length(resp.headers());
    conn.log(logged, facts.unwrap_or_default(), resp.status(), out);
    resp
}

/// Admit, forward through the upstream's hyper pool, and settle one request.
async fn forward(
    conn: &Conn,
    req: Request<Incoming>,
    log: &mut Option<LogFacts>,
) -> Response<ProxyBody> {
    let snapshot = conn.ctx.shared.load_full();
    let (mut parts, body) = req.into_parts();
    let fwd = match conn.admit(&snapshot, &mut parts, log).await {
        Ok(fwd) => fwd,
        Err(resp) => return resp,
    };
    if let Err(why) = conn.rewrite(&mut parts, false) {
        let resp = super::local(http::StatusCode::BAD_REQUEST, why);
        conn.done(fwd, resp.status());
        return resp;
    }
    let upstream = fwd.upstream().clone();
    let timeout = fwd.pool().config.request_timeout;
    let sent = tokio::time::timeout(
        timeout,
        upstream.http.request(Request::from_parts(parts, body)),
    );
    let resp = match sent.await {
        Err(_) => conn.upstream_failed(&fwd, Failure::Timeout),
        Ok(Err(e)) if e.is_connect() => conn.upstream_failed(&fwd, Failure::Connect(e.to_string())),
        Ok(Err(e)) => conn.upstream_failed(&fwd, Failure::Request(e.to_string())),
        Ok(Ok(mut resp)) => {
            super::strip_hop_by_hop(resp.headers_mut());
            let status = resp.status();
            let headers = fwd.learns(status).then(|| resp.headers());
            if let Some(hold) = conn.answered(&fwd, status, headers).await {
                resp.body_mut().hold_pin(hold);
            }
            resp.map(Either::Left)
        }
    };
    conn.done(fwd, resp.status());
    resp
}
