//! RISE (Petsiuk et al. 2018): random low-resolution binary masks, upsampled bilinearly with a random
//! shift, applied to the image; each pixel's saliency is the target score averaged over the masks
//! that keep it. Seeded: the same seed gives the same masks.

use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::baselines::{self, Baseline};
use super::method::{
    bytes, check_range, Capabilities, Cost, Inputs, Invalid, Method, Passes, PlanContext, CONFIGURED_MAX_SAMPLES,
    MAX_SIDE,
};
use super::perturb::{index, run_copies, Preset};
use super::{Cx, ExplainJob, TargetAttribution};
use crate::runtime::predict::Prediction;
use crate::runtime::{RuntimeError, Tensor};

/// RISE parameters.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RiseParams {
    /// Number of masks; default from the preset (500 fast, 2000 balanced, 4000 quality: the paper's).
    #[schema(minimum = 1, extensions(("x-maximum" = json!(CONFIGURED_MAX_SAMPLES))))]
    pub masks: Option<usize>,
    /// Side of the low-resolution mask grid, at most the input's side.
    #[schema(default = 7, minimum = 2, extensions(("x-maximum" = json!(MAX_SIDE))))]
    pub cell_size: usize,
    /// Probability that a grid cell is kept, strictly between 0 and 1.
    #[schema(default = 0.5, exclusive_minimum = 0.0, exclusive_maximum = 1.0)]
    pub p: f32,
    /// Trade-off between passes and noise.
    #[schema(default = "balanced")]
    pub preset: Preset,
    /// How the masks' scores become a map: `centered` (each score minus their mean, which removes
    /// the mean score's mask noise; the default) or `paper` (sum of score x mask / (masks x p)).
    #[schema(default = "centered")]
    pub estimator: RiseEstimator,
}

/// RISE's estimator of E[score | pixel kept].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RiseEstimator {
    /// mean(S) + sum_i (S_i - mean(S)) M_i / (N p): the same expectation as the paper's, without the
    /// noise that mean(S) times the masks' own spread adds (large when scores sit near a constant,
    /// as a two-class softmax near 0.5 does).
    Centered,
    /// sum_i S_i M_i / (N p), as Petsiuk et al. and their code.
    Paper,
}

impl Default for RiseParams {
    fn default() -> Self {
        Self {
            masks: None,
            cell_size: 7,
            p: 0.5,
            preset: Preset::Balanced,
            estimator: RiseEstimator::Centered,
        }
    }
}

impl RiseParams {
    pub(super) fn mask_count(&self) -> usize {
        self.masks.unwrap_or(match self.preset {
            Preset::Fast => 500,
            Preset::Balanced => 2000,
            Preset::Quality => 4000,
        })
    }
}

/// RISE.
pub struct Rise;

impl Method for Rise {
    type Params = RiseParams;
    const NAME: &'static str = "rise";
    const SUMMARY: &'static str = "Scores of randomly masked copies, averaged per pixel (Petsiuk et al. 2018)";
    const CAPABILITIES: Capabilities = Capabilities {
        passes: Passes::Forward,
        inputs: Inputs::Image,
        layer: false,
        random: true,
        examples: false,
        decision: false,
        text: false,
    };

    fn plan(p: &mut RiseParams, cx: &PlanContext) -> Result<Cost, Invalid> {
        let Some(spec) = cx.model.spec.image.as_ref() else {
            return Err(Invalid::Model("RISE explains image models".into()));
        };
        let side = spec.height.min(spec.width).max(2);
        check_range("cell_size", p.cell_size, 2, side.min(MAX_SIDE))?;
        if !(p.p > 0.0 && p.p < 1.0) {
            return Err(Invalid::Request("params.p must be strictly between 0 and 1".into()));
        }
        let masks = p.mask_count();
        check_range("masks", masks, 1, cx.limits.max_samples)?;
        p.masks = Some(masks);
        // Masks are drawn per batch, so one batch of them is held, with each target's sums.
        let batch = masks.min(cx.limits.max_batch);
        let upsampled = (p.cell_size + 1)
            .saturating_mul(spec.height.div_ceil(p.cell_size))
            .saturating_mul((p.cell_size + 1).saturating_mul(spec.width.div_ceil(p.cell_size)));
        Ok(Cost {
            samples: masks,
            rows: masks,
            bytes: cx
                .batch_bytes(batch, false)
                .saturating_add(bytes(batch, 4).saturating_mul(cx.pixels() as u64))
                .saturating_add(bytes(upsampled, 4))
                .saturating_add(bytes(cx.pixels(), 8).saturating_mul(cx.targets as u64))
                .saturating_add(cx.answer_bytes()),
        })
    }

    fn explain(
        cx: &mut Cx,
        job: &ExplainJob,
        p: &RiseParams,
        targets: &[Prediction],
        _: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError> {
        explain(cx, job, p, targets)
    }
}

/// One mask at input resolution: an s x s random grid, upsampled to cover (s + 1) cells, shifted.
fn mask(rng: &mut rand_chacha::ChaCha8Rng, s: usize, p: f32, h: usize, w: usize) -> Vec<f32> {
    let grid: Vec<f32> = (0..s * s)
        .map(|_| if rng.random::<f32>() < p { 1.0 } else { 0.0 })
        .collect();
    let (cell_h, cell_w) = (h.div_ceil(s), w.div_ceil(s));
    let (up_h, up_w) = ((s + 1) * cell_h, (s + 1) * cell_w);
    let (dy, dx) = (rng.random_range(0..cell_h.max(1)), rng.random_range(0..cell_w.max(1)));
    let small =
        image::ImageBuffer::<image::Luma<f32>, Vec<f32>>::from_raw(s as u32, s as u32, grid).unwrap_or_default();
    let up = image::imageops::resize(&small, up_w as u32, up_h as u32, image::imageops::FilterType::Triangle);
    let mut out = vec![0f32; h * w];
    for y in 0..h {
        for x in 0..w {
            out[y * w + x] = up.get_pixel((x + dx) as u32, (y + dy) as u32).0[0];
        }
    }
    out
}

fn explain(
    cx: &mut Cx,
    job: &ExplainJob,
    p: &RiseParams,
    targets: &[Prediction],
) -> Result<Vec<TargetAttribution>, RuntimeError> {
    let spec = job.image_spec("RISE")?;
    let (h, w, c) = (spec.height, spec.width, spec.channels);
    let count = p.mask_count();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(job.seed);
    let x = job.input.as_f32().unwrap_or(&[]).to_vec();
    let baseline = baselines::build(Baseline::Black, &job.input, Some(spec), job.seed);
    let b = baseline.as_f32().unwrap_or(&[]).to_vec();
    let mut sals = vec![vec![0f64; h * w]; targets.len()];
    // Per pixel, the masks' sum; per target, the scores' sum (the centered estimator needs both).
    let mut kept = vec![0f64; h * w];
    let mut score_sums = vec![0f64; targets.len()];
    // Masks are drawn one batch at a time (in the same order, so a seed gives the same masks).
    let batch = cx.forward_rows();
    let mut start = 0;
    while start < count {
        let end = (start + batch).min(count);
        let masks: Vec<Vec<f32>> = (start..end).map(|_| mask(&mut rng, p.cell_size, p.p, h, w)).collect();
        let outputs = run_copies(cx, &job.input, end - start, |r, buf| {
            let m = &masks[r];
            for ch in 0..c {
                for y in 0..h {
                    for xx in 0..w {
                        let i = index(spec, ch, y, xx);
                        let keep = m[y * w + xx];
                        buf[i] = b[i] + keep * (x[i] - b[i]);
                    }
                }
            }
        })?;
        for (r, m) in masks.iter().enumerate() {
            // RISE weighs masks by the class probability.
            let weighed = job.weighed_scores(&outputs[r]);
            for ((sal, t), total) in sals.iter_mut().zip(targets).zip(score_sums.iter_mut()) {
                let score = weighed[t.index];
                *total += score;
                for (s, v) in sal.iter_mut().zip(m) {
                    *s += score * *v as f64;
                }
            }
            for (k, v) in kept.iter_mut().zip(m) {
                *k += *v as f64;
            }
        }
        start = end;
    }
    let mut out = Vec::new();
    let norm = count as f64 * p.p as f64;
    for ((t, sal), total) in targets.iter().zip(sals).zip(score_sums) {
        let mean = total / count as f64;
        let values = sal.iter().zip(&kept).map(|(s, k)| match p.estimator {
            RiseEstimator::Paper => s / norm,
            RiseEstimator::Centered => mean + (s - mean * k) / norm,
        });
        let map = Tensor::f32(vec![h, w], values.map(|v| v as f32).collect());
        out.push(TargetAttribution::from_map(t, map, None, None));
    }
    Ok(out)
}
