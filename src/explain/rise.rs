//! RISE (Petsiuk et al. 2018): random low-resolution binary masks, upsampled bilinearly with a random
//! shift, applied to the image; each pixel's saliency is the target score averaged over the masks
//! that keep it. Seeded: the same seed gives the same masks. By default the grids and shifts come
//! from Owen-scrambled Sobol points, in 4 independently scrambled replicates whose spread gives each
//! pixel's standard error (half the rows of independent masks for the same map correlation, see the
//! README's passes to quality). With `sequence: "random"` (independent draws) or `"halton"` and `p` =
//! 0.5 the masks come in antithetic pairs (a grid and its complement, the same shift); the standard
//! error comes from the pairs' (or Halton's 8 replicates') spread. `masks: "auto"` draws masks in
//! doubling rounds until every pixel's standard error is below `tolerance` (score units, as
//! KernelSHAP's).

use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::baselines::{self, Baseline};
use super::kernel_shap::{samples_schema, Samples};
use super::method::{bytes, check_range, Capabilities, Cost, Inputs, Invalid, Method, Passes, PlanContext, MAX_SIDE};
use super::method::{schemas_of, NamedSchemas};
use super::perturb::{index, run_copies, Preset};
use super::sampling::{error_summary, Halton, MeanError, Sobol};
use super::{Cx, ExplainJob, TargetAttribution};
use crate::runtime::predict::Prediction;
use crate::runtime::{RuntimeError, Tensor};

/// RISE parameters.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RiseParams {
    /// Number of masks (default from the preset), or `"auto"`.
    #[schema(schema_with = masks_schema)]
    pub masks: Option<Samples>,
    /// With `masks: "auto"`: the largest standard error accepted, in score units.
    #[schema(default = 0.01, exclusive_minimum = 0.0, maximum = 1.0)]
    pub tolerance: f64,
    /// With `p` = 0.5 and `sequence` `random` or `halton`: masks in complementary pairs (a grid and
    /// its complement, the same shift), the same expectation with less variance. Sobol points
    /// already keep each cell in exactly half of every aligned run of 2^k masks; pairs on top of
    /// them measured worse (more rows for the same quality), so `sobol` ignores this.
    #[schema(default = true)]
    pub antithetic: bool,
    /// Side of the low-resolution mask grid, at most the input's side.
    #[schema(default = 7, minimum = 2, extensions(("x-maximum" = json!(MAX_SIDE))))]
    pub cell_size: usize,
    /// Probability that a grid cell is kept, strictly between 0 and 1.
    #[schema(default = 0.5, exclusive_minimum = 0.0, exclusive_maximum = 1.0)]
    pub p: f32,
    /// Trade-off between passes and noise.
    #[schema(default = "balanced")]
    pub preset: Preset,
    /// How the masks' scores become a map: `centered` (each score minus their mean, which removes
    /// the mean score's mask noise; the default) or `paper` (sum of score x mask / (masks x p)).
    #[schema(default = "centered")]
    pub estimator: RiseEstimator,
    /// Where the grids and shifts come from: `sobol` (Owen-scrambled Sobol points: at `p` 0.5 every
    /// aligned run of 2^k masks keeps each cell in exactly half of them, and each pair of cells in a
    /// quarter once k is large enough; the default), `random` (independent draws, the paper's) or `halton`
    /// (scrambled Halton points, which keep each cell about as often as `p` says in every prefix of
    /// the masks; `cell_size` at most 32).
    #[schema(default = "sobol")]
    pub sequence: RiseSequence,
}

/// Where RISE's grids and shifts come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RiseSequence {
    /// Independent draws.
    Random,
    /// Scrambled Halton points, one dimension per grid cell and two for the shift.
    Halton,
    /// Owen-scrambled Sobol points, one dimension per grid cell and two for the shift.
    #[default]
    Sobol,
}

impl RiseSequence {
    /// Independently scrambled replicates: unit i (a mask or a pair) is point i / R of replicate
    /// i % R, and the replicates' maps spread as the map's error. Sobol's base-2 balance needs
    /// runs of 2^k points per replicate, so it takes fewer, longer replicates (the error's
    /// estimate, averaged over pixels, stays steady with 4).
    fn replicates(self) -> usize {
        match self {
            RiseSequence::Random => 0,
            RiseSequence::Halton => 8,
            RiseSequence::Sobol => 4,
        }
    }
}

/// The largest `cell_size` with `sequence: "halton"`: 32 x 32 cells and the shift take the first
/// 1,026 primes as bases.
const HALTON_MAX_CELL_SIZE: usize = 32;

/// The schema of RISE's `masks`.
fn masks_schema() -> utoipa::openapi::Schema {
    samples_schema(
        1,
        "Masks: a number (default from the preset: 500 fast, 2000 balanced, 4000 quality, the paper's; rounded up \
         to an even number when `p` is 0.5 and `sequence` is `random` or `halton`, the masks coming in complementary pairs) or `\"auto\"` (masks in \
         doubling rounds from 128 until every pixel's standard error is below `tolerance`, at most `max_samples`).",
        true,
    )
}

/// RISE's estimator of E[score | pixel kept].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RiseEstimator {
    /// mean(S) + sum_i (S_i - mean(S)) M_i / (N p): the same expectation as the paper's, without the
    /// noise that mean(S) times the masks' own spread adds (large when scores sit near a constant,
    /// as a two-class softmax near 0.5 does).
    Centered,
    /// sum_i S_i M_i / (N p), as Petsiuk et al. and their code.
    Paper,
}

impl Default for RiseParams {
    fn default() -> Self {
        Self {
            masks: None,
            tolerance: 0.01,
            antithetic: true,
            cell_size: 7,
            p: 0.5,
            preset: Preset::Balanced,
            estimator: RiseEstimator::Centered,
            sequence: RiseSequence::Sobol,
        }
    }
}

impl RiseParams {
    /// The masks asked, or the preset's; `None` for `"auto"`.
    pub(super) fn mask_count(&self) -> Option<usize> {
        match &self.masks {
            Some(Samples::Fixed(n)) => Some(*n),
            Some(Samples::Auto(_)) => None,
            None => Some(match self.preset {
                Preset::Fast => 500,
                Preset::Balanced => 2000,
                Preset::Quality => 4000,
            }),
        }
    }

    /// Whether masks come in complementary pairs: with p = 0.5 a grid's complement is as likely
    /// (not with Sobol points, whose own balance pairs only dilute).
    fn paired(&self) -> bool {
        self.antithetic && self.p == 0.5 && self.sequence != RiseSequence::Sobol
    }
}

/// RISE.
pub struct Rise;

impl Method for Rise {
    type Params = RiseParams;
    const NAME: &'static str = "rise";
    const SUMMARY: &'static str = "Scores of randomly masked copies, averaged per pixel (Petsiuk et al. 2018)";
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

    fn plan(p: &mut RiseParams, cx: &PlanContext) -> Result<Cost, Invalid> {
        let Some(spec) = cx.model.spec.image.as_ref() else {
            return Err(Invalid::Model("RISE explains image models".into()));
        };
        let side = spec.height.min(spec.width).max(2);
        check_range("cell_size", p.cell_size, 2, side.min(MAX_SIDE))?;
        if p.sequence == RiseSequence::Halton {
            check_range("cell_size", p.cell_size, 2, HALTON_MAX_CELL_SIZE)?;
        }
        if !(p.p > 0.0 && p.p < 1.0) {
            return Err(Invalid::Request("params.p must be strictly between 0 and 1".into()));
        }
        if !(p.tolerance.is_finite() && p.tolerance > 0.0 && p.tolerance <= 1.0) {
            return Err(Invalid::Request(
                "params.tolerance must be greater than 0 and at most 1".into(),
            ));
        }
        let masks = match p.mask_count() {
            Some(n) => {
                check_range("masks", n, 1, cx.limits.max_samples)?;
                let n = if p.paired() { n.saturating_add(n % 2) } else { n };
                p.masks = Some(Samples::Fixed(n));
                n
            }
            None => cx.limits.max_samples.max(2),
        };
        // Masks are drawn per batch, so one batch of them is held, with each target's sums.
        let batch = masks.min(cx.limits.max_batch);
        let replicates = 1 + p.sequence.replicates() as u64;
        let upsampled = (p.cell_size + 1)
            .saturating_mul(spec.height.div_ceil(p.cell_size))
            .saturating_mul((p.cell_size + 1).saturating_mul(spec.width.div_ceil(p.cell_size)));
        Ok(Cost {
            samples: masks,
            rows: masks,
            bytes: cx
                .batch_bytes(batch, false)
                .saturating_add(bytes(batch, 4).saturating_mul(cx.pixels() as u64))
                .saturating_add(bytes(upsampled, 4))
                .saturating_add(
                    bytes(cx.pixels(), 72)
                        .saturating_mul(cx.targets as u64)
                        .saturating_mul(replicates),
                )
                .saturating_add(cx.answer_bytes()),
        })
    }

    fn details_schema() -> Option<NamedSchemas> {
        Some(schemas_of::<RiseDetails>())
    }

    fn explain(
        cx: &mut Cx,
        job: &ExplainJob,
        p: &RiseParams,
        targets: &[Prediction],
        _: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError> {
        explain(cx, job, p, targets)
    }
}

/// Draws the masks' grids and shifts.
enum Draws {
    Random(Box<rand_chacha::ChaCha8Rng>),
    /// The replicates, and a point's coordinates.
    Points(Vec<Points>, Vec<f64>),
}

/// A scrambled low-discrepancy sequence.
enum Points {
    Halton(Halton),
    Sobol(Sobol),
}

impl Points {
    fn point(&self, index: u64, out: &mut [f64]) {
        match self {
            Points::Halton(h) => h.point(index, out),
            Points::Sobol(s) => s.point(index, out),
        }
    }
}

impl Draws {
    /// Unit `unit`'s mask at input resolution: an s x s grid keeping each cell with probability p,
    /// upsampled to cover (s + 1) cells, shifted.
    fn mask(&mut self, unit: usize, s: usize, p: f32, h: usize, w: usize) -> Vec<f32> {
        let (cell_h, cell_w) = (h.div_ceil(s), w.div_ceil(s));
        match self {
            Draws::Random(rng) => {
                let grid: Vec<f32> = (0..s * s)
                    .map(|_| if rng.random::<f32>() < p { 1.0 } else { 0.0 })
                    .collect();
                let (dy, dx) = (rng.random_range(0..cell_h.max(1)), rng.random_range(0..cell_w.max(1)));
                shifted(grid, (dy, dx), s, h, w)
            }
            Draws::Points(replicates, point) => {
                let k = replicates.len().max(1);
                if let Some(seq) = replicates.get(unit % k) {
                    seq.point((unit / k) as u64, point);
                }
                let grid = point[..s * s]
                    .iter()
                    .map(|u| if *u < p as f64 { 1.0 } else { 0.0 })
                    .collect();
                let at = |u: f64, n: usize| ((u * n as f64) as usize).min(n.saturating_sub(1));
                let shift = (at(point[s * s], cell_h), at(point[s * s + 1], cell_w));
                shifted(grid, shift, s, h, w)
            }
        }
    }
}

/// An s x s grid upsampled bilinearly to cover (s + 1) cells, shifted by (dy, dx) pixels, at input
/// resolution.
fn shifted(grid: Vec<f32>, (dy, dx): (usize, usize), s: usize, h: usize, w: usize) -> Vec<f32> {
    let (cell_h, cell_w) = (h.div_ceil(s), w.div_ceil(s));
    let (up_h, up_w) = ((s + 1) * cell_h, (s + 1) * cell_w);
    let small =
        image::ImageBuffer::<image::Luma<f32>, Vec<f32>>::from_raw(s as u32, s as u32, grid).unwrap_or_default();
    let up = image::imageops::resize(&small, up_w as u32, up_h as u32, image::imageops::FilterType::Triangle);
    let mut out = vec![0f32; h * w];
    for y in 0..h {
        for x in 0..w {
            out[y * w + x] = up.get_pixel((x + dx) as u32, (y + dy) as u32).0[0];
        }
    }
    out
}

/// Masks in the first round of `masks: "auto"`; each further round doubles the total.
const FIRST_ROUND: usize = 128;

fn explain(
    cx: &mut Cx,
    job: &ExplainJob,
    p: &RiseParams,
    targets: &[Prediction],
) -> Result<Vec<TargetAttribution>, RuntimeError> {
    let spec = job.image_spec("RISE")?;
    let (h, w, c) = (spec.height, spec.width, spec.channels);
    let (budget, auto) = match p.mask_count() {
        Some(n) => (n, false),
        None => (job.limits.max_samples.max(2), true),
    };
    let unit = if p.paired() { 2 } else { 1 };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(job.seed);
    let dims = p.cell_size * p.cell_size + 2;
    let mut draws = match p.sequence {
        RiseSequence::Random => Draws::Random(Box::new(rng)),
        sequence => {
            let replicates = (0..sequence.replicates())
                .map(|_| match sequence {
                    RiseSequence::Halton => Points::Halton(Halton::new(dims, &mut rng)),
                    _ => Points::Sobol(Sobol::new(&mut rng)),
                })
                .collect();
            Draws::Points(replicates, vec![0.0; dims])
        }
    };
    let x = job.input.as_f32().unwrap_or(&[]).to_vec();
    let baseline = baselines::build(Baseline::Black, &job.input, Some(spec), job.seed);
    let b = baseline.as_f32().unwrap_or(&[]).to_vec();
    let mut sums = Sums::new(targets.len(), h * w);
    // Each replicate's own sums, for the spread of their maps.
    let mut replicate_sums = (0..p.sequence.replicates())
        .map(|_| Sums::new(targets.len(), h * w))
        .collect::<Vec<_>>();
    // Masks are drawn one batch at a time (in the same order, so a seed gives the same masks), a
    // pair never split.
    let batch = (cx.forward_rows() / unit).max(1) * unit;
    let mut drawn = 0;
    let mut stopped = "masks";
    while drawn < budget {
        let round_end = match auto {
            true => (drawn + if drawn == 0 { FIRST_ROUND } else { drawn }).min(budget),
            false => budget,
        };
        while drawn < round_end {
            let end = (drawn + batch).min(round_end);
            let mut masks: Vec<Vec<f32>> = Vec::with_capacity(end - drawn);
            while masks.len() < end - drawn {
                let m = draws.mask((drawn + masks.len()) / unit, p.cell_size, p.p, h, w);
                // Upsampling is linear, so the complement grid's mask is 1 - the mask.
                let complement = (unit == 2).then(|| m.iter().map(|v| 1.0 - v).collect());
                masks.push(m);
                masks.extend(complement);
            }
            masks.truncate(end - drawn);
            let outputs = run_copies(cx, &job.input, masks.len(), |r, buf| {
                let m = &masks[r];
                for ch in 0..c {
                    for y in 0..h {
                        for xx in 0..w {
                            let i = index(spec, ch, y, xx);
                            let keep = m[y * w + xx];
                            buf[i] = b[i] + keep * (x[i] - b[i]);
                        }
                    }
                }
            })?;
            for (i, pair) in masks.chunks(unit).zip(outputs.chunks(unit)).enumerate() {
                // RISE weighs masks by the class probability.
                let weighed: Vec<Vec<f64>> = pair.1.iter().map(|o| job.weighed_scores(o)).collect();
                sums.add_unit(pair.0, &weighed, targets);
                let k = replicate_sums.len().max(1);
                if let Some(r) = replicate_sums.get_mut((drawn / unit + i) % k) {
                    r.add_unit(pair.0, &weighed, targets);
                }
            }
            cx.checkpoint()?;
            drawn = end;
        }
        if auto
            && (0..targets.len()).all(|ti| {
                result(&sums, &replicate_sums, ti, p)
                    .1
                    .iter()
                    .all(|se| *se <= p.tolerance)
            })
        {
            stopped = "tolerance";
            break;
        }
    }
    if auto && stopped != "tolerance" {
        stopped = "sample budget reached";
    }
    let mut out = Vec::new();
    for (ti, t) in targets.iter().enumerate() {
        let (values, se) = result(&sums, &replicate_sums, ti, p);
        let details = serde_json::json!({
            "samples": drawn,
            "stopped": stopped,
            "standard_error": error_summary(&se, &values),
        });
        let map = Tensor::f32(vec![h, w], values.iter().map(|v| *v as f32).collect());
        out.push(TargetAttribution::from_map(t, map, None, Some(details)));
    }
    Ok(out)
}

/// Target `ti`'s map and each pixel's standard error: from the units' spread, or with replicates
/// from the spread of the replicates' maps (the units of one low-discrepancy replicate are not
/// independent, so their spread would overstate the error).
fn result(sums: &Sums, replicates: &[Sums], ti: usize, p: &RiseParams) -> (Vec<f64>, Vec<f64>) {
    let (values, se) = sums.result(ti, p);
    if replicates.is_empty() {
        return (values, se);
    }
    let mut spread = MeanError::new(values.len());
    for r in replicates {
        spread.add_unit(&mut r.result(ti, p).0);
    }
    (values, spread.standard_errors())
}

/// Per pixel, the sums over units (a mask, or a complementary pair) that give each target's map
/// and its standard error. A unit's s is its mean score, w its mean mask value at the pixel, v the
/// mean of score x mask there; the map is mean(s) + (mean(v) - mean(s) mean(w)) / p (centered) or
/// mean(v) / p (paper). Its standard error is that of the mean of each unit's influence on it (the
/// map linearised in the units' sums).
struct Sums {
    units: usize,
    w: Vec<f64>,
    ww: Vec<f64>,
    per_target: Vec<TargetSums>,
}

#[derive(Clone)]
struct TargetSums {
    s: f64,
    ss: f64,
    v: Vec<f64>,
    vv: Vec<f64>,
    vw: Vec<f64>,
    sv: Vec<f64>,
    sw: Vec<f64>,
}

impl Sums {
    fn new(targets: usize, pixels: usize) -> Self {
        let zeros = vec![0f64; pixels];
        Self {
            units: 0,
            w: zeros.clone(),
            ww: zeros.clone(),
            per_target: vec![
                TargetSums {
                    s: 0.0,
                    ss: 0.0,
                    v: zeros.clone(),
                    vv: zeros.clone(),
                    vw: zeros.clone(),
                    sv: zeros.clone(),
                    sw: zeros,
                };
                targets
            ],
        }
    }

    /// Adds one unit: its masks and their weighed scores.
    fn add_unit(&mut self, masks: &[Vec<f32>], weighed: &[Vec<f64>], targets: &[Prediction]) {
        let k = masks.len().max(1) as f64;
        let pixels = self.w.len();
        let mean_w: Vec<f64> = (0..pixels)
            .map(|j| masks.iter().map(|m| m[j] as f64).sum::<f64>() / k)
            .collect();
        for (j, wj) in mean_w.iter().enumerate() {
            self.w[j] += wj;
            self.ww[j] += wj * wj;
        }
        for (sums, t) in self.per_target.iter_mut().zip(targets) {
            let scores: Vec<f64> = weighed
                .iter()
                .map(|row| row.get(t.index).copied().unwrap_or(0.0))
                .collect();
            let s = scores.iter().sum::<f64>() / k;
            sums.s += s;
            sums.ss += s * s;
            for (j, wj) in mean_w.iter().enumerate() {
                let v = masks.iter().zip(&scores).map(|(m, sc)| sc * m[j] as f64).sum::<f64>() / k;
                sums.v[j] += v;
                sums.vv[j] += v * v;
                sums.vw[j] += v * wj;
                sums.sv[j] += s * v;
                sums.sw[j] += s * wj;
            }
        }
        self.units += 1;
    }

    /// Target `ti`'s map and each pixel's standard error.
    fn result(&self, ti: usize, p: &RiseParams) -> (Vec<f64>, Vec<f64>) {
        let Some(t) = self.per_target.get(ti) else {
            return (Vec::new(), Vec::new());
        };
        let u = self.units.max(1) as f64;
        let q = p.p as f64;
        let mean_s = t.s / u;
        (0..self.w.len())
            .map(|j| {
                let (value, sum, sum_sq) = match p.estimator {
                    RiseEstimator::Paper => (t.v[j] / (u * q), t.v[j] / q, t.vv[j] / (q * q)),
                    RiseEstimator::Centered => {
                        // Each unit's influence on the map: z = c s + (v - S w) / p, with c = 1 -
                        // mean(w) / p the weight the mean score keeps (0 with complementary pairs).
                        let c = 1.0 - self.w[j] / (u * q);
                        let sum = c * t.s + (t.v[j] - mean_s * self.w[j]) / q;
                        let sum_sq = c * c * t.ss
                            + (t.vv[j] - 2.0 * mean_s * t.vw[j] + mean_s * mean_s * self.ww[j]) / (q * q)
                            + 2.0 * c * (t.sv[j] - mean_s * t.sw[j]) / q;
                        (mean_s + (t.v[j] - mean_s * self.w[j]) / (u * q), sum, sum_sq)
                    }
                };
                let se = match self.units {
                    0 | 1 => f64::INFINITY,
                    _ => ((sum_sq - sum * sum / u).max(0.0) / (u * (u - 1.0))).sqrt(),
                };
                (value, se)
            })
            .unzip()
    }
}

/// RISE's `details`, as `explain` writes them.
#[derive(ToSchema)]
#[allow(dead_code)] // The answer's shape for the document; `explain` writes it as JSON.
pub struct RiseDetails {
    /// Masks used.
    samples: usize,
    /// Why sampling stopped: `masks` (the number asked), `tolerance` (met) or `sample budget reached`.
    stopped: String,
    /// The standard errors of the map's pixels, in score units.
    standard_error: super::sampling::ErrorSummary,
}
