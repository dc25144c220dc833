//! The models directory: one folder per model holding `model.onnx` and `model.toml`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use prost::Message;

use super::manifest::{Manifest, ModelSpec, TextSpec};
use super::text::TextModel;
use crate::onnx::proto::ModelProto;
use crate::onnx::trees::{self, Forest};
use crate::onnx::{proto, ModelSummary};

/// A model read from disk, checked, and ready to get sessions.
#[derive(Debug)]
pub struct LoadedModel {
    /// Folder name; the model's name in the API.
    pub name: String,
    /// Folder holding the model.
    pub dir: PathBuf,
    /// The ONNX file's bytes, shared by every worker's session.
    pub bytes: Arc<[u8]>,
    /// Hex sha256 of the ONNX file (with external data: of the model with its data read in).
    pub sha256: String,
    /// Interface read from the graph.
    pub summary: ModelSummary,
    /// Manifest, completed from the graph.
    pub spec: ModelSpec,
    /// What gradients the model supports; filled in once ONNX Runtime is loaded.
    pub gradient_report: std::sync::OnceLock<super::gradients::GradientReport>,
    /// Tabular models: the background rows named by the manifest (feature order), for the
    /// perturbation methods' "missing" features.
    pub background: Option<Vec<Vec<f32>>>,
    /// The tree ensemble TreeSHAP reads, parsed on first use (or why it cannot be read).
    pub forest: std::sync::OnceLock<Result<Arc<Forest>, String>>,
    /// Text models: the tokenizer and embedding table.
    pub text: Option<Arc<TextModel>>,
}

impl LoadedModel {
    /// The model's tree ensemble in raw output space, or why the model has none TreeSHAP can read.
    pub fn forest(&self) -> Result<Arc<Forest>, String> {
        self.forest
            .get_or_init(|| {
                let decoded = proto::decode_model(&self.bytes).map_err(|e| e.to_string())?;
                trees::read(&decoded, &self.spec.output).map(Arc::new).map_err(|e| e.0)
            })
            .clone()
    }

    /// The Vertex AI endpoint id the model answers on: `[vertex] endpoint`, else its name.
    pub fn vertex_endpoint(&self) -> &str {
        self.spec
            .vertex
            .as_ref()
            .and_then(|v| v.endpoint.as_deref())
            .unwrap_or(&self.name)
    }
}

/// A model folder that could not be loaded; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read models directory {dir}: {source}")]
    Dir { dir: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Model { path: PathBuf, message: String },
    #[error(transparent)]
    Manifest(#[from] super::manifest::ManifestError),
    #[error("no models found in {0} (each model is a folder with model.onnx and model.toml)")]
    Empty(PathBuf),
    #[error("no model loaded; the first failure: {0}")]
    NoneLoaded(String),
}

/// All loaded models by name, and the model folders that failed to load.
#[derive(Debug, Default)]
pub struct Registry {
    models: BTreeMap<String, Arc<LoadedModel>>,
    failed: BTreeMap<String, String>,
}

impl Registry {
    /// Loads every model folder under `dir`. A folder that fails to load stops the start when
    /// `strict`; otherwise it is kept, with its error, in [`Registry::failed`] and the others serve.
    /// Either way at least one model must load.
    pub fn load_dir(dir: &Path, strict: bool) -> Result<Self, RegistryError> {
        let entries = std::fs::read_dir(dir).map_err(|source| RegistryError::Dir {
            dir: dir.to_path_buf(),
            source,
        })?;
        let mut folders: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_dir() && p.join("model.onnx").exists())
            .collect();
        folders.sort();
        let mut registry = Self::default();
        for folder in folders {
            match load_model(&folder) {
                Ok(model) => {
                    registry.models.insert(model.name.clone(), Arc::new(model));
                }
                Err(e) if strict => return Err(e),
                Err(e) => registry.fail(dir, &folder, &e.to_string()),
            }
        }
        registry.drop_bad_ensembles(dir, strict)?;
        if registry.models.is_empty() && registry.failed.is_empty() {
            return Err(RegistryError::Empty(dir.to_path_buf()));
        }
        registry.some_loaded()
    }

    /// This registry without `name`, which ONNX Runtime refused (`error`); ensembles that counted
    /// on it go too. `dir` is the models directory, for the error shown to clients.
    pub fn without(&self, name: &str, error: &str, dir: &Path) -> Result<Self, RegistryError> {
        let mut registry = Self {
            models: self.models.clone(),
            failed: self.failed.clone(),
        };
        if let Some(model) = registry.models.remove(name) {
            registry.fail(dir, &model.dir, error);
        }
        registry.drop_bad_ensembles(dir, false)?;
        registry.some_loaded()
    }

    /// At least one model must serve: a service with none is not started.
    fn some_loaded(self) -> Result<Self, RegistryError> {
        match self.failed.values().next() {
            Some(first) if self.models.is_empty() => Err(RegistryError::NoneLoaded(first.clone())),
            _ => Ok(self),
        }
    }

    /// Checks every ensemble (members load, same input and labels); one that fails stops the start
    /// when `strict`, else joins the failed models. Repeated until none fails: an ensemble dropped
    /// may be a member of another.
    fn drop_bad_ensembles(&mut self, dir: &Path, strict: bool) -> Result<(), RegistryError> {
        loop {
            let bad = self
                .models
                .values()
                .find_map(|m| self.check_ensemble(m).err().map(|e| (m.clone(), e)));
            let Some((model, e)) = bad else { return Ok(()) };
            if strict {
                return Err(e);
            }
            self.models.remove(&model.name);
            self.fail(dir, &model.dir, &e.to_string());
        }
    }

    /// Records a model folder that failed to load, and logs it. The error names files relative to
    /// the models directory: it is shown to clients, who need not know the server's paths.
    fn fail(&mut self, dir: &Path, folder: &Path, error: &str) {
        let name = folder
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let shown = dir.display().to_string();
        let prefix = format!(
            "{}{}",
            shown.trim_end_matches(std::path::MAIN_SEPARATOR),
            std::path::MAIN_SEPARATOR
        );
        let error = error.replace(&prefix, "");
        tracing::error!(model = %name, %error, "model not loaded; the others serve (strict_models = false)");
        self.failed.insert(name, error);
    }

    /// Model folders that failed to load, with why (files named relative to the models directory).
    pub fn failed(&self) -> &BTreeMap<String, String> {
        &self.failed
    }

    /// An ensemble's members must exist and take the same input to the same labels: they all run
    /// on one preprocessed tensor and their probabilities are averaged class by class.
    fn check_ensemble(&self, model: &LoadedModel) -> Result<(), RegistryError> {
        let refuse = |message: String| RegistryError::Model {
            path: model.dir.join("model.toml"),
            message: format!("ensemble: {message}"),
        };
        let input = |m: &LoadedModel| {
            serde_json::json!([m.spec.task, m.spec.image, m.spec.tabular.as_ref().map(|t| &t.features)])
        };
        for name in &model.spec.ensemble {
            let member = self
                .get(name)
                .ok_or_else(|| refuse(format!("no model named `{name}` is loaded")))?;
            if member.name == model.name {
                return Err(refuse(format!("`{name}` is this model itself")));
            }
            if member.spec.labels != model.spec.labels {
                return Err(refuse(format!("`{name}` has other labels than `{}`", model.name)));
            }
            if input(member) != input(model) {
                return Err(refuse(format!(
                    "`{name}` differs from `{}` in task or input (preprocessing, size, features)",
                    model.name
                )));
            }
        }
        Ok(())
    }

    /// A registry of already loaded models (tests, one-shot commands).
    pub fn from_models(models: Vec<LoadedModel>) -> Self {
        Self {
            models: models.into_iter().map(|m| (m.name.clone(), Arc::new(m))).collect(),
            failed: BTreeMap::new(),
        }
    }

    /// The model of that name.
    pub fn get(&self, name: &str) -> Option<&Arc<LoadedModel>> {
        self.models.get(name)
    }

    /// All models, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<LoadedModel>> {
        self.models.values()
    }

    /// The models answering on Vertex AI endpoint `id` (`[vertex] endpoint`, else the model's
    /// name): one, or several when manifests claim the same id.
    pub fn by_vertex_endpoint(&self, id: &str) -> Vec<&Arc<LoadedModel>> {
        self.models.values().filter(|m| m.vertex_endpoint() == id).collect()
    }

    /// Model names.
    pub fn names(&self) -> Vec<String> {
        self.models.keys().cloned().collect()
    }
}

/// Reads one model folder: the ONNX file, its summary, and the manifest resolved against it.
pub fn load_model(folder: &Path) -> Result<LoadedModel, RegistryError> {
    let onnx_path = folder.join("model.onnx");
    let manifest_path = folder.join("model.toml");
    let model_err = |path: &Path, message: String| RegistryError::Model {
        path: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(&onnx_path).map_err(|e| model_err(&onnx_path, e.to_string()))?;
    let mut decoded =
        proto::decode_model(&bytes).map_err(|e| model_err(&onnx_path, format!("not an ONNX model: {e}")))?;
    if decoded.graph.is_none() {
        return Err(model_err(&onnx_path, "not an ONNX model: no graph".into()));
    }
    // External weights become part of the graph here, so that sessions and explaind's own graph
    // code (backward graphs, randomisation, LRP) all see them, and the hash covers them: new
    // weights in the data file are another model.
    let bytes = match super::external::inline(&mut decoded, folder).map_err(|m| model_err(&onnx_path, m))? {
        true => decoded.encode_to_vec(),
        false => bytes,
    };
    let text = std::fs::read_to_string(&manifest_path).map_err(|e| model_err(&manifest_path, e.to_string()))?;
    let mut manifest = Manifest::parse(&manifest_path, &text)?;
    let sha256 = hex::encode(Sha256::digest(&bytes));
    // A text model runs as the graph cut at its word embedding: every later step (summary,
    // sessions, backward graphs) sees that graph; the file's hash still names the model.
    let (bytes, decoded, text_model) = match manifest.task() {
        Some(t) if t.takes_text() => {
            let (cut, text_model) = cut_text(folder, &manifest, &decoded).map_err(|m| model_err(&manifest_path, m))?;
            (cut.encode_to_vec(), cut, Some(text_model))
        }
        // Several explained inputs of a tabular model: one joined input whose features are all of
        // theirs (other tasks are refused when the manifest is resolved).
        Some(t) if t.takes_features() && manifest.explained_inputs().len() > 1 => {
            let (joined, blocks) = crate::onnx::join::join(&decoded, &manifest.explained_inputs())
                .map_err(|m| model_err(&manifest_path, format!("inputs: {m}")))?;
            manifest.set_joined(blocks);
            (joined.encode_to_vec(), joined, None)
        }
        _ => (bytes, decoded, None),
    };
    let summary = ModelSummary::of(&decoded);
    let mut spec = manifest.resolve(&manifest_path, &summary)?;
    // A YOLO head with an objectness scores its candidates in the graph (objectness x class), so
    // that a detection's score is one value of the output every method can weigh.
    let (bytes, summary) = match spec.detection.as_mut().filter(|d| d.objectness) {
        Some(d) => {
            let mut scored = decoded;
            let axis = if d.channels_first { 1 } else { 2 };
            crate::onnx::objectness::score_by_objectness(&mut scored, &spec.output, axis)
                .map_err(|m| model_err(&onnx_path, m))?;
            d.scored = true;
            spec.output = crate::onnx::objectness::SCORED_OUTPUT.to_string();
            (scored.encode_to_vec(), ModelSummary::of(&scored))
        }
        None => (bytes, summary),
    };
    spec.text = text_model.as_ref().map(|(_, text_spec)| text_spec.clone());
    let name = folder
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err(model_err(
            folder,
            "a model folder name may hold only letters, digits, '-', '_' and '.'".into(),
        ));
    }
    Ok(LoadedModel {
        name,
        dir: folder.to_path_buf(),
        sha256,
        bytes: bytes.into(),
        text: text_model.map(|(t, _)| Arc::new(t)),
        background: read_background(folder, &spec)?,
        summary,
        spec,
        gradient_report: std::sync::OnceLock::new(),
        forest: std::sync::OnceLock::new(),
    })
}

/// Cuts a text model's graph at its word embedding and loads its tokenizer.
fn cut_text(
    folder: &Path,
    manifest: &Manifest,
    decoded: &ModelProto,
) -> Result<(ModelProto, (TextModel, TextSpec)), String> {
    let section = manifest.text();
    let original = ModelSummary::of(decoded);
    let inputs = section.inputs(&original.inputs, &manifest.constant_inputs())?;
    let mut options = section.options()?;
    // A graph that fixes its sequence length takes exactly that many ids.
    if let Some(sequence) = options.sequence.as_mut() {
        sequence.length = original
            .inputs
            .iter()
            .find(|t| t.name == inputs.ids)
            .and_then(|t| t.shape.as_ref())
            .and_then(|s| s.get(1))
            .and_then(crate::onnx::Dim::fixed);
    }
    let cut = crate::onnx::embedding::cut(decoded, &inputs).map_err(|m| format!("text: {m}"))?;
    let embedding_size = cut.dim();
    let (embedding, gradients_refused) = match &cut.table {
        Ok(t) => (Some(t.node.clone()), None),
        Err(why) => (None, Some(why.clone())),
    };
    let model = TextModel::load(folder, &options, cut.table)?;
    let spec = TextSpec {
        window: options.sequence.as_ref().map(|s| s.window),
        tokenizer: options.tokenizer,
        max_length: options.max_length,
        input_ids: inputs.ids,
        attention_mask: inputs.mask,
        token_type_ids: inputs.types,
        position_ids: inputs.positions,
        embedding,
        embedding_size,
        gradients_refused,
        hide_token: model.hide.clone(),
        baseline_token: model.baseline.clone(),
    };
    Ok((cut.model, (model, spec)))
}

/// Reads a tabular model's background CSV: a header naming every feature (any order), then rows of
/// numbers. Errors name the file, line and column.
fn read_background(folder: &Path, spec: &ModelSpec) -> Result<Option<Vec<Vec<f32>>>, RegistryError> {
    let Some(tab) = spec.tabular.as_ref() else {
        return Ok(None);
    };
    let Some(name) = tab.background.as_ref() else {
        return Ok(None);
    };
    let path = folder.join(name);
    let err = |message: String| RegistryError::Model {
        path: path.clone(),
        message,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<String> = lines
        .next()
        .ok_or_else(|| err("empty file".into()))?
        .split(',')
        .map(|h| h.trim().trim_matches('"').to_string())
        .collect();
    let columns: Vec<usize> = tab
        .features
        .iter()
        .map(|f| {
            header
                .iter()
                .position(|h| h == f)
                .ok_or_else(|| err(format!("no column for feature `{f}`")))
        })
        .collect::<Result<_, _>>()?;
    let mut rows = Vec::new();
    for (number, line) in lines.enumerate() {
        let cells: Vec<&str> = line.split(',').collect();
        let row = columns
            .iter()
            .map(|&c| {
                cells
                    .get(c)
                    .and_then(|v| v.trim().parse::<f32>().ok())
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| err(format!("line {}: column `{}` is not a number", number + 2, header[c])))
            })
            .collect::<Result<Vec<f32>, _>>()?;
        // Perturbations draw the background's values: each must be one its feature takes.
        for ((v, t), &c) in row.iter().zip(&tab.feature_types).zip(&columns) {
            if let Some(why) = t.refuses(f64::from(*v), tab.range) {
                return Err(err(format!("line {}: column `{}`: {why}", number + 2, header[c])));
            }
        }
        rows.push(row);
    }
    if rows.is_empty() {
        return Err(err("no rows".into()));
    }
    Ok(Some(rows))
}
