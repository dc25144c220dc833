//! A prediction pass: rows in, ranked classes (or a regression value) and raw outputs out.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use utoipa::ToSchema;

use super::manifest::{ScoreKind, Task};
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
    /// Classes by decreasing score, `top_k` of them (one entry for regression).
    pub predictions: Vec<Prediction>,
    /// Every tensor output of the model for this row, flattened (a detector's are left out of
    /// answers: a YOLO head is most of a million numbers).
    pub outputs: BTreeMap<String, Vec<f64>>,
    /// Detectors: the detections by decreasing score, boxes in the original image's pixels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detections: Option<Vec<super::detect::DetectionAnswer>>,
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
    for row in 0..rows {
        let outputs: BTreeMap<String, Vec<f64>> = outputs
            .iter()
            .filter(|(_, t)| t.rows() == rows)
            .map(|(name, t)| (name.clone(), t.slice_rows(row, row + 1).to_f64()))
            .collect();
        if model.spec.detection.is_some() {
            result.push(detected(model, outputs)?);
            continue;
        }
        let raw = scores.slice_rows(row, row + 1).to_f64();
        let predictions = rank(model, &raw, top_k);
        result.push(RowPrediction {
            predictions,
            outputs,
            detections: None,
        });
    }
    Ok(result)
}

/// A detector's row: its detections (boxes in input pixels, until the HTTP face maps them back),
/// and one prediction per detection (its class and score), best first, for what reads the top
/// prediction (`when` conditions).
fn detected(model: &LoadedModel, outputs: BTreeMap<String, Vec<f64>>) -> Result<RowPrediction, RuntimeError> {
    let found = super::detect::decode(&model.spec, |name| outputs.get(name).map(Vec::as_slice)).map_err(|message| {
        RuntimeError::Inference {
            model: model.name.clone(),
            message,
        }
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
        ScoreKind::Logits => softmax(raw),
        ScoreKind::Probabilities | ScoreKind::Raw => raw.to_vec(),
    }
}

/// The `top_k` classes of `probs` by decreasing probability (the one value, for regression).
pub fn ranked(model: &LoadedModel, probs: &[f64], top_k: usize) -> Vec<Prediction> {
    let spec = &model.spec;
    if spec.task == Task::TabularRegression {
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
