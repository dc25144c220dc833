//! What a running job offers the code under it: its deadline, whether its caller left, and a
//! place to report progress. The executor makes one per job; methods, metrics and estimators
//! poll it between passes without knowing the executor.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use utoipa::ToSchema;

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
    meter: Arc<CostMeter>,
}

impl JobContext {
    pub(crate) fn new(deadline: Instant, cancelled: Arc<AtomicBool>, progress: Option<Arc<Progress>>) -> Self {
        Self {
            deadline,
            cancelled,
            progress,
            meter: Arc::default(),
        }
    }

    /// The job's pass counter, which the worker's runtime counts every pass into while it runs
    /// the job (so no method can leave a pass out of its cost).
    pub fn meter(&self) -> Arc<CostMeter> {
        self.meter.clone()
    }

    /// The passes counted for this job so far (`worker_ms` left at 0: the caller times its part).
    pub fn cost(&self) -> PassCost {
        self.meter.read()
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

/// Counts a job's passes as the runtime runs them: rows through forward passes, rows through
/// backward passes by rule set, and ONNX Runtime runs.
#[derive(Debug, Default)]
pub struct CostMeter {
    forward_rows: AtomicUsize,
    passes: AtomicUsize,
    backward_rows: Mutex<BTreeMap<&'static str, usize>>,
}

impl CostMeter {
    /// Records one pass of `rows` rows: forward only (`rules` `None`), or through the backward
    /// model of that rule set.
    pub fn pass(&self, rows: usize, rules: Option<&'static str>) {
        self.passes.fetch_add(1, Ordering::Relaxed);
        match rules {
            None => {
                self.forward_rows.fetch_add(rows, Ordering::Relaxed);
            }
            Some(set) => {
                let mut map = self.backward_rows.lock().unwrap_or_else(|p| p.into_inner());
                let n = map.entry(set).or_default();
                *n = n.saturating_add(rows);
            }
        }
    }

    /// What was counted so far.
    pub fn read(&self) -> PassCost {
        let map = self.backward_rows.lock().unwrap_or_else(|p| p.into_inner());
        PassCost {
            forward_rows: self.forward_rows.load(Ordering::Relaxed),
            backward_rows: map.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            passes: self.passes.load(Ordering::Relaxed),
            worker_ms: 0.0,
        }
    }
}

/// What an answer cost, in pass units: the model rows it ran forward and backward, the ONNX
/// Runtime runs they took, and its time on the worker. A backward row is one row through the
/// backward model (its forward half included), so a gradient costs one backward row, not two rows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct PassCost {
    /// Rows run through forward-only passes.
    pub forward_rows: usize,
    /// Rows run through the backward model, by rule set (`exact` gradients,
    /// `relu_masked_by_input_and_gradient` guided backpropagation, `relu_masked_by_gradient`
    /// DeconvNet, `rescale` DeepLIFT, `relevance` LRP).
    pub backward_rows: BTreeMap<String, usize>,
    /// ONNX Runtime runs (passes) of either kind.
    pub passes: usize,
    /// Time on the worker thread, milliseconds: the passes and the method's own arithmetic.
    pub worker_ms: f64,
}

impl PassCost {
    /// The passes counted since `before` (a reading of the same meter).
    pub fn since(&self, before: &PassCost) -> PassCost {
        PassCost {
            forward_rows: self.forward_rows.saturating_sub(before.forward_rows),
            backward_rows: self
                .backward_rows
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.saturating_sub(before.backward_rows.get(k).copied().unwrap_or(0)),
                    )
                })
                .filter(|(_, v)| *v > 0)
                .collect(),
            passes: self.passes.saturating_sub(before.passes),
            worker_ms: 0.0,
        }
    }

    /// All backward rows, whatever their rule set.
    pub fn backward_total(&self) -> usize {
        self.backward_rows.values().fold(0usize, |a, b| a.saturating_add(*b))
    }
}
