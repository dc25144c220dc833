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
        let mut score = |t: &Tensor| {
            ctx.checkpoint()?;
            ctx.advance(t.rows());
            rt.run(model, t)
        };
        let first = score(&self.input)?;
        let scores = first
            .get(&model.spec.output)
            .ok_or_else(|| RuntimeError::Inference {
                model: model.name.clone(),
                message: format!("output `{}` missing", model.spec.output),
            })?
            .to_f64();
        let others = |name: &str| first.get(name).map(Tensor::to_f64);
        let target = crate::common::targets::resolve_with(self.target.as_ref(), model, &scores, &others, 1)?
            .into_iter()
            .next()
            .ok_or_else(|| RuntimeError::Inference {
                model: model.name.clone(),
                message: "no target".into(),
            })?;
        // A detector's target is its detection, which each perturbed input's best match is
        // compared with.
        let detections = match model.spec.detection {
            Some(_) => crate::common::detection_targets::detections(model, &scores, &others)?,
            None => Vec::new(),
        };
        let subject = crate::eval::Subject {
            model,
            input: &self.input,
            map: &self.map,
            target: target.index,
            seed: self.seed,
            batch,
            text: self.text.as_deref(),
            detection: detections.iter().find(|d| d.position == target.index),
        };
        let evaluations = crate::eval::evaluate(&subject, &self.metrics, &mut score)?;
        Ok((target, evaluations))
    }
}
