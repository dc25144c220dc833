//! What a job is: a validated task that runs on a worker. The context it polls for cancellation
//! ([`JobContext`]) belongs to the runtime, so that the code a task runs need not know the executor.

pub use crate::runtime::job::{JobContext, Progress};
use crate::runtime::{RuntimeError, WorkerRuntime};

/// Work a worker can run. Tasks are built from validated requests only, so a worker never sees raw input.
pub trait Task: Send + 'static {
    /// What the task returns to its caller.
    type Output: Send + 'static;
    /// Runs on a worker thread with that worker's sessions.
    fn run(self, rt: &mut WorkerRuntime, ctx: &JobContext) -> Result<Self::Output, RuntimeError>;

    /// Bytes the task plans to hold while it runs (its samples, masks and answer, as planned),
    /// leased from the budget of the jobs running at once before it starts. 0: not counted.
    fn bytes(&self) -> u64 {
        0
    }
}
