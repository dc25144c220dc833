//! A prediction as a job, with what may be attached to it: explanations and uncertainty
//! estimates of the rows meeting their conditions.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::explain::{run, ExplainResult};
use crate::common::targets::TargetSpec;
use crate::common::Limits;
use crate::eval::ValidMetric;
use crate::executor::Task;
use crate::explain::{ExplainJob, ValidParams};
use crate::runtime::predict::{self, Prediction, RowPrediction};
use crate::runtime::{JobContext, LoadedModel, RuntimeError, Tensor, WorkerRuntime};

/// A validated prediction request, as a job for a worker.
pub struct PredictTask {
    /// The model to run.
    pub model: Arc<LoadedModel>,
    /// Input rows, already preprocessed: one tensor per input (texts differ in length), each of
    /// one row or more.
    pub inputs: Vec<Tensor>,
    /// Classes to report per row.
    pub top_k: usize,
}

impl Task for PredictTask {
    type Output = Vec<RowPrediction>;

    fn run(self, rt: &mut WorkerRuntime, ctx: &JobContext) -> Result<Self::Output, RuntimeError> {
        ctx.checkpoint()?;
        predict::predict_rows(rt, &self.model, &self.inputs, self.top_k)
    }
}

/// When a prediction should carry an explanation.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// Explain only when the top prediction has one of these labels.
    pub labels: Option<Vec<String>>,
    /// Explain only when the top prediction's score is at least this.
    pub min_score: Option<f32>,
}

impl Condition {
    /// Whether the top prediction meets the condition.
    pub fn holds(&self, top: &Prediction) -> bool {
        self.labels.as_ref().is_none_or(|l| l.contains(&top.label)) && self.min_score.is_none_or(|m| top.score >= m)
    }
}

/// An explanation attached to a prediction, for the rows meeting `when`.
pub struct AttachedExplain {
    /// Method and parameters of the explanations, validated.
    pub params: ValidParams,
    /// Per input: the targets to explain (default: top-1; a detector's box on that input's
    /// grid) and a segmenter's region on it (default: each class's predicted pixels).
    pub targets: Vec<(Option<TargetSpec>, Option<Arc<crate::common::targets::RegionMask>>)>,
    /// Seed of random methods.
    pub seed: u64,
    /// Work limits.
    pub limits: Limits,
    /// Which rows to explain.
    pub when: Condition,
    /// Metrics of each explanation.
    pub evaluate: Vec<ValidMetric>,
    /// The model's reference set in force when the request was validated.
    pub reference: Option<Arc<crate::examples::ReferenceSet>>,
}

/// A prediction with what is attached to it, in one job: explanations (reusing the prediction's
/// forward pass) and uncertainty estimates, each for the rows meeting its condition.
pub struct PredictJob {
    /// The prediction.
    pub predict: PredictTask,
    /// The attached explanation.
    pub explain: Option<AttachedExplain>,
    /// The attached uncertainty estimate, and the rows it is for.
    pub uncertainty: Option<(crate::uncertainty::ValidUncertainty, Condition)>,
    /// A segmenter's region per input for the uncertainty estimate (none: no region asked).
    pub regions: Vec<Option<Arc<crate::common::targets::RegionMask>>>,
    /// Text models: each row's tokens.
    pub texts: Vec<Option<Arc<crate::runtime::text::Encoded>>>,
}

/// What a [`PredictJob`] gives, one entry per row.
pub struct PredictOutput {
    /// Predictions.
    pub rows: Vec<predict::RowPrediction>,
    /// Explanations of the rows meeting their condition.
    pub explained: Vec<Option<ExplainResult>>,
    /// Uncertainty estimates of the rows meeting their condition.
    pub estimates: Vec<Option<crate::uncertainty::Estimate>>,
}

/// Indices of the rows whose top prediction meets `when`.
fn rows_meeting(rows: &[predict::RowPrediction], when: &Condition) -> Vec<usize> {
    (0..rows.len())
        .filter(|&r| rows[r].predictions.first().is_some_and(|top| when.holds(top)))
        .collect()
}

impl Task for PredictJob {
    type Output = PredictOutput;

    fn bytes(&self) -> u64 {
        // Each row may be explained, as max_job_bytes counts them.
        let rows = self.predict.inputs.first().map_or(1, Tensor::rows) as u64;
        self.explain
            .as_ref()
            .map_or(0, |e| e.params.cost().bytes.saturating_mul(rows))
    }

    fn run(self, rt: &mut WorkerRuntime, ctx: &JobContext) -> Result<Self::Output, RuntimeError> {
        let p = &self.predict;
        ctx.checkpoint()?;
        let rows = predict::predict_rows(rt, &p.model, &p.inputs, p.top_k)?;
        let mut estimates = vec![None; rows.len()];
        if let Some((valid, when)) = &self.uncertainty {
            let chosen = rows_meeting(&rows, when);
            if !chosen.is_empty() {
                let parts = chosen.iter().filter_map(|&r| predict::nth_row(&p.inputs, r)).collect();
                let input = Tensor::concat_rows(parts).ok_or_else(|| RuntimeError::Inference {
                    model: p.model.name.clone(),
                    message: "inputs differ in shape".into(),
                })?;
                let regions: Vec<_> = match self.regions.is_empty() {
                    true => Vec::new(),
                    false => chosen.iter().map(|&r| self.regions.get(r).cloned().flatten()).collect(),
                };
                let found = crate::uncertainty::run(rt, ctx, valid, &input, &regions)?;
                for (r, estimate) in chosen.into_iter().zip(found) {
                    estimates[r] = Some(estimate);
                }
            }
        }
        let mut explained: Vec<Option<ExplainResult>> = (0..rows.len()).map(|_| None).collect();
        if let Some(e) = &self.explain {
            for r in rows_meeting(&rows, &e.when) {
                // An input of several rows (a tabular batch) has the same targets for each.
                let (targets, region) = e.targets.get(r).or(e.targets.last()).cloned().unwrap_or_default();
                let job = ExplainJob {
                    region,
                    model: p.model.clone(),
                    input: predict::nth_row(&p.inputs, r).ok_or_else(|| RuntimeError::Inference {
                        model: p.model.name.clone(),
                        message: format!("no input row {r}"),
                    })?,
                    text: self.texts.get(r).cloned().flatten(),
                    targets,
                    params: e.params.clone(),
                    seed: e.seed,
                    limits: e.limits,
                    scores: rows[r].outputs.get(&p.model.spec.output).cloned(),
                    scored_outputs: Some(target_outputs(&p.model, &rows[r].outputs)),
                    reference: e.reference.clone(),
                };
                explained[r] = Some(run(rt, ctx, &job, &e.evaluate)?);
            }
        }
        Ok(PredictOutput {
            rows,
            explained,
            estimates,
        })
    }
}

/// A predicted row's outputs that an attached explanation's targets read besides its scores (a
/// post-NMS detector's boxes and classes), as one-row tensors.
fn target_outputs(
    model: &LoadedModel,
    outputs: &std::collections::BTreeMap<String, Vec<f64>>,
) -> std::collections::HashMap<String, Tensor> {
    model
        .spec
        .detection
        .iter()
        .flat_map(|d| d.other_outputs())
        .filter_map(|name| {
            let values: Vec<f32> = outputs.get(&name)?.iter().map(|v| *v as f32).collect();
            let t = Tensor::f32(vec![1, values.len()], values);
            Some((name, t))
        })
        .collect()
}
