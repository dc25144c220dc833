//! Several methods on one input as one job.

use super::explain::{run, ExplainResult, ExplainTask};
use crate::executor::Task;
use crate::runtime::{JobContext, RuntimeError, WorkerRuntime};

/// Several methods on one input, in one job: the input's forward pass is run once and shared, so
/// the methods start from the same scores.
pub struct CompareTask(pub Vec<ExplainTask>);

impl Task for CompareTask {
    type Output = Vec<ExplainResult>;

    fn bytes(&self) -> u64 {
        self.0
            .iter()
            .map(|j| j.job.params.cost().bytes)
            .fold(0, u64::saturating_add)
    }

    fn run(self, rt: &mut WorkerRuntime, ctx: &JobContext) -> Result<Vec<ExplainResult>, RuntimeError> {
        let Some(first) = self.0.first().map(|t| &t.job) else {
            return Ok(Vec::new());
        };
        ctx.checkpoint()?;
        let model = &first.model;
        let mut outputs = rt.run(model, &first.input)?;
        // What targets read besides the scores (a post-NMS detector's boxes and classes).
        let others: std::collections::HashMap<String, crate::runtime::Tensor> = model
            .spec
            .detection
            .iter()
            .flat_map(|d| d.other_outputs())
            .filter_map(|name| Some((name.clone(), outputs.get(&name)?.clone())))
            .collect();
        let scores = outputs
            .remove(&model.spec.output)
            .ok_or_else(|| RuntimeError::Inference {
                model: model.name.clone(),
                message: format!("output `{}` missing", model.spec.output),
            })?
            .to_f64();
        self.0
            .into_iter()
            .map(|mut task| {
                task.job.scores = Some(scores.clone());
                task.job.scored_outputs = Some(others.clone());
                run(rt, ctx, &task.job, &task.evaluate)
            })
            .collect()
    }
}
