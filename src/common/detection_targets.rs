//! A detector's targets: `{"detection": i}` (the i-th detection of this input's prediction,
//! re-derived from the same scores the job explains), `{"box": [...], "label": "..."}` (the
//! detection of that label that overlaps the box most), `top_k` (the k best) or, by default, the
//! best detection. Each resolves to the candidate that produced the detection: its class score's
//! position in a row of the scores output, which gradient methods weigh (a one-hot over the whole
//! output row: the scalar is exactly that score, so every rule set, LRP and DeepLIFT included,
//! explains it) and perturbation methods read on each perturbed row.

use std::collections::HashMap;

use super::targets::TargetSpec;
use super::Invalid;
use crate::pixels::Geometry;
use crate::runtime::detect::{self, Detection};
use crate::runtime::manifest::DetectionLayout;
use crate::runtime::predict::Prediction;
use crate::runtime::preprocess::InputError;
use crate::runtime::{LoadedModel, Tensor};

/// Values in one row of a detector's scores output: the positions a target can weigh (a
/// classifier's: its classes).
pub fn width(model: &LoadedModel) -> usize {
    let Some(d) = model.spec.detection.as_ref() else {
        return model.spec.labels.len().max(1);
    };
    match d.layout {
        DetectionLayout::Yolo => d.candidates.saturating_mul(d.stride(model.spec.labels.len())),
        DetectionLayout::BoxesScoresClasses => model
            .summary
            .outputs
            .iter()
            .find(|t| t.name == model.spec.output)
            .and_then(|t| t.shape.as_ref()?.get(1)?.fixed())
            .unwrap_or(model.spec.labels.len()),
    }
    .max(1)
}

/// The detections of one input: `scores` a row of the scores output, `others` a row of another.
pub fn detections(
    model: &LoadedModel,
    scores: &[f64],
    others: &dyn Fn(&str) -> Option<Vec<f64>>,
) -> Result<Vec<Detection>, InputError> {
    let extra: HashMap<String, Vec<f64>> = model
        .spec
        .detection
        .iter()
        .flat_map(|d| d.other_outputs())
        .filter_map(|name| Some((name.clone(), others(&name)?)))
        .collect();
    detect::decode(&model.spec, |name| match name == model.spec.output {
        true => Some(scores),
        false => extra.get(name).map(Vec::as_slice),
    })
    .map_err(InputError::BadFeatures)
}

/// The detection a target names, as the prediction a method explains: `index` the position of
/// its class score in the scores row, `label` its class, `score` its score.
pub fn as_prediction(model: &LoadedModel, d: &Detection) -> Prediction {
    Prediction {
        index: d.position,
        label: model
            .spec
            .labels
            .get(d.class)
            .cloned()
            .unwrap_or_else(|| format!("class_{}", d.class)),
        score: d.score,
    }
}

/// Resolves a detector's targets (boxes already on the model's input grid, see
/// [`in_input_pixels`]).
pub fn resolve(
    spec: Option<&TargetSpec>,
    model: &LoadedModel,
    scores: &[f64],
    others: &dyn Fn(&str) -> Option<Vec<f64>>,
    max_targets: usize,
) -> Result<Vec<Prediction>, InputError> {
    pick(spec, model, &detections(model, scores, others)?, max_targets)
}

/// A detector's detections in `scores` (and the outputs `others` reads) and the targets picked
/// among them.
pub fn detect_and_pick(
    spec: Option<&TargetSpec>,
    model: &LoadedModel,
    scores: &[f64],
    others: &dyn Fn(&str) -> Option<Vec<f64>>,
    max_targets: usize,
) -> Result<(Vec<Prediction>, Vec<Detection>), InputError> {
    let found = detections(model, scores, others)?;
    let targets = pick(spec, model, &found, max_targets)?;
    Ok((targets, found))
}

/// Resolves a detector's targets among `found`, the input's detections.
pub fn pick(
    spec: Option<&TargetSpec>,
    model: &LoadedModel,
    found: &[Detection],
    max_targets: usize,
) -> Result<Vec<Prediction>, InputError> {
    let threshold = model.spec.detection.as_ref().map_or(0.0, |d| d.score_threshold);
    let none = || {
        InputError::BadFeatures(format!(
            "no detection to explain: model `{}` found none scoring at least {threshold} in this input",
            model.name
        ))
    };
    let chosen: Vec<&Detection> = match spec {
        None => vec![found.first().ok_or_else(none)?],
        Some(TargetSpec::TopK { top_k }) => {
            if found.is_empty() {
                return Err(none());
            }
            found.iter().take((*top_k).max(1)).collect()
        }
        Some(TargetSpec::Detection { detection }) => vec![found.get(*detection).ok_or_else(|| {
            InputError::BadFeatures(format!(
                "detection {detection} is out of range: model `{}` found {} detection{} in this input \
                 (numbered from 0, best first)",
                model.name,
                found.len(),
                if found.len() == 1 { "" } else { "s" }
            ))
        })?],
        Some(TargetSpec::Box { bbox, label }) => {
            let b = bbox.map(|v| v as f32);
            let class = label
                .as_ref()
                .and_then(|l| model.spec.labels.iter().position(|x| x == l));
            let best = found
                .iter()
                .filter(|d| class.is_none_or(|c| c == d.class))
                .map(|d| (detect::iou(&b, &d.bbox), d))
                .filter(|(iou, _)| *iou > 0.0)
                .max_by(|a, b| a.0.total_cmp(&b.0));
            vec![best.map(|(_, d)| d).ok_or_else(|| {
                InputError::BadFeatures(format!(
                    "no detection{} overlaps the box; model `{}` found {} in this input",
                    label.as_ref().map(|l| format!(" labelled `{l}`")).unwrap_or_default(),
                    model.name,
                    found.len()
                ))
            })?]
        }
        Some(TargetSpec::One(_) | TargetSpec::Many(_)) => return Err(InputError::BadFeatures(refused_kind())),
    };
    if chosen.len() > max_targets {
        return Err(InputError::BadFeatures(format!(
            "{} targets; at most {max_targets} per request",
            chosen.len()
        )));
    }
    Ok(chosen.into_iter().map(|d| as_prediction(model, d)).collect())
}

/// A pass of a post-NMS (`boxes-scores-classes`) detector read against `reference`, the explained
/// input's detections: each row's scores as [`detect::matched_scores`] gives them (the score of
/// each detection's match in that row, at the detection's position), `outputs` holding the pass's
/// boxes and classes. Other detectors' candidates keep their positions: `scores` as it is.
pub fn matched(
    model: &LoadedModel,
    reference: &[Detection],
    outputs: &HashMap<String, Tensor>,
    scores: Tensor,
) -> Result<Tensor, InputError> {
    let post_nms = model
        .spec
        .detection
        .as_ref()
        .is_some_and(|d| d.layout == DetectionLayout::BoxesScoresClasses);
    if !post_nms {
        return Ok(scores);
    }
    let rows = scores.rows();
    let mut values: HashMap<&str, (Vec<f64>, usize)> = HashMap::new();
    values.insert(&model.spec.output, (scores.to_f64(), scores.row_len()));
    for name in model
        .spec
        .detection
        .iter()
        .flat_map(|d| [&d.boxes, &d.classes])
        .flatten()
    {
        let t = outputs
            .get(name)
            .ok_or_else(|| InputError::BadFeatures(format!("output `{name}` missing from the run")))?;
        values.insert(name, (t.to_f64(), t.row_len()));
    }
    let mut out = Vec::with_capacity(rows * scores.row_len());
    for r in 0..rows {
        let read = |name: &str| {
            let (v, len) = values.get(name)?;
            v.get(r * len..(r + 1) * len)
        };
        let row = detect::matched_scores(&model.spec, reference, read).map_err(InputError::BadFeatures)?;
        out.extend(row.into_iter().map(|v| v as f32));
    }
    Ok(Tensor::f32(scores.shape.clone(), out))
}

fn refused_kind() -> String {
    "a detector's targets are {\"detection\": i}, {\"box\": [x0, y0, x1, y1], \"label\": \"...\"} or \
     {\"top_k\": k}; a class alone names no detection"
        .into()
}

/// Checks a detector's targets before any work; returns how many the request explains.
pub fn check(spec: Option<&TargetSpec>, model: &LoadedModel, max_targets: usize) -> Result<usize, Invalid> {
    let count = match spec {
        None | Some(TargetSpec::Detection { .. }) => 1,
        Some(TargetSpec::TopK { top_k: 0 }) => return Err(Invalid::Request("top_k must be at least 1".into())),
        Some(TargetSpec::TopK { top_k }) => *top_k,
        Some(TargetSpec::Box { bbox, label }) => {
            if !bbox.iter().all(|v| v.is_finite()) || bbox[0] >= bbox[2] || bbox[1] >= bbox[3] {
                return Err(Invalid::Request(format!(
                    "the box {bbox:?} is empty: give [x0, y0, x1, y1] with x0 < x1 and y0 < y1"
                )));
            }
            if let Some(l) = label.as_ref().filter(|l| !model.spec.labels.contains(l)) {
                return Err(Invalid::Model(format!(
                    "no class labelled `{l}`; GET /v1/models/{} lists the labels",
                    model.name
                )));
            }
            1
        }
        Some(TargetSpec::One(_) | TargetSpec::Many(_)) => return Err(Invalid::Model(refused_kind())),
    };
    if count > max_targets {
        return Err(Invalid::Model(format!(
            "{count} targets; at most {max_targets} per request (max_targets)"
        )));
    }
    Ok(count)
}

/// A box target brought from the original image's pixels onto the model's `width x height` input
/// grid (the geometry of its preprocessing); other targets as they are. A box reaching outside the
/// image is refused.
pub fn in_input_pixels(
    spec: Option<TargetSpec>,
    geometry: Option<&Geometry>,
    (width, height): (usize, usize),
) -> Result<Option<TargetSpec>, Invalid> {
    let (Some(TargetSpec::Box { bbox, label }), Some(g)) = (&spec, geometry) else {
        return Ok(spec);
    };
    let (w, h) = (f64::from(g.original_width), f64::from(g.original_height));
    if bbox[0] < 0.0 || bbox[1] < 0.0 || bbox[2] > w || bbox[3] > h {
        return Err(Invalid::Request(format!(
            "the box {bbox:?} reaches outside the image, which is {w} x {h} pixels"
        )));
    }
    let b = g.box_to_input(bbox.map(|v| v as f32), width, height);
    Ok(Some(TargetSpec::Box {
        bbox: b.map(f64::from),
        label: label.clone(),
    }))
}
