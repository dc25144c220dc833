//! Saliency (Simonyan et al. 2014): the gradient of the target w.r.t. the input.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::method::{Capabilities, Cost, Inputs, Invalid, Method, Passes, PlanContext};
use super::{input_gradients, per_target, Cx, ExplainJob, Fold, TargetAttribution};
use crate::onnx::autodiff::RuleSet;
use crate::runtime::predict::Prediction;
use crate::runtime::{RuntimeError, Tensor};

/// Saliency parameters.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SaliencyParams {
    /// Absolute values of the gradient (Simonyan et al.; Captum's default). The image map is then
    /// the largest absolute value over channels; signed gradients are summed over channels.
    #[schema(default = true)]
    pub abs: bool,
}

impl Default for SaliencyParams {
    fn default() -> Self {
        Self { abs: true }
    }
}

/// Saliency.
pub struct Saliency;

impl Method for Saliency {
    type Params = SaliencyParams;
    const NAME: &'static str = "saliency";
    const SUMMARY: &'static str = "Gradient of the target w.r.t. the input (Simonyan et al. 2014)";
    const CAPABILITIES: Capabilities = Capabilities {
        passes: Passes::Gradients,
        inputs: Inputs::Any,
        layer: false,
        random: false,
        examples: false,
        decision: false,
        text: true,
        makes_image: false,
    };

    fn plan(_: &mut SaliencyParams, cx: &PlanContext) -> Result<Cost, Invalid> {
        Ok(one_gradient_per_target(cx))
    }

    fn one_pass(_: &Self::Params, _: &ExplainJob) -> Option<(Vec<String>, RuleSet)> {
        Some((Vec::new(), RuleSet::Exact))
    }

    fn explain(
        cx: &mut Cx,
        job: &ExplainJob,
        p: &SaliencyParams,
        targets: &[Prediction],
        _: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError> {
        let grads = input_gradients(cx, job, targets, RuleSet::Exact)?;
        let (grads, fold) = if p.abs {
            (abs(grads), Fold::MaxAbs)
        } else {
            (grads, Fold::Sum)
        };
        Ok(per_target(job, targets, grads, fold))
    }
}

/// The cost of one input-gradient row per target: the rows, their gradients, the answer.
pub(super) fn one_gradient_per_target(cx: &PlanContext) -> Cost {
    Cost {
        samples: cx.targets,
        rows: cx.targets,
        bytes: super::method::bytes(cx.input_len(), 4)
            .saturating_mul(2 * cx.targets as u64)
            .saturating_add(cx.answer_bytes()),
    }
}

/// Elementwise absolute value, in place.
pub(super) fn abs(mut t: Tensor) -> Tensor {
    if let crate::runtime::tensor::TensorData::F32(values) = &mut t.data {
        values.iter_mut().for_each(|v| *v = v.abs());
    }
    t
}
