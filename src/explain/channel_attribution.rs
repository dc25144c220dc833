//! Channel attribution, "which channels decide" (Olah et al. 2018, The Building Blocks of
//! Interpretability): at a layer (default the CAM layer), each channel's contribution to the
//! target, two ways, from the same gradient passes along the path from a baseline to the input:
//! - gradient x activation summed over space at the input (Captum's `LayerGradientXActivation`);
//! - layer integrated gradients: the gradient at the layer times the layer's change along the
//!   path, summed over the path's steps (Captum's `LayerConductance`, the trapezoid rule). Its sum
//!   over the channels is f(input) - f(baseline) up to the discretisation (and to paths that bypass
//!   the layer), and the answer reports the difference as `convergence_delta`.
//!
//! The answer's map is a channel's gradient x activation over the image (the top channel's, or
//! `channel`'s), so `format=png` draws any one channel on request; `details` lists every channel's
//! two values and the top channels' maps at the layer's resolution.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::baselines::{self, Baseline};
use super::grad_cam::{feature_maps, plan_layer, planned_layer, upsample};
use super::method::{
    bytes, check_range, mul, schemas_of, Capabilities, Cost, Inputs, Invalid, Method, NamedSchemas, Passes,
    PlanContext, CONFIGURED_MAX_SAMPLES,
};
use super::{Cx, ExplainJob, TargetAttribution};
use crate::onnx::autodiff::RuleSet;
use crate::runtime::predict::Prediction;
use crate::runtime::preprocess::InputError;
use crate::runtime::RuntimeError;

/// Most top channels an answer lists with their maps.
/// The largest channel index a request may name: a fixed bound checked before the layer's own count.
pub const MAX_CHANNEL: usize = 65_535;

pub const MAX_TOP_CHANNELS: usize = 64;

/// Which measure ranks the channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RankBy {
    /// Layer integrated gradients (complete: the values add up to the score difference).
    IntegratedGradients,
    /// Gradient x activation at the input.
    GradientXActivation,
}

/// Channel attribution parameters.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelAttributionParams {
    /// The 4-D activation whose channels are weighed; default: the last spatial layer
    /// (`gradients.default_cam_layer` in `GET /v1/models/{model}`), as Grad-CAM picks it.
    pub layer: Option<String>,
    /// Points on the path from the baseline to the input (endpoints included); each costs one
    /// model row per target.
    #[schema(default = 50, minimum = 2, extensions(("x-maximum" = json!(CONFIGURED_MAX_SAMPLES))))]
    pub steps: usize,
    /// Reference input the path starts from.
    #[schema(default = "black")]
    pub baseline: Baseline,
    /// Channels listed with their maps in `details.top`, by decreasing `rank_by` value.
    #[schema(default = 5, minimum = 1, maximum = 64)]
    pub top_k: usize,
    /// The measure that ranks the channels.
    #[schema(default = "integrated_gradients")]
    pub rank_by: RankBy,
    /// The channel whose map is the answer's (and the PNG's); default: the top-ranked one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 65535)]
    pub channel: Option<usize>,
}

impl Default for ChannelAttributionParams {
    fn default() -> Self {
        Self {
            layer: None,
            steps: 50,
            baseline: Baseline::Black,
            top_k: 5,
            rank_by: RankBy::IntegratedGradients,
            channel: None,
        }
    }
}

/// What a channel attribution answers in `details`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChannelDetails {
    /// The layer weighed.
    pub layer: String,
    /// Its channels.
    pub channels: usize,
    /// f(input) - f(baseline): what the layer integrated gradients add up to.
    pub score_difference: f64,
    /// Every channel's gradient x activation summed over space, in channel order.
    pub gradient_x_activation: Vec<f64>,
    /// Every channel's layer integrated gradients, in channel order.
    pub integrated_gradients: Vec<f64>,
    /// The top channels (by `rank_by`, largest first), with their maps.
    pub top: Vec<ChannelScore>,
    /// The channel whose map is the answer's.
    pub shown: usize,
}

/// One channel's contribution and its map.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChannelScore {
    /// Channel index at the layer.
    pub channel: usize,
    /// Gradient x activation summed over space.
    pub gradient_x_activation: f64,
    /// Layer integrated gradients.
    pub integrated_gradients: f64,
    /// Its gradient x activation at each position of the layer, `[height, width]`.
    pub map: LayerMap,
}

/// A map at the layer's resolution.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LayerMap {
    /// `[height, width]`.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub values: Vec<f32>,
}

/// Channel attribution.
pub struct ChannelAttribution;

impl Method for ChannelAttribution {
    type Params = ChannelAttributionParams;
    const NAME: &'static str = "channel-attribution";
    const SUMMARY: &'static str = "Which channels of a layer decide: gradient x activation and layer integrated \
                                   gradients per channel (Olah et al. 2018; Captum's LayerGradientXActivation, \
                                   LayerConductance)";
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

    fn plan(p: &mut ChannelAttributionParams, cx: &PlanContext) -> Result<Cost, Invalid> {
        check_range("steps", p.steps, 2, cx.limits.max_samples)?;
        check_range("top_k", p.top_k, 1, MAX_TOP_CHANNELS)?;
        if let Some(c) = p.channel {
            check_range("channel", c, 0, MAX_CHANNEL)?;
        }
        baselines::planned(&mut p.baseline, cx)?;
        let size = plan_layer(&mut p.layer, cx)?;
        check_channel(p.channel, size.channels, p.layer.as_deref().unwrap_or_default())?;
        let samples = mul(p.steps, cx.targets, "steps x targets")?;
        // The layer's activations and gradients, this point's and the previous one's, per row of
        // a batch; where an axis was not probed, a layer holds at most about as many values per
        // channel as the input has pixels.
        let layer_values = size.values.unwrap_or(size.channels.saturating_mul(cx.pixels()));
        let layer_bytes = bytes(layer_values, 4).saturating_mul(2 * cx.limits.max_batch.saturating_add(2) as u64);
        Ok(Cost {
            samples,
            rows: samples,
            bytes: cx
                .batch_bytes(cx.limits.max_batch, true)
                .saturating_add(layer_bytes)
                .saturating_add(bytes(cx.input_len(), 4))
                .saturating_add(cx.answer_bytes()),
        })
    }

    fn explain(
        cx: &mut Cx,
        job: &ExplainJob,
        p: &ChannelAttributionParams,
        targets: &[Prediction],
        _: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError> {
        explain(cx, job, p, targets)
    }

    fn details_schema() -> Option<NamedSchemas> {
        Some(schemas_of::<ChannelDetails>())
    }
}

/// Refuses a channel index the layer does not have (422, naming the layer's channels).
pub(super) fn check_channel(channel: Option<usize>, channels: usize, layer: &str) -> Result<(), Invalid> {
    match channel {
        Some(c) if channels > 0 && c >= channels => Err(Invalid::Model(format!(
            "params.channel {c} is out of range: layer `{}` has {channels} channels (0 to {})",
            layer.chars().take(200).collect::<String>(),
            channels - 1
        ))),
        _ => Ok(()),
    }
}

/// Per target: the running sums along its path.
struct Sums {
    /// The previous point's activations and gradients, channels-first `[k][h][w]`.
    previous: Option<(Vec<f32>, Vec<f32>)>,
    /// Per channel, the layer integrated gradients so far.
    integrated: Vec<f64>,
    /// f at the path's first and last points.
    first_score: f64,
    last_score: f64,
    /// Gradient x activation at the input, `[k][h][w]`.
    at_input: Vec<f32>,
}

fn explain(
    cx: &mut Cx,
    job: &ExplainJob,
    p: &ChannelAttributionParams,
    targets: &[Prediction],
) -> Result<Vec<TargetAttribution>, RuntimeError> {
    let spec = job.image_spec(ChannelAttribution::NAME)?;
    let layer = planned_layer(job, &p.layer)?;
    let baseline = baselines::for_job(p.baseline, job);
    let (x, b) = (job.input.as_f32().unwrap_or(&[]), baseline.as_f32().unwrap_or(&[]));
    let steps = p.steps;
    let classes = crate::common::detection_targets::width(&job.model);
    let mut sums: Vec<Sums> = targets
        .iter()
        .map(|_| Sums {
            previous: None,
            integrated: Vec::new(),
            first_score: 0.0,
            last_score: 0.0,
            at_input: Vec::new(),
        })
        .collect();
    let mut grid = (0, 0, 0);
    let rows = steps * targets.len();
    cx.gradient_stream(
        std::slice::from_ref(&layer),
        RuleSet::Exact,
        &job.input,
        rows,
        usize::MAX,
        |r, buffer| {
            let alpha = (r % steps) as f32 / (steps - 1) as f32;
            for ((v, xv), bv) in buffer.iter_mut().zip(x).zip(b) {
                *v = bv + alpha * (xv - bv);
            }
            targets[r / steps].index
        },
        |r, pass, i| {
            let (t, k) = (r / steps, r % steps);
            let Some((act, grad)) = pass.layers.first() else {
                return;
            };
            let (channels, h, w, a) = feature_maps(job, &layer, act);
            let (_, _, _, g) = feature_maps(job, &layer, grad);
            let n = channels * h * w;
            grid = (channels, h, w);
            let (a, g) = (&a[i * n..(i + 1) * n], &g[i * n..(i + 1) * n]);
            let score = pass
                .scores
                .as_f32()
                .and_then(|s| s.get(i * classes + targets[t].index))
                .copied()
                .unwrap_or(f32::NAN) as f64;
            let s = &mut sums[t];
            if s.integrated.len() != channels {
                s.integrated = vec![0.0; channels];
            }
            if k == 0 {
                s.first_score = score;
            }
            if let Some((pa, pg)) = &s.previous {
                // Trapezoid: the mean of the two points' gradients times the layer's change.
                let hw = h * w;
                for (c, total) in s.integrated.iter_mut().enumerate() {
                    let range = c * hw..(c + 1) * hw;
                    *total += range
                        .map(|j| 0.5 * (g[j] as f64 + pg[j] as f64) * (a[j] as f64 - pa[j] as f64))
                        .sum::<f64>();
                }
            }
            if k + 1 == steps {
                s.last_score = score;
                s.at_input = a.iter().zip(g).map(|(a, g)| a * g).collect();
                s.previous = None;
            } else {
                s.previous = Some((a.to_vec(), g.to_vec()));
            }
        },
    )?;
    let (channels, h, w) = grid;
    if channels == 0 {
        return Err(InputError::BadFeatures(format!("layer `{layer}` gave no activations")).into());
    }
    let hw = h * w;
    let mut out = Vec::with_capacity(targets.len());
    for (target, s) in targets.iter().zip(sums) {
        cx.checkpoint()?;
        let gxa: Vec<f64> = (0..channels)
            .map(|c| s.at_input[c * hw..(c + 1) * hw].iter().map(|v| *v as f64).sum())
            .collect();
        let ranked_by = match p.rank_by {
            RankBy::IntegratedGradients => &s.integrated,
            RankBy::GradientXActivation => &gxa,
        };
        let mut order: Vec<usize> = (0..channels).collect();
        order.sort_by(|&i, &j| ranked_by[j].total_cmp(&ranked_by[i]).then(i.cmp(&j)));
        let map_of = |c: usize| s.at_input[c * hw..(c + 1) * hw].to_vec();
        let top = order
            .iter()
            .take(p.top_k)
            .map(|&c| ChannelScore {
                channel: c,
                gradient_x_activation: gxa[c],
                integrated_gradients: s.integrated[c],
                map: LayerMap {
                    shape: vec![h, w],
                    values: map_of(c),
                },
            })
            .collect();
        let shown = p.channel.filter(|c| *c < channels).unwrap_or(order[0]);
        let difference = s.last_score - s.first_score;
        let delta = s.integrated.iter().sum::<f64>() - difference;
        let details = ChannelDetails {
            layer: layer.clone(),
            channels,
            score_difference: difference,
            gradient_x_activation: gxa,
            integrated_gradients: s.integrated,
            top,
            shown,
        };
        let map = upsample(&map_of(shown), w, h, spec.width, spec.height);
        let mut a = TargetAttribution::from_map(target, map, Some(layer.clone()), serde_json::to_value(details).ok());
        a.convergence_delta = Some(delta);
        out.push(a);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_past_the_layer_is_refused_with_the_layer_s_range() {
        let e = check_channel(Some(8), 8, "features").unwrap_err().to_string();
        assert!(e.contains("8 channels") && e.contains("0 to 7"), "{e}");
        assert!(check_channel(Some(7), 8, "features").is_ok());
        assert!(check_channel(None, 8, "features").is_ok());
    }
}
