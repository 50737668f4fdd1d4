//! The HTTP proxy's decisions, shared by both kinds of client connection: the owned HTTP/1.1
//! path ([`super::h1`], plain TCP and TLS) and hyper for HTTP/2 (`h2`: ALPN h2, and h2c by prior
//! knowledge). For each request [`Conn::admit`] loads the snapshot once, identifies the caller,
//! applies admission, extracts the key and places the request on an upstream; the connection
//! forwards it; [`Conn::answered`] learns and ends sessions from the answer and [`Conn::done`]
//! counts it.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Uri;
use http::{Method, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::warn;

mod admission;
mod affinity;
mod h2;

pub(crate) use h2::serve as serve_h2;

use super::Context;
use crate::access_log;
use crate::config::{IdentitySource, NoKey};
use crate::identity::Identity;
use crate::key::http::{KeyBytes, RequestHead};
use crate::listener::Slot;
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
pub(crate) struct LogFacts {
    pool: Option<Arc<str>>,
    upstream: Option<Arc<str>>,
    session: access_log::Session,
    user: Option<Arc<str>>,
}

/// What the access log records of a request as it arrives.
pub(crate) struct Logged {
    pub started: Instant,
    /// `METHOD /path`.
    pub method: String,
    pub bytes_in: Option<u64>,
}

impl Logged {
    pub fn new(method: &Method, uri: &Uri, headers: &HeaderMap) -> Logged {
        Logged {
            started: Instant::now(),
            method: format!("{method} {}", uri.path()),
            bytes_in: content_length(headers),
        }
    }
}

/// A message's `Content-Length`, when it has one.
pub(crate) fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Per-connection facts every request needs, shared by both kinds of connection.
pub(crate) struct Conn {
    pub(crate) ctx: Context,
    pub(crate) listener: Arc<str>,
    pub(crate) peer: SocketAddr,
    /// The peer's IP as a header value, made once per connection for `X-Forwarded-For`.
    peer_ip: HeaderValue,
    tls: bool,
    /// The identity of the client certificate (mTLS).
    cert: Option<Identity>,
    /// A plain-TCP connection's place in its listener's count, which goes where the connection
    /// goes (into a parked entry and back into a task).
    _slot: Option<Slot>,
}

static X_SESSIONGATE_USER: HeaderName = HeaderName::from_static("x-sessiongate-user");
static X_SESSIONGATE_TENANT: HeaderName = HeaderName::from_static("x-sessiongate-tenant");

/// Serve one TLS client connection: HTTP/2 when ALPN chose it, else the owned HTTP/1.1 path.
pub async fn serve_tls<IO>(
    io: IO,
    h2: bool,
    ctx: Context,
    listener: Arc<str>,
    peer: SocketAddr,
    cert: Option<Identity>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Conn::new(ctx, listener, peer, Some(cert), None);
    match h2 {
        true => h2::serve(io, Arc::new(conn)).await,
        false => super::h1::serve(super::h1::Client::Tls(io), conn).await,
    }
}

/// Serve one plain-TCP client connection: the owned HTTP/1.1 path, which hands an HTTP/2
/// prior-knowledge (h2c) connection to hyper. Not an `async fn`: that would keep its
/// arguments beside the connection's own copy of them in the task for the connection's life.
pub(crate) fn serve_tcp(
    stream: TcpStream,
    ctx: Context,
    listener: Arc<str>,
    peer: SocketAddr,
    slot: Slot,
) -> impl std::future::Future<Output = ()> {
    let conn = Conn::new(ctx, listener, peer, None, Some(slot));
    super::h1::serve(super::h1::Client::<TcpStream>::Tcp(stream), conn)
}

/// A request the proxy forwards, and what must be done once its answer is back.
pub(crate) struct Forward<'s> {
    started: Instant,
    snapshot: &'s Snapshot,
    pub(crate) listener: &'s ListenerRuntime,
    route: &'s PoolRoute,
    target: Target,
    caller: Option<Identity>,
    pinned: Pinned,
    deleting: bool,
    /// A new session counted where it goes until its answer pins it (or it fails).
    _reservation: Option<crate::sessions::Reservation>,
    /// A request of a learned session counts in its figures until its response head is back.
    in_flight: Option<(crate::sessions::stats::InFlight, &'static str)>,
}

impl Forward<'_> {
    pub(crate) fn upstream(&self) -> &Arc<Upstream> {
        match &self.target {
            Target::Index(i) => &self.route.pool.upstreams[*i],
            Target::Retired(u) => u,
        }
    }

    pub(crate) fn pool(&self) -> &Pool {
        &self.route.pool
    }

    /// The upstream's place in the route's pool (`None`: one a reload removed).
    fn index(&self) -> Option<usize> {
        match &self.target {
            Target::Index(i) => Some(*i),
            Target::Retired(_) => None,
        }
    }

    /// A successful answer may name a session to learn (the listener's `learn:`).
    pub(crate) fn learns(&self, status: StatusCode) -> bool {
        !self.listener.config.learn.is_empty() && status.is_success()
    }
}

/// How forwarding to an upstream failed before its response head came back.
pub(crate) enum Failure {
    Timeout,
    Connect(String),
    Request(String),
}

impl Conn {
    pub(crate) fn new(
        ctx: Context,
        listener: Arc<str>,
        peer: SocketAddr,
        tls: Option<Option<Identity>>,
        slot: Option<Slot>,
    ) -> Conn {
        let peer_ip = HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Conn {
            ctx,
            listener,
            peer,
            peer_ip,
            tls: tls.is_some(),
            cert: tls.flatten(),
            _slot: slot,
        }
    }

    /// The listener's `header_read_timeout`; `None` once the listener has been removed.
    pub(crate) fn header_read_timeout(&self) -> Option<std::time::Duration> {
        self.ctx
            .shared
            .load()
            .listener(&self.listener)
            .map(|l| l.config.header_read_timeout)
    }

    /// Log a request the access log sampled.
    pub(crate) fn log(
        &self,
        request: Logged,
        facts: LogFacts,
        status: StatusCode,
        out: Option<u64>,
    ) {
        self.ctx.access_log.log(access_log::Record {
            time: std::time::SystemTime::now(),
            protocol: "http",
            listener: self.listener.clone(),
            pool: facts.pool.unwrap_or_else(|| Arc::from("none")),
            upstream: facts.upstream,
            session: facts.session,
            user: facts.user,
            method: request.method.into(),
            outcome: status.as_u16().to_string().into(),
            latency: request.started.elapsed(),
            bytes_in: request.bytes_in,
            bytes_out: out,
        });
    }

    /// Decide where a request goes: caller, admission, key, placement. `Err`: the proxy's own
    /// answer, already counted. `log`: what the access log records of it, filled in as it
    /// becomes known (`None`: not logged). On `Ok` the head still needs [`Conn::rewrite`].
    pub(crate) async fn admit<'s>(
        &self,
        snapshot: &'s Snapshot,
        req: &mut http::request::Parts,
        log: &mut Option<LogFacts>,
    ) -> Result<Forward<'s>, Response<ProxyBody>> {
        let started = Instant::now();
        let Some(listener) = snapshot.listener(&self.listener) else {
            return Err(local(
                StatusCode::SERVICE_UNAVAILABLE,
                "listener is being removed",
            ));
        };
        let caller = match self.caller(snapshot, listener, &mut req.headers) {
            Ok(caller) => caller,
            Err(why) => return Err(self.finish(started, None, None, unauthorized(why))),
        };
        let Some(route) = listener.route_for(caller.as_ref()) else {
            let resp = local(StatusCode::FORBIDDEN, "no pool serves this caller");
            return Err(self.finish(started, None, None, resp));
        };
        let pool = &route.pool;
        let caller_key = caller.as_ref().map(Identity::key);
        let head = RequestHead {
            uri: &req.uri,
            headers: &req.headers,
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
            snapshot,
            listener,
            pool: pool.name(),
            caller: caller.as_ref(),
            peer: self.peer.ip(),
            method: &req.method,
            session: None,
            learned: pool.learned_pins,
        };
        if admission.applies() {
            let session = match admission.sessions_have_owners() {
                true => match listener.http_keys.owned_session(&head) {
                    Ok(session) => session,
                    Err(why) => {
                        let resp = local(StatusCode::BAD_REQUEST, why);
                        return Err(self.finish(started, Some(route), None, resp));
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
                return Err(self.finish(started, Some(route), None, resp));
            }
        }
        let deleting = req.method == Method::DELETE;
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
                return Err(self.finish(started, Some(route), None, resp));
            }
            Err((status, msg)) => {
                let mut resp = local(status, msg);
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    // A full fleet or a session's node down: worth trying again soon.
                    resp.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                }
                return Err(self.finish(started, Some(route), None, resp));
            }
        };
        let upstream_name = match &target {
            Target::Index(i) => pool.upstreams[*i].endpoint.name.clone(),
            Target::Retired(u) => u.endpoint.name.clone(),
        };
        if let Some(facts) = log {
            facts.upstream = Some(upstream_name.clone());
        }
        let in_flight = pinned
            .as_ref()
            .and_then(|(session, _)| pool.pins.stats(session))
            .map(|stats| (stats.start(), method_label(&req.method)));
        let fwd = Forward {
            started,
            snapshot,
            listener,
            route,
            target,
            caller,
            pinned,
            deleting,
            _reservation: new_session.then(|| pool.pins.reserve(&upstream_name)),
            in_flight,
        };
        if listener.config.identity.is_some() {
            set_identity_headers(&mut req.headers, fwd.caller.as_ref());
        }
        Ok(fwd)
    }

    /// The upstream answered with `status` (and `headers`, when [`Forward::learns`] asked for
    /// them): learn the session it names, end or keep the session it followed. `Some`: the pin
    /// to hold while the response body streams.
    pub(crate) async fn answered(
        &self,
        fwd: &Forward<'_>,
        status: StatusCode,
        headers: Option<&HeaderMap>,
    ) -> Option<crate::sessions::PinHold> {
        let upstream = fwd.upstream();
        upstream.state.record_passive_success();
        if let Some(headers) = headers {
            self.learn(fwd, status, headers).await;
        }
        let pool = fwd.pool();
        match &fwd.pinned {
            Some((session, pin)) if fwd.deleting => {
                // Only the pin this request followed (another may have replaced it).
                let still = pool.pins.get(session).as_ref() == Some(pin);
                if still && affinity::ends_session(&Method::DELETE, status) {
                    pool.pins.unpin(session);
                    self.dropped_pin(pool, "deleted");
                }
                None
            }
            Some((session, _)) => pool.pins.hold(session),
            None => None,
        }
    }

    /// The upstream did not answer: count it against the upstream and make the answer.
    pub(crate) fn upstream_failed(
        &self,
        fwd: &Forward<'_>,
        failure: Failure,
    ) -> Response<ProxyBody> {
        let upstream = fwd.upstream();
        let pool = fwd.pool();
        let passive = pool.config.passive.as_ref();
        let metrics = &self.ctx.metrics;
        let (what, error) = match failure {
            Failure::Timeout => {
                prober::passive_failure(metrics, upstream, passive, "timeout");
                let timeout = pool.config.request_timeout;
                let msg = format!(
                    "upstream {} did not answer within {timeout:?}",
                    upstream.name()
                );
                return local(StatusCode::GATEWAY_TIMEOUT, msg);
            }
            Failure::Connect(e) => ("connect failed", e),
            Failure::Request(e) => ("request failed", e),
        };
        warn!(upstream = upstream.name(), error = %error, "upstream {what}");
        prober::passive_failure(metrics, upstream, passive, what);
        let msg = format!("upstream {} {what}", upstream.name());
        local(StatusCode::BAD_GATEWAY, msg)
    }

    /// The exchange is over as far as its status goes: the session's figures and the request
    /// metrics.
    pub(crate) fn done(&self, mut fwd: Forward<'_>, status: StatusCode) {
        if let Some((in_flight, method)) = fwd.in_flight.take() {
            in_flight
                .stats()
                .record(method, fwd.started.elapsed(), session_outcome(status));
        }
        match fwd.index() {
            Some(i) => self.count_done(fwd.started, Some(fwd.route), Some(i), status),
            None => self.finish_retired(fwd.started, fwd.pool(), fwd.upstream(), status),
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

    /// Pin the session a successful answer names (the listener's `learn:` sources) to its
    /// upstream; where sessions have owners, it is the caller's (claimed, like a create).
    async fn learn(&self, fwd: &Forward<'_>, status: StatusCode, headers: &HeaderMap) {
        // An error answer may echo whatever id the client sent: only a success teaches.
        if !fwd.learns(status) {
            return;
        }
        let listener = fwd.listener;
        let Some(session) = affinity::learned(&listener.config.learn, headers) else {
            return;
        };
        let (pool, upstream) = (fwd.pool(), fwd.upstream());
        let session = String::from_utf8_lossy(session);
        if affinity::learn(pool, &session, upstream) {
            self.ctx
                .metrics
                .pins_learned_total
                .with_label_values(&[pool.name(), upstream.name()])
                .inc();
        }
        let owners = fwd.snapshot.identities.as_ref();
        if let (Some(identities), Some(_)) = (owners, &listener.config.identity) {
            let user = fwd.caller.as_ref().map_or("", |c| &c.user);
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
    pub(crate) fn rewrite(
        &self,
        req: &mut http::request::Parts,
        upgrade: bool,
    ) -> Result<(), &'static str> {
        let uri = std::mem::take(&mut req.uri);
        if !req.headers.contains_key(header::HOST) {
            // HTTP/2 carries the host in :authority; an HTTP/1.1 upstream needs a Host header.
            if let Some(value) = uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                req.headers.insert(header::HOST, value);
            }
        }
        // Usually already origin-form (`/path?query`); absolute-form and h2 requests carry a
        // scheme and authority the upstream must not see in the request line.
        req.uri = if uri.scheme().is_none() && uri.authority().is_none() {
            uri
        } else {
            let path = uri
                .into_parts()
                .path_and_query
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
            Uri::from(path)
        };
        if req.uri.path().is_empty() {
            return Err("request target cannot be forwarded");
        }
        req.version = Version::HTTP_11;

        let headers = &mut req.headers;
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

    /// Count a request the proxy answered itself (`route`: the pool it was for, if known).
    fn finish(
        &self,
        started: Instant,
        route: Option<&PoolRoute>,
        index: Option<usize>,
        resp: Response<ProxyBody>,
    ) -> Response<ProxyBody> {
        self.count_done(started, route, index, resp.status());
        resp
    }

    /// Count the request and its duration; `index` is the upstream's place in the route's
    /// pool, when one was chosen.
    fn count_done(
        &self,
        started: Instant,
        route: Option<&PoolRoute>,
        index: Option<usize>,
        status: StatusCode,
    ) {
        let elapsed = started.elapsed().as_secs_f64();
        let pool = route.map_or("none", |r| r.pool.name());
        let stats = route
            .zip(index)
            .and_then(|(r, i)| r.stats.get(i).map(|s| (r, i, s)));
        match stats {
            Some((_, _, stats)) if status == StatusCode::OK => {
                stats.ok.inc();
                stats.duration.observe(elapsed);
            }
            Some((route, i, stats)) => {
                stats.duration.observe(elapsed);
                let upstream = route.pool.upstreams[i].name();
                self.count(pool, upstream, status);
            }
            None => {
                let m = &self.ctx.metrics;
                let labels = [&*self.listener, pool, "none"];
                m.request_duration
                    .with_label_values(&labels)
                    .observe(elapsed);
                self.count(pool, "none", status);
            }
        }
    }

    /// Like [`Conn::count_done`] for an upstream a reload removed (it has no per-route
    /// handles).
    fn finish_retired(
        &self,
        started: Instant,
        pool: &Pool,
        upstream: &Upstream,
        status: StatusCode,
    ) {
        let labels = [&*self.listener, pool.name(), upstream.name()];
        self.ctx
            .metrics
            .request_duration
            .with_label_values(&labels)
            .observe(started.elapsed().as_secs_f64());
        self.count(pool.name(), upstream.name(), status);
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
}
