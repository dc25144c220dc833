//! Guided backpropagation (Springenberg et al. 2015), run with the guided rule table; DeconvNet
//! (Zeiler and Fergus 2014), its sibling with the DeconvNet table (as Captum's
//! `guided_backprop_deconvnet.py` pairs them); and Guided Grad-CAM (guided backpropagation times the
//! Grad-CAM map).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::grad_cam::{cam_pass, cams, guided_cam_cost, plan_layer, planned_layer};
use super::method::{Capabilities, Cost, Inputs, Invalid, Method, Passes, PlanContext};
use super::saliency::one_gradient_per_target;
use super::{fold_channels, input_gradients, per_target, row, Cx, ExplainJob, Fold, TargetAttribution};
use crate::onnx::autodiff::RuleSet;
use crate::runtime::manifest::Layout;
use crate::runtime::predict::Prediction;
use crate::runtime::{RuntimeError, Tensor};

/// Guided backpropagation takes no parameters.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GuidedBackpropParams {}

/// DeconvNet takes no parameters.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeconvNetParams {}

/// Guided Grad-CAM parameters.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct GuidedGradCamParams {
    /// The CAM layer; default: the last spatial layer.
    pub layer: Option<String>,
}

/// Guided backpropagation.
pub struct GuidedBackprop;

impl Method for GuidedBackprop {
    type Params = GuidedBackpropParams;
    const NAME: &'static str = "guided-backprop";
    const SUMMARY: &'static str = "Gradients through ReLUs that pass only positive signals (Springenberg et al. 2015)";
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

    fn plan(_: &mut GuidedBackpropParams, cx: &PlanContext) -> Result<Cost, Invalid> {
        Ok(one_gradient_per_target(cx))
    }

    fn one_pass(_: &Self::Params, _: &ExplainJob) -> Option<(Vec<String>, RuleSet)> {
        Some((Vec::new(), RuleSet::ReluMaskedByInputAndGradient))
    }

    fn rules(_: &Self::Params) -> Vec<RuleSet> {
        vec![RuleSet::ReluMaskedByInputAndGradient]
    }

    fn explain(
        cx: &mut Cx,
        job: &ExplainJob,
        _: &GuidedBackpropParams,
        targets: &[Prediction],
        _: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError> {
        let grads = input_gradients(cx, job, targets, RuleSet::ReluMaskedByInputAndGradient)?;
        Ok(per_target(job, targets, grads, Fold::MaxAbs))
    }
}

/// DeconvNet: guided backpropagation's pass without the forward ReLU mask.
pub struct DeconvNet;

impl Method for DeconvNet {
    type Params = DeconvNetParams;
    const NAME: &'static str = "deconvnet";
    const SUMMARY: &'static str =
        "Gradients through ReLUs that pass only positive signals, whatever the input (Zeiler and Fergus 2014)";
    const CAPABILITIES: Capabilities = GuidedBackprop::CAPABILITIES;

    fn plan(_: &mut DeconvNetParams, cx: &PlanContext) -> Result<Cost, Invalid> {
        Ok(one_gradient_per_target(cx))
    }

    fn one_pass(_: &Self::Params, _: &ExplainJob) -> Option<(Vec<String>, RuleSet)> {
        Some((Vec::new(), RuleSet::ReluMaskedByGradient))
    }

    fn rules(_: &Self::Params) -> Vec<RuleSet> {
        vec![RuleSet::ReluMaskedByGradient]
    }

    fn explain(
        cx: &mut Cx,
        job: &ExplainJob,
        _: &DeconvNetParams,
        targets: &[Prediction],
        _: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError> {
        let grads = input_gradients(cx, job, targets, RuleSet::ReluMaskedByGradient)?;
        Ok(per_target(job, targets, grads, Fold::MaxAbs))
    }
}

/// Guided Grad-CAM.
pub struct GuidedGradCam;

impl Method for GuidedGradCam {
    type Params = GuidedGradCamParams;
    const NAME: &'static str = "guided-grad-cam";
    const SUMMARY: &'static str = "Guided backpropagation times the Grad-CAM map (Selvaraju et al. 2017)";
    const CAPABILITIES: Capabilities = Capabilities {
        passes: Passes::Gradients,
        inputs: Inputs::Image,
        layer: true,
        random: false,
        examples: false,
        decision: false,
        text: false,
        makes_image: false,
    };

    fn plan(p: &mut GuidedGradCamParams, cx: &PlanContext) -> Result<Cost, Invalid> {
        Ok(guided_cam_cost(plan_layer(&mut p.layer, cx)?, cx))
    }

    fn one_pass(p: &Self::Params, job: &ExplainJob) -> Option<(Vec<String>, RuleSet)> {
        cam_pass(job, &p.layer)
    }

    fn rules(_: &Self::Params) -> Vec<RuleSet> {
        vec![RuleSet::Exact, RuleSet::ReluMaskedByInputAndGradient]
    }

    fn explain(
        cx: &mut Cx,
        job: &ExplainJob,
        p: &GuidedGradCamParams,
        targets: &[Prediction],
        _: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError> {
        guided_grad_cam(cx, job, p, targets)
    }
}

fn guided_grad_cam(
    cx: &mut Cx,
    job: &ExplainJob,
    p: &GuidedGradCamParams,
    targets: &[Prediction],
) -> Result<Vec<TargetAttribution>, RuntimeError> {
    let layer = planned_layer(job, &p.layer)?;
    let maps = cams(cx, job, &layer, targets, false)?;
    let grads = input_gradients(cx, job, targets, RuleSet::ReluMaskedByInputAndGradient)?;
    let spec =
        job.model.spec.image.as_ref().ok_or_else(|| {
            crate::runtime::preprocess::InputError::WrongKind("CAM methods explain image models".into())
        })?;
    let (h, w, c) = (spec.height, spec.width, spec.channels);
    let g = grads.as_f32().unwrap_or(&[]);
    let mut product = vec![0f32; g.len()];
    for (r, map) in maps.iter().enumerate() {
        let m = map.as_f32().unwrap_or(&[]);
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let i = r * c * h * w
                        + match spec.layout {
                            Layout::NCHW => ch * h * w + y * w + x,
                            Layout::NHWC => (y * w + x) * c + ch,
                        };
                    product[i] = g[i] * m[y * w + x];
                }
            }
        }
    }
    let product = Tensor::f32(grads.shape.clone(), product);
    Ok(targets
        .iter()
        .enumerate()
        .map(|(r, t)| TargetAttribution {
            target: t.clone(),
            tensor: row(&product, r),
            map: Some(fold_channels(&product, r, spec, Fold::MaxAbs)),
            convergence_delta: None,
            layer: Some(layer.clone()),
            details: None,
        })
        .collect())
}
