//! LIME for images (Ribeiro et al. 2016; lime_image's defaults): superpixels switched off at random,
//! an exponential kernel on the cosine distance to the full image, and a weighted ridge regression
//! whose coefficients are the segments' weights. Seeded: the same seed gives the same bytes.

use nalgebra::{DMatrix, DVector};
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::baselines::{self, Baseline};
use super::perturb::{compose, index, run_copies, segment_indices};
use super::{segments, Cx, ExplainJob, Limits, TargetAttribution};
use crate::runtime::manifest::ScoreKind;
use crate::runtime::predict::{softmax, Prediction};
use crate::runtime::{RuntimeError, Tensor};

/// What replaces a switched-off segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Hide {
    /// Mid grey (pixel 128).
    Gray,
    /// Black.
    Black,
    /// The image blurred.
    Blur,
}

/// LIME parameters.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LimeParams {
    /// Superpixels asked of SLIC (it may return a few more or fewer).
    #[schema(default = 50, minimum = 2)]
    pub segments: u32,
    /// SLIC compactness, 1 to 20: higher gives squarer segments.
    #[schema(default = 10)]
    pub compactness: u8,
    /// Perturbed images (each one model row).
    #[schema(default = 1000, minimum = 10)]
    pub samples: usize,
    /// What switched-off segments show.
    #[schema(default = "gray")]
    pub hide: Hide,
    /// Width of the exponential kernel on cosine distance (lime_image: 0.25).
    #[schema(default = 0.25)]
    pub kernel_width: f64,
    /// Ridge regularisation (scikit-learn's Ridge default, as LIME uses).
    #[schema(default = 1.0)]
    pub alpha: f64,
}

impl Default for LimeParams {
    fn default() -> Self {
        Self {
            segments: 50,
            compactness: 10,
            samples: 1000,
            hide: Hide::Gray,
            kernel_width: 0.25,
            alpha: 1.0,
        }
    }
}

impl LimeParams {
    pub(super) fn validate(&self, limits: Limits) -> Result<(), String> {
        if self.segments < 2 || self.segments > 1000 {
            return Err("params.segments must be between 2 and 1000".into());
        }
        if !(1..=20).contains(&self.compactness) {
            return Err("params.compactness must be between 1 and 20".into());
        }
        if self.samples < 10 || self.samples > limits.max_samples {
            return Err(format!(
                "params.samples must be between 10 and {} (max_samples)",
                limits.max_samples
            ));
        }
        if !(self.kernel_width > 0.0 && self.alpha >= 0.0) {
            return Err("params.kernel_width must be positive and params.alpha non-negative".into());
        }
        Ok(())
    }
}

/// The input with every segment switched off, in the model's input space.
pub(super) fn hidden_image(job: &ExplainJob, spec: &crate::runtime::manifest::ImageSpec, hide: Hide) -> Vec<f32> {
    let t = match hide {
        Hide::Black => baselines::build(Baseline::Black, &job.input, Some(spec), job.seed),
        Hide::Blur => baselines::build(Baseline::Blur, &job.input, Some(spec), job.seed),
        Hide::Gray => {
            let mut t = vec![0f32; job.input.as_f32().map(<[f32]>::len).unwrap_or(0)];
            for ch in 0..spec.channels {
                for y in 0..spec.height {
                    for xx in 0..spec.width {
                        t[index(spec, ch, y, xx)] = (128.0 * spec.scale - spec.mean[ch]) / spec.std[ch];
                    }
                }
            }
            Tensor::f32(job.input.shape.clone(), t)
        }
    };
    t.as_f32().unwrap_or(&[]).to_vec()
}

/// A weighted ridge fit with intercept: (coefficients, intercept, weighted R^2).
pub(super) fn weighted_ridge(z: &DMatrix<f64>, y: &[f64], weights: &[f64], alpha: f64) -> (Vec<f64>, f64, f64) {
    let (n, m) = (z.nrows(), z.ncols());
    let total: f64 = weights.iter().sum::<f64>().max(f64::MIN_POSITIVE);
    let mean_y = weights.iter().zip(y).map(|(w, v)| w * v).sum::<f64>() / total;
    let mean_z: Vec<f64> = (0..m)
        .map(|j| (0..n).map(|i| weights[i] * z[(i, j)]).sum::<f64>() / total)
        .collect();
    let mut a = DMatrix::<f64>::zeros(m, m);
    let mut b = DVector::<f64>::zeros(m);
    for i in 0..n {
        let wi = weights[i];
        for j in 0..m {
            let zj = z[(i, j)] - mean_z[j];
            b[j] += wi * zj * (y[i] - mean_y);
            for k in j..m {
                a[(j, k)] += wi * zj * (z[(i, k)] - mean_z[k]);
            }
        }
    }
    for j in 0..m {
        for k in 0..j {
            a[(j, k)] = a[(k, j)];
        }
        a[(j, j)] += alpha;
    }
    let coef = match a.clone().cholesky() {
        Some(ch) => ch.solve(&b),
        None => a.lu().solve(&b).unwrap_or_else(|| DVector::zeros(m)),
    };
    let intercept = mean_y - (0..m).map(|j| coef[j] * mean_z[j]).sum::<f64>();
    let (mut ss_res, mut ss_tot) = (0.0, 0.0);
    for i in 0..n {
        let fit = intercept + (0..m).map(|j| coef[j] * z[(i, j)]).sum::<f64>();
        ss_res += weights[i] * (y[i] - fit).powi(2);
        ss_tot += weights[i] * (y[i] - mean_y).powi(2);
    }
    let r2 = if ss_tot > 0.0 { 1.0 - ss_res / ss_tot } else { 0.0 };
    (coef.iter().copied().collect(), intercept, r2)
}

pub(super) fn explain(
    cx: &mut Cx,
    job: &ExplainJob,
    p: &LimeParams,
    targets: &[Prediction],
) -> Result<Vec<TargetAttribution>, RuntimeError> {
    let spec = job.image_spec("image LIME")?;
    let (h, w) = (spec.height, spec.width);
    let (labels, m) = segments::slic(&job.input, spec, p.segments, p.compactness)?;
    let pixels = segment_indices(spec, &labels, m);
    let x = job.input.as_f32().unwrap_or(&[]).to_vec();
    let hidden = hidden_image(job, spec, p.hide);
    // The first sample is the whole image, as lime_image does.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(job.seed);
    let z: Vec<Vec<bool>> = (0..p.samples)
        .map(|r| (0..m).map(|_| r == 0 || rng.random::<bool>()).collect())
        .collect();
    let outputs = run_copies(cx, &job.input, p.samples, |r, buf| {
        compose(buf, &x, &hidden, &z[r], &pixels)
    })?;
    let probabilities = job.model.spec.scores == ScoreKind::Logits;
    let design = DMatrix::from_fn(p.samples, m, |i, j| if z[i][j] { 1.0 } else { 0.0 });
    let weights: Vec<f64> = z
        .iter()
        .map(|row| {
            let on = row.iter().filter(|b| **b).count() as f64;
            let distance = 1.0 - (on / m as f64).sqrt();
            (-(distance * distance) / (p.kernel_width * p.kernel_width))
                .exp()
                .sqrt()
        })
        .collect();
    let mut out = Vec::new();
    for t in targets {
        let y: Vec<f64> = outputs
            .iter()
            .map(|row| {
                if probabilities {
                    softmax(row)[t.index]
                } else {
                    row[t.index]
                }
            })
            .collect();
        let (coef, intercept, r2) = weighted_ridge(&design, &y, &weights, p.alpha);
        let map = Tensor::f32(vec![h, w], labels.iter().map(|&s| coef[s] as f32).collect());
        let mut order: Vec<usize> = (0..m).collect();
        order.sort_by(|a, b| coef[*b].total_cmp(&coef[*a]));
        let details = serde_json::json!({
            "segments": m,
            "segment_weights": coef,
            "intercept": intercept,
            "r2": r2,
            "top_positive": order.iter().take(5).filter(|s| coef[**s] > 0.0).collect::<Vec<_>>(),
            "top_negative": order.iter().rev().take(5).filter(|s| coef[**s] < 0.0).collect::<Vec<_>>(),
            "segment_map": {"shape": [h, w], "values": labels},
        });
        out.push(TargetAttribution::from_map(t, map, None, Some(details)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ridge_recovers_a_linear_function() {
        // y = 2 z0 - z1 + 0.5, exactly, with a tiny penalty.
        let rows: Vec<[f64; 2]> = vec![[0., 0.], [1., 0.], [0., 1.], [1., 1.], [1., 0.], [0., 1.]];
        let z = DMatrix::from_fn(rows.len(), 2, |i, j| rows[i][j]);
        let y: Vec<f64> = rows.iter().map(|r| 2.0 * r[0] - r[1] + 0.5).collect();
        let (coef, intercept, r2) = weighted_ridge(&z, &y, &[1.0; 6], 1e-9);
        assert!((coef[0] - 2.0).abs() < 1e-6 && (coef[1] + 1.0).abs() < 1e-6 && (intercept - 0.5).abs() < 1e-6);
        assert!((r2 - 1.0).abs() < 1e-9);
    }
}
