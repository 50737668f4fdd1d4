//! The session figures' memory bound: 10,000 live sessions (and more offered than the table
//! may keep) stay within `max_pinned_sessions`, and what they cost stays within the figure the
//! README documents.

use std::sync::Arc;
use std::time::Duration;

use sessiongate::sessions::stats::{Outcome, SessionStats};
use sessiongate::sessions::{entry_bytes, Pin, SessionPins};

/// The README's figure per live session, for 36-byte ids (UUIDs).
const DOCUMENTED_ENTRY_BYTES: usize = 1024;
const BOUND: u64 = 10_000;

/// Resident memory of this process, bytes (Linux).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}

#[test]
fn ten_thousand_live_sessions_stay_within_the_documented_bound() {
    let size = std::mem::size_of::<SessionStats>();
    let per_entry = entry_bytes(36);
    println!("size_of::<SessionStats>() = {size} B; estimated entry = {per_entry} B");
    assert!(
        per_entry <= DOCUMENTED_ENTRY_BYTES,
        "an entry is estimated at {per_entry} B, the README says at most {DOCUMENTED_ENTRY_BYTES}"
    );

    let node = Pin {
        upstream: Arc::from("cli-0"),
        addr: Arc::from("127.0.0.1:1"),
    };
    let pins = SessionPins::new(Duration::from_secs(3600), BOUND);
    let before = rss_bytes();
    let offered = BOUND as usize + 2_000;
    for i in 0..offered {
        let id = format!("{:08x}-0000-4000-8000-{:012x}", i, i);
        pins.pin(&id, node.clone());
        let stats = pins.stats(&id).expect("just pinned");
        // Fill the ring and the histogram as a busy session would.
        for r in 0..12u64 {
            stats.record("session.send", Duration::from_millis(r * 7), Outcome::Ok);
        }
    }
    let kept = pins.len();
    let grown = rss_bytes().saturating_sub(before);
    println!("{kept} sessions kept; resident memory grew by {grown} B");
    assert!(kept <= BOUND, "{kept} sessions kept, bound {BOUND}");
    assert!(
        kept >= BOUND * 9 / 10,
        "the table keeps about its bound: {kept}"
    );
    let estimate = kept as usize * per_entry;
    assert!(
        estimate <= BOUND as usize * DOCUMENTED_ENTRY_BYTES,
        "estimate {estimate} B"
    );
    // What the process really grew by, every entry offered counted (evicted ones' memory may
    // not be handed back yet): within the documented figure too.
    assert!(
        grown <= (offered * DOCUMENTED_ENTRY_BYTES) as u64,
        "resident memory grew by {grown} B for {offered} sessions"
    );
    let one = pins.sessions().next().expect("a live session");
    assert_eq!(one.stats.view().requests, 12);
}
