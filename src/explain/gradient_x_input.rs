//! Gradient x input (Shrikumar et al. 2016): the gradient scaled by the input it was taken at.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::method::{Capabilities, Cost, Inputs, Invalid, Method, Passes, PlanContext};
use super::saliency::one_gradient_per_target;
use super::{input_gradients, per_target, repeat_rows, Cx, ExplainJob, Fold, TargetAttribution};
use crate::onnx::autodiff::RuleSet;
use crate::runtime::predict::Prediction;
use crate::runtime::{RuntimeError, Tensor};

/// Gradient x input takes no parameters.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GradientXInputParams {}

/// Gradient x input.
pub struct GradientXInput;

impl Method for GradientXInput {
    type Params = GradientXInputParams;
    const NAME: &'static str = "gradient-x-input";
    const SUMMARY: &'static str = "Gradient times input (Shrikumar et al. 2016)";
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

    fn plan(_: &mut GradientXInputParams, cx: &PlanContext) -> Result<Cost, Invalid> {
        Ok(one_gradient_per_target(cx))
    }

    fn one_pass(_: &Self::Params, _: &ExplainJob) -> Option<(Vec<String>, RuleSet)> {
        Some((Vec::new(), RuleSet::Exact))
    }

    fn explain(
        cx: &mut Cx,
        job: &ExplainJob,
        _: &GradientXInputParams,
        targets: &[Prediction],
        _: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError> {
        gradient_x_input(cx, job, targets)
    }
}

fn gradient_x_input(
    cx: &mut Cx,
    job: &ExplainJob,
    targets: &[Prediction],
) -> Result<Vec<TargetAttribution>, RuntimeError> {
    let grads = input_gradients(cx, job, targets, RuleSet::Exact)?;
    let inputs = repeat_rows(&job.input, targets.len());
    let product: Vec<f32> = grads
        .as_f32()
        .unwrap_or(&[])
        .iter()
        .zip(inputs.as_f32().unwrap_or(&[]))
        .map(|(g, x)| g * x)
        .collect();
    Ok(per_target(
        job,
        targets,
        Tensor::f32(grads.shape.clone(), product),
        Fold::Sum,
    ))
}
