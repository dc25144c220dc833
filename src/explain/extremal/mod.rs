//! Extremal perturbations (Fong, Patrick and Vedaldi, ICCV 2019), as TorchRay's
//! `extremal_perturbation` (preservation game, blur): for each area `a`, the smooth mask of that
//! area whose kept pixels (the rest blurred) keep the target's score highest. The mask is a
//! coarse grid of parameters, expanded by a smooth max of Gaussian bumps; the input is blurred in
//! `levels` steps and each pixel takes the level its mask value picks (linear between levels); the
//! area constraint is the squared distance of the sorted mask to a step vector with a share `a` of
//! ones, weighted 300 and growing 0.35% per iteration; SGD with momentum 0.9 (dampening 0.9) and
//! learning rate 0.01 ascends score minus penalty, the image flipped on even iterations (jitter).
//! Every iteration is one batched backward pass with one row per area.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::baselines::blurred;
use super::method::{
    bytes, check_range, mul, schemas_of, Capabilities, Cost, Inputs, Invalid, Method, NamedSchemas, Passes,
    PlanContext, MAX_SIDE,
};
use super::perturb::index;
use super::{one_hot, Cx, ExplainJob, TargetAttribution};
use crate::onnx::autodiff::RuleSet;
use crate::runtime::manifest::ImageSpec;
use crate::runtime::predict::Prediction;
use crate::runtime::{RuntimeError, Tensor};

mod mask;

use mask::MaskGrid;

const MOMENTUM: f32 = 0.9;
const LEARNING_RATE: f32 = 0.01;
const AREA_WEIGHT: f64 = 300.0;
const AREA_WEIGHT_GROWTH: f64 = 1.0035;

/// Extremal perturbation's `details`: each area's mask and the score it keeps.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtremalDetails {
    /// The target's score on the input.
    pub score: Option<f64>,
    /// The target's score on the fully blurred input.
    pub blurred_score: Option<f64>,
    /// One entry per requested area, in order.
    pub areas: Vec<AreaDetails>,
    /// Gradient steps run per mask.
    pub iterations: usize,
    /// Pixels between the mask's parameters.
    pub step: usize,
    /// Width of the mask's bumps in pixels.
    pub sigma: f32,
    /// Standard deviation of the strongest blur in pixels.
    pub max_blur: f32,
}

/// One area's mask.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AreaDetails {
    /// The share of the image the mask was asked to keep.
    pub area: f64,
    /// The share it keeps (the mask's mean).
    pub mask_area: f64,
    /// The target's score with only the mask's pixels kept.
    pub score: f64,
    /// The mask over the input's pixels, row by row.
    pub mask: Vec<f32>,
}

/// Extremal perturbation parameters.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ExtremalParams {
    /// Shares of the image each mask keeps, each strictly between 0 and 1 (at most 8).
    #[schema(default = json!([0.05, 0.1, 0.2]), min_items = 1, max_items = 8,
        extensions(("x-exclusiveMinimum" = json!(0.0)), ("x-exclusiveMaximum" = json!(1.0))))]
    pub areas: Vec<f64>,
    /// Gradient steps per mask (TorchRay's default is 800).
    #[schema(default = 300, minimum = 1, maximum = 2000)]
    pub iterations: usize,
    /// Pixels between the mask's parameters, at most the shorter side. Default: the shorter side / 32,
    /// at least 1 (7 on 224).
    #[schema(minimum = 1, extensions(("x-maximum" = json!(MAX_SIDE))))]
    pub step: Option<usize>,
    /// Width of the mask's bumps in pixels, at least 0.5, at most 4 x `step`. Default: 3 x `step`
    /// (21 on 224).
    #[schema(minimum = 0.5, extensions(("x-maximum" = json!(4 * MAX_SIDE))))]
    pub sigma: Option<f32>,
    /// Standard deviation of the strongest blur in pixels, from 0.5 to the shorter side. Default: the
    /// shorter side x 20 / 224.
    #[schema(minimum = 0.5, extensions(("x-maximum" = json!(MAX_SIDE))))]
    pub max_blur: Option<f32>,
    /// Blur levels between the input and the strongest blur.
    #[schema(default = 8, minimum = 2, maximum = 32)]
    pub levels: usize,
    /// Flip the image horizontally on even iterations (TorchRay's jitter): for models that treat a
    /// mirrored image alike (ImageNet classifiers roughly do); off for models that do not, whose
    /// masks it would smear across the mirror image.
    #[schema(default = true)]
    pub jitter: bool,
}

impl Default for ExtremalParams {
    fn default() -> Self {
        Self {
            areas: vec![0.05, 0.1, 0.2],
            iterations: 300,
            step: None,
            sigma: None,
            max_blur: None,
            levels: 8,
            jitter: true,
        }
    }
}

/// Extremal perturbations.
pub struct Extremal;

impl Method for Extremal {
    type Params = ExtremalParams;
    const NAME: &'static str = "extremal-perturbation";
    const SUMMARY: &'static str = "Smooth masks of given areas that keep the score highest (Fong et al. 2019)";
    const CAPABILITIES: Capabilities = Capabilities {
        passes: Passes::Gradients,
        inputs: Inputs::Image,
        layer: false,
        random: false,
        examples: false,
        decision: false,
        text: false,
        makes_image: false,
    };

    fn details_schema() -> Option<NamedSchemas> {
        Some(schemas_of::<ExtremalDetails>())
    }

    fn plan(p: &mut ExtremalParams, cx: &PlanContext) -> Result<Cost, Invalid> {
        let Some(spec) = cx.model.spec.image.as_ref() else {
            return Err(Invalid::Model("extremal-perturbation explains image models".into()));
        };
        let side = spec.height.min(spec.width).max(1);
        check_range("areas (count)", p.areas.len(), 1, 8)?;
        if let Some(a) = p.areas.iter().find(|a| !(**a > 0.0 && **a < 1.0)) {
            return Err(Invalid::Request(format!(
                "params.areas must lie strictly between 0 and 1, got {a}"
            )));
        }
        check_range("iterations", p.iterations, 1, 2000)?;
        check_range("levels", p.levels, 2, 32)?;
        let step = p.step.unwrap_or((side / 32).max(1));
        check_range("step", step, 1, side.min(MAX_SIDE))?;
        let sigma = p.sigma.unwrap_or(3.0 * step as f32);
        if !sigma.is_finite() {
            return Err(Invalid::Request("params.sigma must be a finite number".into()));
        }
        check_range("sigma", sigma, 0.5, 4.0 * step as f32)?;
        let max_blur = p.max_blur.unwrap_or((side as f32 * 20.0 / 224.0).max(0.5));
        if !max_blur.is_finite() {
            return Err(Invalid::Request("params.max_blur must be a finite number".into()));
        }
        check_range("max_blur", max_blur, 0.5, side.min(MAX_SIDE) as f32)?;
        (p.step, p.sigma, p.max_blur) = (Some(step), Some(sigma), Some(max_blur));
        let areas = p.areas.len();
        let rows = mul(
            mul(p.iterations, areas, "iterations x areas")?,
            cx.targets,
            "iterations x areas x targets",
        )?;
        check_range("iterations x areas x targets", rows, 1, cx.limits.max_samples)?;
        let grid = MaskGrid::new(spec.height, spec.width, step, sigma);
        // The blur pyramid, the batch and its gradients, per area the mask's parameters, momentum
        // and full mask, and the maps kept for the answer.
        let window = grid.window() * grid.window();
        let per_area = bytes(grid.params(), 8)
            .saturating_add(bytes(grid.cells(), 12))
            .saturating_add(bytes(grid.cells(), 4).saturating_mul(window as u64));
        Ok(Cost {
            samples: rows,
            rows: rows.saturating_add((areas + 1).saturating_mul(cx.targets)),
            bytes: bytes(cx.input_len(), 4)
                .saturating_mul(p.levels as u64)
                .saturating_add(cx.batch_bytes(areas, true))
                .saturating_add(per_area.saturating_mul(areas as u64))
                .saturating_add(bytes(cx.pixels(), 4).saturating_mul((areas * cx.targets) as u64))
                .saturating_add(cx.answer_bytes()),
        })
    }

    fn explain(
        cx: &mut Cx,
        job: &ExplainJob,
        p: &ExtremalParams,
        targets: &[Prediction],
        scores: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError> {
        let spec = job.image_spec(Self::NAME)?.clone();
        let x = job.input.as_f32().unwrap_or(&[]);
        let levels = p.levels;
        let max_blur = p.max_blur.unwrap_or(1.0);
        // Level 0 is the strongest blur, the last the input itself.
        let pyramid: Vec<Vec<f32>> = (0..levels)
            .map(|l| blurred(x, &spec, (1.0 - l as f32 / (levels - 1) as f32) * max_blur))
            .collect();
        let grid = MaskGrid::new(spec.height, spec.width, p.step.unwrap_or(1), p.sigma.unwrap_or(3.0));
        let width = scores.len().max(1);
        let mut out = Vec::with_capacity(targets.len());
        for t in targets {
            let masks = optimise(cx, job, p, &spec, &pyramid, &grid, t.index)?;
            // The score each final mask keeps, without jitter, and the fully blurred image's.
            let mut batch = Vec::with_capacity((masks.len() + 1) * x.len());
            for m in &masks {
                batch.extend(perturb(&spec, &pyramid, m).0);
            }
            batch.extend_from_slice(&pyramid[0]);
            let mut shape = job.input.shape.clone();
            shape[0] = masks.len() + 1;
            let kept = cx.forward(&Tensor::f32(shape, batch))?.to_f64();
            let classes = kept.len() / (masks.len() + 1);
            let mut map = vec![0f32; spec.height * spec.width];
            let mut per_area = Vec::with_capacity(masks.len());
            for (k, (m, area)) in masks.iter().zip(&p.areas).enumerate() {
                for (acc, v) in map.iter_mut().zip(m) {
                    *acc += v;
                }
                per_area.push(AreaDetails {
                    area: *area,
                    mask_area: m.iter().map(|v| f64::from(*v)).sum::<f64>() / m.len().max(1) as f64,
                    score: kept.get(k * classes + t.index).copied().unwrap_or(f64::NAN),
                    mask: m.clone(),
                });
            }
            let details = ExtremalDetails {
                score: scores.get(t.index.min(width - 1)).copied(),
                blurred_score: kept.get(masks.len() * classes + t.index).copied(),
                areas: per_area,
                iterations: p.iterations,
                step: grid.step,
                sigma: grid.sigma,
                max_blur,
            };
            let map = Tensor::f32(vec![spec.height, spec.width], map);
            out.push(TargetAttribution::from_map(
                t,
                map,
                None,
                serde_json::to_value(details).ok(),
            ));
        }
        Ok(out)
    }
}

/// Runs the optimisation for target `class`: one mask per area, over the model's input pixels.
#[allow(clippy::too_many_arguments)] // the job, its parameters, the image's geometry, pyramid and grid, the class
fn optimise(
    cx: &mut Cx,
    job: &ExplainJob,
    p: &ExtremalParams,
    spec: &ImageSpec,
    pyramid: &[Vec<f32>],
    grid: &MaskGrid,
    class: usize,
) -> Result<Vec<Vec<f32>>, RuntimeError> {
    let areas = p.areas.len();
    let (h, w) = (spec.height, spec.width);
    let cells = grid.cells();
    let references = area_references(&p.areas, cells);
    let mut states: Vec<AreaState> = references
        .into_iter()
        .map(|reference| AreaState {
            params: vec![1f32; grid.params()],
            momentum: None,
            reference,
            full: mask::FullMask::default(),
            slope: None,
        })
        .collect();
    let classes = crate::common::detection_targets::width(&job.model);
    let weights = one_hot(&vec![class; areas], classes);
    let mut area_weight = AREA_WEIGHT;
    // Threads only for masks whose making outweighs starting a thread and waiting for a core
    // (on a loaded machine, milliseconds): 224x224 at the defaults is 5.5 million bump weights a
    // mask, 28x28 a hundred thousand.
    let spread = grid.cells().saturating_mul(grid.window() * grid.window()) >= SPREAD_MIN_WEIGHTS;
    for iteration in 0..p.iterations {
        let flip = p.jitter && iteration % 2 == 0;
        // Each area's mask and perturbed input, the areas on threads of their own: between two
        // passes this is the only work, and on one thread it took longer than the pass.
        let rows = each_area(&mut states, spread, |_, a| {
            grid.generate_into(&a.params, &mut a.full);
            let mask = grid.crop(&a.full.clamped, h, w);
            let (mut x, slope) = perturb(spec, pyramid, &mask);
            if flip {
                flip_horizontally(spec, &mut x);
            }
            a.slope = Some(slope);
            x
        });
        let mut shape = job.input.shape.clone();
        shape[0] = areas;
        let pass = cx.gradients(&[], RuleSet::Exact, &Tensor::f32(shape, rows.concat()), &weights, areas)?;
        let grads = pass.input_grad.as_f32().unwrap_or(&[]);
        let row = grads.len() / areas.max(1);
        let weight = area_weight;
        each_area(&mut states, spread, |k, a| {
            let Some(slope) = a.slope.take() else { return };
            let mut g = grads[k * row..(k + 1) * row].to_vec();
            if flip {
                flip_horizontally(spec, &mut g);
            }
            let mut d_full = grid.uncrop(&mask_gradient(spec, &g, &slope), h, w);
            area_gradient(&a.full.clamped, &a.reference, weight, &mut d_full);
            let d_params = grid.backward(&a.params, &a.full, &d_full);
            ascend(&mut a.params, &mut a.momentum, &d_params);
        });
        area_weight *= AREA_WEIGHT_GROWTH;
    }
    Ok(each_area(&mut states, spread, |_, a| {
        grid.crop(&grid.generate(&a.params).clamped, h, w)
    }))
}

/// One area's optimisation: its mask's parameters and momentum, the sorted mask its area
/// penalty pulls towards, the generated mask (its buffers reused every iteration) and, between
/// the two halves of an iteration, the perturbed input's slope.
struct AreaState {
    params: Vec<f32>,
    momentum: Option<Vec<f32>>,
    reference: Vec<f32>,
    full: mask::FullMask,
    slope: Option<Vec<f32>>,
}

/// Bump weights a mask needs (pixels with margin x window) before its areas get threads.
const SPREAD_MIN_WEIGHTS: usize = 1 << 20;

/// `f(area index, state)` on each area, with `spread` the areas spread over the machine's cores
/// (the first share on this thread); the results in the areas' order.
fn each_area<T: Send>(states: &mut [AreaState], spread: bool, f: impl Fn(usize, &mut AreaState) -> T + Sync) -> Vec<T> {
    let cores = match spread {
        true => std::thread::available_parallelism().map_or(1, usize::from),
        false => 1,
    };
    let per = states.len().div_ceil(cores).max(1);
    let run = |first: usize, states: &mut [AreaState]| -> Vec<T> {
        states.iter_mut().enumerate().map(|(i, a)| f(first + i, a)).collect()
    };
    if per >= states.len() {
        return run(0, states);
    }
    std::thread::scope(|scope| {
        let mut parts = states.chunks_mut(per).enumerate();
        let here = parts.next();
        let others: Vec<_> = parts
            .map(|(i, part)| {
                let run = &run;
                scope.spawn(move || run(i * per, part))
            })
            .collect();
        let mut out = here.map(|(_, part)| run(0, part)).unwrap_or_default();
        for handle in others {
            // A panic on an area's thread is the job's panic, as it would be on this one.
            out.extend(handle.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
        out
    })
}

/// Per area `a`, the step vector sorted masks are pulled towards: (1 - a) zeros then a ones.
fn area_references(areas: &[f64], cells: usize) -> Vec<Vec<f32>> {
    areas
        .iter()
        .map(|a| {
            let zeros = (cells as f64 * (1.0 - *a)) as usize;
            (0..cells).map(|i| if i < zeros { 0.0 } else { 1.0 }).collect()
        })
        .collect()
}

/// d score / d mask, per pixel: the input gradient `g` along the blur levels (`slope`), summed
/// over channels.
fn mask_gradient(spec: &ImageSpec, g: &[f32], slope: &[f32]) -> Vec<f32> {
    let (h, w) = (spec.height, spec.width);
    let mut d_mask = vec![0f32; h * w];
    for y in 0..h {
        for x in 0..w {
            d_mask[y * w + x] = (0..spec.channels)
                .map(|c| {
                    let i = index(spec, c, y, x);
                    g[i] * slope[i]
                })
                .sum();
        }
    }
    d_mask
}

/// One SGD step with momentum (dampening as TorchRay's) that ascends the energy: the loss's
/// gradient is its negative. Parameters stay in [0, 1].
fn ascend(params: &mut [f32], momentum: &mut Option<Vec<f32>>, d_params: &[f32]) {
    let step: Vec<f32> = d_params.iter().map(|g| -g).collect();
    let buf = match momentum.take() {
        None => step,
        Some(b) => b
            .iter()
            .zip(&step)
            .map(|(b, g)| MOMENTUM * b + (1.0 - MOMENTUM) * g)
            .collect(),
    };
    for (p, b) in params.iter_mut().zip(&buf) {
        *p = (*p - LEARNING_RATE * b).clamp(0.0, 1.0);
    }
    *momentum = Some(buf);
}

/// Adds the area penalty's gradient, `-weight * mean((sort(m) - reference)^2)`, to `d_full`.
fn area_gradient(mask: &[f32], reference: &[f32], weight: f64, d_full: &mut [f32]) {
    // The order of a stable sort by value, as one unstable sort of (value, index) keys: a mask
    // value lies in [0, 1], where a float's bits order as the float does (`+ 0.0` makes -0 +0).
    // An indirect comparison sort took milliseconds of each iteration on 224 x 224.
    let mut order: Vec<u64> = mask
        .iter()
        .enumerate()
        .map(|(i, v)| (u64::from((v.clamp(0.0, 1.0) + 0.0).to_bits()) << 32) | i as u64)
        .collect();
    order.sort_unstable();
    let n = mask.len().max(1) as f64;
    for (rank, key) in order.iter().enumerate() {
        let i = (*key & u64::from(u32::MAX)) as usize;
        let diff = f64::from(mask[i] - reference[rank]);
        d_full[i] += (-2.0 * weight * diff / n) as f32;
    }
}

/// The input with each pixel at the blur level its mask value picks (1 keeps the input, 0 takes
/// the strongest blur), and the derivative of each value with respect to its pixel's mask value.
fn perturb(spec: &ImageSpec, pyramid: &[Vec<f32>], mask: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let levels = pyramid.len();
    let top = (levels - 1) as f32;
    let n = pyramid[0].len();
    let (mut out, mut slope) = (vec![0f32; n], vec![0f32; n]);
    for y in 0..spec.height {
        for x in 0..spec.width {
            let level = mask[y * spec.width + x].clamp(0.0, 1.0) * top;
            let low = (level.floor() as usize).min(levels - 1);
            let high = (low + 1).min(levels - 1);
            let frac = level - low as f32;
            for c in 0..spec.channels {
                let i = index(spec, c, y, x);
                let (a, b) = (pyramid[low][i], pyramid[high][i]);
                out[i] = (1.0 - frac) * a + frac * b;
                slope[i] = top * (b - a);
            }
        }
    }
    (out, slope)
}

fn flip_horizontally(spec: &ImageSpec, values: &mut [f32]) {
    for c in 0..spec.channels {
        for y in 0..spec.height {
            for x in 0..spec.width / 2 {
                let (a, b) = (index(spec, c, y, x), index(spec, c, y, spec.width - 1 - x));
                values.swap(a, b);
            }
        }
    }
}
