//! Pattern fitting for PatternNet and PatternAttribution (Kindermans et al., "Learning how to
//! explain neural networks: PatternNet and PatternAttribution", ICLR 2018), shared by both methods:
//! one forward pass over the model's data (a `[patterns] images` folder, else its reference set,
//! else its background rows) that exposes each linear layer's input and its output, or the
//! output of the ReLU after it; per output neuron, running sums in f64 whose size is the weights' (not the data's);
//! then, per neuron `j` with weight vector `w` and input `x` (Conv: the patch it sees, im2col),
//!
//! - the linear estimator `a = cov(x, y) / (w^T cov(x, y))` over every sample, for layers no
//!   ReLU follows (the scores);
//! - the two-component estimator for layers a ReLU follows: the same quotient over the samples
//!   where the ReLU is open (`a+`, what the backward pass uses), with that regime's own means,
//!   `cov+ = E+[x y] - E+[x] E+[y]` (the paper's equation). The shut regime's `a-` is what the
//!   ReLU blocks: no rule reads it, and it is not fitted (its sums would cost a third product per
//!   layer, and the pass would have to keep the output before the ReLU).
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

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::method::{Capabilities, Inputs, Passes};
use super::{Cx, ExplainJob};
use crate::examples::source::Listing;
use crate::onnx::autodiff::rules::PatternRules;
use crate::onnx::autodiff::RuleSet;
use crate::onnx::patterns::{
    linear_layers, statistics_outputs, statistics_row_bytes, LayerPattern, LinearLayer, Patterns,
};
use crate::runtime::patterns::{Claim, PatternStore};
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

    /// sha256 of what the patterns depend on in the data: a folder's images are read for it once
    /// and its hash kept in `store` ([`PatternStore::folder_sha256`]).
    pub fn sha256(&self, store: &PatternStore) -> Result<String, RuntimeError> {
        match self {
            Data::Images(listing) => match &listing.inputs {
                crate::examples::source::Inputs::Images(dir) => store.folder_sha256(dir, || self.hash()),
                crate::examples::source::Inputs::Rows(_) => self.hash(),
            },
            _ => self.hash(),
        }
    }

    fn hash(&self) -> Result<String, RuntimeError> {
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
            two_component: patterns.layers.values().filter(|l| l.two_component).count(),
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

/// The one pass of either method for a fresh input's top prediction when the patterns are kept:
/// the pattern rules' backward pass, which scores the input on its way (no forward pass first).
/// `None` when they are not kept: a forward pass chooses the target, then the method fits them (a
/// backward model cannot be built without them).
pub(super) fn kept_pass(
    cx: &mut Cx,
    job: &ExplainJob,
    attribution: bool,
) -> Result<Option<(Vec<String>, RuleSet)>, RuntimeError> {
    // No data: the method refuses with its reason.
    let Ok(data) = Data::of(&job.model, job.reference.as_ref()) else {
        return Ok(None);
    };
    let store = cx.rt.patterns();
    let sha = data.sha256(store)?;
    Ok(store.get(&job.model.sha256, &sha).map(|_| {
        let rules = PatternRules {
            attribution,
            digest: crate::runtime::patterns::digest(&sha),
        };
        (Vec::new(), RuleSet::Pattern(rules))
    }))
}

/// The patterns of the workbench's model on `data`: kept ones, the ones another request is
/// fitting (waited for), or fitted here in one forward pass over the data, counted in the job's
/// progress, holding at most `max_job_bytes` of statistics. The data's sha256 (the patterns' key)
/// and what they are.
pub fn fit(cx: &mut Cx, data: &Data, max_job_bytes: u64) -> Result<(String, PatternDetails), RuntimeError> {
    let model = cx.model.clone();
    let sha = data.sha256(cx.rt.patterns())?;
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
    let row_bytes = statistics_row_bytes(&layers, &prepared.1);
    let mut stats: Vec<Statistics> = layers.iter().map(Statistics::new).collect();
    let rows = data.rows();
    let chunk = cx.forward_rows().max(1);
    let steps: Vec<(usize, usize)> = (0..rows).step_by(chunk).map(|s| (s, (s + chunk).min(rows))).collect();
    let mut next = match steps.first() {
        Some(&(start, end)) => Some(data.batch(&model, start, end)?),
        None => None,
    };
    for following in steps.iter().skip(1).map(Some).chain([None]) {
        let Some(batch) = next.take() else { break };
        // The next batch is read and decoded on another thread while this one's pass runs.
        let (outputs, decoded) = std::thread::scope(|scope| {
            let model = &model;
            let helper = following.map(|&(start, end)| scope.spawn(move || data.batch(model, start, end)));
            let outputs = cx.pattern_statistics(&batch, row_bytes);
            (outputs, helper.map(|h| h.join()))
        });
        let outputs = outputs?;
        if let Some(decoded) = decoded {
            next = Some(decoded.unwrap_or_else(|panic| std::panic::resume_unwind(panic))?);
        }
        for (i, (l, s)) in layers.iter().zip(stats.iter_mut()).enumerate() {
            let (products, sums) = statistics_outputs(i);
            let (Some(products), Some(sums)) = (outputs.get(&products), outputs.get(&sums)) else {
                return Err(not_fitted(
                    &model,
                    format!("the pass gave no statistics for `{}`", l.node),
                ));
            };
            s.add(products, sums)
                .map_err(|e| not_fitted(&model, format!("layer `{}`: {e}", l.node)))?;
        }
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

/// One layer's running sums, as the statistics pass gives them per pass
/// ([`crate::onnx::patterns::statistics_outputs`]), added up in f64 across passes: `products`
/// `[groups, fan_in, columns]` and `sums` `[groups, columns]`. Per output neuron `j` (group `gi`,
/// `mg` within it) the columns hold, for a layer a ReLU follows, the sums over samples of the
/// ReLU's mask `m` and of its output `r = m (y + c)` (`b * per_group + mg`, `b` = 0, 1; `c` a
/// constant per neuron, a bias between the layer and the ReLU, which the open regime's
/// covariance does not see); for another layer `y`, then a column of ones. So the open regime's
/// sums (the two-component estimator's `a+`) or every sample's (the linear estimator) are read
/// off directly.
pub(super) struct Statistics {
    fan_in: usize,
    groups: usize,
    per_group: usize,
    columns: usize,
    two: bool,
    products: Vec<f64>,
    sums: Vec<f64>,
}

/// One regime's sums for one neuron: samples, sum of y, and per input the sums of x and x y.
struct Regime {
    n: f64,
    sum_y: f64,
    sum_x: Vec<f64>,
    sum_xy: Vec<f64>,
}

impl Statistics {
    /// Bytes a layer's sums hold.
    pub(super) fn bytes(l: &LinearLayer) -> u64 {
        let per_group = (l.fan_in() as u64 + 1).saturating_mul(l.columns() as u64);
        per_group.saturating_mul(l.groups() as u64).saturating_mul(8)
    }

    pub(super) fn new(l: &LinearLayer) -> Self {
        let (groups, columns) = (l.groups(), l.columns());
        Self {
            fan_in: l.fan_in(),
            groups,
            per_group: l.outputs() / groups,
            columns,
            two: l.relu.is_some(),
            products: vec![0.0; groups * l.fan_in() * columns],
            sums: vec![0.0; groups * columns],
        }
    }

    /// Adds a batch's statistics: `products` `[passes, groups, fan_in, columns]` and `sums`
    /// `[passes, groups, columns]`, one row per pass.
    pub(super) fn add(&mut self, products: &Tensor, sums: &Tensor) -> Result<(), String> {
        let (p, s) = (
            products.as_f32().ok_or("the products are not float")?,
            sums.as_f32().ok_or("the sums are not float")?,
        );
        let passes = products.rows();
        let fits = products.shape.get(1..) == Some(&[self.groups, self.fan_in, self.columns][..])
            && sums.shape.get(1..) == Some(&[self.groups, self.columns][..])
            && sums.rows() == passes;
        if !fits {
            return Err(format!(
                "statistics shaped {:?} and {:?} do not fit the weight",
                products.shape, sums.shape
            ));
        }
        for (held, values) in [(&mut self.products, p), (&mut self.sums, s)] {
            for pass in values.chunks(held.len().max(1)) {
                for (h, v) in held.iter_mut().zip(pass) {
                    *h += f64::from(*v);
                }
            }
        }
        Ok(())
    }

    /// Neuron `j`'s sums over the samples its estimator reads: the ReLU open (two-component),
    /// or every sample (linear).
    fn regime(&self, j: usize) -> Regime {
        let (gi, mg) = (j / self.per_group, j % self.per_group);
        let col = |b: usize| b * self.per_group + mg;
        let sum = |c: usize| self.sums[gi * self.columns + c];
        let product = |k: usize, c: usize| self.products[(gi * self.fan_in + k) * self.columns + c];
        let per_input = |c: usize| (0..self.fan_in).map(|k| product(k, c)).collect::<Vec<f64>>();
        // Two-component: the mask's column counts the samples and sums x; linear: the ones'.
        let (count, y) = if self.two {
            (col(0), col(1))
        } else {
            (self.columns - 1, col(0))
        };
        Regime {
            n: sum(count),
            sum_y: sum(y),
            sum_x: per_input(count),
            sum_xy: per_input(y),
        }
    }

    /// The fitted pattern, shaped like the weight.
    pub(super) fn patterns(&self, l: &LinearLayer) -> LayerPattern {
        let mut a = vec![0f32; l.weight_values.len()];
        for j in 0..l.outputs() {
            let r = self.regime(j);
            // Fewer than half a sample: none (no sample opened the ReLU).
            if r.n < 0.5 {
                continue;
            }
            let mean_y = r.sum_y / r.n;
            let cov: Vec<f64> = (0..self.fan_in)
                .map(|k| r.sum_xy[k] / r.n - r.sum_x[k] / r.n * mean_y)
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
        LayerPattern {
            dims: l.weight_dims.clone(),
            values: a,
            two_component: self.two,
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
        RuleSet::Pattern(rules),
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
    use crate::onnx::patterns::Receptive;

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
            relu: None,
            weight: "w".into(),
            weight_dims: vec![2, 1],
            weight_values: vec![1.0, -1.0],
            receptive: Receptive::Dense { transposed: false },
        };
        let mut st = Statistics::new(&layer);
        // What the statistics pass outputs for this layer: per input the sums of x y and of x,
        // then the sums of y and the samples.
        let (mut products, mut sums) = (vec![0f32; 4], vec![0f32; 2]);
        // Every signal value with every distractor value: the two are uncorrelated.
        for i in 0..200 {
            let signal = (i / 10) as f32 / 10.0 - 1.0;
            let distractor = (i % 10) as f32 / 5.0 - 1.0;
            let x = [signal + distractor, distractor];
            let y = x[0] - x[1];
            for k in 0..2 {
                products[k * 2] += x[k] * y;
                products[k * 2 + 1] += x[k];
            }
            sums[0] += y;
            sums[1] += 1.0;
        }
        st.add(
            &Tensor::f32(vec![1, 1, 2, 2], products),
            &Tensor::f32(vec![1, 1, 2], sums),
        )
        .unwrap();
        let p = st.patterns(&layer);
        // s = (1, 0): the signal enters the first input only.
        assert!(
            (p.values[0] - 1.0).abs() < 1e-5 && p.values[1].abs() < 1e-5,
            "{:?}",
            p.values
        );
        assert!(!p.two_component);
    }
}
