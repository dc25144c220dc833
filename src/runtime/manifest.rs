//! `model.toml`: how to feed a model and read its answer. What the manifest leaves out is read from
//! the ONNX graph; what cannot be read and is missing is an error naming the file and field.

use std::path::Path;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::onnx::{Dim, ModelSummary, TensorInfo};

/// The manifest file as written by a user.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    task: Option<Task>,
    description: Option<String>,
    input: Option<String>,
    output: Option<String>,
    scores: Option<ScoreKind>,
    labels: Option<Vec<String>>,
    labels_file: Option<String>,
    image: Option<ImageManifest>,
    tabular: Option<TabularManifest>,
    text: Option<TextManifest>,
    ensemble: Option<Vec<String>>,
    reference: Option<ReferenceSpec>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ImageManifest {
    layout: Option<Layout>,
    width: Option<usize>,
    height: Option<usize>,
    color: Option<ColorOrder>,
    resize: Option<ResizeFilter>,
    fit: Option<Fit>,
    scale: Option<f32>,
    mean: Option<Vec<f32>>,
    std: Option<Vec<f32>>,
}

/// `[text]`: how a text model's input is tokenized and fed.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TextManifest {
    /// A Hugging Face `tokenizer.json`, next to the manifest.
    pub tokenizer: Option<String>,
    /// Tokens per input at most (default 128); longer texts are truncated.
    pub max_length: Option<usize>,
    /// The graph input that takes token ids (default `input_ids`, or the only integer input).
    pub input_ids: Option<String>,
    /// The graph input that takes the attention mask (default `attention_mask` when present).
    pub attention_mask: Option<String>,
    /// The graph input that takes token type ids (default `token_type_ids` when present).
    pub token_type_ids: Option<String>,
    /// The token that hides a word for occlusion, LIME and KernelSHAP (default `[MASK]` /
    /// `<mask>`, else the pad token).
    pub hide_token: Option<String>,
    /// Integrated Gradients' baseline token (default the pad token).
    pub baseline_token: Option<String>,
}

/// Longest `text.max_length` accepted.
pub const MAX_TEXT_TOKENS: usize = 4096;

impl TextManifest {
    /// The graph inputs for ids, mask and type ids, read from `inputs` (the original graph's)
    /// where the manifest names none; every other input is an error.
    pub fn inputs(&self, inputs: &[TensorInfo]) -> Result<crate::onnx::embedding::TextInputs, String> {
        let has = |n: &str| inputs.iter().any(|t| t.name == n);
        let ids = match &self.input_ids {
            Some(n) => n.clone(),
            None if has("input_ids") => "input_ids".into(),
            None => {
                let ints: Vec<&TensorInfo> = inputs.iter().filter(|t| t.dtype.starts_with("int")).collect();
                match ints.as_slice() {
                    [one] => one.name.clone(),
                    _ => return Err("text.input_ids: no input named `input_ids`: name the token-id input".into()),
                }
            }
        };
        let optional =
            |given: &Option<String>, default: &str| given.clone().or_else(|| has(default).then(|| default.to_string()));
        let mask = optional(&self.attention_mask, "attention_mask");
        let types = optional(&self.token_type_ids, "token_type_ids");
        let named = [
            ("input_ids", Some(&ids)),
            ("attention_mask", mask.as_ref()),
            ("token_type_ids", types.as_ref()),
        ];
        for (field, name) in named {
            if let Some(name) = name.filter(|n| !has(n)) {
                let names: Vec<&str> = inputs.iter().map(|t| t.name.as_str()).collect();
                return Err(format!(
                    "text.{field}: no graph input `{name}` (inputs: {})",
                    names.join(", ")
                ));
            }
        }
        let known: Vec<&String> = std::iter::once(&ids).chain(&mask).chain(&types).collect();
        let other: Vec<&str> = inputs
            .iter()
            .filter(|t| !known.contains(&&t.name))
            .map(|t| t.name.as_str())
            .collect();
        if !other.is_empty() {
            return Err(format!(
                "text: the graph takes inputs explaind does not know how to feed: {} (it feeds token ids, an \
                 attention mask and token type ids)",
                other.join(", ")
            ));
        }
        Ok(crate::onnx::embedding::TextInputs { ids, mask, types })
    }

    /// The tokenizer options, checked.
    pub fn options(&self) -> Result<crate::runtime::text::TextOptions, String> {
        let max_length = self.max_length.unwrap_or(128);
        if !(2..=MAX_TEXT_TOKENS).contains(&max_length) {
            return Err(format!(
                "text.max_length must be between 2 and {MAX_TEXT_TOKENS}, got {max_length}"
            ));
        }
        Ok(crate::runtime::text::TextOptions {
            tokenizer: self
                .tokenizer
                .clone()
                .ok_or("text.tokenizer: missing (a tokenizer.json file)")?,
            max_length,
            hide_token: self.hide_token.clone(),
            baseline_token: self.baseline_token.clone(),
        })
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TabularManifest {
    features: Option<Vec<String>>,
    background: Option<String>,
    constraints: Option<Constraints>,
}

/// What a counterfactual may change, by feature name: declared under `[tabular.constraints]` in
/// the manifest, and added to per request.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Constraints {
    /// Features that must not change (age, a protected attribute).
    pub immutable: Vec<String>,
    /// Features that take whole numbers (counts).
    pub integer: Vec<String>,
    /// Features that may only go one way (`increase` or `decrease`).
    pub monotone: std::collections::BTreeMap<String, Direction>,
    /// Lowest value per feature.
    pub min: std::collections::BTreeMap<String, f64>,
    /// Highest value per feature.
    pub max: std::collections::BTreeMap<String, f64>,
    /// Cost of a unit change per feature (multiplies the scaled distance; default 1).
    pub costs: std::collections::BTreeMap<String, f64>,
}

/// The one way a monotone feature may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Increase,
    Decrease,
}

impl Direction {
    /// The name requests and manifests use.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Increase => "increase",
            Direction::Decrease => "decrease",
        }
    }
}

impl Constraints {
    /// Checks every name against `features` and every bound and cost: the message names each
    /// unknown feature and each min above its max.
    pub fn check(&self, features: &[String]) -> Result<(), String> {
        let known = |f: &String| features.contains(f);
        let mut unknown: Vec<&str> = self
            .immutable
            .iter()
            .chain(&self.integer)
            .chain(self.monotone.keys())
            .chain(self.min.keys())
            .chain(self.max.keys())
            .chain(self.costs.keys())
            .filter(|f| !known(f))
            .map(String::as_str)
            .collect();
        unknown.sort_unstable();
        unknown.dedup();
        if !unknown.is_empty() {
            let more = unknown.len().saturating_sub(20);
            let mut shown: Vec<String> = unknown.iter().take(20).map(|f| f.chars().take(100).collect()).collect();
            if more > 0 {
                shown.push(format!("and {more} more"));
            }
            return Err(format!("unknown features: {}", shown.join(", ")));
        }
        let mut problems = Vec::new();
        for (f, lo) in &self.min {
            if let Some(hi) = self.max.get(f).filter(|hi| lo > *hi) {
                problems.push(format!("`{f}`: min {lo} is above max {hi}"));
            }
        }
        for (what, map) in [("min", &self.min), ("max", &self.max)] {
            for (f, v) in map.iter().filter(|(_, v)| !v.is_finite()) {
                problems.push(format!("`{f}`: {what} {v} is not a finite number"));
            }
        }
        for (f, c) in self
            .costs
            .iter()
            .filter(|(_, c)| !(c.is_finite() && **c > 0.0 && **c <= 1e6))
        {
            problems.push(format!("`{f}`: cost {c} must be above 0 and at most 1e6"));
        }
        match problems.is_empty() {
            true => Ok(()),
            false => Err(problems.join("; ")),
        }
    }

    /// The constraints in force when a request asks for `more` on top of these (the manifest's):
    /// the manifest's are policy, so a request may add constraints or tighten them, never relax
    /// one. Immutable and integer features are united; a monotone direction may be added or
    /// repeated, not flipped; a min may only rise and a max only fall, and not past each other.
    /// Costs are preferences, not policy: the request's replace the manifest's. The error names
    /// every feature and constraint the request would relax.
    pub fn tightened(&self, more: &Constraints) -> Result<Constraints, String> {
        let mut out = self.clone();
        let mut relaxed = Vec::new();
        for (list, add) in [(&mut out.immutable, &more.immutable), (&mut out.integer, &more.integer)] {
            for f in add {
                if !list.contains(f) {
                    list.push(f.clone());
                }
            }
        }
        for (f, d) in &more.monotone {
            match self.monotone.get(f) {
                Some(policy) if policy != d => relaxed.push(format!(
                    "`{f}`: monotone `{}` would flip the manifest's `{}`",
                    d.name(),
                    policy.name()
                )),
                _ => {
                    out.monotone.insert(f.clone(), *d);
                }
            }
        }
        for (f, v) in &more.min {
            match self.min.get(f) {
                Some(policy) if v < policy => {
                    relaxed.push(format!("`{f}`: min {v} is below the manifest's min {policy}"))
                }
                _ => {
                    out.min.insert(f.clone(), *v);
                }
            }
        }
        for (f, v) in &more.max {
            match self.max.get(f) {
                Some(policy) if v > policy => {
                    relaxed.push(format!("`{f}`: max {v} is above the manifest's max {policy}"))
                }
                _ => {
                    out.max.insert(f.clone(), *v);
                }
            }
        }
        // A bound the request tightened past the manifest's other bound leaves no value.
        for (f, lo) in &out.min {
            if let Some(hi) = out.max.get(f).filter(|hi| lo > *hi) {
                relaxed.push(format!(
                    "`{f}`: min {lo} is above max {hi} (the request's and the manifest's together)"
                ));
            }
        }
        out.costs.extend(more.costs.clone());
        match relaxed.is_empty() {
            true => Ok(out),
            false => Err(format!(
                "{}; the manifest's constraints are policy: a request may add or tighten them, not relax them",
                relaxed.join("; ")
            )),
        }
    }
}

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

/// Tensor layout of an image input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum Layout {
    /// Batch, channels, height, width.
    NCHW,
    /// Batch, height, width, channels.
    NHWC,
}

/// Channel order the model expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ColorOrder {
    /// Red, green, blue.
    Rgb,
    /// Blue, green, red.
    Bgr,
    /// One luminance channel.
    Grayscale,
}

/// Interpolation used to resize images to the model's input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ResizeFilter {
    /// Bilinear (triangle) filter.
    Bilinear,
    /// Nearest neighbour.
    Nearest,
}

/// How an image of another aspect ratio is fitted to the input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Fit {
    /// Resize both axes to the input size.
    Stretch,
    /// Resize the shorter side to the input size, then crop the centre.
    CenterCrop,
}

/// Preprocessing of an image model, resolved.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ImageSpec {
    /// Tensor layout.
    pub layout: Layout,
    /// Input width in pixels.
    pub width: usize,
    /// Input height in pixels.
    pub height: usize,
    /// Channel count (1 or 3).
    pub channels: usize,
    /// Channel order.
    pub color: ColorOrder,
    /// Resize filter.
    pub resize: ResizeFilter,
    /// Aspect-ratio handling.
    pub fit: Fit,
    /// Factor applied to 0-255 pixel values before normalisation.
    pub scale: f32,
    /// Per-channel mean subtracted after scaling.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation divided by after subtracting the mean.
    pub std: Vec<f32>,
}

/// Input of a tabular model, resolved.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TabularSpec {
    /// Feature names in input order.
    pub features: Vec<String>,
    /// Background data file (CSV) next to the model, when one is named.
    pub background: Option<String>,
    /// What counterfactuals may change (`[tabular.constraints]`).
    pub constraints: Constraints,
}

/// Input of a text model, resolved.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TextSpec {
    /// The tokenizer file.
    pub tokenizer: String,
    /// Tokens per input at most; longer texts are truncated (the answer says so).
    pub max_length: usize,
    /// The graph input fed token ids (the graph is cut after their embedding lookup).
    pub input_ids: String,
    /// The graph input fed the attention mask (all ones: one unpadded text per row).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attention_mask: Option<String>,
    /// The graph input fed token type ids (zeros).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_type_ids: Option<String>,
    /// The word-embedding lookup (Gather) the graph is cut at, where gradients start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding: Option<String>,
    /// Values per token the methods see (the embedding size; 1 when no lookup was found).
    pub embedding_size: usize,
    /// Why gradient methods cannot explain this model (no embedding lookup), when they cannot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gradients_refused: Option<String>,
    /// The token that hides a word (occlusion, LIME, KernelSHAP).
    pub hide_token: crate::runtime::text::SpecialToken,
    /// Integrated Gradients' baseline token.
    pub baseline_token: crate::runtime::text::SpecialToken,
}

/// Everything needed to feed a model and read its answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelSpec {
    /// Model task.
    pub task: Task,
    /// Free text from the manifest.
    pub description: Option<String>,
    /// Name of the input tensor that takes the image or features.
    pub input: String,
    /// Name of the output tensor that holds the scores.
    pub output: String,
    /// What the output holds.
    pub scores: ScoreKind,
    /// Class labels, index order (one entry, the target's name, for regression).
    pub labels: Vec<String>,
    /// Image preprocessing (image tasks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageSpec>,
    /// Feature layout (tabular tasks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tabular: Option<TabularSpec>,
    /// Tokenizer and inputs (text tasks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<TextSpec>,
    /// Other models that form an ensemble with this one (uncertainty `ensemble`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ensemble: Vec<String>,
    /// The labelled reference set (`[reference]`) for similar examples and influence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<ReferenceSpec>,
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

impl Manifest {
    /// The task the manifest declares.
    pub fn task(&self) -> Option<Task> {
        self.task
    }

    /// The `[text]` section (an empty one when absent).
    pub fn text(&self) -> TextManifest {
        self.text.clone().unwrap_or_default()
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

    /// Completes the manifest from the model's graph.
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
                 text-classification"
                    .into(),
            )
        })?;
        if task != Task::TextClassification && self.text.is_some() {
            return Err(err(
                "text",
                "only text-classification models take a [text] section".into(),
            ));
        }

        let input =
            pick(&summary.inputs, self.input.as_deref(), |t| t.dtype == "float32").map_err(|m| err("input", m))?;
        if input.dtype != "float32" {
            return Err(err(
                "input",
                format!(
                    "tensor `{}` is {}, explaind feeds float32 inputs",
                    input.name, input.dtype
                ),
            ));
        }
        let output =
            pick(&summary.outputs, self.output.as_deref(), |t| t.dtype == "float32").map_err(|m| err("output", m))?;
        if output.dtype != "float32" {
            return Err(err(
                "output",
                format!("tensor `{}` is {}, scores must be float32", output.name, output.dtype),
            ));
        }
        let classes = output.shape.as_ref().and_then(|s| s.last()).and_then(Dim::fixed);

        let scores = self.scores.unwrap_or(match task {
            Task::TabularRegression => ScoreKind::Raw,
            _ => ScoreKind::Logits,
        });

        let mut labels = match (self.labels, self.labels_file) {
            (Some(_), Some(_)) => return Err(err("labels", "give `labels` or `labels_file`, not both".into())),
            (Some(l), None) => l,
            (None, Some(file)) => {
                let path = manifest_path.with_file_name(&file);
                std::fs::read_to_string(&path)
                    .map_err(|e| err("labels_file", format!("cannot read {}: {e}", path.display())))?
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect()
            }
            (None, None) => Vec::new(),
        };
        match task {
            Task::TabularRegression => {
                if labels.is_empty() {
                    labels.push("value".into());
                }
            }
            _ => {
                if labels.is_empty() {
                    let n = classes.ok_or_else(|| {
                        err(
                            "labels",
                            "missing, and the output's class count is not fixed in the graph".into(),
                        )
                    })?;
                    labels = (0..n).map(|i| format!("class_{i}")).collect();
                } else if let Some(n) = classes {
                    if n != labels.len() {
                        return Err(err(
                            "labels",
                            format!("{} labels, but output `{}` has {n} classes", labels.len(), output.name),
                        ));
                    }
                }
            }
        }

        let input_shape: Vec<Dim> = input.shape.clone().unwrap_or_default();
        if task != Task::TextClassification && self.text.is_some() {
            return Err(err(
                "text",
                "only text-classification models take a [text] section".into(),
            ));
        }
        let (image, tabular) = match task {
            // The registry cuts the graph and fills in the text spec.
            Task::TextClassification => (None, None),
            Task::ImageClassification => {
                let m = self.image.unwrap_or_default();
                (Some(resolve_image(m, &input_shape, &err)?), None)
            }
            Task::TabularClassification | Task::TabularRegression => {
                let m = self.tabular.unwrap_or_default();
                if !input_shape.is_empty() && input_shape.len() != 2 {
                    return Err(err(
                        "input",
                        format!(
                            "a tabular input must be 2-D [batch, features]; `{}` has {} dimensions",
                            input.name,
                            input_shape.len()
                        ),
                    ));
                }
                if task == Task::TabularRegression && classes.is_some_and(|n| n != 1) {
                    return Err(err(
                        "output",
                        format!(
                            "a regression output holds one value per row; `{}` holds {}",
                            output.name,
                            classes.unwrap_or(0)
                        ),
                    ));
                }
                let count = input_shape.get(1).and_then(Dim::fixed);
                let features = match (m.features, count) {
                    (Some(f), Some(n)) if f.len() != n => {
                        return Err(err(
                            "tabular.features",
                            format!("{} names, but input `{}` takes {n} features", f.len(), input.name),
                        ))
                    }
                    (Some(f), _) => f,
                    (None, Some(n)) => (0..n).map(|i| format!("f{i}")).collect(),
                    (None, None) => {
                        return Err(err(
                            "tabular.features",
                            "missing, and the input's feature count is not fixed in the graph".into(),
                        ))
                    }
                };
                let constraints = m.constraints.unwrap_or_default();
                constraints
                    .check(&features)
                    .map_err(|why| err("tabular.constraints", why))?;
                (
                    None,
                    Some(TabularSpec {
                        features,
                        background: m.background,
                        constraints,
                    }),
                )
            }
        };

        Ok(ModelSpec {
            task,
            description: self.description,
            input: input.name.clone(),
            output: output.name.clone(),
            scores,
            labels,
            image,
            tabular,
            text: None,
            ensemble: self.ensemble.unwrap_or_default(),
            reference: self.reference.map(|r| check_reference(r, task, &err)).transpose()?,
        })
    }
}

/// The `[reference]` section names the files its task reads, and sane learning rates.
fn check_reference(
    r: ReferenceSpec,
    task: Task,
    err: &dyn Fn(&str, String) -> ManifestError,
) -> Result<ReferenceSpec, ManifestError> {
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
        Task::TabularRegression => {
            return Err(err(
                "reference",
                "reference sets serve classifiers (the loss gradient is cross-entropy's)".into(),
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

fn resolve_image(
    m: ImageManifest,
    shape: &[Dim],
    err: &dyn Fn(&str, String) -> ManifestError,
) -> Result<ImageSpec, ManifestError> {
    if shape.len() != 4 && !shape.is_empty() {
        return Err(err(
            "input",
            format!("an image input must be 4-D, this one has {} dimensions", shape.len()),
        ));
    }
    let layout = m.layout.unwrap_or_else(|| {
        // A last axis of 1 or 3 with a larger second axis is taken as NHWC.
        match (shape.get(1).and_then(Dim::fixed), shape.get(3).and_then(Dim::fixed)) {
            (Some(c), _) if c == 1 || c == 3 => Layout::NCHW,
            (_, Some(c)) if c == 1 || c == 3 => Layout::NHWC,
            _ => Layout::NCHW,
        }
    });
    let (c_axis, h_axis, w_axis) = match layout {
        Layout::NCHW => (1, 2, 3),
        Layout::NHWC => (3, 1, 2),
    };
    let from_graph = |axis: usize| shape.get(axis).and_then(Dim::fixed);
    let height = m
        .height
        .or(from_graph(h_axis))
        .ok_or_else(|| err("image.height", "missing, and not fixed in the graph".into()))?;
    let width = m
        .width
        .or(from_graph(w_axis))
        .ok_or_else(|| err("image.width", "missing, and not fixed in the graph".into()))?;
    for (field, given, axis) in [("image.height", m.height, h_axis), ("image.width", m.width, w_axis)] {
        if let (Some(g), Some(n)) = (given, from_graph(axis)) {
            if g != n {
                return Err(err(field, format!("{g} in the manifest, but the graph fixes {n}")));
            }
        }
    }
    let channels = match (m.color, from_graph(c_axis)) {
        (Some(ColorOrder::Grayscale), _) => 1,
        (Some(_), _) => 3,
        (None, Some(c)) => c,
        (None, None) => 3,
    };
    if let Some(n) = from_graph(c_axis) {
        if n != channels {
            return Err(err(
                "image.color",
                format!("{channels} channel(s) implied, but the graph has {n}"),
            ));
        }
    }
    if channels != 1 && channels != 3 {
        return Err(err(
            "input",
            format!("{channels} channels: explaind feeds 1 (grayscale) or 3 (colour) channels"),
        ));
    }
    let color = m.color.unwrap_or(if channels == 1 {
        ColorOrder::Grayscale
    } else {
        ColorOrder::Rgb
    });
    let per_channel = |field: &str, v: Option<Vec<f32>>, default: f32| -> Result<Vec<f32>, ManifestError> {
        let v = v.unwrap_or_else(|| vec![default]);
        match v.len() {
            1 => Ok(vec![v[0]; channels]),
            n if n == channels => Ok(v),
            n => Err(err(field, format!("{n} values for {channels} channel(s)"))),
        }
    };
    let mean = per_channel("image.mean", m.mean, 0.0)?;
    let std = per_channel("image.std", m.std, 1.0)?;
    if std.iter().any(|s| *s == 0.0 || !s.is_finite()) {
        return Err(err("image.std", "values must be finite and non-zero".into()));
    }
    Ok(ImageSpec {
        layout,
        width,
        height,
        channels,
        color,
        resize: m.resize.unwrap_or(ResizeFilter::Bilinear),
        fit: m.fit.unwrap_or(Fit::Stretch),
        scale: m.scale.unwrap_or(1.0 / 255.0),
        mean,
        std,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraints_in_force_are_a_fixed_point_of_tightening() {
        let policy: Constraints = toml::from_str(
            "immutable = [\"a\"]\nmonotone = { b = \"decrease\" }\nmin = { c = 0.0 }\nmax = { c = 9.0 }",
        )
        .unwrap();
        let request: Constraints =
            toml::from_str("immutable = [\"a\", \"d\"]\nmin = { c = 1.0 }\ncosts = { b = 2.0 }").unwrap();
        let in_force = policy.tightened(&request).unwrap();
        assert_eq!(in_force.immutable, ["a", "d"], "united, once each");
        assert_eq!((in_force.min["c"], in_force.max["c"]), (1.0, 9.0));
        // A plan run again on the echoed constraints (a job re-checked elsewhere) changes nothing.
        assert_eq!(policy.tightened(&in_force).unwrap(), in_force);
    }
}
