//! A standalone uncertainty request as a job.

use std::sync::Arc;

use crate::common::targets::RegionMask;
use crate::executor::Task;
use crate::runtime::{JobContext, RuntimeError, Tensor, WorkerRuntime};
use crate::uncertainty::{Estimate, ValidUncertainty};

/// A standalone uncertainty request as a job.
pub struct UncertaintyTask {
    /// What to run.
    pub valid: ValidUncertainty,
    /// The inputs, one row each, preprocessed.
    pub input: Tensor,
    /// A segmenter's region per input, on the model's input grid (none: no region asked).
    pub regions: Vec<Option<Arc<RegionMask>>>,
}

impl Task for UncertaintyTask {
    type Output = Vec<Estimate>;

    fn run(self, rt: &mut WorkerRuntime, ctx: &JobContext) -> Result<Self::Output, RuntimeError> {
        crate::uncertainty::run(rt, ctx, &self.valid, &self.input, &self.regions)
    }
}
