//! Choosing an upstream on the ring. The owner of a key is the first point clockwise of its
//! hash; when the owner cannot take work (down, ejected, draining), selection walks on clockwise
//! so that only that upstream's keys move, and they come back when it recovers.

use super::{Point, Ring};

/// Upstream indices met walking clockwise from a key's position. Consecutive points of one
/// upstream are folded; an upstream can still reappear later in the walk, which is harmless for
/// "first usable" searches. The walk ends after one full turn.
#[derive(Clone)]
pub struct Candidates<'a> {
    points: &'a [Point],
    next: usize,
    left: usize,
    last: Option<u32>,
}

impl<'a> Candidates<'a> {
    pub(super) fn new(points: &'a [Point], start: usize) -> Self {
        Candidates {
            points,
            next: start,
            left: points.len(),
            last: None,
        }
    }
}

impl Iterator for Candidates<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        while self.left > 0 {
            let up = self.points[self.next].upstream;
            // Wrap by comparison: a `%` would cost a division per step on the data path.
            self.next += 1;
            if self.next == self.points.len() {
                self.next = 0;
            }
            self.left -= 1;
            if self.last != Some(up) {
                self.last = Some(up);
                return Some(up as usize);
            }
        }
        None
    }
}

/// How a pool picks an upstream for a key among those that may take work now.
pub trait RingSelection {
    fn select(&self, ring: &Ring, key: &[u8], usable: &dyn Fn(usize) -> bool) -> Option<usize>;
}

/// The owner if usable, else the next usable upstream clockwise.
#[derive(Debug, Clone, Copy, Default)]
pub struct FirstUsable;

impl RingSelection for FirstUsable {
    fn select(&self, ring: &Ring, key: &[u8], usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        ring.candidates(key).find(|&i| usable(i))
    }
}
