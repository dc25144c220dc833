//! What a job is: a validated task that runs on a worker, and the context it polls for cancellation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::runtime::{RuntimeError, WorkerRuntime};

/// Work a worker can run. Tasks are built from validated requests only, so a worker never sees raw input.
pub trait Task: Send + 'static {
    /// What the task returns to its caller.
    type Output: Send + 'static;
    /// Runs on a worker thread with that worker's sessions.
    fn run(self, rt: &mut WorkerRuntime, ctx: &JobContext) -> Result<Self::Output, RuntimeError>;
}

/// Lets long tasks stop between passes when their caller left or their deadline passed.
#[derive(Debug, Clone)]
pub struct JobContext {
    deadline: Instant,
    cancelled: Arc<AtomicBool>,
}

impl JobContext {
    pub(crate) fn new(deadline: Instant, cancelled: Arc<AtomicBool>) -> Self {
        Self { deadline, cancelled }
    }

    /// True when the caller went away or the deadline passed.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst) || Instant::now() >= self.deadline
    }

    /// `Err(Cancelled)` when the task should stop; call between passes.
    pub fn checkpoint(&self) -> Result<(), RuntimeError> {
        if self.is_cancelled() {
            Err(RuntimeError::Cancelled)
        } else {
            Ok(())
        }
    }
}
