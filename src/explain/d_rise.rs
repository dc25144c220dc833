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

use std::collections::HashMap;

use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::baselines::{self, Baseline};
use super::method::{bytes, check_range, Capabilities, Cost, Inputs, Invalid, Method, Passes, PlanContext, MAX_SIDE};
use super::{Cx, ExplainJob, TargetAttribution};
use crate::common::detection_targets;
use crate::runtime::detect::{self, Detection, Row};
use crate::runtime::manifest::{ImageSpec, Layout};
use crate::runtime::predict::Prediction;
use crate::runtime::tensor::TensorData;
use crate::runtime::{LoadedModel, RuntimeError, Tensor};

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
        // Two batches of masked inputs (one runs while the other is filled), two batches' outputs,
        // the sums.
        let outputs = bytes(cx.classes(), 8).saturating_mul(batch as u64);
        Ok(Cost {
            samples: p.masks,
            rows: p.masks,
            bytes: cx
                .batch_bytes(batch, false)
                .saturating_mul(2)
                .saturating_add(outputs.saturating_mul(2))
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
/// at a random offset in [0, cell]. Kept as its cells and, for each grid row and column, the image
/// rows and columns it covers: the masked image is copied run by run from the input or the
/// baseline, and the map is summed cell by cell rather than pixel by pixel.
struct Mask {
    grid: usize,
    cells: Vec<bool>,
    /// The grid row (column) of each image row (column).
    rows: Vec<usize>,
    cols: Vec<usize>,
    /// Per grid row and column, the half-open range of image rows (columns) it covers.
    row_runs: Vec<(usize, usize)>,
    col_runs: Vec<(usize, usize)>,
}

impl Mask {
    fn draw(rng: &mut rand_chacha::ChaCha8Rng, grid: usize, p: f32, h: usize, w: usize) -> Self {
        let cells: Vec<bool> = (0..grid * grid).map(|_| rng.random::<f32>() < p).collect();
        let pad = (h / grid).max(w / grid);
        let (up_h, up_w) = (h + pad, w + pad);
        let (dy, dx) = (rng.random_range(0..=pad), rng.random_range(0..=pad));
        let cell = |at: usize, up: usize| (at * grid / up).min(grid - 1);
        let rows: Vec<usize> = (0..h).map(|y| cell(y + dy, up_h)).collect();
        let cols: Vec<usize> = (0..w).map(|x| cell(x + dx, up_w)).collect();
        Mask {
            grid,
            cells,
            row_runs: runs(&rows, grid),
            col_runs: runs(&cols, grid),
            rows,
            cols,
        }
    }

    /// For each grid row, the runs of image columns `(x0, x1, kept)` it makes, adjacent cells of
    /// the same state merged: what one image row of that grid row copies.
    fn segments(&self) -> Vec<Vec<(usize, usize, bool)>> {
        (0..self.grid)
            .map(|gy| {
                let mut out: Vec<(usize, usize, bool)> = Vec::with_capacity(self.grid);
                for (gx, &(x0, x1)) in self.col_runs.iter().enumerate() {
                    let on = self.cells[gy * self.grid + gx];
                    match out.last_mut() {
                        _ if x0 == x1 => {}
                        Some(last) if last.2 == on => last.1 = x1,
                        _ => out.push((x0, x1, on)),
                    }
                }
                out
            })
            .collect()
    }

    /// The mask at image resolution, row-major, 0 or 1, pixel by pixel (the tests' reference).
    #[cfg(test)]
    fn pixels(&self) -> Vec<f32> {
        let cell = |y: usize, x: usize| self.cells[self.rows[y] * self.grid + self.cols[x]];
        (0..self.rows.len())
            .flat_map(|y| (0..self.cols.len()).map(move |x| f32::from(u8::from(cell(y, x)))))
            .collect()
    }

    /// Adds `weight` over every kept cell's rectangle into `diff`, a (h + 1) x (w + 1) table of
    /// differences whose 2-D prefix sum ([`integrate`]) is the weighted masks' sum: four entries a
    /// cell rather than one a pixel.
    fn add_to(&self, diff: &mut [f64], weight: f64) {
        let w1 = self.cols.len() + 1;
        for (gy, &(y0, y1)) in self.row_runs.iter().enumerate() {
            for (gx, &(x0, x1)) in self.col_runs.iter().enumerate() {
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
fn runs(of: &[usize], grid: usize) -> Vec<(usize, usize)> {
    (0..grid)
        .map(|g| (of.partition_point(|&v| v < g), of.partition_point(|&v| v <= g)))
        .collect()
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

/// What the masks add up to: per target the weighted masks' difference table and the weights'
/// sum, and the masks' own (unweighted) table.
struct Sums {
    weighted: Vec<Vec<f64>>,
    weight_sums: Vec<f64>,
    kept: Vec<f64>,
}

impl Sums {
    /// Weighs each mask of a pass by its masked image's best match to each target: the outputs
    /// are read in place, row by row (an output not of f32, a post-NMS detector's classes, is
    /// widened once).
    fn add(
        &mut self,
        model: &LoadedModel,
        chosen: &[Detection],
        masks: &[Mask],
        out: &HashMap<String, Tensor>,
    ) -> Result<(), RuntimeError> {
        let failed = |message: String| RuntimeError::Inference {
            model: model.name.clone(),
            message,
        };
        let widened: HashMap<&str, Vec<f64>> = out
            .iter()
            .filter(|(_, t)| t.as_f32().is_none())
            .map(|(name, t)| (name.as_str(), t.to_f64()))
            .collect();
        for (r, m) in masks.iter().enumerate() {
            let decoded = detect::decode_in_place(&model.spec, |name| {
                let t = out.get(name)?;
                let len = t.row_len();
                match t.as_f32() {
                    Some(v) => v.get(r * len..(r + 1) * len).map(Row::F32),
                    None => widened.get(name)?.get(r * len..(r + 1) * len).map(Row::F64),
                }
            })
            .map_err(failed)?;
            for ((target, sal), total) in chosen.iter().zip(&mut self.weighted).zip(&mut self.weight_sums) {
                let best = decoded.best_similarity(target);
                *total += best;
                if best > 0.0 {
                    m.add_to(sal, best);
                }
            }
            m.add_to(&mut self.kept, 1.0);
        }
        Ok(())
    }
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
    let x = job.input.as_f32().unwrap_or(&[]);
    let black = baselines::build(Baseline::Black, &job.input, Some(spec), job.seed);
    let b = black.as_f32().unwrap_or(&[]);
    let n = x.len();
    if b.len() != n || n != h * w * spec.channels {
        return Err(failed(format!(
            "the input holds {n} values, not {h} x {w} x {}",
            spec.channels
        )));
    }
    let table = (h + 1) * (w + 1);
    let mut sums = Sums {
        weighted: vec![vec![0f64; table]; chosen.len()],
        weight_sums: vec![0f64; chosen.len()],
        kept: vec![0f64; table],
    };
    let batch = cx.forward_rows().clamp(1, p.masks);
    let mut draw =
        |count: usize| -> Vec<Mask> { (0..count).map(|_| Mask::draw(&mut rng, p.grid, p.p, h, w)).collect() };
    // Two batch buffers, made once: while ONNX Runtime runs one batch, a scoped thread fills the
    // next batch's masked images into the other (over the batch before's, writing only what
    // changes) and weighs the previous batch's masks by its detections. Masks are drawn and
    // weighed in order, so a seed gives the same bytes.
    let mut current = draw(batch);
    let mut running = super::zeroed_batch(&model.name, batch * n)?;
    let sources = Sources::new(spec, x, b);
    fill(&sources, &current, None, &mut running);
    let mut filling = super::zeroed_batch(&model.name, batch.min(p.masks - batch) * n)?;
    let mut previous: Option<(Vec<Mask>, HashMap<String, Tensor>)> = None;
    let mut done = 0;
    while done < p.masks {
        let rows = current.len();
        let next = draw(batch.min(p.masks - done - rows));
        filling.truncate(next.len() * n);
        let mut shape = job.input.shape.clone();
        shape[0] = rows;
        let input = Tensor::f32(shape, std::mem::take(&mut running));
        let (out, helped) = std::thread::scope(|s| {
            let helper = s.spawn(|| {
                // The buffer being filled holds the previous batch's rows.
                let before = previous.as_ref().map(|(masks, _)| masks.as_slice());
                fill(&sources, &next, before, &mut filling);
                match previous.take() {
                    Some((masks, out)) => sums.add(&model, &chosen, &masks, &out),
                    None => Ok(()),
                }
            });
            let out = cx.forward_with(&model, &[], &input);
            (out, helper.join())
        });
        helped.unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        let out = out?;
        // The buffer just run is the one filled next.
        let used = match input.data {
            TensorData::F32(v) => v,
            _ => Vec::new(),
        };
        running = std::mem::replace(&mut filling, used);
        previous = Some((std::mem::replace(&mut current, next), out));
        done += rows;
    }
    if let Some((masks, out)) = previous.take() {
        sums.add(&model, &chosen, &masks, &out)?;
    }
    let kept = integrate(&sums.kept, h, w);
    let count = p.masks as f64;
    Ok(targets
        .iter()
        .zip(&sums.weighted)
        .zip(&sums.weight_sums)
        .map(|((t, sal), total)| {
            let mean = total / count;
            let values = integrate(sal, h, w)
                .iter()
                .zip(&kept)
                .map(|(s, k)| ((s - mean * k) / count) as f32)
                .collect();
            TargetAttribution::from_map(t, Tensor::f32(vec![h, w], values), None, None)
        })
        .collect())
}

/// What a masked row is made of: the input, the baseline, and per plane of the row's layout the
/// baseline's one value where it has one (black's, a value a channel): that plane is then set
/// rather than copied.
struct Sources<'a> {
    spec: &'a ImageSpec,
    x: &'a [f32],
    b: &'a [f32],
    /// Values a plane: NCHW one plane a channel (a pixel one value), NHWC one plane (a pixel
    /// `channels` values).
    plane: usize,
    unit: usize,
    constant: Vec<Option<f32>>,
}

impl<'a> Sources<'a> {
    /// `x` and `b` hold one row each (as many values, a multiple of the planes).
    fn new(spec: &'a ImageSpec, x: &'a [f32], b: &'a [f32]) -> Self {
        let (planes, unit) = match spec.layout {
            Layout::NCHW => (spec.channels.max(1), 1),
            Layout::NHWC => (1, spec.channels.max(1)),
        };
        let plane = (x.len() / planes).max(1);
        // Bit for bit, so that setting a plane writes what copying it would.
        let constant = b
            .chunks_exact(plane)
            .map(|bs| {
                let first = bs.first().copied().unwrap_or(0.0);
                (unit == 1 && bs.iter().all(|v| v.to_bits() == first.to_bits())).then_some(first)
            })
            .collect();
        Sources {
            spec,
            x,
            b,
            plane,
            unit,
            constant,
        }
    }
}

/// Fills one masked row per mask into `rows`: the input where the mask keeps a cell, the baseline
/// where it hides it (what `b + m * (x - b)` is for a 0 / 1 mask, without the arithmetic), over
/// every channel in the row's layout. `before`, where given, are the masks whose rows `rows`
/// already holds, slot by slot: only the runs whose source changes are written (about half of
/// them at p = 1/2), and a constant baseline plane is set rather than copied, so the bytes moved
/// are a fraction of the rows'. The rows come out the same either way.
fn fill(src: &Sources, masks: &[Mask], before: Option<&[Mask]>, rows: &mut [f32]) {
    let (plane, unit) = (src.plane, src.unit);
    let line = src.spec.width * unit;
    let len = src.x.len().max(1);
    for (i, (m, row)) in masks.iter().zip(rows.chunks_exact_mut(len)).enumerate() {
        let bands = changes(m, before.and_then(|o| o.get(i)));
        let planes = row
            .chunks_exact_mut(plane)
            .zip(src.x.chunks_exact(plane))
            .zip(src.b.chunks_exact(plane))
            .zip(&src.constant);
        for (((out, xs), bs), constant) in planes {
            for (y0, y1, runs) in &bands {
                for y in *y0..*y1 {
                    for &(x0, x1, on) in runs {
                        let (start, end) = (y * line + x0 * unit, y * line + x1 * unit);
                        match (on, constant) {
                            (true, _) => out[start..end].copy_from_slice(&xs[start..end]),
                            (false, Some(v)) => out[start..end].fill(*v),
                            (false, None) => out[start..end].copy_from_slice(&bs[start..end]),
                        }
                    }
                }
            }
        }
    }
}

/// Image rows `y0..y1` that all write the same column runs `(x0, x1, kept)`.
type Band = (usize, usize, Vec<(usize, usize, bool)>);

/// What filling `m` over a row that holds `old`'s masked image writes: bands of image rows
/// `(y0, y1, runs)` whose rows all write the same column runs `(x0, x1, kept)` — every run of
/// `m` where there is no `old`, else only the runs where `m` and `old` take different sources.
fn changes(m: &Mask, old: Option<&Mask>) -> Vec<Band> {
    let new = m.segments();
    let old = old.map(|o| (o, o.segments()));
    let mut bands: Vec<Band> = Vec::new();
    let mut last = None;
    for (y, &gy) in m.rows.iter().enumerate() {
        // Rows of the same grid row in both masks write the same runs.
        let key = (gy, old.as_ref().and_then(|(o, _)| o.rows.get(y).copied()));
        match bands.last_mut() {
            Some(band) if last == Some(key) => band.1 = y + 1,
            _ => {
                let runs = match (&old, key.1) {
                    (Some((_, segments)), Some(oy)) => differing(&new[gy], &segments[oy]),
                    _ => new[gy].clone(),
                };
                bands.push((y, y + 1, runs));
                last = Some(key);
            }
        }
    }
    bands
}

/// The column runs where two rows' segments (each covering the same columns, in order) differ in
/// whether the cell is kept, with the state of `new`; adjacent runs merged.
fn differing(new: &[(usize, usize, bool)], old: &[(usize, usize, bool)]) -> Vec<(usize, usize, bool)> {
    let mut out: Vec<(usize, usize, bool)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while let (Some(&(a0, a1, on)), Some(&(b0, b1, was))) = (new.get(i), old.get(j)) {
        let (start, end) = (a0.max(b0), a1.min(b1));
        if start < end && on != was {
            match out.last_mut() {
                Some(last) if last.1 == start && last.2 == on => last.1 = end,
                _ => out.push((start, end, on)),
            }
        }
        // Step past whichever segment ends first (both when they end together).
        if a1 <= b1 {
            i += 1;
        }
        if b1 <= a1 {
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::manifest::{ColorOrder, Fit, ResizeFilter};

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

    /// The masked rows copied run by run equal `b + m * (x - b)` pixel by pixel, in either layout,
    /// with a varying baseline and a black one (a value a channel); filled anew and over rows that
    /// hold other masks' images (only the changed runs written), a batch short of the rows before.
    #[test]
    fn filled_rows_blend_the_input_and_the_baseline_by_the_mask() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let cases = [
            (16, 37, 53, 3),
            (4, 9, 30, 1),
            (16, 8, 8, 2),
            (16, 64, 48, 3),
            (2, 5, 7, 3),
        ];
        for ((grid, h, w, c), black) in cases.into_iter().flat_map(|case| [(case, false), (case, true)]) {
            let draw = |rng: &mut rand_chacha::ChaCha8Rng, k: usize| -> Vec<Mask> {
                (0..k).map(|_| Mask::draw(rng, grid, 0.5, h, w)).collect()
            };
            let batches = [draw(&mut rng, 3), draw(&mut rng, 3), draw(&mut rng, 2)];
            let x: Vec<f32> = (0..h * w * c).map(|i| 1.0 + i as f32).collect();
            let b: Vec<f32> = (0..h * w * c)
                .map(|i| {
                    if black {
                        -0.5 - (i / (h * w)) as f32
                    } else {
                        -(i as f32) / 7.0
                    }
                })
                .collect();
            for layout in [Layout::NCHW, Layout::NHWC] {
                let spec = ImageSpec {
                    layout,
                    width: w,
                    height: h,
                    channels: c,
                    color: ColorOrder::Rgb,
                    resize: ResizeFilter::Nearest,
                    fit: Fit::Stretch,
                    pad: 0,
                    scale: 1.0,
                    mean: vec![0.0; c],
                    std: vec![1.0; c],
                };
                let mut rows = vec![f32::NAN; 3 * x.len()];
                let mut before: Option<&[Mask]> = None;
                for (k, masks) in batches.iter().enumerate() {
                    rows.truncate(masks.len() * x.len());
                    fill(&Sources::new(&spec, &x, &b), masks, before, &mut rows);
                    for (m, row) in masks.iter().zip(rows.chunks_exact(x.len())) {
                        let pixels = m.pixels();
                        for (i, v) in row.iter().enumerate() {
                            let pixel = match layout {
                                Layout::NCHW => i % (h * w),
                                Layout::NHWC => i / c,
                            };
                            let want = if pixels[pixel] == 1.0 { x[i] } else { b[i] };
                            assert_eq!(
                                *v, want,
                                "{layout:?} {grid} {h}x{w}x{c} black {black}, batch {k} at {i}"
                            );
                        }
                    }
                    before = Some(masks);
                }
            }
        }
    }

    /// Filled over another mask's image, a row writes exactly the pixels where the two masks differ.
    #[test]
    fn a_refill_writes_only_the_changed_pixels() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for (grid, h, w) in [(16, 64, 48), (16, 37, 53), (4, 9, 30), (2, 5, 7)] {
            for _ in 0..10 {
                let (old, new) = (
                    Mask::draw(&mut rng, grid, 0.5, h, w),
                    Mask::draw(&mut rng, grid, 0.5, h, w),
                );
                let (was, now) = (old.pixels(), new.pixels());
                let mut written = vec![None; h * w];
                for (y0, y1, runs) in changes(&new, Some(&old)) {
                    for y in y0..y1 {
                        for &(x0, x1, on) in &runs {
                            for at in &mut written[y * w + x0..y * w + x1] {
                                assert!(at.is_none(), "{grid} {h}x{w}: a pixel written twice");
                                *at = Some(on);
                            }
                        }
                    }
                }
                for (i, at) in written.iter().enumerate() {
                    let want = (was[i] != now[i]).then_some(now[i] == 1.0);
                    assert_eq!(*at, want, "{grid} {h}x{w} at {i}");
                }
            }
        }
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
