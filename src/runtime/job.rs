//! What a running job offers the code under it: its deadline, whether its caller left, and a
//! place to report progress. The executor makes one per job; methods, metrics and estimators
//! poll it between passes without knowing the executor.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::RuntimeError;

/// How far a job has got, for callers that watch (asynchronous jobs): model rows run of those planned.
#[derive(Debug, Default)]
pub struct Progress {
    /// Model rows run so far.
    pub done: AtomicUsize,
    /// Model rows the job expects to run (0 until known).
    pub planned: AtomicUsize,
    /// Set when a worker starts the job.
    pub started: AtomicBool,
    /// When a worker started it, in milliseconds since the Unix epoch (0: not yet).
    pub started_ms: AtomicU64,
}

/// Lets long tasks stop between passes when their caller left or their deadline passed, and
/// report their progress.
#[derive(Debug, Clone)]
pub struct JobContext {
    deadline: Instant,
    cancelled: Arc<AtomicBool>,
    progress: Option<Arc<Progress>>,
}

impl JobContext {
    pub(crate) fn new(deadline: Instant, cancelled: Arc<AtomicBool>, progress: Option<Arc<Progress>>) -> Self {
        Self {
            deadline,
            cancelled,
            progress,
        }
    }

    /// Records `rows` more model rows run.
    pub fn advance(&self, rows: usize) {
        if let Some(p) = &self.progress {
            p.done.fetch_add(rows, Ordering::Relaxed);
        }
    }

    /// Sets the rows the job expects to run in all.
    pub fn plan(&self, rows: usize) {
        if let Some(p) = &self.progress {
            p.planned.store(rows, Ordering::Relaxed);
        }
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
