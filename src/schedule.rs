//! When periodic background tasks (health probes, session cleanup, upstream discovery) run
//! next: the interval with ±10% jitter so a fleet's tasks do not synchronise, a random first
//! delay, and the bounded exponential backoff after failures.

use std::time::Duration;

use rand::Rng;

/// The first retry after a failure; doubles up to the task's interval.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);

/// `every` ±10%, at least 1 ms.
pub fn jittered(every: Duration) -> Duration {
    let factor = rand::thread_rng().gen_range(0.9..=1.1);
    every.mul_f64(factor).max(Duration::from_millis(1))
}

/// A random point of the first interval, so tasks started together spread out.
pub fn first_delay(every: Duration) -> Duration {
    every.mul_f64(rand::thread_rng().gen_range(0.0..1.0))
}

/// How long after its `failures`-th consecutive failure a task tries again: 1s doubling,
/// never more than `every` (the next regular run comes by then anyway), at least 1 ms.
pub fn backoff(failures: u32, every: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    FIRST_RETRY
        .saturating_mul(1u32 << doublings)
        .min(every)
        .max(Duration::from_millis(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_up_to_every() {
        let hour = Duration::from_secs(3600);
        let cases = [
            (1, hour, 1),
            (2, hour, 2),
            (3, hour, 4),
            (10, hour, 512),
            (13, hour, 3600),
            (u32::MAX, hour, 3600),
            (4, Duration::from_secs(5), 5),
            (0, hour, 1),
        ];
        for (failures, every, secs) in cases {
            assert_eq!(
                backoff(failures, every),
                Duration::from_secs(secs),
                "{failures} failures, every {every:?}"
            );
        }
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(10));
            assert!((9_000..=11_000).contains(&d.as_millis()), "{d:?}");
            assert!(first_delay(Duration::from_secs(10)) < Duration::from_secs(10));
        }
        assert_eq!(jittered(Duration::ZERO), Duration::from_millis(1));
    }
}
