//! The HTTP proxy: a hyper service per client connection (HTTP/1.1, h2 via ALPN, h2c by prior
//! knowledge). Each request loads the snapshot once, extracts its key, picks an upstream on the
//! ring and is forwarded through that upstream's keep-alive pool with bodies streamed both
//! ways. `Upgrade` requests (WebSocket) become a byte tunnel after the upstream's 101.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Uri;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::{debug, warn};

mod admission;
mod affinity;

use super::idle::{self, Opening};
use super::Context;
use crate::access_log;
use crate::config::{IdentitySource, NoKey};
use crate::identity::Identity;
use crate::key::http::{KeyBytes, RequestHead};
use crate::snapshot::{ListenerRuntime, NewPlacement, Pool, PoolRoute, Snapshot};
use crate::upstream::{prober, PooledBody, Upstream};
use affinity::{Placement, Target};

/// Response bodies: the upstream's, streamed, or a short local one (errors).
pub type ProxyBody = Either<PooledBody, Full<Bytes>>;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// What the access log records of a request besides what the wrapper sees itself.
#[derive(Default)]
struct LogFacts {
    pool: Option<Arc<str>>,
    upstream: Option<Arc<str>>,
    session: access_log::Session,
    user: Option<Arc<str>>,
}

/// A message's `Content-Length`, when it has one.
fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Per-connection facts the service needs for every request.
struct Conn {
    ctx: Context,
    listener: Arc<str>,
    peer: SocketAddr,
    /// The peer's IP as a header value, made once per connection for `X-Forwarded-For`.
    peer_ip: HeaderValue,
    tls: bool,
    /// The identity of the client certificate (mTLS).
    cert: Option<Identity>,
}

static X_SESSIONGATE_USER: HeaderName = HeaderName::from_static("x-sessiongate-user");
static X_SESSIONGATE_TENANT: HeaderName = HeaderName::from_static("x-sessiongate-tenant");

/// The listener's `header_read_timeout`; `None` once the listener has been removed.
fn header_read_timeout(ctx: &Context, listener: &str) -> Option<std::time::Duration> {
    ctx.shared
        .load()
        .listener(listener)
        .map(|l| l.config.header_read_timeout)
}

/// Serve one client connection until it closes or shutdown asks it to finish. `tls`: the
/// connection is TLS, with the identity of its client certificate if it showed one.
pub async fn serve<IO>(
    io: IO,
    ctx: Context,
    listener: Arc<str>,
    peer: SocketAddr,
    tls: Option<Option<Identity>>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let header_read_timeout = header_read_timeout(&ctx, &listener);
    let shutdown = ctx.shutdown.token.clone();
    let service = conn_service(ctx, listener, peer, tls);
    serve_auto(TokioIo::new(io), service, header_read_timeout, shutdown).await;
}

/// Serve one plain-TCP client connection. HTTP/1.1 runs through [`idle`]: between requests the
/// connection holds only its socket, not hyper's buffers. h2c (prior knowledge) is served as
/// [`serve`] serves it, as are TLS connections.
///
/// Not an `async fn`: an async fn keeps its arguments in its future for as long as it runs,
/// and this future is what an idle connection's task holds; the context moves into the service's
/// shared state here instead.
pub fn serve_tcp(
    stream: TcpStream,
    ctx: Context,
    listener: Arc<str>,
    peer: SocketAddr,
) -> impl Future<Output = ()> + Send {
    let header_read_timeout = header_read_timeout(&ctx, &listener);
    let shutdown = ctx.shutdown.token.clone();
    let service = conn_service(ctx, listener, peer, None);
    let mut conn = header_read_timeout.map(|t| idle::Http1::new(stream, service, t));
    async move {
        let Some(conn) = conn.as_mut() else {
            return; // the listener was removed meanwhile
        };
        // Boxed, like every path but the parked one: the task's future is as large as its
        // largest await.
        match Box::pin(conn.opening(&shutdown)).await {
            Opening::Http1 => conn.serve(&shutdown).await,
            Opening::MaybeH2c => {
                let header_read_timeout = Some(conn.header_read_timeout());
                let Some((stream, service)) = conn.take() else {
                    return;
                };
                let io = TokioIo::new(stream);
                Box::pin(serve_auto(io, service, header_read_timeout, shutdown)).await
            }
            Opening::Closed => {}
        }
    }
}

/// Serve a connection with hyper-util's auto builder (HTTP/1.1 or HTTP/2, upgrades on) until it
/// closes or `shutdown` asks it to finish.
async fn serve_auto<IO, S>(
    io: TokioIo<IO>,
    service: S,
    header_read_timeout: Option<std::time::Duration>,
    shutdown: tokio_util::sync::CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<ProxyBody>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(true)
        // One `write` of head and body together rather than a `writev` (TLS streams get this
        // anyway: they do not take vectored writes).
        .writev(false);
    builder.http2().timer(TokioTimer::new());
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    tokio::select! {
        res = connection.as_mut() => log_conn_end(res),
        _ = shutdown.cancelled() => {
            // Finish in-flight requests, refuse new ones, then close.
            connection.as_mut().graceful_shutdown();
            log_conn_end(connection.await);
        }
    }
}

/// The hyper service for one client connection: [`Conn::handle`] for each request.
fn conn_service(
    ctx: Context,
    listener: Arc<str>,
    peer: SocketAddr,
    tls: Option<Option<Identity>>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<ProxyBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send,
> + Clone
       + Send
       + Sync
       + 'static {
    let peer_ip = HeaderValue::from_str(&peer.ip().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
    let conn = Arc::new(Conn {
        ctx,
        listener,
        peer,
        peer_ip,
        tls: tls.is_some(),
        cert: tls.flatten(),
    });
    hyper::service::service_fn(move |req| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(conn.handle(req).await) }
    })
}

fn log_conn_end(res: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    if let Err(e) = res {
        debug!(error = %e, "client connection ended with an error");
    }
}

impl Conn {
    /// Serve one request, and log it when the access log samples it.
    async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        if !self.ctx.access_log.sampled() {
            return self.serve(req, &mut None).await;
        }
        let started = Instant::now();
        let method = format!("{} {}", req.method(), req.uri().path());
        let bytes_in = content_length(req.headers());
        let mut facts = Some(LogFacts::default());
        let resp = self.serve(req, &mut facts).await;
        let facts = facts.unwrap_or_default();
        self.ctx.access_log.log(access_log::Record {
            time: std::time::SystemTime::now(),
            protocol: "http",
            listener: self.listener.clone(),
            pool: facts.pool.unwrap_or_else(|| Arc::from("none")),
            upstream: facts.upstream,
            session: facts.session,
            user: facts.user,
            method: method.into(),
            outcome: resp.status().as_u16().to_string().into(),
            latency: started.elapsed(),
            bytes_in,
            bytes_out: content_length(resp.headers()),
        });
        resp
    }

    /// Route and forward one request. `log`: what the access log records of it, filled in as
    /// it becomes known (`None`: not logged, nothing to fill in).
    async fn serve(
        &self,
        mut req: Request<Incoming>,
        log: &mut Option<LogFacts>,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let snapshot = self.ctx.shared.load_full();
        let Some(listener) = snapshot.listener(&self.listener) else {
            return local(StatusCode::SERVICE_UNAVAILABLE, "listener is being removed");
        };
        let caller = match self.caller(&snapshot, listener, req.headers_mut()) {
            Ok(caller) => caller,
            Err(why) => return self.finish(started, None, None, unauthorized(why)),
        };
        let Some(route) = listener.route_for(caller.as_ref()) else {
            let resp = local(StatusCode::FORBIDDEN, "no pool serves this caller");
            return self.finish(started, None, None, resp);
        };
        let pool = &route.pool;
        let caller_key = caller.as_ref().map(Identity::key);
        let head = RequestHead {
            uri: req.uri(),
            headers: req.headers(),
            peer: self.peer.ip(),
            caller: caller_key.as_deref(),
        };
        let key = listener.http_keys.extract_keyed(&head);
        if let Some(facts) = log {
            facts.pool = Some(Arc::from(pool.name()));
            facts.user = caller.as_ref().map(|c| c.user.clone());
            if let (Some((key, _)), Some(source)) = (&key, listener.http_keys.source_of(&head)) {
                facts.session = access_log::Session::Key {
                    source: source.clone(),
                    value: key.with(|k| String::from_utf8_lossy(k).into_owned()),
                };
            }
        }
        let mut admission = admission::Admission {
            snapshot: &snapshot,
            listener,
            pool: pool.name(),
            caller: caller.as_ref(),
            peer: self.peer.ip(),
            method: req.method(),
            session: None,
            learned: pool.learned_pins,
        };
        if admission.applies() {
            let session = match admission.sessions_have_owners() {
                true => match listener.http_keys.owned_session(&head) {
                    Ok(session) => session,
                    Err(why) => {
                        let resp = local(StatusCode::BAD_REQUEST, why);
                        return self.finish(started, Some(route), None, resp);
                    }
                },
                false => match &key {
                    Some((KeyBytes::Borrowed(k), true)) => Some(*k),
                    _ => None,
                },
            };
            admission.session = session;
            if let Err(resp) = admission.check(&self.ctx.store).await {
                let reason = match resp.status() {
                    StatusCode::TOO_MANY_REQUESTS => "rate_limited",
                    _ => "forbidden",
                };
                self.ctx
                    .metrics
                    .admission_rejected_total
                    .with_label_values(&[&self.listener, reason])
                    .inc();
                return self.finish(started, Some(route), None, resp);
            }
        }
        let deleting = req.method() == Method::DELETE;
        // A keyless request to a pool that learns its sessions starts one (MCP `initialize`):
        // placed by load and caps when the pool has them.
        let new_session = key.is_none() && pool.learned_pins && pool.places_by_load();
        if let (Some((key, _)), true) = (&key, pool.learned_pins) {
            // Made through another replica, or before a restart: the shared pins know it.
            if pool.pins.shared().is_some() {
                let session = key.with(|k| String::from_utf8_lossy(k).into_owned());
                pool.recall_pin(&session).await;
            }
        }
        let placed = match key.map(|(key, _)| key) {
            Some(key) => key.with(|k| self.place(pool, k)),
            None if listener.config.no_key == NoKey::Reject => {
                let msg = format!(
                    "no session key in request; expected one of: {}",
                    listener.http_keys.described
                );
                Err((StatusCode::BAD_REQUEST, msg.into()))
            }
            None if new_session => self.place_new_session(pool),
            None => Ok((pool.route_random_index().map(Target::Index), None)),
        };
        let (target, pinned) = match placed {
            Ok((Some(target), pinned)) => (target, pinned),
            Ok((None, _)) => {
                let msg = format!("no upstream available in pool {}", pool.name());
                let resp = local(StatusCode::SERVICE_UNAVAILABLE, msg);
                return self.finish(started, Some(route), None, resp);
            }
            Err((status, msg)) => {
                let mut resp = local(status, msg);
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    // A full fleet or a session's node down: worth trying again soon.
                    resp.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                }
                return self.finish(started, Some(route), None, resp);
            }
        };
        let (upstream, index) = match &target {
            Target::Index(i) => (&pool.upstreams[*i], Some(*i)),
            Target::Retired(u) => (u, None),
        };
        if let Some(facts) = log {
            facts.upstream = Some(upstream.endpoint.name.clone());
        }
        // Counted where it goes until its answer pins it (or it fails).
        let _reservation = new_session.then(|| pool.pins.reserve(&upstream.endpoint.name));
        // A request of a learned session counts in its figures (`/admin/sessions`) until its
        // response head is back.
        let in_flight = pinned
            .as_ref()
            .and_then(|(session, _)| pool.pins.stats(session))
            .map(|stats| (stats.start(), method_label(req.method())));
        if listener.config.identity.is_some() {
            set_identity_headers(req.headers_mut(), caller.as_ref());
        }

        let client_upgrade =
            is_upgrade(req.version(), req.headers()).then(|| hyper::upgrade::on(&mut req));
        if let Err(why) = self.rewrite_request(&mut req, client_upgrade.is_some()) {
            let resp = local(StatusCode::BAD_REQUEST, why);
            return self.finish(started, Some(route), index, resp);
        }
        let timeout = pool.config.request_timeout;
        let passive = pool.config.passive.as_ref();
        let metrics = &self.ctx.metrics;
        let resp = match tokio::time::timeout(timeout, upstream.http.request(req)).await {
            Err(_) => {
                prober::passive_failure(metrics, upstream, passive, "timeout");
                local(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "upstream {} did not answer within {timeout:?}",
                        upstream.name()
                    ),
                )
            }
            Ok(Err(e)) => {
                let what = if e.is_connect() {
                    "connect failed"
                } else {
                    "request failed"
                };
                warn!(upstream = upstream.name(), error = %e, "upstream {what}");
                prober::passive_failure(metrics, upstream, passive, what);
                local(
                    StatusCode::BAD_GATEWAY,
                    format!("upstream {} {what}", upstream.name()),
                )
            }
            Ok(Ok(mut resp)) => {
                upstream.state.record_passive_success();
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    if let Some(client_side) = client_upgrade {
                        tunnel(client_side, hyper::upgrade::on(&mut resp), &self.ctx);
                    }
                } else {
                    strip_hop_by_hop(resp.headers_mut());
                }
                let caller = caller.as_ref();
                self.learn(&snapshot, listener, pool, upstream, caller, &resp)
                    .await;
                match pinned {
                    Some((session, pin)) if deleting => {
                        // Only the pin this request followed (another may have replaced it).
                        let still = pool.pins.get(&session).as_ref() == Some(&pin);
                        if still && affinity::ends_session(&Method::DELETE, resp.status()) {
                            pool.pins.unpin(&session);
                            self.dropped_pin(pool, "deleted");
                        }
                    }
                    Some((session, _)) => {
                        if let Some(hold) = pool.pins.hold(&session) {
                            resp.body_mut().hold_pin(hold);
                        }
                    }
                    None => {}
                }
                resp.map(Either::Left)
            }
        };
        if let Some((in_flight, method)) = in_flight {
            let outcome = session_outcome(resp.status());
            in_flight.stats().record(method, started.elapsed(), outcome);
        }
        match index {
            Some(_) => self.finish(started, Some(route), index, resp),
            None => self.finish_retired(started, pool, upstream, resp),
        }
    }

    /// Where a request with key `key` goes: its learned pin, if the pool has learned pins, else
    /// the ring (`None`: no upstream can take it). With the session and the pin it followed, for
    /// a pinned request (its answer may end the session, or stream and keep it alive).
    fn place(&self, pool: &Pool, key: &[u8]) -> Result<(Option<Target>, Pinned), LocalAnswer> {
        if !pool.learned_pins {
            return Ok((pool.route_index(key).map(Target::Index), None));
        }
        let session = String::from_utf8_lossy(key);
        let (state, pinned) = affinity::lookup(pool, &session);
        match (
            affinity::placement(state, pool.config.on_owner_down),
            pinned,
        ) {
            (Placement::Ring, _) => {}
            (Placement::Pinned, Some((target, pin))) => {
                return Ok((Some(target), Some((session.into_owned(), pin))));
            }
            // A pinned placement always comes with its pin (see `lookup`).
            (Placement::Pinned, None) => {}
            (Placement::Replace, _) => {
                pool.pins.unpin(&session);
                self.dropped_pin(pool, "owner_gone");
            }
            (Placement::NotFound, _) => {
                pool.pins.unpin(&session);
                self.dropped_pin(pool, "owner_gone");
                let msg = "session not found: the upstream that held it is gone";
                return Err((StatusCode::NOT_FOUND, msg.into()));
            }
            (Placement::Unavailable, _) => {
                let msg = "the upstream holding this session is unavailable";
                return Err((StatusCode::SERVICE_UNAVAILABLE, msg.into()));
            }
        }
        Ok((pool.route_index(key).map(Target::Index), None))
    }

    /// Where a new session goes when the pool places by load or caps: 503 + `Retry-After`
    /// when every node that can take work is full.
    fn place_new_session(&self, pool: &Pool) -> Result<(Option<Target>, Pinned), LocalAnswer> {
        match pool.place_new(&rand::random::<u64>().to_le_bytes()) {
            NewPlacement::At {
                index,
                spilled_from,
            } => {
                if let Some(ring_choice) = spilled_from {
                    self.ctx
                        .metrics
                        .placement_spills_total
                        .with_label_values(&[pool.name(), pool.upstreams[ring_choice].name()])
                        .inc();
                }
                Ok((Some(Target::Index(index)), None))
            }
            NewPlacement::Full => {
                self.ctx
                    .metrics
                    .admission_rejected_total
                    .with_label_values(&[&self.listener, "fleet_full"])
                    .inc();
                let msg = "every upstream holds its maximum of live sessions";
                Err((StatusCode::SERVICE_UNAVAILABLE, msg.into()))
            }
            NewPlacement::NoNode => Ok((None, None)),
        }
    }

    /// Pin the session a successful `resp` names (the listener's `learn:` sources) to
    /// `upstream`; where sessions have owners, it is the caller's (claimed, like a create).
    async fn learn(
        &self,
        snapshot: &Snapshot,
        listener: &ListenerRuntime,
        pool: &Pool,
        upstream: &Upstream,
        caller: Option<&Identity>,
        resp: &Response<PooledBody>,
    ) {
        // An error answer may echo whatever id the client sent: only a success teaches.
        if listener.config.learn.is_empty() || !resp.status().is_success() {
            return;
        }
        let Some(session) = affinity::learned(&listener.config.learn, resp.headers()) else {
            return;
        };
        let session = String::from_utf8_lossy(session);
        if affinity::learn(pool, &session, upstream) {
            self.ctx
                .metrics
                .pins_learned_total
                .with_label_values(&[pool.name(), upstream.name()])
                .inc();
        }
        let owners = snapshot.identities.as_ref();
        if let (Some(identities), Some(_)) = (owners, &listener.config.identity) {
            let user = caller.map_or("", |c| &c.user);
            let ttl = identities.config.binding_ttl;
            self.ctx.store.claim(pool.name(), &session, user, ttl).await;
        }
    }

    fn dropped_pin(&self, pool: &Pool, reason: &str) {
        self.ctx
            .metrics
            .pins_dropped_total
            .with_label_values(&[pool.name(), reason])
            .inc();
    }

    /// Who sends this request, when the listener has `identity:`: the client certificate's
    /// identity or the bearer token's, in the listener's order. The token is for the proxy: it
    /// is removed before the request goes on. Unknown token, or none where one is required:
    /// why (the caller answers 401).
    fn caller(
        &self,
        snapshot: &Snapshot,
        listener: &ListenerRuntime,
        headers: &mut HeaderMap,
    ) -> Result<Option<Identity>, &'static str> {
        let Some(config) = &listener.config.identity else {
            return Ok(None);
        };
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.trim().to_owned());
        let mut found = None;
        for source in &config.from {
            match source {
                IdentitySource::ClientCert => found = self.cert.clone(),
                IdentitySource::Token => {
                    headers.remove(header::AUTHORIZATION);
                    if let Some(token) = &bearer {
                        let known = snapshot.identities.as_ref().and_then(|i| i.by_token(token));
                        match known {
                            Some(who) => found = Some(who.clone()),
                            None => return Err("unknown token"),
                        }
                    }
                }
            }
            if found.is_some() {
                break;
            }
        }
        if found.is_none() && config.required {
            return Err("an identity is required");
        }
        Ok(found)
    }

    /// Turn the client's request into the upstream's: origin-form URI, HTTP/1.1, hop-by-hop
    /// headers removed (kept for upgrades), forwarding headers added.
    fn rewrite_request(
        &self,
        req: &mut Request<Incoming>,
        upgrade: bool,
    ) -> Result<(), &'static str> {
        let uri = std::mem::take(req.uri_mut());
        if !req.headers().contains_key(header::HOST) {
            // HTTP/2 carries the host in :authority; an HTTP/1.1 upstream needs a Host header.
            if let Some(value) = uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                req.headers_mut().insert(header::HOST, value);
            }
        }
        // Usually already origin-form (`/path?query`); absolute-form and h2 requests carry a
        // scheme and authority the upstream must not see in the request line.
        *req.uri_mut() = if uri.scheme().is_none() && uri.authority().is_none() {
            uri
        } else {
            let path = uri
                .into_parts()
                .path_and_query
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
            Uri::from(path)
        };
        if req.uri().path().is_empty() {
            return Err("request target cannot be forwarded");
        }
        *req.version_mut() = Version::HTTP_11;

        let headers = req.headers_mut();
        let upgrade_proto = if upgrade {
            headers.get(header::UPGRADE).cloned()
        } else {
            None
        };
        strip_hop_by_hop(headers);
        if let Some(proto) = upgrade_proto {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, proto);
        }
        append_forwarded_for(headers, &self.peer_ip);
        headers.insert(
            &X_FORWARDED_PROTO,
            HeaderValue::from_static(if self.tls { "https" } else { "http" }),
        );
        Ok(())
    }

    /// Count the request and its duration; `index` is the upstream's place in the route's
    /// pool, when one was chosen.
    fn finish(
        &self,
        started: Instant,
        route: Option<&PoolRoute>,
        index: Option<usize>,
        resp: Response<ProxyBody>,
    ) -> Response<ProxyBody> {
        let elapsed = started.elapsed().as_secs_f64();
        let pool = route.map_or("none", |r| r.pool.name());
        let stats = route
            .zip(index)
            .and_then(|(r, i)| r.stats.get(i).map(|s| (r, i, s)));
        match stats {
            Some((_, _, stats)) if resp.status() == StatusCode::OK => {
                stats.ok.inc();
                stats.duration.observe(elapsed);
            }
            Some((route, i, stats)) => {
                stats.duration.observe(elapsed);
                let upstream = route.pool.upstreams[i].name();
                self.count(pool, upstream, resp.status());
            }
            None => {
                let m = &self.ctx.metrics;
                let labels = [&*self.listener, pool, "none"];
                m.request_duration
                    .with_label_values(&labels)
                    .observe(elapsed);
                self.count(pool, "none", resp.status());
            }
        }
        resp
    }

    /// Like [`Conn::finish`] for an upstream a reload removed (it has no per-route handles).
    fn finish_retired(
        &self,
        started: Instant,
        pool: &Pool,
        upstream: &Upstream,
        resp: Response<ProxyBody>,
    ) -> Response<ProxyBody> {
        let labels = [&*self.listener, pool.name(), upstream.name()];
        self.ctx
            .metrics
            .request_duration
            .with_label_values(&labels)
            .observe(started.elapsed().as_secs_f64());
        self.count(pool.name(), upstream.name(), resp.status());
        resp
    }

    fn count(&self, pool: &str, upstream: &str, status: StatusCode) {
        self.ctx
            .metrics
            .requests_total
            .with_label_values(&[&self.listener, pool, upstream, status.as_str()])
            .inc();
    }
}

/// An HTTP method as a session's recent requests name it (no allocation: a fixed label).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// How an HTTP request of a session ended, for its figures: 5xx are the proxy's or the
/// upstream's failures (a 4xx is the client's and counts as answered).
fn session_outcome(status: StatusCode) -> crate::sessions::stats::Outcome {
    use crate::sessions::stats::Outcome;
    match status {
        StatusCode::GATEWAY_TIMEOUT => Outcome::Timeout,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE => Outcome::Unavailable,
        s if s.is_server_error() => Outcome::Error,
        _ => Outcome::Ok,
    }
}

/// A request that followed a learned pin: its session and that pin.
type Pinned = Option<(String, crate::sessions::Pin)>;

/// A status and message the proxy answers itself (made into a response by [`local`]).
type LocalAnswer = (StatusCode, Cow<'static, str>);

/// 401 with the scheme the client should use.
fn unauthorized(why: &str) -> Response<ProxyBody> {
    let mut resp = local(StatusCode::UNAUTHORIZED, why);
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"sessiongate\""),
    );
    resp
}

/// Tell the upstream who the caller is, and never what a client claims it is.
fn set_identity_headers(headers: &mut HeaderMap, caller: Option<&Identity>) {
    headers.remove(&X_SESSIONGATE_USER);
    headers.remove(&X_SESSIONGATE_TENANT);
    let Some(who) = caller else { return };
    if let Ok(v) = HeaderValue::from_str(&who.user) {
        headers.insert(&X_SESSIONGATE_USER, v);
    }
    if let Some(Ok(v)) = who.tenant.as_deref().map(HeaderValue::from_str) {
        headers.insert(&X_SESSIONGATE_TENANT, v);
    }
}

/// A short plain-text answer made by the proxy itself.
pub fn local(status: StatusCode, message: impl Into<String>) -> Response<ProxyBody> {
    let mut body = message.into();
    body.push('\n');
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn is_upgrade(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && headers.contains_key(header::UPGRADE)
        && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Remove hop-by-hop headers (RFC 9110 §7.6.1): the fixed set plus any named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    const FIXED: [&HeaderName; 6] = [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ];
    // One pass over the names first: most messages carry none of these or only `Connection`,
    // and every `HeaderMap::remove` hashes its name, so only names seen are removed.
    let mut present = 0u8;
    for name in headers.keys() {
        if let Some(i) = FIXED.iter().position(|f| *f == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        // `Connection: keep-alive` / `close` is the common case: only options naming other
        // headers need a list (and an allocation) of their own.
        let named: Vec<HeaderName> = connection_tokens(headers)
            .filter(|t| {
                !t.eq_ignore_ascii_case("close")
                    && !FIXED.iter().any(|f| t.eq_ignore_ascii_case(f.as_str()))
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in FIXED.into_iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

fn append_forwarded_for(headers: &mut HeaderMap, peer_ip: &HeaderValue) {
    let value = match headers.get(&X_FORWARDED_FOR).map(HeaderValue::as_bytes) {
        Some(prior) if !prior.is_empty() => {
            let mut joined = Vec::with_capacity(prior.len() + 2 + peer_ip.len());
            joined.extend_from_slice(prior);
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(peer_ip.as_bytes());
            match HeaderValue::from_bytes(&joined) {
                Ok(v) => v,
                Err(_) => return,
            }
        }
        _ => peer_ip.clone(),
    };
    headers.insert(&X_FORWARDED_FOR, value);
}

/// After both sides agree to switch protocols, copy bytes both ways until either side closes.
fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade, ctx: &Context) {
    ctx.shutdown.tracker.spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(pair) => pair,
            Err(e) => return debug!(error = %e, "upgrade failed"),
        };
        let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            debug!(error = %e, "upgraded connection ended with an error");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_including_those_named_in_connection() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-end-to-end", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-end-to-end"));
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, &HeaderValue::from_static("10.0.0.9"));
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.9");
        append_forwarded_for(&mut h, &HeaderValue::from_static("127.0.0.1"));
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.9, 127.0.0.1");
    }

    #[test]
    fn upgrade_needs_both_headers_on_http11() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!is_upgrade(Version::HTTP_11, &h));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(is_upgrade(Version::HTTP_11, &h));
        assert!(!is_upgrade(Version::HTTP_2, &h));
    }
}
