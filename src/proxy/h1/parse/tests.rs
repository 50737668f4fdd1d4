//! Table tests of the strict request and response heads: the classic smuggling vectors
//! (CL.TE, TE.CL, TE.TE), line endings, folding, lengths and sizes.

use super::*;

fn req(raw: &str) -> Result<Parsed<RequestHead>, HeadError> {
    request(&mut BytesMut::from(raw.as_bytes()))
}

fn complete(raw: &str) -> (RequestHead, usize) {
    match req(raw) {
        Ok(Parsed::Complete(head, len)) => (head, len),
        other => panic!("{raw:?}: {other:?}"),
    }
}

#[test]
fn ordinary_requests_parse_with_their_framing() {
    let cases: &[(&str, Framing, bool)] = &[
        (
            "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            Framing::Length(0),
            true,
        ),
        (
            "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
            Framing::Length(5),
            true,
        ),
        (
            "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            Framing::Length(5),
            true,
        ),
        (
            "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            Framing::Chunked,
            true,
        ),
        (
            "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n",
            Framing::Chunked,
            true,
        ),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            Framing::Length(0),
            false,
        ),
        ("GET / HTTP/1.0\r\n\r\n", Framing::Length(0), false),
        (
            "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            Framing::Length(0),
            true,
        ),
    ];
    for (raw, framing, keep_alive) in cases {
        let (head, len) = complete(raw);
        assert_eq!(head.framing, *framing, "{raw:?}");
        assert_eq!(head.keep_alive, *keep_alive, "{raw:?}");
        assert_eq!(len, raw.find("\r\n\r\n").unwrap() + 4, "{raw:?}");
    }
}

#[test]
fn smuggling_vectors_and_malformed_heads_are_refused() {
    let cases: &[(&str, StatusCode)] = &[
        // CL.TE and TE.CL: both framings at once.
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n", StatusCode::BAD_REQUEST),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n", StatusCode::BAD_REQUEST),
        // TE.TE: obfuscated or doubled codings.
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", StatusCode::NOT_IMPLEMENTED),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n", StatusCode::NOT_IMPLEMENTED),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", StatusCode::NOT_IMPLEMENTED),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", StatusCode::NOT_IMPLEMENTED),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", StatusCode::NOT_IMPLEMENTED),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", StatusCode::BAD_REQUEST),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n", StatusCode::BAD_REQUEST),
        ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tchunked\r\n\r\n", StatusCode::OK),
        ("POST / HTTP/1.1\r\nHost: a\r\n Transfer-Encoding: chunked\r\n\r\n", StatusCode::BAD_REQUEST),
        ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", StatusCode::BAD_REQUEST),
        // Lengths.
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", StatusCode::BAD_REQUEST),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\n", StatusCode::BAD_REQUEST),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", StatusCode::BAD_REQUEST),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", StatusCode::BAD_REQUEST),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n", StatusCode::BAD_REQUEST),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5 5\r\n\r\n", StatusCode::BAD_REQUEST),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", StatusCode::BAD_REQUEST),
        ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n", StatusCode::BAD_REQUEST),
        // Line endings, folding, whitespace before the colon.
        ("GET / HTTP/1.1\nHost: a\n\n", StatusCode::BAD_REQUEST),
        ("GET / HTTP/1.1\r\nHost: a\n\r\n", StatusCode::BAD_REQUEST),
        ("GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", StatusCode::BAD_REQUEST),
        ("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n folded\r\n\r\n", StatusCode::BAD_REQUEST),
        ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", StatusCode::BAD_REQUEST),
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", StatusCode::BAD_REQUEST),
        ("GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", StatusCode::BAD_REQUEST),
        ("G\x01T / HTTP/1.1\r\nHost: a\r\n\r\n", StatusCode::BAD_REQUEST),
        ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", StatusCode::BAD_REQUEST),
    ];
    for (raw, status) in cases {
        let got = match req(raw) {
            Ok(Parsed::Complete(..)) => StatusCode::OK,
            Ok(Parsed::Partial) => panic!("{raw:?}: partial"),
            Err(e) => e.status(),
        };
        assert_eq!(got, *status, "{raw:?}");
    }
}

#[test]
fn heads_past_the_limits_answer_431() {
    let mut big = String::from("GET / HTTP/1.1\r\nHost: a\r\nX: ");
    big.push_str(&"a".repeat(MAX_HEAD_BYTES));
    assert_eq!(req(&big).unwrap_err(), HeadError::TooLarge);
    let mut many = String::from("GET / HTTP/1.1\r\n");
    for i in 0..=MAX_HEADERS {
        many.push_str(&format!("X-{i}: 1\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(req(&many).unwrap_err(), HeadError::TooManyHeaders);
}

#[test]
fn a_partial_head_is_a_value() {
    assert!(matches!(
        req("GET / HTTP/1.1\r\nHost: a\r\n"),
        Ok(Parsed::Partial)
    ));
    assert!(matches!(req(""), Ok(Parsed::Partial)));
}

#[test]
fn upgrade_needs_the_connection_option_and_http11() {
    let raw = "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n";
    assert!(complete(raw).0.upgrade);
    assert!(
        !complete("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n")
            .0
            .upgrade
    );
}

#[test]
fn header_values_are_slices_of_the_buffer() {
    let mut buf =
        BytesMut::from(&b"GET /p?q=1 HTTP/1.1\r\nHost: a\r\nX-Session-Id: s1\r\n\r\nNEXT"[..]);
    let Ok(Parsed::Complete(head, _)) = request(&mut buf) else {
        panic!()
    };
    assert_eq!(&buf[..], b"NEXT");
    assert_eq!(head.uri.path(), "/p");
    assert_eq!(head.uri.query(), Some("q=1"));
    assert_eq!(head.headers["x-session-id"], "s1");
}

fn resp(raw: &str, head: bool) -> (Framing, bool) {
    match response(raw.as_bytes(), head) {
        Ok(Parsed::Complete(h, _)) => (h.framing, h.keep_alive),
        other => panic!("{raw:?}: {other:?}"),
    }
}

#[test]
fn response_framing_follows_rfc_9112_section_6_3() {
    let cases: &[(&str, bool, (Framing, bool))] = &[
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
            false,
            (Framing::Length(3), true),
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n",
            true,
            (Framing::Length(0), true),
        ),
        (
            "HTTP/1.1 204 No Content\r\n\r\n",
            false,
            (Framing::Length(0), true),
        ),
        (
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            false,
            (Framing::Length(0), true),
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
            (Framing::Chunked, true),
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            false,
            (Framing::Chunked, false),
        ),
        (
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            false,
            (Framing::UntilClose, false),
        ),
        (
            "HTTP/1.1 200 OK\r\n\r\n",
            false,
            (Framing::UntilClose, false),
        ),
        (
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            false,
            (Framing::Length(1), false),
        ),
        (
            "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
            false,
            (Framing::Length(1), false),
        ),
        (
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
            false,
            (Framing::Length(1), true),
        ),
    ];
    for (raw, head, want) in cases {
        assert_eq!(resp(raw, *head), *want, "{raw:?}");
    }
    assert!(response(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        false
    )
    .is_err());
    assert!(response(b"HTTP/1.1 2000 OK\r\n\r\n", false).is_err());
    assert!(matches!(
        response(b"HTTP/1.1 200 OK\r\n", false),
        Ok(Parsed::Partial)
    ));
}

#[test]
fn a_reason_phrase_with_obs_text_is_passed_on_not_a_panic() {
    // Found by the `http1_parse` fuzz target: httparse returns such a reason as a `""` outside
    // the buffer, and the offset arithmetic underflowed.
    let raw = b"HTTP/1.1 200 O\xee\xee\xecive\r\nContent-Length: 2\r\n\r\nok";
    let Ok(Parsed::Complete(head, len)) = response(raw, false) else {
        panic!("not parsed")
    };
    assert_eq!(&raw[head.reason.clone()], b"O\xee\xee\xecive");
    assert_eq!((head.framing, len), (Framing::Length(2), raw.len() - 2));
    for short in [&b"HTTP/1.1 200\r\n\r\n"[..], b"HTTP/1.1 204 \r\n\r\n"] {
        let Ok(Parsed::Complete(head, _)) = response(short, false) else {
            panic!("not parsed")
        };
        assert!(short[head.reason.clone()].is_empty());
    }
}
