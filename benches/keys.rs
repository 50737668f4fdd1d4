//! HTTP key extraction from a realistic request head: a header, a cookie, a path segment, a query
//! parameter, and the demo listener's four-source chain where only the last source matches.
//!
//! `cargo bench --bench keys` (well under a minute).

mod common;

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use sessiongate::config::{KeySource, PathTemplate};
use sessiongate::key::http::RequestHead;
use sessiongate::key::HttpKeys;

const SID: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

/// What a browser or SDK typically sends: a dozen headers, the session header among them.
fn headers(with_header: bool, with_cookie: bool) -> HeaderMap {
    let mut h = HeaderMap::new();
    let mut put = |k: &'static str, v: String| {
        h.append(
            HeaderName::from_static(k),
            HeaderValue::from_str(&v).unwrap(),
        );
    };
    put("host", "api.example.test".into());
    put("user-agent", "copilot-sdk/1.0 node/22".into());
    put("accept", "application/json, text/plain, */*".into());
    put("accept-encoding", "gzip, deflate, br".into());
    put("accept-language", "en-US,en;q=0.9".into());
    put("content-type", "application/json".into());
    put("content-length", "512".into());
    put(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
    );
    put(
        "authorization",
        "Bearer eyJhbGciOiJIUzI1NiJ9.e30.ZRrHA1JJJW8opsbCGfG_HACGpVUMN_a9IV7pAx_Zmeo".into(),
    );
    if with_cookie {
        put(
            "cookie",
            format!("theme=dark; _ga=GA1.2.3.4; session_id={SID}; lang=en"),
        );
    }
    if with_header {
        put("x-session-id", SID.into());
    }
    put(
        "x-request-id",
        "7b6f1c1e-2d7a-4b0c-9f57-2f1c2d3e4f50".into(),
    );
    h
}

fn bench_source(c: &mut Criterion, name: &str, sources: Vec<KeySource>, uri: &str, h: HeaderMap) {
    let keys = HttpKeys::from_config(&sources);
    let uri: Uri = uri.parse().unwrap();
    let peer: IpAddr = "10.1.2.3".parse().unwrap();
    let head = RequestHead {
        uri: &uri,
        headers: &h,
        peer,
        caller: None,
    };
    assert!(keys.extract(&head).is_some(), "{name}: no key found");
    c.bench_function(name, |b| {
        b.iter(|| {
            black_box(&keys)
                .extract(black_box(&head))
                .map(|k| k.with(|bytes| bytes.len()))
        })
    });
}

fn extraction(c: &mut Criterion) {
    let header = || KeySource::Header(HeaderName::from_static("x-session-id"));
    let cookie = || KeySource::Cookie("session_id".into());
    let query = || KeySource::Query("session".into());
    let path = || {
        KeySource::Path(PathTemplate {
            prefix: vec!["sessions".into()],
        })
    };
    bench_source(
        c,
        "key_header",
        vec![header()],
        "/v1/chat",
        headers(true, false),
    );
    bench_source(
        c,
        "key_cookie",
        vec![cookie()],
        "/v1/chat",
        headers(false, true),
    );
    bench_source(
        c,
        "key_path",
        vec![path()],
        &format!("/sessions/{SID}/messages"),
        headers(false, false),
    );
    bench_source(
        c,
        "key_query",
        vec![query()],
        &format!("/v1/chat?stream=true&session={SID}"),
        headers(false, false),
    );
    // The demo listener's chain (header, cookie, query, path) with the key only in the path.
    bench_source(
        c,
        "key_chain4_path_last",
        vec![header(), cookie(), query(), path()],
        &format!("/sessions/{SID}/messages"),
        headers(false, false),
    );
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = extraction
}
criterion_main!(benches);
