//! SmoothGrad (Smilkov et al. 2017): attributions averaged over noisy copies of the input, with
//! the SmoothGrad-squared and VarGrad variants (Adebayo et al. 2018), over saliency or Integrated
//! Gradients. Noise is seeded: the same seed gives the same bytes.

use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::baselines::{self, Baseline};
use super::integrated_gradients::{quadrature, Integration};
use super::method::{
    bytes, check_range, mul, Capabilities, Cost, Inputs, Invalid, Method, Passes, PlanContext, CONFIGURED_MAX_SAMPLES,
};
use super::{fold_map, row, Cx, ExplainJob, Fold, TargetAttribution};
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
    #[schema(default = 50, minimum = 1, extensions(("x-maximum" = json!(CONFIGURED_MAX_SAMPLES))))]
    pub samples: usize,
    /// Noise standard deviation as a fraction of the input's range (max - min).
    #[schema(default = 0.15, minimum = 0.0, maximum = 10.0)]
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
    #[schema(default = 20, minimum = 2, extensions(("x-maximum" = json!(CONFIGURED_MAX_SAMPLES))))]
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
    /// Points per noisy copy: 1 for saliency, `steps` for Integrated Gradients.
    fn points(&self) -> usize {
        match self.base {
            SmoothGradBase::Saliency => 1,
            SmoothGradBase::IntegratedGradients => self.steps,
        }
    }
}

/// SmoothGrad.
pub struct SmoothGrad;

impl Method for SmoothGrad {
    type Params = SmoothGradParams;
    const NAME: &'static str = "smoothgrad";
    const SUMMARY: &'static str = "Attributions averaged over noisy copies of the input (Smilkov et al. 2017)";
    const CAPABILITIES: Capabilities = Capabilities {
        passes: Passes::Gradients,
        inputs: Inputs::Any,
        layer: false,
        random: true,
        examples: false,
        decision: false,
        text: true,
    };

    fn plan(p: &mut SmoothGradParams, cx: &PlanContext) -> Result<Cost, Invalid> {
        let limit = cx.limits.max_samples;
        check_range("samples", p.samples, 1, limit)?;
        if !p.noise_level.is_finite() {
            return Err(Invalid::Request("params.noise_level must be a finite number".into()));
        }
        check_range("noise_level", p.noise_level, 0.0, 10.0)?;
        check_range("steps", p.steps, 2, limit)?;
        let per_target = mul(p.samples, p.points(), "samples x steps")?;
        let samples = mul(per_target, cx.targets, "samples x steps x targets")?;
        Ok(Cost {
            samples,
            rows: samples,
            // The noisy copies (shared by the targets), one batch at a time, per-target sums.
            bytes: bytes(p.samples, 4)
                .saturating_mul(cx.input_len() as u64)
                .saturating_add(cx.batch_bytes(cx.limits.max_batch, true))
                .saturating_add(bytes(cx.input_len(), 16).saturating_mul(cx.targets as u64))
                .saturating_add(cx.answer_bytes()),
        })
    }

    fn explain(
        cx: &mut Cx,
        job: &ExplainJob,
        p: &SmoothGradParams,
        targets: &[Prediction],
        _: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError> {
        explain(cx, job, p, targets)
    }
}

fn explain(
    cx: &mut Cx,
    job: &ExplainJob,
    p: &SmoothGradParams,
    targets: &[Prediction],
) -> Result<Vec<TargetAttribution>, RuntimeError> {
    let noisy = noisy_copies(job, p)?;
    let m = moments(cx, job, p, targets, &noisy)?;
    Ok(targets
        .iter()
        .enumerate()
        .map(|(ti, t)| combined(job, p, t, &m.sum[ti], &m.sum_sq[ti]))
        .collect())
}

/// The noisy copies of the input, shared by all targets (as Captum's NoiseTunnel draws per input).
fn noisy_copies(job: &ExplainJob, p: &SmoothGradParams) -> Result<Vec<Vec<f32>>, RuntimeError> {
    let x = job.input.as_f32().unwrap_or(&[]);
    let (lo, hi) = x
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), v| (a.min(*v), b.max(*v)));
    let sigma = (p.noise_level * (hi - lo)).max(0.0);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(job.seed);
    let normal = Normal::new(0f32, sigma.max(f32::MIN_POSITIVE)).map_err(|e| RuntimeError::Inference {
        model: job.model.name.clone(),
        message: format!("noise: {e}"),
    })?;
    Ok((0..p.samples)
        .map(|_| {
            x.iter()
                .map(|v| if sigma > 0.0 { v + normal.sample(&mut rng) } else { *v })
                .collect()
        })
        .collect())
}

/// Per target, the sum and the sum of squares over the noisy copies of each value's gradient
/// (or Integrated Gradients' attribution, with `base`).
fn moments(
    cx: &mut Cx,
    job: &ExplainJob,
    p: &SmoothGradParams,
    targets: &[Prediction],
    noisy: &[Vec<f32>],
) -> Result<Moments, RuntimeError> {
    let n = job.input.as_f32().map_or(0, <[f32]>::len);
    let points = match p.base {
        SmoothGradBase::Saliency => vec![(1.0, 1.0)],
        SmoothGradBase::IntegratedGradients => quadrature(Integration::GaussLegendre, p.steps),
    };
    let baseline = baselines::for_job(Baseline::Black, job);
    let b = baseline.as_f32().unwrap_or(&[]);
    // Rows (target, copy, point) stream through in batches. A copy's value is complete after its
    // last point: Integrated Gradients sums its points first, so a scratch sum per target is kept.
    let per_target = p.samples * points.len();
    let mut sum = vec![vec![0f64; n]; targets.len()];
    let mut sum_sq = vec![vec![0f64; n]; targets.len()];
    let mut path = vec![vec![0f64; n]; targets.len()];
    cx.gradient_stream(
        &[],
        RuleSet::Exact,
        &job.input,
        targets.len() * per_target,
        usize::MAX,
        |r, buf| {
            let (ti, s, k) = (r / per_target, (r % per_target) / points.len(), r % points.len());
            let copy = &noisy[s];
            match p.base {
                SmoothGradBase::Saliency => buf.copy_from_slice(copy),
                SmoothGradBase::IntegratedGradients => {
                    let a = points[k].0 as f32;
                    for ((o, b), x) in buf.iter_mut().zip(b).zip(copy) {
                        *o = b + a * (x - b);
                    }
                }
            }
            targets[ti].index
        },
        |r, pass, i| {
            let (ti, s, k) = (r / per_target, (r % per_target) / points.len(), r % points.len());
            let g = &pass.input_grad.as_f32().unwrap_or(&[])[i * n..(i + 1) * n];
            let add = |sum: &mut [f64], sum_sq: &mut [f64], j: usize, v: f64| {
                sum[j] += v;
                sum_sq[j] += v * v;
            };
            match p.base {
                SmoothGradBase::Saliency => {
                    for (j, g) in g.iter().enumerate() {
                        let g = *g as f64;
                        add(&mut sum[ti], &mut sum_sq[ti], j, if p.abs { g.abs() } else { g });
                    }
                }
                SmoothGradBase::IntegratedGradients => {
                    let w = points[k].1;
                    for (acc, g) in path[ti].iter_mut().zip(g) {
                        *acc += w * *g as f64;
                    }
                    if k + 1 == points.len() {
                        let copy = &noisy[s];
                        for j in 0..n {
                            let v = path[ti][j] * (copy[j] - b[j]) as f64;
                            add(&mut sum[ti], &mut sum_sq[ti], j, v);
                            path[ti][j] = 0.0;
                        }
                    }
                }
            }
        },
    )?;
    Ok(Moments { sum, sum_sq })
}

/// Per target, per input value: the sum and the sum of squares over the noisy copies.
struct Moments {
    sum: Vec<Vec<f64>>,
    sum_sq: Vec<Vec<f64>>,
}

/// One target's attribution from its moments, as the variant combines them.
fn combined(job: &ExplainJob, p: &SmoothGradParams, t: &Prediction, sum: &[f64], sum_sq: &[f64]) -> TargetAttribution {
    let n = sum.len();
    let m = p.samples as f64;
    let values: Vec<f32> = (0..n)
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
    let single = Tensor::f32(shape, values);
    let signed = p.variant == SmoothGradVariant::Smoothgrad && !(p.base == SmoothGradBase::Saliency && p.abs);
    TargetAttribution {
        target: t.clone(),
        tensor: row(&single, 0),
        map: fold_map(job, &single, 0, if signed { Fold::Sum } else { Fold::MaxAbs }),
        convergence_delta: None,
        layer: None,
        details: None,
    }
}
