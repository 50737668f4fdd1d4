//! The LSP frame decoder (`wire::codec::FrameCodec`) fed one byte stream in arbitrary pieces,
//! as a socket delivers it. Input: byte 0 picks the frame limit, byte 1 the number of cuts (low
//! 4 bits), then two bytes per cut, then the stream. Checked: no panic; the frames (and whether
//! the stream ends in an error) are the same as when the whole stream arrives at once; the
//! buffer never holds more than one frame's worth of bytes nor reserves more than the decoder's
//! step ahead of them; each frame is within the limit; the frames re-encode to a stream that
//! decodes to the same frames.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use sessiongate::wire::codec::{
    encode_frame, parse_frame, FrameCodec, FrameStatus, DEFAULT_MAX_FRAME_BYTES, MAX_HEADER_BYTES,
};
use tokio_util::codec::Decoder;

/// The decoder's largest reservation ahead of the bytes that arrived (its `RESERVE_STEP`).
const RESERVE_STEP: usize = 1 << 20;

/// The frames of `stream` delivered in the pieces `cuts` make, and whether it ended in an
/// error (the connection closes at the first one).
fn decode(stream: &[u8], cuts: &[usize], max_frame: usize) -> (Vec<Bytes>, bool) {
    let mut codec = FrameCodec::new(max_frame);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut from = 0;
    // The allocation a buffer of this stream may reach: the bytes delivered, plus one step of
    // reservation for a frame still arriving, with room for the allocator's doubling.
    let bound = 4 * (stream.len() + RESERVE_STEP.min(MAX_HEADER_BYTES + max_frame));
    for &to in cuts.iter().chain(std::iter::once(&stream.len())) {
        buf.extend_from_slice(&stream[from..to]);
        from = to;
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= max_frame, "frame over the limit");
                    frames.push(frame);
                }
                Ok(None) => {
                    // What is left is less than one frame: a header still arriving (under the
                    // header cap) or a body (under the frame cap).
                    assert!(
                        buf.len() < MAX_HEADER_BYTES + max_frame,
                        "{} bytes buffered without a frame",
                        buf.len()
                    );
                    assert!(
                        buf.capacity() <= bound,
                        "reserved {} for {} bytes",
                        buf.capacity(),
                        stream.len()
                    );
                    break;
                }
                Err(_) => return (frames, true),
            }
        }
    }
    // End of stream, as `FramedRead` ends it: anything left over is an error.
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => return (frames, false),
            Err(_) => return (frames, true),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [limit, cut_count, rest @ ..] = data else {
        return;
    };
    // Mostly small limits, so frames over the limit are easy to reach; 255: the default.
    let max_frame = match limit {
        255 => DEFAULT_MAX_FRAME_BYTES,
        n => usize::from(*n) * 8,
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

    let (whole, whole_failed) = decode(stream, &[], max_frame);
    let (pieces, pieces_failed) = decode(stream, &cuts, max_frame);
    assert_eq!(whole, pieces, "frames differ with cuts {cuts:?}");
    assert_eq!(
        whole_failed, pieces_failed,
        "error differs with cuts {cuts:?}"
    );

    // The pure parser agrees with the decoder on the first frame.
    if let Ok(FrameStatus::Complete {
        header_len,
        body_len,
    }) = parse_frame(stream, max_frame)
    {
        assert_eq!(whole[0], stream[header_len..header_len + body_len]);
    }

    // What was decoded re-encodes canonically and decodes to the same frames.
    let mut again = BytesMut::new();
    for frame in &whole {
        encode_frame(frame, &mut again);
    }
    let (round, round_failed) = decode(&again, &[], max_frame);
    assert!(!round_failed, "re-encoded frames do not decode");
    assert_eq!(round, whole);
});
