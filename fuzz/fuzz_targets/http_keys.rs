//! HTTP key extraction (`key::http::HttpKeys`): a request head built from structured input (a
//! URI, headers biased towards the ones keys read, a peer address, a caller), read by every
//! source kind: the demo config's header, cookie, query and path keys, client IP, identity,
//! and a listener whose header, cookie, query and path template come from the input. Checked:
//! no panic; a key is a non-empty slice of the request itself (no copy, nothing made up); a
//! header key is the header's value, a query key holds no `&`, a path key no `/`, a cookie
//! key no `;`; the source named for the access log is the one the key came from; an owned
//! session is always a plain key.
#![no_main]

use std::net::IpAddr;
use std::path::Path;
use std::sync::LazyLock;

use arbitrary::Arbitrary;
use http::{HeaderName, HeaderValue, Request};
use libfuzzer_sys::fuzz_target;
use sessiongate::config::{Config, KeySource, PathTemplate};
use sessiongate::key::http::{is_plain_key, HttpKeys, KeyBytes, RequestHead};

/// The demo config's web listener keys, as `config/demo.yaml` writes them.
const CONFIG: &str = "
listeners:
  - name: web
    listen: 127.0.0.1:0
    protocol: http
    pool: web
    key:
      - header: X-Session-Id
      - cookie: session_id
      - query: session
      - path: /sessions/{key}
      - path: /v1/users/{key}/messages
      - client_ip: true
pools:
  web:
    upstreams:
      - { name: web-1, addr: 127.0.0.1:1 }
";

/// One listener per source kind, then all of them in order (the first present wins).
static FIXED: LazyLock<Vec<HttpKeys>> = LazyLock::new(|| {
    let config = Config::parse(CONFIG, Path::new("fuzz.yaml")).expect("config");
    let mut sources = config.listeners[0].key.clone();
    sources.push(KeySource::Identity);
    let mut all: Vec<HttpKeys> = sources
        .iter()
        .map(|s| HttpKeys::from_config(std::slice::from_ref(s)))
        .collect();
    all.push(HttpKeys::from_config(&sources));
    all
});

#[derive(Arbitrary, Debug)]
enum Name<'a> {
    SessionId,
    Cookie,
    Custom,
    Other(&'a str),
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    uri: &'a str,
    headers: Vec<(Name<'a>, &'a [u8])>,
    peer: IpAddr,
    caller: Option<&'a str>,
    /// The input's own listener: a header, cookie and query parameter name and a path prefix.
    header: &'a str,
    cookie: String,
    query: String,
    path: Vec<String>,
}

fuzz_target!(|input: Input<'_>| {
    let Ok(request) = Request::builder().uri(input.uri).body(()) else {
        return;
    };
    let (mut parts, ()) = request.into_parts();
    let custom_header = HeaderName::from_bytes(input.header.as_bytes()).ok();
    for (name, value) in &input.headers {
        let name = match name {
            Name::SessionId => HeaderName::from_static("x-session-id"),
            Name::Cookie => http::header::COOKIE,
            Name::Custom => match &custom_header {
                Some(h) => h.clone(),
                None => continue,
            },
            Name::Other(n) => match HeaderName::from_bytes(n.as_bytes()) {
                Ok(h) => h,
                Err(_) => continue,
            },
        };
        if let Ok(value) = HeaderValue::from_bytes(value) {
            parts.headers.append(name, value);
        }
    }
    let head = RequestHead {
        uri: &parts.uri,
        headers: &parts.headers,
        peer: input.peer,
        caller: input.caller,
    };

    for keys in FIXED.iter() {
        check(keys, &head);
    }
    let mut sources = Vec::new();
    if let Some(h) = custom_header {
        sources.push(KeySource::Header(h));
    }
    sources.push(KeySource::Cookie(input.cookie));
    sources.push(KeySource::Query(input.query));
    sources.push(KeySource::Path(PathTemplate { prefix: input.path }));
    for source in &sources {
        check(&HttpKeys::from_config(std::slice::from_ref(source)), &head);
    }
    check(&HttpKeys::from_config(&sources), &head);
});

/// Is `part` a slice of the request head's URI, header values or caller?
fn borrowed_from_head(part: &[u8], head: &RequestHead<'_>) -> bool {
    let within = |whole: &[u8]| {
        let range = whole.as_ptr_range();
        range.start <= part.as_ptr() && part.as_ptr_range().end <= range.end
    };
    within(head.uri.path().as_bytes())
        || head.uri.query().is_some_and(|q| within(q.as_bytes()))
        || head.headers.values().any(|v| within(v.as_bytes()))
        || head.caller.is_some_and(|c| within(c.as_bytes()))
}

fn check(keys: &HttpKeys, head: &RequestHead<'_>) {
    let key = keys.extract(head);
    assert_eq!(keys.source_of(head).is_some(), key.is_some());
    let keyed = keys.extract_keyed(head);
    assert_eq!(
        keyed.as_ref().map(|(k, _)| k.with(<[u8]>::to_vec)),
        key.as_ref().map(|k| k.with(<[u8]>::to_vec))
    );
    if let Some(KeyBytes::Borrowed(bytes)) = &key {
        assert!(borrowed_from_head(bytes, head), "key not from the request");
        let source = keys.source_of(head).expect("a source").to_string();
        // The caller's identity is never empty where it is known (a token's or certificate's).
        assert!(
            !bytes.is_empty() || source == "identity",
            "empty key from {source}"
        );
        if source.starts_with("query") {
            assert!(!bytes.contains(&b'&'));
        } else if source.starts_with("path") {
            assert!(!bytes.contains(&b'/'));
        } else if source.starts_with("cookie") {
            assert!(!bytes.contains(&b';'));
        } else if let Some(name) = source.strip_prefix("header ") {
            let value = head.headers.get(name).expect("the header").as_bytes();
            assert_eq!(*bytes, value);
        }
    }
    if let Ok(Some(session)) = keys.owned_session(head) {
        assert!(is_plain_key(session));
        assert!(borrowed_from_head(session, head));
    }
}
