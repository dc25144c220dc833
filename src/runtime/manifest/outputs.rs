//! What the graph cannot say about outputs other than a row of class scores: `[segmentation]`
//! (per-pixel class scores, their layout and activation), `[multi_label]` (one sigmoid per label
//! and the thresholds) and `[regression]` (the value's name and unit). A declared layout the
//! output's shape does not fit is refused at start, naming the output and its shape.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{FieldError, Layout, ManifestError, ScoreKind, Task};
use crate::onnx::{Dim, TensorInfo};

/// The output sections as written.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct SegmentationManifest {
    layout: Option<Layout>,
    activation: Option<Activation>,
    threshold: Option<f32>,
}

/// `[multi_label]` as written.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct MultiLabelManifest {
    threshold: Option<f32>,
    thresholds: Option<Vec<f32>>,
}

/// `[regression]` as written.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RegressionManifest {
    name: Option<String>,
    unit: Option<String>,
}

/// How per-pixel class scores become a class per pixel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// Classes exclude each other: a pixel is its highest-scoring class.
    Softmax,
    /// Each class on its own: a pixel is in every class whose probability reaches the threshold.
    Sigmoid,
}

/// A segmenter's output, resolved.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SegmentationSpec {
    /// Where the class axis lies: `NCHW` (`[batch, classes, height, width]`) or `NHWC`.
    pub layout: Layout,
    /// `softmax` (one class per pixel) or `sigmoid` (each class over its threshold).
    pub activation: Activation,
    /// Sigmoid: the probability from which a pixel is in a class.
    pub threshold: f32,
}

/// A multi-label classifier's thresholds, resolved: one per label.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MultiLabelSpec {
    /// The probability (sigmoid of the logit) from which each label is predicted, label order.
    pub thresholds: Vec<f32>,
}

/// A regressor's value, resolved.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RegressionSpec {
    /// What the value is (`age`), the label of its one output.
    pub name: String,
    /// Its unit (`years`), when the manifest gives one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

/// The sections' default threshold: a probability of one half.
const DEFAULT_THRESHOLD: f32 = 0.5;

fn probability(field: &str, t: f32, err: &FieldError) -> Result<f32, ManifestError> {
    if !(t.is_finite() && (0.0..=1.0).contains(&t)) {
        return Err(err(field, format!("{t}: a probability between 0 and 1")));
    }
    Ok(t)
}

/// Resolves `[segmentation]` against the output: 4-D, its class axis (by the layout) holding as
/// many classes as there are labels; the labels default to `class_0`, ... from that axis.
pub(super) fn segmentation(
    m: SegmentationManifest,
    output: &TensorInfo,
    labels: &mut Vec<String>,
    scores: ScoreKind,
    err: &FieldError,
) -> Result<SegmentationSpec, ManifestError> {
    let layout = m.layout.unwrap_or(Layout::NCHW);
    let shape = output.shape.as_deref().unwrap_or_default();
    let described = describe(output);
    if !shape.is_empty() && shape.len() != 4 {
        return Err(err(
            "segmentation.layout",
            format!("{layout:?} needs a 4-D output; `{}` is {described}", output.name),
        ));
    }
    let axis = match layout {
        Layout::NCHW => 1,
        Layout::NHWC => 3,
    };
    let classes = shape.get(axis).and_then(Dim::fixed);
    match (classes, labels.len()) {
        (Some(n), 0) => *labels = (0..n).map(|i| format!("class_{i}")).collect(),
        (None, 0) => {
            return Err(err(
                "labels",
                format!(
                    "missing, and the class axis of `{}` ({described}) is not fixed",
                    output.name
                ),
            ))
        }
        (Some(n), l) if n != l => {
            return Err(err(
                "segmentation.layout",
                format!(
                    "{layout:?} puts the classes on axis {axis}: `{}` is {described}, {n} classes there for {l} labels",
                    output.name
                ),
            ))
        }
        _ => {}
    }
    let activation = m.activation.unwrap_or(if labels.len() == 1 {
        Activation::Sigmoid
    } else {
        Activation::Softmax
    });
    if activation == Activation::Softmax && labels.len() < 2 {
        return Err(err(
            "segmentation.activation",
            "softmax over one class gives every pixel that class: say sigmoid".into(),
        ));
    }
    if scores == ScoreKind::Raw {
        return Err(err("scores", "a segmenter's output is logits or probabilities".into()));
    }
    let threshold = probability("segmentation.threshold", m.threshold.unwrap_or(DEFAULT_THRESHOLD), err)?;
    Ok(SegmentationSpec {
        layout,
        activation,
        threshold,
    })
}

/// Resolves `[multi_label]`: one threshold for every label, or one per label.
pub(super) fn multi_label(
    m: MultiLabelManifest,
    labels: &[String],
    err: &FieldError,
) -> Result<MultiLabelSpec, ManifestError> {
    let thresholds = match (m.threshold, m.thresholds) {
        (Some(_), Some(_)) => {
            return Err(err(
                "multi_label.thresholds",
                "give `threshold` or `thresholds`, not both".into(),
            ))
        }
        (_, Some(list)) if list.len() != labels.len() => {
            return Err(err(
                "multi_label.thresholds",
                format!("{} thresholds for {} labels", list.len(), labels.len()),
            ))
        }
        (_, Some(list)) => list,
        (one, None) => vec![one.unwrap_or(DEFAULT_THRESHOLD); labels.len()],
    };
    for t in &thresholds {
        probability("multi_label.thresholds", *t, err)?;
    }
    Ok(MultiLabelSpec { thresholds })
}

/// Resolves `[regression]`: the value's name (the one label, `value` by default) and unit; the
/// output must hold one value per row.
pub(super) fn regression(
    m: RegressionManifest,
    output: &TensorInfo,
    labels: &mut Vec<String>,
    err: &FieldError,
) -> Result<RegressionSpec, ManifestError> {
    let per_row = output
        .shape
        .as_deref()
        .unwrap_or_default()
        .iter()
        .skip(1)
        .map(Dim::fixed)
        .try_fold(1usize, |n, d| d.map(|d| n * d));
    if per_row.is_some_and(|n| n != 1) {
        return Err(err(
            "output",
            format!(
                "a regression gives one value per row; `{}` is {}",
                output.name,
                describe(output)
            ),
        ));
    }
    let name = match (m.name, labels.as_slice()) {
        (Some(n), [] | [_]) => n,
        (None, [one]) => one.clone(),
        (None, []) => "value".into(),
        _ => return Err(err("labels", "a regression has one value: one label at most".into())),
    };
    *labels = vec![name.clone()];
    Ok(RegressionSpec { name, unit: m.unit })
}

/// Whether `task` reads the output section `section` (`segmentation`, `multi_label`,
/// `regression`).
pub(super) fn reads(task: Task, section: &str) -> bool {
    match section {
        "segmentation" => task == Task::SemanticSegmentation,
        "multi_label" => task == Task::MultiLabelClassification,
        _ => matches!(task, Task::ImageRegression | Task::TextRegression),
    }
}

/// `[1, 2, 64, 64]`, `?` for a symbolic axis; `(no shape)` when the graph declares none.
fn describe(t: &TensorInfo) -> String {
    match &t.shape {
        Some(s) => format!(
            "[{}]",
            s.iter()
                .map(|d| d.fixed().map_or("?".to_string(), |n| n.to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => "(no shape)".into(),
    }
}
