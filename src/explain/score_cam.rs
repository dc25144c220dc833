//! Score-CAM (Wang et al. 2020): each activation map of a layer, upsampled and normalised to [0, 1],
//! masks the input; the class score each mask keeps (over the baseline's) weighs that map. No
//! gradients in the weights: one pass reads the activations, then one forward row per channel.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::baselines::{self, Baseline};
use super::grad_cam::{feature_maps, plan_layer, planned_layer, upsample};
use super::method::{bytes, Capabilities, Cost, Inputs, Invalid, Method, Passes, PlanContext};
use super::perturb::{index, run_copies};
use super::{one_hot, Cx, ExplainJob, TargetAttribution};
use crate::runtime::predict::Prediction;
use crate::runtime::preprocess::InputError;
use crate::runtime::{RuntimeError, Tensor};

/// Score-CAM parameters.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ScoreCamParams {
    /// The 4-D activation whose channels become masks; default: the last spatial layer.
    pub layer: Option<String>,
}

/// Score-CAM.
pub struct ScoreCam;

impl Method for ScoreCam {
    type Params = ScoreCamParams;
    const NAME: &'static str = "score-cam";
    const SUMMARY: &'static str =
        "A layer's activation maps as masks, weighted by the score each keeps (Wang et al. 2020)";
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

    fn plan(p: &mut ScoreCamParams, cx: &PlanContext) -> Result<Cost, Invalid> {
        let size = plan_layer(&mut p.layer, cx)?;
        let channels = size.channels;
        if channels > cx.limits.max_samples {
            return Err(Invalid::Model(format!(
                "layer `{}` has {channels} channels; the limit is {} model rows (max_samples)",
                p.layer.as_deref().unwrap_or(""),
                cx.limits.max_samples
            )));
        }
        // The layer's activations, one mask and one batch at a time, a map per target.
        Ok(Cost {
            samples: channels + 1,
            rows: channels + 2,
            bytes: bytes(size.values.unwrap_or(channels.saturating_mul(cx.pixels())), 4)
                .saturating_add(bytes(cx.pixels(), 4))
                .saturating_add(cx.batch_bytes(cx.limits.max_batch, false))
                .saturating_add(bytes(cx.pixels(), 4).saturating_mul(cx.targets as u64))
                .saturating_add(cx.answer_bytes()),
        })
    }

    fn explain(
        cx: &mut Cx,
        job: &ExplainJob,
        p: &ScoreCamParams,
        targets: &[Prediction],
        _: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError> {
        explain(cx, job, p, targets)
    }
}

fn explain(
    cx: &mut Cx,
    job: &ExplainJob,
    p: &ScoreCamParams,
    targets: &[Prediction],
) -> Result<Vec<TargetAttribution>, RuntimeError> {
    let spec = job.image_spec("Score-CAM")?;
    let layer = planned_layer(job, &p.layer)?;
    let (h, w, c) = (spec.height, spec.width, spec.channels);
    let classes = crate::common::detection_targets::width(&job.model);
    // The layer's activations (the backward model exposes them; its gradient is not used).
    let pass = cx.layer_gradients(std::slice::from_ref(&layer), &job.input, &one_hot(&[0], classes), 1)?;
    let (k, lh, lw, a) = feature_maps(job, &layer, &pass.layers[0].0);
    if k > job.limits.max_samples {
        return Err(InputError::BadFeatures(format!(
            "layer `{layer}` has {k} channels; the limit is {} model rows (max_samples)",
            job.limits.max_samples
        ))
        .into());
    }
    // Each mask is rebuilt where it is used (a pass row, then the weighted sum) rather than all
    // kept: 2,048 maps at 224x224 would hold 400 MB.
    let mask = |ch: usize| -> Vec<f32> {
        let up = upsample(&a[ch * lh * lw..(ch + 1) * lh * lw], lw, lh, w, h);
        let v = up.as_f32().unwrap_or(&[]);
        let (lo, hi) = v
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, u), x| (l.min(*x), u.max(*x)));
        if hi > lo {
            v.iter().map(|x| (x - lo) / (hi - lo)).collect()
        } else {
            vec![0.0; v.len()]
        }
    };
    let x = job.input.as_f32().unwrap_or(&[]).to_vec();
    let baseline = baselines::build(Baseline::Black, &job.input, Some(spec), job.seed);
    let b = baseline.as_f32().unwrap_or(&[]).to_vec();
    let mut outputs = run_copies(cx, &job.input, k + 1, |r, buf| {
        if r == k {
            buf.copy_from_slice(&b);
            return;
        }
        let m = mask(r);
        for ch in 0..c {
            for y in 0..h {
                for xx in 0..w {
                    let i = index(spec, ch, y, xx);
                    buf[i] = b[i] + m[y * w + xx] * (x[i] - b[i]);
                }
            }
        }
    })?;
    let base_scores = outputs.pop().unwrap_or_default();
    let base = job.weighed_scores(&base_scores);
    let mut cams = vec![vec![0f32; h * w]; targets.len()];
    for (r, row) in outputs.iter().enumerate() {
        let m = mask(r);
        let scores = job.weighed_scores(row);
        for (cam, t) in cams.iter_mut().zip(targets) {
            let weight = (scores[t.index] - base[t.index]) as f32;
            for (v, mv) in cam.iter_mut().zip(&m) {
                *v += weight * mv;
            }
        }
    }
    let mut out = Vec::new();
    for (cam, t) in cams.into_iter().zip(targets) {
        let map = Tensor::f32(vec![h, w], cam.into_iter().map(|v| v.max(0.0)).collect());
        out.push(TargetAttribution::from_map(t, map, Some(layer.clone()), None));
    }
    Ok(out)
}
