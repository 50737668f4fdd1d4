//! The consistent-hash ring of one pool, built on the `hashring` crate over stable upstream
//! *names* (never addresses), with `vnodes × weight` points per upstream. A ring is built once
//! per snapshot and never mutated, so lookups take no lock and allocate nothing.
//!
//! Placement is a pure function of bytes. A point sits where it sat in sessiongate 0.1: SipHash-2-4
//! with zero keys (hashring's default hasher) of its upstream's name, a 0xff separator and the
//! replica number (see [`PointBytes`]), so the keyspace shares of a configured pool are unchanged.
//! A key sits at XXH3-64 (default secret, seed 0) of its bytes: a published, frozen
//! specification with no per-process seed, several times faster than SipHash on a session id,
//! and a lookup hashes its key every time while points are hashed once per reload. Every process,
//! machine, compiler and crate version places every key identically: two proxies with the same
//! config agree. (Keys moved once, from SipHash to XXH3, in 0.2; an upgrade re-homes unpinned keys
//! as any ring change does.)
//!
//! `hashring` remains the definition of the ring: it is built with the same hash, and in debug
//! builds every lookup is checked against its `get`. The hot path does not search it, though:
//! its points are 40-byte nodes, and a binary search over 160,000 of them (1,000 upstreams × 160
//! vnodes) misses the cache at nearly every step. Lookups instead use a dense copy of the ring,
//! each point's position and upstream side by side in clockwise order, and a bucket index over
//! it built with the ring (see [`Ring::point_at`]): one table read by the top bits of the hash,
//! then a forward scan that usually passes no point or one. A lookup touches two cache lines of
//! the ring, whatever its size.

pub mod select;

use std::hash::{BuildHasher, Hash, Hasher};

use hashring::HashRing;
use xxhash_rust::xxh3::xxh3_64;

pub use select::{Candidates, FirstUsable, RingSelection};

/// Ring position of a byte string: the one hash every point and key goes through.
fn position_of(bytes: &[u8]) -> u64 {
    xxh3_64(bytes)
}

/// The hasher hashring runs over points and keys. A key is written as bytes (one `write`) and
/// hashes to [`position_of`] of them, the very function the hot path calls. A point is written
/// as its precomputed position (one `write_u64`, see [`VirtualNode`]'s `Hash`), which passes
/// through unchanged. Bytes are collected and hashed in `finish`; they fit the inline buffer for
/// any realistic key and spill to the heap beyond. Only ring builds and reference checks hash
/// through this.
struct RingHasher {
    inline: [u8; RingHasher::INLINE],
    /// Bytes written so far, inline or spilled.
    len: usize,
    /// All bytes written, once they outgrew `inline`; empty until then.
    spilled: Vec<u8>,
    /// A position written whole, as the only thing written.
    position: Option<u64>,
}

impl RingHasher {
    const INLINE: usize = 128;
}

impl Hasher for RingHasher {
    fn write(&mut self, bytes: &[u8]) {
        if let Some(p) = self.position.take() {
            // Not a lone position after all: it becomes part of the bytes.
            self.write(&p.to_le_bytes());
        }
        let end = self.len + bytes.len();
        if self.spilled.is_empty() && end <= Self::INLINE {
            self.inline[self.len..end].copy_from_slice(bytes);
        } else {
            if self.spilled.is_empty() {
                self.spilled.extend_from_slice(&self.inline[..self.len]);
            }
            self.spilled.extend_from_slice(bytes);
        }
        self.len = end;
    }

    fn write_u64(&mut self, position: u64) {
        if self.len == 0 && self.position.is_none() {
            self.position = Some(position);
        } else {
            self.write(&position.to_le_bytes());
        }
    }

    fn finish(&self) -> u64 {
        if let Some(p) = self.position {
            p
        } else if self.spilled.is_empty() {
            position_of(&self.inline[..self.len])
        } else {
            position_of(&self.spilled)
        }
    }
}

/// Builds [`RingHasher`]s; stateless, so hashes depend on nothing but the bytes.
#[derive(Debug, Clone, Copy, Default)]
struct RingHashBuilder;

impl BuildHasher for RingHashBuilder {
    type Hasher = RingHasher;

    fn build_hasher(&self) -> RingHasher {
        RingHasher {
            inline: [0; RingHasher::INLINE],
            len: 0,
            spilled: Vec::new(),
            position: None,
        }
    }
}

/// One virtual node as hashring holds it: replica `replica` of upstream `upstream` (an index
/// into the pool), at ring position `position`.
#[derive(Debug, Clone)]
struct VirtualNode {
    position: u64,
    upstream: u32,
    /// Index of this node in clockwise order: where [`Ring::points`] has it.
    pos: u32,
}

impl Hash for VirtualNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.position);
    }
}

/// What a point's position is the SipHash of: name bytes, a separator no UTF-8 string contains,
/// then the replica number.
struct PointBytes<'a> {
    name: &'a str,
    replica: u32,
}

impl Hash for PointBytes<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.name.as_bytes());
        state.write(&[0xff]);
        state.write(&self.replica.to_le_bytes());
    }
}

/// A key as raw bytes; hashed with a single `write` so the ring position is a pure function of
/// the bytes.
struct RingKey<'a>(&'a [u8]);

impl Hash for RingKey<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.0);
    }
}

/// A virtual node as the hot path reads it: where it sits on the ring and whose it is. Kept in
/// clockwise order, side by side, so that finding a key's point also finds its upstream.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Point {
    position: u64,
    upstream: u32,
}

/// The most index bits a ring uses: 2^20 buckets (4 MiB of `u32`), past a million points.
const MAX_BUCKET_BITS: u32 = 20;

/// An immutable hash ring over a pool's upstreams.
pub struct Ring {
    /// The reference ring; lookups use the index below, which agrees with its `get`.
    ring: HashRing<VirtualNode, RingHashBuilder>,
    /// hashring's points as lookups read them, in clockwise order (ascending position).
    points: Vec<Point>,
    /// `bucket_first[b]`: the index of the first point at or after the start of bucket `b`, the
    /// hashes whose top bits are `b` (`points.len()` if none). Empty for an empty ring.
    bucket_first: Vec<u32>,
    /// A hash's bucket is `hash >> bucket_shift` (64 minus the index bits).
    bucket_shift: u32,
    members: usize,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("points", &self.points.len())
            .field("members", &self.members)
            .field("buckets", &self.bucket_first.len())
            .finish()
    }
}

impl Ring {
    /// Build a ring from `(name, weight)` members; upstream `i` gets `vnodes × weight` points.
    pub fn build<'a>(members: impl IntoIterator<Item = (&'a str, u32)>, vnodes: u32) -> Ring {
        let mut nodes = Vec::new();
        let mut count = 0;
        for (i, (name, weight)) in members.into_iter().enumerate() {
            count += 1;
            for replica in 0..vnodes.saturating_mul(weight) {
                let position = hashring::DefaultHashBuilder.hash_one(PointBytes { name, replica });
                nodes.push(VirtualNode {
                    position,
                    upstream: i as u32,
                    pos: 0,
                });
            }
        }
        // Learn the clockwise order the crate will use, a stable sort by hash: sorting by (hash,
        // insertion index) gives the same order, and an unstable sort of unique pairs is faster.
        let hasher = RingHashBuilder;
        let mut keyed: Vec<(u64, usize)> = nodes
            .iter()
            .enumerate()
            .map(|(i, node)| (hasher.hash_one(node), i))
            .collect();
        keyed.sort_unstable();
        let mut points = Vec::with_capacity(keyed.len());
        for (pos, &(position, i)) in keyed.iter().enumerate() {
            nodes[i].pos = pos as u32;
            points.push(Point {
                position,
                upstream: nodes[i].upstream,
            });
        }
        let (bucket_first, bucket_shift) = bucket_index(&points);
        let mut ring = HashRing::with_hasher(hasher);
        ring.batch_add(nodes);
        Ring {
            ring,
            points,
            bucket_first,
            bucket_shift,
            members: count,
        }
    }

    /// The clockwise index of the point that owns ring position `hash`: the first point at or
    /// after it, wrapping around to point 0 past the last. `None` for an empty ring.
    ///
    /// The same point hashring's `get` finds by binary search, but found with one read of the
    /// bucket table and one of `points` instead of a cache miss per halving. Bucket `b` holds
    /// the hashes in `[b << shift, (b + 1) << shift)`. Every point before `bucket_first[b]` lies
    /// below that range, hence below `hash`; every point of a later bucket lies above `hash`. So
    /// scanning forward from `bucket_first[b]` to the first point not below `hash` passes only
    /// points of bucket `b`: with one to two buckets per point, usually none or one.
    ///
    /// Two points at the same position (a 64-bit collision; about 10⁻⁹ for 160,000 points) are
    /// the one case where the two could differ: for a key hashing to exactly that position,
    /// hashring's binary search may return either point, this returns the first.
    fn point_at(&self, hash: u64) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let bucket = (hash >> self.bucket_shift) as usize;
        let mut i = self.bucket_first[bucket] as usize;
        while i < self.points.len() && self.points[i].position < hash {
            i += 1;
        }
        Some(if i == self.points.len() { 0 } else { i })
    }

    /// [`Ring::point_at`] for a key, checked against hashring in debug builds.
    fn point_of(&self, key: &[u8]) -> Option<usize> {
        let at = self.point_at(position_of(key));
        debug_assert_eq!(
            at,
            self.ring.get(&RingKey(key)).map(|p| p.pos as usize),
            "the bucket index and hashring disagree on a key's point"
        );
        at
    }

    /// Number of upstreams on the ring.
    pub fn members(&self) -> usize {
        self.members
    }

    /// The upstream that owns `key`, ignoring health: the first point clockwise of its hash.
    pub fn owner(&self, key: &[u8]) -> Option<usize> {
        self.point_of(key).map(|i| self.points[i].upstream as usize)
    }

    /// Upstreams in the order a request for `key` should try them: the owner first, then each
    /// further distinct upstream met walking clockwise. Allocation-free.
    pub fn candidates(&self, key: &[u8]) -> Candidates<'_> {
        let start = self.point_of(key).unwrap_or(0);
        Candidates::new(&self.points, start)
    }

    /// The share of the keyspace (0..=1) each upstream owns, indexed like the members.
    pub fn shares(&self) -> Vec<f64> {
        let mut shares = vec![0.0; self.members];
        let n = self.points.len();
        for i in 0..n {
            // Point i owns the arc (previous point, point i]; point 0 also owns the wrap-around.
            let prev = if i == 0 {
                self.points[n - 1]
            } else {
                self.points[i - 1]
            };
            let arc = self.points[i].position.wrapping_sub(prev.position);
            shares[self.points[i].upstream as usize] += arc as f64 / 2f64.powi(64);
        }
        if n == 1 {
            shares[self.points[0].upstream as usize] = 1.0;
        }
        shares
    }

    /// The share of the keyspace whose owner differs between `old` and `new`, comparing owners by
    /// name. Exact: it sweeps the union of both rings' points.
    pub fn moved_share(old: &Ring, old_names: &[&str], new: &Ring, new_names: &[&str]) -> f64 {
        Ring::movement(old, old_names, new, new_names).total
    }

    /// Where the keyspace goes between `old` and `new`: in total, and per upstream the share it
    /// loses (indexed like `old_names`) and gains (indexed like `new_names`).
    pub fn movement(old: &Ring, old_names: &[&str], new: &Ring, new_names: &[&str]) -> Movement {
        let mut m = Movement {
            total: 0.0,
            lost: vec![0.0; old_names.len()],
            gained: vec![0.0; new_names.len()],
        };
        match (old.points.is_empty(), new.points.is_empty()) {
            (true, true) => return m,
            (false, true) => {
                m.total = 1.0;
                m.lost = old.shares();
                return m;
            }
            (true, false) => {
                m.total = 1.0;
                m.gained = new.shares();
                return m;
            }
            (false, false) => {}
        }
        let mut bounds: Vec<u64> = old
            .points
            .iter()
            .chain(&new.points)
            .map(|p| p.position)
            .collect();
        bounds.sort_unstable();
        bounds.dedup();
        let owner = |ring: &Ring, h: u64| -> usize {
            ring.points[ring.point_at(h).expect("non-empty ring")].upstream as usize
        };
        let n = bounds.len();
        for i in 0..n {
            let prev = if i == 0 { bounds[n - 1] } else { bounds[i - 1] };
            // Every hash in (prev, bounds[i]] has the same owner in both rings.
            let h = bounds[i];
            let (a, b) = (owner(old, h), owner(new, h));
            if old_names[a] != new_names[b] {
                let arc = if n == 1 {
                    u64::MAX
                } else {
                    h.wrapping_sub(prev)
                };
                let share = arc as f64 / 2f64.powi(64);
                m.total += share;
                m.lost[a] += share;
                m.gained[b] += share;
            }
        }
        m
    }
}

/// The bucket index of `points` in clockwise order (see [`Ring::point_at`]): `bucket_first` and the
/// shift that takes a hash to its bucket. One to two buckets per point keep a scan short; the
/// count is capped at [`MAX_BUCKET_BITS`] so that a huge ring does not get a huge table.
fn bucket_index(points: &[Point]) -> (Vec<u32>, u32) {
    if points.is_empty() {
        return (Vec::new(), 64);
    }
    // floor(log2(points)) + 1 bits: between one and two buckets per point.
    let bits = (usize::BITS - points.len().leading_zeros()).clamp(1, MAX_BUCKET_BITS);
    let shift = 64 - bits;
    let buckets = 1usize << bits;
    let mut bucket_first = Vec::with_capacity(buckets);
    let mut i = 0;
    for bucket in 0..buckets as u64 {
        let bucket_start = bucket << shift;
        while i < points.len() && points[i].position < bucket_start {
            i += 1;
        }
        bucket_first.push(i as u32);
    }
    (bucket_first, shift)
}

/// The result of [`Ring::movement`].
#[derive(Debug, Clone, PartialEq)]
pub struct Movement {
    pub total: f64,
    pub lost: Vec<f64>,
    pub gained: Vec<f64>,
}

#[cfg(test)]
mod tests;
