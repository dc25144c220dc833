//! PatternNet (Kindermans et al., ICLR 2018): the signal the model detects in the input, found by
//! propagating the target's score back with each linear layer's fitted pattern in place of its
//! weight (ReLU masks and max-pooling switches as the forward pass set them). For a linear model
//! with a distractor the gradient shows the filter, which cancels the distractor; PatternNet shows
//! the signal direction. Patterns are fitted once per model and data (`explain::patterns`).

use super::method::{schemas_of, Capabilities, Cost, Invalid, Method, NamedSchemas, PlanContext};
use super::patterns::{PatternDetails, PatternParams};
use super::{per_target, Cx, ExplainJob, Fold, TargetAttribution};
use crate::onnx::autodiff::RuleSet;
use crate::runtime::predict::Prediction;
use crate::runtime::RuntimeError;

/// PatternNet.
pub struct PatternNet;

impl Method for PatternNet {
    type Params = PatternParams;
    const NAME: &'static str = "pattern-net";
    const SUMMARY: &'static str =
        "The signal the model detects: the score propagated back through fitted patterns (Kindermans et al. 2018)";
    const CAPABILITIES: Capabilities = super::patterns::CAPABILITIES;

    fn plan(_: &mut PatternParams, cx: &PlanContext) -> Result<Cost, Invalid> {
        super::patterns::plan(cx)
    }

    fn kept_one_pass(
        cx: &mut Cx,
        _: &PatternParams,
        job: &ExplainJob,
    ) -> Result<Option<(Vec<String>, RuleSet)>, RuntimeError> {
        super::patterns::kept_pass(cx, job, false)
    }

    fn details_schema() -> Option<NamedSchemas> {
        Some(schemas_of::<PatternNetDetails>())
    }

    fn explain(
        cx: &mut Cx,
        job: &ExplainJob,
        _: &PatternParams,
        targets: &[Prediction],
        _: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError> {
        let (pass, details) = super::patterns::explain(cx, job, targets, false)?;
        let mut out = per_target(job, targets, pass.input_grad, Fold::Sum);
        for a in &mut out {
            a.details = serde_json::to_value(PatternNetDetails {
                patterns: details.clone(),
            })
            .ok();
        }
        Ok(out)
    }
}

/// PatternNet's `details`: the patterns used (as PatternAttribution's, under `patterns`, so that
/// the shared schema stays the patterns' alone).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatternNetDetails {
    /// The patterns used.
    pub patterns: PatternDetails,
}
