//! KernelSHAP over superpixels (Lundberg and Lee 2017), in its unbiased form (Covert and Lee 2021):
//! coalitions drawn from the Shapley kernel distribution in complementary pairs, the exact kernel
//! matrix, and the efficiency constraint solved exactly, so values always sum to f(x) - f(hidden).
//! The paired samples' variance gives each value's standard error; `samples: "auto"` stops as soon
//! as every standard error is below `tolerance`. Seeded: the same seed gives the same bytes.

use nalgebra::{DMatrix, DVector};
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::lime::Hide;
use super::perturb::{compose, run_copies, segment_indices};
use super::{segments, Cx, ExplainJob, Limits, TargetAttribution};
use crate::runtime::manifest::ScoreKind;
use crate::runtime::predict::{softmax, Prediction};
use crate::runtime::preprocess::InputError;
use crate::runtime::{RuntimeError, Tensor};

/// A sample budget: a number, or `"auto"` (stop when every standard error is below `tolerance`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Samples {
    /// Exactly this many coalitions (rounded up to an even number: they come in pairs).
    Fixed(usize),
    /// `"auto"`.
    Auto(AutoSamples),
}

/// The word `auto`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AutoSamples {
    /// Stop at the tolerance.
    Auto,
}

/// KernelSHAP parameters.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct KernelShapParams {
    /// Superpixels (players) asked of SLIC.
    #[schema(default = 50, minimum = 2)]
    pub segments: u32,
    /// SLIC compactness, 1 to 20.
    #[schema(default = 10)]
    pub compactness: u8,
    /// Coalitions: a number (default 2M + 2048, shap's "auto" budget) or `"auto"`.
    pub samples: Option<Samples>,
    /// With `samples: "auto"`: the largest standard error accepted, in score units.
    #[schema(default = 0.01)]
    pub tolerance: f64,
    /// What a missing player (segment) shows.
    #[schema(default = "gray")]
    pub hide: Hide,
}

impl Default for KernelShapParams {
    fn default() -> Self {
        Self {
            segments: 50,
            compactness: 10,
            samples: None,
            tolerance: 0.01,
            hide: Hide::Gray,
        }
    }
}

impl KernelShapParams {
    pub(super) fn validate(&self, limits: Limits) -> Result<(), String> {
        if self.segments < 2 || self.segments > 500 {
            return Err("params.segments must be between 2 and 500".into());
        }
        if !(1..=20).contains(&self.compactness) {
            return Err("params.compactness must be between 1 and 20".into());
        }
        if let Some(Samples::Fixed(n)) = self.samples {
            if !(2..=limits.max_samples).contains(&n) {
                return Err(format!(
                    "params.samples must be between 2 and {} (max_samples), or \"auto\"",
                    limits.max_samples
                ));
            }
        }
        if self.tolerance.is_nan() || self.tolerance <= 0.0 {
            return Err("params.tolerance must be positive".into());
        }
        Ok(())
    }
}

/// The Shapley kernel's size distribution over 1..M-1, and E[z zT] under it.
fn kernel(m: usize) -> (Vec<f64>, DMatrix<f64>) {
    let mf = m as f64;
    let raw: Vec<f64> = (1..m).map(|s| 1.0 / (s as f64 * (mf - s as f64))).collect();
    let z: f64 = raw.iter().sum();
    let sizes: Vec<f64> = raw.iter().map(|r| r / z).collect();
    // P(i in S) = s/M; P(i, j in S) = s(s-1)/(M(M-1)).
    let diag: f64 = sizes.iter().enumerate().map(|(k, p)| p * (k + 1) as f64 / mf).sum();
    let off: f64 = sizes
        .iter()
        .enumerate()
        .map(|(k, p)| {
            let s = (k + 1) as f64;
            p * s * (s - 1.0) / (mf * (mf - 1.0))
        })
        .sum();
    let a = DMatrix::from_fn(m, m, |i, j| if i == j { diag } else { off });
    (sizes, a)
}

/// The linear map from b = E[z (v(z) - v0)] to the constrained solution's free part, and the
/// constraint's direction: phi = C b + d * total.
fn solver(a: &DMatrix<f64>) -> Option<(DMatrix<f64>, DVector<f64>)> {
    let m = a.nrows();
    let inv = a.clone().try_inverse()?;
    let ones = DVector::from_element(m, 1.0);
    let inv_ones = &inv * &ones;
    let denom = ones.dot(&inv_ones);
    let c = &inv - (&inv_ones * inv_ones.transpose()) / denom;
    Some((c, inv_ones / denom))
}

pub(super) fn explain(
    cx: &mut Cx,
    job: &ExplainJob,
    p: &KernelShapParams,
    targets: &[Prediction],
    scores: &[f64],
) -> Result<Vec<TargetAttribution>, RuntimeError> {
    let spec = job.image_spec("image KernelSHAP")?;
    let (h, w) = (spec.height, spec.width);
    let (labels, m) = segments::slic(&job.input, spec, p.segments, p.compactness)?;
    let pixels = segment_indices(spec, &labels, m);
    if m < 2 {
        return Err(InputError::BadFeatures("the image gave fewer than 2 segments; ask for more".into()).into());
    }
    let x = job.input.as_f32().unwrap_or(&[]).to_vec();
    let hidden = super::lime::hidden_image(job, spec, p.hide);
    let probabilities = job.model.spec.scores == ScoreKind::Logits;
    let value = |row: &[f64], t: usize| if probabilities { softmax(row)[t] } else { row[t] };
    let budget = job.limits.max_samples.saturating_sub(1);
    let (auto, target_samples) = match &p.samples {
        None => (false, (2 * m + 2048).min(budget)),
        Some(Samples::Fixed(n)) => (false, (*n).min(budget)),
        Some(Samples::Auto(_)) => (true, budget),
    };
    let (sizes, a) = kernel(m);
    let (map_c, constraint) = solver(&a).ok_or_else(|| RuntimeError::Inference {
        model: job.model.name.clone(),
        message: "singular Shapley kernel".into(),
    })?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(job.seed);
    let empty = run_copies(cx, &job.input, 1, |_, buf| buf.copy_from_slice(&hidden))?;
    let v0: Vec<f64> = targets.iter().map(|t| value(&empty[0], t.index)).collect();
    let v1: Vec<f64> = targets
        .iter()
        .map(|t| {
            if probabilities {
                softmax(scores)[t.index]
            } else {
                scores[t.index]
            }
        })
        .collect();
    // Per target, the per-pair contributions to b = E[z (v(z) - v0)].
    let mut pairs: Vec<Vec<DVector<f64>>> = vec![Vec::new(); targets.len()];
    let mut players: Vec<usize> = (0..m).collect();
    let round = 64usize;
    let mut drawn = 0usize;
    let mut stop_reason = "sample budget reached";
    while drawn + 2 <= target_samples {
        let n_pairs = ((target_samples - drawn) / 2).min(if auto { round / 2 } else { usize::MAX });
        let mut coalitions: Vec<Vec<bool>> = Vec::with_capacity(2 * n_pairs);
        for _ in 0..n_pairs {
            let u: f64 = rng.random();
            let mut acc = 0.0;
            let mut size = m - 1;
            for (k, p) in sizes.iter().enumerate() {
                acc += p;
                if u < acc {
                    size = k + 1;
                    break;
                }
            }
            players.shuffle(&mut rng);
            let mut z = vec![false; m];
            for &i in &players[..size] {
                z[i] = true;
            }
            let complement: Vec<bool> = z.iter().map(|b| !b).collect();
            coalitions.push(z);
            coalitions.push(complement);
        }
        let outputs = run_copies(cx, &job.input, coalitions.len(), |r, buf| {
            compose(buf, &x, &hidden, &coalitions[r], &pixels)
        })?;
        for (ti, t) in targets.iter().enumerate() {
            for k in 0..n_pairs {
                let mut contribution = DVector::zeros(m);
                for half in [2 * k, 2 * k + 1] {
                    let gain = value(&outputs[half], t.index) - v0[ti];
                    for (j, on) in coalitions[half].iter().enumerate() {
                        if *on {
                            contribution[j] += gain / 2.0;
                        }
                    }
                }
                pairs[ti].push(contribution);
            }
        }
        drawn += 2 * n_pairs;
        if auto && drawn >= 4 * m.max(16) {
            let worst = targets
                .iter()
                .enumerate()
                .map(|(ti, _)| estimate(&pairs[ti], &map_c).1.iter().cloned().fold(0.0, f64::max))
                .fold(0.0, f64::max);
            if worst < p.tolerance {
                stop_reason = "every standard error is below the tolerance";
                break;
            }
        }
    }
    let mut out = Vec::new();
    for (ti, t) in targets.iter().enumerate() {
        let (free, se) = estimate(&pairs[ti], &map_c);
        let total = v1[ti] - v0[ti];
        let phi: Vec<f64> = (0..m).map(|j| free[j] + constraint[j] * total).collect();
        let map = Tensor::f32(vec![h, w], labels.iter().map(|&s| phi[s] as f32).collect());
        let details = serde_json::json!({
            "segments": m,
            "shapley_values": phi,
            "standard_errors": se,
            "base_value": v0[ti],
            "value": v1[ti],
            "efficiency_gap": phi.iter().sum::<f64>() - total,
            "samples": drawn,
            "stopped": stop_reason,
            "segment_map": {"shape": [h, w], "values": labels},
        });
        out.push(TargetAttribution::from_map(t, map, None, Some(details)));
    }
    Ok(out)
}

/// The free part C b and each value's standard error, from the per-pair contributions.
fn estimate(pairs: &[DVector<f64>], c: &DMatrix<f64>) -> (DVector<f64>, Vec<f64>) {
    let m = c.nrows();
    let n = pairs.len().max(1) as f64;
    let mean = pairs.iter().fold(DVector::zeros(m), |acc, v| acc + v) / n;
    let free = c * &mean;
    if pairs.len() < 2 {
        return (free, vec![f64::INFINITY; m]);
    }
    // Cov(C b_mean) = C Cov(pair) C^T / n.
    let mut cov = DMatrix::<f64>::zeros(m, m);
    for v in pairs {
        let d = v - &mean;
        cov += &d * d.transpose();
    }
    cov /= n - 1.0;
    let phi_cov = c * cov * c.transpose() / n;
    (free, (0..m).map(|i| phi_cov[(i, i)].max(0.0).sqrt()).collect())
}
