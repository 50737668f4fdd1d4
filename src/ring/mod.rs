//! The consistent-hash ring of one pool, built on the `hashring` crate over stable upstream
//! *names* (never addresses), with `vnodes × weight` points per upstream. A ring is built once
//! per snapshot and never mutated, so lookups take no lock and allocate nothing.
//!
//! Hashing is spelled out byte by byte (see [`Point`]'s `Hash`) so that every process, machine
//! and compiler version places every key identically: two proxies with the same config agree.

pub mod select;

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use hashring::{DefaultHashBuilder, HashRing};

pub use select::{Candidates, FirstUsable, RingSelection};

/// One virtual node: replica `replica` of upstream `upstream` (an index into the pool).
#[derive(Debug, Clone)]
struct Point {
    name: Arc<str>,
    replica: u32,
    upstream: u32,
    /// Index of this point in clockwise order, for walking past unusable upstreams.
    pos: u32,
}

impl Hash for Point {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Name bytes, a separator no UTF-8 string contains, then the replica number.
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

/// An immutable hash ring over a pool's upstreams.
pub struct Ring {
    ring: HashRing<Point>,
    /// Upstream index of each point, in clockwise order.
    order: Vec<u32>,
    /// Ring position (hash) of each point, in clockwise order.
    positions: Vec<u64>,
    members: usize,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("points", &self.order.len())
            .field("members", &self.members)
            .finish()
    }
}

impl Ring {
    /// Build a ring from `(name, weight)` members; upstream `i` gets `vnodes × weight` points.
    pub fn build<'a>(members: impl IntoIterator<Item = (&'a str, u32)>, vnodes: u32) -> Ring {
        let mut points = Vec::new();
        let mut count = 0;
        for (i, (name, weight)) in members.into_iter().enumerate() {
            count += 1;
            let name: Arc<str> = Arc::from(name);
            for replica in 0..vnodes.saturating_mul(weight) {
                points.push(Point {
                    name: name.clone(),
                    replica,
                    upstream: i as u32,
                    pos: 0,
                });
            }
        }
        // Learn the clockwise order the crate will use (a stable sort by hash, as it does), so
        // each point can carry its position.
        let hasher = DefaultHashBuilder;
        let mut keyed: Vec<(u64, usize)> = points
            .iter()
            .enumerate()
            .map(|(i, p)| (hasher.hash_one(p), i))
            .collect();
        keyed.sort_by_key(|&(k, _)| k);
        let mut order = Vec::with_capacity(keyed.len());
        let mut positions = Vec::with_capacity(keyed.len());
        for (pos, &(key, i)) in keyed.iter().enumerate() {
            points[i].pos = pos as u32;
            order.push(points[i].upstream);
            positions.push(key);
        }
        let mut ring = HashRing::new();
        ring.batch_add(points);
        Ring {
            ring,
            order,
            positions,
            members: count,
        }
    }

    /// Number of upstreams on the ring.
    pub fn members(&self) -> usize {
        self.members
    }

    /// The upstream that owns `key`, ignoring health: the first point clockwise of its hash.
    pub fn owner(&self, key: &[u8]) -> Option<usize> {
        self.ring.get(&RingKey(key)).map(|p| p.upstream as usize)
    }

    /// Upstreams in the order a request for `key` should try them: the owner first, then each
    /// further distinct upstream met walking clockwise. Allocation-free.
    pub fn candidates(&self, key: &[u8]) -> Candidates<'_> {
        let start = self.ring.get(&RingKey(key)).map_or(0, |p| p.pos as usize);
        Candidates::new(&self.order, start)
    }

    /// The share of the keyspace (0..=1) each upstream owns, indexed like the members.
    pub fn shares(&self) -> Vec<f64> {
        let mut shares = vec![0.0; self.members];
        let n = self.positions.len();
        for i in 0..n {
            // Point i owns the arc (previous point, point i]; point 0 also owns the wrap-around.
            let prev = if i == 0 {
                self.positions[n - 1]
            } else {
                self.positions[i - 1]
            };
            let arc = self.positions[i].wrapping_sub(prev);
            shares[self.order[i] as usize] += arc as f64 / 2f64.powi(64);
        }
        if n == 1 {
            shares[self.order[0] as usize] = 1.0;
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
        match (old.positions.is_empty(), new.positions.is_empty()) {
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
            .positions
            .iter()
            .chain(&new.positions)
            .copied()
            .collect();
        bounds.sort_unstable();
        bounds.dedup();
        let owner = |ring: &Ring, h: u64| -> usize {
            let i = ring.positions.partition_point(|&p| p < h);
            ring.order[if i == ring.positions.len() { 0 } else { i }] as usize
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

/// The result of [`Ring::movement`].
#[derive(Debug, Clone, PartialEq)]
pub struct Movement {
    pub total: f64,
    pub lost: Vec<f64>,
    pub gained: Vec<f64>,
}

#[cfg(test)]
mod tests;
