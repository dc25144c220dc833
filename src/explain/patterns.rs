//! Pattern fitting for PatternNet and PatternAttribution (Kindermans et al., "Learning how to
//! explain neural networks: PatternNet and PatternAttribution", ICLR 2018), shared by both methods:
//! one forward pass over the model's data (a `[patterns] images` folder, else its reference set,
//! else its background rows) that exposes each linear layer's input, output and the tensor its
//! ReLU reads; per output neuron, running sums in f64 whose size is the weights' (not the data's);
//! then, per neuron `j` with weight vector `w` and input `x` (Conv: the patch it sees, im2col),
//!
//! - the linear estimator `a = cov(x, y) / (w^T cov(x, y))` over every sample, for layers no
//!   ReLU follows (the scores);
//! - the two-component estimator for layers a ReLU follows: the same quotient over the samples
//!   where the ReLU is open (`a+`, what the backward pass uses) and where it is shut (`a-`), each
//!   with its regime's own means, `cov+ = E+[x y] - E+[x] E+[y]` (the paper's equation).
//!
//! Conventions as in iNNvestigate (albermax/innvestigate, `tools/pattern.py`, `LinearPattern`): a
//! bias changes no covariance, a denominator of 0 divided as 1
//! (`safe_divide`), and zero padding in a convolution's patches. Where iNNvestigate's
//! `ReLUPositivePattern` takes E[y] over all samples, this follows the paper's equation (E+[y]).
//!
//! Fitted patterns are kept by the runtime keyed by the model's and the data's sha256 (in memory
//! and under `data_dir/patterns`), so a later request, and a restart, reuses them. A fit is an
//! explanation's first step when none are kept, or a job of its own (`jobs::patterns`); either
//! way one fit at a time per model and data (`runtime::patterns::PatternStore::claim`).

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use nalgebra::DMatrix;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::method::{Capabilities, Inputs, Passes};
use super::{Cx, ExplainJob};
use crate::examples::source::Listing;
use crate::onnx::autodiff::rules::PatternRules;
use crate::onnx::patterns::{linear_layers, LayerPattern, LinearLayer, Patterns, Receptive};
use crate::runtime::patterns::Claim;
use crate::runtime::preprocess::InputError;
use crate::runtime::{LoadedModel, RuntimeError, Tensor};

/// Most pixels of an image read for fitting (each reference image was checked when the set was
/// built; this bounds a file replaced since, and a `[patterns]` folder's files).
const MAX_PIXELS: u64 = 1 << 26;

/// Most images a `[patterns]` folder holds.
pub const MAX_IMAGES: usize = 10_000;

/// Where a model's patterns are fitted from.
pub enum Data<'a> {
    /// The manifest's `[patterns] images` folder: every file, sorted by name.
    Images(Listing),
    /// The model's reference set.
    Reference(&'a crate::examples::ReferenceSet),
    /// Its background rows (tabular models).
    Background(&'a [Vec<f32>]),
}

impl<'a> Data<'a> {
    /// The data a model's patterns are fitted on, or why it has none (the refusal's text). A
    /// `[patterns]` folder is listed (names only, no image read).
    pub fn of(
        model: &'a LoadedModel,
        reference: Option<&'a Arc<crate::examples::ReferenceSet>>,
    ) -> Result<Self, String> {
        if let Some(dir) = model.spec.patterns.as_ref().and_then(|p| p.images_dir(&model.dir)) {
            let listing = crate::examples::concepts::unlabelled_images(&dir, MAX_IMAGES)
                .map_err(|e| format!("the [patterns] folder of model `{}` cannot be read: {e}", model.name))?;
            if listing.ids.is_empty() {
                return Err(format!(
                    "the [patterns] folder of model `{}` holds no image",
                    model.name
                ));
            }
            return Ok(Data::Images(listing));
        }
        if let Some(set) = reference.filter(|s| !s.is_empty()) {
            return Ok(Data::Reference(set));
        }
        match model.background.as_deref() {
            Some(rows) if !rows.is_empty() => Ok(Data::Background(rows)),
            _ => Err(format!(
                "PatternNet and PatternAttribution fit their patterns on the model's data, and model `{}` has \
                 none: give it a reference set ([reference] in model.toml), background rows (tabular.background) \
                 or a folder of images ([patterns] images)",
                model.name
            )),
        }
    }

    /// Rows in the data.
    pub fn rows(&self) -> usize {
        match self {
            Data::Images(listing) => listing.ids.len(),
            Data::Reference(set) => set.len(),
            Data::Background(rows) => rows.len(),
        }
    }

    /// What the data is: `images`, `reference set` or `background`.
    pub fn name(&self) -> &'static str {
        match self {
            Data::Images(_) => "images",
            Data::Reference(_) => "reference set",
            Data::Background(_) => "background",
        }
    }

    /// sha256 of what the patterns depend on in the data (a folder's images are read for it).
    pub fn sha256(&self) -> Result<String, RuntimeError> {
        let mut h = Sha256::new();
        match self {
            Data::Images(listing) => {
                h.update(b"images\0");
                let dir = match &listing.inputs {
                    crate::examples::source::Inputs::Images(dir) => dir.as_path(),
                    crate::examples::source::Inputs::Rows(_) => Path::new(""),
                };
                for id in &listing.ids {
                    h.update((id.len() as u64).to_le_bytes());
                    h.update(id.as_bytes());
                    let file = std::fs::File::open(dir.join(id));
                    let read = file.and_then(|f| {
                        // The length first, so that a file's end cannot pass for the next name.
                        let len = f.metadata()?.len();
                        h.update(len.to_le_bytes());
                        std::io::copy(&mut f.take(len), &mut h)
                    });
                    read.map_err(|e| {
                        InputError::BadFeatures(format!(
                            "the [patterns] image `{id}` cannot be read: {}",
                            crate::examples::source::unreadable(&e)
                        ))
                    })?;
                }
            }
            Data::Reference(set) => {
                h.update(b"reference set\0");
                h.update(set.source_sha256.as_bytes());
            }
            Data::Background(rows) => {
                h.update(b"background\0");
                for row in rows.iter() {
                    h.update((row.len() as u64).to_le_bytes());
                    for v in row {
                        h.update(v.to_le_bytes());
                    }
                }
            }
        }
        Ok(hex::encode(h.finalize()))
    }

    fn batch(&self, model: &LoadedModel, start: usize, end: usize) -> Result<Tensor, RuntimeError> {
        let unreadable = |e: String| -> RuntimeError {
            InputError::BadFeatures(format!("the {} cannot be read for fitting: {e}", self.name())).into()
        };
        match self {
            Data::Images(listing) => listing.batch(model, start, end, MAX_PIXELS).map_err(unreadable),
            Data::Reference(set) => set.input_batch(model, start, end, MAX_PIXELS).map_err(unreadable),
            Data::Background(rows) => {
                let width = rows.first().map_or(0, Vec::len);
                let flat: Vec<f32> = rows[start..end].iter().flatten().copied().collect();
                Ok(Tensor::f32(vec![end - start, width], flat))
            }
        }
    }
}

/// Both methods' parameters (none: the patterns come from the model's data).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PatternParams {}

/// What both methods need: a backward pass over any input.
pub(super) const CAPABILITIES: Capabilities = Capabilities {
    passes: Passes::Gradients,
    inputs: Inputs::Any,
    layer: false,
    random: false,
    examples: false,
    decision: false,
    text: false,
    makes_image: false,
};

/// What an answer says of the patterns it used.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatternDetails {
    /// `images` (the manifest's `[patterns]` folder), `reference set` or `background`.
    #[schema(pattern = "^(images|reference set|background)$")]
    pub data: String,
    /// Rows the patterns were fitted on.
    pub rows: usize,
    /// Linear layers with a pattern.
    pub layers: usize,
    /// Of those, the layers a ReLU follows (two-component estimator).
    pub two_component: usize,
    /// Whether this request fitted them (false: they were kept from before, in memory or on disk,
    /// or fitted by another request it waited for).
    pub fitted_now: bool,
}

impl PatternDetails {
    /// What `patterns`, fitted on `data`, are.
    pub fn of(data: &Data, patterns: &Patterns, fitted_now: bool) -> Self {
        Self {
            data: data.name().into(),
            rows: data.rows(),
            layers: patterns.layers.len(),
            two_component: patterns.layers.values().filter(|l| l.negative.is_some()).count(),
            fitted_now,
        }
    }
}

/// The pattern rules for the job's model and data, fitting the patterns first when none are kept
/// (one forward pass over the data, counted in the job's progress).
pub(super) fn fitted(
    cx: &mut Cx,
    job: &ExplainJob,
    attribution: bool,
) -> Result<(PatternRules, PatternDetails), RuntimeError> {
    let data = Data::of(&job.model, job.reference.as_ref()).map_err(InputError::BadFeatures)?;
    let (sha, details) = fit(cx, &data, job.limits.max_job_bytes)?;
    let rules = PatternRules {
        attribution,
        digest: crate::runtime::patterns::digest(&sha),
    };
    Ok((rules, details))
}

/// The patterns of the workbench's model on `data`: kept ones, the ones another request is
/// fitting (waited for), or fitted here in one forward pass over the data, counted in the job's
/// progress, holding at most `max_job_bytes` of statistics. The data's sha256 (the patterns' key)
/// and what they are.
pub fn fit(cx: &mut Cx, data: &Data, max_job_bytes: u64) -> Result<(String, PatternDetails), RuntimeError> {
    let model = cx.model.clone();
    let sha = data.sha256()?;
    let job_ctx = cx.job_ctx;
    // The plan counted the fitting pass's rows; when the patterns are kept progress counts the
    // rows run, so it ends short of the plan (as a method that stops early does).
    let claim = match cx.rt.patterns().claim(&model.sha256, &sha, || job_ctx.checkpoint())? {
        Claim::Kept(kept) => return Ok((sha, PatternDetails::of(data, &kept, false))),
        Claim::Fit(claim) => claim,
    };
    let prepared = cx.rt.prepared(&model)?;
    let graph = prepared
        .0
        .graph
        .as_ref()
        .ok_or_else(|| not_fitted(&model, "the model has no graph".into()))?;
    let layers =
        linear_layers(graph, &model.spec.input, &model.spec.output, &prepared.1).map_err(|e| not_fitted(&model, e))?;
    let held = layers.iter().map(Statistics::bytes).fold(0u64, u64::saturating_add);
    if held > max_job_bytes {
        return Err(RuntimeError::UnsupportedModel {
            model: model.name.clone(),
            message: format!(
                "fitting its patterns would hold {} MiB of statistics; the limit is {} MiB (max_job_bytes)",
                held.div_ceil(1 << 20),
                max_job_bytes >> 20
            ),
        });
    }
    let mut stats: Vec<Statistics> = layers.iter().map(Statistics::new).collect();
    let mut names: Vec<String> = Vec::new();
    for l in &layers {
        for t in [Some(&l.input), Some(&l.output), l.gate.as_ref()].into_iter().flatten() {
            if t != &model.spec.input && !names.contains(t) {
                names.push(t.clone());
            }
        }
    }
    let rows = data.rows();
    let chunk = cx.forward_rows().max(1);
    let mut start = 0;
    while start < rows {
        let end = (start + chunk).min(rows);
        let batch = data.batch(&model, start, end)?;
        let outputs = cx.forward_with(&model, &names, &batch)?;
        let tensor = |name: &String| -> Result<&Tensor, RuntimeError> {
            if name == &model.spec.input {
                return Ok(&batch);
            }
            outputs
                .get(name)
                .ok_or_else(|| not_fitted(&model, format!("the pass did not expose `{name}`")))
        };
        for (l, s) in layers.iter().zip(stats.iter_mut()) {
            cx.checkpoint()?;
            let gate = l.gate.as_ref().map(&tensor).transpose()?;
            s.add(l, tensor(&l.input)?, tensor(&l.output)?, gate)
                .map_err(|e| not_fitted(&model, format!("layer `{}`: {e}", l.node)))?;
        }
        start = end;
    }
    let mut patterns = Patterns::default();
    for (l, s) in layers.iter().zip(&stats) {
        patterns.layers.insert(l.weight.clone(), s.patterns(l));
    }
    let info = PatternDetails::of(data, &patterns, true);
    cx.rt.patterns().put(&model.sha256, &sha, patterns);
    // Released once the patterns are kept: a waiter finds them.
    drop(claim);
    tracing::info!(model = %model.name, rows, layers = info.layers, data = info.data, "patterns fitted");
    Ok((sha, info))
}

fn not_fitted(model: &LoadedModel, message: String) -> RuntimeError {
    RuntimeError::NotDifferentiable {
        model: model.name.clone(),
        message: format!("its patterns cannot be fitted: {message}"),
    }
}

/// One layer's running sums, per regime (0: the ReLU open, or every sample for the linear
/// estimator; 1: the ReLU shut) and output neuron `j`: samples, sum of y, and per input `k` of
/// the neuron's receptive field the sums of x and of x y (`fan_in x outputs`, column-major, so
/// element `[j * fan_in + k]`). The sums are accumulated as matrix products (patches^T times the
/// regime's masks and masked outputs), which run in the optimised linear-algebra code rather than
/// a loop per sample and neuron: fitting is a few times a forward pass, not tens.
pub(super) struct Statistics {
    fan_in: usize,
    count: [Vec<f64>; 2],
    sum_y: [Vec<f64>; 2],
    sum_x: [DMatrix<f64>; 2],
    sum_xy: [DMatrix<f64>; 2],
}

/// Samples (patches) gathered before their sums are taken in one product: bounds the patch
/// matrix at `fan_in x SAMPLES_PER_PRODUCT` values.
const SAMPLES_PER_PRODUCT: usize = 4096;

impl Statistics {
    /// Bytes a layer's sums hold, and its patch and mask matrices while a batch is added.
    pub(super) fn bytes(l: &LinearLayer) -> u64 {
        let per = (l.outputs() as u64).saturating_mul(l.fan_in() as u64 + 1);
        let sums = per.saturating_mul(2 * 2 * 8);
        let work = (SAMPLES_PER_PRODUCT as u64)
            .saturating_mul(l.fan_in() as u64 + 2 * l.outputs() as u64)
            .saturating_mul(8);
        sums.saturating_add(work)
    }

    pub(super) fn new(l: &LinearLayer) -> Self {
        let (j, k) = (l.outputs(), l.fan_in());
        let zeros = |n: usize| [vec![0.0; n], vec![0.0; n]];
        Self {
            fan_in: k,
            count: zeros(j),
            sum_y: zeros(j),
            sum_x: [DMatrix::zeros(k, j), DMatrix::zeros(k, j)],
            sum_xy: [DMatrix::zeros(k, j), DMatrix::zeros(k, j)],
        }
    }

    /// Adds samples: `patches` (`fan_in x s`, one receptive field per column) seen by neurons
    /// `first..first + n` with outputs `y(s, j)` and regimes `regime(s, j)`.
    fn add_samples(
        &mut self,
        patches: &DMatrix<f64>,
        (first, n): (usize, usize),
        y: impl Fn(usize, usize) -> f64,
        regime: impl Fn(usize, usize) -> usize,
    ) {
        let samples = patches.ncols();
        for r in 0..2 {
            let mut mask = DMatrix::<f64>::zeros(samples, n);
            let mut masked_y = DMatrix::<f64>::zeros(samples, n);
            let mut any = false;
            for j in 0..n {
                for s in 0..samples {
                    if regime(s, j) == r {
                        let v = y(s, j);
                        mask[(s, j)] = 1.0;
                        masked_y[(s, j)] = v;
                        self.count[r][first + j] += 1.0;
                        self.sum_y[r][first + j] += v;
                        any = true;
                    }
                }
            }
            if !any {
                continue;
            }
            self.sum_x[r].columns_mut(first, n).gemm(1.0, patches, &mask, 1.0);
            self.sum_xy[r].columns_mut(first, n).gemm(1.0, patches, &masked_y, 1.0);
        }
    }

    /// Adds a batch: the layer's input, output and the ReLU's input. The output keeps its bias:
    /// a covariance does not see a constant (iNNvestigate drops it; the patterns are the same).
    pub(super) fn add(&mut self, l: &LinearLayer, x: &Tensor, y: &Tensor, gate: Option<&Tensor>) -> Result<(), String> {
        let (xv, yv) = (
            x.as_f32().ok_or("the input is not float")?,
            y.as_f32().ok_or("the output is not float")?,
        );
        let gv = match gate {
            Some(g) => Some(g.as_f32().ok_or("the ReLU's input is not float")?),
            None => None,
        };
        if gv.is_some_and(|g| g.len() != yv.len()) {
            return Err("the ReLU's input is not shaped like the layer's output".into());
        }
        let regime = |i: usize| gv.map_or(0, |g| usize::from(g[i] <= 0.0));
        match &l.receptive {
            Receptive::Dense { .. } => {
                let (k, j) = (l.fan_in(), l.outputs());
                if k == 0 || j == 0 || xv.len() % k != 0 || yv.len() != xv.len() / k * j {
                    return Err(format!("shapes {:?} and {:?} do not fit the weight", x.shape, y.shape));
                }
                let rows = xv.len() / k;
                let mut start = 0;
                while start < rows {
                    let end = rows.min(start + SAMPLES_PER_PRODUCT);
                    let patches = DMatrix::from_fn(k, end - start, |kk, s| f64::from(xv[(start + s) * k + kk]));
                    let at = |s: usize, jj: usize| (start + s) * j + jj;
                    self.add_samples(
                        &patches,
                        (0, j),
                        |s, jj| f64::from(yv[at(s, jj)]),
                        |s, jj| regime(at(s, jj)),
                    );
                    start = end;
                }
                Ok(())
            }
            Receptive::Conv {
                kernel,
                strides,
                dilations,
                pads,
                group,
            } => {
                let (xs, ys) = (&x.shape, &y.shape);
                if xs.len() != 4 || ys.len() != 4 || xs[0] != ys[0] || ys[1] != l.outputs() || xs[1] % group != 0 {
                    return Err(format!("shapes {xs:?} and {ys:?} do not fit the weight"));
                }
                let (n, c, h, w) = (xs[0], xs[1], xs[2], xs[3]);
                let (cout, oh, ow) = (ys[1], ys[2], ys[3]);
                let cg = c / group;
                let per_group = cout / group;
                if cg * kernel[0] * kernel[1] != l.fan_in() {
                    return Err("the weight does not fit the input's channels".into());
                }
                let positions = oh * ow;
                // Output positions a product at a time, so the patches and masks stay within
                // what `bytes` budgets, however large the feature map.
                let spans: Vec<(usize, usize)> = (0..positions)
                    .step_by(SAMPLES_PER_PRODUCT)
                    .map(|p0| (p0, (p0 + SAMPLES_PER_PRODUCT).min(positions)))
                    .collect();
                for b in 0..n {
                    for (g, &(p0, p1)) in (0..*group).flat_map(|g| spans.iter().map(move |s| (g, s))) {
                        // The image's patches for the group, zero-padded, one column per output
                        // position: channels of the group, kernel rows, columns.
                        let patches = DMatrix::from_fn(l.fan_in(), p1 - p0, |k, p| {
                            let p = p0 + p;
                            let (py, px) = (p / ow, p % ow);
                            let ch = g * cg + k / (kernel[0] * kernel[1]);
                            let (ky, kx) = ((k / kernel[1]) % kernel[0], k % kernel[1]);
                            let iy = (py * strides[0] + ky * dilations[0]) as isize - pads[0] as isize;
                            let ix = (px * strides[1] + kx * dilations[1]) as isize - pads[1] as isize;
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                f64::from(xv[((b * c + ch) * h + iy as usize) * w + ix as usize])
                            } else {
                                0.0
                            }
                        });
                        let first = g * per_group;
                        let at = |p: usize, jj: usize| (b * cout + first + jj) * positions + p0 + p;
                        self.add_samples(
                            &patches,
                            (first, per_group),
                            |p, jj| f64::from(yv[at(p, jj)]),
                            |p, jj| regime(at(p, jj)),
                        );
                    }
                }
                Ok(())
            }
        }
    }

    /// The fitted pattern(s), shaped like the weight.
    pub(super) fn patterns(&self, l: &LinearLayer) -> LayerPattern {
        let two = l.gate.is_some();
        let estimate = |regimes: &[usize]| -> Vec<f32> {
            let mut a = vec![0f32; l.weight_values.len()];
            for j in 0..l.outputs() {
                let at = j * self.fan_in;
                let total = |v: &[DMatrix<f64>; 2], i: usize| regimes.iter().map(|r| v[*r].as_slice()[i]).sum::<f64>();
                let n = regimes.iter().map(|r| self.count[*r][j]).sum::<f64>();
                if n == 0.0 {
                    continue;
                }
                let mean_y = regimes.iter().map(|r| self.sum_y[*r][j]).sum::<f64>() / n;
                let cov: Vec<f64> = (0..self.fan_in)
                    .map(|k| total(&self.sum_xy, at + k) / n - total(&self.sum_x, at + k) / n * mean_y)
                    .collect();
                let denom: f64 = cov
                    .iter()
                    .enumerate()
                    .map(|(k, c)| c * f64::from(l.weight_values[l.weight_index(j, k)]))
                    .sum();
                // iNNvestigate's safe_divide: a zero denominator divides as one.
                let denom = if denom == 0.0 { 1.0 } else { denom };
                for (k, c) in cov.iter().enumerate() {
                    a[l.weight_index(j, k)] = (c / denom) as f32;
                }
            }
            a
        };
        LayerPattern {
            dims: l.weight_dims.clone(),
            values: if two { estimate(&[0]) } else { estimate(&[0, 1]) },
            negative: two.then(|| estimate(&[1])),
        }
    }
}

/// The shared pass of both methods: patterns fitted (or kept), then one backward pass of the
/// pattern rules per target, seeded with the target's score.
pub(super) fn explain(
    cx: &mut Cx,
    job: &ExplainJob,
    targets: &[crate::runtime::predict::Prediction],
    attribution: bool,
) -> Result<(crate::runtime::sessions::GradientPass, PatternDetails), RuntimeError> {
    let (rules, details) = fitted(cx, job, attribution)?;
    let classes = crate::common::detection_targets::width(&job.model);
    let indices: Vec<usize> = targets.iter().map(|t| t.index).collect();
    let input = super::repeat_rows(&job.input, targets.len());
    let chunk = cx.max_batch();
    let pass = cx.gradients(
        &[],
        crate::onnx::autodiff::RuleSet::Pattern(rules),
        &input,
        &super::one_hot(&indices, classes),
        chunk,
    )?;
    Ok((pass, details))
}

/// The plan both methods share: the data must exist; the cost is the fitting pass over it (when
/// the patterns are kept, its rows are skipped) and one backward row per target.
pub(super) fn plan(cx: &super::PlanContext) -> Result<super::Cost, super::Invalid> {
    let data = Data::of(cx.model, cx.reference.as_ref()).map_err(super::Invalid::Model)?;
    let one = super::saliency::one_gradient_per_target(cx);
    Ok(super::Cost {
        samples: one.samples,
        rows: one.rows.saturating_add(data.rows()),
        bytes: one.bytes.saturating_add(cx.batch_bytes(cx.limits.max_batch, false)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The linear estimator on a 2-input dense neuron: x = s y_s + d e with the filter
    /// w = (1, -1) cancelling the distractor direction d = (1, 1): the pattern is s, scaled so
    /// that w^T a = 1.
    #[test]
    fn the_linear_estimator_recovers_the_signal_direction() {
        let layer = LinearLayer {
            node: "n".into(),
            input: "x".into(),
            output: "y".into(),
            gate: None,
            weight: "w".into(),
            weight_dims: vec![2, 1],
            weight_values: vec![1.0, -1.0],
            receptive: Receptive::Dense { transposed: false },
        };
        let mut st = Statistics::new(&layer);
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        // Every signal value with every distractor value: the two are uncorrelated.
        for i in 0..200 {
            let signal = (i / 10) as f32 / 10.0 - 1.0;
            let distractor = (i % 10) as f32 / 5.0 - 1.0;
            let x = [signal + distractor, distractor];
            xs.extend_from_slice(&x);
            ys.push(x[0] - x[1]);
        }
        st.add(
            &layer,
            &Tensor::f32(vec![200, 2], xs),
            &Tensor::f32(vec![200, 1], ys),
            None,
        )
        .unwrap();
        let p = st.patterns(&layer);
        // s = (1, 0): the signal enters the first input only.
        assert!(
            (p.values[0] - 1.0).abs() < 1e-5 && p.values[1].abs() < 1e-5,
            "{:?}",
            p.values
        );
        assert!(p.negative.is_none());
    }
}
