//! Every background task has an owner: tasks are spawned onto one tracker that shares the
//! gateway's cancellation token, so shutdown cancels them and waits until they have ended
//! instead of leaving them running detached.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Debug)]
pub struct Tasks {
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl Tasks {
    /// Tasks that stop when `cancel` is cancelled.
    pub fn new(cancel: CancellationToken) -> Tasks {
        Tasks { tracker: TaskTracker::new(), cancel }
    }

    /// The token every task watches; cancelled at shutdown.
    pub fn cancel(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Runs `task` until it ends or the tasks are cancelled, whichever comes first.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = task => {}
                () = cancel.cancelled() => {}
            }
        });
    }

    /// Cancels every task and waits for them to end, at most `grace`; returns how many were
    /// still running then (their futures are dropped with the runtime).
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.cancel.cancel();
        self.tracker.close();
        match tokio::time::timeout(grace, self.tracker.wait()).await {
            Ok(()) => 0,
            Err(_) => self.tracker.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_cancels_and_waits_for_every_task() {
        let tasks = Tasks::new(CancellationToken::new());
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        tasks.spawn(async move {
            let _alive = tx;
            std::future::pending::<()>().await;
        });
        assert_eq!(tasks.shutdown(Duration::from_secs(5)).await, 0);
        assert!(rx.recv().await.is_none(), "the task's future was dropped");
    }
}
