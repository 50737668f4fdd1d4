//! Session drill-down: `GET /admin/sessions/{id}` (one live session: where it is pinned, whose
//! it is, its requests, errors and latency, its last methods) and
//! `GET /admin/sessions?top=N&by=p99|requests|errors|recent` (a top list). Both read the pin
//! tables' figures ([`crate::sessions::stats`]) without refreshing any session's idle timer.

use std::collections::HashMap;
use std::sync::Arc;

use http::StatusCode;
use serde_json::{json, Value};

use super::{error, json_response, AdminResponse};
use crate::server::Server;
use crate::sessions::stats::Summary;
use crate::sessions::LiveSession;
use crate::snapshot::Snapshot;

/// `top` when none is given, and the most a list may ask for.
pub const DEFAULT_TOP: usize = 20;
pub const MAX_TOP: usize = 1000;

/// What a top list ranks by (largest first; `recent`: most recently active first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    P99,
    Requests,
    Errors,
    Recent,
}

impl By {
    fn parse(s: &str) -> Option<By> {
        match s {
            "p99" => Some(By::P99),
            "requests" => Some(By::Requests),
            "errors" => Some(By::Errors),
            "recent" => Some(By::Recent),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            By::P99 => "p99",
            By::Requests => "requests",
            By::Errors => "errors",
            By::Recent => "recent",
        }
    }
}

/// A live session of a pool.
pub struct Row {
    pub pool: Arc<str>,
    pub session: LiveSession,
}

/// The `top` sessions of every pool ranked `by`, and how many sessions are live in all.
pub fn top(snapshot: &Snapshot, by: By, top: usize) -> (Vec<Row>, usize) {
    let mut rows: Vec<(Summary, Row)> = snapshot
        .pools()
        .flat_map(|p| {
            let pool: Arc<str> = Arc::from(p.name());
            p.pins.sessions().map(move |session| {
                let row = Row {
                    pool: pool.clone(),
                    session,
                };
                (row.session.stats.summary(), row)
            })
        })
        .collect();
    let live = rows.len();
    let key = |s: &Summary| -> (f64, u64) {
        match by {
            By::P99 => (s.p99_us, s.requests),
            By::Requests => (s.requests as f64, s.last_activity_ms),
            By::Errors => (s.errors as f64, s.last_activity_ms),
            By::Recent => (s.last_activity_ms as f64, s.requests),
        }
    };
    // Largest first; ties by id, so the list is stable between reads.
    rows.sort_by(|(a, ra), (b, rb)| {
        let (ka, kb) = (key(a), key(b));
        kb.0.total_cmp(&ka.0)
            .then(kb.1.cmp(&ka.1))
            .then_with(|| ra.session.id.cmp(&rb.session.id))
    });
    rows.truncate(top);
    (rows.into_iter().map(|(_, row)| row).collect(), live)
}

/// `GET /admin/sessions?top=N&by=…`.
pub(super) fn list(server: &Server, query: &HashMap<String, String>) -> AdminResponse {
    let usage = "usage: /admin/sessions?top=N&by=p99|requests|errors|recent (N from 1 to 1000)";
    let n = match query.get("top").map(|t| t.parse::<usize>()) {
        None => DEFAULT_TOP,
        Some(Ok(n)) if (1..=MAX_TOP).contains(&n) => n,
        Some(_) => return error(StatusCode::BAD_REQUEST, usage),
    };
    let by = match query.get("by").map(|b| By::parse(b)) {
        None => By::Recent,
        Some(Some(by)) => by,
        Some(None) => return error(StatusCode::BAD_REQUEST, usage),
    };
    if let Some(unknown) = query.keys().find(|k| !matches!(k.as_str(), "top" | "by")) {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("unknown parameter {unknown:?}; {usage}"),
        );
    }
    let snapshot = server.snapshot();
    let (rows, live) = top(&snapshot, by, n);
    let sessions: Vec<Value> = rows
        .iter()
        .map(|row| {
            let view = row.session.stats.view();
            json!({
                "session": &*row.session.id,
                "pool": &*row.pool,
                "node": &*row.session.pin.upstream,
                "requests": view.requests,
                "errors": view.errors,
                "in_flight": view.in_flight,
                "latency_ms": view.latency_ms,
                "last_activity": view.last_activity,
            })
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({ "by": by.as_str(), "top": n, "live": live, "sessions": sessions }),
    )
}

/// `GET /admin/sessions/{id}[?pool=P]` (`id` percent-encoded).
pub(super) fn one(
    server: &Server,
    encoded: &str,
    query: &HashMap<String, String>,
) -> AdminResponse {
    let Some(id) = percent_decode(encoded).filter(|id| !id.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "usage: /admin/sessions/{id} (percent-encoded UTF-8)",
        );
    };
    let snapshot = server.snapshot();
    let mut pools: Vec<_> = snapshot
        .pools()
        .filter(|p| query.get("pool").is_none_or(|want| want == p.name()))
        .collect();
    pools.sort_by(|a, b| a.name().cmp(b.name()));
    let Some((pool, session)) = pools
        .iter()
        .find_map(|p| p.pins.session(&id).map(|s| (p, s)))
    else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("no live session {id:?} (unknown, expired or deleted)"),
        );
    };
    // The owner binding as this replica knows it, when callers are identified.
    let user = snapshot
        .identities
        .as_ref()
        .and_then(|_| server.ctx.store.known_owner(pool.name(), &id));
    let mut body = json!({
        "session": &*session.id,
        "pool": pool.name(),
        "node": &*session.pin.upstream,
        "addr": &*session.pin.addr,
        "user": user.as_deref(),
    });
    if let (Value::Object(body), Ok(Value::Object(figures))) =
        (&mut body, serde_json::to_value(session.stats.view()))
    {
        body.extend(figures);
    }
    json_response(StatusCode::OK, &body)
}

/// `%XX` decoding of a path segment; `None` if it is not valid UTF-8 or a `%` is malformed.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb%20c").as_deref(), Some("a/b c"));
        assert_eq!(percent_decode("plain-id").as_deref(), Some("plain-id"));
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("bad%zz"), None);
        assert_eq!(percent_decode("%ff"), None, "not UTF-8");
    }
}
