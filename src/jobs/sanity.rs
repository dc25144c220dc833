//! The model randomisation check (Adebayo et al., 2018): the method runs again on copies of the
//! model whose last layers' weights are re-drawn (normal noise of each tensor's own mean and
//! spread, seeded), one more layer per step from the output, and each map is compared with the
//! original by Spearman rank correlation. An explanation whose map barely changes does not depend
//! on what the model learned.

use std::sync::atomic::{AtomicU64, Ordering};

use super::explain::run;
use super::ExplainResult;
use crate::common::targets::{TargetRef, TargetSpec};
use crate::eval::{spearman, Evaluation, Metric};
use crate::explain::{ExplainJob, TargetAttribution};
use crate::onnx::randomize::{randomized, weighted_layers};
use crate::runtime::JobContext;
use crate::runtime::{LoadedModel, RuntimeError, WorkerRuntime};

/// Each lent copy gets a name of its own, so concurrent checks never share one.
static COPIES: AtomicU64 = AtomicU64::new(0);

/// Per target of `result`, the check over `layers` cascading steps (every weighted layer when
/// `None`).
pub(super) fn model_randomization(
    rt: &mut WorkerRuntime,
    ctx: &JobContext,
    job: &ExplainJob,
    result: &ExplainResult,
    layers: Option<usize>,
) -> Result<Vec<Evaluation>, RuntimeError> {
    let model = &job.model;
    let decoded = crate::onnx::proto::decode_model(&model.bytes).map_err(|e| RuntimeError::Inference {
        model: model.name.clone(),
        message: e.to_string(),
    })?;
    let weighted = weighted_layers(&decoded);
    let steps = layers.unwrap_or(weighted.len()).min(weighted.len());
    // The same classes as the original explanation, whatever the copies predict.
    let indices: Vec<TargetRef> = result
        .attributions
        .iter()
        .map(|a| TargetRef::Index(a.target.index))
        .collect();
    let originals: Vec<&[f32]> = result.attributions.iter().map(map_of).collect();
    let mut curves = vec![Vec::with_capacity(steps); originals.len()];
    let mut names = Vec::with_capacity(steps);
    let mut redrawn: Vec<String> = Vec::new();
    for (layer, tensors) in weighted.iter().rev().take(steps) {
        ctx.checkpoint()?;
        names.push(layer.clone());
        redrawn.extend(tensors.iter().cloned());
        let copy = randomized(&decoded, &redrawn, job.seed);
        let lent = rt.lend(copy_of(model, &copy))?;
        let randomized_job = ExplainJob {
            model: lent.model.clone(),
            targets: Some(TargetSpec::Many(indices.clone())),
            scores: None,
            scored_outputs: None,
            ..job.clone()
        };
        let again = run(rt, ctx, &randomized_job, &[])?;
        for ((curve, original), a) in curves.iter_mut().zip(&originals).zip(&again.attributions) {
            curve.push(spearman(original, map_of(a)).unwrap_or(f64::NAN));
        }
    }
    Ok(curves
        .into_iter()
        .map(|curve| Evaluation {
            metric: Metric::ModelRandomization,
            value: curve.last().copied().filter(|v| v.is_finite()),
            passes: 0,
            fraction: Some(
                (1..=curve.len())
                    .map(|k| k as f64 / weighted.len().max(1) as f64)
                    .collect(),
            ),
            curve: Some(curve),
            params: serde_json::json!({"layers": names, "seed": job.seed}),
        })
        .collect())
}

/// The map an attribution is compared by: its 2-D map, or its values.
fn map_of(a: &TargetAttribution) -> &[f32] {
    a.map.as_ref().unwrap_or(&a.tensor).as_f32().unwrap_or(&[])
}

/// A loaded model's twin with other weights, under a name of its own.
fn copy_of(model: &LoadedModel, weights: &crate::onnx::proto::ModelProto) -> LoadedModel {
    use prost::Message;
    let bytes = weights.encode_to_vec();
    let report = std::sync::OnceLock::new();
    if let Some(r) = model.gradient_report.get() {
        let _ = report.set(r.clone());
    }
    LoadedModel {
        name: format!("{}~randomized-{}", model.name, COPIES.fetch_add(1, Ordering::Relaxed)),
        dir: model.dir.clone(),
        sha256: String::new(),
        bytes: bytes.into(),
        summary: model.summary.clone(),
        spec: model.spec.clone(),
        gradient_report: report,
        background: model.background.clone(),
        forest: std::sync::OnceLock::new(),
        text: model.text.clone(),
    }
}
