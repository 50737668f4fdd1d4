//! Ring hot paths: owner lookup for 3, 10, 100 and 1000 upstreams × 160 vnodes, the allocation-free
//! candidate walk the data path uses, and building a 1000-upstream ring (what a reload pays,
//! bucket index included).
//!
//! `cargo bench --bench ring` (about a minute). Target: lookup ≤ 50 ns at every size. Keys cycle
//! through 4096 session ids, so lookups spread over the ring instead of repeating one cached path.

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use sessiongate::ring::{FirstUsable, Ring, RingSelection};

const VNODES: u32 = 160;

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("cli-node-{i:04}")).collect()
}

/// UUID-shaped session ids (36 bytes), like the ones Copilot CLI sessions carry.
fn session_ids(n: usize) -> Vec<String> {
    (0..n as u64).map(common::session_id).collect()
}

fn lookup(c: &mut Criterion) {
    let keys = session_ids(4096);
    let mut group = c.benchmark_group("ring_owner");
    for n in [3usize, 10, 100, 1000] {
        let names = names(n);
        let ring = Ring::build(names.iter().map(|s| (s.as_str(), 1)), VNODES);
        group.bench_with_input(BenchmarkId::from_parameter(n), &ring, |b, ring| {
            let mut i = 0usize;
            b.iter(|| {
                i = (i + 1) & 4095;
                black_box(ring.owner(black_box(keys[i].as_bytes())))
            })
        });
    }
    group.finish();

    // What `Pool::route` does: the owner if usable, via the candidate walk.
    let mut group = c.benchmark_group("ring_select_first_usable");
    for n in [3usize, 1000] {
        let names = names(n);
        let ring = Ring::build(names.iter().map(|s| (s.as_str(), 1)), VNODES);
        group.bench_with_input(BenchmarkId::from_parameter(n), &ring, |b, ring| {
            let mut i = 0usize;
            let usable = |_: usize| true;
            b.iter(|| {
                i = (i + 1) & 4095;
                black_box(FirstUsable.select(ring, black_box(keys[i].as_bytes()), &usable))
            })
        });
    }
    group.finish();
}

fn build(c: &mut Criterion) {
    let names = names(1000);
    let mut group = c.benchmark_group("ring_build");
    group.sample_size(10);
    group.bench_function("1000x160", |b| {
        b.iter(|| Ring::build(names.iter().map(|s| (s.as_str(), 1)), black_box(VNODES)))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::config();
    targets = lookup, build
}
criterion_main!(benches);
