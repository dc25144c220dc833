//! `model.toml`: how to feed a model and read its answer. What the manifest leaves out is read from
//! the ONNX graph; what cannot be read and is missing is an error naming the file and field.
//!
//! This module reads the top level (task, input, output, scores, labels) and composes the
//! readers of the sections, one module each: `[image]`, `[tabular]` (with the counterfactual
//! constraints), `[text]`, `[reference]`, `[patterns]` and `[vertex]`.

use std::path::Path;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::onnx::{Dim, ModelSummary, TensorInfo};

mod detection;
mod image;
mod inputs;
mod outputs;
mod patterns;
mod reference;
mod tabular;
mod text;
mod vertex;

pub use detection::{BoxDecode, BoxFormat, BoxScale, DetectionLayout, DetectionSpec, Grid, MAX_DETECTIONS};
pub use image::{ColorOrder, Fit, ImageSpec, Layout, ResizeFilter, DEFAULT_PAD};
pub use inputs::{Constant, InputRole, Role};
pub use outputs::{Activation, MultiLabelSpec, RegressionSpec, SegmentationSpec};
pub use patterns::PatternSpec;
pub use reference::{Checkpoint, ReferenceSpec};
pub use tabular::{Constraints, Direction, FeatureType, TabularSpec};
pub use text::{TextManifest, TextSpec, MAX_TEXT_TOKENS};
pub use vertex::{VertexColorMap, VertexOverlay, VertexPolarity, VertexSpec, Visualization, VisualizationType};

/// The manifest file as written by a user.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    task: Option<Task>,
    description: Option<String>,
    version: Option<String>,
    input: Option<String>,
    inputs: Option<std::collections::BTreeMap<String, inputs::InputManifest>>,
    output: Option<String>,
    scores: Option<ScoreKind>,
    labels: Option<Vec<String>>,
    labels_file: Option<String>,
    image: Option<image::ImageManifest>,
    detection: Option<detection::DetectionManifest>,
    tabular: Option<tabular::TabularManifest>,
    text: Option<TextManifest>,
    segmentation: Option<outputs::SegmentationManifest>,
    multi_label: Option<outputs::MultiLabelManifest>,
    regression: Option<outputs::RegressionManifest>,
    ensemble: Option<Vec<String>>,
    reference: Option<ReferenceSpec>,
    patterns: Option<PatternSpec>,
    vertex: Option<VertexSpec>,
    explanation: Option<DefaultExplanation>,
    /// Several explained inputs, once the registry has joined them into one graph input.
    #[serde(skip)]
    joined: Vec<crate::onnx::join::Block>,
}

/// `[explanation]`: the method (and its parameters) that explains the model where a protocol's
/// request names none (KServe V1's `:explain`); absent, a default for the task is chosen.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DefaultExplanation {
    /// The method's name (`GET /v1/models/{model}` lists those that can explain the model).
    pub method: String,
    /// Its parameters (the method's defaults when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub params: Option<serde_json::Value>,
}

/// What kind of model this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// Image in, class scores out.
    ImageClassification,
    /// Feature vector in, class scores out.
    TabularClassification,
    /// Feature vector in, one number out.
    TabularRegression,
    /// Text in (tokenized), class scores out.
    TextClassification,
    /// Image in, per-pixel class scores out (`[segmentation]`).
    SemanticSegmentation,
    /// Image in, one independent (sigmoid) score per label out (`[multi_label]`).
    MultiLabelClassification,
    /// Image in, one number out (`[regression]`).
    ImageRegression,
    /// Text in (tokenized), one number out (`[regression]`).
    TextRegression,
    /// Image in, boxes with a class and a score out (`[detection]` says how they are read).
    ObjectDetection,
}

impl Task {
    /// Whether the input is an image.
    pub fn takes_image(self) -> bool {
        matches!(
            self,
            Task::ImageClassification
                | Task::SemanticSegmentation
                | Task::MultiLabelClassification
                | Task::ImageRegression
                | Task::ObjectDetection
        )
    }

    /// Whether the input is a row of tabular features.
    pub fn takes_features(self) -> bool {
        matches!(self, Task::TabularClassification | Task::TabularRegression)
    }

    /// Whether the input is a text.
    pub fn takes_text(self) -> bool {
        matches!(self, Task::TextClassification | Task::TextRegression)
    }

    /// Whether the output is one number rather than class scores.
    pub fn is_regression(self) -> bool {
        matches!(
            self,
            Task::TabularRegression | Task::ImageRegression | Task::TextRegression
        )
    }
}

/// What the output tensor holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ScoreKind {
    /// Unnormalised scores; predictions report their softmax.
    Logits,
    /// Class probabilities, reported as they are.
    Probabilities,
    /// A regression value.
    Raw,
}

/// Everything needed to feed a model and read its answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelSpec {
    /// Model task.
    pub task: Task,
    /// Free text from the manifest.
    pub description: Option<String>,
    /// The model's version, as the manifest names it (shown in decision reports).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Name of the input tensor that takes the image or features: the explained input.
    pub input: String,
    /// Every graph input and its role, the explained one first (`[inputs.NAME]`).
    pub inputs: Vec<InputRole>,
    /// The constant side inputs, fed on every pass.
    #[serde(skip)]
    #[schema(ignore)]
    pub constants: Vec<Constant>,
    /// Name of the output tensor that holds the scores.
    pub output: String,
    /// What the output holds.
    pub scores: ScoreKind,
    /// Class labels, index order (one entry, the target's name, for regression).
    pub labels: Vec<String>,
    /// Image preprocessing (image tasks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageSpec>,
    /// How a detector's outputs are read (`object-detection`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detection: Option<DetectionSpec>,
    /// Feature layout (tabular tasks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tabular: Option<TabularSpec>,
    /// Tokenizer and inputs (text tasks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<TextSpec>,
    /// Per-pixel class scores (`semantic-segmentation`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segmentation: Option<SegmentationSpec>,
    /// Per-label thresholds (`multi-label-classification`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multi_label: Option<MultiLabelSpec>,
    /// The value's name and unit (`image-regression`, `text-regression`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regression: Option<RegressionSpec>,
    /// Other models that form an ensemble with this one (uncertainty `ensemble`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ensemble: Vec<String>,
    /// The labelled reference set (`[reference]`) for similar examples and influence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<ReferenceSpec>,
    /// Where PatternNet's patterns are fitted from (`[patterns]`), when not the reference set or
    /// the background rows. Not shown: it names a folder of the server's.
    #[serde(skip)]
    #[schema(ignore)]
    pub patterns: Option<PatternSpec>,
    /// How the model answers on the Vertex AI routes (`[vertex]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vertex: Option<VertexSpec>,
    /// The method that explains the model where a request names none (`[explanation]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explanation: Option<DefaultExplanation>,
}

/// A manifest or model that does not fit together; the message names file and field.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {field}: {message}")]
pub struct ManifestError {
    /// The file at fault.
    pub file: String,
    /// The field at fault.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Makes the error for one field of the manifest being resolved; every section's reader gets one.
type FieldError<'a> = dyn Fn(&str, String) -> ManifestError + 'a;

impl Manifest {
    /// The task the manifest declares.
    pub fn task(&self) -> Option<Task> {
        self.task
    }

    /// The `[text]` section (an empty one when absent).
    pub fn text(&self) -> TextManifest {
        self.text.clone().unwrap_or_default()
    }

    /// The graph inputs `[inputs]` feeds a constant (a text model's cut keeps them as inputs).
    pub fn constant_inputs(&self) -> Vec<String> {
        self.inputs.as_ref().map(inputs::constant_names).unwrap_or_default()
    }

    /// The graph inputs `[inputs]` marks explained.
    pub fn explained_inputs(&self) -> Vec<String> {
        self.inputs.as_ref().map(inputs::explained_names).unwrap_or_default()
    }

    /// Records that the registry joined several explained inputs into [`crate::onnx::join::JOINED`]
    /// (tabular models), in these blocks; resolution then explains the joined input.
    pub fn set_joined(&mut self, blocks: Vec<crate::onnx::join::Block>) {
        self.joined = blocks;
    }

    /// Parses `model.toml`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ManifestError> {
        toml::from_str(text).map_err(|e: toml::de::Error| ManifestError {
            file: path.display().to_string(),
            field: "(parse)".into(),
            // toml's message names the key, line and column.
            message: e.to_string().replace('\n', " "),
        })
    }

    /// Completes the manifest from the model's graph: the top level first, then the section the
    /// task reads (the registry fills in `[text]`'s, as it cuts the graph), then `[reference]`.
    pub fn resolve(self, manifest_path: &Path, summary: &ModelSummary) -> Result<ModelSpec, ManifestError> {
        let err = |field: &str, message: String| ManifestError {
            file: manifest_path.display().to_string(),
            field: field.to_string(),
            message,
        };
        let task = self.task.ok_or_else(|| {
            err(
                "task",
                "missing: one of image-classification, tabular-classification, tabular-regression, \
                 text-classification, semantic-segmentation, multi-label-classification, image-regression, \
                 text-regression, object-detection"
                    .into(),
            )
        })?;
        if !task.takes_text() && self.text.is_some() {
            return Err(err(
                "text",
                "only text-classification and text-regression models take a [text] section".into(),
            ));
        }
        for (section, given) in [
            ("segmentation", self.segmentation.is_some()),
            ("multi_label", self.multi_label.is_some()),
            ("regression", self.regression.is_some()),
        ] {
            if given && !outputs::reads(task, section) {
                return Err(err(
                    section,
                    format!("a {} model takes no [{section}] section", kebab(task)),
                ));
            }
        }
        // A text model's explained input is its text: [text] names the per-token inputs explaind
        // derives from it, and [inputs] only feeds the others constants.
        if task.takes_text() && self.constant_inputs().len() != self.inputs.as_ref().map_or(0, |i| i.len()) {
            return Err(err(
                "inputs",
                "a text model explains its text: its token inputs are named under [text] (input_ids, \
                 attention_mask, token_type_ids, position_ids), and [inputs] gives only constants"
                    .into(),
            ));
        }
        if (task.takes_text() || task.takes_image()) && task != Task::ImageClassification && self.tabular.is_some() {
            return Err(err("tabular", "only tabular models take a [tabular] section".into()));
        }
        if task.takes_image() && self.tabular.as_ref().is_some_and(|t| t.has_types()) {
            return Err(err(
                "tabular.types",
                "only tabular models have features to declare integer or categorical".into(),
            ));
        }
        if (task == Task::ObjectDetection) != self.detection.is_some() {
            return Err(err(
                "detection",
                match task {
                    Task::ObjectDetection => "missing: an object-detection model says how its outputs are read",
                    _ => "only object-detection models take a [detection] section",
                }
                .into(),
            ));
        }
        if task == Task::ObjectDetection && self.tabular.is_some() {
            return Err(err("tabular", "only tabular models take a [tabular] section".into()));
        }
        let resolved = inputs::resolve(
            self.input.as_deref(),
            self.inputs.unwrap_or_default(),
            (&summary.inputs, &self.joined),
            task.takes_text(),
            &err,
        )?;
        let input = resolved.explained;
        let mut labels = read_labels(self.labels, self.labels_file, manifest_path, &err)?;
        let scores = self.scores.unwrap_or(match task {
            Task::TabularRegression | Task::ImageRegression | Task::TextRegression => ScoreKind::Raw,
            // A detector's class scores are read as they are (sigmoids, in YOLO exports).
            Task::ObjectDetection => ScoreKind::Probabilities,
            _ => ScoreKind::Logits,
        });
        let (mut segmentation, mut multi_label, mut regression) = (None, None, None);
        // A detector's scores are read as `[detection]` says; the others' from the output's shape.
        let (output, detection) = match self.detection {
            Some(section) => {
                let (name, spec) =
                    detection::resolve(section, &summary.outputs, self.output.as_deref(), &mut labels, &err)?;
                (name, Some(spec))
            }
            None => {
                let output = float_tensor(
                    &summary.outputs,
                    self.output.as_deref(),
                    "output",
                    "scores must be float32",
                    &err,
                )?;
                match task {
                    Task::SemanticSegmentation => {
                        let section = self.segmentation.unwrap_or_default();
                        segmentation = Some(outputs::segmentation(section, output, &mut labels, scores, &err)?);
                    }
                    Task::ImageRegression | Task::TextRegression => {
                        let section = self.regression.unwrap_or_default();
                        regression = Some(outputs::regression(section, output, &mut labels, &err)?);
                    }
                    _ => labels = complete_labels(labels, task, output, &err)?,
                }
                (output.name.clone(), None)
            }
        };
        if task == Task::MultiLabelClassification {
            let section = self.multi_label.unwrap_or_default();
            multi_label = Some(outputs::multi_label(section, &labels, &err)?);
        }
        let (image, tabular) = match task {
            Task::TextClassification | Task::TextRegression => (None, None),
            Task::ImageClassification
            | Task::SemanticSegmentation
            | Task::MultiLabelClassification
            | Task::ImageRegression => {
                let section = self.image.unwrap_or_default();
                (Some(image::resolve(section, input, Fit::Stretch, &err)?), None)
            }
            Task::ObjectDetection => {
                let section = self.image.unwrap_or_default();
                let image = image::resolve(section, input, Fit::Letterbox, &err)?;
                if let Some(d) = &detection {
                    d.check_grids(&output, (image.width, image.height), &err)?;
                }
                (Some(image), None)
            }
            Task::TabularClassification | Task::TabularRegression => {
                let section = self.tabular.unwrap_or_default();
                (
                    None,
                    Some(tabular::resolve(
                        section,
                        task,
                        (input, resolved.dtype),
                        summary
                            .outputs
                            .iter()
                            .find(|t| t.name == output)
                            .ok_or_else(|| err("output", format!("no output `{output}`")))?,
                        &self.joined,
                        &err,
                    )?),
                )
            }
        };
        Ok(ModelSpec {
            task,
            description: self.description,
            version: self.version,
            input: input.name.clone(),
            inputs: resolved.roles,
            constants: resolved.constants,
            output,
            scores,
            labels,
            image,
            detection,
            tabular,
            text: None,
            segmentation,
            multi_label,
            regression,
            ensemble: self.ensemble.unwrap_or_default(),
            reference: self.reference.map(|r| reference::check(r, task, &err)).transpose()?,
            patterns: self
                .patterns
                .map(|p| patterns::check(p, task, manifest_path, &err))
                .transpose()?,
            explanation: self.explanation,
            vertex: self.vertex.map(|v| vertex::check(v, task, &err)).transpose()?,
        })
    }
}

impl ModelSpec {
    /// The spec as answers show it: a file or folder the manifest names outside the model's
    /// folder (an absolute path, or one with `..`) is shown by its last component only, so no
    /// answer discloses where the server keeps its data.
    pub fn as_shown(&self) -> ModelSpec {
        let mut shown = self.clone();
        let paths = [
            shown.tabular.as_mut().and_then(|t| t.background.as_mut()),
            shown.text.as_mut().map(|t| &mut t.tokenizer),
        ];
        let reference = shown.reference.as_mut().into_iter().flat_map(|r| {
            [
                r.images.as_mut(),
                r.labels.as_mut(),
                r.csv.as_mut(),
                r.concepts.as_mut(),
            ]
        });
        for path in paths.into_iter().chain(reference).flatten() {
            if !inside_folder(path) {
                *path = Path::new(path.as_str())
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default();
            }
        }
        shown
    }

    /// The explained input's element type.
    pub fn input_type(&self) -> crate::runtime::tensor::ElementType {
        self.inputs
            .first()
            .map_or(crate::runtime::tensor::ElementType::Float32, |r| r.dtype)
    }

    /// Why gradient methods cannot explain this model whatever its operators, when they cannot:
    /// the explained input is not float (gradients with respect to integers or booleans do not
    /// exist). The one text the model report and a refused request both give.
    pub fn gradients_refused(&self) -> Option<String> {
        let dtype = self.input_type();
        (dtype != crate::runtime::tensor::ElementType::Float32).then(|| {
            format!(
                "the explained input `{}` is {}, not float: there is no gradient with respect to it",
                self.input,
                dtype.name()
            )
        })
    }
}

/// The task as the manifest spells it.
fn kebab(task: Task) -> String {
    serde_json::to_value(task)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

/// The tensor `field` names, or the one [`pick`] finds; it must hold float32 (`why` says so).
fn float_tensor<'a>(
    tensors: &'a [TensorInfo],
    name: Option<&str>,
    field: &str,
    why: &str,
    err: &FieldError,
) -> Result<&'a TensorInfo, ManifestError> {
    let tensor = pick(tensors, name, |t| t.dtype == "float32").map_err(|m| err(field, m))?;
    if tensor.dtype != "float32" {
        return Err(err(
            field,
            format!("tensor `{}` is {}, {why}", tensor.name, tensor.dtype),
        ));
    }
    Ok(tensor)
}

/// The labels as written: inline, or one per non-blank line of `labels_file` (next to the
/// manifest); empty when neither is given.
/// Whether `path` names something inside the folder it is read from: relative, with no `..`.
fn inside_folder(path: &str) -> bool {
    use std::path::Component;
    !path.is_empty()
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

fn read_labels(
    labels: Option<Vec<String>>,
    labels_file: Option<String>,
    manifest_path: &Path,
    err: &FieldError,
) -> Result<Vec<String>, ManifestError> {
    match (labels, labels_file) {
        (Some(_), Some(_)) => Err(err("labels", "give `labels` or `labels_file`, not both".into())),
        (Some(l), None) => Ok(l),
        (None, Some(file)) => {
            let path = manifest_path.with_file_name(&file);
            Ok(std::fs::read_to_string(&path)
                .map_err(|e| err("labels_file", format!("cannot read {}: {e}", path.display())))?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect())
        }
        (None, None) => Ok(Vec::new()),
    }
}

/// One label per class: a regression's one value is `value` unless named; a classifier's labels
/// default to `class_0`, `class_1`, ... and must match the output's class count where the graph
/// fixes it.
fn complete_labels(
    mut labels: Vec<String>,
    task: Task,
    output: &TensorInfo,
    err: &FieldError,
) -> Result<Vec<String>, ManifestError> {
    let classes = class_count(output);
    if task == Task::TabularRegression {
        if labels.is_empty() {
            labels.push("value".into());
        }
    } else if labels.is_empty() {
        let n = classes.ok_or_else(|| {
            err(
                "labels",
                "missing, and the output's class count is not fixed in the graph".into(),
            )
        })?;
        labels = (0..n).map(|i| format!("class_{i}")).collect();
    } else if let Some(n) = classes.filter(|n| *n != labels.len()) {
        return Err(err(
            "labels",
            format!("{} labels, but output `{}` has {n} classes", labels.len(), output.name),
        ));
    }
    Ok(labels)
}

/// The output's last axis when the graph fixes it: the class count.
fn class_count(output: &TensorInfo) -> Option<usize> {
    output.shape.as_ref().and_then(|s| s.last()).and_then(Dim::fixed)
}

/// Picks the named tensor, or the only one matching `preferred`, or the only one.
fn pick<'a>(
    tensors: &'a [TensorInfo],
    name: Option<&str>,
    preferred: impl Fn(&TensorInfo) -> bool,
) -> Result<&'a TensorInfo, String> {
    let names = || {
        tensors
            .iter()
            .map(|t| format!("`{}`", t.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(name) = name {
        return tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| format!("no tensor `{name}` in the graph (it has {})", names()));
    }
    if tensors.len() == 1 {
        return Ok(&tensors[0]);
    }
    let matching: Vec<_> = tensors.iter().filter(|t| preferred(t)).collect();
    match matching.as_slice() {
        [one] => Ok(one),
        _ => Err(format!("the graph has several ({}): name one", names())),
    }
}
