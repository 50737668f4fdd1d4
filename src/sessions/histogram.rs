//! A small fixed latency histogram, cheap enough to keep for every live session: 32 log-spaced
//! buckets of `u32` counts (a factor of √2 apart, from 0.5 ms to 16 s) and the exact maximum.
//! No allocation, one array increment per observation.
//!
//! Accuracy: a quantile is reported as the geometric middle of the bucket holding it (capped by
//! the exact maximum; the top rank is the maximum itself), so for latencies between 0.5 ms and 16 s it is within a factor 2^¼ of a
//! real sample, a relative error of at most [`RELATIVE_ERROR`] (19%). Below 0.5 ms the answer
//! is 0.25 ms (absolute error under 0.25 ms); above 16 s it is the maximum.

/// Buckets: 0 holds `[0, 0.5 ms)`, `i` in 1..=30 holds `[0.5 ms·√2^(i-1), 0.5 ms·√2^i)`, and
/// 31 everything from 0.5 ms·√2^30 ≈ 16.4 s up.
pub const BUCKETS: usize = 32;

/// The lower edge of bucket 1, in microseconds.
const FIRST_EDGE_US: f64 = 500.0;

/// The largest relative error of a reported quantile inside the bucketed range: 2^¼ − 1.
pub const RELATIVE_ERROR: f64 = 0.1893;

#[derive(Debug, Clone, Default)]
pub struct LatencyHistogram {
    counts: [u32; BUCKETS],
    /// The largest observation, microseconds (saturating at about 71 minutes).
    max_us: u32,
}

impl LatencyHistogram {
    /// Count one observation of `us` microseconds.
    pub fn record(&mut self, us: u32) {
        let bucket = bucket_of(us);
        self.counts[bucket] = self.counts[bucket].saturating_add(1);
        self.max_us = self.max_us.max(us);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|&c| u64::from(c)).sum()
    }

    pub fn max_us(&self) -> u32 {
        self.max_us
    }

    /// The `q` quantile (0 < q ≤ 1) in microseconds; `None` before any observation.
    pub fn quantile_us(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        // The rank of the sample that is the quantile, 1-based (nearest-rank method).
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        if rank >= total {
            // The top sample is the maximum, known exactly.
            return Some(f64::from(self.max_us));
        }
        let mut seen = 0u64;
        for (bucket, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                return Some(middle_of(bucket).min(f64::from(self.max_us)));
            }
        }
        Some(f64::from(self.max_us))
    }
}

fn bucket_of(us: u32) -> usize {
    let x = f64::from(us) / FIRST_EDGE_US;
    if x < 1.0 {
        return 0;
    }
    // Each bucket is half an octave: two per doubling.
    let i = 1 + (2.0 * x.log2()).floor() as usize;
    i.min(BUCKETS - 1)
}

/// The value reported for a quantile falling in `bucket`, microseconds.
fn middle_of(bucket: usize) -> f64 {
    match bucket {
        0 => FIRST_EDGE_US / 2.0,
        b if b == BUCKETS - 1 => f64::INFINITY, // capped by the maximum
        b => FIRST_EDGE_US * 2f64.powf((b as f64 - 1.0) / 2.0 + 0.25),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_quantile_is_within_the_documented_error_of_a_sample() {
        // One sample at a time: the quantile is that sample, up to the bucket's error.
        let mut us = 500u32;
        while us < 16_000_000 {
            let mut h = LatencyHistogram::default();
            h.record(us);
            h.record(us);
            let got = h.quantile_us(0.5).unwrap();
            let err = (got - f64::from(us)).abs() / f64::from(us);
            assert!(
                err <= RELATIVE_ERROR,
                "{us} µs reported as {got}: error {err}"
            );
            us = us * 11 / 10 + 1;
        }
    }

    #[test]
    fn quantiles_split_fast_and_slow_requests() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.quantile_us(0.5), None);
        for _ in 0..98 {
            h.record(20_000);
        }
        h.record(200_000);
        h.record(900_000);
        let p50 = h.quantile_us(0.5).unwrap();
        assert!((16_000.0..24_000.0).contains(&p50), "p50 {p50}");
        let p99 = h.quantile_us(0.99).unwrap();
        assert!((160_000.0..240_000.0).contains(&p99), "p99 {p99}");
        assert_eq!(h.quantile_us(1.0), Some(900_000.0), "the top is the max");
        assert_eq!(h.max_us(), 900_000);
        assert_eq!(h.count(), 100);
    }

    #[test]
    fn extremes_land_in_the_end_buckets() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(499), 0);
        assert_eq!(bucket_of(500), 1);
        assert_eq!(bucket_of(u32::MAX), BUCKETS - 1);
        let mut h = LatencyHistogram::default();
        h.record(100);
        assert_eq!(h.quantile_us(0.5), Some(100.0), "capped by the max");
    }
}
