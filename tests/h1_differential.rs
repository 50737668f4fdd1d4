//! The owned HTTP/1.1 parser (`proxy::h1::parse` and `chunked`) against hyper's HTTP/1 server on
//! the same bytes: both must accept and reject the same inputs and find the same messages in
//! them (method, target, body), except where sessiongate is stricter on purpose (the
//! [`Stricter`] list, each a request-smuggling or ambiguity vector hyper lets through). Inputs
//! are the classic smuggling vectors plus heads generated from a grammar of their parts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use sessiongate::proxy::h1::chunked::Chunked;
use sessiongate::proxy::h1::parse::{self, Framing, Parsed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One message as a server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Message {
    method: String,
    target: String,
    body: Vec<u8>,
}

/// What a server made of some bytes: the messages it read, and how the input ended.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reading {
    messages: Vec<Message>,
    end: End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Every byte belonged to a whole message.
    Clean,
    /// The input stopped inside a message.
    Incomplete,
    /// A message was refused.
    Rejected,
}

/// sessiongate's reading: heads by `parse::request`, bodies by their framing.
fn ours(input: &[u8]) -> Reading {
    let mut buf = BytesMut::from(input);
    let mut messages = Vec::new();
    loop {
        if buf.is_empty() {
            return Reading {
                messages,
                end: End::Clean,
            };
        }
        let head = match parse::request(&mut buf) {
            Ok(Parsed::Complete(head, _)) => head,
            Ok(Parsed::Partial) => {
                return Reading {
                    messages,
                    end: End::Incomplete,
                }
            }
            Err(_) => {
                return Reading {
                    messages,
                    end: End::Rejected,
                }
            }
        };
        let body = match head.framing {
            Framing::Length(n) if (buf.len() as u64) < n => {
                return Reading {
                    messages,
                    end: End::Incomplete,
                }
            }
            Framing::Length(n) => buf.split_to(n as usize).to_vec(),
            Framing::Chunked => {
                let mut data = Vec::new();
                match Chunked::new().scan(&buf, |d| data.extend_from_slice(d)) {
                    Ok(p) if p.done => {
                        buf.advance(p.used);
                        data
                    }
                    Ok(_) => {
                        return Reading {
                            messages,
                            end: End::Incomplete,
                        }
                    }
                    Err(_) => {
                        return Reading {
                            messages,
                            end: End::Rejected,
                        }
                    }
                }
            }
            Framing::UntilClose => unreachable!("requests are never close-delimited"),
        };
        messages.push(Message {
            method: head.method.to_string(),
            target: head.uri.to_string(),
            body,
        });
        if !head.keep_alive {
            // The connection ends with this exchange; what follows is never read.
            return Reading {
                messages,
                end: End::Clean,
            };
        }
    }
}

/// hyper's reading: its HTTP/1 server on an in-memory connection, the input written and the
/// write side closed, every request's body read whole.
async fn hypers(input: &[u8]) -> Reading {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let truncated = Arc::new(AtomicBool::new(false));
    let (record, cut) = (seen.clone(), truncated.clone());
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let (record, cut) = (record.clone(), cut.clone());
        async move {
            let method = req.method().to_string();
            let target = req.uri().to_string();
            let body = match req.into_body().collect().await {
                Ok(body) => body.to_bytes().to_vec(),
                Err(e) => {
                    // The input ended inside this body (or the body was malformed).
                    cut.store(ended_early(&e), Ordering::Relaxed);
                    return Err(e);
                }
            };
            record.lock().unwrap().push(Message {
                method,
                target,
                body,
            });
            Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
        }
    });
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let conn = hyper::server::conn::http1::Builder::new()
        .half_close(true)
        .serve_connection(TokioIo::new(server), service);
    client.write_all(input).await.unwrap();
    client.shutdown().await.unwrap();
    let drain = tokio::spawn(async move {
        let mut sink = Vec::new();
        let _ = client.read_to_end(&mut sink).await;
    });
    let result = tokio::time::timeout(std::time::Duration::from_secs(5), conn)
        .await
        .expect("hyper finished");
    drain.await.unwrap();
    let messages = seen.lock().unwrap().clone();
    let end = match result {
        Ok(()) => End::Clean,
        Err(e) if e.is_incomplete_message() => End::Incomplete,
        Err(_) if truncated.load(Ordering::Relaxed) => End::Incomplete,
        Err(_) => End::Rejected,
    };
    Reading { messages, end }
}

/// A body error that is the input ending early (not a malformed body).
fn ended_early(e: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::UnexpectedEof;
        }
        source = s.source();
    }
    e.is_incomplete_message()
}

/// Where sessiongate refuses what hyper reads, on purpose.
#[derive(Debug)]
enum Stricter {
    /// Both `Content-Length` and `Transfer-Encoding` (CL.TE / TE.CL): RFC 9112 §6.1 allows a
    /// server to go on with chunked; a proxy must not, as the next hop may read the length.
    LengthAndCoding,
    /// A transfer coding other than a lone `chunked` (TE.TE obfuscations, `gzip, chunked`).
    NotLoneChunked,
    /// A bare LF ending a line: httparse accepts it, other servers do not.
    BareLf,
    /// More than one `Host`.
    TwoHosts,
    /// `Transfer-Encoding` on an HTTP/1.0 request.
    CodingOn10,
    /// A chunk extension with a byte outside VCHAR/SP/HTAB/obs-text.
    ExtensionByte,
}

fn stricter(input: &[u8]) -> Option<Stricter> {
    let text = String::from_utf8_lossy(input).to_ascii_lowercase();
    let head_end = text.find("\r\n\r\n").map_or(text.len(), |i| i + 4);
    let head = &text[..head_end];
    let has = |s: &str| head.contains(s);
    if has("content-length") && has("transfer-encoding") {
        return Some(Stricter::LengthAndCoding);
    }
    if has("transfer-encoding") {
        let lone = head
            .lines()
            .filter(|l| l.starts_with("transfer-encoding"))
            .map(|l| l.split_once(':').map_or("", |(_, v)| v.trim()))
            .collect::<Vec<_>>();
        if lone != ["chunked"] {
            return Some(Stricter::NotLoneChunked);
        }
        if head.starts_with("post / http/1.0") || head.contains(" http/1.0\r\n") {
            return Some(Stricter::CodingOn10);
        }
    }
    if input.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r') || input.first() == Some(&b'\n') {
        return Some(Stricter::BareLf);
    }
    if head.matches("\r\nhost:").count() > 1 {
        return Some(Stricter::TwoHosts);
    }
    if input
        .iter()
        .any(|b| *b < 0x20 && !matches!(b, b'\r' | b'\n' | b'\t'))
    {
        return Some(Stricter::ExtensionByte);
    }
    None
}

/// The same reading, or a rejection sessiongate makes on purpose (and then it read no more
/// than hyper did).
fn agree(input: &[u8], ours: &Reading, hypers: &Reading) -> Result<(), String> {
    if ours == hypers {
        return Ok(());
    }
    let on_purpose = stricter(input).is_some();
    if ours.end == End::Rejected && hypers.messages.starts_with(&ours.messages) && on_purpose {
        return Ok(());
    }
    Err(format!(
        "input {:?}\n  sessiongate: {ours:?}\n  hyper:       {hypers:?}",
        String::from_utf8_lossy(input)
    ))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_classic_vectors_read_the_same_or_are_refused_on_purpose() {
    let rt = runtime();
    let cases: &[&str] = &[
        "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhel",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\n",
        // CL.TE
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 13\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nSMUGGLED",
        // TE.CL
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
        // TE.TE
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-encoding: cow\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\n Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\tchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nX: y\r\n folded\r\n\r\n0\r\n\r\n",
        // Lengths
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5 5\r\n\r\nhello",
        // Chunk sizes
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
        // Line ends
        "GET / HTTP/1.1\nHost: a\n\n",
        "GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET / HTTP/1.0\r\n\r\n",
    ];
    let mut failures = Vec::new();
    for case in cases {
        let input = case.as_bytes();
        let (o, h) = (ours(input), rt.block_on(hypers(input)));
        if let Err(e) = agree(input, &o, &h) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A request assembled from generated parts, some of them malformed.
fn request_strategy() -> impl Strategy<Value = Vec<u8>> {
    let method = prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "G\x01T"]);
    let target = prop::sample::select(vec!["/", "/a?b=c", "*", "/%zz", "http://h/p", "/ a"]);
    let version = prop::sample::select(vec!["HTTP/1.1", "HTTP/1.0", "HTTP/1.2", "HTTP/2.0"]);
    let length = prop::sample::select(vec![
        None,
        Some("5"),
        Some("5, 5"),
        Some("5, 6"),
        Some("+5"),
        Some(" 5"),
        Some("0"),
        Some("18446744073709551616"),
    ]);
    let coding = prop::sample::select(vec![
        None,
        Some("chunked"),
        Some("Chunked"),
        Some("gzip, chunked"),
        Some("chunked, gzip"),
        Some("identity"),
        Some(""),
    ]);
    let extra = prop::sample::select(vec![
        "",
        "X-A: b\r\n",
        "X-A : b\r\n",
        "X-A: b\r\n c\r\n",
        "X-A: b\n",
        "Host: b\r\n",
        "X-A: \x7f\r\n",
        "Connection: close\r\n",
    ]);
    let body = prop::sample::select(vec![
        "",
        "hello",
        "5\r\nhello\r\n0\r\n\r\n",
        "5;e=\"v\"\r\nhello\r\n0\r\n\r\n",
        "5 \r\nhello\r\n0\r\n\r\n",
        "5\r\nhello\r\n0\r\nT: 1\r\n\r\n",
        "5\nhello\r\n0\r\n\r\n",
        "G\r\nhello\r\n0\r\n\r\n",
        "5\r\nhello",
    ]);
    let next = prop::bool::ANY;
    (method, target, version, length, coding, extra, body, next).prop_map(
        |(method, target, version, length, coding, extra, body, next)| {
            let mut s = format!("{method} {target} {version}\r\nHost: h\r\n");
            if let Some(l) = length {
                s.push_str(&format!("Content-Length: {l}\r\n"));
            }
            if let Some(c) = coding {
                s.push_str(&format!("Transfer-Encoding: {c}\r\n"));
            }
            s.push_str(extra);
            s.push_str("\r\n");
            s.push_str(body);
            if next {
                s.push_str("GET /next HTTP/1.1\r\nHost: h\r\n\r\n");
            }
            s.into_bytes()
        },
    )
}

#[test]
fn generated_requests_read_the_same_or_are_refused_on_purpose() {
    let rt = runtime();
    let mut runner = TestRunner::new(Config {
        cases: 3000,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&request_strategy(), |input| {
            let (o, h) = (ours(&input), rt.block_on(hypers(&input)));
            agree(&input, &o, &h).map_err(TestCaseError::fail)
        })
        .unwrap();
}

#[test]
fn any_split_of_a_chunked_body_reads_the_same() {
    let body = b"5;a=b\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: x\r\n\r\nNEXT";
    let whole = {
        let mut data = Vec::new();
        let p = Chunked::new()
            .scan(body, |d| data.extend_from_slice(d))
            .unwrap();
        (data, p.used)
    };
    proptest!(|(cuts in prop::collection::vec(0..body.len(), 0..8))| {
        let mut cuts = cuts;
        cuts.sort_unstable();
        let mut scanner = Chunked::new();
        let (mut data, mut used, mut at) = (Vec::new(), 0, 0);
        for cut in cuts.into_iter().chain([body.len()]) {
            if scanner.is_done() || cut < at {
                continue;
            }
            let p = scanner.scan(&body[at..cut], |d| data.extend_from_slice(d)).unwrap();
            used += p.used;
            at = cut;
        }
        prop_assert_eq!((data, used), whole.clone());
    });
}
