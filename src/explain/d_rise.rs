//! D-RISE (Petsiuk et al., "Black-box Explanation of Object Detectors via Saliency Maps", CVPR
//! 2021): forward passes only. Each random mask hides part of the image; the masked image's
//! detections are compared with the target detection by IoU x cosine of their class-probability
//! vectors (x the objectness where the layout has one), and the best match's similarity weighs
//! the mask. The map is the weighted masks' sum less the mean weight times the masks' sum, over
//! the mask count: the reference implementation's `normalize` step (which then also stretches the
//! map to [0, 1] for display; the answer keeps the scale).
//!
//! Defaults follow Microsoft's reference implementation, `vision_explanation_methods/explanations/
//! drise.py` (microsoft/vision-explanation-methods): a 16 x 16 grid (`mask_res`), each cell kept
//! with probability 1/2 (`torch.randint(0, 2)`), upsampled by nearest neighbour to the image plus
//! one cell (`mask_padding = max(H / 16, W / 16)`) and cropped at a random offset. The library
//! leaves the mask count to the caller (its runner passes 25, the paper uses 5,000); 1,000 here,
//! within the default `max_samples`.

use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::baselines::{self, Baseline};
use super::method::{bytes, check_range, Capabilities, Cost, Inputs, Invalid, Method, Passes, PlanContext, MAX_SIDE};
use super::{Cx, ExplainJob, TargetAttribution};
use crate::common::detection_targets;
use crate::runtime::detect::{self, Detection};
use crate::runtime::manifest::{ImageSpec, Layout};
use crate::runtime::predict::Prediction;
use crate::runtime::{RuntimeError, Tensor};

/// D-RISE parameters.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DRiseParams {
    /// Number of masks (forward passes).
    #[schema(default = 1000, minimum = 1, extensions(("x-maximum" = json!(super::method::CONFIGURED_MAX_SAMPLES))))]
    pub masks: usize,
    /// Side of the low-resolution mask grid (the reference's `mask_res`).
    #[schema(default = 16, minimum = 2, extensions(("x-maximum" = json!(MAX_SIDE))))]
    pub grid: usize,
    /// Probability that a grid cell is kept, strictly between 0 and 1.
    #[schema(default = 0.5, exclusive_minimum = 0.0, exclusive_maximum = 1.0)]
    pub p: f32,
}

impl Default for DRiseParams {
    fn default() -> Self {
        Self {
            masks: 1000,
            grid: 16,
            p: 0.5,
        }
    }
}

/// D-RISE.
pub struct DRise;

impl Method for DRise {
    type Params = DRiseParams;
    const NAME: &'static str = "d-rise";
    const SUMMARY: &'static str =
        "Random masks weighed by how well the masked image's detections match the target (Petsiuk et al. 2021)";
    const CAPABILITIES: Capabilities = Capabilities {
        passes: Passes::Forward,
        inputs: Inputs::Image,
        layer: false,
        random: true,
        examples: false,
        decision: false,
        text: false,
        makes_image: false,
    };

    fn plan(p: &mut DRiseParams, cx: &PlanContext) -> Result<Cost, Invalid> {
        // The parameters' own bounds first (400), then whether they fit the model (422).
        check_range("grid", p.grid, 2, MAX_SIDE)?;
        if !(p.p > 0.0 && p.p < 1.0) {
            return Err(Invalid::Request("params.p must be strictly between 0 and 1".into()));
        }
        check_range("masks", p.masks, 1, cx.limits.max_samples)?;
        let (Some(spec), Some(_)) = (cx.model.spec.image.as_ref(), cx.model.spec.detection.as_ref()) else {
            return Err(Invalid::Model("D-RISE explains object detectors".into()));
        };
        let side = spec.height.min(spec.width).max(2);
        check_range("grid", p.grid, 2, side.min(MAX_SIDE))?;
        let batch = p.masks.min(cx.limits.max_batch);
        // A batch of masked inputs and their masks, the outputs' rows as f64, the sums.
        let outputs = bytes(cx.classes(), 8).saturating_mul(batch as u64);
        Ok(Cost {
            samples: p.masks,
            rows: p.masks,
            bytes: cx
                .batch_bytes(batch, false)
                .saturating_add(bytes(batch, 4).saturating_mul(cx.pixels() as u64))
                .saturating_add(outputs)
                .saturating_add(bytes(cx.pixels(), 8).saturating_mul(cx.targets as u64 + 1))
                .saturating_add(cx.answer_bytes()),
        })
    }

    fn explain(
        cx: &mut Cx,
        job: &ExplainJob,
        p: &DRiseParams,
        targets: &[Prediction],
        scores: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError> {
        explain(cx, job, p, targets, scores)
    }
}

/// One mask: a `grid` x `grid` random grid upsampled (nearest) to the image plus one cell, cropped
/// at a random offset in [0, cell]. Kept as its cells and the grid row and column of each image
/// row and column, so the image-size mask is made by copying rows and the map is summed cell by
/// cell rather than pixel by pixel.
struct Mask {
    grid: usize,
    cells: Vec<bool>,
    rows: Vec<usize>,
    cols: Vec<usize>,
}

impl Mask {
    fn draw(rng: &mut rand_chacha::ChaCha8Rng, grid: usize, p: f32, h: usize, w: usize) -> Self {
        let cells: Vec<bool> = (0..grid * grid).map(|_| rng.random::<f32>() < p).collect();
        let pad = (h / grid).max(w / grid);
        let (up_h, up_w) = (h + pad, w + pad);
        let (dy, dx) = (rng.random_range(0..=pad), rng.random_range(0..=pad));
        let cell = |at: usize, up: usize| (at * grid / up).min(grid - 1);
        Mask {
            grid,
            cells,
            rows: (0..h).map(|y| cell(y + dy, up_h)).collect(),
            cols: (0..w).map(|x| cell(x + dx, up_w)).collect(),
        }
    }

    /// The mask at image resolution, row-major, 0 or 1: one row per grid row, copied.
    fn pixels(&self) -> Vec<f32> {
        let grid_rows: Vec<Vec<f32>> = (0..self.grid)
            .map(|gy| {
                let cells = &self.cells[gy * self.grid..(gy + 1) * self.grid];
                self.cols.iter().map(|&gx| f32::from(u8::from(cells[gx]))).collect()
            })
            .collect();
        let mut out = Vec::with_capacity(self.rows.len() * self.cols.len());
        for &gy in &self.rows {
            out.extend_from_slice(&grid_rows[gy]);
        }
        out
    }

    /// Adds `weight` over every kept cell's rectangle into `diff`, a (h + 1) x (w + 1) table of
    /// differences whose 2-D prefix sum ([`integrate`]) is the weighted masks' sum: four entries a
    /// cell rather than one a pixel.
    fn add_to(&self, diff: &mut [f64], weight: f64) {
        let w1 = self.cols.len() + 1;
        for (gy, (y0, y1)) in runs(&self.rows, self.grid).enumerate() {
            for (gx, (x0, x1)) in runs(&self.cols, self.grid).enumerate() {
                if y0 < y1 && x0 < x1 && self.cells[gy * self.grid + gx] {
                    diff[y0 * w1 + x0] += weight;
                    diff[y0 * w1 + x1] -= weight;
                    diff[y1 * w1 + x0] -= weight;
                    diff[y1 * w1 + x1] += weight;
                }
            }
        }
    }
}

/// For each grid index `0..grid`, the half-open range of the positions that `of` (non-decreasing)
/// maps to it; empty when none does.
fn runs(of: &[usize], grid: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    (0..grid).map(move |g| (of.partition_point(|&v| v < g), of.partition_point(|&v| v <= g)))
}

/// The 2-D prefix sum of a (h + 1) x (w + 1) difference table: the h x w sums it stands for.
fn integrate(diff: &[f64], h: usize, w: usize) -> Vec<f64> {
    let w1 = w + 1;
    let mut out = vec![0f64; h * w];
    let mut above = vec![0f64; w];
    for y in 0..h {
        let mut run = 0f64;
        for x in 0..w {
            run += diff[y * w1 + x];
            above[x] += run;
            out[y * w + x] = above[x];
        }
    }
    out
}

fn explain(
    cx: &mut Cx,
    job: &ExplainJob,
    p: &DRiseParams,
    targets: &[Prediction],
    scores: &[f64],
) -> Result<Vec<TargetAttribution>, RuntimeError> {
    let spec = job.image_spec("D-RISE")?;
    let model = job.model.clone();
    let (h, w) = (spec.height, spec.width);
    let failed = |message: String| RuntimeError::Inference {
        model: model.name.clone(),
        message,
    };
    // The targets as detections of the unmasked input (the positions the targets resolved to);
    // a post-NMS detector's boxes and classes come from the pass that scored it.
    let scored = cx.scored();
    let others = |name: &str| scored.as_ref()?.get(name).map(Tensor::to_f64);
    let base = detection_targets::detections(&model, scores, &others)?;
    let chosen: Vec<Detection> = targets
        .iter()
        .map(|t| {
            base.iter()
                .find(|d| d.position == t.index)
                .cloned()
                .ok_or_else(|| failed(format!("no detection at position {} of the output", t.index)))
        })
        .collect::<Result<_, _>>()?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(job.seed);
    let x = job.input.as_f32().unwrap_or(&[]).to_vec();
    let black = baselines::build(Baseline::Black, &job.input, Some(spec), job.seed);
    let b = black.as_f32().unwrap_or(&[]).to_vec();
    let table = (h + 1) * (w + 1);
    let mut weighted = vec![vec![0f64; table]; chosen.len()];
    let mut weight_sums = vec![0f64; chosen.len()];
    let mut kept = vec![0f64; table];
    let n = x.len();
    let batch = cx.forward_rows();
    let outputs: Vec<String> = std::iter::once(model.spec.output.clone())
        .chain(model.spec.detection.iter().flat_map(|d| d.other_outputs()))
        .collect();
    let mut start = 0;
    while start < p.masks {
        let end = (start + batch).min(p.masks);
        let masks: Vec<Mask> = (start..end).map(|_| Mask::draw(&mut rng, p.grid, p.p, h, w)).collect();
        let mut data = super::zeroed_batch(&model.name, (end - start) * n)?;
        for (m, row) in masks.iter().zip(data.chunks_exact_mut(n)) {
            blend(spec, &m.pixels(), &x, &b, row);
        }
        let mut shape = job.input.shape.clone();
        shape[0] = end - start;
        let out = cx.forward_with(&model, &[], &Tensor::f32(shape, data))?;
        let rows: Vec<(&String, Vec<f64>, usize)> = outputs
            .iter()
            .map(|name| {
                let t = out
                    .get(name)
                    .ok_or_else(|| failed(format!("output `{name}` missing")))?;
                Ok((name, t.to_f64(), t.row_len()))
            })
            .collect::<Result<_, RuntimeError>>()?;
        for (r, m) in masks.iter().enumerate() {
            let found = detect::decode(&model.spec, |name| {
                let (_, values, len) = rows.iter().find(|(n, _, _)| *n == name)?;
                values.get(r * len..(r + 1) * len)
            })
            .map_err(failed)?;
            for ((target, sal), total) in chosen.iter().zip(&mut weighted).zip(&mut weight_sums) {
                let best = found.iter().map(|d| detect::similarity(target, d)).fold(0f64, f64::max);
                *total += best;
                if best > 0.0 {
                    m.add_to(sal, best);
                }
            }
            m.add_to(&mut kept, 1.0);
        }
        start = end;
    }
    let kept = integrate(&kept, h, w);
    let weighted: Vec<Vec<f64>> = weighted.iter().map(|d| integrate(d, h, w)).collect();
    let count = p.masks as f64;
    Ok(targets
        .iter()
        .zip(weighted)
        .zip(weight_sums)
        .map(|((t, sal), total)| {
            let mean = total / count;
            let values = sal
                .iter()
                .zip(&kept)
                .map(|(s, k)| ((s - mean * k) / count) as f32)
                .collect();
            TargetAttribution::from_map(t, Tensor::f32(vec![h, w], values), None, None)
        })
        .collect())
}

/// One masked row, `b + m * (x - b)` per element: `m` is the mask at image resolution
/// (row-major), laid over every channel in the row's layout.
fn blend(spec: &ImageSpec, m: &[f32], x: &[f32], b: &[f32], row: &mut [f32]) {
    match spec.layout {
        Layout::NCHW => {
            let plane = m.len();
            for ((out, xs), bs) in row
                .chunks_exact_mut(plane)
                .zip(x.chunks_exact(plane))
                .zip(b.chunks_exact(plane))
            {
                for (((o, xi), bi), mi) in out.iter_mut().zip(xs).zip(bs).zip(m) {
                    *o = bi + mi * (xi - bi);
                }
            }
        }
        Layout::NHWC => {
            let c = spec.channels;
            let pixels = row.chunks_exact_mut(c).zip(x.chunks_exact(c)).zip(b.chunks_exact(c));
            for (((out, xs), bs), mi) in pixels.zip(m) {
                for ((o, xi), bi) in out.iter_mut().zip(xs).zip(bs) {
                    *o = bi + mi * (xi - bi);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_are_binary_keep_about_p_and_are_seeded() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let m = Mask::draw(&mut rng, 16, 0.5, 64, 48).pixels();
        assert_eq!(m.len(), 64 * 48);
        assert!(m.iter().all(|v| *v == 0.0 || *v == 1.0));
        let share = m.iter().sum::<f32>() / m.len() as f32;
        assert!((0.3..0.7).contains(&share), "{share}");
        let mut again = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        assert_eq!(Mask::draw(&mut again, 16, 0.5, 64, 48).pixels(), m);
    }

    /// Summing cells' rectangles through the difference table equals summing the masks' pixels.
    #[test]
    fn cell_sums_equal_pixel_sums() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for (grid, h, w) in [(16, 64, 48), (16, 37, 53), (4, 9, 30), (16, 16, 16), (16, 8, 8)] {
            let (mut diff, mut direct) = (vec![0f64; (h + 1) * (w + 1)], vec![0f64; h * w]);
            for k in 0..20 {
                let m = Mask::draw(&mut rng, grid, 0.5, h, w);
                let weight = 0.25 + f64::from(k);
                m.add_to(&mut diff, weight);
                for (d, v) in direct.iter_mut().zip(m.pixels()) {
                    *d += weight * f64::from(v);
                }
            }
            for (a, b) in integrate(&diff, h, w).iter().zip(&direct) {
                assert!((a - b).abs() < 1e-9, "{grid} {h}x{w}: {a} against {b}");
            }
        }
    }
}
