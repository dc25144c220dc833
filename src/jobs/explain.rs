//! An explanation as a worker's job: the method, then the metrics asked of its maps on the same
//! workbench, then the randomisation check (which re-runs the method on other models).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::eval::{Evaluation, ValidMetric};
use crate::executor::Task;
use crate::explain::{Cx, ExplainJob, TargetAttribution};
use crate::runtime::job::PassCost;
use crate::runtime::{JobContext, RuntimeError, Tensor, WorkerRuntime};

/// What an explanation job produced.
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
    pub evaluations: Vec<Vec<Evaluation>>,
    /// Time inside the method's ONNX Runtime runs.
    pub model_time: Duration,
    /// Time on the worker: those runs and the method's own arithmetic.
    pub worker_time: Duration,
    /// Segmenters: per target, the region its class scores were summed over, on the model's
    /// input grid (what the drawing outlines).
    pub regions: Vec<Option<std::sync::Arc<crate::common::targets::RegionMask>>>,
    /// A detector's detections of the input (input pixels), for drawing; empty for other models.
    pub detections: Vec<crate::runtime::detect::Detection>,
    /// What the answer cost in pass units, as the runtime counted its passes.
    pub cost: PassCost,
}

/// An explanation as a job for a worker: the method's job, and the metrics of each target's map.
pub struct ExplainTask {
    /// The method's job.
    pub job: ExplainJob,
    /// Metrics of each target's explanation, run in the same job.
    pub evaluate: Vec<ValidMetric>,
}

impl ExplainTask {
    /// The method's job alone, no metrics.
    pub fn new(job: ExplainJob) -> Self {
        Self {
            job,
            evaluate: Vec::new(),
        }
    }
}

impl Task for ExplainTask {
    type Output = ExplainResult;

    fn run(self, rt: &mut WorkerRuntime, ctx: &JobContext) -> Result<ExplainResult, RuntimeError> {
        run(rt, ctx, &self.job, &self.evaluate)
    }

    fn bytes(&self) -> u64 {
        self.job.params.cost().bytes
    }
}

/// Runs `job`'s method and the metrics `evaluate` asks of its maps.
pub fn run(
    rt: &mut WorkerRuntime,
    ctx: &JobContext,
    job: &ExplainJob,
    evaluate: &[ValidMetric],
) -> Result<ExplainResult, RuntimeError> {
    let began = Instant::now();
    // A segmenter explains its region sums, on a model lent to this job.
    let on_regions = super::region::on_regions(rt, ctx, job)?;
    let job = on_regions.as_ref().map_or(job, |on| &on.job);
    // A job may run several explanations (a comparison): this one's passes are those counted from here.
    let counted = ctx.cost();
    let (run, evaluations) = crate::explain::run(
        rt,
        ctx,
        job,
        |targets| evaluation_rows(job, evaluate, targets),
        |cx, attributions, detections| evaluate_attributions(cx, job, evaluate, attributions, detections),
    )?;
    let regions = run
        .attributions
        .iter()
        .map(|a| {
            on_regions
                .as_ref()
                .and_then(|on| on.regions.get(a.target.index).cloned())
        })
        .collect();
    let mut result = ExplainResult {
        regions,
        attributions: run.attributions,
        rows: run.rows,
        planned_rows: run.planned_rows,
        runs: run.runs,
        gradient_rows: run.gradient_rows,
        scores: run.scores,
        evaluations,
        model_time: run.model_time,
        worker_time: Duration::ZERO,
        detections: run.detections,
        cost: PassCost::default(),
    };
    // The randomisation check re-runs the method on other models: after the method's own passes.
    for metric in evaluate {
        if let ValidMetric::Randomization { layers } = metric {
            let checks = super::sanity::model_randomization(rt, ctx, job, &result, *layers)?;
            for (list, check) in result.evaluations.iter_mut().zip(checks) {
                list.push(check);
            }
        }
    }
    result.worker_time = began.elapsed();
    result.cost = PassCost {
        worker_ms: result.worker_time.as_secs_f64() * 1e3,
        ..ctx.cost().since(&counted)
    };
    Ok(result)
}

/// Model rows the metrics `evaluate` asks will run on `targets` maps.
fn evaluation_rows(job: &ExplainJob, evaluate: &[ValidMetric], targets: usize) -> usize {
    let features = crate::eval::feature_count(&job.model);
    evaluate
        .iter()
        .map(|m| m.rows(features))
        .fold(0usize, usize::saturating_add)
        .saturating_mul(targets)
}

/// The metrics `evaluate` asks, on each target's map (pixels of the model's input, or features),
/// their passes batched and counted as the method's are; a detector's target is its detection
/// among `detections` (the input's).
fn evaluate_attributions(
    cx: &mut Cx,
    job: &ExplainJob,
    evaluate: &[ValidMetric],
    attributions: &[TargetAttribution],
    detections: &[crate::runtime::detect::Detection],
) -> Result<Vec<Vec<Evaluation>>, RuntimeError> {
    if evaluate.is_empty() {
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
            detection: detections.iter().find(|d| d.position == a.target.index),
        };
        let model = job.model.clone();
        let mut score = |t: &Tensor| match model.spec.detection {
            // A post-NMS detector's boxes and classes are further outputs.
            Some(_) => cx.forward_with(&model, &[], t),
            None => Ok(HashMap::from([(model.spec.output.clone(), cx.forward(t)?)])),
        };
        all.push(crate::eval::evaluate(&subject, evaluate, &mut score)?);
    }
    Ok(all)
}
