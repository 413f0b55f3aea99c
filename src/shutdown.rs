//! Shutdown as one handle: the root `CancellationToken` and the `TaskTracker`.
//!
//! Cancelling the token starts the drain; every task is spawned on the
//! tracker, so shutdown can wait for them all. A leaf module: the stages
//! that need only this handle (`forward`, the snapshot's probe tasks) import
//! it without reaching the rest of [`crate::handles`].

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The root cancellation token and the tracker of every spawned task.
#[derive(Debug, Clone)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    /// Pair a root token with the tracker its tasks are spawned on.
    pub fn new(token: CancellationToken, tracker: TaskTracker) -> Self {
        Shutdown { token, tracker }
    }

    /// Cancelled when shutdown begins.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Every spawned task, so shutdown can wait for them all.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }
}
