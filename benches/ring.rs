//! Ring hot paths: owner lookup for 3, 10, 100 and 1000 upstreams × 160 vnodes, the allocation-free
//! candidate walk the data path uses, and building a 1000-upstream ring (what a reload pays).
//!
//! `cargo bench --bench ring` (about a minute). Target: lookup ≤ 50 ns.

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

/// For comparison, not sessiongate code: the same hash (hashring's SipHash) and the same ring
/// positions, searched as a dense sorted `u64` array instead of hashring's `Vec<Node<Point>>`
/// (40-byte nodes); and the hash alone. Shows how much of a lookup is the hash and how much the
/// search layout.
fn lookup_sketch(c: &mut Criterion) {
    use std::hash::{BuildHasher, Hash, Hasher};
    struct Bytes<'a>(&'a [u8]);
    impl Hash for Bytes<'_> {
        fn hash<H: Hasher>(&self, state: &mut H) {
            state.write(self.0);
        }
    }
    struct PointKey<'a>(&'a str, u32);
    impl Hash for PointKey<'_> {
        fn hash<H: Hasher>(&self, state: &mut H) {
            state.write(self.0.as_bytes());
            state.write(&[0xff]);
            state.write(&self.1.to_le_bytes());
        }
    }
    let hasher = &hashring::DefaultHashBuilder;
    let keys = session_ids(4096);
    let mut group = c.benchmark_group("sketch_dense_positions");
    for n in [3usize, 1000] {
        let names = names(n);
        let mut positions: Vec<(u64, u32)> = names
            .iter()
            .enumerate()
            .flat_map(|(i, name)| {
                (0..VNODES).map(move |r| (hasher.hash_one(PointKey(name, r)), i as u32))
            })
            .collect();
        positions.sort_unstable();
        let (hashes, owners): (Vec<u64>, Vec<u32>) = positions.into_iter().unzip();
        group.bench_function(BenchmarkId::new("owner", n), |b| {
            let mut i = 0usize;
            b.iter(|| {
                i = (i + 1) & 4095;
                let h = hasher.hash_one(Bytes(black_box(keys[i].as_bytes())));
                let at = hashes.partition_point(|&p| p < h);
                black_box(owners[if at == hashes.len() { 0 } else { at }])
            })
        });
    }
    group.bench_function("siphash_only", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) & 4095;
            black_box(hasher.hash_one(Bytes(black_box(keys[i].as_bytes()))))
        })
    });
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
    targets = lookup, lookup_sketch, build
}
criterion_main!(benches);
