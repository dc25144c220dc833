//! Segmentation targets: the sum of a class's scores over a region (the class's predicted region,
//! or the caller's). One forward pass reads the prediction; the model is then lent to the job with
//! the region sums as its `[batch, classes]` output ([`crate::onnx::region`]), so the method, its
//! metrics and the randomisation check explain that scalar as they explain a class score.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::common::targets::{self, RegionMask};
use crate::explain::ExplainJob;
use crate::onnx::region::{with_region_sums, ClassAxis, REGION_OUTPUT};
use crate::runtime::manifest::{Layout, ScoreKind};
use crate::runtime::preprocess::InputError;
use crate::runtime::segmentation::{class_map, grid, index};
use crate::runtime::sessions::LentModel;
use crate::runtime::{JobContext, LoadedModel, RuntimeError, WorkerRuntime};

/// Each lent model gets a name of its own, so concurrent jobs never share one.
static LENT: AtomicU64 = AtomicU64::new(0);

/// A segmenter's job on its region sums: the lent model (served while this lives), the job that
/// explains it, and each target class's region on the model's input grid (for drawing).
pub struct OnRegions {
    /// The model with the region sums as its output: served to this job until this drops.
    _lent: LentModel,
    /// The job, on that model, its scores the region sums.
    pub job: ExplainJob,
    /// Per class, its region on the model's input grid.
    pub regions: Vec<Arc<RegionMask>>,
}

/// `job` on its region sums when its model is a segmenter; `None` for any other model.
pub fn on_regions(
    rt: &mut WorkerRuntime,
    ctx: &JobContext,
    job: &ExplainJob,
) -> Result<Option<OnRegions>, RuntimeError> {
    let model = &job.model;
    let (Some(seg), Some(image)) = (&model.spec.segmentation, &model.spec.image) else {
        return Ok(None);
    };
    ctx.checkpoint()?;
    let fail = |message: String| RuntimeError::Inference {
        model: model.name.clone(),
        message,
    };
    let outputs = rt.run(model, &job.input)?;
    let scores = outputs
        .get(&model.spec.output)
        .ok_or_else(|| fail(format!("output `{}` missing", model.spec.output)))?;
    let values = scores.as_f32().unwrap_or(&[]);
    let dims @ (classes, height, width) = grid(seg, &scores.shape)
        .ok_or_else(|| fail(format!("output `{}` is {:?}, not 4-D", model.spec.output, scores.shape)))?;
    // Each class's region on the output's grid: the caller's region for every class, else the
    // pixels the prediction gives the class.
    let per_class: Vec<Vec<bool>> = match &job.region {
        Some(r) => vec![r.resized(width, height).inside; classes],
        None => {
            let map = class_map(seg, model.spec.scores, &scores.shape, values)
                .ok_or_else(|| fail(format!("output `{}` does not fit its layout", model.spec.output)))?;
            (0..classes)
                .map(|c| map.pixels.iter().map(|p| *p == Some(c as u16)).collect())
                .collect()
        }
    };
    let mut mask = vec![0f32; values.len()];
    let mut sums = vec![0f64; classes];
    for (c, inside) in per_class.iter().enumerate() {
        for y in 0..height {
            for x in 0..width {
                if inside[y * width + x] {
                    let i = index(seg, dims, c, y, x);
                    mask[i] = 1.0;
                    sums[c] += values[i] as f64;
                }
            }
        }
    }
    let decoded = crate::onnx::proto::decode_model(&model.bytes).map_err(|e| fail(e.to_string()))?;
    let axis = match seg.layout {
        Layout::NCHW => ClassAxis::First,
        Layout::NHWC => ClassAxis::Last,
    };
    let derived = with_region_sums(&decoded, &model.spec.output, axis, dims, &mask).map_err(fail)?;
    let lent = rt.lend(region_model(model, derived))?;
    let targets = targets::resolve(job.targets.as_ref(), &lent.model, &sums, job.limits.max_targets)?;
    for t in &targets {
        if !per_class.get(t.index).is_some_and(|r| r.iter().any(|v| *v)) {
            return Err(InputError::BadFeatures(format!(
                "empty region: no pixel is predicted `{}`; give a `region` (a box, a polygon or a mask) to explain it",
                t.label
            ))
            .into());
        }
    }
    let regions = per_class
        .into_iter()
        .map(|inside| Arc::new(RegionMask { width, height, inside }.resized(image.width, image.height)))
        .collect();
    let on = ExplainJob {
        model: lent.model.clone(),
        scores: Some(sums),
        ..job.clone()
    };
    Ok(Some(OnRegions {
        _lent: lent,
        job: on,
        regions,
    }))
}

/// The segmenter lent with its region sums as the scores it explains: raw sums, one per class.
fn region_model(model: &LoadedModel, derived: crate::onnx::proto::ModelProto) -> LoadedModel {
    use prost::Message;
    let report = std::sync::OnceLock::new();
    if let Some(r) = model.gradient_report.get() {
        let _ = report.set(r.clone());
    }
    let mut spec = model.spec.clone();
    spec.output = REGION_OUTPUT.to_string();
    spec.scores = ScoreKind::Raw;
    spec.segmentation = None;
    LoadedModel {
        name: format!("{}~region-{}", model.name, LENT.fetch_add(1, Ordering::Relaxed)),
        dir: model.dir.clone(),
        sha256: model.sha256.clone(),
        bytes: derived.encode_to_vec().into(),
        summary: model.summary.clone(),
        spec,
        gradient_report: report,
        background: model.background.clone(),
        forest: std::sync::OnceLock::new(),
        text: model.text.clone(),
    }
}
