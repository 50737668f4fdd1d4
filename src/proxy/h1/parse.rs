//! Strict HTTP/1.1 message heads (RFC 9112): a request head read from a client into typed parts
//! and its body framing, and an upstream's response head into what the relay needs. Parsing is
//! `httparse` plus the checks it leaves to its caller, because a proxy that accepts what its
//! upstream reads differently is a request-smuggling hole: both `Content-Length` and
//! `Transfer-Encoding`, differing or malformed lengths, a transfer coding other than a lone
//! `chunked`, bare CR or LF, obs-fold, whitespace before a colon and oversized heads are all
//! refused. An incomplete head is a value ([`Parsed::Partial`]), not an error.

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};

/// The largest request head accepted (request line and headers); larger answers 431.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The most header fields in a head; more answers 431.
pub const MAX_HEADERS: usize = 128;

/// How a message's body is delimited (RFC 9112 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes (0: no body).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// Why a request head was refused; its status is the answer (the connection then closes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("request head larger than {MAX_HEAD_BYTES} bytes")]
    TooLarge,
    #[error("more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("malformed request head: {0}")]
    Malformed(&'static str),
    #[error("transfer coding not implemented: only a lone `chunked` is forwarded")]
    UnsupportedCoding,
}

impl HeadError {
    pub fn status(&self) -> StatusCode {
        match self {
            HeadError::TooLarge | HeadError::TooManyHeaders => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            HeadError::Malformed(_) => StatusCode::BAD_REQUEST,
            HeadError::UnsupportedCoding => StatusCode::NOT_IMPLEMENTED,
        }
    }
}

/// A request head, parsed and checked.
#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The client keeps the connection open after this exchange (HTTP/1.1 without
    /// `Connection: close`, or HTTP/1.0 with `keep-alive`).
    pub keep_alive: bool,
    /// An HTTP/1.1 `Upgrade` request (`Connection: upgrade` and an `Upgrade` field).
    pub upgrade: bool,
}

/// What reading a head from the bytes so far gave.
#[derive(Debug)]
pub enum Parsed<T> {
    /// The head and the number of bytes it took.
    Complete(T, usize),
    /// Not a whole head yet.
    Partial,
}

/// Parse a request head from the start of `buf`, the connection's read buffer. A complete head
/// is split off it (what follows stays: a body, or pipelined requests); header values are
/// slices of those bytes, not copies.
pub fn request(buf: &mut BytesMut) -> Result<Parsed<RequestHead>, HeadError> {
    // Where each part of the head lies, found by httparse; the head is then split off the
    // buffer and its parts sliced out of it.
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let (len, method, target, version, count) = {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut fields);
        let len = match req.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
                return Err(HeadError::TooLarge)
            }
            Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
            Err(e) => return Err(HeadError::Malformed(httparse_why(e))),
        };
        if len > MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
        check_line_ends(&buf[..len])?;
        let at = |s: &[u8]| offset_in(buf, s) as u32;
        for (span, field) in spans.iter_mut().zip(req.headers.iter()) {
            *span = (
                at(field.name.as_bytes()),
                field.name.len() as u32,
                at(field.value),
                field.value.len() as u32,
            );
        }
        let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
            .map_err(|_| HeadError::Malformed("invalid method"))?;
        let target = req.path.unwrap_or_default().as_bytes();
        let target = (at(target) as usize, target.len());
        let version = match req.version {
            Some(1) => Version::HTTP_11,
            _ => Version::HTTP_10,
        };
        (len, method, target, version, req.headers.len())
    };
    let buf = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(buf.slice(target.0..target.0 + target.1))
        .map_err(|_| HeadError::Malformed("invalid request target"))?;
    let req_fields = spans[..count].iter().map(|&(n, nl, v, vl)| {
        let (n, v) = (n as usize, v as usize);
        (&buf[n..n + nl as usize], v..v + vl as usize)
    });

    let mut headers = HeaderMap::with_capacity(count);
    let mut lengths: Option<u64> = None;
    let mut chunked = false;
    let mut codings = 0usize;
    let mut hosts = 0usize;
    let mut conn = ConnectionTokens::default();
    for (name, value_at) in req_fields {
        let raw_value = &buf[value_at.clone()];
        let name = HeaderName::from_bytes(name)
            .map_err(|_| HeadError::Malformed("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(buf.slice(value_at))
            .map_err(|_| HeadError::Malformed("invalid header value"))?;
        if name == header::CONTENT_LENGTH {
            let n = content_length(raw_value)?;
            if lengths.is_some_and(|prior| prior != n) {
                return Err(HeadError::Malformed("differing Content-Length values"));
            }
            lengths = Some(n);
        } else if name == header::TRANSFER_ENCODING {
            for coding in list(raw_value) {
                // Anything after `chunked` means chunked was not the final coding.
                if chunked || !coding.eq_ignore_ascii_case(b"chunked") {
                    return Err(HeadError::UnsupportedCoding);
                }
                chunked = true;
                codings += 1;
            }
            if codings == 0 {
                return Err(HeadError::Malformed("empty Transfer-Encoding"));
            }
        } else if name == header::CONNECTION {
            conn.read(raw_value);
        } else if name == header::HOST {
            hosts += 1;
        }
        headers.append(name, value);
    }
    if hosts > 1 {
        return Err(HeadError::Malformed("more than one Host field"));
    }
    let framing = match (chunked, lengths) {
        (true, Some(_)) => {
            return Err(HeadError::Malformed(
                "both Content-Length and Transfer-Encoding",
            ))
        }
        (true, None) if version == Version::HTTP_10 => {
            return Err(HeadError::Malformed(
                "Transfer-Encoding in an HTTP/1.0 request",
            ))
        }
        (true, None) => Framing::Chunked,
        (false, n) => Framing::Length(n.unwrap_or(0)),
    };
    let keep_alive = match version {
        Version::HTTP_11 => !conn.close,
        _ => conn.keep_alive && !conn.close,
    };
    let upgrade =
        version == Version::HTTP_11 && conn.upgrade && headers.contains_key(header::UPGRADE);
    let head = RequestHead {
        method,
        uri,
        version,
        headers,
        framing,
        keep_alive,
        upgrade,
    };
    Ok(Parsed::Complete(head, len))
}

/// An upstream's response head: what the relay needs to answer the client and find the end of
/// the body. Header fields stay as raw ranges of the read buffer (the relay writes them on).
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    /// The status line's reason phrase, as the upstream sent it.
    pub reason: std::ops::Range<usize>,
    /// Every field as (name, value) ranges into the buffer it was parsed from.
    pub fields: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>,
    pub framing: Framing,
    /// The upstream keeps the connection open after this response.
    pub keep_alive: bool,
    /// The `Connection` field names other hop-by-hop fields (they are not passed on).
    pub connection_names_fields: bool,
}

/// Why an upstream's response head cannot be relayed (the client gets a 502).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    TooLarge,
    #[error("malformed response head: {0}")]
    Malformed(&'static str),
}

/// Parse an upstream's response head from the start of `buf`; `head_request`: the request was
/// `HEAD` (its response has no body whatever it says).
pub fn response(buf: &[u8], head_request: bool) -> Result<Parsed<ResponseHead>, ResponseError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut fields);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
            return Err(ResponseError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => return Err(ResponseError::Malformed(httparse_why(e))),
    };
    let status = resp
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(ResponseError::Malformed("invalid status code"))?;
    let at = |s: &[u8]| {
        let start = offset_in(buf, s);
        start..start + s.len()
    };
    // Read off the status line itself: httparse hands a reason phrase with obs-text bytes back
    // as a `""` that is not part of the buffer (found by the `http1_parse` fuzz target).
    let line_end = buf
        .iter()
        .position(|b| *b == b'\r' || *b == b'\n')
        .unwrap_or(0);
    let reason = STATUS_LINE_PREFIX.min(line_end)..line_end;
    let http10 = resp.version == Some(0);
    let mut length: Option<u64> = None;
    let mut chunked_last = false;
    let mut has_coding = false;
    let mut conn = ConnectionTokens::default();
    let mut ranges = Vec::with_capacity(resp.headers.len());
    for field in resp.headers.iter() {
        let name = field.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = content_length(field.value)
                .map_err(|_| ResponseError::Malformed("invalid Content-Length"))?;
            if length.is_some_and(|prior| prior != n) {
                return Err(ResponseError::Malformed("differing Content-Length values"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            for coding in list(field.value) {
                has_coding = true;
                chunked_last = coding.eq_ignore_ascii_case(b"chunked");
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            conn.read(field.value);
        }
        ranges.push((at(name), at(field.value)));
    }
    let bodiless = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    // RFC 9112 §6.3: a transfer coding overrides a length (and such a connection must not be
    // reused); a coding that does not end in chunked runs until the connection closes.
    let framing = match (bodiless, has_coding, chunked_last, length) {
        (true, ..) => Framing::Length(0),
        (false, true, true, _) => Framing::Chunked,
        (false, true, false, _) => Framing::UntilClose,
        (false, false, _, Some(n)) => Framing::Length(n),
        (false, false, _, None) => Framing::UntilClose,
    };
    let keep_alive = !conn.close
        && (!http10 || conn.keep_alive)
        && framing != Framing::UntilClose
        && !(has_coding && length.is_some());
    let head = ResponseHead {
        status,
        reason,
        fields: ranges,
        framing,
        keep_alive,
        connection_names_fields: conn.others,
    };
    Ok(Parsed::Complete(head, len))
}

/// `HTTP/1.1 200 `: where a status line's reason phrase starts.
const STATUS_LINE_PREFIX: usize = 13;

/// Where `part` starts in `buf`. Every non-empty part httparse returns is a slice of its input;
/// an empty one may not be (any place will do for it).
fn offset_in(buf: &[u8], part: &[u8]) -> usize {
    let start = (part.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
    match start <= buf.len() && start + part.len() <= buf.len() {
        true => start,
        false => 0,
    }
}

/// The `Connection` options that matter to framing and reuse.
#[derive(Default)]
struct ConnectionTokens {
    close: bool,
    keep_alive: bool,
    upgrade: bool,
    /// Options naming other fields.
    others: bool,
}

impl ConnectionTokens {
    fn read(&mut self, value: &[u8]) {
        for token in list(value) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if token.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            } else {
                self.others = true;
            }
        }
    }
}

/// The non-empty elements of a comma-separated field value, trimmed of spaces and tabs.
pub fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(|item| item.trim_ascii())
        .filter(|item| !item.is_empty())
}

/// A `Content-Length` value: digits only (no sign, no spaces inside, no list: hyper refuses
/// `5, 5` too), without overflow. Repeated fields must agree (checked by the caller).
fn content_length(value: &[u8]) -> Result<u64, HeadError> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(HeadError::Malformed("invalid Content-Length"));
    }
    Ok(value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Every line of a head must end in CRLF: a bare CR or LF is read differently by different
/// parsers (httparse itself accepts a bare LF).
fn check_line_ends(head: &[u8]) -> Result<(), HeadError> {
    let mut prev = 0u8;
    for (i, &b) in head.iter().enumerate() {
        match b {
            b'\n' if prev != b'\r' => return Err(HeadError::Malformed("bare LF in head")),
            b'\r' if head.get(i + 1) != Some(&b'\n') => {
                return Err(HeadError::Malformed("bare CR in head"))
            }
            _ => {}
        }
        prev = b;
    }
    Ok(())
}

fn httparse_why(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name (obs-fold or whitespace before colon?)",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token",
        httparse::Error::TooManyHeaders => "too many header fields",
        httparse::Error::Version => "invalid HTTP version",
    }
}

#[cfg(test)]
mod tests;
