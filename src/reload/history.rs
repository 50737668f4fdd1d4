//! The last [`KEPT`] reloads, in memory, for the status page: when, which version, whether it
//! applied, and its diff (or why it was refused); discovery changes count as reloads of their
//! pool. Bounded, so a reload loop costs nothing.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

use super::{PoolDiff, ReloadReport};
use crate::error::ReloadError;

/// Reloads remembered.
pub const KEPT: usize = 10;

/// One reload as remembered.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadRecord {
    /// RFC 3339, UTC.
    pub at: String,
    /// The version it made (a refused reload makes none).
    pub version: Option<u64>,
    pub result: &'static str,
    pub error: Option<String>,
    pub pools: Vec<PoolDiff>,
    pub listeners_added: Vec<String>,
    pub listeners_removed: Vec<String>,
}

impl ReloadRecord {
    /// A record stamped now, with no error and no listener changes.
    fn now(result: &'static str, version: Option<u64>, pools: Vec<PoolDiff>) -> ReloadRecord {
        ReloadRecord {
            at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            version,
            result,
            error: None,
            pools,
            listeners_added: Vec::new(),
            listeners_removed: Vec::new(),
        }
    }
}

#[derive(Debug, Default)]
pub struct ReloadHistory(Mutex<VecDeque<ReloadRecord>>);

impl ReloadHistory {
    pub fn push(&self, result: &Result<ReloadReport, ReloadError>) {
        self.keep(match result {
            Ok(r) => ReloadRecord {
                listeners_added: r.listeners_added.clone(),
                listeners_removed: r.listeners_removed.clone(),
                ..ReloadRecord::now("success", Some(r.version), r.pools.clone())
            },
            Err(e) => ReloadRecord {
                error: Some(e.to_string()),
                ..ReloadRecord::now("failure", None, Vec::new())
            },
        });
    }

    /// A discovery answer that changed pool `diff.pool` (applied like a reload of that pool).
    pub fn push_discovered(&self, version: u64, diff: &PoolDiff) {
        self.keep(ReloadRecord::now(
            "discovery",
            Some(version),
            vec![diff.clone()],
        ));
    }

    fn keep(&self, record: ReloadRecord) {
        let mut kept = self.lock();
        if kept.len() == KEPT {
            kept.pop_front();
        }
        kept.push_back(record);
    }

    /// Newest first.
    pub fn recent(&self) -> Vec<ReloadRecord> {
        self.lock().iter().rev().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<ReloadRecord>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_ten_newest_first() {
        let history = ReloadHistory::default();
        for version in 1..=12 {
            history.push(&Ok(ReloadReport {
                version,
                pools: Vec::new(),
                listeners_added: Vec::new(),
                listeners_removed: Vec::new(),
            }));
        }
        history.push(&Err(ReloadError::Bind {
            listener: "web".into(),
            addr: "127.0.0.1:1".parse().unwrap(),
            source: std::io::Error::other("in use"),
        }));
        let recent = history.recent();
        assert_eq!(recent.len(), KEPT);
        assert_eq!(recent[0].result, "failure");
        assert!(recent[0].error.as_deref().unwrap().contains("web"));
        assert_eq!(recent[1].version, Some(12));
        assert_eq!(recent[KEPT - 1].version, Some(4), "the oldest went first");
    }
}
