//! The strict HTTP/1.1 request-head parser and chunked-body scanner (`proxy::h1::parse`,
//! `proxy::h1::chunked`), fed a client's bytes in arbitrary pieces, and the response-head parser
//! on the same bytes. Input: byte 0 is the number of cuts (low 4 bits), then two bytes per cut,
//! then the stream. Checked: no panic; reading the head from pieces gives the same head (or the
//! same refusal) as reading it whole, and leaves the same bytes after it; a head is within
//! `MAX_HEAD_BYTES`; a chunked framing never comes with a `Content-Length`; the chunked scanner
//! finds the same end, the same data and the same error in any split.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sessiongate::proxy::h1::chunked::Chunked;
use sessiongate::proxy::h1::parse::{request, response, Framing, Parsed, MAX_HEAD_BYTES};

/// The head (as text, for comparison), its length and what follows it; `None` while partial.
type Head = Option<(String, usize, Vec<u8>)>;

fn read_head(stream: &[u8], cuts: &[usize]) -> Result<Head, String> {
    let mut buf = BytesMut::new();
    let mut from = 0;
    for &to in cuts.iter().chain(std::iter::once(&stream.len())) {
        buf.extend_from_slice(&stream[from..to]);
        from = to;
        match request(&mut buf) {
            Ok(Parsed::Partial) => assert!(buf.len() < MAX_HEAD_BYTES),
            Ok(Parsed::Complete(head, len)) => {
                assert!(len <= MAX_HEAD_BYTES);
                if head.framing == Framing::Chunked {
                    assert!(!head.headers.contains_key(http::header::CONTENT_LENGTH));
                }
                let mut rest = buf.to_vec();
                rest.extend_from_slice(&stream[from..]);
                return Ok(Some((format!("{head:?}"), len, rest)));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(None)
}

/// The chunk data, where the body ended (bytes of it used) and any error.
fn scan(body: &[u8], cuts: &[usize]) -> (Vec<u8>, Option<usize>, Option<String>) {
    let mut chunked = Chunked::new();
    let mut data = Vec::new();
    let (mut from, mut used) = (0, 0);
    for &to in cuts.iter().chain(std::iter::once(&body.len())) {
        match chunked.scan(&body[from..to], |d| data.extend_from_slice(d)) {
            Ok(progress) => {
                used += progress.used;
                if progress.done {
                    assert!(chunked.is_done());
                    return (data, Some(used), None);
                }
                assert_eq!(progress.used, to - from, "bytes left over before the end");
            }
            Err(e) => return (data, None, Some(e.to_string())),
        }
        from = to;
    }
    (data, None, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut_count, rest)) = data.split_first() else {
        return;
    };
    let cut_bytes = usize::from(cut_count & 0x0f) * 2;
    if rest.len() < cut_bytes {
        return;
    }
    let (cut_spec, stream) = rest.split_at(cut_bytes);
    let mut cuts: Vec<usize> = cut_spec
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (stream.len() + 1))
        .collect();
    cuts.sort_unstable();

    let _ = response(stream, cut_count & 0x80 != 0);

    let whole = read_head(stream, &[]);
    let pieces = read_head(stream, &cuts);
    // A refusal may come earlier from pieces (the parser refuses as soon as it can), but a head
    // read whole is read the same from pieces.
    match (&whole, &pieces) {
        (Ok(w), Ok(p)) => assert_eq!(w, p, "cuts {cuts:?}"),
        (Err(_), Err(_)) => {}
        _ => panic!("whole {whole:?}, pieces {pieces:?}, cuts {cuts:?}"),
    }

    // The chunked scanner on whatever follows the head (or on all of it, if there is no head).
    let body = match &whole {
        Ok(Some((_, _, rest))) => rest.as_slice(),
        _ => stream,
    };
    let body_cuts: Vec<usize> = cuts
        .iter()
        .map(|c| c % (body.len() + 1))
        .collect::<Vec<_>>();
    let mut body_cuts = body_cuts;
    body_cuts.sort_unstable();
    let one = scan(body, &[]);
    let many = scan(body, &body_cuts);
    assert_eq!(one.1, many.1, "end differs, cuts {body_cuts:?}");
    assert_eq!(
        one.2.is_some(),
        many.2.is_some(),
        "error differs, cuts {body_cuts:?}"
    );
    if one.2.is_none() {
        assert_eq!(one.0, many.0, "data differs, cuts {body_cuts:?}");
    }
});
