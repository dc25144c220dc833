//! `[reference]`: the labelled reference set behind similar-example and influence answers.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{FieldError, ManifestError, Task};

/// A labelled reference set (`[reference]`): the rows similar-example and influence answers name.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReferenceSpec {
    /// Image models: a folder of images, next to the manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<String>,
    /// Image models: a CSV with columns `id` (the image's file name) and `label` (a label name or
    /// class index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<String>,
    /// Tabular models: a CSV with the feature columns and a `label` column; a row's id is its row
    /// number (from 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csv: Option<String>,
    /// The tensor whose values are a row's embedding; default: the input of the last linear layer
    /// (Gemm, or MatMul then Add) whose output makes the scores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_layer: Option<String>,
    /// The learning rate TracIn weighs this model's checkpoint with (default 1).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub lr: f64,
    /// Further checkpoints of the same architecture, summed as TracInCP does: other loaded models.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checkpoints: Vec<Checkpoint>,
    /// A folder of concept sets for TCAV and layer information, one subfolder per concept (named
    /// by it), laid out as an uploaded concept set: `images/` with an optional `labels.csv`
    /// (`id,label`, attribute labels), or `rows.csv` (tabular).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concepts: Option<String>,
}

/// One more checkpoint of the model for influence: a loaded model and its learning rate.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// The loaded model holding that checkpoint's weights.
    pub model: String,
    /// Its learning rate.
    pub lr: f64,
}

fn one() -> f64 {
    1.0
}

fn is_one(v: &f64) -> bool {
    *v == 1.0
}

/// The `[reference]` section names the files its task reads, and sane learning rates.
pub(super) fn check(r: ReferenceSpec, task: Task, err: &FieldError) -> Result<ReferenceSpec, ManifestError> {
    match task {
        Task::ImageClassification => {
            if r.images.is_none() || r.labels.is_none() || r.csv.is_some() {
                return Err(err(
                    "reference",
                    "an image model's reference set names `images` (a folder) and `labels` (a CSV), not `csv`".into(),
                ));
            }
        }
        Task::TabularClassification => {
            if r.csv.is_none() || r.images.is_some() || r.labels.is_some() {
                return Err(err(
                    "reference",
                    "a tabular model's reference set names `csv` (features and a `label` column)".into(),
                ));
            }
        }
        Task::TextClassification => return Err(err("reference", "text models take no reference set yet".into())),
        Task::ObjectDetection => return Err(err("reference", "detectors take no reference set".into())),
        Task::TabularRegression
        | Task::ImageRegression
        | Task::TextRegression
        | Task::SemanticSegmentation
        | Task::MultiLabelClassification => {
            return Err(err(
                "reference",
                "reference sets serve single-label classifiers (the loss gradient is cross-entropy's)".into(),
            ))
        }
    }
    for lr in std::iter::once(r.lr).chain(r.checkpoints.iter().map(|c| c.lr)) {
        if !(lr.is_finite() && lr > 0.0) {
            return Err(err(
                "reference.lr",
                format!("a learning rate must be above 0, got {lr}"),
            ));
        }
    }
    Ok(r)
}
