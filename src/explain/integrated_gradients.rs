//! Integrated Gradients (Sundararajan et al. 2017): the path integral of gradients from a baseline
//! to the input, by Gauss-Legendre (Captum's default) or the trapezoid rule. Reports the convergence
//! delta: sum of attributions minus (f(input) - f(baseline)).

use std::num::NonZeroUsize;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::baselines::{self, Baseline};
use super::{fold_channels, one_hot, row, Cx, ExplainJob, Fold, Limits, TargetAttribution};
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
    #[schema(default = 50, minimum = 2)]
    pub steps: usize,
    /// Quadrature rule.
    #[schema(default = "gauss_legendre")]
    pub integration: Integration,
    /// Reference input.
    #[schema(default = "black")]
    pub baseline: Baseline,
    /// Rows per model pass (Captum's `internal_batch_size`); capped by the service's `max_batch`.
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

impl IntegratedGradientsParams {
    pub(super) fn validate(&self, limits: Limits) -> Result<(), String> {
        if self.steps < 2 || self.steps > limits.max_samples {
            return Err(format!(
                "params.steps must be between 2 and {} (max_samples)",
                limits.max_samples
            ));
        }
        if self.internal_batch_size == Some(0) {
            return Err("params.internal_batch_size must be at least 1".into());
        }
        Ok(())
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

pub(super) fn explain(
    cx: &mut Cx,
    job: &ExplainJob,
    p: &IntegratedGradientsParams,
    targets: &[Prediction],
    scores: &[f64],
) -> Result<Vec<TargetAttribution>, RuntimeError> {
    let spec = job.model.spec.image.as_ref();
    let baseline = baselines::for_job(p.baseline, job);
    let x = job.input.as_f32().unwrap_or(&[]).to_vec();
    let b = baseline.as_f32().unwrap_or(&[]).to_vec();
    let points = quadrature(p.integration, p.steps);
    let classes = job.model.spec.labels.len().max(1);
    // Rows: every (target, point) pair, one batch stream.
    let n = x.len();
    let mut data = Vec::with_capacity(targets.len() * points.len() * n);
    let mut indices = Vec::new();
    for t in targets {
        for (alpha, _) in &points {
            let a = *alpha as f32;
            data.extend(b.iter().zip(&x).map(|(b, x)| b + a * (x - b)));
            indices.push(t.index);
        }
    }
    let mut shape = job.input.shape.clone();
    shape[0] = indices.len();
    let path = Tensor::f32(shape, data);
    let chunk = p.internal_batch_size.unwrap_or(usize::MAX).min(cx.max_batch());
    let grads = cx
        .gradients(&[], RuleSet::Standard, &path, &one_hot(&indices, classes), chunk)?
        .input_grad;
    let grads = grads.as_f32().unwrap_or(&[]);
    let base_scores = cx.forward(&baseline)?.to_f64();
    let mut out = Vec::new();
    for (ti, t) in targets.iter().enumerate() {
        let mut avg = vec![0f64; n];
        for (k, (_, w)) in points.iter().enumerate() {
            let r = ti * points.len() + k;
            for (a, g) in avg.iter_mut().zip(&grads[r * n..(r + 1) * n]) {
                *a += w * *g as f64;
            }
        }
        let attribution: Vec<f32> = avg
            .iter()
            .zip(&x)
            .zip(&b)
            .map(|((a, x), b)| (a * (*x - *b) as f64) as f32)
            .collect();
        let total: f64 = attribution.iter().map(|v| *v as f64).sum();
        let delta = total - (scores[t.index] - base_scores[t.index]);
        let mut shape = job.input.shape.clone();
        shape[0] = 1;
        let batch = Tensor::f32(shape, attribution);
        out.push(TargetAttribution {
            target: t.clone(),
            tensor: row(&batch, 0),
            map: spec.map(|s| fold_channels(&batch, 0, s, Fold::Sum)),
            convergence_delta: Some(delta),
            layer: None,
            details: None,
        });
    }
    Ok(out)
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
