//! Occlusion (Zeiler and Fergus 2014; Captum's Occlusion): slide a window over the image, replace
//! what it covers by a baseline, and credit each pixel with the average drop of the target score
//! over the windows covering it. On text the window covers words, hidden by the hide token.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::baselines::{self, Baseline};
use super::lime::Hide;
use super::method::{bytes, check_range, Capabilities, Cost, Inputs, Invalid, Method, Passes, PlanContext, MAX_SIDE};
use super::perturb::{compose, index, run_copies, Preset};
use super::players::{Players, TextUnit};
use super::{Cx, ExplainJob, TargetAttribution};
use crate::runtime::predict::Prediction;
use crate::runtime::{RuntimeError, Tensor};

/// Occlusion parameters.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OcclusionParams {
    /// Window side in input pixels, at most the input's side; default from the preset (1/8 of the
    /// input, 1/4 fast, 1/16 quality).
    #[schema(minimum = 1, extensions(("x-maximum" = json!(MAX_SIDE))))]
    pub window: Option<usize>,
    /// Step between windows, at most the input's side; default half the window (the window itself
    /// for `fast`).
    #[schema(minimum = 1, extensions(("x-maximum" = json!(MAX_SIDE))))]
    pub stride: Option<usize>,
    /// What replaces the occluded pixels.
    #[schema(default = "black")]
    pub baseline: Baseline,
    /// Trade-off between passes and detail.
    #[schema(default = "balanced")]
    pub preset: super::perturb::Preset,
}

impl Default for OcclusionParams {
    fn default() -> Self {
        Self {
            window: None,
            stride: None,
            baseline: Baseline::Black,
            preset: Preset::Balanced,
        }
    }
}

impl OcclusionParams {
    /// (window, stride) for an input of `side` pixels.
    pub(super) fn resolved(&self, side: usize) -> (usize, usize) {
        let divisor = match self.preset {
            Preset::Fast => 4,
            Preset::Balanced => 8,
            Preset::Quality => 16,
        };
        let window = self.window.unwrap_or((side / divisor).max(2)).clamp(1, side.max(1));
        let stride = self
            .stride
            .unwrap_or(if self.preset == Preset::Fast {
                window
            } else {
                (window / 2).max(1)
            })
            .max(1);
        (window, stride)
    }
}

/// Occlusion.
pub struct Occlusion;

impl Method for Occlusion {
    type Params = OcclusionParams;
    const NAME: &'static str = "occlusion";
    const SUMMARY: &'static str = "Score drop as a window hides each part of the image (Zeiler and Fergus 2014)";
    const CAPABILITIES: Capabilities = Capabilities {
        passes: Passes::Forward,
        inputs: Inputs::Image,
        layer: false,
        random: false,
        examples: false,
        decision: false,
        text: true,
        makes_image: false,
    };

    fn plan(p: &mut OcclusionParams, cx: &PlanContext) -> Result<Cost, Invalid> {
        if let Some(text) = &cx.model.spec.text {
            // Windows of words sliding one word at a time: at most one per token.
            let longest = text.max_length;
            check_range("window", p.window.unwrap_or(1), 1, longest)?;
            check_range("stride", p.stride.unwrap_or(1), 1, longest)?;
            p.window = Some(p.window.unwrap_or(1));
            p.stride = Some(p.stride.unwrap_or(1));
            return Ok(Cost {
                samples: longest,
                rows: longest,
                bytes: cx
                    .batch_bytes(cx.limits.max_batch, false)
                    .saturating_add(bytes(longest, 8).saturating_mul(cx.classes() as u64))
                    .saturating_add(cx.answer_bytes()),
            });
        }
        let Some(spec) = cx.model.spec.image.as_ref() else {
            return Err(Invalid::Model("occlusion explains image models".into()));
        };
        baselines::planned(&mut p.baseline, cx)?;
        let side = spec.height.min(spec.width).max(1);
        for (name, value) in [("window", p.window), ("stride", p.stride)] {
            if let Some(v) = value {
                check_range(name, v, 1, side.min(MAX_SIDE))?;
            }
        }
        let (window, stride) = p.resolved(side);
        let windows = positions(spec.height, window, stride)
            .len()
            .saturating_mul(positions(spec.width, window, stride).len());
        if windows > cx.limits.max_samples {
            return Err(Invalid::Model(format!(
                "{windows} windows; the limit is {} model rows (max_samples): use a larger window or stride",
                cx.limits.max_samples
            )));
        }
        // Echo what runs.
        p.window = Some(window);
        p.stride = Some(stride);
        Ok(Cost {
            samples: windows,
            rows: windows,
            bytes: cx
                .batch_bytes(cx.limits.max_batch, false)
                .saturating_add(bytes(windows, 8).saturating_mul(cx.classes() as u64))
                .saturating_add(bytes(cx.pixels(), 12).saturating_mul(cx.targets as u64))
                .saturating_add(cx.answer_bytes()),
        })
    }

    fn explain(
        cx: &mut Cx,
        job: &ExplainJob,
        p: &OcclusionParams,
        targets: &[Prediction],
        scores: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError> {
        explain(cx, job, p, targets, scores)
    }
}

fn positions(side: usize, window: usize, stride: usize) -> Vec<usize> {
    let mut p: Vec<usize> = (0..=side.saturating_sub(window)).step_by(stride).collect();
    // The last window reaches the border.
    if p.last().is_some_and(|&l| l + window < side) {
        p.push(side - window);
    }
    p
}

fn explain(
    cx: &mut Cx,
    job: &ExplainJob,
    p: &OcclusionParams,
    targets: &[Prediction],
    scores: &[f64],
) -> Result<Vec<TargetAttribution>, RuntimeError> {
    if job.text.is_some() {
        return explain_text(cx, job, p, targets, scores);
    }
    let spec = job.image_spec("occlusion")?;
    let (h, w, c) = (spec.height, spec.width, spec.channels);
    let (window, stride) = p.resolved(h.min(w));
    let (ys, xs) = (positions(h, window, stride), positions(w, window, stride));
    let windows: Vec<(usize, usize)> = ys.iter().flat_map(|&y| xs.iter().map(move |&x| (y, x))).collect();
    let x = job.input.as_f32().unwrap_or(&[]).to_vec();
    let baseline = baselines::build(p.baseline, &job.input, Some(spec), job.seed);
    let b = baseline.as_f32().unwrap_or(&[]).to_vec();
    let outputs = run_copies(cx, &job.input, windows.len(), |r, buf| {
        buf.copy_from_slice(&x);
        let (y0, x0) = windows[r];
        for ch in 0..c {
            for yy in y0..y0 + window {
                for xx in x0..x0 + window {
                    let i = index(spec, ch, yy, xx);
                    buf[i] = b[i];
                }
            }
        }
    })?;
    let mut out = Vec::new();
    for t in targets {
        let drops: Vec<f64> = outputs.iter().map(|o| scores[t.index] - o[t.index]).collect();
        let means = mean_drops(h * w, &drops, |r| {
            let (y0, x0) = windows[r];
            (y0..y0 + window)
                .flat_map(|yy| (x0..x0 + window).map(move |xx| yy * w + xx))
                .collect()
        });
        let map = Tensor::f32(vec![h, w], means.iter().map(|v| *v as f32).collect());
        out.push(TargetAttribution::from_map(t, map, None, None));
    }
    Ok(out)
}

/// Each of `cells` cells' mean score drop over the windows covering it (0 where none does):
/// window `r` covers `covered(r)` and dropped the score by `drops[r]`.
fn mean_drops(cells: usize, drops: &[f64], covered: impl Fn(usize) -> Vec<usize>) -> Vec<f64> {
    let mut sum = vec![0f64; cells];
    let mut count = vec![0u32; cells];
    for (r, drop) in drops.iter().enumerate() {
        for c in covered(r) {
            sum[c] += drop;
            count[c] += 1;
        }
    }
    sum.iter()
        .zip(&count)
        .map(|(s, n)| if *n > 0 { s / *n as f64 } else { 0.0 })
        .collect()
}

/// Occlusion of a text: windows of `window` words (default 1) moved `stride` words at a time,
/// hidden by the hide token; each word takes the mean score drop of the windows over it, shared
/// among its tokens.
fn explain_text(
    cx: &mut Cx,
    job: &ExplainJob,
    p: &OcclusionParams,
    targets: &[Prediction],
    scores: &[f64],
) -> Result<Vec<TargetAttribution>, RuntimeError> {
    let players = Players::of(&|| cx.checkpoint(), job, (0, 0), Hide::Gray, TextUnit::Words)?;
    players.at_least(1, "occlusion")?;
    let words = players.count;
    let window = p.window.unwrap_or(1).clamp(1, words);
    let starts = positions(words, window, p.stride.unwrap_or(1).max(1));
    let x = job.input.as_f32().unwrap_or(&[]).to_vec();
    let outputs = run_copies(cx, &job.input, starts.len(), |r, buf| {
        let on: Vec<bool> = (0..words)
            .map(|w| !(starts[r]..starts[r] + window).contains(&w))
            .collect();
        compose(buf, &x, &players.hidden, &on, &players.indices);
    })?;
    let mut out = Vec::new();
    for t in targets {
        let drops: Vec<f64> = outputs.iter().map(|o| scores[t.index] - o[t.index]).collect();
        let values = mean_drops(words, &drops, |r| (starts[r]..starts[r] + window).collect());
        out.push(TargetAttribution::from_map(t, players.map(&values), None, None));
    }
    Ok(out)
}
