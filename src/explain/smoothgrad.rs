//! SmoothGrad (Smilkov et al. 2017): attributions averaged over noisy copies of the input, with
//! the SmoothGrad-squared and VarGrad variants (Adebayo et al. 2018), over saliency or Integrated
//! Gradients. Noise is seeded: the same seed gives the same bytes.

use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::baselines::{self, Baseline};
use super::integrated_gradients::{quadrature, Integration};
use super::{fold_channels, one_hot, row, Cx, ExplainJob, Fold, Limits, TargetAttribution};
use crate::onnx::autodiff::RuleSet;
use crate::runtime::predict::Prediction;
use crate::runtime::{RuntimeError, Tensor};

/// How the noisy attributions are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SmoothGradVariant {
    /// Mean.
    Smoothgrad,
    /// Mean of squares.
    SmoothgradSq,
    /// Variance.
    Vargrad,
}

/// The attribution computed on each noisy copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SmoothGradBase {
    /// Saliency (absolute gradients unless `abs` is false).
    Saliency,
    /// Integrated Gradients from a black baseline, `steps` points (Gauss-Legendre).
    IntegratedGradients,
}

/// SmoothGrad parameters.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SmoothGradParams {
    /// Noisy copies of the input.
    #[schema(default = 50, minimum = 1)]
    pub samples: usize,
    /// Noise standard deviation as a fraction of the input's range (max - min).
    #[schema(default = 0.15, minimum = 0.0)]
    pub noise_level: f32,
    /// How the copies' attributions are combined.
    #[schema(default = "smoothgrad")]
    pub variant: SmoothGradVariant,
    /// The attribution taken on each copy.
    #[schema(default = "saliency")]
    pub base: SmoothGradBase,
    /// Saliency base: absolute gradients.
    #[schema(default = true)]
    pub abs: bool,
    /// Integrated Gradients base: points per path (each copy costs this many rows).
    #[schema(default = 20, minimum = 2)]
    pub steps: usize,
}

impl Default for SmoothGradParams {
    fn default() -> Self {
        Self {
            samples: 50,
            noise_level: 0.15,
            variant: SmoothGradVariant::Smoothgrad,
            base: SmoothGradBase::Saliency,
            abs: true,
            steps: 20,
        }
    }
}

impl SmoothGradParams {
    pub(super) fn rows(&self) -> usize {
        match self.base {
            SmoothGradBase::Saliency => self.samples,
            SmoothGradBase::IntegratedGradients => self.samples * self.steps,
        }
    }

    pub(super) fn validate(&self, limits: Limits) -> Result<(), String> {
        if self.samples == 0 {
            return Err("params.samples must be at least 1".into());
        }
        if !(self.noise_level.is_finite() && self.noise_level >= 0.0) {
            return Err("params.noise_level must be a non-negative number".into());
        }
        if self.base == SmoothGradBase::IntegratedGradients && self.steps < 2 {
            return Err("params.steps must be at least 2".into());
        }
        if self.rows() > limits.max_samples {
            return Err(format!(
                "params ask for {} model rows per target; the limit is {} (max_samples)",
                self.rows(),
                limits.max_samples
            ));
        }
        Ok(())
    }
}

pub(super) fn explain(
    cx: &mut Cx,
    job: &ExplainJob,
    p: &SmoothGradParams,
    targets: &[Prediction],
) -> Result<Vec<TargetAttribution>, RuntimeError> {
    let x = job.input.as_f32().unwrap_or(&[]).to_vec();
    let n = x.len();
    let (lo, hi) = x
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), v| (a.min(*v), b.max(*v)));
    let sigma = (p.noise_level * (hi - lo)).max(0.0);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(job.seed);
    let normal = Normal::new(0f32, sigma.max(f32::MIN_POSITIVE)).map_err(|e| RuntimeError::Inference {
        model: job.model.name.clone(),
        message: format!("noise: {e}"),
    })?;
    // One set of noisy copies, shared by all targets (as Captum's NoiseTunnel draws per input).
    let noisy: Vec<Vec<f32>> = (0..p.samples)
        .map(|_| {
            x.iter()
                .map(|v| if sigma > 0.0 { v + normal.sample(&mut rng) } else { *v })
                .collect()
        })
        .collect();
    let spec = job.model.spec.image.as_ref();
    let classes = job.model.spec.labels.len().max(1);
    let points = match p.base {
        SmoothGradBase::Saliency => vec![(1.0, 1.0)],
        SmoothGradBase::IntegratedGradients => quadrature(Integration::GaussLegendre, p.steps),
    };
    let baseline = baselines::build(Baseline::Black, &job.input, spec, job.seed);
    let b = baseline.as_f32().unwrap_or(&[]);
    let mut out = Vec::new();
    for t in targets {
        let mut data = Vec::with_capacity(p.samples * points.len() * n);
        for copy in &noisy {
            for (alpha, _) in &points {
                let a = *alpha as f32;
                match p.base {
                    SmoothGradBase::Saliency => data.extend_from_slice(copy),
                    SmoothGradBase::IntegratedGradients => {
                        data.extend(b.iter().zip(copy).map(|(b, x)| b + a * (x - b)))
                    }
                }
            }
        }
        let rows = p.samples * points.len();
        let mut shape = job.input.shape.clone();
        shape[0] = rows;
        let batch = Tensor::f32(shape, data);
        let grads = cx
            .gradients(
                &[],
                RuleSet::Standard,
                &batch,
                &one_hot(&vec![t.index; rows], classes),
                cx.max_batch(),
            )?
            .input_grad;
        let grads = grads.as_f32().unwrap_or(&[]);
        let mut sum = vec![0f64; n];
        let mut sum_sq = vec![0f64; n];
        for (s, copy) in noisy.iter().enumerate() {
            for i in 0..n {
                let v = match p.base {
                    SmoothGradBase::Saliency => {
                        let g = grads[s * n + i] as f64;
                        if p.abs {
                            g.abs()
                        } else {
                            g
                        }
                    }
                    SmoothGradBase::IntegratedGradients => {
                        let avg: f64 = points
                            .iter()
                            .enumerate()
                            .map(|(k, (_, w))| w * grads[(s * points.len() + k) * n + i] as f64)
                            .sum();
                        avg * (copy[i] - b[i]) as f64
                    }
                };
                sum[i] += v;
                sum_sq[i] += v * v;
            }
        }
        let m = p.samples as f64;
        let combined: Vec<f32> = (0..n)
            .map(|i| {
                let mean = sum[i] / m;
                (match p.variant {
                    SmoothGradVariant::Smoothgrad => mean,
                    SmoothGradVariant::SmoothgradSq => sum_sq[i] / m,
                    SmoothGradVariant::Vargrad => sum_sq[i] / m - mean * mean,
                }) as f32
            })
            .collect();
        let mut shape = job.input.shape.clone();
        shape[0] = 1;
        let single = Tensor::f32(shape, combined);
        let signed = p.variant == SmoothGradVariant::Smoothgrad && !(p.base == SmoothGradBase::Saliency && p.abs);
        out.push(TargetAttribution {
            target: t.clone(),
            tensor: row(&single, 0),
            map: spec.map(|s| fold_channels(&single, 0, s, if signed { Fold::Sum } else { Fold::MaxAbs })),
            convergence_delta: None,
            layer: None,
            details: None,
        });
    }
    Ok(out)
}
