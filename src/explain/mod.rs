//! Explanation methods, one file each, on a shared context that runs batched model passes through
//! the worker's sessions. Methods never touch HTTP; the HTTP face validates requests into an
//! [`ExplainJob`], and renders what comes back.

mod activation_maximisation;
mod anchors;
mod attention_rollout;
pub mod background;
pub mod baselines;
mod channel_attribution;
mod counterfactual;
mod d_rise;
mod deeplift;
mod deeplift_shap;
mod extremal;
mod grad_cam;
mod gradient_x_input;
mod guided;
mod influence;
mod integrated_gradients;
mod kernel_shap;
pub mod layer_information;
mod lime;
mod lrp;
pub mod method;
mod occlusion;
mod pattern_attribution;
mod pattern_net;
pub mod patterns;
mod perturb;
mod players;
mod reference_query;
mod regression;
mod rise;
mod saliency;
mod sampled_shapley;
mod sampling;
mod score_cam;
mod segments;
mod similar_examples;
mod slic;
mod smoothgrad;
pub mod tcav;
mod transformer_relevance;
mod tree_shap;
mod workbench;
mod xrai;

use std::sync::Arc;
use std::time::Duration;

pub use d_rise::DRiseParams;
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
pub use sampled_shapley::SampledShapleyParams;
pub use score_cam::ScoreCamParams;
pub use smoothgrad::{SmoothGradBase, SmoothGradParams, SmoothGradVariant};
// The vocabulary methods share with metrics and estimators, where methods have always found it.
pub use crate::common::batch::{fold_channels, one_hot, repeat_rows, row, zeroed_batch, Fold};
pub use crate::common::targets::{self, TargetRef, TargetSpec};
pub use tree_shap::{FeaturePerturbation, TreeShapParams};
pub use workbench::Cx;
pub use xrai::XraiParams;

use crate::onnx::autodiff::RuleSet;
use crate::runtime::manifest::ImageSpec;
use crate::runtime::predict::Prediction;
use crate::runtime::sessions::GradientPass;
use crate::runtime::JobContext;
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
    /// Segmenters: the caller's region on the model's input grid (absent: each target class's
    /// predicted region).
    pub region: Option<Arc<crate::common::targets::RegionMask>>,
    /// Method and parameters, validated against this model and the limits.
    pub params: ValidParams,
    /// Seed of the random methods.
    pub seed: u64,
    /// Work limits.
    pub limits: Limits,
    /// The input's scores when a prediction already computed them (saves a forward pass).
    pub scores: Option<Vec<f64>>,
    /// With `scores`: the same prediction's other outputs that targets read (a post-NMS
    /// detector's boxes and classes, one row each).
    pub scored_outputs: Option<std::collections::HashMap<String, Tensor>>,
    /// The model's reference set in force when the request was validated (the example-based
    /// methods read it; a set put in force meanwhile serves the next request).
    pub reference: Option<Arc<crate::examples::ReferenceSet>>,
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

/// What a method's run produced, counted on its workbench (with what a job ran after it there).
#[derive(Debug, Clone)]
pub struct MethodRun {
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
    /// Time inside the ONNX Runtime runs.
    pub model_time: Duration,
    /// A detector's detections of the input (boxes in input pixels; each target names one by its
    /// position), for drawing; empty for other models.
    pub detections: Vec<crate::runtime::detect::Detection>,
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

/// Runs the job's method.
/// Runs the job's method on a fresh workbench, then `after` on the same workbench (a job's
/// metrics, their passes batched and counted with the method's; a detector's detections of the
/// input beside the maps); `after_rows(targets)` is the rows `after` plans to run, for the job's
/// progress.
pub fn run<T>(
    rt: &mut WorkerRuntime,
    job_ctx: &JobContext,
    job: &ExplainJob,
    after_rows: impl Fn(usize) -> usize,
    after: impl FnOnce(&mut Cx, &[TargetAttribution], &[crate::runtime::detect::Detection]) -> Result<T, RuntimeError>,
) -> Result<(MethodRun, T), RuntimeError> {
    let mut cx = Cx {
        rt,
        job_ctx,
        model: job.model.clone(),
        rows: 0,
        runs: 0,
        gradient_rows: 0,
        primed: None,
        scored: None,
        matched: None,
        model_time: Duration::ZERO,
        row_len: job.input.row_len(),
    };
    // The target of a fresh input chosen in the graph of a method whose first pass is one gradient
    // pass (the top class; a detector's best detection), so that pass is the only one; else one
    // forward pass (or the prediction's scores) and the targets chosen from it.
    // A detector's detections of the input, for drawing (decoded once, from the same scores).
    let (targets, scores, detections, planned_rows) = match primed_top_pass(&mut cx, job)? {
        Some((targets, scores, detections)) => {
            // A pass the graph chose another target for is run again with the right one.
            let again = usize::from(cx.primed.is_none());
            let planned_rows = (again + job.params.cost().rows).saturating_add(after_rows(targets.len()));
            (targets, scores, detections, planned_rows)
        }
        None => {
            let scores = first_scores(&mut cx, job)?;
            // Indices and labels were checked at the edge; the top-k and top-1 need the scores
            // (a post-NMS detector's, its boxes and classes too).
            let scored = cx.scored.take();
            let others = |name: &str| scored.as_ref()?.get(name).map(Tensor::to_f64);
            let (targets, detections) = match job.model.spec.detection.is_some() {
                true => crate::common::detection_targets::detect_and_pick(
                    job.targets.as_ref(),
                    &job.model,
                    &scores,
                    &others,
                    job.limits.max_targets,
                )?,
                false => (
                    targets::resolve_with(
                        job.targets.as_ref(),
                        &job.model,
                        &scores,
                        &others,
                        job.limits.max_targets,
                    )?,
                    Vec::new(),
                ),
            };
            cx.scored = scored;
            let planned_rows = (1 + job.params.cost().rows).saturating_add(after_rows(targets.len()));
            (targets, scores, detections, planned_rows)
        }
    };
    // A post-NMS detector's other inputs (perturbed, masked) are read at each detection's match,
    // not at its slot, which their NMS may give to another box.
    let post_nms = job
        .model
        .spec
        .detection
        .as_ref()
        .is_some_and(|d| d.layout == crate::runtime::manifest::DetectionLayout::BoxesScoresClasses);
    if post_nms {
        cx.matched = Some(detections.clone());
    }
    job_ctx.plan(planned_rows);
    let attributions = job.params.explain(&mut cx, job, &targets, &scores)?;
    let extra = after(&mut cx, &attributions, &detections)?;
    let target_scores = targets
        .iter()
        .map(|t| scores.get(t.index).copied().unwrap_or(f64::NAN))
        .collect();
    let run = MethodRun {
        detections,
        attributions,
        rows: cx.rows,
        planned_rows,
        runs: cx.runs,
        gradient_rows: cx.gradient_rows,
        scores: target_scores,
        model_time: cx.model_time,
    };
    Ok((run, extra))
}

/// The input's scores: given by a prediction, or one forward pass that also keeps what the
/// method reads besides them ([`Method::with_scores`]).
fn first_scores(cx: &mut Cx, job: &ExplainJob) -> Result<Vec<f64>, RuntimeError> {
    let mut extra = job.params.with_scores(job);
    // A post-NMS detector's targets read its boxes and classes beside its scores.
    extra.extend(job.model.spec.detection.iter().flat_map(|d| d.other_outputs()));
    Ok(match (&job.scores, extra) {
        (Some(s), _) => {
            // The prediction's own boxes and classes, which a post-NMS detector's targets read.
            cx.scored = job.scored_outputs.clone();
            s.clone()
        }
        (None, extra) if extra.is_empty() => cx.forward(&job.input)?.to_f64(),
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
    })
}

/// Runs the method's one pass for the top prediction when it has one and the job asks for the top
/// prediction of a fresh input (a detector's: its best detection, `{"detection": 0}`), and keeps it
/// in `cx` for the method: the targets, the scores and a detector's detections. A detector's graph
/// takes its highest class score, which is the best detection unless it falls under the threshold:
/// the detections are decoded from the same pass's scores, and a pass whose choice differs is not
/// kept (the method runs its own, the targets being known; no forward pass).
fn primed_top_pass(cx: &mut Cx, job: &ExplainJob) -> Result<Option<Chosen>, RuntimeError> {
    let detector = job.model.spec.detection.as_ref();
    let best = match (detector, &job.targets) {
        (None, None) => true,
        (None, Some(_)) => false,
        // The candidates of a post-NMS output are its slots, ranked by its own graph.
        (Some(d), _) if d.layout != crate::runtime::manifest::DetectionLayout::Yolo => false,
        (Some(_), None | Some(TargetSpec::Detection { detection: 0 } | TargetSpec::TopK { top_k: 1 })) => true,
        (Some(_), Some(_)) => false,
    };
    if !best || job.scores.is_some() || job.input.rows() != 1 {
        return Ok(None);
    }
    let Some((layers, rules)) = job.params.one_pass(cx, job)? else {
        return Ok(None);
    };
    match cx.top_gradients(&layers, rules, job) {
        Ok((pass, chosen, scores)) => {
            let (targets, detections) = match detector {
                None => {
                    let spec = TargetSpec::One(TargetRef::Index(chosen));
                    (targets::resolve(Some(&spec), &job.model, &scores, 1)?, Vec::new())
                }
                Some(_) => crate::common::detection_targets::detect_and_pick(
                    job.targets.as_ref(),
                    &job.model,
                    &scores,
                    &|_| None,
                    job.limits.max_targets,
                )?,
            };
            if targets.len() == 1 && targets.first().is_some_and(|t| t.index == chosen) {
                cx.primed = Some(Primed {
                    layers,
                    rules,
                    index: chosen,
                    pass,
                });
            } else {
                tracing::debug!(
                    chosen,
                    "the graph chose another candidate than the detection; a second pass"
                );
            }
            Ok(Some((targets, scores, detections)))
        }
        // A model whose output the graph cannot rank (only `[batch, classes]` and a `yolo`
        // detector's candidates) takes two passes.
        Err(RuntimeError::NotDifferentiable { message, .. }) => {
            tracing::debug!(%message, "no one-pass top prediction; a forward pass chooses the target");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The targets a job explains, the input's scores and a detector's detections of the input.
type Chosen = (Vec<Prediction>, Vec<f64>, Vec<crate::runtime::detect::Detection>);

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
        self.answers_one(layers, rules, input, self.index)
            && w.iter()
                .enumerate()
                .all(|(i, v)| *v == if i == self.index { 1.0 } else { 0.0 })
            && w.len() > self.index
    }

    /// Whether a request for one row weighted on `index` alone is the pass already run.
    fn answers_one(&self, layers: &[String], rules: RuleSet, input: &Tensor, index: usize) -> bool {
        self.layers == layers && self.rules == rules && input.rows() == 1 && index == self.index
    }
}

/// Input gradients for every target at `input` (one row per target): shared by the simple methods.
fn input_gradients(
    cx: &mut Cx,
    job: &ExplainJob,
    targets: &[Prediction],
    rules: RuleSet,
) -> Result<Tensor, RuntimeError> {
    let classes = crate::common::detection_targets::width(&job.model);
    let indices: Vec<usize> = targets.iter().map(|t| t.index).collect();
    // One target reads the input itself (a 640 x 640 image is 4.9 MB to copy).
    let repeated;
    let input = match targets.len() {
        1 => &job.input,
        n => {
            repeated = repeat_rows(&job.input, n);
            &repeated
        }
    };
    // The pass already run for the one target chosen in the graph needs no weights built.
    if let [t] = targets {
        if let Some(primed) = cx.primed.take_if(|p| p.answers_one(&[], rules, input, t.index)) {
            return Ok(primed.pass.input_grad);
        }
    }
    let weights = one_hot(&indices, classes);
    let chunk = cx.max_batch();
    Ok(cx.gradients(&[], rules, input, &weights, chunk)?.input_grad)
}

/// Builds the per-target results from per-row attribution tensors (one target's row is the tensor
/// itself, moved rather than copied: a 640 x 640 image's gradient is 4.9 MB).
fn per_target(job: &ExplainJob, targets: &[Prediction], attributions: Tensor, fold: Fold) -> Vec<TargetAttribution> {
    let maps: Vec<Option<Tensor>> = (0..targets.len())
        .map(|r| fold_map(job, &attributions, r, fold))
        .collect();
    let tensors: Vec<Tensor> = match (targets.len(), attributions.shape.first()) {
        (1, Some(1)) => {
            let mut only = attributions;
            only.shape.remove(0);
            vec![only]
        }
        _ => (0..targets.len()).map(|r| row(&attributions, r)).collect(),
    };
    targets
        .iter()
        .zip(tensors)
        .zip(maps)
        .map(|((t, tensor), map)| TargetAttribution {
            target: t.clone(),
            tensor,
            map,
            convergence_delta: None,
            layer: None,
            details: None,
        })
        .collect()
}
