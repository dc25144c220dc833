//! Explanation methods, one file each, on a shared context that runs batched model passes through
//! the worker's sessions. Methods never touch HTTP; the HTTP face validates requests into an
//! [`ExplainJob`], and renders what comes back.

mod anchors;
mod attention_rollout;
pub mod background;
pub mod baselines;
mod counterfactual;
mod deeplift;
mod deeplift_shap;
mod extremal;
mod grad_cam;
mod gradient_x_input;
mod guided;
mod influence;
mod integrated_gradients;
mod kernel_shap;
mod lime;
mod lrp;
pub mod method;
mod occlusion;
mod perturb;
mod players;
mod reference_query;
mod regression;
mod rise;
mod saliency;
mod sanity;
mod score_cam;
mod segments;
mod similar_examples;
mod smoothgrad;
pub mod targets;
mod transformer_relevance;
mod tree_shap;
mod workbench;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use deeplift::DeepLiftParams;
pub use deeplift_shap::DeepLiftShapParams;
pub use grad_cam::GradCamParams;
pub use gradient_x_input::GradientXInputParams;
pub use guided::{GuidedBackpropParams, GuidedGradCamParams};
pub use integrated_gradients::{IntegratedGradientsParams, Integration};
pub use kernel_shap::{KernelShapParams, Samples};
pub use lime::{Hide, LimeParams};
pub use method::{
    AnyMethod, Capabilities, Cost, Inputs, Invalid, Limits, Method, Methods, Passes, PlanContext, ValidParams,
};
pub use occlusion::OcclusionParams;
pub use perturb::Preset;
pub use players::TextUnit;
pub use rise::{RiseEstimator, RiseParams};
pub use saliency::SaliencyParams;
pub use score_cam::ScoreCamParams;
pub use smoothgrad::{SmoothGradBase, SmoothGradParams, SmoothGradVariant};
pub use targets::{TargetRef, TargetSpec};
pub use tree_shap::{FeaturePerturbation, TreeShapParams};
pub use workbench::Cx;

use crate::executor::{JobContext, Task};
use crate::onnx::autodiff::RuleSet;
use crate::runtime::manifest::{ImageSpec, Layout};
use crate::runtime::predict::Prediction;
use crate::runtime::sessions::GradientPass;
use crate::runtime::{LoadedModel, RuntimeError, Tensor, WorkerRuntime};

/// A validated explanation request: what the worker runs.
#[derive(Debug, Clone)]
pub struct ExplainJob {
    /// The model.
    pub model: Arc<LoadedModel>,
    /// The preprocessed input, `[1, ...]`.
    pub input: Tensor,
    /// Text models: the input's tokens (its rows are their embeddings).
    pub text: Option<Arc<crate::runtime::text::Encoded>>,
    /// Targets as requested.
    pub targets: Option<TargetSpec>,
    /// Method and parameters, validated against this model and the limits.
    pub params: ValidParams,
    /// Seed of the random methods.
    pub seed: u64,
    /// Work limits.
    pub limits: Limits,
    /// The input's scores when a prediction already computed them (saves a forward pass).
    pub scores: Option<Vec<f64>>,
    /// Metrics of each target's explanation, run in the same job.
    pub evaluate: Vec<crate::eval::ValidMetric>,
}

/// The attribution for one target.
#[derive(Debug, Clone)]
pub struct TargetAttribution {
    /// The explained class with its score.
    pub target: Prediction,
    /// Attribution in the model's input space (the input's shape without the batch axis).
    pub tensor: Tensor,
    /// For image models: a 2-D map over the model's input pixels, `[height, width]`.
    pub map: Option<Tensor>,
    /// Integrated Gradients and DeepLIFT: sum of attributions minus (f(input) - f(baseline));
    /// LRP: sum of input relevance minus the target's score (conservation).
    pub convergence_delta: Option<f64>,
    /// CAM methods: the layer used.
    pub layer: Option<String>,
    /// Method-specific results (LIME: segment weights, segment map, R^2, intercept).
    pub details: Option<serde_json::Value>,
}

impl TargetAttribution {
    /// The attribution of a method that produces one value per tabular feature.
    pub fn from_values(target: &Prediction, values: &[f64], details: serde_json::Value) -> Self {
        Self {
            target: target.clone(),
            tensor: Tensor::f32(vec![values.len()], values.iter().map(|v| *v as f32).collect()),
            map: None,
            convergence_delta: None,
            layer: None,
            details: Some(details),
        }
    }

    /// The answer of a method whose explanation is its `details` alone (reference rows), with no
    /// attribution over the input.
    pub fn from_details(target: &Prediction, details: serde_json::Value) -> Self {
        Self {
            target: target.clone(),
            tensor: Tensor::f32(vec![0], Vec::new()),
            map: None,
            convergence_delta: None,
            layer: None,
            details: Some(details),
        }
    }

    /// The attribution of a method that produces a `[height, width]` map over the input image.
    pub fn from_map(
        target: &Prediction,
        map: Tensor,
        layer: Option<String>,
        details: Option<serde_json::Value>,
    ) -> Self {
        Self {
            target: target.clone(),
            tensor: map.clone(),
            map: Some(map),
            convergence_delta: None,
            layer,
            details,
        }
    }
}

impl ExplainJob {
    /// A model output row as the forward-only methods weigh it: class probabilities for models
    /// whose output is logits (as RISE, Score-CAM, LIME and KernelSHAP's references do), else as it is.
    pub fn weighed_scores(&self, row: &[f64]) -> Vec<f64> {
        crate::runtime::predict::probabilities(&self.model, row)
    }

    /// The image preprocessing, or an error naming `method` for tabular models.
    pub fn image_spec(&self, method: &str) -> Result<&ImageSpec, RuntimeError> {
        self.model.spec.image.as_ref().ok_or_else(|| {
            crate::runtime::preprocess::InputError::WrongKind(format!("{method} explains image models")).into()
        })
    }
}

/// What an explanation run produced.
#[derive(Debug, Clone)]
pub struct ExplainResult {
    /// One entry per target.
    pub attributions: Vec<TargetAttribution>,
    /// Model rows run (forward or forward+backward), over all batches.
    pub rows: usize,
    /// Model rows the plan expected (what a job's progress counts towards).
    pub planned_rows: usize,
    /// ONNX Runtime runs (batches).
    pub runs: usize,
    /// Of `rows`, those run through the backward model.
    pub gradient_rows: usize,
    /// f(input) for each target, as scored when the explanation started.
    pub scores: Vec<f64>,
    /// Per target, the metrics asked (empty when none were).
    pub evaluations: Vec<Vec<crate::eval::Evaluation>>,
    /// Time inside the method's ONNX Runtime runs.
    pub model_time: Duration,
    /// Time on the worker: those runs and the method's own arithmetic.
    pub worker_time: Duration,
}

/// A zeroed batch buffer of `len` values, reserved fallibly: a plan's byte budget holds in code,
/// and an allocation the machine cannot give fails the job, not the process.
pub fn zeroed_batch(model: &str, len: usize) -> Result<Vec<f32>, RuntimeError> {
    let mut data = Vec::new();
    data.try_reserve_exact(len).map_err(|e| RuntimeError::Inference {
        model: model.to_string(),
        message: format!("cannot reserve a batch of {len} values: {e}"),
    })?;
    data.resize(len, 0f32);
    Ok(data)
}

/// `rows` copies of a one-row tensor.
pub fn repeat_rows(t: &Tensor, rows: usize) -> Tensor {
    let one = t.as_f32().unwrap_or(&[]);
    let mut data = Vec::with_capacity(one.len() * rows);
    for _ in 0..rows {
        data.extend_from_slice(one);
    }
    let mut shape = t.shape.clone();
    if let Some(first) = shape.first_mut() {
        *first = rows;
    }
    Tensor::f32(shape, data)
}

/// Per-row one-hot weights over `classes` outputs: row r targets `indices[r]`.
pub fn one_hot(indices: &[usize], classes: usize) -> Tensor {
    let mut data = vec![0f32; indices.len() * classes];
    for (r, &i) in indices.iter().enumerate() {
        data[r * classes + i] = 1.0;
    }
    Tensor::f32(vec![indices.len(), classes], data)
}

/// How to fold an image attribution's channels into one map.
#[derive(Debug, Clone, Copy)]
pub enum Fold {
    /// Largest absolute value over channels (Simonyan et al.'s saliency map).
    MaxAbs,
    /// Sum over channels (keeps the sign).
    Sum,
}

/// Folds row `row` of an image-shaped tensor `[N, ...]` into a `[height, width]` map.
pub fn fold_channels(t: &Tensor, row: usize, spec: &ImageSpec, fold: Fold) -> Tensor {
    let values = t.as_f32().unwrap_or(&[]);
    let (h, w, c) = (spec.height, spec.width, spec.channels);
    let base = row * h * w * c;
    let mut map = vec![0f32; h * w];
    for y in 0..h {
        for x in 0..w {
            let mut acc = 0f32;
            for ch in 0..c {
                let v = values[base
                    + match spec.layout {
                        Layout::NCHW => ch * h * w + y * w + x,
                        Layout::NHWC => (y * w + x) * c + ch,
                    }];
                acc = match fold {
                    Fold::MaxAbs => acc.max(v.abs()),
                    Fold::Sum => acc + v,
                };
            }
            map[y * w + x] = acc;
        }
    }
    Tensor::f32(vec![h, w], map)
}

/// The map of row `row` of an input-space attribution: images folded over channels to
/// `[height, width]`; texts summed over the embedding to one value per token, `[tokens]` (of
/// absolute values with `Fold::MaxAbs`). `None` for tabular models.
pub fn fold_map(job: &ExplainJob, t: &Tensor, row: usize, fold: Fold) -> Option<Tensor> {
    if let Some(spec) = job.model.spec.image.as_ref() {
        return Some(fold_channels(t, row, spec, fold));
    }
    let text = job.text.as_ref()?;
    let tokens = text.tokens.len();
    let per_row = t.shape.iter().skip(1).product::<usize>();
    let values = t.as_f32()?.get(row * per_row..(row + 1) * per_row)?;
    let map = crate::runtime::text::per_token(values, tokens, matches!(fold, Fold::MaxAbs));
    Some(Tensor::f32(vec![map.len()], map))
}

/// Row `row` of a tensor without the batch axis.
pub fn row(t: &Tensor, row: usize) -> Tensor {
    let mut r = t.slice_rows(row, row + 1);
    r.shape.remove(0);
    r
}

/// Runs the job's method.
pub fn run(rt: &mut WorkerRuntime, job_ctx: &JobContext, job: &ExplainJob) -> Result<ExplainResult, RuntimeError> {
    let began = Instant::now();
    let mut result = run_method(rt, job_ctx, job)?;
    // The randomisation check re-runs the method on other models: after the method's own passes.
    for metric in &job.evaluate {
        if let crate::eval::ValidMetric::Randomization { layers } = metric {
            let checks = sanity::model_randomization(rt, job_ctx, job, &result, *layers)?;
            for (list, check) in result.evaluations.iter_mut().zip(checks) {
                list.push(check);
            }
        }
    }
    result.worker_time = began.elapsed();
    Ok(result)
}

fn run_method(rt: &mut WorkerRuntime, job_ctx: &JobContext, job: &ExplainJob) -> Result<ExplainResult, RuntimeError> {
    let mut cx = Cx {
        rt,
        job_ctx,
        model: job.model.clone(),
        rows: 0,
        runs: 0,
        gradient_rows: 0,
        primed: None,
        scored: None,
        model_time: Duration::ZERO,
        row_len: job.input.row_len(),
    };
    // The top prediction of a fresh input, for a method whose first pass is one gradient pass:
    // the graph chooses the class, so that pass is the only one.
    if let Some(top) = primed_top_pass(&mut cx, job)? {
        let planned_rows = job.params.cost().rows.saturating_add(evaluation_rows(job, 1));
        job_ctx.plan(planned_rows);
        let (target, scores) = top;
        let attributions = job
            .params
            .explain(&mut cx, job, std::slice::from_ref(&target), &scores)?;
        let evaluations = evaluate_attributions(&mut cx, job, &attributions)?;
        return Ok(ExplainResult {
            evaluations,
            attributions,
            rows: cx.rows,
            planned_rows,
            runs: cx.runs,
            gradient_rows: cx.gradient_rows,
            scores: vec![scores.get(target.index).copied().unwrap_or(f64::NAN)],
            model_time: cx.model_time,
            worker_time: Duration::ZERO,
        });
    }
    let scores: Vec<f64> = match (&job.scores, job.params.with_scores(job)) {
        (Some(s), _) => s.clone(),
        (None, extra) if extra.is_empty() => cx.forward(&job.input)?.to_f64(),
        // One pass gives the scores and what the method reads besides them.
        (None, mut extra) => {
            let model = job.model.clone();
            if !extra.contains(&model.spec.output) {
                extra.push(model.spec.output.clone());
            }
            let outputs = cx.forward_with(&model, &extra, &job.input)?;
            let scores =
                outputs
                    .get(&model.spec.output)
                    .map(Tensor::to_f64)
                    .ok_or_else(|| RuntimeError::Inference {
                        model: model.name.clone(),
                        message: format!("output `{}` missing", model.spec.output),
                    })?;
            cx.scored = Some(outputs);
            scores
        }
    };
    // Indices and labels were checked at the edge; the top-k and top-1 need the scores.
    let targets = targets::resolve(job.targets.as_ref(), &job.model, &scores, job.limits.max_targets)?;
    let planned_rows = (1 + job.params.cost().rows).saturating_add(evaluation_rows(job, targets.len()));
    job_ctx.plan(planned_rows);
    let attributions = job.params.explain(&mut cx, job, &targets, &scores)?;
    let evaluations = evaluate_attributions(&mut cx, job, &attributions)?;
    let target_scores = targets
        .iter()
        .map(|t| scores.get(t.index).copied().unwrap_or(f64::NAN))
        .collect();
    Ok(ExplainResult {
        evaluations,
        attributions,
        rows: cx.rows,
        planned_rows,
        runs: cx.runs,
        gradient_rows: cx.gradient_rows,
        scores: target_scores,
        model_time: cx.model_time,
        worker_time: Duration::ZERO,
    })
}

/// The metrics `job.evaluate` asks, on each target's map (pixels of the model's input, or
/// features), their passes batched and counted as the method's are.
/// Model rows the metrics `job.evaluate` asks will run on `targets` maps.
fn evaluation_rows(job: &ExplainJob, targets: usize) -> usize {
    let features = crate::eval::feature_count(&job.model);
    job.evaluate
        .iter()
        .map(|m| m.rows(features))
        .fold(0usize, usize::saturating_add)
        .saturating_mul(targets)
}

fn evaluate_attributions(
    cx: &mut Cx,
    job: &ExplainJob,
    attributions: &[TargetAttribution],
) -> Result<Vec<Vec<crate::eval::Evaluation>>, RuntimeError> {
    if job.evaluate.is_empty() {
        return Ok(vec![Vec::new(); attributions.len()]);
    }
    let features = match &job.text {
        Some(text) => text.tokens.len(),
        None => crate::eval::feature_count(&job.model),
    };
    let mut all = Vec::with_capacity(attributions.len());
    for a in attributions {
        let map = a.map.as_ref().unwrap_or(&a.tensor);
        let values = map.as_f32().unwrap_or(&[]);
        if values.len() != features {
            return Err(RuntimeError::Inference {
                model: job.model.name.clone(),
                message: format!(
                    "a map of {} values for {features} features cannot be evaluated",
                    values.len()
                ),
            });
        }
        let subject = crate::eval::Subject {
            model: &job.model,
            input: &job.input,
            map: values,
            target: a.target.index,
            seed: job.seed,
            batch: cx.forward_rows(),
            text: job.text.as_deref(),
        };
        all.push(crate::eval::evaluate(&subject, &job.evaluate, &mut |t| cx.forward(t))?);
    }
    Ok(all)
}

/// Runs the method's one pass for the top prediction when it has one and the job asks for the top
/// prediction of a fresh input, and keeps it in `cx` for the method: the target and scores.
fn primed_top_pass(cx: &mut Cx, job: &ExplainJob) -> Result<Option<(Prediction, Vec<f64>)>, RuntimeError> {
    if job.scores.is_some() || job.targets.is_some() || job.input.rows() != 1 {
        return Ok(None);
    }
    let Some((layers, rules)) = job.params.one_pass(job) else {
        return Ok(None);
    };
    match cx.top_gradients(&layers, rules, job) {
        Ok((pass, target, scores)) => {
            cx.primed = Some(Primed {
                layers,
                rules,
                index: target.index,
                pass,
            });
            Ok(Some((target, scores)))
        }
        // A model whose output the graph cannot rank (only `[batch, classes]`) takes two passes.
        Err(RuntimeError::NotDifferentiable { message, .. }) => {
            tracing::debug!(%message, "no one-pass top prediction; a forward pass chooses the target");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// A gradient pass already run for the top prediction, waiting for the method to ask for it.
struct Primed {
    layers: Vec<String>,
    rules: RuleSet,
    index: usize,
    pass: GradientPass,
}

impl Primed {
    /// Whether a request for this pass is the one already run: same graph, one row, the weights
    /// the one-hot of the chosen class.
    fn answers(&self, layers: &[String], rules: RuleSet, input: &Tensor, weights: &Tensor) -> bool {
        let w = weights.as_f32().unwrap_or(&[]);
        self.layers == layers
            && self.rules == rules
            && input.rows() == 1
            && w.iter()
                .enumerate()
                .all(|(i, v)| *v == if i == self.index { 1.0 } else { 0.0 })
            && w.len() > self.index
    }
}

/// An explanation as a job for a worker.
pub struct ExplainTask(pub ExplainJob);

impl Task for ExplainTask {
    type Output = ExplainResult;

    fn run(self, rt: &mut WorkerRuntime, ctx: &JobContext) -> Result<ExplainResult, RuntimeError> {
        run(rt, ctx, &self.0)
    }

    fn bytes(&self) -> u64 {
        self.0.params.cost().bytes
    }
}

/// Several methods on one input, in one job: the input's forward pass is run once and shared, so
/// the methods start from the same scores.
pub struct CompareTask(pub Vec<ExplainJob>);

impl Task for CompareTask {
    type Output = Vec<ExplainResult>;

    fn bytes(&self) -> u64 {
        self.0
            .iter()
            .map(|j| j.params.cost().bytes)
            .fold(0, u64::saturating_add)
    }

    fn run(self, rt: &mut WorkerRuntime, ctx: &JobContext) -> Result<Vec<ExplainResult>, RuntimeError> {
        let Some(first) = self.0.first() else {
            return Ok(Vec::new());
        };
        ctx.checkpoint()?;
        let model = &first.model;
        let mut outputs = rt.run(model, &first.input)?;
        let scores = outputs
            .remove(&model.spec.output)
            .ok_or_else(|| RuntimeError::Inference {
                model: model.name.clone(),
                message: format!("output `{}` missing", model.spec.output),
            })?
            .to_f64();
        self.0
            .into_iter()
            .map(|mut job| {
                job.scores = Some(scores.clone());
                run(rt, ctx, &job)
            })
            .collect()
    }
}

/// When a prediction should carry an explanation.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// Explain only when the top prediction has one of these labels.
    pub labels: Option<Vec<String>>,
    /// Explain only when the top prediction's score is at least this.
    pub min_score: Option<f32>,
}

impl Condition {
    /// Whether the top prediction meets the condition.
    pub fn holds(&self, top: &Prediction) -> bool {
        self.labels.as_ref().is_none_or(|l| l.contains(&top.label)) && self.min_score.is_none_or(|m| top.score >= m)
    }
}

/// An explanation attached to a prediction, for the rows meeting `when`.
pub struct AttachedExplain {
    /// Method and parameters of the explanations, validated.
    pub params: ValidParams,
    /// Targets to explain (default: top-1).
    pub targets: Option<TargetSpec>,
    /// Seed of random methods.
    pub seed: u64,
    /// Work limits.
    pub limits: Limits,
    /// Which rows to explain.
    pub when: Condition,
    /// Metrics of each explanation.
    pub evaluate: Vec<crate::eval::ValidMetric>,
}

/// A prediction with what is attached to it, in one job: explanations (reusing the prediction's
/// forward pass) and uncertainty estimates, each for the rows meeting its condition.
pub struct PredictJob {
    /// The prediction.
    pub predict: crate::runtime::predict::PredictTask,
    /// The attached explanation.
    pub explain: Option<AttachedExplain>,
    /// The attached uncertainty estimate, and the rows it is for.
    pub uncertainty: Option<(crate::uncertainty::ValidUncertainty, Condition)>,
    /// Text models: each row's tokens.
    pub texts: Vec<Option<Arc<crate::runtime::text::Encoded>>>,
}

/// What a [`PredictJob`] gives, one entry per row.
pub struct PredictOutput {
    /// Predictions.
    pub rows: Vec<crate::runtime::predict::RowPrediction>,
    /// Explanations of the rows meeting their condition.
    pub explained: Vec<Option<ExplainResult>>,
    /// Uncertainty estimates of the rows meeting their condition.
    pub estimates: Vec<Option<crate::uncertainty::Estimate>>,
}

/// Indices of the rows whose top prediction meets `when`.
fn rows_meeting(rows: &[crate::runtime::predict::RowPrediction], when: &Condition) -> Vec<usize> {
    (0..rows.len())
        .filter(|&r| rows[r].predictions.first().is_some_and(|top| when.holds(top)))
        .collect()
}

impl Task for PredictJob {
    type Output = PredictOutput;

    fn bytes(&self) -> u64 {
        // Each row may be explained, as max_job_bytes counts them.
        let rows = self.predict.inputs.first().map_or(1, Tensor::rows) as u64;
        self.explain
            .as_ref()
            .map_or(0, |e| e.params.cost().bytes.saturating_mul(rows))
    }

    fn run(self, rt: &mut WorkerRuntime, ctx: &JobContext) -> Result<Self::Output, RuntimeError> {
        let p = &self.predict;
        ctx.checkpoint()?;
        let rows = crate::runtime::predict::predict_rows(rt, &p.model, &p.inputs, p.top_k)?;
        let mut estimates = vec![None; rows.len()];
        if let Some((valid, when)) = &self.uncertainty {
            let chosen = rows_meeting(&rows, when);
            if !chosen.is_empty() {
                let parts = chosen
                    .iter()
                    .filter_map(|&r| crate::runtime::predict::nth_row(&p.inputs, r))
                    .collect();
                let input = Tensor::concat_rows(parts).ok_or_else(|| RuntimeError::Inference {
                    model: p.model.name.clone(),
                    message: "inputs differ in shape".into(),
                })?;
                let found = crate::uncertainty::run(rt, ctx, valid, &input)?;
                for (r, estimate) in chosen.into_iter().zip(found) {
                    estimates[r] = Some(estimate);
                }
            }
        }
        let mut explained: Vec<Option<ExplainResult>> = (0..rows.len()).map(|_| None).collect();
        if let Some(e) = &self.explain {
            for r in rows_meeting(&rows, &e.when) {
                let job = ExplainJob {
                    model: p.model.clone(),
                    input: crate::runtime::predict::nth_row(&p.inputs, r).ok_or_else(|| RuntimeError::Inference {
                        model: p.model.name.clone(),
                        message: format!("no input row {r}"),
                    })?,
                    text: self.texts.get(r).cloned().flatten(),
                    targets: e.targets.clone(),
                    params: e.params.clone(),
                    seed: e.seed,
                    limits: e.limits,
                    scores: rows[r].outputs.get(&p.model.spec.output).cloned(),
                    evaluate: e.evaluate.clone(),
                };
                explained[r] = Some(run(rt, ctx, &job)?);
            }
        }
        Ok(PredictOutput {
            rows,
            explained,
            estimates,
        })
    }
}

/// Input gradients for every target at `input` (one row per target): shared by the simple methods.
fn input_gradients(
    cx: &mut Cx,
    job: &ExplainJob,
    targets: &[Prediction],
    rules: RuleSet,
) -> Result<Tensor, RuntimeError> {
    let classes = job.model.spec.labels.len().max(1);
    let indices: Vec<usize> = targets.iter().map(|t| t.index).collect();
    let input = repeat_rows(&job.input, targets.len());
    let weights = one_hot(&indices, classes);
    let chunk = cx.max_batch();
    Ok(cx.gradients(&[], rules, &input, &weights, chunk)?.input_grad)
}

/// Builds the per-target results from per-row attribution tensors.
fn per_target(job: &ExplainJob, targets: &[Prediction], attributions: &Tensor, fold: Fold) -> Vec<TargetAttribution> {
    targets
        .iter()
        .enumerate()
        .map(|(r, t)| TargetAttribution {
            target: t.clone(),
            tensor: row(attributions, r),
            map: fold_map(job, attributions, r, fold),
            convergence_delta: None,
            layer: None,
            details: None,
        })
        .collect()
}
