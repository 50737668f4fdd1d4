//! What the criterion benches share: one measurement configuration, short enough that each
//! bench finishes in about a minute, and realistic session ids.

use std::time::Duration;

use criterion::Criterion;

pub fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

/// The `i`-th of a fixed sequence of UUID-v4-shaped session ids (spread by a multiplicative hash,
/// so consecutive ids share no prefix). Not every bench uses it.
#[allow(dead_code)]
pub fn session_id(i: u64) -> String {
    let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        x >> 32,
        (x >> 16) & 0xffff,
        x & 0xfff,
        (x >> 20) & 0xfff,
        x & 0xffff_ffff_ffff
    )
}
