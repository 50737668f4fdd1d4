//! Graceful shutdown: one [`CancellationToken`] passed down to every accept loop and connection,
//! one [`TaskTracker`] that counts connections, and a grace deadline after which the remaining
//! connections are abandoned.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub struct Shutdown {
    pub token: CancellationToken,
    pub tracker: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Stop accepting, ask every connection to finish, and wait up to `grace` for them.
    /// Returns how many tasks were still running at the deadline.
    pub async fn drain(&self, grace: Duration) -> usize {
        self.token.cancel();
        self.tracker.close();
        match tokio::time::timeout(grace, self.tracker.wait()).await {
            Ok(()) => 0,
            Err(_) => self.tracker.len(),
        }
    }
}
