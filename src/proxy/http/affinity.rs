//! Learned affinity for HTTP: sessions whose ids the upstream issues (MCP's `Mcp-Session-Id`,
//! a session cookie) are pinned to the upstream whose response named them, in the pool's pin
//! table, and requests carrying such a key follow the pin instead of the ring. What to do when
//! the pinned upstream is gone, and what a response teaches, are pure functions here.

use std::sync::Arc;

use http::{header, HeaderMap, Method, StatusCode};

use crate::config::{LearnSource, OnOwnerDown};
use crate::sessions::Pin;
use crate::snapshot::Pool;
use crate::upstream::Upstream;

/// The longest session id learned from a response; longer values are not pinned (ids are
/// short; this bounds what an upstream can make the pin table hold).
pub const MAX_LEARNED_BYTES: usize = 512;

/// Where a request's pinned key points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinState {
    /// Not pinned: the ring decides.
    Unpinned,
    /// An upstream of the pool that can serve (draining ones included: pinned work continues).
    Live,
    /// An upstream a reload removed that still drains.
    Retired,
    /// Down, ejected, or removed and done draining.
    Gone,
}

/// What to do with a request, given its pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The ring, as for any key.
    Ring,
    /// The pinned upstream.
    Pinned,
    /// Drop the pin, then the ring (`on_owner_down: failover`).
    Replace,
    /// Drop the pin and answer 404: the client starts a new session (`not_found`).
    NotFound,
    /// 503; the pin stays (`error`).
    Unavailable,
}

pub fn placement(pin: PinState, on_owner_down: OnOwnerDown) -> Placement {
    match (pin, on_owner_down) {
        (PinState::Unpinned, _) => Placement::Ring,
        (PinState::Live | PinState::Retired, _) => Placement::Pinned,
        (PinState::Gone, OnOwnerDown::Failover) => Placement::Replace,
        (PinState::Gone, OnOwnerDown::NotFound) => Placement::NotFound,
        (PinState::Gone, OnOwnerDown::Error) => Placement::Unavailable,
    }
}

/// The upstream a request goes to.
pub enum Target {
    /// `pool.upstreams[i]`.
    Index(usize),
    /// Removed by a reload, still serving its pinned sessions.
    Retired(Arc<Upstream>),
}

/// The pin of `key` in `pool` (read once), and what it points at when that upstream serves.
pub fn lookup(pool: &Pool, key: &str) -> (PinState, Option<(Target, Pin)>) {
    let Some(pin) = pool.pins.get(key) else {
        return (PinState::Unpinned, None);
    };
    if let Some(i) = pool
        .upstreams
        .iter()
        .position(|u| *u.name() == *pin.upstream)
    {
        return match pool.upstreams[i].state.is_available() {
            true => (PinState::Live, Some((Target::Index(i), pin))),
            false => (PinState::Gone, None),
        };
    }
    match pool.pins.retired(&pin.upstream) {
        Some(u) if u.state.is_available() => (PinState::Retired, Some((Target::Retired(u), pin))),
        _ => (PinState::Gone, None),
    }
}

/// The session a response names, by the listener's `learn:` sources in order.
pub fn learned<'h>(sources: &[LearnSource], headers: &'h HeaderMap) -> Option<&'h [u8]> {
    sources.iter().find_map(|source| {
        let value = match source {
            LearnSource::ResponseHeader(name) => headers.get(name).map(|v| v.as_bytes()),
            LearnSource::SetCookie(name) => headers
                .get_all(header::SET_COOKIE)
                .iter()
                .find_map(|v| set_cookie_value(v.as_bytes(), name.as_bytes())),
        }?;
        (!value.is_empty() && value.len() <= MAX_LEARNED_BYTES).then_some(value)
    })
}

/// The value a `Set-Cookie` header gives cookie `name`, unless it deletes the cookie.
fn set_cookie_value<'h>(header: &'h [u8], name: &[u8]) -> Option<&'h [u8]> {
    let mut parts = header.split(|&b| b == b';');
    let pair = parts.next()?;
    let eq = pair.iter().position(|&b| b == b'=')?;
    if trim(&pair[..eq]) != name {
        return None;
    }
    let deletes = parts.any(|attr| {
        let attr = trim(attr);
        let Some((key, value)) = attr.split_at_checked(8) else {
            return false;
        };
        key.eq_ignore_ascii_case(b"max-age=")
            && std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|seconds| seconds <= 0)
    });
    let value = trim(&pair[eq + 1..]);
    let value = value
        .strip_prefix(b"\"")
        .and_then(|v| v.strip_suffix(b"\""))
        .unwrap_or(value);
    (!deletes).then_some(value)
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// Does this answer to a request for a pinned session end the session? A `DELETE` the upstream
/// accepted (2xx) or whose session it no longer has (404); a 405 means it keeps the session.
pub fn ends_session(method: &Method, status: StatusCode) -> bool {
    method == Method::DELETE && (status.is_success() || status == StatusCode::NOT_FOUND)
}

/// Pin `session` to `upstream` unless it already is; true if the pin is new or moved.
pub fn learn(pool: &Pool, session: &str, upstream: &Upstream) -> bool {
    let pin = Pin {
        upstream: Arc::from(upstream.name()),
        addr: Arc::from(upstream.addr()),
    };
    if pool.pins.get(session).as_ref() == Some(&pin) {
        return false;
    }
    pool.pins.pin(session, pin);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn placement_by_pin_and_rule() {
        use OnOwnerDown::*;
        use PinState::*;
        let cases = [
            (Unpinned, Error, Placement::Ring),
            (Unpinned, NotFound, Placement::Ring),
            (Live, Failover, Placement::Pinned),
            (Retired, NotFound, Placement::Pinned),
            (Gone, Failover, Placement::Replace),
            (Gone, NotFound, Placement::NotFound),
            (Gone, Error, Placement::Unavailable),
        ];
        for (pin, rule, expected) in cases {
            assert_eq!(placement(pin, rule), expected, "{pin:?} {rule:?}");
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn what_a_response_teaches() {
        let mcp = LearnSource::ResponseHeader(http::HeaderName::from_static("mcp-session-id"));
        let cookie = LearnSource::SetCookie("SESSIONID".into());
        let both = [mcp.clone(), cookie.clone()];
        let long = "x".repeat(MAX_LEARNED_BYTES + 1);
        type Case<'a> = (&'a [LearnSource], Vec<(&'a str, &'a str)>, Option<&'a str>);
        let cases: [Case; 10] = [
            (&both, vec![("Mcp-Session-Id", "abc")], Some("abc")),
            (
                &both,
                vec![("set-cookie", "SESSIONID=s1; Path=/; HttpOnly")],
                Some("s1"),
            ),
            (
                &both,
                vec![
                    ("set-cookie", "other=1"),
                    ("set-cookie", " SESSIONID = \"q\" "),
                ],
                Some("q"),
            ),
            (
                &both,
                vec![("mcp-session-id", "h"), ("set-cookie", "SESSIONID=c")],
                Some("h"),
            ),
            (
                &[cookie.clone(), mcp.clone()],
                vec![("mcp-session-id", "h"), ("set-cookie", "SESSIONID=c")],
                Some("c"),
            ),
            (
                &both,
                vec![("set-cookie", "SESSIONID=gone; Max-Age=0")],
                None,
            ),
            (&both, vec![("set-cookie", "SESSIONIDX=1")], None),
            (&both, vec![("mcp-session-id", "")], None),
            (&both, vec![("mcp-session-id", long.as_str())], None),
            (&[cookie], vec![("mcp-session-id", "h")], None),
        ];
        for (sources, pairs, expected) in cases {
            let map = headers(&pairs);
            let got = learned(sources, &map).map(|v| std::str::from_utf8(v).unwrap());
            assert_eq!(got, expected, "{pairs:?}");
        }
    }

    #[test]
    fn which_answers_end_a_session() {
        let cases = [
            (Method::DELETE, 200, true),
            (Method::DELETE, 204, true),
            (Method::DELETE, 404, true),
            (Method::DELETE, 405, false),
            (Method::DELETE, 500, false),
            (Method::GET, 404, false),
            (Method::POST, 200, false),
        ];
        for (method, status, expected) in cases {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(ends_session(&method, status), expected, "{method} {status}");
        }
    }
}
