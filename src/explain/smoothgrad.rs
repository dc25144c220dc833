//! SmoothGrad (Smilkov et al. 2017): attributions averaged over noisy copies of the input, with
//! the SmoothGrad-squared and VarGrad variants (Adebayo et al. 2018), over saliency or Integrated
//! Gradients. Noise is seeded: the same seed gives the same bytes. The noise comes in antithetic
//! pairs (x + e, x - e), which cancels the gradient's first-order change with the noise, and each
//! value's standard error comes from the pairs' spread; `samples: "auto"` draws copies in doubling
//! rounds until the largest standard error is within `tolerance` of the largest attribution. The
//! noise is independent draws, Owen-scrambled Sobol points through the normal quantile (4
//! independently scrambled replicates, whose spread is the standard error), or blocks of
//! orthogonal directions each scaled by an independent chi norm (every copy still exactly
//! Gaussian; a block is a unit of the standard error).

use rand::SeedableRng;
use rand_distr::{ChiSquared, Distribution, Normal, StandardNormal};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::baselines::{self, Baseline};
use super::integrated_gradients::{quadrature, Integration};
use super::kernel_shap::{samples_schema, Samples};
use super::method::{
    bytes, check_range, mul, Capabilities, Cost, Inputs, Invalid, Method, Passes, PlanContext, CONFIGURED_MAX_SAMPLES,
};
use super::method::{schemas_of, NamedSchemas};
use super::sampling::{error_summary, normal_quantile, replicate_errors, MeanError, Sobol};
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

/// Where SmoothGrad's noise comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NoiseSequence {
    /// Independent Gaussian draws (Captum's NoiseTunnel).
    #[default]
    Random,
    /// Owen-scrambled Sobol points through the normal quantile, one dimension per input value, in
    /// 4 independently scrambled replicates (unit i is point i / 4 of replicate i mod 4).
    Sobol,
    /// Blocks of 8 directions made orthogonal, each scaled by an independent chi norm.
    Orthogonal,
}

impl NoiseSequence {
    /// Independently randomized replicates the standard error is the spread of (1: the units').
    fn replicates(self) -> usize {
        match self {
            NoiseSequence::Sobol => 4,
            _ => 1,
        }
    }

    /// Noise draws per unit of the standard error.
    fn draws_per_unit(self) -> usize {
        match self {
            NoiseSequence::Orthogonal => ORTHOGONAL_BLOCK,
            _ => 1,
        }
    }
}

/// Directions per orthogonal block.
const ORTHOGONAL_BLOCK: usize = 8;

/// The schema of SmoothGrad's `samples`.
fn samples_param_schema() -> utoipa::openapi::Schema {
    let mut schema = samples_schema(
        1,
        "Noisy copies of the input: a number (default 50; rounded up to an even number when `antithetic`) or \
         `\"auto\"` (copies in doubling rounds from 16 until the largest standard error is within `tolerance` of \
         the largest attribution, at most `max_samples` rows).",
        false,
    );
    // The page's form starts at the default.
    if let utoipa::openapi::Schema::OneOf(one_of) = &mut schema {
        one_of.default = Some(serde_json::json!(50));
    }
    schema
}

/// SmoothGrad parameters.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SmoothGradParams {
    /// Noisy copies of the input: a number, or `"auto"`.
    #[schema(schema_with = samples_param_schema)]
    pub samples: Samples,
    /// With `samples: "auto"`: the largest standard error accepted, as a fraction of the largest
    /// |attribution| (the variants `smoothgrad` and `smoothgrad_sq`).
    #[schema(default = 0.05, exclusive_minimum = 0.0, maximum = 1.0)]
    pub tolerance: f64,
    /// Noise in antithetic pairs (x + e, x - e): the same expectation with less variance.
    #[schema(default = true)]
    pub antithetic: bool,
    /// Where the noise comes from: `random` (independent draws), `sobol` (Owen-scrambled Sobol
    /// points through the normal quantile) or `orthogonal` (blocks of 8 orthogonal directions with
    /// independent chi norms).
    #[schema(default = "random")]
    pub sequence: NoiseSequence,
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
            samples: Samples::Fixed(50),
            tolerance: 0.05,
            antithetic: true,
            sequence: NoiseSequence::Random,
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
        makes_image: false,
    };

    fn details_schema() -> Option<NamedSchemas> {
        Some(schemas_of::<SmoothGradDetails>())
    }

    fn plan(p: &mut SmoothGradParams, cx: &PlanContext) -> Result<Cost, Invalid> {
        let limit = cx.limits.max_samples;
        if !p.noise_level.is_finite() {
            return Err(Invalid::Request("params.noise_level must be a finite number".into()));
        }
        check_range("noise_level", p.noise_level, 0.0, 10.0)?;
        check_range("steps", p.steps, 2, limit)?;
        if !(p.tolerance.is_finite() && p.tolerance > 0.0 && p.tolerance <= 1.0) {
            return Err(Invalid::Request(
                "params.tolerance must be greater than 0 and at most 1".into(),
            ));
        }
        let copies = match p.samples {
            Samples::Fixed(n) => {
                check_range("samples", n, 1, limit)?;
                // Pairs are drawn whole.
                let n = if p.antithetic { n.saturating_add(n % 2) } else { n };
                p.samples = Samples::Fixed(n);
                n
            }
            Samples::Auto(_) if p.variant == SmoothGradVariant::Vargrad => {
                return Err(Invalid::Request(
                    "params.samples: \"auto\" needs a standard error, which variant vargrad does not give".into(),
                ))
            }
            Samples::Auto(_) => (limit / p.points()).max(2),
        };
        let per_target = mul(copies, p.points(), "samples x steps")?;
        let samples = mul(per_target, cx.targets, "samples x steps x targets")?;
        Ok(Cost {
            samples,
            rows: samples,
            // The noisy copies (shared by the targets), one batch at a time, per-target sums.
            // The noisy copies (shared by the targets), one batch at a time, per-target sums (and
            // per replicate), an orthogonal block being drawn.
            bytes: bytes(copies, 4)
                .saturating_mul(cx.input_len() as u64)
                .saturating_add(cx.batch_bytes(cx.limits.max_batch, true))
                .saturating_add(
                    bytes(cx.input_len(), 24 + 16 * p.sequence.replicates()).saturating_mul(cx.targets as u64),
                )
                .saturating_add(bytes(cx.input_len(), 12 * p.sequence.draws_per_unit()))
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

/// Copies in the first round of `samples: "auto"`; each further round doubles the total.
const FIRST_ROUND: usize = 16;

fn explain(
    cx: &mut Cx,
    job: &ExplainJob,
    p: &SmoothGradParams,
    targets: &[Prediction],
) -> Result<Vec<TargetAttribution>, RuntimeError> {
    let mut noise = NoiseSource::new(job, p)?;
    let n = job.input.as_f32().map_or(0, <[f32]>::len);
    let mut m = Moments::new(targets.len(), n, p);
    let (budget, auto) = match p.samples {
        Samples::Fixed(count) => (count, false),
        Samples::Auto(_) => ((job.limits.max_samples / p.points()).max(2), true),
    };
    let mut drawn = 0;
    let mut stopped = "samples";
    while drawn < budget {
        let round = match auto {
            true => (if drawn == 0 { FIRST_ROUND } else { drawn }).min(budget - drawn),
            false => budget,
        };
        let noisy = noise.copies(round);
        moments(cx, job, p, targets, &noisy, drawn, &mut m)?;
        drawn += round;
        if auto && m.relative_errors(p.variant).iter().all(|e| *e <= p.tolerance) {
            stopped = "tolerance";
            break;
        }
    }
    if auto && stopped != "tolerance" {
        stopped = "sample budget reached";
    }
    Ok(targets
        .iter()
        .enumerate()
        .map(|(ti, t)| {
            let mut a = combined(job, p, t, &m.sum[ti], &m.sum_sq[ti], drawn);
            let errors = m.errors(ti, p.variant);
            let mut details = serde_json::json!({"samples": drawn, "stopped": stopped});
            if let Some((se, estimate)) = errors {
                details["standard_error"] = error_summary(&se, &estimate);
            }
            a.details = Some(details);
            a
        })
        .collect())
}

/// The seeded noise, drawn in order (so a run that stops after m copies drew the same m copies as
/// a run asked for m): plain, or in antithetic pairs.
struct NoiseSource<'a> {
    x: &'a [f32],
    sigma: f32,
    antithetic: bool,
    rng: rand_chacha::ChaCha8Rng,
    normal: Normal<f32>,
    sequence: NoiseSequence,
    /// Sobol's replicates.
    sobol: Vec<Sobol>,
    /// Noise draws so far (a draw gives a copy, or a pair).
    draws: u64,
    /// The orthogonal block's directions not yet used, last first.
    block: Vec<Vec<f32>>,
}

impl<'a> NoiseSource<'a> {
    fn new(job: &'a ExplainJob, p: &SmoothGradParams) -> Result<Self, RuntimeError> {
        let x = job.input.as_f32().unwrap_or(&[]);
        let (lo, hi) = x
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), v| (a.min(*v), b.max(*v)));
        let sigma = (p.noise_level * (hi - lo)).max(0.0);
        let normal = Normal::new(0f32, sigma.max(f32::MIN_POSITIVE)).map_err(|e| RuntimeError::Inference {
            model: job.model.name.clone(),
            message: format!("noise: {e}"),
        })?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(job.seed);
        let sobol = match p.sequence {
            NoiseSequence::Sobol => (0..p.sequence.replicates()).map(|_| Sobol::new(&mut rng)).collect(),
            _ => Vec::new(),
        };
        Ok(Self {
            x,
            sigma,
            antithetic: p.antithetic,
            rng,
            normal,
            sequence: p.sequence,
            sobol,
            draws: 0,
            block: Vec::new(),
        })
    }

    /// The next draw's noise.
    fn draw(&mut self) -> Vec<f32> {
        let n = self.x.len();
        let index = self.draws;
        self.draws += 1;
        if self.sigma <= 0.0 {
            return vec![0.0; n];
        }
        match self.sequence {
            NoiseSequence::Random => (0..n).map(|_| self.normal.sample(&mut self.rng)).collect(),
            NoiseSequence::Sobol => {
                let r = self.sobol.len().max(1) as u64;
                let mut u = vec![0f64; n];
                if let Some(seq) = self.sobol.get((index % r) as usize) {
                    seq.point(index / r, &mut u);
                }
                u.iter().map(|u| self.sigma * normal_quantile(*u) as f32).collect()
            }
            NoiseSequence::Orthogonal => {
                if self.block.is_empty() {
                    self.block = orthogonal_block(&mut self.rng, n, self.sigma);
                }
                self.block.pop().unwrap_or_else(|| vec![0.0; n])
            }
        }
    }

    /// The next `count` noisy copies of the input, shared by all targets (as Captum's NoiseTunnel
    /// draws per input); `count` is even with antithetic pairs.
    fn copies(&mut self, count: usize) -> Vec<Vec<f32>> {
        let mut out = Vec::with_capacity(count);
        while out.len() < count {
            let e = self.draw();
            out.push(self.x.iter().zip(&e).map(|(v, e)| v + e).collect());
            if self.antithetic && out.len() < count {
                out.push(self.x.iter().zip(&e).map(|(v, e)| v - e).collect());
            }
        }
        out
    }
}

/// `ORTHOGONAL_BLOCK` (at most n) Gaussian directions in n dimensions made orthonormal
/// (Gram-Schmidt), each scaled by sigma times an independent chi(n) norm: a Gaussian vector's
/// direction is uniform and independent of its norm, so each is exactly N(0, sigma^2 I), while
/// the block spans its directions evenly (Yu et al. 2016's orthogonal random features). Last
/// first, as `NoiseSource` pops them.
fn orthogonal_block(rng: &mut rand_chacha::ChaCha8Rng, n: usize, sigma: f32) -> Vec<Vec<f32>> {
    let chi = ChiSquared::new(n as f64).ok();
    let mut basis: Vec<Vec<f64>> = Vec::with_capacity(ORTHOGONAL_BLOCK);
    for _ in 0..ORTHOGONAL_BLOCK.min(n) {
        let mut v: Vec<f64> = (0..n).map(|_| StandardNormal.sample(rng)).collect();
        for b in &basis {
            let dot: f64 = v.iter().zip(b).map(|(a, b)| a * b).sum();
            for (a, b) in v.iter_mut().zip(b) {
                *a -= dot * b;
            }
        }
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
        v.iter_mut().for_each(|a| *a /= norm);
        basis.push(v);
    }
    let mut out: Vec<Vec<f32>> = basis
        .iter()
        .map(|v| {
            let radius = sigma as f64 * chi.map_or(0.0, |c| c.sample(rng).sqrt());
            v.iter().map(|a| (a * radius) as f32).collect()
        })
        .collect();
    out.reverse();
    out
}

/// Per target, the sum and the sum of squares over the noisy copies of each value's gradient
/// (or Integrated Gradients' attribution, with `base`).
fn moments(
    cx: &mut Cx,
    job: &ExplainJob,
    p: &SmoothGradParams,
    targets: &[Prediction],
    noisy: &[Vec<f32>],
    offset: usize,
    m: &mut Moments,
) -> Result<(), RuntimeError> {
    let n = job.input.as_f32().map_or(0, <[f32]>::len);
    let points = match p.base {
        SmoothGradBase::Saliency => vec![(1.0, 1.0)],
        SmoothGradBase::IntegratedGradients => quadrature(Integration::GaussLegendre, p.steps),
    };
    let baseline = baselines::for_job(Baseline::Black, job);
    let b = baseline.as_f32().unwrap_or(&[]);
    // Rows (target, copy, point) stream through in batches. A copy's value is complete after its
    // last point: Integrated Gradients sums its points first, so a scratch sum per target is kept.
    let per_target = noisy.len() * points.len();
    let mut path = vec![vec![0f64; n]; targets.len()];
    // A unit of the standard error: a draw's copy, or its antithetic pair (two copies in a row),
    // or an orthogonal block's; unit u goes to replicate u mod R.
    let unit = if p.antithetic { 2 } else { 1 } * p.sequence.draws_per_unit();
    let Moments {
        sum,
        sum_sq,
        units,
        unit_part,
    } = m;
    let mut unit_done = |ti: usize, s: usize, unit_part: &mut Vec<Vec<f64>>| {
        let copy = offset + s;
        if (copy + 1).is_multiple_of(unit) {
            let r = units[ti].len().max(1);
            if let Some(replicate) = units[ti].get_mut((copy / unit) % r) {
                replicate.add_unit(&mut unit_part[ti]);
            }
        }
    };
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
            let squared = p.variant != SmoothGradVariant::Smoothgrad;
            // The copy's value goes to the moments, and to its unit's mean for the standard error.
            let mut add = |sum: &mut [f64], sum_sq: &mut [f64], j: usize, v: f64| {
                sum[j] += v;
                sum_sq[j] += v * v;
                unit_part[ti][j] += if squared { v * v } else { v } / unit as f64;
            };
            match p.base {
                SmoothGradBase::Saliency => {
                    for (j, g) in g.iter().enumerate() {
                        let g = *g as f64;
                        add(&mut sum[ti], &mut sum_sq[ti], j, if p.abs { g.abs() } else { g });
                    }
                    unit_done(ti, s, unit_part);
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
                        unit_done(ti, s, unit_part);
                    }
                }
            }
        },
    )?;
    Ok(())
}

/// Per target, per input value: the sum and the sum of squares over the noisy copies, and the
/// units (copies or antithetic pairs) of the mean the variant takes, for its standard error.
struct Moments {
    sum: Vec<Vec<f64>>,
    sum_sq: Vec<Vec<f64>>,
    /// Per target, per replicate.
    units: Vec<Vec<MeanError>>,
    /// The unit being summed (a pair's first copy, until its second comes).
    unit_part: Vec<Vec<f64>>,
}

impl Moments {
    fn new(targets: usize, n: usize, p: &SmoothGradParams) -> Self {
        Self {
            sum: vec![vec![0f64; n]; targets],
            sum_sq: vec![vec![0f64; n]; targets],
            units: (0..targets)
                .map(|_| (0..p.sequence.replicates()).map(|_| MeanError::new(n)).collect())
                .collect(),
            unit_part: vec![vec![0f64; n]; targets],
        }
    }

    /// Target `ti`'s standard errors and the mean they are of (none for vargrad).
    fn errors(&self, ti: usize, variant: SmoothGradVariant) -> Option<(Vec<f64>, Vec<f64>)> {
        if variant == SmoothGradVariant::Vargrad {
            return None;
        }
        let (means, se) = replicate_errors(self.units.get(ti)?);
        Some((se, means))
    }

    /// Per target, the largest standard error over the largest |mean|.
    fn relative_errors(&self, variant: SmoothGradVariant) -> Vec<f64> {
        (0..self.units.len())
            .map(|ti| match self.errors(ti, variant) {
                Some((se, mean)) => super::sampling::relative(&se, &mean),
                None => f64::INFINITY,
            })
            .collect()
    }
}

/// SmoothGrad's `details`, as `explain` writes them.
#[derive(ToSchema)]
#[allow(dead_code)] // The answer's shape for the document; `explain` writes it as JSON.
pub struct SmoothGradDetails {
    /// Noisy copies used.
    samples: usize,
    /// Why sampling stopped: `samples` (the number asked), `tolerance` (met) or `sample budget reached`.
    stopped: String,
    /// The standard errors of the attributions (per input value; none for vargrad).
    standard_error: Option<super::sampling::ErrorSummary>,
}

/// One target's attribution from its moments, as the variant combines them.
fn combined(
    job: &ExplainJob,
    p: &SmoothGradParams,
    t: &Prediction,
    sum: &[f64],
    sum_sq: &[f64],
    drawn: usize,
) -> TargetAttribution {
    let n = sum.len();
    let m = drawn.max(1) as f64;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orthogonal_blocks_are_orthogonal_with_gaussian_norms() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let n = 400;
        let mut norms = Vec::new();
        for _ in 0..50 {
            let block = orthogonal_block(&mut rng, n, 2.0);
            assert_eq!(block.len(), ORTHOGONAL_BLOCK);
            for (i, a) in block.iter().enumerate() {
                let norm = a.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
                norms.push(norm);
                for b in &block[..i] {
                    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
                    assert!(dot.abs() < 1e-3 * norm * norm, "{dot}");
                }
            }
        }
        // sigma chi(n): mean of the squared norm sigma^2 n.
        let mean_sq = norms.iter().map(|v| v * v).sum::<f64>() / norms.len() as f64;
        assert!((mean_sq / (4.0 * n as f64) - 1.0).abs() < 0.05, "{mean_sq}");
        // Fewer dimensions than the block: as many directions as dimensions.
        assert_eq!(orthogonal_block(&mut rng, 3, 1.0).len(), 3);
    }
}
