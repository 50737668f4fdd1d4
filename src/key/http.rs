//! HTTP key sources: header, cookie, query parameter and path segment. Each borrows the key
//! from the request head, so extraction allocates nothing; keys are raw bytes as sent (not
//! percent-decoded), which is all consistent hashing needs.

use std::net::IpAddr;

use ::http::{HeaderMap, HeaderName, Uri};

use crate::config::{KeySource, PathTemplate};

/// What an HTTP key source may look at.
pub struct RequestHead<'r> {
    pub uri: &'r Uri,
    pub headers: &'r HeaderMap,
    pub peer: IpAddr,
    /// The caller's identity as a key (`tenant/user`), when the listener knows it.
    pub caller: Option<&'r str>,
}

/// One place a key may be found in a request.
pub trait HttpKeySource: Send + Sync + std::fmt::Debug {
    /// The key, if this source holds a non-empty one.
    fn extract<'r>(&self, head: &RequestHead<'r>) -> Option<KeyBytes<'r>>;

    /// Does this source name a session (which can have an owner), rather than the caller?
    fn names_a_session(&self) -> bool {
        true
    }

    /// Every value this source finds, as sent (a header or parameter may repeat, and an
    /// upstream may read another copy than the first): for ownership checks, not routing.
    fn values<'r>(&self, head: &RequestHead<'r>) -> Vec<&'r [u8]> {
        match self.extract(head) {
            Some(KeyBytes::Borrowed(b)) => vec![b],
            _ => Vec::new(),
        }
    }
}

/// The longest session key accepted where sessions have owners.
pub const MAX_OWNED_KEY_BYTES: usize = 512;

/// May `key` name an owned session? Only characters no upstream decodes into others (no
/// percent-encoding, quotes, `+` or separators), so the proxy and the upstream read the same id.
pub fn is_plain_key(key: &[u8]) -> bool {
    !key.is_empty()
        && key.len() <= MAX_OWNED_KEY_BYTES
        && key
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~:@=".contains(b))
}

/// A key borrowed from the request, or formatted from something that is not bytes (an IP).
pub enum KeyBytes<'r> {
    Borrowed(&'r [u8]),
    Ip(IpAddr),
}

impl KeyBytes<'_> {
    /// Run `f` on the key's bytes (an IP is formatted on the stack).
    pub fn with<T>(&self, f: impl FnOnce(&[u8]) -> T) -> T {
        match self {
            KeyBytes::Borrowed(b) => f(b),
            KeyBytes::Ip(ip) => {
                let mut buf = [0u8; 64];
                let len = {
                    use std::io::Write;
                    let mut cursor = std::io::Cursor::new(&mut buf[..]);
                    let _ = write!(cursor, "{ip}");
                    cursor.position() as usize
                };
                f(&buf[..len])
            }
        }
    }
}

#[derive(Debug)]
struct Header(HeaderName);

impl HttpKeySource for Header {
    fn extract<'r>(&self, head: &RequestHead<'r>) -> Option<KeyBytes<'r>> {
        let v = head.headers.get(&self.0)?.as_bytes();
        (!v.is_empty()).then_some(KeyBytes::Borrowed(v))
    }

    fn values<'r>(&self, head: &RequestHead<'r>) -> Vec<&'r [u8]> {
        head.headers
            .get_all(&self.0)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .collect()
    }
}

#[derive(Debug)]
struct Cookie(String);

impl Cookie {
    /// Every value of this cookie, quotes removed.
    fn all<'r>(&self, head: &RequestHead<'r>) -> impl Iterator<Item = &'r [u8]> + use<'r, '_> {
        // HTTP/2 may split cookies over several headers; look at all of them.
        head.headers
            .get_all(::http::header::COOKIE)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
            .filter_map(|pair| {
                let pair = pair.trim_ascii();
                let eq = pair.iter().position(|&b| b == b'=')?;
                let (name, value) = (&pair[..eq], &pair[eq + 1..]);
                let value = value
                    .strip_prefix(b"\"")
                    .and_then(|v| v.strip_suffix(b"\""))
                    .unwrap_or(value);
                (name.trim_ascii() == self.0.as_bytes()).then_some(value)
            })
    }
}

impl HttpKeySource for Cookie {
    fn extract<'r>(&self, head: &RequestHead<'r>) -> Option<KeyBytes<'r>> {
        self.all(head)
            .find(|value| !value.is_empty())
            .map(KeyBytes::Borrowed)
    }

    fn values<'r>(&self, head: &RequestHead<'r>) -> Vec<&'r [u8]> {
        self.all(head).collect()
    }
}

#[derive(Debug)]
struct Query(String);

impl HttpKeySource for Query {
    fn extract<'r>(&self, head: &RequestHead<'r>) -> Option<KeyBytes<'r>> {
        head.uri.query()?.split('&').find_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            (name == self.0 && !value.is_empty()).then_some(KeyBytes::Borrowed(value.as_bytes()))
        })
    }

    fn values<'r>(&self, head: &RequestHead<'r>) -> Vec<&'r [u8]> {
        let Some(query) = head.uri.query() else {
            return Vec::new();
        };
        // An upstream decodes names too (`sess%69on`, `+`): where sessions have owners, such a
        // query cannot be read the same way on both sides, so it counts as naming a session
        // ambiguously (an empty value fails the plain-key check).
        if query.contains(['%', '+']) {
            return vec![b""];
        }
        query
            .split('&')
            .filter_map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                (name == self.0).then_some(value.as_bytes())
            })
            .collect()
    }
}

#[derive(Debug)]
struct PathSegment(PathTemplate);

impl HttpKeySource for PathSegment {
    fn extract<'r>(&self, head: &RequestHead<'r>) -> Option<KeyBytes<'r>> {
        let mut segments = head.uri.path().strip_prefix('/')?.split('/');
        for literal in &self.0.prefix {
            if segments.next()? != literal {
                return None;
            }
        }
        let key = segments.next()?;
        (!key.is_empty()).then_some(KeyBytes::Borrowed(key.as_bytes()))
    }
}

#[derive(Debug)]
struct ClientIp;

impl HttpKeySource for ClientIp {
    fn extract<'r>(&self, head: &RequestHead<'r>) -> Option<KeyBytes<'r>> {
        Some(KeyBytes::Ip(head.peer))
    }

    fn names_a_session(&self) -> bool {
        false
    }
}

#[derive(Debug)]
struct Caller;

impl HttpKeySource for Caller {
    fn extract<'r>(&self, head: &RequestHead<'r>) -> Option<KeyBytes<'r>> {
        head.caller.map(|c| KeyBytes::Borrowed(c.as_bytes()))
    }

    fn names_a_session(&self) -> bool {
        false
    }
}

/// A listener's ordered key sources; the first that yields a key wins.
#[derive(Debug, Default)]
pub struct HttpKeys {
    sources: Vec<Box<dyn HttpKeySource>>,
    /// Each source as written (`header X-Session-Id`), in `sources` order: for the access log.
    names: Vec<std::sync::Arc<str>>,
    /// "header X-Session-Id, cookie session_id": for the 400 answer under `no_key: reject`.
    pub described: String,
}

impl HttpKeys {
    /// Build from validated config; TCP-only sources (SNI) are not HTTP sources and are skipped.
    pub fn from_config(sources: &[KeySource]) -> HttpKeys {
        let mut out: Vec<Box<dyn HttpKeySource>> = Vec::new();
        let mut described = Vec::new();
        for s in sources {
            let boxed: Box<dyn HttpKeySource> = match s {
                KeySource::Header(h) => Box::new(Header(h.clone())),
                KeySource::Cookie(c) => Box::new(Cookie(c.clone())),
                KeySource::Query(q) => Box::new(Query(q.clone())),
                KeySource::Path(p) => Box::new(PathSegment(p.clone())),
                KeySource::ClientIp => Box::new(ClientIp),
                KeySource::Identity => Box::new(Caller),
                KeySource::Sni => continue,
            };
            described.push(s.to_string());
            out.push(boxed);
        }
        HttpKeys {
            sources: out,
            names: described
                .iter()
                .map(|d| std::sync::Arc::from(d.as_str()))
                .collect(),
            described: described.join(", "),
        }
    }

    pub fn extract<'r>(&self, head: &RequestHead<'r>) -> Option<KeyBytes<'r>> {
        self.sources.iter().find_map(|s| s.extract(head))
    }

    /// The one session the request names, where sessions have owners: every value of every
    /// session source present must be the same plain key (see [`is_plain_key`]), so the proxy
    /// checks the id the upstream will read. `Ok(None)`: no session named.
    pub fn owned_session<'r>(
        &self,
        head: &RequestHead<'r>,
    ) -> Result<Option<&'r [u8]>, &'static str> {
        let mut found: Option<&[u8]> = None;
        for source in self.sources.iter().filter(|s| s.names_a_session()) {
            for value in source.values(head) {
                if !is_plain_key(value) {
                    return Err(
                        "a session key must be 1 to 512 letters, digits or -_.~:@= (no encoding)",
                    );
                }
                match found {
                    Some(seen) if seen != value => {
                        return Err("the request names more than one session");
                    }
                    _ => found = Some(value),
                }
            }
        }
        Ok(found)
    }

    /// Like [`HttpKeys::extract`], also saying whether the key names a session (header,
    /// cookie, query, path) rather than the caller (client IP, identity).
    /// The source the key of `head` comes from (`header X-Session-Id`), if any: what the access
    /// log names instead of the key's value.
    pub fn source_of(&self, head: &RequestHead<'_>) -> Option<&std::sync::Arc<str>> {
        let i = self
            .sources
            .iter()
            .position(|s| s.extract(head).is_some())?;
        self.names.get(i)
    }

    pub fn extract_keyed<'r>(&self, head: &RequestHead<'r>) -> Option<(KeyBytes<'r>, bool)> {
        self.sources
            .iter()
            .find_map(|s| s.extract(head).map(|k| (k, s.names_a_session())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KeySource;

    fn keys(sources: Vec<KeySource>) -> HttpKeys {
        HttpKeys::from_config(&sources)
    }

    fn extract(keys: &HttpKeys, uri: &str, headers: &[(&str, &str)]) -> Option<String> {
        let uri: Uri = uri.parse().unwrap();
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let head = RequestHead {
            uri: &uri,
            headers: &map,
            peer: "10.1.2.3".parse().unwrap(),
            caller: Some("acme/alice"),
        };
        keys.extract(&head)
            .map(|k| k.with(|b| String::from_utf8(b.to_vec()).unwrap()))
    }

    #[test]
    fn header_source() {
        let k = keys(vec![KeySource::Header(HeaderName::from_static(
            "x-session-id",
        ))]);
        assert_eq!(
            extract(&k, "/", &[("X-Session-Id", "abc")]).as_deref(),
            Some("abc")
        );
        assert_eq!(
            extract(&k, "/", &[("X-Session-Id", "")]),
            None,
            "empty is absent"
        );
        assert_eq!(extract(&k, "/", &[]), None);
    }

    #[test]
    fn cookie_source_across_split_headers() {
        let k = keys(vec![KeySource::Cookie("session_id".into())]);
        assert_eq!(
            extract(&k, "/", &[("cookie", "a=1; session_id=xyz; b=2")]).as_deref(),
            Some("xyz")
        );
        assert_eq!(
            extract(
                &k,
                "/",
                &[("cookie", "a=1"), ("cookie", "session_id=\"q\"")]
            )
            .as_deref(),
            Some("q")
        );
        assert_eq!(
            extract(&k, "/", &[("cookie", "my_session_id=no")]),
            None,
            "names match whole"
        );
    }

    #[test]
    fn query_source() {
        let k = keys(vec![KeySource::Query("session".into())]);
        assert_eq!(
            extract(&k, "/x?a=1&session=s%201&b", &[]).as_deref(),
            Some("s%201")
        );
        assert_eq!(extract(&k, "/x?sessions=1", &[]), None);
        assert_eq!(extract(&k, "/x", &[]), None);
    }

    #[test]
    fn path_source() {
        let k = keys(vec![KeySource::Path(PathTemplate {
            prefix: vec!["sessions".into()],
        })]);
        assert_eq!(
            extract(&k, "/sessions/s-42/messages", &[]).as_deref(),
            Some("s-42")
        );
        assert_eq!(extract(&k, "/sessions/", &[]), None);
        assert_eq!(extract(&k, "/users/s-42", &[]), None);
    }

    #[test]
    fn first_present_source_wins_and_client_ip_formats() {
        let k = keys(vec![
            KeySource::Header(HeaderName::from_static("x-session-id")),
            KeySource::Query("session".into()),
            KeySource::ClientIp,
        ]);
        assert_eq!(
            extract(&k, "/?session=q", &[("x-session-id", "h")]).as_deref(),
            Some("h")
        );
        assert_eq!(extract(&k, "/?session=q", &[]).as_deref(), Some("q"));
        assert_eq!(extract(&k, "/", &[]).as_deref(), Some("10.1.2.3"));
        assert_eq!(
            k.described,
            "header x-session-id, query parameter session, client IP"
        );
    }

    #[test]
    fn the_identity_is_a_key_that_names_no_session() {
        let k = keys(vec![
            KeySource::Header(HeaderName::from_static("x-session-id")),
            KeySource::Identity,
        ]);
        assert_eq!(extract(&k, "/", &[]).as_deref(), Some("acme/alice"));
        let uri: Uri = "/".parse().unwrap();
        let mut with_header = HeaderMap::new();
        with_header.insert("x-session-id", "s-1".parse().unwrap());
        let without = HeaderMap::new();
        let mut head = RequestHead {
            uri: &uri,
            headers: &with_header,
            peer: "10.1.2.3".parse().unwrap(),
            caller: Some("acme/alice"),
        };
        assert!(
            k.extract_keyed(&head).unwrap().1,
            "a header names a session"
        );
        head.headers = &without;
        assert!(!k.extract_keyed(&head).unwrap().1, "the caller does not");
    }
}
