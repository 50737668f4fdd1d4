//! LSP-style framing for the Copilot CLI protocol: a block of `Name: value\r\n` header lines ended by
//! an empty line, of which `Content-Length` is required, then exactly that many bytes of JSON. This
//! module owns the pure header parser ([`parse_frame`], [`parse_header`]), the limits on header and
//! body sizes, the tokio [`FrameCodec`] that splits a byte stream into zero-copy JSON bodies, and
//! [`encode_frame`]. It knows nothing about JSON-RPC; see `super::message` for that.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::codec::{Decoder, Encoder};

/// Default cap on one frame's body (64 MiB).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;
/// Cap on the header block, terminating `\r\n\r\n` included (8 KiB).
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// The most buffer a partial frame makes the decoder reserve ahead of the bytes that arrived.
const RESERVE_STEP: usize = 1 << 20;

/// Why a byte stream is not a valid sequence of frames. Any of these ends the connection.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("malformed header line: {0}")]
    MalformedHeader(&'static str),
    #[error("missing Content-Length header")]
    MissingContentLength,
    #[error("invalid Content-Length: {0}")]
    InvalidContentLength(&'static str),
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    #[error("header block exceeds {max} bytes")]
    HeaderTooLarge { max: usize },
    #[error("incomplete frame: not completed within {0:?}")]
    Timeout(std::time::Duration),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A parsed header block: the frame is `header_len + body_len` bytes from the start of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Length of the header block including the terminating `\r\n\r\n`.
    pub header_len: usize,
    /// The declared `Content-Length`, already checked against the limit.
    pub body_len: usize,
}

/// Outcome of [`parse_frame`] on a buffer that starts at a frame boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameStatus {
    /// More bytes are needed (header block or body not complete yet).
    Incomplete,
    /// A whole frame is in the buffer: body is `buf[header_len..header_len + body_len]`.
    Complete { header_len: usize, body_len: usize },
}

/// Parses the header block at the start of `buf`. Returns `Ok(None)` while the terminator has not
/// arrived. Every byte is checked as it arrives: anything that cannot be part of a header line
/// (`token: value` of visible ASCII, ended by `\r\n`) fails at once, so a peer sending garbage is
/// told so without the proxy waiting for [`MAX_HEADER_BYTES`]. Also fails as soon as
/// `MAX_HEADER_BYTES` arrive without a terminator, or when the declared length exceeds
/// `max_frame_bytes`, before any of the body is read. Does not allocate.
pub fn parse_header(buf: &[u8], max_frame_bytes: usize) -> Result<Option<FrameHeader>, FrameError> {
    let (header_len, content_length) = match canonical_header(buf) {
        Some(found) => found,
        None => match any_header(buf)? {
            Some(found) => found,
            None => return Ok(None),
        },
    };
    check_length(header_len, content_length, max_frame_bytes).map(Some)
}

/// The header every LSP peer writes, `Content-Length: N\r\n\r\n`, read without the general
/// checks (its bytes are valid by construction); `None` for anything else, incomplete included.
fn canonical_header(buf: &[u8]) -> Option<(usize, Option<usize>)> {
    const NAME: &[u8] = b"Content-Length: ";
    let digits = buf.strip_prefix(NAME)?;
    let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    // More than 19 digits may overflow: the general path says so.
    if n == 0 || n > 19 || digits.get(n..n + 4)? != b"\r\n\r\n" {
        return None;
    }
    let len = digits[..n].iter().try_fold(0usize, |acc, d| {
        acc.checked_mul(10)?.checked_add(usize::from(d - b'0'))
    })?;
    Some((NAME.len() + n + 4, Some(len)))
}

/// Any header block: every byte checked; `Ok(None)` while it is incomplete.
fn any_header(buf: &[u8]) -> Result<Option<(usize, Option<usize>)>, FrameError> {
    let window = &buf[..buf.len().min(MAX_HEADER_BYTES)];
    let mut content_length = None;
    let mut start = 0;
    let header_len = loop {
        let rest = &window[start..];
        let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else {
            check_partial_line(rest)?;
            if buf.len() >= MAX_HEADER_BYTES {
                return Err(FrameError::HeaderTooLarge {
                    max: MAX_HEADER_BYTES,
                });
            }
            return Ok(None);
        };
        if end == 0 {
            break start + 2;
        }
        let (name, value) = split_line(&rest[..end])?;
        if name.eq_ignore_ascii_case(b"content-length") {
            let len = parse_length(value)?;
            match content_length {
                Some(prev) if prev != len => {
                    return Err(FrameError::InvalidContentLength("conflicting duplicates"))
                }
                _ => content_length = Some(len),
            }
        }
        start += end + 2;
    };
    Ok(Some((header_len, content_length)))
}

/// The declared length is present and within the limit.
fn check_length(
    header_len: usize,
    content_length: Option<usize>,
    max_frame_bytes: usize,
) -> Result<FrameHeader, FrameError> {
    let body_len = content_length.ok_or(FrameError::MissingContentLength)?;
    if body_len > max_frame_bytes {
        return Err(FrameError::FrameTooLarge {
            len: body_len,
            max: max_frame_bytes,
        });
    }
    Ok(FrameHeader {
        header_len,
        body_len,
    })
}

/// A whole header line (no `\r\n`): its name and its value without surrounding spaces.
fn split_line(line: &[u8]) -> Result<(&[u8], &[u8]), FrameError> {
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(FrameError::MalformedHeader("no colon"))?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    check_name(name)?;
    if name.is_empty() {
        return Err(FrameError::MalformedHeader("empty header name"));
    }
    check_value(value)?;
    Ok((name, value.trim_ascii()))
}

/// The start of a line whose `\r\n` has not arrived: could it still become a header line (or
/// the empty line that ends the block)?
fn check_partial_line(part: &[u8]) -> Result<(), FrameError> {
    match part.split_last() {
        // A lone `\r` waits for its `\n`: it ends a complete line or the block.
        Some((b'\r', [])) => Ok(()),
        Some((b'\r', line)) => split_line(line).map(drop),
        _ => match part.iter().position(|&b| b == b':') {
            Some(colon) => {
                check_name(&part[..colon])?;
                if colon == 0 {
                    return Err(FrameError::MalformedHeader("empty header name"));
                }
                check_value(&part[colon + 1..])
            }
            None => check_name(part),
        },
    }
}

/// A header name is an RFC 9110 token: no spaces (so no whitespace before the colon and no
/// folded continuation lines), no controls.
fn check_name(name: &[u8]) -> Result<(), FrameError> {
    if name.iter().all(|&b| is_tchar(b)) {
        Ok(())
    } else {
        Err(FrameError::MalformedHeader("not a header name"))
    }
}

/// A header value is visible ASCII, spaces and tabs; a bare CR or LF is not allowed.
fn check_value(value: &[u8]) -> Result<(), FrameError> {
    if value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        Ok(())
    } else {
        Err(FrameError::MalformedHeader("invalid byte in header value"))
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Pure core of the decoder: is there a whole frame at the start of `buf`? Does not allocate.
pub fn parse_frame(buf: &[u8], max_frame_bytes: usize) -> Result<FrameStatus, FrameError> {
    Ok(match parse_header(buf, max_frame_bytes)? {
        Some(h) if buf.len() - h.header_len >= h.body_len => FrameStatus::Complete {
            header_len: h.header_len,
            body_len: h.body_len,
        },
        _ => FrameStatus::Incomplete,
    })
}

fn parse_length(value: &[u8]) -> Result<usize, FrameError> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(FrameError::InvalidContentLength("not a decimal number"));
    }
    // ASCII digits only, so the conversion cannot fail; the parse can overflow.
    std::str::from_utf8(value)
        .ok()
        .and_then(|digits| digits.parse().ok())
        .ok_or(FrameError::InvalidContentLength("out of range"))
}

/// Appends `Content-Length: N\r\n\r\n` and `body` to `dst`.
pub fn encode_frame(body: &[u8], dst: &mut BytesMut) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut n = body.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    const PREFIX: &[u8] = b"Content-Length: ";
    dst.reserve(PREFIX.len() + (digits.len() - start) + 4 + body.len());
    dst.put_slice(PREFIX);
    dst.put_slice(&digits[start..]);
    dst.put_slice(b"\r\n\r\n");
    dst.put_slice(body);
}

/// Splits a byte stream into frame bodies (zero-copy `Bytes` cut from the read buffer) and writes
/// bodies as frames. After the decoder returns an error the stream is out of sync and the
/// connection must be closed; decoding is not meant to continue. A stream that ends inside a frame
/// yields `FrameError::Io` ("bytes remaining on stream") from the default `decode_eof`.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_frame_bytes: usize,
    /// Header of the frame whose body is still arriving, so it is not parsed again on each read.
    pending: Option<FrameHeader>,
}

impl FrameCodec {
    pub fn new(max_frame_bytes: usize) -> Self {
        Self {
            max_frame_bytes,
            pending: None,
        }
    }

    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_BYTES)
    }
}

impl Decoder for FrameCodec {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        let head = match self.pending {
            Some(head) => head,
            None => match parse_header(src, self.max_frame_bytes)? {
                Some(head) => head,
                None => return Ok(None),
            },
        };
        let total =
            head.header_len
                .checked_add(head.body_len)
                .ok_or(FrameError::FrameTooLarge {
                    len: head.body_len,
                    max: self.max_frame_bytes,
                })?;
        if src.len() < total {
            // Within limits (checked by parse_header). Grow towards the frame in steps of at most
            // RESERVE_STEP, so a peer that only sends a header cannot pin max_frame_bytes of
            // memory, while large bodies still avoid many small reallocations.
            src.reserve((total - src.len()).min(RESERVE_STEP));
            self.pending = Some(head);
            return Ok(None);
        }
        self.pending = None;
        src.advance(head.header_len);
        Ok(Some(src.split_to(head.body_len).freeze()))
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, body: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_frame(&body, dst);
        Ok(())
    }
}

impl Encoder<&[u8]> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, body: &[u8], dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_frame(body, dst);
        Ok(())
    }
}

/// What a writer coalesces into one write at most.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// Encode and write frames from `rx`, coalescing what is queued into one write; shut the
/// write side down when `rx` closes. An error means a write failed (the frames not yet written
/// are dropped).
pub async fn write_frames<W: AsyncWrite + Unpin>(
    mut out: W,
    mut rx: mpsc::Receiver<Bytes>,
) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    while let Some(body) = rx.recv().await {
        encode_frame(&body, &mut buf);
        while buf.len() < WRITE_BATCH_BYTES {
            match rx.try_recv() {
                Ok(more) => encode_frame(&more, &mut buf),
                Err(_) => break,
            }
        }
        out.write_all(&buf).await?;
        buf.clear();
        if buf.capacity() > 1 << 20 {
            // Don't keep a large frame's buffer for the life of the connection.
            buf = BytesMut::with_capacity(8 * 1024);
        }
    }
    out.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(codec: &mut FrameCodec, buf: &mut BytesMut) -> Result<Vec<Bytes>, FrameError> {
        let mut out = Vec::new();
        while let Some(body) = codec.decode(buf)? {
            out.push(body);
        }
        Ok(out)
    }

    fn decode_one(input: &[u8]) -> Result<Option<Bytes>, FrameError> {
        FrameCodec::default().decode(&mut BytesMut::from(input))
    }

    #[test]
    fn single_frame() {
        let mut buf = BytesMut::from(&b"Content-Length: 7\r\n\r\n{\"a\":1}"[..]);
        let body = FrameCodec::default().decode(&mut buf).unwrap();
        assert_eq!(body.as_deref(), Some(&b"{\"a\":1}"[..]));
        assert!(buf.is_empty());
    }

    #[test]
    fn split_at_every_boundary() {
        let frame = b"Content-Length: 11\r\nContent-Type: application/json\r\n\r\n{\"x\":[1,2]}";
        for cut in 0..=frame.len() {
            let mut codec = FrameCodec::default();
            let mut buf = BytesMut::from(&frame[..cut]);
            let first = codec.decode(&mut buf).unwrap();
            if cut < frame.len() {
                assert_eq!(first, None, "cut at {cut}");
                buf.extend_from_slice(&frame[cut..]);
                let body = codec.decode(&mut buf).unwrap();
                assert_eq!(body.as_deref(), Some(&b"{\"x\":[1,2]}"[..]), "cut at {cut}");
            } else {
                assert_eq!(first.as_deref(), Some(&b"{\"x\":[1,2]}"[..]));
            }
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn three_coalesced_frames() {
        let mut buf = BytesMut::new();
        for body in [&b"{}"[..], b"[1]", b"\"three\""] {
            encode_frame(body, &mut buf);
        }
        let bodies = decode_all(&mut FrameCodec::default(), &mut buf).unwrap();
        assert_eq!(bodies, vec![&b"{}"[..], b"[1]", b"\"three\""]);
    }

    #[test]
    fn tolerant_headers() {
        for input in [
            &b"Content-Type: application/vscode-jsonrpc; charset=utf-8\r\nContent-Length: 2\r\n\r\n{}"[..],
            b"content-length: 2\r\n\r\n{}",
            b"CONTENT-LENGTH:2   \r\n\r\n{}",
            b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
        ] {
            assert_eq!(decode_one(input).unwrap().as_deref(), Some(&b"{}"[..]));
        }
    }

    #[test]
    fn bad_headers() {
        let err = |input: &[u8]| decode_one(input).unwrap_err();
        assert!(matches!(
            err(b"Content-Type: x\r\n\r\n{}"),
            FrameError::MissingContentLength
        ));
        assert!(matches!(err(b"\r\n\r\n"), FrameError::MissingContentLength));
        for bad in [
            &b"Content-Length: abc\r\n\r\n"[..],
            b"Content-Length: -1\r\n\r\n",
            b"Content-Length:\r\n\r\n",
        ] {
            assert!(matches!(err(bad), FrameError::InvalidContentLength(_)));
        }
        let conflict = b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}";
        assert!(matches!(err(conflict), FrameError::InvalidContentLength(_)));
        let huge = b"Content-Length: 99999999999999999999999\r\n\r\n";
        assert!(matches!(err(huge), FrameError::InvalidContentLength(_)));
        assert!(matches!(
            err(b"Content-Length 2\r\n\r\n{}"),
            FrameError::MalformedHeader(_)
        ));
        assert!(matches!(
            err(b"X-Padding: ok\r\nno colon here\r\n\r\n"),
            FrameError::MalformedHeader(_)
        ));
        assert!(matches!(
            err(b"X: \xff\r\nContent-Length: 2\r\n\r\n{}"),
            FrameError::MalformedHeader(_)
        ));
    }

    #[test]
    fn garbage_is_refused_as_it_arrives() {
        for garbage in [
            &b"\x00"[..],
            b"{\"jsonrpc\":\"2.0\"",
            b"GET / HTTP/1.1",
            b"Content-Length : 2",
            b"Content-Length: 2\r\n 3",
            b"Content-Length: 2\n",
            b"Content-Length: 2\rX",
            b"Content-Length\r",
            b":2",
            b"X: \x7f",
        ] {
            assert!(
                matches!(decode_one(garbage), Err(FrameError::MalformedHeader(_))),
                "{:?}",
                String::from_utf8_lossy(garbage)
            );
        }
        // 4 KiB of random bytes: an error, not a wait for the rest of an 8 KiB header.
        let mut random = vec![0u8; 4096];
        rand::Rng::fill(
            &mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7),
            &mut random[..],
        );
        assert!(matches!(
            decode_one(&random),
            Err(FrameError::MalformedHeader(_))
        ));
    }

    #[test]
    fn the_canonical_header_reads_as_the_general_parser_reads_it() {
        for n in [0usize, 1, 9, 10, 12_345, 9_999_999_999_999_999_999] {
            let header = format!("Content-Length: {n}\r\n\r\n");
            let fast = canonical_header(header.as_bytes());
            assert!(fast.is_some(), "{header:?}");
            assert_eq!(fast, any_header(header.as_bytes()).unwrap(), "{header:?}");
            for cut in 0..header.len() {
                assert_eq!(canonical_header(&header.as_bytes()[..cut]), None);
            }
        }
        for other in [
            &b"Content-Length: 2\r\nContent-Type: x\r\n\r\n"[..],
            b"content-length: 2\r\n\r\n",
            b"Content-Length:  2\r\n\r\n",
            b"Content-Length: 99999999999999999999\r\n\r\n",
        ] {
            assert_eq!(canonical_header(other), None, "{other:?}");
        }
    }

    #[test]
    fn every_prefix_of_a_valid_header_waits_for_more() {
        let frame = b"Content-Length: 12\r\nContent-Type: application/vscode-jsonrpc; charset=utf-8\r\n\r\n";
        for cut in 0..frame.len() {
            assert_eq!(
                parse_header(&frame[..cut], 100).unwrap(),
                None,
                "cut at {cut}"
            );
        }
        assert_eq!(
            parse_header(frame, 100).unwrap(),
            Some(FrameHeader {
                header_len: frame.len(),
                body_len: 12
            })
        );
    }

    #[test]
    fn oversized_length_rejected_before_body() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::from(&b"Content-Length: 1025\r\n\r\n"[..]);
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(matches!(
            err,
            FrameError::FrameTooLarge {
                len: 1025,
                max: 1024
            }
        ));
        assert!(buf.capacity() < 1025, "must not reserve past the limit");
    }

    #[test]
    fn reserves_declared_body() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::from(&b"Content-Length: 100000\r\n\r\n"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(buf.capacity() >= 100_000 + 26);
    }

    #[test]
    fn a_bare_header_cannot_pin_a_huge_reservation() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::from(&b"Content-Length: 60000000\r\n\r\n"[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(
            buf.capacity() <= 2 * RESERVE_STEP,
            "reserved {}",
            buf.capacity()
        );
    }

    #[test]
    fn header_too_large() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::from(&b"X-Padding: "[..]);
        buf.extend_from_slice(&vec![b'a'; MAX_HEADER_BYTES - buf.len() - 1]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"a");
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::HeaderTooLarge { .. })
        ));
    }

    #[test]
    fn zero_length_body_and_roundtrip() {
        assert_eq!(
            decode_one(b"Content-Length: 0\r\n\r\n").unwrap().as_deref(),
            Some(&b""[..])
        );
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        codec
            .encode(Bytes::from_static(b"{\"id\":1}"), &mut buf)
            .unwrap();
        codec.encode(&b""[..], &mut buf).unwrap();
        assert_eq!(
            &buf[..],
            b"Content-Length: 8\r\n\r\n{\"id\":1}Content-Length: 0\r\n\r\n"
        );
        let bodies = decode_all(&mut codec, &mut buf).unwrap();
        assert_eq!(bodies, vec![&b"{\"id\":1}"[..], b""]);
    }

    #[test]
    fn parse_frame_status() {
        let frame = b"Content-Length: 2\r\n\r\n{}";
        assert_eq!(
            parse_frame(&frame[..20], 10).unwrap(),
            FrameStatus::Incomplete
        );
        assert_eq!(
            parse_frame(&frame[..22], 10).unwrap(),
            FrameStatus::Incomplete
        );
        let complete = FrameStatus::Complete {
            header_len: 21,
            body_len: 2,
        };
        assert_eq!(parse_frame(frame, 10).unwrap(), complete);
    }

    proptest! {
        #[test]
        fn chunked_stream_roundtrip(
            bodies in prop::collection::vec("[ -~]{0,40}", 0..8),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let mut stream = BytesMut::new();
            for body in &bodies {
                encode_frame(body.as_bytes(), &mut stream);
            }
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            cuts.push(stream.len());
            cuts.sort_unstable();
            let (mut codec, mut buf, mut out, mut from) = (FrameCodec::default(), BytesMut::new(), Vec::new(), 0);
            for to in cuts {
                buf.extend_from_slice(&stream[from..to]);
                from = to;
                out.extend(decode_all(&mut codec, &mut buf).unwrap());
            }
            let expected: Vec<&[u8]> = bodies.iter().map(|b| b.as_bytes()).collect();
            prop_assert_eq!(out, expected);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            prefix in prop::sample::select(vec!["", "Content-Length: 3\r\n", "content-length:1\r\n\r\n"]),
            bytes in prop::collection::vec(any::<u8>(), 0..300),
            chunk in 1usize..64,
        ) {
            let mut input = prefix.as_bytes().to_vec();
            input.extend_from_slice(&bytes);
            let _ = parse_frame(&input, 16);
            let (mut codec, mut buf) = (FrameCodec::new(16), BytesMut::new());
            for part in input.chunks(chunk) {
                buf.extend_from_slice(part);
                if decode_all(&mut codec, &mut buf).is_err() {
                    break;
                }
            }
        }
    }
}
