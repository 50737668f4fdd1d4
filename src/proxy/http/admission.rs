//! What an HTTP request must pass after its caller is known and before an upstream is chosen:
//! the listener's rate limits (429 with `Retry-After`) and, when the listener identifies
//! callers, ownership of the session its key names (403). A request has no create, so the first
//! caller to send a session key claims it, unless the pool learns its ids from responses (then
//! the caller whose request got the id owns it). Where sessions have owners, a request must
//! name at most one session, as a plain key (400 otherwise): the id the proxy checks must be the
//! one the upstream reads.

use http::header;
use http::{Method, StatusCode};

use super::{local, ProxyBody};
use crate::identity::Identity;
use crate::limits;
use crate::ownership::{self, Use};
use crate::snapshot::{ListenerRuntime, Snapshot};
use crate::store::Store;

/// The request as admission sees it.
pub(super) struct Admission<'a> {
    pub snapshot: &'a Snapshot,
    pub listener: &'a ListenerRuntime,
    pub pool: &'a str,
    pub caller: Option<&'a Identity>,
    pub peer: std::net::IpAddr,
    pub method: &'a Method,
    /// The session the request names (header, cookie, query, path), as sent.
    pub session: Option<&'a [u8]>,
    /// The pool learns its sessions from responses (`learn:`).
    pub learned: bool,
}

impl Admission<'_> {
    /// Whether anything here needs checking (no allocation on the common path).
    pub fn applies(&self) -> bool {
        self.listener.config.limits.any() || self.sessions_have_owners()
    }

    /// Sessions have owners on listeners that identify callers.
    pub fn sessions_have_owners(&self) -> bool {
        self.listener.config.identity.is_some() && self.snapshot.identities.is_some()
    }

    /// `Ok` to go on, else the answer to send. The caller's limits first, then ownership of
    /// the session (where sessions have owners), then the session's limit.
    pub async fn check(&self, store: &Store) -> Result<(), Response> {
        let caller = limits::caller_key(self.caller, self.peer);
        let limits = &self.listener.config.limits;
        let method = self.method.as_str();
        limits::check_caller(store, limits, &caller, method)
            .await
            .map_err(too_many)?;
        let Some(session) = self.session.map(String::from_utf8_lossy) else {
            return Ok(());
        };
        if let (Some(identities), true) = (&self.snapshot.identities, self.sessions_have_owners()) {
            let anonymous = Identity {
                user: "".into(),
                tenant: None,
            };
            let who = self.caller.unwrap_or(&anonymous);
            // Where upstreams issue the ids (learned pins), the caller that got one owns it
            // already: an id nobody owns follows the `unowned` rule. Elsewhere the first request
            // with a key makes the session.
            let how = match self.learned {
                true => Use::Existing,
                false => Use::FirstUse,
            };
            let fleet_holds = async { false };
            let pool = self.pool;
            if !ownership::may_use(store, identities, pool, who, &session, how, fleet_holds).await {
                let msg = "this session belongs to another user";
                return Err(local(StatusCode::FORBIDDEN, msg));
            }
        }
        limits::check_session(store, limits, self.pool, &session)
            .await
            .map_err(too_many)
    }
}

fn too_many(limited: limits::Limited) -> Response {
    let mut resp = local(StatusCode::TOO_MANY_REQUESTS, limited.message());
    resp.headers_mut()
        .insert(header::RETRY_AFTER, limited.retry_after_secs().into());
    resp
}

type Response = http::Response<ProxyBody>;
