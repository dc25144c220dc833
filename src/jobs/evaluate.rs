//! Metrics of a map the caller gives (`POST /v1/models/{model}/evaluate`) as a job.

use crate::eval::{Evaluation, ValidMetric};
use crate::executor::Task;
use crate::runtime::{LoadedModel, RuntimeError, Tensor};

/// Metrics of a given map, as a job: `POST /v1/models/{model}/evaluate`.
pub struct EvaluateTask {
    /// The model.
    pub model: std::sync::Arc<LoadedModel>,
    /// The input, `[1, ...]`, preprocessed.
    pub input: Tensor,
    /// One value per feature, checked against the model.
    pub map: Vec<f32>,
    /// The class the map explains (default: the top prediction).
    pub target: Option<crate::common::targets::TargetSpec>,
    /// The metrics.
    pub metrics: Vec<ValidMetric>,
    /// Seed of random subsets.
    pub seed: u64,
    /// Text models: the input's tokens.
    pub text: Option<std::sync::Arc<crate::runtime::text::Encoded>>,
}

impl Task for EvaluateTask {
    type Output = (crate::runtime::predict::Prediction, Vec<Evaluation>);

    fn run(
        self,
        rt: &mut crate::runtime::WorkerRuntime,
        ctx: &crate::runtime::JobContext,
    ) -> Result<Self::Output, RuntimeError> {
        let model = &self.model;
        let batch = rt.forward_rows(model);
        let mut score = |t: &Tensor| -> Result<Tensor, RuntimeError> {
            ctx.checkpoint()?;
            ctx.advance(t.rows());
            let mut outputs = rt.run(model, t)?;
            outputs
                .remove(&model.spec.output)
                .ok_or_else(|| RuntimeError::Inference {
                    model: model.name.clone(),
                    message: format!("output `{}` missing", model.spec.output),
                })
        };
        let scores = score(&self.input)?.to_f64();
        let target = crate::common::targets::resolve(self.target.as_ref(), model, &scores, 1)?
            .into_iter()
            .next()
            .ok_or_else(|| RuntimeError::Inference {
                model: model.name.clone(),
                message: "no target".into(),
            })?;
        let subject = crate::eval::Subject {
            model,
            input: &self.input,
            map: &self.map,
            target: target.index,
            seed: self.seed,
            batch,
            text: self.text.as_deref(),
        };
        let evaluations = crate::eval::evaluate(&subject, &self.metrics, &mut score)?;
        Ok((target, evaluations))
    }
}
