//! PatternAttribution (Kindermans et al., ICLR 2018): relevance propagated back from the target's
//! score with each linear layer's weight times its fitted pattern (`w * a`) in place of the
//! weight, an LRP-style pass (the pattern rule table). The estimators make `w^T a = 1` per output
//! neuron, so each linear layer hands its total relevance on unchanged; what a ReLU blocks is
//! lost. The answer reports that conservation: the input relevance's sum minus the target's score,
//! as `convergence_delta`.

use serde::Serialize;
use utoipa::ToSchema;

use super::method::{schemas_of, Capabilities, Cost, Invalid, Method, NamedSchemas, PlanContext};
use super::patterns::{PatternDetails, PatternParams};
use super::{per_target, Cx, ExplainJob, Fold, TargetAttribution};
use crate::onnx::autodiff::RuleSet;
use crate::runtime::predict::Prediction;
use crate::runtime::RuntimeError;

/// PatternAttribution.
pub struct PatternAttribution;

impl Method for PatternAttribution {
    type Params = PatternParams;
    const NAME: &'static str = "pattern-attribution";
    const SUMMARY: &'static str =
        "Relevance propagated back with weights times fitted patterns (Kindermans et al. 2018)";
    const CAPABILITIES: Capabilities = super::patterns::CAPABILITIES;

    fn plan(_: &mut PatternParams, cx: &PlanContext) -> Result<Cost, Invalid> {
        super::patterns::plan(cx)
    }

    fn kept_one_pass(
        cx: &mut Cx,
        _: &PatternParams,
        job: &ExplainJob,
    ) -> Result<Option<(Vec<String>, RuleSet)>, RuntimeError> {
        super::patterns::kept_pass(cx, job, true)
    }

    fn details_schema() -> Option<NamedSchemas> {
        Some(schemas_of::<PatternAttributionDetails>())
    }

    fn explain(
        cx: &mut Cx,
        job: &ExplainJob,
        _: &PatternParams,
        targets: &[Prediction],
        _: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError> {
        let (pass, patterns) = super::patterns::explain(cx, job, targets, true)?;
        let scores = pass.scores.to_f64();
        let width = pass.scores.row_len().max(1);
        let per_row = pass.input_grad.row_len();
        let values = pass.input_grad.as_f32().unwrap_or(&[]);
        let totals: Vec<f64> = (0..targets.len())
            .map(|r| {
                values
                    .get(r * per_row..(r + 1) * per_row)
                    .unwrap_or(&[])
                    .iter()
                    .map(|v| f64::from(*v))
                    .sum()
            })
            .collect();
        let mut out = per_target(job, targets, pass.input_grad, Fold::Sum);
        for (r, ((t, a), total)) in targets.iter().zip(out.iter_mut()).zip(totals).enumerate() {
            let score = scores.get(r * width + t.index.min(width - 1)).copied().unwrap_or(0.0);
            a.convergence_delta = Some(total - score);
            a.details = serde_json::to_value(PatternAttributionDetails {
                relevance_sum: total,
                target_score: score,
                patterns: patterns.clone(),
            })
            .ok();
        }
        Ok(out)
    }
}

/// PatternAttribution's `details`: conservation's two sides and the patterns used.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatternAttributionDetails {
    /// The input relevance's sum.
    pub relevance_sum: f64,
    /// The target's score, the relevance the backward pass starts from.
    pub target_score: f64,
    /// The patterns used.
    pub patterns: PatternDetails,
}
