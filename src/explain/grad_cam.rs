//! Grad-CAM (Selvaraju et al. 2017) and Grad-CAM++ (Chattopadhay et al. 2018): a layer's activation
//! maps weighted by their gradients, ReLU'd, and upsampled bilinearly to the input size.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::method::{Capabilities, Cost, Inputs, Invalid, Method, Passes, PlanContext};
use super::saliency::one_gradient_per_target;
use super::{one_hot, repeat_rows, Cx, ExplainJob, TargetAttribution};
use crate::onnx::autodiff::RuleSet;
use crate::runtime::gradients::LayerSize;
use crate::runtime::predict::Prediction;
use crate::runtime::preprocess::InputError;
use crate::runtime::{RuntimeError, Tensor};

/// Grad-CAM and Grad-CAM++ parameters.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct GradCamParams {
    /// The 4-D activation to weigh; default: the last spatial layer (`gradients.default_cam_layer`
    /// in `GET /v1/models/{model}`).
    pub layer: Option<String>,
}

/// Checks the requested layer at the edge and fills in the default, so the answer names the layer
/// used: the requested one if it is a CAM candidate, else the model's default. Returns its channels.
pub(super) fn plan_layer(layer: &mut Option<String>, cx: &PlanContext) -> Result<LayerSize, Invalid> {
    let model = cx.model;
    let report = model.gradient_report.get();
    let candidates = report.map(|r| r.cam_layers.as_slice()).unwrap_or_default();
    let chosen = match layer.take() {
        Some(l) if candidates.contains(&l) => l,
        Some(l) => {
            let mut shown: Vec<&str> = candidates.iter().map(String::as_str).take(20).collect();
            if candidates.len() > shown.len() {
                shown.push("...");
            }
            return Err(Invalid::Model(format!(
                "layer `{}` of model `{}` is not a CAM layer (a 4-D spatial activation, or a vision transformer's token sequence); candidates: {}",
                l.chars().take(200).collect::<String>(),
                model.name,
                shown.join(", ")
            )));
        }
        None => report
            .and_then(|r| r.default_cam_layer.clone())
            .ok_or_else(|| Invalid::Model(format!("model `{}` has no spatial layer for CAM methods", model.name)))?,
    };
    let size = report
        .and_then(|r| r.layer_sizes.get(&chosen).copied())
        .unwrap_or_default();
    *layer = Some(chosen);
    Ok(size)
}

/// The CAM methods' first pass: gradients at the layer, standard rules.
pub(super) fn cam_pass(job: &ExplainJob, layer: &Option<String>) -> Option<(Vec<String>, RuleSet)> {
    Some((vec![planned_layer(job, layer).ok()?], RuleSet::Exact))
}

/// The layer `plan_layer` chose.
pub(super) fn planned_layer(job: &ExplainJob, layer: &Option<String>) -> Result<String, RuntimeError> {
    layer.clone().ok_or_else(|| {
        InputError::BadFeatures(format!(
            "model `{}` has no spatial layer for CAM methods",
            job.model.name
        ))
        .into()
    })
}

/// The cost of a CAM: one gradient row per target, plus the layer's activations and gradients.
fn cam_cost(size: LayerSize, cx: &PlanContext) -> Cost {
    let mut cost = one_gradient_per_target(cx);
    // The layer's activations and gradients; where an axis was not probed, a layer holds at most
    // about as many values per channel as the input has pixels.
    let values = size.values.unwrap_or(size.channels.saturating_mul(cx.pixels()));
    let layer = super::method::bytes(values, 8).saturating_mul(cx.targets as u64);
    cost.bytes = cost.bytes.saturating_add(layer);
    cost
}

const CAM: Capabilities = Capabilities {
    passes: Passes::Gradients,
    inputs: Inputs::Image,
    layer: true,
    random: false,
    examples: false,
    decision: false,
    text: false,
    makes_image: false,
};

/// Grad-CAM.
pub struct GradCam;

impl Method for GradCam {
    type Params = GradCamParams;
    const NAME: &'static str = "grad-cam";
    const SUMMARY: &'static str = "A layer's activations weighted by their mean gradients (Selvaraju et al. 2017)";
    const CAPABILITIES: Capabilities = CAM;

    fn plan(p: &mut GradCamParams, cx: &PlanContext) -> Result<Cost, Invalid> {
        Ok(cam_cost(plan_layer(&mut p.layer, cx)?, cx))
    }

    fn one_pass(p: &Self::Params, job: &ExplainJob) -> Option<(Vec<String>, RuleSet)> {
        cam_pass(job, &p.layer)
    }

    fn explain(
        cx: &mut Cx,
        job: &ExplainJob,
        p: &GradCamParams,
        targets: &[Prediction],
        _: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError> {
        explain(cx, job, p, targets, false)
    }
}

/// Grad-CAM++.
pub struct GradCamPlusPlus;

impl Method for GradCamPlusPlus {
    type Params = GradCamParams;
    const NAME: &'static str = "grad-cam-plus-plus";
    const SUMMARY: &'static str = "Grad-CAM with higher-order gradient weights (Chattopadhay et al. 2018)";
    const CAPABILITIES: Capabilities = CAM;

    fn plan(p: &mut GradCamParams, cx: &PlanContext) -> Result<Cost, Invalid> {
        GradCam::plan(p, cx)
    }

    fn one_pass(p: &Self::Params, job: &ExplainJob) -> Option<(Vec<String>, RuleSet)> {
        cam_pass(job, &p.layer)
    }

    fn explain(
        cx: &mut Cx,
        job: &ExplainJob,
        p: &GradCamParams,
        targets: &[Prediction],
        _: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError> {
        explain(cx, job, p, targets, true)
    }
}

/// The cost of Guided Grad-CAM: a CAM, and guided gradients.
pub(super) fn guided_cam_cost(size: LayerSize, cx: &PlanContext) -> Cost {
    let cam = cam_cost(size, cx);
    let guided = one_gradient_per_target(cx);
    Cost {
        samples: cam.samples + guided.samples,
        rows: cam.rows + guided.rows,
        bytes: cam.bytes.saturating_add(guided.bytes),
    }
}

/// A layer's values as channels-first maps: `(channels, height, width, [rows][channels][h][w])`,
/// transposed when the model report says the layer holds its channels last (converted
/// channels-last graphs), and for a vision transformer's token sequence its patch tokens laid on
/// their grid (the class token left out), so every CAM pools over the channels whatever the layout.
pub(super) fn feature_maps<'t>(job: &ExplainJob, layer: &str, t: &'t Tensor) -> (usize, usize, usize, Cow<'t, [f32]>) {
    let report = job.model.gradient_report.get();
    let grid = report.and_then(|r| r.cam_layer_tokens.get(layer)).copied();
    let channels_last = report.and_then(|r| r.cam_layer_channel_axis.get(layer)) == Some(&3);
    let values = t.as_f32().unwrap_or(&[]);
    match grid {
        Some(grid) => tokens_as_maps(values, t.shape[0], t.shape[1], t.shape[2], grid),
        None if channels_last => {
            let (rows, h, w) = (t.shape[0], t.shape[1], t.shape[2]);
            let skip = crate::onnx::autodiff::TokenGrid {
                skip: 0,
                height: h,
                width: w,
            };
            tokens_as_maps(values, rows, h * w, t.shape[3], skip)
        }
        None => (t.shape[1], t.shape[2], t.shape[3], Cow::Borrowed(values)),
    }
}

/// Channels-last values `[rows][tokens][k]` whose tokens after the first `grid.skip` are a
/// `height x width` grid, as channels-first maps `(k, height, width, [rows][k][height][width])`.
fn tokens_as_maps<'t>(
    values: &[f32],
    rows: usize,
    tokens: usize,
    k: usize,
    grid: crate::onnx::autodiff::TokenGrid,
) -> (usize, usize, usize, Cow<'t, [f32]>) {
    let (h, w, skip) = (grid.height, grid.width, grid.skip);
    let hw = h * w;
    let mut out = vec![0f32; rows * k * hw];
    for r in 0..rows {
        for p in 0..hw.min(tokens.saturating_sub(skip)) {
            for c in 0..k {
                out[(r * k + c) * hw + p] = values[(r * tokens + skip + p) * k + c];
            }
        }
    }
    (k, h, w, Cow::Owned(out))
}

/// CAMs for every target, upsampled to the input size: `[targets][height * width]`.
pub(super) fn cams(
    cx: &mut Cx,
    job: &ExplainJob,
    layer: &str,
    targets: &[Prediction],
    plus_plus: bool,
) -> Result<Vec<Tensor>, RuntimeError> {
    let spec = job
        .model
        .spec
        .image
        .as_ref()
        .ok_or_else(|| InputError::WrongKind("CAM methods explain image models".into()))?;
    let classes = crate::common::detection_targets::width(&job.model);
    let indices: Vec<usize> = targets.iter().map(|t| t.index).collect();
    let input = repeat_rows(&job.input, targets.len());
    let pass = cx.layer_gradients(
        &[layer.to_string()],
        &input,
        &one_hot(&indices, classes),
        cx.max_batch(),
    )?;
    let (act, grad) = &pass.layers[0];
    let (k, h, w, a) = feature_maps(job, layer, act);
    let (_, _, _, g) = feature_maps(job, layer, grad);
    let hw = h * w;
    let mut out = Vec::new();
    for r in 0..targets.len() {
        let mut cam = vec![0f32; hw];
        for c in 0..k {
            let base = (r * k + c) * hw;
            let (ac, gc) = (&a[base..base + hw], &g[base..base + hw]);
            let weight: f32 = if plus_plus {
                // alpha = g^2 / (2 g^2 + sum(A) g^3), weight = sum(alpha * relu(g)).
                let sum_a: f32 = ac.iter().sum();
                gc.iter()
                    .map(|gv| {
                        let (g2, g3) = (gv * gv, gv * gv * gv);
                        let denominator = 2.0 * g2 + sum_a * g3;
                        let alpha = if denominator != 0.0 { g2 / denominator } else { 0.0 };
                        alpha * gv.max(0.0)
                    })
                    .sum()
            } else {
                gc.iter().sum::<f32>() / hw as f32
            };
            for (m, v) in cam.iter_mut().zip(ac) {
                *m += weight * v;
            }
        }
        for v in cam.iter_mut() {
            *v = v.max(0.0);
        }
        out.push(upsample(&cam, w, h, spec.width, spec.height));
    }
    Ok(out)
}

/// Bilinear resize of a `[h, w]` map.
pub fn upsample(map: &[f32], w: usize, h: usize, to_w: usize, to_h: usize) -> Tensor {
    Tensor::f32(vec![to_h, to_w], crate::pixels::resample::map(map, w, h, to_w, to_h))
}

fn explain(
    cx: &mut Cx,
    job: &ExplainJob,
    p: &GradCamParams,
    targets: &[Prediction],
    plus_plus: bool,
) -> Result<Vec<TargetAttribution>, RuntimeError> {
    let layer = planned_layer(job, &p.layer)?;
    let maps = cams(cx, job, &layer, targets, plus_plus)?;
    Ok(targets
        .iter()
        .zip(maps)
        .map(|(t, map)| TargetAttribution {
            target: t.clone(),
            tensor: map.clone(),
            map: Some(map),
            convergence_delta: None,
            layer: Some(layer.clone()),
            details: None,
        })
        .collect())
}
