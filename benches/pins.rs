//! The session pin table (`SessionPins`, a moka cache with time-to-idle) holding 1M pins: lookup
//! hit, lookup miss, and re-pinning an existing session. Filling the table takes a few seconds
//! before the measurements start.
//!
//! `cargo bench --bench pins` (about a minute).

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use sessiongate::sessions::{Pin, SessionPins};

const ENTRIES: usize = 1_000_000;

fn sid(i: usize) -> String {
    common::session_id(i as u64)
}

fn pins(c: &mut Criterion) {
    let nodes: Vec<Pin> = (0..4)
        .map(|i| Pin {
            upstream: Arc::from(format!("cli-{i}")),
            addr: Arc::from(format!("127.0.0.1:{}", 47001 + i)),
        })
        .collect();
    // The production defaults: 1M pins, idle TTL on.
    let table = SessionPins::new(Duration::from_secs(3600), ENTRIES as u64);
    let ids: Vec<String> = (0..ENTRIES).map(sid).collect();
    let started = Instant::now();
    for (i, id) in ids.iter().enumerate() {
        table.pin(id, nodes[i % 4].clone());
    }
    let kept = table.len();
    eprintln!(
        "pins: filled {ENTRIES} in {:.2}s, {kept} kept",
        started.elapsed().as_secs_f64()
    );
    // Probe keys spread over the whole table (a fixed pseudo-random order, not sequential).
    let probes: Vec<&str> = (0..65_536)
        .map(|i| ids[(i * 7_919 + 13) % ENTRIES].as_str())
        .collect();
    let hits = probes.iter().filter(|k| table.get(k).is_some()).count();
    eprintln!("pins: {hits}/{} probe keys present", probes.len());
    let misses: Vec<String> = (0..65_536).map(|i| format!("missing-{i}")).collect();

    let mut group = c.benchmark_group("pins_1M");
    group.bench_function("get_hit", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) & 65_535;
            black_box(table.get(black_box(probes[i])))
        })
    });
    group.bench_function("get_miss", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) & 65_535;
            black_box(table.get(black_box(&misses[i])))
        })
    });
    group.bench_function("pin_existing", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) & 65_535;
            table.pin(black_box(probes[i]), nodes[i & 3].clone())
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = pins
}
criterion_main!(benches);
