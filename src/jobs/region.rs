//! Segmentation targets: the sum of a class's scores over a region (the class's predicted region,
//! or the caller's). One forward pass reads the prediction; the job then runs on the segmenter with
//! the region sums as its `[batch, classes]` output ([`crate::onnx::region`]), so the method, its
//! metrics and the randomisation check explain that scalar as they explain a class score. That
//! model is derived once per segmenter, the regions a graph input: its sessions and backward
//! graphs serve every request, each feeding its own regions as a constant input.

use std::sync::Arc;

use crate::common::targets::{self, RegionMask};
use crate::explain::ExplainJob;
use crate::onnx::region::{with_region_sums, ClassAxis, REGION_MASK_INPUT, REGION_OUTPUT};
use crate::runtime::manifest::{Constant, Layout, ScoreKind};
use crate::runtime::preprocess::InputError;
use crate::runtime::segmentation::{class_map, grid, index};
use crate::runtime::tensor::TensorData;
use crate::runtime::{JobContext, LoadedModel, RuntimeError, WorkerRuntime};

/// A segmenter's job on its region sums: the job that explains them, and each target class's
/// region on the model's input grid (for drawing).
pub struct OnRegions {
    /// The job, on the segmenter with its region sums as output and this job's regions fed as its
    /// mask input, its scores the region sums.
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
    let axis = match seg.layout {
        Layout::NCHW => ClassAxis::First,
        Layout::NHWC => ClassAxis::Last,
    };
    let derived = rt.derived_model(&region_model_name(model), || {
        let decoded = crate::onnx::proto::decode_model(&model.bytes).map_err(|e| fail(e.to_string()))?;
        let derived = with_region_sums(&decoded, &model.spec.output, axis, dims).map_err(fail)?;
        Ok(region_model(model, &derived))
    })?;
    let mask_shape = match axis {
        ClassAxis::First => vec![1, classes, height, width],
        ClassAxis::Last => vec![1, height, width, classes],
    };
    // The model was derived for one output grid (the image size the manifest fixes).
    let fed = derived.summary.inputs.iter().find(|t| t.name == REGION_MASK_INPUT);
    let fits = fed.and_then(|t| t.shape.as_ref()).is_some_and(|s| {
        s.iter()
            .map(crate::onnx::Dim::fixed)
            .eq(mask_shape.iter().map(|d| Some(*d)))
    });
    if !fits {
        return Err(fail(format!(
            "output `{}` is {:?}, not the grid its region sums were derived for",
            model.spec.output, scores.shape
        )));
    }
    let regions_fed = Constant {
        name: REGION_MASK_INPUT.to_string(),
        shape: mask_shape,
        batched: false,
        value: TensorData::F32(mask),
    };
    let on_model = Arc::new(region_model_fed(&derived, regions_fed));
    let targets = targets::resolve(job.targets.as_ref(), &on_model, &sums, job.limits.max_targets)?;
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
        model: on_model,
        scores: Some(sums),
        ..job.clone()
    };
    Ok(Some(OnRegions { job: on, regions }))
}

/// The name the segmenter's region-sum model is served under.
fn region_model_name(model: &LoadedModel) -> String {
    format!("{}~regions", model.name)
}

/// The region-sum model with one job's regions as the constant its mask input is fed.
fn region_model_fed(derived: &LoadedModel, regions: Constant) -> LoadedModel {
    let mut spec = derived.spec.clone();
    spec.constants.retain(|c| c.name != REGION_MASK_INPUT);
    spec.constants.push(regions);
    LoadedModel {
        name: derived.name.clone(),
        dir: derived.dir.clone(),
        sha256: derived.sha256.clone(),
        bytes: derived.bytes.clone(),
        summary: derived.summary.clone(),
        spec,
        gradient_report: derived.gradient_report.clone(),
        background: derived.background.clone(),
        forest: std::sync::OnceLock::new(),
        text: derived.text.clone(),
    }
}

/// The segmenter with its region sums as the scores it explains (raw sums, one per class), its
/// mask a graph input.
fn region_model(model: &LoadedModel, derived: &crate::onnx::proto::ModelProto) -> LoadedModel {
    use prost::Message;
    let mut spec = model.spec.clone();
    spec.output = REGION_OUTPUT.to_string();
    spec.scores = ScoreKind::Raw;
    spec.segmentation = None;
    LoadedModel {
        name: region_model_name(model),
        dir: model.dir.clone(),
        sha256: model.sha256.clone(),
        bytes: derived.encode_to_vec().into(),
        summary: crate::onnx::ModelSummary::of(derived),
        spec,
        gradient_report: model.gradient_report.clone(),
        background: model.background.clone(),
        forest: std::sync::OnceLock::new(),
        text: model.text.clone(),
    }
}
