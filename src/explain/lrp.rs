//! Layer-wise relevance propagation (Bach et al. 2015) with zennit's composites: one pass of the
//! backward graph built with the LRP rule table (`RuleSet::Relevance`), whose seed is the target's
//! score. Batch normalisation is folded into the convolution before it; the answer reports
//! conservation, the sum of input relevance minus the target's score, as `convergence_delta`
//! (near 0 for bias-free ReLU networks with small epsilon; biases and the stabiliser absorb some).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::method::{
    check_range, schemas_of, Capabilities, Cost, Inputs, Invalid, Method, NamedSchemas, Passes, PlanContext,
};
use super::saliency::one_gradient_per_target;
use super::{one_hot, per_target, repeat_rows, Cx, ExplainJob, Fold, TargetAttribution};
use crate::onnx::autodiff::rules::{Composite, RelevanceRules};
use crate::onnx::autodiff::RuleSet;
use crate::runtime::predict::Prediction;
use crate::runtime::RuntimeError;

/// LRP parameters.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LrpParams {
    /// Which rule each layer gets (zennit's composites).
    #[schema(default = "epsilon_plus_flat")]
    pub composite: Composite,
    /// Epsilon of the Epsilon rule (dense layers; every layer in `epsilon`). Default: 1e-6, or
    /// 1e-9 for `epsilon` (Captum's).
    #[schema(exclusive_minimum = 0.0, maximum = 1000.0)]
    pub epsilon: Option<f32>,
    /// Gamma of the Gamma rule (`epsilon_gamma_box`'s convolutions).
    #[schema(default = 0.25, minimum = 0.0, maximum = 100.0)]
    pub gamma: f32,
}

impl Default for LrpParams {
    fn default() -> Self {
        Self {
            composite: Composite::EpsilonPlusFlat,
            epsilon: None,
            gamma: 0.25,
        }
    }
}

impl LrpParams {
    fn rules(&self) -> RelevanceRules {
        RelevanceRules::new(
            self.composite,
            self.epsilon.unwrap_or(self.composite.default_epsilon()),
            self.gamma,
        )
    }
}

/// LRP.
pub struct Lrp;

impl Method for Lrp {
    type Params = LrpParams;
    const NAME: &'static str = "lrp";
    const SUMMARY: &'static str = "Layer-wise relevance propagation with zennit's composites (Bach et al. 2015)";
    const CAPABILITIES: Capabilities = Capabilities {
        passes: Passes::Gradients,
        inputs: Inputs::Any,
        layer: false,
        random: false,
        examples: false,
        decision: false,
        text: false,
        makes_image: false,
    };

    fn plan(p: &mut LrpParams, cx: &PlanContext) -> Result<Cost, Invalid> {
        // Above 0 and a normal f32 (at least 1.2e-38): a subnormal stabiliser divides by ~0.
        if let Some(e) = p.epsilon.filter(|e| !(f32::MIN_POSITIVE..=1000.0).contains(e)) {
            return Err(Invalid::Request(format!(
                "params.epsilon must be above 0 (at least 1.2e-38) and at most 1000, got {e}"
            )));
        }
        if !p.gamma.is_finite() {
            return Err(Invalid::Request("params.gamma must be a finite number".into()));
        }
        check_range("gamma", p.gamma, 0.0, 100.0)?;
        Ok(one_gradient_per_target(cx))
    }

    fn one_pass(p: &Self::Params, _: &ExplainJob) -> Option<(Vec<String>, RuleSet)> {
        Some((Vec::new(), RuleSet::Relevance(p.rules())))
    }

    fn rules(p: &Self::Params) -> Vec<RuleSet> {
        vec![RuleSet::Relevance(p.rules())]
    }

    fn details_schema() -> Option<NamedSchemas> {
        Some(schemas_of::<LrpDetails>())
    }

    fn explain(
        cx: &mut Cx,
        job: &ExplainJob,
        p: &LrpParams,
        targets: &[Prediction],
        _: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError> {
        let classes = crate::common::detection_targets::width(&job.model);
        let indices: Vec<usize> = targets.iter().map(|t| t.index).collect();
        let input = repeat_rows(&job.input, targets.len());
        let chunk = cx.max_batch();
        let pass = cx.gradients(
            &[],
            RuleSet::Relevance(p.rules()),
            &input,
            &one_hot(&indices, classes),
            chunk,
        )?;
        let scores = pass.scores.to_f64();
        let width = pass.scores.row_len().max(1);
        let relevance = pass.input_grad;
        let per_row = relevance.row_len();
        let values = relevance.as_f32().unwrap_or(&[]);
        let totals: Vec<f64> = (0..targets.len())
            .map(|r| {
                values[r * per_row..(r + 1) * per_row]
                    .iter()
                    .map(|v| f64::from(*v))
                    .sum()
            })
            .collect();
        let mut out = per_target(job, targets, relevance, Fold::Sum);
        for (r, ((t, a), total)) in targets.iter().zip(out.iter_mut()).zip(totals).enumerate() {
            let score = scores.get(r * width + t.index.min(width - 1)).copied().unwrap_or(0.0);
            a.convergence_delta = Some(total - score);
            a.details = serde_json::to_value(LrpDetails {
                composite: p.composite,
                relevance_sum: total,
                target_score: score,
            })
            .ok();
        }
        Ok(out)
    }
}

/// LRP's `details`: conservation's two sides.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LrpDetails {
    /// The composite that ran.
    pub composite: Composite,
    /// The input relevance's sum.
    pub relevance_sum: f64,
    /// The target's score, the relevance the backward pass starts from.
    pub target_score: f64,
}
