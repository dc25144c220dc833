//! Integrated Gradients (Sundararajan et al. 2017): the path integral of gradients from a baseline
//! to the input, by Gauss-Legendre (Captum's default) or the trapezoid rule. Reports the convergence
//! delta: sum of attributions minus (f(input) - f(baseline)).

use std::num::NonZeroUsize;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::baselines::{self, Baseline};
use super::method::{
    bytes, check_range, mul, Capabilities, Cost, Inputs, Invalid, Method, Passes, PlanContext, CONFIGURED_MAX_SAMPLES,
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
}

impl Default for IntegratedGradientsParams {
    fn default() -> Self {
        Self {
            steps: 50,
            integration: Integration::GaussLegendre,
            baseline: Baseline::Black,
            internal_batch_size: None,
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
    };

    fn plan(p: &mut IntegratedGradientsParams, cx: &PlanContext) -> Result<Cost, Invalid> {
        check_range("steps", p.steps, 2, cx.limits.max_samples)?;
        baselines::planned(&mut p.baseline, cx)?;
        if let Some(b) = p.internal_batch_size {
            check_range("internal_batch_size", b, 1, cx.limits.max_samples)?;
        }
        let samples = mul(p.steps, cx.targets, "steps x targets")?;
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
    let points = quadrature(p.integration, p.steps);
    let chunk = p.internal_batch_size.unwrap_or(usize::MAX);
    let mut paths = path_attributions(cx, job, std::slice::from_ref(&b), targets, &points, chunk)?;
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
            details: None,
        });
    }
    Ok(out)
}

/// The integrated gradients of every target from each of `baselines` (values in the input's
/// layout) to the job's input, on the quadrature `points`: per baseline, per target, the
/// attribution (the path's weighted mean gradient times the input minus the baseline). Every
/// (baseline, target, point) is one row of one gradient stream, at most `chunk` rows a pass, so
/// several baselines (XRAI's black and white) share full batches.
pub(super) fn path_attributions(
    cx: &mut Cx,
    job: &ExplainJob,
    baselines: &[Vec<f32>],
    targets: &[Prediction],
    points: &[(f64, f64)],
    chunk: usize,
) -> Result<Vec<Vec<Vec<f32>>>, RuntimeError> {
    let x = job.input.as_f32().unwrap_or(&[]).to_vec();
    let n = x.len();
    let (per_baseline, steps) = (targets.len() * points.len(), points.len());
    // Every (baseline, target, point) row is streamed through in batches into per-path sums.
    let mut sums = vec![vec![0f64; n]; baselines.len() * targets.len()];
    cx.gradient_stream(
        &[],
        RuleSet::Exact,
        &job.input,
        baselines.len() * per_baseline,
        chunk,
        |r, buf| {
            let b = &baselines[r / per_baseline];
            let a = points[r % steps].0 as f32;
            for ((o, b), x) in buf.iter_mut().zip(b).zip(&x) {
                *o = b + a * (x - b);
            }
            targets[(r % per_baseline) / steps].index
        },
        |r, pass, i| {
            let w = points[r % steps].1;
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
