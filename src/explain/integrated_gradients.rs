//! Integrated Gradients (Sundararajan et al. 2017): the path integral of gradients from a baseline
//! to the input, by Gauss-Legendre (Captum's default) or the trapezoid rule. Reports the convergence
//! delta: sum of attributions minus (f(input) - f(baseline)). With `smooth_grad`, each point's
//! gradient is SmoothGrad's: the mean over noisy copies of the point (Vertex AI's
//! `integratedGradientsAttribution.smoothGradConfig`; Smilkov et al. 2017), the noise seeded.
//! With `delta_tolerance`, the integral is refined until it is good enough: the trapezoid rule on
//! 5 points, then 9, 17, 33... (each level adds the midpoints of the last, so every pass already
//! made is reused), until |convergence delta| / |f(x) - f(x')| is within the tolerance for every
//! target, or the next level would pass `steps`.

use std::num::NonZeroUsize;

use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::baselines::{self, Baseline};
use super::method::{
    bytes, check_range, mul, schemas_of, Capabilities, Cost, Inputs, Invalid, Method, NamedSchemas, Passes,
    PlanContext, CONFIGURED_MAX_SAMPLES,
};
use super::{fold_map, row, Cx, ExplainJob, Fold, TargetAttribution};
use crate::onnx::autodiff::RuleSet;
use crate::runtime::predict::Prediction;
use crate::runtime::{RuntimeError, Tensor};

/// How the path integral is approximated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Integration {
    /// Trapezoid rule on evenly spaced points, endpoints included.
    RiemannTrapezoid,
    /// Gauss-Legendre quadrature (Captum's default): exact for polynomials of degree 2n-1.
    GaussLegendre,
}

/// Integrated Gradients parameters.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct IntegratedGradientsParams {
    /// Points on the path (Captum's `n_steps`); each costs one model row per target.
    #[schema(default = 50, minimum = 2, extensions(("x-maximum" = json!(CONFIGURED_MAX_SAMPLES))))]
    pub steps: usize,
    /// Quadrature rule.
    #[schema(default = "gauss_legendre")]
    pub integration: Integration,
    /// Reference input.
    #[schema(default = "black")]
    pub baseline: Baseline,
    /// Rows per model pass (Captum's `internal_batch_size`); capped by the service's `max_batch`.
    #[schema(minimum = 1, extensions(("x-maximum" = json!(CONFIGURED_MAX_SAMPLES))))]
    pub internal_batch_size: Option<usize>,
    /// SmoothGrad on the path: each point's gradient averaged over noisy copies of the point
    /// (`samples` rows per point and target). None by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smooth_grad: Option<PathNoise>,
    /// Stop refining once |convergence delta| / |f(input) - f(baseline)| is at most this, for
    /// every target: the trapezoid rule on 5, 9, 17, 33... points (each level reusing the last's
    /// passes), `steps` the most points; `integration` is then the trapezoid rule. The answer's
    /// `details` say the points used and why it stopped. None by default (exactly `steps` points).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(exclusive_minimum = 0.0, maximum = 1.0)]
    pub delta_tolerance: Option<f64>,
}

/// Gaussian noise added to each point of the path before its gradient is taken.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PathNoise {
    /// Noisy copies per point (Vertex AI's `noisySampleCount`).
    #[schema(default = 3, minimum = 1, extensions(("x-maximum" = json!(CONFIGURED_MAX_SAMPLES))))]
    pub samples: usize,
    /// Standard deviation of the noise in the model's input space (after preprocessing), as
    /// Vertex AI's `noiseSigma`: one number for every value, or one per value of the input (a
    /// tabular model's features, in order; 0 adds none).
    #[schema(default = 0.1)]
    pub sigma: NoiseSigma,
}

impl Default for PathNoise {
    fn default() -> Self {
        Self {
            samples: 3,
            sigma: NoiseSigma::All(0.1),
        }
    }
}

/// The noise's standard deviation: one for all values, or one per value.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum NoiseSigma {
    /// The same for every value.
    All(f32),
    /// One per value of the input, in order.
    PerValue(Vec<f32>),
}

impl NoiseSigma {
    /// Value `j`'s standard deviation.
    fn of(&self, j: usize) -> f32 {
        match self {
            NoiseSigma::All(s) => *s,
            NoiseSigma::PerValue(v) => v.get(j).copied().unwrap_or(0.0),
        }
    }
}

impl Default for IntegratedGradientsParams {
    fn default() -> Self {
        Self {
            steps: 50,
            integration: Integration::GaussLegendre,
            baseline: Baseline::Black,
            internal_batch_size: None,
            smooth_grad: None,
            delta_tolerance: None,
        }
    }
}

/// Integrated Gradients.
pub struct IntegratedGradients;

impl Method for IntegratedGradients {
    type Params = IntegratedGradientsParams;
    const NAME: &'static str = "integrated-gradients";
    const SUMMARY: &'static str = "Path integral of gradients from a baseline (Sundararajan et al. 2017)";
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

    fn details_schema() -> Option<NamedSchemas> {
        Some(schemas_of::<IntegratedGradientsDetails>())
    }

    fn plan(p: &mut IntegratedGradientsParams, cx: &PlanContext) -> Result<Cost, Invalid> {
        check_range("steps", p.steps, 2, cx.limits.max_samples)?;
        baselines::planned(&mut p.baseline, cx)?;
        if let Some(b) = p.internal_batch_size {
            check_range("internal_batch_size", b, 1, cx.limits.max_samples)?;
        }
        let copies = match &p.smooth_grad {
            Some(noise) => plan_noise(noise, cx)?,
            None => 1,
        };
        if let Some(t) = p.delta_tolerance {
            if !(t.is_finite() && t > 0.0 && t <= 1.0) {
                return Err(Invalid::Request(
                    "params.delta_tolerance must be greater than 0 and at most 1".into(),
                ));
            }
            if p.smooth_grad.is_some() {
                return Err(Invalid::Request(
                    "params.delta_tolerance refines a noiseless path; it cannot be combined with smooth_grad".into(),
                ));
            }
            p.integration = Integration::RiemannTrapezoid;
        }
        let rows = mul(p.steps, copies, "steps x smooth_grad.samples")?;
        let samples = mul(rows, cx.targets, "steps x samples x targets")?;
        Ok(Cost {
            samples,
            rows: samples + 1,
            // One batch streams through at a time; per target an f64 accumulator; the baseline.
            bytes: cx
                .batch_bytes(cx.limits.max_batch, true)
                .saturating_add(bytes(cx.input_len(), 8).saturating_mul(cx.targets as u64))
                .saturating_add(bytes(cx.input_len(), 8))
                .saturating_add(cx.answer_bytes()),
        })
    }

    fn explain(
        cx: &mut Cx,
        job: &ExplainJob,
        p: &IntegratedGradientsParams,
        targets: &[Prediction],
        scores: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError> {
        explain(cx, job, p, targets, scores)
    }
}

/// Integrated Gradients' `details`: where the path starts.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IntegratedGradientsDetails {
    /// The target's score at the baseline: the attributions add up to the input's score minus
    /// this (a regression's value at the baseline, for one).
    pub baseline_score: f64,
    /// Points on the path used (with `delta_tolerance`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    /// |convergence delta| / |f(input) - f(baseline)| at the end (with `delta_tolerance`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relative_delta: Option<f64>,
    /// The tolerance asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta_tolerance: Option<f64>,
    /// Why refining stopped: `tolerance` (met) or `steps` (the next level would pass it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

/// Points in [0, 1] and their weights (summing to 1).
pub(super) fn quadrature(rule: Integration, steps: usize) -> Vec<(f64, f64)> {
    match rule {
        Integration::RiemannTrapezoid => (0..steps)
            .map(|k| {
                let end = k == 0 || k == steps - 1;
                (
                    k as f64 / (steps - 1) as f64,
                    if end { 0.5 } else { 1.0 } / (steps - 1) as f64,
                )
            })
            .collect(),
        Integration::GaussLegendre => {
            let rule = gauss_quad::GaussLegendre::new(NonZeroUsize::new(steps).unwrap_or(NonZeroUsize::MIN));
            rule.as_node_weight_pairs()
                .iter()
                .map(|(x, w)| ((x + 1.0) / 2.0, w / 2.0))
                .collect()
        }
    }
}

fn explain(
    cx: &mut Cx,
    job: &ExplainJob,
    p: &IntegratedGradientsParams,
    targets: &[Prediction],
    scores: &[f64],
) -> Result<Vec<TargetAttribution>, RuntimeError> {
    let baseline = baselines::for_job(p.baseline, job);
    let b = baseline.as_f32().unwrap_or(&[]).to_vec();
    if let Some(tolerance) = p.delta_tolerance {
        return refined(cx, job, p, (&baseline, &b), targets, scores, tolerance);
    }
    let points = quadrature(p.integration, p.steps);
    let chunk = p.internal_batch_size.unwrap_or(usize::MAX);
    let mut paths = path_attributions(
        cx,
        job,
        std::slice::from_ref(&b),
        targets,
        &points,
        p.smooth_grad.as_ref(),
        chunk,
    )?;
    let per_target = paths.pop().unwrap_or_default();
    let base_scores = cx.forward(&baseline)?.to_f64();
    let mut out = Vec::new();
    for (t, attribution) in targets.iter().zip(per_target) {
        let total: f64 = attribution.iter().map(|v| *v as f64).sum();
        let delta = total - (scores[t.index] - base_scores[t.index]);
        let mut shape = job.input.shape.clone();
        shape[0] = 1;
        let batch = Tensor::f32(shape, attribution);
        out.push(TargetAttribution {
            target: t.clone(),
            tensor: row(&batch, 0),
            map: fold_map(job, &batch, 0, Fold::Sum),
            convergence_delta: Some(delta),
            layer: None,
            // What the attributions add up to is f(input) - f(baseline): the baseline's score
            // says from where (a regression's value at the baseline, most of all).
            details: serde_json::to_value(IntegratedGradientsDetails {
                baseline_score: base_scores.get(t.index).copied().unwrap_or(f64::NAN),
                steps: None,
                relative_delta: None,
                delta_tolerance: None,
                stopped: None,
            })
            .ok(),
        });
    }
    Ok(out)
}

/// Integrated Gradients refined until the convergence delta is within `tolerance` of
/// |f(x) - f(x')| (every target) or `steps` is reached: the trapezoid rule on 2^k + 1 evenly
/// spaced points, from 5 (fewer when `steps` is smaller), each level halving the spacing. The new
/// level's integral is half the last one plus the new midpoints' gradients at the new spacing, so
/// no pass is made twice; the attribution is linear in the points' weights.
fn refined(
    cx: &mut Cx,
    job: &ExplainJob,
    p: &IntegratedGradientsParams,
    (baseline, b): (&Tensor, &[f32]),
    targets: &[Prediction],
    scores: &[f64],
    tolerance: f64,
) -> Result<Vec<TargetAttribution>, RuntimeError> {
    let chunk = p.internal_batch_size.unwrap_or(usize::MAX);
    let base_scores = cx.forward(baseline)?.to_f64();
    let gaps: Vec<f64> = targets.iter().map(|t| scores[t.index] - base_scores[t.index]).collect();
    // The first level: as many intervals (a power of two, at most 4) as `steps` allows.
    let mut intervals = 4usize;
    while intervals + 1 > p.steps && intervals > 1 {
        intervals /= 2;
    }
    let first: Vec<(f64, f64)> = (0..=intervals)
        .map(|k| {
            let end = k == 0 || k == intervals;
            (
                k as f64 / intervals as f64,
                if end { 0.5 } else { 1.0 } / intervals as f64,
            )
        })
        .collect();
    let baselines = std::slice::from_ref(&b.to_vec()).to_vec();
    let mut sums = path_attributions(cx, job, &baselines, targets, &first, None, chunk)?
        .pop()
        .unwrap_or_default();
    let mut used = intervals + 1;
    let relative = |sums: &[Vec<f32>]| -> Vec<f64> {
        sums.iter()
            .zip(&gaps)
            .map(|(a, gap)| {
                let total: f64 = a.iter().map(|v| *v as f64).sum();
                (total - gap).abs() / gap.abs().max(f64::MIN_POSITIVE)
            })
            .collect()
    };
    let mut errors = relative(&sums);
    let stopped = loop {
        if errors.iter().all(|e| *e <= tolerance) {
            break "tolerance";
        }
        // The next level adds one point per interval.
        if used.saturating_add(intervals) > p.steps {
            break "steps";
        }
        cx.checkpoint()?;
        let h = 1.0 / (2 * intervals) as f64;
        let mids: Vec<(f64, f64)> = (0..intervals).map(|k| ((2 * k + 1) as f64 * h, h)).collect();
        let added = path_attributions(cx, job, &baselines, targets, &mids, None, chunk)?
            .pop()
            .unwrap_or_default();
        for (sum, new) in sums.iter_mut().zip(added) {
            for (s, a) in sum.iter_mut().zip(new) {
                *s = 0.5 * *s + a;
            }
        }
        used += intervals;
        intervals *= 2;
        errors = relative(&sums);
    };
    let mut out = Vec::new();
    for ((t, attribution), (gap, error)) in targets.iter().zip(sums).zip(gaps.iter().zip(&errors)) {
        let total: f64 = attribution.iter().map(|v| *v as f64).sum();
        let mut shape = job.input.shape.clone();
        shape[0] = 1;
        let batch = Tensor::f32(shape, attribution);
        out.push(TargetAttribution {
            target: t.clone(),
            tensor: row(&batch, 0),
            map: fold_map(job, &batch, 0, Fold::Sum),
            convergence_delta: Some(total - gap),
            layer: None,
            details: serde_json::to_value(IntegratedGradientsDetails {
                baseline_score: base_scores.get(t.index).copied().unwrap_or(f64::NAN),
                steps: Some(used),
                relative_delta: Some(*error),
                delta_tolerance: Some(tolerance),
                stopped: Some(stopped.to_string()),
            })
            .ok(),
        });
    }
    Ok(out)
}

/// The noise's bounds: copies within `max_samples`, standard deviations finite and non-negative,
/// one per input value when several are given. Returns the copies per point.
pub(super) fn plan_noise(noise: &PathNoise, cx: &PlanContext) -> Result<usize, Invalid> {
    check_range("smooth_grad.samples", noise.samples, 1, cx.limits.max_samples)?;
    let sigmas = match &noise.sigma {
        NoiseSigma::All(s) => std::slice::from_ref(s),
        NoiseSigma::PerValue(v) => {
            if v.len() != cx.input_len() {
                return Err(Invalid::Model(format!(
                    "params.smooth_grad.sigma: {} values; the input has {} (give one number, or one per value)",
                    v.len(),
                    cx.input_len()
                )));
            }
            v.as_slice()
        }
    };
    if sigmas.iter().any(|s| !s.is_finite() || *s < 0.0) {
        return Err(Invalid::Request(
            "params.smooth_grad.sigma must be finite and at least 0".into(),
        ));
    }
    Ok(noise.samples)
}

/// The path's noise: copy `c` of a point draws its own seeded stream, so the same seed gives the
/// same noise whatever the batching, and every target sees the same noisy points.
struct Noise<'a> {
    sigma: Option<&'a NoiseSigma>,
    seed: u64,
    normal: Normal<f32>,
}

impl<'a> Noise<'a> {
    fn new(job: &ExplainJob, noise: Option<&'a PathNoise>) -> Result<Self, RuntimeError> {
        let normal = Normal::new(0f32, 1.0).map_err(|e| RuntimeError::Inference {
            model: job.model.name.clone(),
            message: format!("noise: {e}"),
        })?;
        Ok(Self {
            sigma: noise.map(|n| &n.sigma),
            seed: job.seed,
            normal,
        })
    }

    /// Adds copy `stream`'s noise to a point.
    fn add(&self, point: &mut [f32], stream: usize) {
        let Some(sigma) = self.sigma else { return };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(stream as u64);
        for (j, v) in point.iter_mut().enumerate() {
            let s = sigma.of(j);
            let z = self.normal.sample(&mut rng);
            if s > 0.0 {
                *v += s * z;
            }
        }
    }
}

/// The integrated gradients of every target from each of `baselines` (values in the input's
/// layout) to the job's input, on the quadrature `points`: per baseline, per target, the
/// attribution (the path's weighted mean gradient times the input minus the baseline). Every
/// (baseline, target, point) is one row of one gradient stream, at most `chunk` rows a pass, so
/// several baselines (XRAI's black and white) share full batches. With `smooth_grad`, each point
/// is `samples` rows, noisy copies of it, and its gradient their mean.
pub(super) fn path_attributions(
    cx: &mut Cx,
    job: &ExplainJob,
    baselines: &[Vec<f32>],
    targets: &[Prediction],
    points: &[(f64, f64)],
    smooth_grad: Option<&PathNoise>,
    chunk: usize,
) -> Result<Vec<Vec<Vec<f32>>>, RuntimeError> {
    let x = job.input.as_f32().unwrap_or(&[]).to_vec();
    let n = x.len();
    let noise = Noise::new(job, smooth_grad)?;
    let copies = smooth_grad.map_or(1, |s| s.samples);
    // A path's rows: each point's copies in turn.
    let steps = points.len() * copies;
    let per_baseline = targets.len() * steps;
    // Every (baseline, target, point, copy) row is streamed through in batches into per-path sums.
    let mut sums = vec![vec![0f64; n]; baselines.len() * targets.len()];
    cx.gradient_stream(
        &[],
        RuleSet::Exact,
        &job.input,
        baselines.len() * per_baseline,
        chunk,
        |r, buf| {
            let b = &baselines[r / per_baseline];
            let k = r % steps;
            let a = points[k / copies].0 as f32;
            for ((o, b), x) in buf.iter_mut().zip(b).zip(&x) {
                *o = b + a * (x - b);
            }
            // The same noise for every baseline and target: copy k of the path.
            noise.add(buf, k);
            targets[(r % per_baseline) / steps].index
        },
        |r, pass, i| {
            let w = points[(r % steps) / copies].1 / copies as f64;
            let g = &pass.input_grad.as_f32().unwrap_or(&[])[i * n..(i + 1) * n];
            for (a, g) in sums[r / steps].iter_mut().zip(g) {
                *a += w * *g as f64;
            }
        },
    )?;
    let mut sums = sums.into_iter();
    Ok(baselines
        .iter()
        .map(|b| {
            (0..targets.len())
                .map(|_| {
                    let avg = sums.next().unwrap_or_default();
                    avg.iter()
                        .zip(&x)
                        .zip(b)
                        .map(|((a, x), b)| (a * (*x - *b) as f64) as f32)
                        .collect()
                })
                .collect()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quadratures_integrate_polynomials() {
        // The integral of 3x^2 + 1 over [0, 1] is 2.
        for rule in [Integration::GaussLegendre, Integration::RiemannTrapezoid] {
            let q = quadrature(rule, 50);
            assert!((q.iter().map(|(_, w)| w).sum::<f64>() - 1.0).abs() < 1e-12);
            let value: f64 = q.iter().map(|(x, w)| w * (3.0 * x * x + 1.0)).sum();
            let tolerance = if rule == Integration::GaussLegendre {
                1e-12
            } else {
                1e-3
            };
            assert!((value - 2.0).abs() < tolerance, "{rule:?}: {value}");
        }
    }
}
