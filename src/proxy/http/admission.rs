//! What an HTTP request must pass after its caller is known and before an upstream is chosen:
//! the listener's rate limits (429 with `Retry-After`) and, when the listener identifies
//! callers, ownership of the session its key names (403). A request has no create, so the first
//! caller to send a session key claims it.

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
    /// The routing key when it names a session (header, cookie, query, path), as sent.
    pub session: Option<&'a [u8]>,
}

impl Admission<'_> {
    /// Whether anything here needs checking (no allocation on the common path).
    pub fn applies(&self) -> bool {
        self.listener.config.limits.any() || self.sessions_have_owners()
    }

    /// Sessions have owners on listeners that identify callers.
    fn sessions_have_owners(&self) -> bool {
        self.listener.config.identity.is_some() && self.snapshot.identities.is_some()
    }

    /// `Ok` to go on, else the answer to send.
    pub async fn check(&self, store: &Store) -> Result<(), Response> {
        let session = self.session.map(String::from_utf8_lossy);
        let caller = limits::caller_key(self.caller, self.peer);
        let request = limits::Request {
            caller: &caller,
            session: session.as_deref().map(|s| (self.pool, s)),
            method: self.method.as_str(),
        };
        let limits = &self.listener.config.limits;
        if let Err(limited) = limits::check(store, limits, &request).await {
            let mut resp = local(StatusCode::TOO_MANY_REQUESTS, limited.message());
            resp.headers_mut()
                .insert(header::RETRY_AFTER, limited.retry_after_secs().into());
            return Err(resp);
        }
        let (Some(identities), Some(session)) = (&self.snapshot.identities, session.as_deref())
        else {
            return Ok(());
        };
        if !self.sessions_have_owners() {
            return Ok(());
        }
        let anonymous = Identity {
            user: "".into(),
            tenant: None,
        };
        let who = self.caller.unwrap_or(&anonymous);
        let fleet_holds = async { false };
        let how = Use::FirstUse;
        match ownership::may_use(store, identities, self.pool, who, session, how, fleet_holds).await
        {
            true => Ok(()),
            false => Err(local(
                StatusCode::FORBIDDEN,
                "this session belongs to another user",
            )),
        }
    }
}

type Response = http::Response<ProxyBody>;
