//! JSON-RPC data path per message: splitting frames out of a read buffer (`FrameCodec`) and the
//! routing parse (`parse_envelope`: method, id, `params.sessionId`), for ~200 B and ~20 KB frames,
//! both a client request (`session.send`) and a server response.
//!
//! `cargo bench --bench jsonrpc` (about a minute). Target for the whole proxy: ≤ 5 µs CPU per frame.

mod common;

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sessiongate::wire::codec::{encode_frame, FrameCodec};
use sessiongate::wire::message::parse_envelope;
use tokio_util::codec::Decoder;

const SID: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";
/// Frames per decoded buffer: the decoder is measured as it runs, on a buffer holding many frames.
const FRAMES: usize = 32;

/// A `session.send` request whose whole frame (header included) is about `frame_bytes`.
fn request(frame_bytes: usize) -> Vec<u8> {
    let head = format!(
        r#"{{"jsonrpc":"2.0","id":1234,"method":"session.send","params":{{"sessionId":"{SID}","prompt":""#
    );
    let tail = r#"","attachments":[],"mode":"immediate"}}"#;
    let fill = frame_bytes.saturating_sub(head.len() + tail.len() + 22);
    format!("{head}{}{tail}", prose(fill)).into_bytes()
}

/// A response (`result` with an event list) of about `frame_bytes`.
fn response(frame_bytes: usize) -> Vec<u8> {
    let head = r#"{"jsonrpc":"2.0","id":1234,"result":{"events":[{"type":"assistant.message","data":{"content":""#;
    let tail = r#""},"id":"9b2c","parentId":null}]}}"#;
    let fill = frame_bytes.saturating_sub(head.len() + tail.len() + 22);
    format!("{head}{}{tail}", prose(fill)).into_bytes()
}

/// Text with the odd escape, like real prompts and answers.
fn prose(n: usize) -> String {
    let unit = "Refactor the parser so it streams tokens; keep \\\"quotes\\\" intact.\\n ";
    unit.repeat(n / unit.len() + 1)[..n]
        .trim_end_matches('\\')
        .to_owned()
}

fn stream_of(body: &[u8], n: usize) -> BytesMut {
    let mut buf = BytesMut::new();
    for _ in 0..n {
        encode_frame(body, &mut buf);
    }
    buf
}

fn bench_kind(c: &mut Criterion, kind: &str, body: Vec<u8>) {
    let frame_len = stream_of(&body, 1).len();
    assert!(parse_envelope(&body).is_ok(), "{kind}: body must parse");
    let stream = stream_of(&body, FRAMES);
    let label = if frame_len < 1024 {
        format!("{frame_len}B")
    } else {
        format!("{}KB", frame_len / 1000)
    };
    let mut group = c.benchmark_group(format!("jsonrpc_{kind}_{label}"));
    group.throughput(Throughput::Elements(FRAMES as u64));
    group.bench_function("decode", |b| {
        b.iter_batched(
            || stream.clone(),
            |mut buf| {
                let mut codec = FrameCodec::default();
                while let Some(frame) = codec.decode(&mut buf).unwrap() {
                    black_box(frame);
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("decode+parse_envelope", |b| {
        b.iter_batched(
            || stream.clone(),
            |mut buf| {
                let mut codec = FrameCodec::default();
                while let Some(frame) = codec.decode(&mut buf).unwrap() {
                    let env = parse_envelope(&frame).unwrap();
                    black_box((env.kind, env.session_id.as_deref().map(str::len)));
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
    let mut group = c.benchmark_group(format!("jsonrpc_{kind}_{label}"));
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("parse_envelope", |b| {
        b.iter(|| {
            let env = parse_envelope(black_box(&body)).unwrap();
            black_box((env.kind, env.session_id.as_deref().map(str::len)))
        })
    });
    group.finish();
}

fn codec_and_parse(c: &mut Criterion) {
    bench_kind(c, "request", request(200));
    bench_kind(c, "request", request(20_000));
    bench_kind(c, "response", response(200));
    bench_kind(c, "response", response(20_000));
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = codec_and_parse
}
criterion_main!(benches);
