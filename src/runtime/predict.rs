//! A prediction pass: rows in, ranked classes (or a regression value) and raw outputs out.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;
use utoipa::ToSchema;

use super::detect::Row;
use super::manifest::ScoreKind;
use super::segmentation::{self, ClassMap};
use super::{LoadedModel, RuntimeError, Tensor, WorkerRuntime};

/// One class (or the regression value) with its score.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct Prediction {
    /// Class index in the output.
    pub index: usize,
    /// Class label from the manifest.
    pub label: String,
    /// Probability (softmax of logits, or the model's probability), or the regression value.
    pub score: f32,
}

/// What one input row gave.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RowPrediction {
    /// Classes by decreasing score, `top_k` of them (one entry for regression); a multi-label
    /// model's every label over its threshold, by decreasing probability; a segmenter's classes
    /// by decreasing share of the image (`score` is the share).
    pub predictions: Vec<Prediction>,
    /// Every tensor output of the model for this row, flattened (a segmenter's per-pixel scores
    /// left out: `segmentation` answers them; a detector's left out of answers: a YOLO head is most
    /// of a million numbers).
    pub outputs: BTreeMap<String, Vec<f64>>,
    /// A segmenter's answer: each class's area, and the mask when asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segmentation: Option<SegmentationAnswer>,
    /// A regressor's answer: the value with its name and unit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regression: Option<RegressionAnswer>,
    /// A segmenter's class per pixel on the output's grid (mapped onto the image when answered).
    #[serde(skip)]
    #[schema(ignore)]
    pub class_map: Option<ClassMap>,
    /// Detectors: the detections by decreasing score, boxes in the original image's pixels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detections: Option<Vec<super::detect::DetectionAnswer>>,
}

/// A segmenter's answer for one image.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SegmentationAnswer {
    /// Each class with at least one pixel, by decreasing area, in the original image's pixels.
    pub areas: Vec<ClassArea>,
    /// Width of the mask (the original image's).
    pub width: u32,
    /// Height of the mask.
    pub height: u32,
    /// With `include: ["mask"]`: the mask as a base64 grayscale PNG of the original image's size,
    /// each pixel its class index plus one (0: no class over its threshold).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask: Option<String>,
}

/// One class's area in a segmentation.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct ClassArea {
    /// Class index.
    pub index: usize,
    /// Class label.
    pub label: String,
    /// Pixels of the original image in the class.
    pub pixels: u64,
    /// Their share of the image's pixels.
    pub share: f64,
}

/// A regressor's answer.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct RegressionAnswer {
    /// What the value is (the manifest's `[regression] name`).
    pub name: String,
    /// The value.
    pub value: f64,
    /// Its unit, when the manifest names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

/// Runs the model on `input` (one row per item) and ranks each row's classes.
pub fn predict(
    rt: &mut WorkerRuntime,
    model: &Arc<LoadedModel>,
    input: &Tensor,
    top_k: usize,
) -> Result<Vec<RowPrediction>, RuntimeError> {
    let outputs = rt.run(model, input)?;
    let scores = outputs.get(&model.spec.output).ok_or_else(|| RuntimeError::Inference {
        model: model.name.clone(),
        message: format!("output `{}` missing from the run", model.spec.output),
    })?;
    let rows = input.rows();
    let mut result = Vec::with_capacity(rows);
    let spec = &model.spec;
    for row in 0..rows {
        if spec.detection.is_some() {
            result.push(detected(model, &outputs, rows, row)?);
            continue;
        }
        let one = scores.slice_rows(row, row + 1);
        let (predictions, class_map) = match &spec.segmentation {
            Some(seg) => {
                let values = one.as_f32().unwrap_or(&[]);
                let map = segmentation::class_map(seg, spec.scores, &one.shape, values).ok_or_else(|| {
                    RuntimeError::Inference {
                        model: model.name.clone(),
                        message: format!(
                            "output `{}` of shape {:?} does not fit the declared {:?} segmentation",
                            spec.output, one.shape, seg.layout
                        ),
                    }
                })?;
                (by_area(model, &map), Some(map))
            }
            None => match &spec.multi_label {
                // Every label over its threshold, however many.
                Some(m) => {
                    let all = rank(model, &one.to_f64(), usize::MAX);
                    let over = |p: &Prediction| p.score >= m.thresholds.get(p.index).copied().unwrap_or(0.5);
                    (all.into_iter().filter(over).collect(), None)
                }
                None => (rank(model, &one.to_f64(), top_k), None),
            },
        };
        let regression = spec.regression.as_ref().map(|r| RegressionAnswer {
            name: r.name.clone(),
            value: predictions.first().map_or(f64::NAN, |p| p.score as f64),
            unit: r.unit.clone(),
        });
        let outputs = outputs
            .iter()
            .filter(|(name, t)| t.rows() == rows && !(class_map.is_some() && **name == spec.output))
            .map(|(name, t)| (name.clone(), t.slice_rows(row, row + 1).to_f64()))
            .collect();
        result.push(RowPrediction {
            predictions,
            outputs,
            segmentation: None,
            regression,
            class_map,
            detections: None,
        });
    }
    Ok(result)
}

/// A detector's row: its detections (boxes in input pixels, until the HTTP face maps them back),
/// and one prediction per detection (its class and score), best first, for what reads the top
/// prediction (`when` conditions). Decoding reads the run's f32 outputs in place (a post-NMS
/// detector's other element types widened); the row's outputs are copied out as f64 only for the
/// answer's `outputs`.
fn detected(
    model: &LoadedModel,
    all: &HashMap<String, Tensor>,
    rows: usize,
    row: usize,
) -> Result<RowPrediction, RuntimeError> {
    let outputs: BTreeMap<String, Vec<f64>> = all
        .iter()
        .filter(|(_, t)| t.rows() == rows)
        .map(|(name, t)| (name.clone(), t.slice_rows(row, row + 1).to_f64()))
        .collect();
    let found = super::detect::decode(&model.spec, |name| {
        let t = all.get(name).filter(|t| t.rows() == rows)?;
        let len = t.row_len();
        match t.as_f32() {
            Some(v) => v.get(row * len..(row + 1) * len).map(Row::F32),
            None => outputs.get(name).map(|v| Row::F64(v)),
        }
    })
    .map_err(|message| RuntimeError::Inference {
        model: model.name.clone(),
        message,
    })?;
    let label = |c: usize| {
        model
            .spec
            .labels
            .get(c)
            .cloned()
            .unwrap_or_else(|| format!("class_{c}"))
    };
    Ok(RowPrediction {
        predictions: found
            .iter()
            .map(|d| Prediction {
                index: d.class,
                label: label(d.class),
                score: d.score,
            })
            .collect(),
        detections: Some(
            found
                .iter()
                .map(|d| super::detect::DetectionAnswer {
                    bbox: d.bbox,
                    label: label(d.class),
                    score: d.score,
                })
                .collect(),
        ),
        outputs,
        segmentation: None,
        regression: None,
        class_map: None,
    })
}

/// Predictions for the rows of `inputs`, in order: consecutive tensors whose rows have one shape
/// run as one batch (every image or feature vector; texts of one token count).
pub fn predict_rows(
    rt: &mut WorkerRuntime,
    model: &Arc<LoadedModel>,
    inputs: &[Tensor],
    top_k: usize,
) -> Result<Vec<RowPrediction>, RuntimeError> {
    let mut out = Vec::with_capacity(inputs.len());
    let mut start = 0;
    while start < inputs.len() {
        let end = (start..inputs.len())
            .find(|&i| inputs[i].shape.get(1..) != inputs[start].shape.get(1..))
            .unwrap_or(inputs.len());
        let batch = Tensor::concat_rows(inputs[start..end].to_vec()).ok_or_else(|| RuntimeError::Inference {
            model: model.name.clone(),
            message: "inputs differ in shape".into(),
        })?;
        out.extend(predict(rt, model, &batch, top_k)?);
        start = end;
    }
    Ok(out)
}

/// A segmenter's classes with at least one pixel, by decreasing share of the output's grid.
fn by_area(model: &LoadedModel, map: &ClassMap) -> Vec<Prediction> {
    let total = map.pixels.len().max(1) as f64;
    let counts = map.counts();
    let mut order: Vec<usize> = (0..counts.len()).filter(|&c| counts[c] > 0).collect();
    order.sort_by(|&a, &b| counts[b].cmp(&counts[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .map(|i| Prediction {
            index: i,
            label: model
                .spec
                .labels
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("class_{i}")),
            score: (counts[i] as f64 / total) as f32,
        })
        .collect()
}

/// Row `r` of the rows of `inputs` taken in order, as a one-row tensor.
pub fn nth_row(inputs: &[Tensor], mut r: usize) -> Option<Tensor> {
    for t in inputs {
        if r < t.rows() {
            return Some(t.slice_rows(r, r + 1));
        }
        r -= t.rows();
    }
    None
}

/// Turns one row of the score output into ranked predictions.
pub fn rank(model: &LoadedModel, raw: &[f64], top_k: usize) -> Vec<Prediction> {
    ranked(model, &probabilities(model, raw), top_k)
}

/// One row of the score output as class probabilities: the softmax of logits, probabilities as
/// they are (and a regression value as it is).
pub fn probabilities(model: &LoadedModel, raw: &[f64]) -> Vec<f64> {
    match model.spec.scores {
        // One sigmoid per label: the labels do not compete.
        ScoreKind::Logits if model.spec.multi_label.is_some() => raw.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect(),
        ScoreKind::Logits => softmax(raw),
        ScoreKind::Probabilities | ScoreKind::Raw => raw.to_vec(),
    }
}

/// The `top_k` classes of `probs` by decreasing probability (the one value, for regression).
pub fn ranked(model: &LoadedModel, probs: &[f64], top_k: usize) -> Vec<Prediction> {
    let spec = &model.spec;
    if spec.task.is_regression() {
        let value = probs.first().copied().unwrap_or(f64::NAN) as f32;
        return vec![Prediction {
            index: 0,
            label: spec.labels[0].clone(),
            score: value,
        }];
    }
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    order
        .into_iter()
        .take(top_k.max(1))
        .map(|i| Prediction {
            index: i,
            label: spec.labels.get(i).cloned().unwrap_or_else(|| format!("class_{i}")),
            score: probs[i] as f32,
        })
        .collect()
}

/// The class decided by one row of probabilities: the most probable, the lowest index among
/// equals (as [`ranked`] orders them); `except` leaves one class out (the best other class).
pub fn decided(probs: &[f64], except: Option<usize>) -> usize {
    let mut best: Option<usize> = None;
    for (i, p) in probs.iter().enumerate() {
        if Some(i) != except && best.is_none_or(|b| *p > probs[b]) {
            best = Some(i);
        }
    }
    best.unwrap_or(0)
}

/// Numerically stable softmax.
pub fn softmax(x: &[f64]) -> Vec<f64> {
    let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = x.iter().map(|v| (v - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::{decided, softmax};

    #[test]
    fn the_decided_class_is_the_first_of_equals_as_ranked() {
        assert_eq!(decided(&[0.2, 0.4, 0.4], None), 1);
        assert_eq!(decided(&[0.2, 0.4, 0.4], Some(1)), 2);
        assert_eq!(decided(&[0.5, 0.5], Some(0)), 1);
        assert_eq!(decided(&[], None), 0);
    }

    #[test]
    fn softmax_is_stable_and_sums_to_one() {
        let p = softmax(&[1000.0, 1000.0, 0.0]);
        assert!((p[0] - 0.5).abs() < 1e-12 && p[2] < 1e-300);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    }
}
